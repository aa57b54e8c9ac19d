"""A training process that dies from a signal is restarted from its last saved state and ends as if it never
died; a Python exception or a usage error is not retried (distil.crash).

Faults are injected by tests/faults/sitecustomize.py (DISTIL_TEST_FAULT) into the first attempt of the
watched training process, after it has logged a given step: a real signal, sent by the process to itself.
The 2-process case is in tests/test_distributed.py, TinyBERT's second stage in tests/test_students.py.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest

import conftest
from conftest import PYTHON
from distil.runtime import import_oneflow
from glue_fixtures import write_tiny_teacher_workspace

flow = import_oneflow()
FAULTS = Path(__file__).with_name("faults")
STEPS_PER_EPOCH, EPOCHS = 8, 2  # 64 examples, batch 8
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ws(tmp_path_factory, vocab_file) -> Path:
    """64 training and 19 dev examples (seq 32) and a tiny pretrained BERT without dropout (so runs can match)."""
    return write_tiny_teacher_workspace(tmp_path_factory.mktemp("crash"), vocab_file)


def train(ws: Path, model_dir: Path, fault: str = "", *extra: str):
    """The teacher fine-tuned for 2 shuffled epochs, train_state/ saved every 2 steps; `fault` injected."""
    env = {"PYTHONPATH": f"{FAULTS}:{conftest.ROOT / 'src'}", "DISTIL_TEST_FAULT": fault}
    return conftest.run(
        [
            PYTHON,
            "-m",
            "distil",
            "train",
            "--algorithm",
            "teacher",
            "--pretrained_model",
            str(ws / "pretrained"),
            "--data_root",
            str(ws / "data"),
            "--model_save_dir",
            str(model_dir),
            "--epochs",
            str(EPOCHS),
            "--batch_size",
            "8",
            "--eval_batch_size",
            "8",
            "--learning_rate",
            "1e-3",
            "--checkpoint_every",
            "2",
            "--log_every",
            "1",
            "--device",
            "cpu",
            *extra,
        ],
        env=env,
        timeout=600,
    )


@pytest.fixture(scope="module")
def uninterrupted(ws, tmp_path_factory) -> Path:
    model_dir = tmp_path_factory.mktemp("uninterrupted") / "model"
    done = train(ws, model_dir)
    assert done.returncode == 0 and "restart" not in done.stderr, done.stderr[-3000:]
    return model_dir


def weights_difference(a: Path, b: Path) -> float:
    first, second = flow.load(str(a / "weights")), flow.load(str(b / "weights"))
    assert set(first) == set(second)
    return max(float(np.abs(first[k].numpy() - second[k].numpy()).max()) for k in first)


# SIGSEGV's run starts with --overwrite, which a restart must not repeat; SIGKILL's saves train_state/ by the clock
# alone (--checkpoint_minutes): a tiny interval saves at every logged step
@pytest.mark.parametrize(
    "sig, saving",
    [("SIGSEGV", ["--overwrite"]), ("SIGKILL", ["--checkpoint_every", "0", "--checkpoint_minutes", "1e-6"])],
)
def test_a_process_that_dies_mid_epoch_restarts_and_ends_with_the_uninterrupted_weights(
    ws, tmp_path, uninterrupted, sig, saving
):
    model_dir = tmp_path / "model"
    done = train(ws, model_dir, f"{sig}@step=5", *saving)  # epoch 1 of 8 steps; the last save was step 4
    assert done.returncode == 0, done.stderr[-3000:]
    assert (
        f"restart 1 of 3: the training process died from {sig}; the job starts again and resumes from step 4"
        in done.stderr
    ), done.stderr[-3000:]
    assert f"resuming {model_dir} from step 4 of {EPOCHS * STEPS_PER_EPOCH}" in done.stderr
    assert f"error: the training process died from {sig}" in done.stderr
    report = (model_dir / "crash.log").read_text()
    assert "the training process (pid" in report and f"died from {sig} (attempt 1)" in report
    if sig == "SIGSEGV":  # every Python thread's stack, the training loop's among them
        assert (
            "Fatal Python error: Segmentation fault" in report
            and "in fit" in report
            and "in _failing_log_losses" in report
        )
        assert "in fit" in done.stderr  # also on stderr
    else:
        assert "(no Python stack: SIGKILL cannot be caught)" in report
    assert weights_difference(model_dir, uninterrupted) <= 1e-5  # the same data order and LR schedule
    final, reference = (json.loads((d / "train_state" / "state.json").read_text()) for d in (model_dir, uninterrupted))
    assert final["finished"] and final["step"] == EPOCHS * STEPS_PER_EPOCH
    assert [h["metrics"] for h in final["history"]] == [h["metrics"] for h in reference["history"]]
    assert [e["loss"] for e in final["losses"]] == pytest.approx([e["loss"] for e in reference["losses"]], abs=1e-5)
    assert (
        json.loads(done.stdout)["accuracy"] == json.loads((uninterrupted / "results_eval.json").read_text())["accuracy"]
    )


def test_with_max_restarts_0_the_first_crash_fails_naming_the_signal(ws, tmp_path):
    done = train(ws, tmp_path / "model", "SIGSEGV@step=3", "--max_restarts", "0")
    assert done.returncode == 1, done.stderr[-3000:]
    assert "error: the training process died from SIGSEGV" in done.stderr
    assert "the training process died from SIGSEGV; not restarting (--max_restarts 0 turns restarts off)" in done.stderr
    assert "restart 1" not in done.stderr and done.stdout == ""
    assert json.loads((tmp_path / "model" / "train_state" / "state.json").read_text())["step"] == 2


def test_a_python_exception_is_not_retried(ws, tmp_path):
    done = train(ws, tmp_path / "model", "RuntimeError@step=3")
    assert done.returncode == 1, done.stderr[-3000:]
    assert "RuntimeError: injected failure at step 3" in done.stderr
    assert "restart" not in done.stderr and "died from" not in done.stderr
    assert not (tmp_path / "model" / "crash.log").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--max_restarts", "-1"], "--max_restarts (MAX_RESTARTS) must be >= 0, got -1"),
        (["--learning_rate", "-1"], "--learning_rate must be > 0"),
    ],
)
def test_a_bad_flag_is_not_retried(ws, tmp_path, flags, message):
    done = train(ws, tmp_path / "model", "", *flags)
    assert done.returncode == 2 and message in done.stderr, done.stderr[-3000:]
    assert "restart 1" not in done.stderr and not (tmp_path / "model").exists()


def test_a_stop_request_is_not_a_crash(ws, tmp_path):
    """SIGTERM of the training process (a scheduler's stop) ends the job without a restart."""
    done = train(ws, tmp_path / "model", "SIGTERM@step=3")
    assert done.returncode == 128 + signal.SIGTERM and "restart" not in done.stderr, done.stderr[-3000:]
    assert "the training process (pid" in done.stderr and "was stopped by SIGTERM" in done.stderr
    assert not (tmp_path / "model" / "crash.log").exists()
