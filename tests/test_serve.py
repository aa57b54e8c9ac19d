"""`serve`: the Open Inference Protocol driven by Triton's own client (`tritonclient.http`) against a server
process on 127.0.0.1: `predict`'s probabilities for binary and JSON requests, health and metadata, Triton's
metrics, dynamic batching, a clear 4xx for each kind of bad request, 64 concurrent clients, a failing batch, and
SIGTERM under load."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio
import uvicorn
from tritonclient.utils import InferenceServerException

from conftest import PYTHON, ROOT, free_port, run
from distil.data.tasks import get_task
from distil.models import io
from distil.predict import Featurizer, Line, predict, read_lines
from glue_fixtures import write_random_classifier, write_task

SIZES = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 48,
    "max_position_embeddings": 64,
}
TASKS = ("CoLA", "MRPC", "STS-B")
LONG = " ".join(["an uncommonly long sentence about nothing in particular"] * 12)  # far over 32 tokens
BODY_LIMIT = 65536
ENV = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


@pytest.fixture(scope="module")
def ws(tmp_path_factory, vocab_file) -> Path:
    """A random model directory at seq 32 for CoLA (single sentences), MRPC (pairs; exported to ONNX, so served by
    onnxruntime) and STS-B (regression), with their dev files."""
    from distil.onnx_export import export_onnx

    root = tmp_path_factory.mktemp("serve")
    for name in TASKS:
        write_task(root / "glue", name, {"dev.tsv": 23})
        write_random_classifier(root / "models" / name, name, vocab_file, SIZES)
    export_onnx(root / "models" / "MRPC", None)
    return root


@pytest.fixture(scope="module")
def expected(ws) -> dict[str, tuple[list[Line], list[dict]]]:
    """Per task: every dev example plus one far longer than the model's 32 tokens, and `predict`'s output for each."""
    out = {}
    for name in TASKS:
        task = get_task(name)
        dev, long = ws / "glue" / name / task.splits["eval"].file, ws / f"{name}-long.txt"
        long.write_text(LONG + (f"\t{LONG[::-1]}" if task.is_pair else "") + "\n", encoding="utf-8")
        predict(ws / "models" / name, [str(dev), str(long)], ws / f"{name}.jsonl", 8, "cpu")
        rows = [json.loads(line) for line in (ws / f"{name}.jsonl").read_text().splitlines()]
        out[name] = ([*read_lines(str(dev), task), *read_lines(str(long), task)], rows)
        assert len(rows) == 24
    return out


class ServerProcess:
    """`python -m distil serve` (or a script) in a session of its own, its output in files."""

    def __init__(self, cmd: Sequence[str], port: int, logs: Path, env: dict | None = None):
        self.port, self.logs = port, logs
        self.out, self.err = open(logs / "stdout", "w+"), open(logs / "stderr", "w+")
        self.process = subprocess.Popen(
            cmd,
            stdout=self.out,
            stderr=self.err,
            env={**ENV, **(env or {})},
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stderr(self) -> str:
        return (self.logs / "stderr").read_text()[-3000:]

    def wait_ready(self, timeout: float = 120) -> None:
        client = triton.InferenceServerClient(self.url)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                assert self.process.poll() is None, f"the server exited ({self.process.returncode}): {self.stderr()}"
                try:
                    if client.is_server_ready():
                        return
                except (OSError, InferenceServerException):
                    pass
                time.sleep(0.2)
            raise AssertionError(f"the server was not ready within {timeout} s: {self.stderr()}")
        finally:
            client.close()

    def stop(self) -> None:
        """Always called: SIGTERM, then SIGKILL if it does not go."""
        try:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGTERM)
                try:
                    self.process.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait()
        finally:
            self.out.close()
            self.err.close()


@pytest.fixture(scope="module")
def server(ws, tmp_path_factory):
    """One server for the three models: batches of up to 16 examples, a 20 ms queue delay, a 64 KiB body limit."""
    port = free_port()
    process = ServerProcess(
        [
            PYTHON,
            "-m",
            "distil",
            "serve",
            *(str(ws / "models" / t) for t in TASKS),
            "--port",
            str(port),
            "--device",
            "cpu",
            "--max_batch_size",
            "16",
            "--max_queue_delay_us",
            "20000",
            "--max_body_bytes",
            str(BODY_LIMIT),
        ],
        port,
        tmp_path_factory.mktemp("server"),
    )
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture()
def client(server):
    client = triton.InferenceServerClient(server.url, network_timeout=60)
    yield client
    client.close()


def inputs(lines: Sequence[Line], binary: bool) -> list[triton.InferInput]:
    """The request's tensors: `text`, and `text_pair` for pairs, as UTF-8 BYTES."""
    columns = [("text", [line.text_a for line in lines])]
    if lines[0].text_b is not None:
        columns.append(("text_pair", [line.text_b for line in lines]))
    tensors = []
    for name, texts in columns:
        tensor = triton.InferInput(name, [len(texts)], "BYTES")
        tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object), binary_data=binary)
        tensors.append(tensor)
    return tensors


def outputs(name: str, binary: bool) -> list[triton.InferRequestedOutput]:
    names = ["score"] if get_task(name).is_regression else ["probabilities", "label"]
    return [triton.InferRequestedOutput(n, binary_data=binary) for n in names]


def check(name: str, result, rows: list[dict]) -> None:
    """The answer is `predict`'s: probabilities (or the score) within 1e-6, the same labels."""
    task = get_task(name)
    if task.is_regression:
        score = result.as_numpy("score")
        assert score.dtype == np.float32 and score.shape == (len(rows),)
        np.testing.assert_allclose(score, [r["score"] for r in rows], rtol=0, atol=1e-6)
        return
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32 and probabilities.shape == (len(rows), task.num_labels)
    want = [[r["probabilities"][label] for label in task.labels] for r in rows]
    np.testing.assert_allclose(probabilities, want, rtol=0, atol=1e-6)
    labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label")]
    assert labels == [r["label"] for r in rows]


@pytest.mark.parametrize("name", TASKS)
def test_binary_and_json_requests_answer_predicts_probabilities_for_every_example(name, client, expected):
    lines, rows = expected[name]
    assert len(lines[-1].text_a) > 400  # the last example is truncated to the model's 32 tokens, as predict does
    if not get_task(name).is_regression:
        assert np.ptp([r["probabilities"][get_task(name).labels[0]] for r in rows]) > 100 * 1e-6  # far apart
    for binary in (True, False):
        start = 0
        for size in (1, 2, 3, 5, 13):  # requests of several sizes, 24 examples in all
            part = slice(start, start + size)
            result = client.infer(
                name, inputs(lines[part], binary), outputs=outputs(name, binary), request_id=f"{name}-{binary}-{start}"
            )
            check(name, result, rows[part])
            assert result.get_response()["id"] == f"{name}-{binary}-{start}"
            assert (result.get_output(outputs(name, binary)[0].name()).get("parameters") is not None) == binary
            start += size
    everything = client.infer(name, inputs(lines, True))  # no outputs named: all of them, binary (the client's default)
    check(name, everything, rows)
    assert "id" not in everything.get_response()


def test_a_trained_student_served_on_each_engine_answers_predicts_probabilities_on_every_dev_example(
    trained_sst2, tmp_path
):
    """The session's fine-tuned SST-2 model, served by onnxruntime (FP32 and INT8, one server each; OneFlow serves
    the module's models above): binary and JSON requests give `predict`'s probabilities and labels for all 64 dev
    examples. INT8 is
    compared one example at a time on both sides: dynamic quantization scales activations by the range of the
    whole batch, so its answers depend (slightly) on which examples share a batch."""
    model = tmp_path / "sst2"
    shutil.copytree(trained_sst2 / "model", model, ignore=shutil.ignore_patterns("*.onnx"))
    dev = trained_sst2 / "glue" / "SST-2" / "dev.tsv"
    lines = list(read_lines(str(dev), get_task("SST-2")))
    assert len(lines) == 64
    done = run(
        [
            PYTHON,
            "-m",
            "distil",
            "export-onnx",
            str(model),
            "--quantize",
            "int8",
            "--data_root",
            str(trained_sst2 / "data"),
        ]
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for engine, precision in (("onnxruntime", "fp32"), ("onnxruntime", "int8")):
        want, size = tmp_path / f"{engine}-{precision}.jsonl", 1 if precision == "int8" else 21
        predict(model, [str(dev)], want, 1 if precision == "int8" else 16, "cpu", engine, precision=precision)
        rows = [json.loads(line) for line in want.read_text().splitlines()]
        port = free_port()
        process = ServerProcess(
            [
                PYTHON,
                "-m",
                "distil",
                "serve",
                str(model),
                "--port",
                str(port),
                "--engine",
                engine,
                "--precision",
                precision,
                "--device",
                "cpu",
            ],
            port,
            tmp_path,
        )
        try:
            process.wait_ready()
            client = triton.InferenceServerClient(process.url, network_timeout=60)
            try:
                assert client.get_model_metadata("sst2")["platform"] == engine
                for binary in (True, False):
                    for start in range(0, 64, size):
                        part = slice(start, start + size)
                        check(
                            "SST-2",
                            client.infer("sst2", inputs(lines[part], binary), outputs=outputs("SST-2", binary)),
                            rows[part],
                        )
            finally:
                client.close()
        finally:
            process.stop()


def test_outputs_are_those_asked_for_each_in_the_form_asked(client, expected):
    lines, rows = expected["MRPC"]
    result = client.infer("MRPC", inputs(lines[:4], True), outputs=[triton.InferRequestedOutput("label", False)])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["label"]
    assert list(result.as_numpy("label")) == [r["label"] for r in rows[:4]]
    asked = [triton.InferRequestedOutput("label", False), triton.InferRequestedOutput("probabilities", True)]
    mixed = client.infer("MRPC", inputs(lines[:4], False), outputs=asked)
    assert [o["name"] for o in mixed.get_response()["outputs"]] == ["label", "probabilities"]
    check("MRPC", mixed, rows[:4])


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "distil" and "binary_tensor_data" in metadata["extensions"]
    for name in TASKS:
        assert client.is_model_ready(name) and client.is_model_ready(name, "1")
    assert not client.is_model_ready("nothing") and not client.is_model_ready("CoLA", "2")
    cola, mrpc, stsb = (client.get_model_metadata(name) for name in TASKS)
    assert cola == {
        "name": "CoLA",
        "versions": ["1"],
        "platform": "oneflow",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
        ],
    }
    assert mrpc["platform"] == "onnxruntime"  # the directory holds a model.onnx: onnxruntime by default
    assert [i["name"] for i in mrpc["inputs"]] == ["text", "text_pair"]
    assert stsb["outputs"] == [{"name": "score", "datatype": "FP32", "shape": [-1]}]
    with pytest.raises(InferenceServerException, match="unknown model 'nothing'"):
        client.get_model_metadata("nothing")


def call(server, method: str, path: str, body=None, headers: dict | None = None) -> tuple[int, str, bytes]:
    """A plain HTTP request (bytes, or chunks sent chunked): status, content type and body of the answer."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request(method, path, body, headers or {})
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()


def metrics(server) -> dict[tuple[str, str], float]:
    status, content_type, body = call(server, "GET", "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    return {(m[1], m[2]): float(m[3]) for m in re.finditer(r'^(nv_\w+)\{model="([^"]+)"\} (\S+)$', body.decode(), re.M)}


async def concurrently(url: str, model: str, requests: list[list[Line]]) -> list:
    """Every request at once, each on a client of its own; the results in order."""

    async def one(lines):
        async with triton_aio.InferenceServerClient(url) as client:
            return await client.infer(model, inputs(lines, True))

    return await asyncio.gather(*(one(lines) for lines in requests))


def test_metrics_count_examples_and_batches_as_triton_does(server, expected):
    lines, rows = expected["CoLA"]
    before = metrics(server)
    assert {name for name, model in before if model == "CoLA"} == {
        "nv_inference_request_success",
        "nv_inference_request_failure",
        "nv_inference_count",
        "nv_inference_exec_count",
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
    }
    requests = [[line] for line in lines[:16]] + [lines[16:19]]  # 17 requests, 19 examples, at once
    results = asyncio.run(concurrently(server.url, "CoLA", requests))
    for result, part in zip(results, [[i] for i in range(16)] + [[16, 17, 18]]):
        check("CoLA", result, [rows[i] for i in part])
    after = metrics(server)
    moved = {name: after[name, "CoLA"] - before[name, "CoLA"] for name, model in before if model == "CoLA"}
    assert moved["nv_inference_request_success"] == 17 and moved["nv_inference_count"] == 19
    assert moved["nv_inference_request_failure"] == 0
    assert 2 <= moved["nv_inference_exec_count"] < 17  # batched: 19 examples need at least two batches of 16
    for name in ("request_duration_us", "queue_duration_us", "compute_infer_duration_us"):
        assert moved[f"nv_inference_{name}"] > 0
    assert moved["nv_inference_request_duration_us"] >= moved["nv_inference_queue_duration_us"]
    assert after["nv_inference_count", "MRPC"] == before["nv_inference_count", "MRPC"]  # per model


def test_a_batch_of_short_texts_and_a_long_one_runs_as_two_calls_each_cut_to_its_own_length(
    ws, server, client, expected
):
    from distil.models import io
    from distil.predict import Featurizer

    lines, rows = expected["MRPC"]  # served by onnxruntime, which takes any length
    lengths = Featurizer(ws / "models" / "MRPC", io.read_config(ws / "models" / "MRPC"))(lines)["input_mask"].sum(1)
    shortest = [int(i) for i in np.argsort(lengths, kind="stable")[:3]]
    # a call costs 20 tokens: one call of 4 x 32 tokens is dearer than one of the 3 short ones and one of 32
    assert lengths[-1] == 32 and 20 + 4 * 32 > 20 + 3 * max(lengths[shortest]) + 20 + 32
    before = metrics(server)
    check(
        "MRPC",
        client.infer("MRPC", inputs([lines[i] for i in shortest + [23]], True)),
        [rows[i] for i in shortest + [23]],
    )
    after = metrics(server)
    assert after["nv_inference_exec_count", "MRPC"] - before["nv_inference_exec_count", "MRPC"] == 2
    assert after["nv_inference_count", "MRPC"] - before["nv_inference_count", "MRPC"] == 4


def binary_request(
    tensors: dict[str, list[bytes]], sizes: list[int] | None = None, extra: bytes = b""
) -> tuple[bytes, dict]:
    """A request in the binary tensor data extension's form; `sizes` overrides the binary_data_size given, `extra`
    follows the tensors' data."""
    raw = [b"".join(struct.pack("<I", len(t)) + t for t in texts) for texts in tensors.values()]
    header = json.dumps(
        {
            "inputs": [
                {"name": name, "datatype": "BYTES", "shape": [len(texts)], "parameters": {"binary_data_size": size}}
                for (name, texts), size in zip(tensors.items(), sizes or map(len, raw))
            ]
        }
    ).encode()
    return header + b"".join(raw) + extra, {"Inference-Header-Content-Length": str(len(header))}


def lying_element_length() -> tuple[bytes, dict]:
    """One binary text whose 4-byte length claims more bytes than its input has."""
    body, headers = binary_request({"text": [b"a sentence"]})
    return body[:-14] + struct.pack("<I", 99) + body[-10:], headers


def json_request(*tensors: dict) -> bytes:
    return json.dumps({"inputs": list(tensors)}).encode()


TEXT = {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a fine sentence ."]}
BIG = json_request({**TEXT, "data": ["x" * BODY_LIMIT]})
BAD_REQUESTS = {  # case -> (model, body and headers, status, what the error says)
    "malformed JSON": ("CoLA", (b'{"inputs": [{"name": "text"', {}), 400, "malformed JSON"),
    "not an object": ("CoLA", (b'["text"]', {}), 400, "must be a JSON object"),
    "unknown model": ("nothing", (json_request(TEXT), {}), 404, "unknown model 'nothing' (served: CoLA, MRPC, STS-B)"),
    "missing input": ("MRPC", (json_request(TEXT), {}), 400, "missing input 'text_pair'"),
    "unexpected input": ("CoLA", (json_request({**TEXT, "name": "sentence"}), {}), 400, 'unexpected input "sentence"'),
    "wrong datatype": (
        "CoLA",
        (json_request({**TEXT, "datatype": "FP32", "data": [1.0]}), {}),
        400,
        'has datatype "FP32"; expected BYTES',
    ),
    "data not strings": ("CoLA", (json_request({**TEXT, "data": [1]}), {}), 400, "a list of strings"),
    "wrong shape": ("CoLA", (json_request({**TEXT, "shape": [1, 1]}), {}), 400, "has shape [1, 1]; expected [N]"),
    "shape and data differ": ("CoLA", (json_request({**TEXT, "shape": [2]}), {}), 400, "has shape [2] but 1 elements"),
    "pair shapes differ": (
        "MRPC",
        (json_request(TEXT, {**TEXT, "name": "text_pair", "shape": [2], "data": ["a", "b"]}), {}),
        400,
        "differ in shape",
    ),
    "empty batch": ("CoLA", (json_request({**TEXT, "shape": [0], "data": []}), {}), 400, "empty batch"),
    "binary size past the end": (
        "CoLA",
        binary_request({"text": [b"a sentence"]}, [15]),
        400,
        "binary_data_size 15 does not add up",
    ),
    "binary sizes short of the data": (
        "CoLA",
        binary_request({"text": [b"a sentence"]}, extra=b"more"),
        400,
        "add up to 14 bytes, but 18 bytes follow",
    ),
    "element past its input": ("CoLA", lying_element_length(), 400, "element 0 claims 99 bytes"),
    "bad header length": (
        "CoLA",
        (b"{}", {"Inference-Header-Content-Length": "9"}),
        400,
        "not a byte count within the body's 2 bytes",
    ),
    "binary text not UTF-8": (
        "CoLA",
        binary_request({"text": [b"fine", b"caf\xe9"]}),
        400,
        "input 'text': element 1 is not UTF-8 text",
    ),
    "JSON not UTF-8": ("CoLA", (json_request(TEXT).replace(b"fine", b"f\xffne"), {}), 400, "JSON is not UTF-8 text"),
    "unknown output": (
        "CoLA",
        (json.dumps({"inputs": [TEXT], "outputs": [{"name": "logits"}]}).encode(), {}),
        400,
        'unknown output "logits"',
    ),
    "id not a string": ("CoLA", (json.dumps({"id": 7, "inputs": [TEXT]}).encode(), {}), 400, "'id' must be a string"),
    "body over the limit": ("CoLA", (BIG, {}), 413, f"has {len(BIG)} bytes, over the server's limit of {BODY_LIMIT}"),
    "chunked body over the limit": (
        "CoLA",
        ([b" " * 40000, json_request(TEXT), b" " * 40000], {}),
        413,
        f"the request body is over the server's limit of {BODY_LIMIT} bytes",
    ),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_a_bad_request_is_a_4xx_with_an_error_and_the_next_good_one_is_answered(case, server, client, expected):
    model, (body, headers), status, message = BAD_REQUESTS[case]
    got, content_type, answer = call(server, "POST", f"/v2/models/{model}/infer", body, headers)
    assert (got, content_type) == (status, "application/json"), (got, answer)
    answer = json.loads(answer)
    assert list(answer) == ["error"] and message in answer["error"], answer
    lines, rows = expected["MRPC"]
    check("MRPC", client.infer("MRPC", inputs(lines[:2], True)), rows[:2])


def test_the_client_sees_the_servers_error_and_other_paths_answer_json_errors(server, client):
    with pytest.raises(InferenceServerException, match="unknown model 'CoLa'") as error:
        client.infer("CoLa", inputs([Line("-", 1, "a sentence .", None)], True))
    assert error.value.status() == "404"
    for method, path, status in (
        ("GET", "/v2/nowhere", 404),
        ("GET", "/v2/models/CoLA/infer", 405),
        ("POST", "/v2/models/CoLA/versions/2/infer", 404),
    ):
        got, content_type, body = call(server, method, path, b"{}" if method == "POST" else None)
        assert (got, content_type, list(json.loads(body))) == (status, "application/json", ["error"])


def test_64_concurrent_clients_of_20_requests_each_are_all_answered_correctly(server, expected):
    async def client(k: int) -> int:
        name = TASKS[k % 3]  # CoLA and STS-B on OneFlow (two threads at once), MRPC on onnxruntime
        lines, rows = expected[name]
        async with triton_aio.InferenceServerClient(server.url) as c:
            for i in range(20):
                part = slice((k + i) % 22, (k + i) % 22 + 1 + i % 3)
                binary = (k + i) % 2 == 0
                result = await c.infer(
                    name, inputs(lines[part], binary), outputs=outputs(name, binary), request_id=f"{k}/{i}"
                )
                check(name, result, rows[part])
                assert result.get_response()["id"] == f"{k}/{i}"
        return 20

    async def main():
        return await asyncio.gather(*(client(k) for k in range(64)))

    started = time.monotonic()
    assert sum(asyncio.run(main())) == 1280
    assert time.monotonic() - started < 60


class Poisoned:
    """An engine whose batch fails, after a while, when one of its texts holds the poison word's token."""

    name, cuts = "poisoned", True

    def __init__(self, poison: int):
        self.poison = poison

    def __call__(self, features: dict[str, np.ndarray]) -> np.ndarray:
        if (features["input_ids"] == self.poison).any():
            time.sleep(0.3)  # (the other request is queued meanwhile)
            raise RuntimeError("a poisoned batch")
        return np.stack([features["input_mask"].sum(1), -features["input_mask"].sum(1)], 1).astype(np.float32)


def test_a_failing_batch_fails_its_own_requests_only(ws):
    """In-process, with an engine that fails on one text: the batch holding it answers 500 with the error, the
    batch computed beside it answers 200, and the failures are counted."""
    from distil.serve.models import Model
    from distil.serve.server import Server

    model_dir = ws / "models" / "CoLA"
    featurize = Featurizer(model_dir, io.read_config(model_dir))
    poison = int(featurize([Line("-", 1, "poison", None)])["input_ids"][0, 1])
    model = Model("m", get_task("CoLA"), featurize, Poisoned(poison))
    served = Server({"m": model}, max_batch_size=2, max_queue_delay_us=200_000, max_body_bytes=BODY_LIMIT)
    port = free_port()
    runner = uvicorn.Server(uvicorn.Config(served.app(), host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not runner.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert runner.started
        two = [Line("-", 1, "poison here", None), Line("-", 2, "all good", None)]
        fine = [Line("-", 1, "a good one", None), Line("-", 2, "and another", None)]

        async def main():  # two requests of two examples each: a batch each (max_batch_size 2)
            async def one(lines):
                async with triton_aio.InferenceServerClient(f"127.0.0.1:{port}") as c:
                    try:
                        return await c.infer("m", inputs(lines, True))
                    except InferenceServerException as e:
                        return e

            return await asyncio.gather(one(two), one(fine))

        failed, answered = asyncio.run(main())
        assert isinstance(failed, InferenceServerException) and failed.status() == "500"
        assert "model 'm' failed on the batch holding this request: RuntimeError: a poisoned batch" in failed.message()
        assert answered.as_numpy("label").tolist() == [b"0", b"0"]
        assert served.metrics.values["m"]["nv_inference_request_failure"] == 1
        assert served.metrics.values["m"]["nv_inference_request_success"] == 1
    finally:
        runner.should_exit = True
        thread.join(30)
    assert not thread.is_alive()


def test_sigterm_refuses_new_requests_finishes_the_accepted_ones_and_exits_0(ws, expected, tmp_path):
    """16 clients keep sending until the server refuses them (503) or is gone; SIGTERM arrives while requests wait
    in the queue. Every response is a correct 200 or a 503; while the accepted requests finish the server is live,
    not ready, and refuses a new request; it answered every request it accepted (its own count against the
    clients') and exits 0."""
    lines, rows = expected["CoLA"]
    port = free_port()
    process = ServerProcess(
        ["bash", str(ROOT / "scripts" / "run_serve.sh"), str(ws / "models" / "CoLA"), "--device", "cpu"],
        port,
        tmp_path,
        env={"PORT": str(port), "MAX_QUEUE_DELAY_US": "200000", "MAX_BATCH_SIZE": "64"},
    )
    outcomes: list[str] = []
    try:
        process.wait_ready()

        async def client(k: int) -> None:
            async with triton_aio.InferenceServerClient(process.url) as c:
                for i in range(200):
                    part = slice((k + i) % 20, (k + i) % 20 + 2)
                    try:
                        check("CoLA", await c.infer("CoLA", inputs(lines[part], True)), rows[part])
                    except InferenceServerException as e:
                        assert e.status() == "503" and "stopping" in e.message(), (e.status(), e.message())
                        outcomes.append("503")
                        return
                    except aiohttp.ClientError:  # the server closed: never accepted, never answered
                        outcomes.append("gone")
                        return
                    outcomes.append("200")

        async def main():
            clients = [asyncio.create_task(client(k)) for k in range(16)]
            while outcomes.count("200") < 32:
                await asyncio.sleep(0.01)
                assert time.monotonic() < deadline
            await asyncio.sleep(0.1)  # the next requests are in, waiting out the batch's 200 ms queue delay
            os.kill(process.process.pid, signal.SIGTERM)
            async with triton_aio.InferenceServerClient(process.url) as probe:  # while the accepted ones finish
                ready, live = await probe.is_server_ready(), await probe.is_server_live()
                with pytest.raises(InferenceServerException, match="stopping") as refused:
                    await probe.infer("CoLA", inputs(lines[:1], True))
            await asyncio.wait_for(asyncio.gather(*clients), 60)
            return ready, live, refused.value.status()

        deadline = time.monotonic() + 60
        assert asyncio.run(main()) == (False, True, "503")  # draining: alive, not ready, refusing
        assert process.process.wait(60) == 0, process.stderr()
    finally:
        process.stop()
    summary = json.loads((tmp_path / "stdout").read_text())["inference_requests"]
    assert summary["accepted"] == summary["answered"] == outcomes.count("200"), (summary, outcomes)
    assert summary["running_at_stop"] >= 1  # requests were in flight at the signal, and were answered
    assert summary["refused_while_stopping"] == outcomes.count("503") + 1  # (and the probe)
    assert outcomes.count("503") + outcomes.count("gone") == 16
    assert "stopping: every accepted inference request has been answered" in process.stderr()


@pytest.mark.parametrize("case", ["same name", "no batch"])
def test_usage_errors_exit_2_before_serving(case, ws, tmp_path):
    """Two directories of one name would be one model id; a batch must hold an example."""
    shutil.copytree(ws / "models" / "MRPC", tmp_path / "CoLA")
    dirs, flags, message = {
        "same name": ([ws / "models" / "CoLA", tmp_path / "CoLA"], [], "two model directories named CoLA"),
        "no batch": ([tmp_path / "CoLA"], ["--max_batch_size", "0"], "--max_batch_size must be at least 1, got 0"),
    }[case]
    done = run([PYTHON, "-m", "distil", "serve", *map(str, dirs), *flags, "--port", str(free_port())], timeout=60)
    assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
