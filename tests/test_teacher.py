"""Teacher fine-tuning through the real scripts, task heads, SERVE_FOR_ONLINE and checkpoint errors (resuming a
killed teacher run: tests/test_bad_input.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import PYTHON, ROOT, run
from distil.algorithms.options import TeacherOptions
from distil.algorithms.teacher import Teacher
from distil.data.convert import ConvertConfig, convert_task
from distil.errors import UsageError
from distil.models import io
from distil.train.graph import Evaluator
from distil.train.placement import Placement
from distil.train.run import RunConfig, train_algorithm
from distil.train.settings import TrainSettings
from glue_fixtures import write_task

TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 48,
    "max_position_embeddings": 64,
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, vocab_file):
    """A tiny random "pretrained" BERT and GLUE-shaped data: MNLI and STS-B (seq 32). (Learnable SST-2 and the
    teacher the scripts fine-tune on it: the session's `script_teacher`.)"""
    root = tmp_path_factory.mktemp("teacher")
    io.init_bert(root / "pretrained", vocab_file, TINY, seed=0)
    write_task(root / "glue", "MNLI", {"train.tsv": 40, "dev_matched.tsv": 12, "dev_mismatched.tsv": 9})
    write_task(root / "glue", "STS-B", {"train.tsv": 40, "dev.tsv": 11})
    for task in ("MNLI", "STS-B"):
        convert_task(
            task,
            ConvertConfig(root / "glue", root / "data", vocab_file, max_seq_length=32, lstm_seq_length=0, workers=1),
        )
    return root


def test_tiny_teacher_learns_through_the_scripts_and_eval_reproduces_it(script_teacher):
    """The session's teacher: run_train_teacher.sh SST-2 --log_every 10 with EPOCH=5 LEARNING_RATE=2e-3
    BATCH_SIZE=16 (and SERVE_FOR_ONLINE=True, which the next test checks) on learnable SST-2 (640 train, 160 dev)."""
    trained, model_id, model_dir = script_teacher.trained, script_teacher.model_id, script_teacher.model_dir
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert model_id == "SST-2_epoch-5_lr-2e-3_wd-0.0001"
    assert f"evaluate it with: bash scripts/run_eval_teacher.sh 0 SST-2 {model_id}" in trained.stderr
    results = json.loads(trained.stdout)
    assert results["accuracy"] >= 0.85, results  # chance is ~0.5 on this balanced dev set
    assert json.loads((model_dir / "results_eval.json").read_text()) == results
    history = json.loads((model_dir / "train_history.json").read_text())["epochs"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]
    assert "step 10/" in trained.stderr and "hard_label_loss" in trained.stderr and "examples/s" in trained.stderr
    assert max(h["metrics"]["accuracy"] for h in history) == results["accuracy"]
    assert results["best_epoch"] == max(h["epoch"] for h in history if h["metrics"]["accuracy"] == results["accuracy"])
    env = {"DATA_ROOT": str(script_teacher.root / "data"), "MODELS_ROOT": str(script_teacher.root / "models")}
    evaluated = run(["bash", str(ROOT / "scripts" / "run_eval_teacher.sh"), "0", "SST-2", model_id], env=env)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads(evaluated.stdout)["accuracy"] == results["accuracy"]
    missing = run(["bash", str(ROOT / "scripts" / "run_eval_teacher.sh"), "0", "SST-2", "nope"], env=env)
    assert (
        missing.returncode == 2 and f"no model nope in {model_dir.parent}; models there: {model_id}" in missing.stderr
    )


def train_api(root: Path, task: str, model_dir: Path, **settings) -> dict:
    values = {
        "epochs": 1,
        "learning_rate": 1e-3,
        "weight_decay": 0.01,
        "batch_size": 8,
        "eval_batch_size": 5,
        **settings,
    }
    run_config = RunConfig(
        task=task,
        data_root=root / "data",
        model_save_dir=model_dir,
        settings=TrainSettings(**values),
        options=TeacherOptions(root / "pretrained"),
    )
    return train_algorithm(Teacher(), run_config)


def test_mnli_head_has_three_classes_and_both_dev_sets(workspace, tmp_path):
    results = train_api(workspace, "MNLI", tmp_path / "mnli", max_steps=3)
    assert set(results) >= {"accuracy", "eval_mismatched", "num_examples"} and results["num_examples"] == 12
    assert results["eval_mismatched"]["num_examples"] == 9
    model = io.load_model(tmp_path / "mnli")
    assert model.classifier.weight.shape == (3, 32)
    assert json.loads((tmp_path / "mnli" / "config.json").read_text())["task"]["num_labels"] == 3


def test_sts_b_head_is_a_regression(workspace, tmp_path):
    results = train_api(workspace, "STS-B", tmp_path / "stsb", max_steps=3)
    assert {"pearson", "spearman", "mse"} <= set(results) and "accuracy" not in results
    model = io.load_model(tmp_path / "stsb")
    assert model.classifier.weight.shape == (1, 32)
    _, outputs, _ = Evaluator(model, workspace / "data" / "STS-B" / "eval", ("pearson",), 5, Placement("cpu")).run()
    assert outputs["logits"].shape == (outputs["labels"].shape[0], 1)
    expected = np.corrcoef(outputs["logits"].reshape(-1), outputs["labels"].reshape(-1))[0, 1]
    # (batches of 5 cut to other lengths than training's evaluation: float rounding of a correlation)
    assert results["pearson"] == pytest.approx(expected, abs=1e-4)
    assert results["mse"] == pytest.approx(
        np.mean((outputs["logits"].reshape(-1) - outputs["labels"].reshape(-1)) ** 2), rel=1e-5
    )


def test_serve_for_online_keeps_a_loadable_model_with_the_same_metrics(script_teacher):
    """The session's teacher was trained with SERVE_FOR_ONLINE=True (the previous test checks its training)."""
    trained, served = script_teacher.trained, script_teacher.model_dir
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert sorted(p.name for p in served.iterdir()) == [
        "config.json",
        "results_eval.json",
        "train_curve.png",
        "train_history.json",
        "vocab.txt",
        "weights",
    ]
    import distil

    assert distil.load_model(served).classifier.weight.shape == (2, 32)
    evaluated = run([PYTHON, "-m", "distil", "eval", str(served), "--data_root", str(script_teacher.root / "data")])
    assert evaluated.returncode == 0
    assert json.loads(evaluated.stdout)["accuracy"] == json.loads(trained.stdout)["accuracy"]


def test_checkpoint_errors_name_the_tensor_and_both_shapes(workspace, tmp_path):
    target = tmp_path / "model"
    io.init_bert(target, workspace / "pretrained" / "vocab.txt", TINY)
    config = json.loads((target / "config.json").read_text())
    config["model"]["intermediate_size"] = 50
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        UsageError,
        match=r"tensor 'bert.encoder.layer.0.intermediate.dense.weight' has shape "
        r"\(48, 32\) in the checkpoint but \(50, 32\) in the model",
    ):
        io.load_model(target)
    (target / "config.json").unlink()
    with pytest.raises(UsageError, match=r"is not a model directory: it has no config.json"):
        io.load_model(target)


def test_finished_runs_are_not_retrained_and_changed_settings_do_not_resume(workspace, tmp_path):
    first = train_api(workspace, "STS-B", tmp_path / "m", max_steps=2)
    weights = (tmp_path / "m" / "weights").stat().st_mtime_ns
    assert train_api(workspace, "STS-B", tmp_path / "m", max_steps=2) == first
    assert (tmp_path / "m" / "weights").stat().st_mtime_ns == weights
    state_file = tmp_path / "m" / "train_state" / "state.json"
    state = json.loads(state_file.read_text())
    state["finished"] = False
    state_file.write_text(json.dumps(state))
    with pytest.raises(UsageError, match=r"belongs to a run with other settings \(differs in: \['max_steps'\]\)"):
        train_api(workspace, "STS-B", tmp_path / "m", max_steps=3)
    assert np.isfinite(first["pearson"])
    del state["settings"]["length_buckets"]  # a train_state/ written before length buckets: it trained at full length
    state_file.write_text(json.dumps(state))
    with pytest.raises(UsageError, match=r"other settings \(differs in: \['length_buckets'\]\)"):
        train_api(workspace, "STS-B", tmp_path / "m", max_steps=2)
    assert train_api(workspace, "STS-B", tmp_path / "m", max_steps=2, length_buckets="off")["length_buckets"] == "off"
