"""`predict` on raw text: the same inputs and predictions as `eval` on the converted split, every input form
(task TSV with or without labels, plain text, pairs, stdin), and clear errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import PYTHON, ROOT, free_port, run
from distil.data.convert import ConvertConfig, convert_task
from distil.data.tasks import get_task
from distil.errors import UsageError
from distil.models import io
from distil.train.graph import Evaluator
from distil.train.placement import Placement
from glue_fixtures import write_random_classifier, write_task

SIZES = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 48,
    "max_position_embeddings": 64,
}
TASKS = ("CoLA", "MRPC", "STS-B")


@pytest.fixture(scope="module")
def ws(tmp_path_factory, vocab_file) -> Path:
    """CoLA (header-less dev), MRPC (pairs, a BOM in the header) and STS-B (regression), converted at seq 32,
    and a random model directory for each whose outputs differ from example to example."""
    root = tmp_path_factory.mktemp("predict")
    for name in TASKS:
        write_task(root / "glue", name, {"train.tsv": 4, "dev.tsv": 23, "test.tsv": 9})
        convert_task(
            name,
            ConvertConfig(root / "glue", root / "data", vocab_file, max_seq_length=32, lstm_seq_length=0, workers=1),
        )
        write_random_classifier(root / "models" / name, name, vocab_file, SIZES)
    return root


def predict(ws: Path, model: str, *args: str, **kwargs):
    return run([PYTHON, "-m", "distil", "predict", str(ws / "models" / model), *args, "--device", "cpu"], **kwargs)


def rows(stdout: str):
    return [json.loads(line) for line in stdout.splitlines()]


@pytest.mark.parametrize("name", TASKS)
def test_predict_on_the_dev_tsv_gives_evals_outputs_for_every_example(ws, name):
    task = get_task(name)
    dev = ws / "glue" / name / task.splits["eval"].file
    done = predict(ws, name, str(dev))
    assert done.returncode == 0, done.stderr[-2000:]
    got = rows(done.stdout)
    model = io.load_model(ws / "models" / name)
    _, outputs, _ = Evaluator(model, ws / "data" / name / "eval", task.metrics, 5, Placement("cpu")).run()
    logits = outputs["logits"]
    assert len(got) == len(logits) == 23
    first_data_line = 1 if name == "CoLA" else 2  # CoLA's dev file has no header
    assert [r["line"] for r in got] == list(range(first_data_line, first_data_line + 23))
    assert {r["source"] for r in got} == {str(dev)}
    if task.is_regression:
        np.testing.assert_allclose([r["score"] for r in got], logits[:, 0], rtol=1e-5, atol=1e-6)
        return
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(
        [[r["probabilities"][label] for label in task.labels] for r in got], expected, rtol=1e-5, atol=1e-6
    )
    assert [r["label"] for r in got] == [task.labels[i] for i in logits.argmax(-1)]
    assert np.ptp(expected[:, 0]) > 100 * 1e-6  # examples differ by far more than the tolerance


@pytest.mark.parametrize("compiled", [True, False])
def test_evaluation_with_length_buckets_gives_the_full_length_outputs_in_file_order(ws, compiled, monkeypatch):
    from distil.train import graph

    monkeypatch.setattr(graph, "in_graph", lambda *args: compiled)
    model = io.load_model(ws / "models" / "CoLA")  # single sentences of 10 to 32 tokens
    split = ws / "data" / "CoLA" / "eval"
    metrics_off, full, _ = Evaluator(model, split, ("accuracy",), 5, Placement("cpu"), "off").run()
    cut = Evaluator(model, split, ("accuracy",), 5, Placement("cpu"))
    for _ in range(2):  # a second pass starts where the first stopped reading, and sees the same examples
        metrics, outputs, _ = cut.run()
        np.testing.assert_allclose(outputs["logits"], full["logits"], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(outputs["labels"], full["labels"])
        assert metrics == metrics_off
    if compiled:  # a graph per length bucket in use, the shortest far below the data's 32 positions
        assert set(cut.passes.cut_graphs) <= set(cut.passes.buckets) and min(cut.passes.cut_graphs) <= 16
    with pytest.raises(UsageError, match="--length_buckets must be one of auto, off, got 'on'"):
        Evaluator(model, split, ("accuracy",), 5, Placement("cpu"), "on")


def test_batches_of_similar_length_are_cut_and_results_come_back_in_input_order():
    from distil.predict import logits_by_length

    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 30, size=23)
    mask = (np.arange(32)[None, :] < lengths[:, None]).astype(np.int32)
    features = {
        "input_ids": rng.integers(1, 99, size=(23, 32)).astype(np.int32) * mask,
        "input_mask": mask,
        "segment_ids": np.zeros((23, 32), np.int32),
    }
    widths = []

    def engine(batch):  # logits that tell the rows apart and depend on the real tokens only
        widths.append(batch["input_ids"].shape[1])
        return np.stack([batch["input_ids"].sum(1), batch["input_mask"].sum(1)], axis=1).astype(np.float32)

    seen = []
    cut = logits_by_length(engine, features, 5, True, seen.append)
    expected = np.stack([features["input_ids"].sum(1), lengths], axis=1)
    np.testing.assert_array_equal(cut, expected)
    ordered = np.sort(lengths)
    assert widths == [int(ordered[min(i + 4, 22)]) for i in range(0, 23, 5)] and seen == [5, 5, 5, 5, 3]
    widths.clear()
    np.testing.assert_array_equal(logits_by_length(engine, features, 5, False, seen.append), expected)
    assert widths == [32] * 5


def test_length_buckets_give_the_full_length_predictions(ws):
    dev = str(ws / "glue" / "MRPC" / "dev.tsv")
    cut = rows(predict(ws, "MRPC", dev, "--batch_size", "4").stdout)
    full = rows(predict(ws, "MRPC", dev, "--batch_size", "4", "--length_buckets", "off").stdout)
    assert [(r["line"], r["label"]) for r in cut] == [(r["line"], r["label"]) for r in full] and len(cut) == 23
    for a, b in zip(cut, full):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)
    bad = predict(ws, "MRPC", dev, "--length_buckets", "some")
    assert bad.returncode == 2 and "--length_buckets must be one of auto, off, got 'some'" in bad.stderr


def test_unlabelled_tsv_plain_text_pairs_and_stdin_give_the_same_predictions(ws, tmp_path):
    rows_dev = [
        line.split("\t") for line in (ws / "glue" / "MRPC" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    ]
    pairs = [f"{r[3]}\t{r[4]}" for r in rows_dev]
    text = tmp_path / "pairs.txt"
    text.write_text("\n".join(pairs) + "\n", encoding="utf-8")
    from_tsv = rows(predict(ws, "MRPC", str(ws / "glue" / "MRPC" / "dev.tsv")).stdout)
    from_text = rows(predict(ws, "MRPC", str(text)).stdout)
    from_stdin = rows(predict(ws, "MRPC", input="\n".join(pairs) + "\n").stdout)
    assert [r["line"] for r in from_text] == list(range(1, 24)) and from_stdin[0]["source"] == "-"
    for a, b, c in zip(from_tsv, from_text, from_stdin):
        assert a["probabilities"] == b["probabilities"] == c["probabilities"]
    unlabelled = predict(ws, "MRPC", str(ws / "glue" / "MRPC" / "test.tsv"))
    assert unlabelled.returncode == 0 and len(rows(unlabelled.stdout)) == 9
    both = predict(ws, "CoLA", str(ws / "glue" / "CoLA" / "test.tsv"), "-", input="a plain sentence .\n")
    assert both.returncode == 0, both.stderr[-2000:]
    assert [(r["source"], r["line"]) for r in rows(both.stdout)][-2:] == [
        (str(ws / "glue" / "CoLA" / "test.tsv"), 10),
        ("-", 1),
    ]


def test_output_file_is_written_whole_with_a_summary(ws, tmp_path):
    out = tmp_path / "predictions.jsonl"
    done = run(
        [
            "bash",
            str(ROOT / "scripts" / "run_predict.sh"),
            str(ws / "models" / "STS-B"),
            str(ws / "glue" / "STS-B" / "test.tsv"),
        ],
        env={"OUTPUT": str(out), "BATCH_SIZE": "4", "LENGTH_BUCKETS": "off"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == {
        "model_dir": str(ws / "models" / "STS-B"),
        "task": "STS-B",
        "examples": 9,
        "engine": "oneflow",
        "precision": "fp32",
        "length_buckets": "off",
        "output": str(out),
    }
    assert [set(r) for r in rows(out.read_text())] == [{"source", "line", "score"}] * 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.jsonl"]


def test_two_processes_predict_what_one_does_and_rank_zero_writes(ws, tmp_path):
    dev = str(ws / "glue" / "MRPC" / "dev.tsv")
    one = rows(predict(ws, "MRPC", dev, "--batch_size", "5").stdout)
    out = tmp_path / "two.jsonl"
    env = {"OUTPUT": str(out), "BATCH_SIZE": "5", "GPU_NUM_PER_NODE": "2", "MASTER_PORT": str(free_port())}
    done = run(["bash", str(ROOT / "scripts" / "run_predict.sh"), str(ws / "models" / "MRPC"), dev], env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["examples"] == 23  # 23 rows in batches of 5: the last, 3 rows, split 2 + 2
    two = rows(out.read_text())
    assert [(r["line"], r["label"]) for r in two] == [(r["line"], r["label"]) for r in one]
    for a, b in zip(one, two):
        assert b["probabilities"] == pytest.approx(a["probabilities"], abs=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two.jsonl"]
    for flags, message in (
        (["-"], "reads INPUT files, not standard input"),
        ([dev, "--engine", "onnxruntime"], "--engine onnxruntime runs in one process"),
    ):
        refused = predict(ws, "MRPC", *flags, "--nproc_per_node", "2", "--master_port", str(free_port()), input="")
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr[-2000:]


@pytest.mark.parametrize(
    "setup,message",
    [
        ("empty", "no examples to classify (the input is empty)"),
        ("three_fields", "pairs.txt:2: 3 tab-separated fields; a MRPC example is a sentence pair"),
        ("one_field", "pairs.txt:1: 1 tab-separated fields; a MRPC example is a sentence pair"),
        ("short_tsv_row", "dev.tsv:3: 4 tab-separated fields, but the MRPC TSV layout of line 1 has 5"),
        ("not_utf8", "pairs.txt:2: not UTF-8 text (byte 0xe9 at byte 2 of the line)"),
        ("missing_input", "nothing.txt: no such input file"),
        ("no_weights", "no weights/"),
        ("not_a_model", "config.json"),
    ],
)
def test_bad_input_is_a_clear_error_and_leaves_no_output(ws, tmp_path, setup, message):
    model, inputs = ws / "models" / "MRPC", [str(tmp_path / "pairs.txt")]
    (tmp_path / "pairs.txt").write_text(
        {"empty": "\n\n", "three_fields": "a\tb\nc\td\te\n", "one_field": "just one sentence\n"}.get(setup, "a\tb\n"),
        encoding="utf-8",
    )
    if setup == "not_utf8":
        (tmp_path / "pairs.txt").write_bytes(b"a\tb\nc\xe9\td\n")
    if setup == "short_tsv_row":
        lines = (ws / "glue" / "MRPC" / "dev.tsv").read_text(encoding="utf-8").splitlines()
        lines[2] = "\t".join(lines[2].split("\t")[:4])
        inputs = [str(tmp_path / "dev.tsv")]
        (tmp_path / "dev.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if setup == "missing_input":
        inputs = [str(tmp_path / "nothing.txt")]
    if setup in ("no_weights", "not_a_model"):
        model = tmp_path / "model"
        model.mkdir()
        if setup == "no_weights":
            (model / "config.json").write_text((ws / "models" / "MRPC" / "config.json").read_text())
    out = tmp_path / "out" / "predictions.jsonl"
    out.parent.mkdir()
    done = run([PYTHON, "-m", "distil", "predict", str(model), *inputs, "--output", str(out), "--device", "cpu"])
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert message in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert os.listdir(out.parent) == []


def test_stdin_that_is_not_utf8_is_named_with_its_line(ws):
    done = subprocess.run(
        [PYTHON, "-m", "distil", "predict", str(ws / "models" / "MRPC"), "--device", "cpu"],
        input=b"a\tb\nc\td\n\xff\xfe\tx\n",
        capture_output=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
    )
    assert done.returncode == 2 and done.stdout == b"", done.stderr[-2000:]
    assert b"-:3: not UTF-8 text (byte 0xff at byte 1 of the line)" in done.stderr and b"Traceback" not in done.stderr


def test_a_batch_size_below_one_is_a_usage_error(ws):
    done = predict(ws, "MRPC", "--batch_size", "0", input="a\tb\n")
    assert done.returncode == 2 and "--batch_size must be at least 1, got 0" in done.stderr


def test_eval_takes_length_buckets_and_says_which_it_used(ws, tmp_path):
    scores = {}
    for mode in ("auto", "off"):
        done = run(
            [
                PYTHON,
                "-m",
                "distil",
                "eval",
                str(ws / "models" / "CoLA"),
                "--data_root",
                str(ws / "data"),
                "--device",
                "cpu",
                "--eval_batch_size",
                "5",
                "--result_dir",
                str(tmp_path / mode),
                "--length_buckets",
                mode,
            ]
        )
        assert done.returncode == 0, done.stderr[-2000:]
        scores[mode] = json.loads((tmp_path / mode / "results_eval.json").read_text())
        assert scores[mode]["length_buckets"] == mode
    assert scores["auto"]["mcc"] == scores["off"]["mcc"] and scores["auto"]["num_examples"] == 23
    bad = run(
        [
            PYTHON,
            "-m",
            "distil",
            "eval",
            str(ws / "models" / "CoLA"),
            "--data_root",
            str(ws / "data"),
            "--device",
            "cpu",
            "--length_buckets",
            "x",
            "--result_dir",
            str(tmp_path / "bad"),
        ]
    )
    assert bad.returncode == 2 and "--length_buckets must be one of auto, off, got 'x'" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_length_groups_split_sorted_rows_where_padding_costs_more_than_a_call():
    from distil.predict import length_groups, logits_by_length

    lengths = np.array([3, 3, 4, 40, 40])
    # one call: 20 + 5 x 40 = 220 tokens; two: 20 + 3 x 4 + 20 + 2 x 40 = 132
    assert length_groups(lengths, 32, 20) == [(0, 3), (3, 5)]
    assert length_groups(lengths, 32, 200) == [(0, 5)]  # a call dearer than the padding: one call
    assert length_groups(lengths, 2, 20) == [(0, 2), (2, 3), (3, 5)]  # never more than batch_size rows
    assert length_groups(np.array([5] * 7), 32, 0) == [(0, 7)]  # equal lengths: nothing to save
    mask = (np.arange(48)[None, :] < np.array([40, 3, 40, 4, 3])[:, None]).astype(np.int32)
    features = {"input_ids": mask * np.arange(1, 6)[:, None], "input_mask": mask, "segment_ids": 0 * mask}
    widths = []

    def engine(batch):
        widths.append(batch["input_ids"].shape[1])
        return batch["input_ids"].sum(1, keepdims=True).astype(np.float32)

    logits = logits_by_length(engine, features, 32, True, lambda n: None, call_cost=20)
    np.testing.assert_array_equal(logits[:, 0], [40, 6, 120, 16, 15])
    assert widths == [4, 40]
