"""ONNX export: onnxruntime gives OneFlow's logits on every dev example (a BERT student, the BiLSTM single and
paired, the real MiniLM checkpoint), with any batch size and, for BERT, batches cut to their length; predict
picks the engine; stale files are refused."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import PYTHON, run
from distil.data.convert import ConvertConfig, convert_task
from distil.data.tasks import get_task
from distil.data.tokenization import load_vocab
from distil.errors import UsageError
from distil.models import io
from distil.models.bert import BertConfig
from distil.onnx_export import export_onnx
from distil.predict import Featurizer, OneFlowEngine, OnnxEngine, logits_by_length, predict, read_lines
from distil.runtime import import_oneflow
from glue_fixtures import write_learnable_sst2, write_task

flow = import_oneflow()
TOLERANCE = 1e-4
CUT_TOLERANCE = 1e-5  # onnxruntime against itself: cut batches differ only by float32 summation order


def model_dir(root: Path, name: str, model: flow.nn.Module, config: dict, vocab: Path, task: str, fmt: str) -> Path:
    spec = get_task(task)
    io.write_new_model_dir(
        root / name,
        model,
        config,
        vocab,
        {"name": "test"},
        task={"name": task, "labels": list(spec.labels), "num_labels": spec.num_labels, "metrics": list(spec.metrics)},
        data={
            "format": fmt,
            "folder": task + ("_lstm_8" if fmt == "lstm" else ""),
            "seq_length": 8 if fmt == "lstm" else 32,
            "do_lower_case": True,
        },
    )
    return root / name


@pytest.fixture(scope="module")
def ws(tmp_path_factory, vocab_file, minilm_dir) -> Path:
    root = tmp_path_factory.mktemp("onnx")
    write_learnable_sst2(root / "glue", 64, 40)
    write_task(root / "glue", "MRPC", {"train.tsv": 40, "dev.tsv": 30, "test.tsv": 3})
    for task in ("SST-2", "MRPC"):
        convert_task(
            task,
            ConvertConfig(root / "glue", root / "data", vocab_file, max_seq_length=32, lstm_seq_length=8, workers=1),
        )  # the BiLSTM's graph unrolls each step
    flow.manual_seed(0)
    bert = BertConfig(
        vocab_size=len(load_vocab(vocab_file)),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
    ).to_dict()
    student = io.build_model(bert)
    with flow.no_grad():
        student.classifier.weight.mul_(50.0)  # logits that differ from example to example by far more than 1e-5
    model_dir(root, "bert", student, bert, vocab_file, "SST-2", "bert")
    for task, mode in (("SST-2", "single"), ("MRPC", "separate")):
        words = root / "data" / f"{task}_lstm_8" / io.VOCAB_FILE
        lstm = {
            "model_type": "bilstm",
            "vocab_size": len(load_vocab(words)),
            "pad_token_id": load_vocab(words)["<PAD>"],
            "num_labels": 2,
            "pair_mode": mode,
            "embedding_size": 16,
            "hidden_size": 8,
            "fc_size": 12,
        }
        model_dir(root, f"lstm_{mode}", io.build_model(lstm), lstm, words, task, "lstm")
    io.convert_hf(minilm_dir, root / "minilm")  # the real checkpoint, given a task as fine-tuning would
    config = json.loads((root / "minilm" / io.CONFIG_FILE).read_text())
    spec = get_task("SST-2")
    config.update(
        task={"name": "SST-2", "labels": list(spec.labels), "num_labels": 2, "metrics": ["accuracy"]},
        data={"format": "bert", "folder": "SST-2", "seq_length": 32, "do_lower_case": True},
    )
    assert config["model"].get("num_labels", 2) == 2
    (root / "minilm" / io.CONFIG_FILE).write_text(json.dumps(config))
    return root


CASES = {"bert": "SST-2", "lstm_single": "SST-2", "lstm_separate": "MRPC", "minilm": "SST-2"}
DYNAMIC = ("bert", "minilm")  # the BiLSTM's file keeps its sequence length


@pytest.fixture(scope="module")
def exported(ws):
    """name -> (export summary, ONNX file): each model exported once for the module."""
    done = {}

    def export(name: str):
        if name not in done:
            path = ws / "onnx" / f"{name}.onnx"
            path.parent.mkdir(exist_ok=True)
            done[name] = export_onnx(ws / name, path), path
        return done[name]

    return export


def dev_features(ws: Path, name: str):
    task = get_task(CASES[name])
    lines = list(read_lines(str(ws / "glue" / task.folder / task.splits["eval"].file), task))
    return lines, Featurizer(ws / name, io.read_config(ws / name))(lines)


@pytest.mark.parametrize("name", sorted(CASES))
def test_onnxruntime_gives_oneflows_logits_on_every_dev_example(ws, exported, name, tmp_path):
    directory = ws / name
    summary, path = exported(name)
    seq_length = io.read_config(directory)["data"]["seq_length"]
    lengths = sorted({2, seq_length // 2, seq_length}) if name in DYNAMIC else [seq_length]
    assert summary["max_abs_logit_difference"] <= TOLERANCE
    checked = [shape for shape in summary["checked_shapes"] if shape[0] in (1, 3)]
    assert checked == [[b, n] for b in (1, 3) for n in lengths]
    import onnx

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["input_ids", "segment_ids", "input_mask"]
    assert all(i.type.tensor_type.shape.dim[0].dim_param == "batch" for i in (*proto.graph.input, *proto.graph.output))
    sequence = [(d.dim_param, d.dim_value) for d in (i.type.tensor_type.shape.dim[1] for i in proto.graph.input)]
    assert sequence == [("sequence", 0) if name in DYNAMIC else ("", seq_length)] * 3
    assert summary["dynamic_axes"] == {
        **{
            i: {0: "batch", 1: "sequence"} if name in DYNAMIC else {0: "batch"}
            for i in ("input_ids", "segment_ids", "input_mask")
        },
        "logits": {0: "batch"},
    }
    lines, features = dev_features(ws, name)
    oneflow, onnxruntime = OneFlowEngine(directory, "cpu"), OnnxEngine(path)
    assert onnxruntime.cuts == (name in DYNAMIC)
    worst = 0.0
    for batch in (len(lines), 7):  # the whole dev set at once, and batches of 7 with a shorter last one
        for start in range(0, len(lines), batch):
            part = {k: v[start : start + batch] for k, v in features.items()}
            got, expected = onnxruntime(part), oneflow(part)
            np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)
            worst = max(worst, float(np.abs(got - expected).max()))
    assert np.ptp(oneflow(features), axis=0).max() > 10 * worst  # examples differ far more than the engines do
    if name in ("bert", "minilm"):  # every LayerNorm and GELU (with its bias: BiasGelu) fused into one kernel
        layers = io.read_config(directory)["model"]["num_hidden_layers"]
        fused = fused_op_counts(path, tmp_path / "optimized.onnx")
        assert (fused["LayerNormalization"], fused["Gelu"] + fused["BiasGelu"]) == (1 + 2 * layers, layers)


@pytest.mark.parametrize("name", ["bert", "lstm_separate", "minilm"])
def test_onnxruntime_batches_cut_to_their_length_give_the_full_length_logits_in_input_order(ws, exported, name):
    """predict's --length_buckets auto on onnxruntime: batches of similar length, each cut to its longest member
    when the file's sequence axis is dynamic (BERT), give every example's full-length logits in input order."""
    _, path = exported(name)
    _, features = dev_features(ws, name)
    engine, widths = OnnxEngine(path), []

    def recorded(batch):
        widths.append(batch["input_ids"].shape[1])
        return engine(batch)

    full = engine(features)
    cut = logits_by_length(recorded, features, 4, engine.cuts, lambda rows: None)
    np.testing.assert_allclose(cut, full, rtol=0, atol=CUT_TOLERANCE)
    lengths, seq_length = features["input_mask"].sum(1), features["input_ids"].shape[1]
    if name in DYNAMIC:
        assert np.abs(full[np.argsort(lengths, kind="stable")] - full).max() > 100 * CUT_TOLERANCE  # (sorted order)
        assert widths == [int(max(part)) for part in np.array_split(np.sort(lengths), range(4, len(lengths), 4))]
        assert max(widths) < seq_length
    else:
        assert widths == [seq_length] * -(-len(lengths) // 4)


def test_predict_on_onnxruntime_cuts_batches_of_bert_only_and_gives_the_uncut_predictions(ws, exported, tmp_path):
    dev = str(ws / "glue" / "SST-2" / "dev.tsv")

    def predict(name: str, mode: str):
        out = tmp_path / f"{name}-{mode}.jsonl"
        done = run(
            [
                PYTHON,
                "-m",
                "distil",
                "predict",
                str(ws / name),
                dev,
                "--engine",
                "onnxruntime",
                "--onnx",
                str(exported(name)[1]),
                "--batch_size",
                "4",
                "--length_buckets",
                mode,
                "--output",
                str(out),
            ]
        )
        assert done.returncode == 0, done.stderr[-2000:]
        summary = json.loads(done.stdout)
        return summary["engine"], summary["length_buckets"], [json.loads(line) for line in out.read_text().splitlines()]

    engine, cut, by_length = predict("bert", "auto")
    assert (engine, cut) == ("onnxruntime", "auto")
    engine, cut, full = predict("bert", "off")
    assert (engine, cut) == ("onnxruntime", "off") and len(full) == len(by_length) == 40
    assert [(r["line"], r["label"]) for r in by_length] == [(r["line"], r["label"]) for r in full]
    for a, b in zip(by_length, full):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-6)
    assert predict("lstm_single", "auto")[:2] == ("onnxruntime", "off")  # a fixed-length file: batches stay whole


def fused_op_counts(path: Path, optimized: Path) -> Counter:
    """The op types of the model as onnxruntime runs it after its (portable) graph optimisations."""
    import onnx
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(optimized)
    onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Counter(node.op_type for node in onnx.load(str(optimized)).graph.node)


def test_predict_uses_a_fresh_export_refuses_a_stale_one_and_checks_the_engine_flag(ws, tmp_path):
    directory = tmp_path / "bert"
    shutil.copytree(ws / "bert", directory)
    dev = str(ws / "glue" / "SST-2" / "dev.tsv")

    def predict(*flags):
        return run(
            [
                PYTHON,
                "-m",
                "distil",
                "predict",
                str(directory),
                dev,
                "--output",
                str(tmp_path / "p.jsonl"),
                "--device",
                "cpu",
                *flags,
            ]
        )

    plain = predict()
    assert plain.returncode == 0 and json.loads(plain.stdout)["engine"] == "oneflow"
    by_oneflow = (tmp_path / "p.jsonl").read_text()
    exported = run([PYTHON, "-m", "distil", "export-onnx", str(directory)])
    assert exported.returncode == 0, exported.stderr[-2000:]
    fresh = predict()
    assert fresh.returncode == 0 and json.loads(fresh.stdout)["engine"] == "onnxruntime"
    for a, b in zip(by_oneflow.splitlines(), (tmp_path / "p.jsonl").read_text().splitlines()):
        a, b = json.loads(a), json.loads(b)
        assert a["label"] == b["label"] and a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)
    forced = predict("--engine", "oneflow")
    assert forced.returncode == 0 and json.loads(forced.stdout)["engine"] == "oneflow"

    later = os.path.getmtime(directory / "model.onnx") + 10
    for weights in (directory / io.WEIGHTS_DIR).rglob("*"):
        os.utime(weights, (later, later))  # the weights changed after the export
    stale = predict()
    assert stale.returncode == 0 and json.loads(stale.stdout)["engine"] == "oneflow"
    assert "model.onnx is older than" in stale.stderr
    refused = predict("--engine", "onnxruntime")
    assert refused.returncode == 2 and f"{directory / 'model.onnx'} is older than" in refused.stderr
    unknown = predict("--engine", "tensorrt")
    assert (
        unknown.returncode == 2
        and "--engine must be one of auto, oneflow, onnxruntime, got 'tensorrt'" in unknown.stderr
    )
    (directory / "model.onnx").unlink()
    missing = predict("--engine", "onnxruntime")
    assert missing.returncode == 2 and "export it: python -m distil export-onnx" in missing.stderr


def test_export_errors_name_the_model_and_write_nothing(ws, tmp_path):
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(ws / "bert" / io.CONFIG_FILE, no_weights / io.CONFIG_FILE)
    done = run([PYTHON, "-m", "distil", "export-onnx", str(no_weights)])
    assert done.returncode == 2 and f"{no_weights}: no weights/" in done.stderr
    assert sorted(p.name for p in no_weights.iterdir()) == [io.CONFIG_FILE]
    missing = run([PYTHON, "-m", "distil", "export-onnx", str(tmp_path / "nothing")])
    assert missing.returncode == 2 and "nothing" in missing.stderr and "Traceback" not in missing.stderr


@pytest.fixture(scope="module")
def trained(trained_sst2, tmp_path_factory) -> Path:
    """The session's trained tiny SST-2 model (a copy, which the INT8 tests export into) and its data."""
    root = tmp_path_factory.mktemp("int8")
    shutil.copytree(trained_sst2 / "model", root / "model")
    for name in ("data", "glue"):
        os.symlink(trained_sst2 / name, root / name)
    return root


def dev_accuracy(rows, dev_tsv: Path) -> float:
    labels = [line.split("\t")[1] for line in dev_tsv.read_text(encoding="utf-8").splitlines()[1:]]
    return float(np.mean([row["label"] == label for row, label in zip(rows, labels)]))


def test_int8_export_is_smaller_runs_and_keeps_the_dev_metric(trained):
    """export-onnx --quantize int8 writes model.int8.onnx beside model.onnx: smaller, run by predict
    --precision int8, its dev accuracy (as predict's labels score it) the one the export reported, within the
    1-point limit of FP32's."""
    model = trained / "model"
    done = run(
        [PYTHON, "-m", "distil", "export-onnx", str(model), "--quantize", "int8", "--data_root", str(trained / "data")]
    )
    assert done.returncode == 0, done.stderr[-2000:]
    int8 = json.loads(done.stdout)["int8"]
    assert int8["dev_fp32"]["accuracy"] >= 0.8, int8  # a trained model: the comparison means something
    assert int8["dev_fp32"]["accuracy"] - int8["dev_int8"]["accuracy"] <= 0.01
    assert int8["onnx"] == str(model / io.ONNX_INT8_FILE)
    assert (model / io.ONNX_INT8_FILE).stat().st_size < 0.5 * (model / io.ONNX_FILE).stat().st_size
    assert not [p for p in model.iterdir() if p.name.startswith(".onnx")]  # no staging folders left
    dev = trained / "glue" / "SST-2" / "dev.tsv"
    scored = {}
    for precision in ("fp32", "int8"):
        out = run([PYTHON, "-m", "distil", "predict", str(model), str(dev), "--precision", precision])
        assert out.returncode == 0, out.stderr[-2000:]
        rows = [json.loads(line) for line in out.stdout.splitlines()]
        assert len(rows) == 64 and all(abs(sum(r["probabilities"].values()) - 1) < 1e-6 for r in rows)
        scored[precision] = (dev_accuracy(rows, dev), [r["probabilities"]["1"] for r in rows])
    assert scored["fp32"][0] == pytest.approx(int8["dev_fp32"]["accuracy"], abs=1e-9)
    assert scored["int8"][0] == pytest.approx(int8["dev_int8"]["accuracy"], abs=1e-9)
    assert scored["fp32"][1] != scored["int8"][1]  # the INT8 file really ran: its probabilities differ a little
    assert np.abs(np.subtract(scored["fp32"][1], scored["int8"][1])).max() < 0.1


def test_int8_export_refuses_a_file_whose_dev_metric_drops_too_far(trained, tmp_path, monkeypatch):
    """When the INT8 file's dev metric falls more than --max_metric_drop below FP32's, nothing is written."""
    from distil import onnx_export

    model = tmp_path / "model"
    shutil.copytree(trained / "model", model, ignore=shutil.ignore_patterns("*.onnx"))
    real = onnx_export.onnx_dev_metrics

    def int8_worse(path, *args):
        values = real(path, *args)
        return {k: v - 0.02 for k, v in values.items()} if path.name.endswith(".int8.onnx") else values

    monkeypatch.setattr(onnx_export, "onnx_dev_metrics", int8_worse)
    with pytest.raises(
        UsageError,
        match=r"INT8 dev accuracy .* is 2\.00 points below FP32's .*--max_metric_drop "
        r"1\.0.*model\.int8\.onnx not written",
    ):
        export_onnx(model, quantize="int8", data_root=trained / "data")
    assert not (model / io.ONNX_INT8_FILE).exists()
    assert not [p for p in model.iterdir() if p.name.startswith(".onnx")]


def test_int8_flags_fail_clearly(trained, tmp_path):
    """No INT8 file, INT8 on OneFlow, an unknown precision, no dev split, a bad quantize mode: errors that say so,
    exit 2 through the CLI."""
    model = tmp_path / "model"
    shutil.copytree(trained / "model", model, ignore=shutil.ignore_patterns("*.onnx"))
    dev = [str(trained / "glue" / "SST-2" / "dev.tsv")]
    cases = [
        (
            lambda: predict(model, dev, None, 8, "cpu", precision="int8"),
            r"--precision int8: no .*model\.int8\.onnx .*export-onnx .* --quantize int8",
        ),
        (lambda: predict(model, dev, None, 8, "cpu", "oneflow", precision="int8"), "not with --engine oneflow"),
        (lambda: predict(model, dev, None, 8, "cpu", precision="fp16"), "--precision must be one of fp32, int8"),
        (
            lambda: export_onnx(model, quantize="int8", data_root=tmp_path / "none"),
            r"no converted data at .*none/SST-2",
        ),
        (lambda: export_onnx(model, quantize="int4"), "--quantize must be int8"),
    ]
    for call, message in cases:
        with pytest.raises(UsageError, match=message):
            call()
    assert not list(model.glob("*.onnx"))
    done = run([PYTHON, "-m", "distil", "predict", str(model), *dev, "--precision", "int8"])
    assert done.returncode == 2 and "--precision int8: no " in done.stderr, done.stderr[-1500:]
