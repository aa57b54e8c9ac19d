"""The bash scripts as a user runs them, and exit statuses that survive OneFlow's teardown crashes."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import PYTHON, ROOT, run
from glue_fixtures import write_task
from glue_server import GlueServer, glue_mirror_files

SCRIPTS = sorted(p.name for p in (ROOT / "scripts").glob("*.sh") if p.name != "env.sh")
# Registered by a test program before it runs: makes interpreter teardown crash like OneFlow's can.
CRASH_AT_EXIT = "import atexit, os, signal; atexit.register(lambda: os.kill(os.getpid(), signal.SIGSEGV))"


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_prints_usage_on_h(script, tmp_path):
    result = run(["bash", str(ROOT / "scripts" / script), "-h"], cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("Usage: bash scripts/" + script)
    assert len(result.stdout.splitlines()) >= 2 and "set -euo" not in result.stdout


@pytest.mark.parametrize("outcome, status", [("pass", 0), ("fail", 1)])
def test_pytest_status_is_the_verdict_even_if_teardown_crashes(tmp_path, outcome, status):
    (tmp_path / "conftest.py").write_text(
        textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT / "tests")!r})
        from _exit_status import pytest_sessionfinish, pytest_unconfigure
        {CRASH_AT_EXIT}
    """)
    )
    (tmp_path / "test_one.py").write_text(f"def test_it():\n    assert {outcome == 'pass'}\n")
    result = run([PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)], cwd=tmp_path)
    assert result.returncode == status, result.stdout + result.stderr
    assert f"1 {'passed' if status == 0 else 'failed'}" in result.stdout
    without_guard = run([PYTHON, "-c", f"{CRASH_AT_EXIT}; print('done')"])
    assert without_guard.returncode == -11  # what the guard protects against


@pytest.mark.parametrize(
    "argv, status",
    [(["glue-process", "NOPE"], 2), (["download-glue", "--tasks", "x"], 2), (["glue-process", "--help"], 0)],
)
@pytest.mark.parametrize("entry", ["python -m distil", "distil"])
def test_entry_point_exits_with_the_jobs_status_despite_a_teardown_crash(argv, status, entry):
    if entry == "distil":  # the console script pip wrote (setup.sh installs the project editable)
        start = f"runpy.run_path({str(Path(PYTHON).parent / 'distil')!r}, run_name='__main__')"
    else:
        start = "runpy.run_module('distil', run_name='__main__')"
    program = f"{CRASH_AT_EXIT}; import runpy, sys; sys.argv = ['distil'] + {argv!r}; {start}"
    result = run([PYTHON, "-c", program])
    assert result.returncode == status, result.stderr


def test_setup_is_idempotent():
    stamps = sorted((ROOT / ".venv").glob(".distil-requirements-*"))
    mtimes = [p.stat().st_mtime_ns for p in stamps]
    result = run(["bash", str(ROOT / "scripts" / "setup.sh"), "--test"])
    assert result.returncode == 0 and "is up to date" in result.stdout
    assert [p.stat().st_mtime_ns for p in stamps] == mtimes


def test_setup_without_python310_says_which_versions_oneflow_supports(tmp_path):
    if Path("/usr/bin/python3.10").exists() or Path("/usr/local/bin/python3.10").exists():
        pytest.skip("this machine has a system python3.10, so the search cannot fail")
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PYENV_ROOT": str(tmp_path / "pyenv"),
        "DISTIL_VENV": str(tmp_path / "venv"),
        "PYTHON310": "",
    }
    result = run(["bash", str(ROOT / "scripts" / "setup.sh")], env=env)
    assert result.returncode == 1
    assert "no Python 3.10 interpreter found" in result.stderr and "3.7, 3.8, 3.9 and 3.10" in result.stderr
    assert not (tmp_path / "venv").exists()


def test_glue_process_sh_gives_the_hf_tokenizer_ids_in_row_order(tmp_path, hf_tokenizer):
    """Acceptance: a GLUE-shaped SST-2 folder -> OFRecords whose OneFlow decoding equals HF's token ids."""
    from distil.data.dataset import EvalStream, OFRecordDataset

    rows = write_task(tmp_path / "glue", "SST-2", {"train.tsv": 300, "dev.tsv": 40, "test.tsv": 25})
    env = {"GLUE_DIR": str(tmp_path / "glue"), "DATA_ROOT": str(tmp_path / "ofrecord")}
    for _ in range(2):  # the second run must replace, not append
        result = run(["bash", str(ROOT / "scripts" / "glue_process.sh"), "SST-2"], env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert '"train": 300' in result.stdout and '"eval": 40' in result.stdout and '"test": 25' in result.stdout
    for split, file in (("train", "train.tsv"), ("eval", "dev.tsv"), ("test", "test.tsv")):
        dataset = OFRecordDataset(tmp_path / "ofrecord" / "SST-2" / split, batch_size=32)
        assert dataset.num_examples == len(rows[file])
        got = EvalStream(dataset.num_examples, 32).run(
            lambda dataset=dataset: {k: v.numpy() for k, v in dataset().items()}
        )
        for i, row in enumerate(rows[file]):
            ids = hf_tokenizer.encode(row["a"]).ids
            assert got["input_ids"][i, : len(ids)].tolist() == ids
            assert not got["input_ids"][i, len(ids) :].any() and got["input_mask"][i].sum() == len(ids)
        labels = [int(r["label"]) if r["label"] is not None else 0 for r in rows[file]]
        np.testing.assert_array_equal(got["label_ids"][:, 0], labels)


def test_glue_process_sh_bad_input_fails_cleanly(tmp_path):
    write_task(tmp_path / "glue", "SST-2")
    env = {"GLUE_DIR": str(tmp_path / "glue"), "DATA_ROOT": str(tmp_path / "ofrecord")}
    script = str(ROOT / "scripts" / "glue_process.sh")
    unknown = run(["bash", script, "SST-3"], env=env)
    assert unknown.returncode == 2 and "unknown task 'SST-3'; valid tasks: CoLA, SST-2, MRPC" in unknown.stderr
    missing_vocab = run(["bash", script, "SST-2"], env={**env, "VOCAB_FILE": str(tmp_path / "vocab.txt")})
    assert missing_vocab.returncode == 2 and str(tmp_path / "vocab.txt") in missing_vocab.stderr
    bad_flag = run(["bash", script, "SST-2"], env={**env, "DO_LOWER_CASE": "maybe"})
    assert bad_flag.returncode == 2 and "expected a boolean" in bad_flag.stderr
    assert not (tmp_path / "ofrecord").exists() or not any((tmp_path / "ofrecord").iterdir())


def test_download_script_fetches_from_a_mirror_and_reports_errors(tmp_path):
    with GlueServer() as server:
        server.add_all("/glue/", glue_mirror_files())
        env = {"DATA_DIR": str(tmp_path / "glue"), "TASKS": "SST,MRPC,diagnostic", "GLUE_MIRROR": server.url("/glue/")}
        ok = run(["bash", str(ROOT / "scripts" / "run_download_glue_data.sh")], env=env, cwd=tmp_path)
        assert ok.returncode == 0, ok.stderr
        assert sorted(os.listdir(tmp_path / "glue")) == ["MRPC", "SST-2", "diagnostic"]
        assert (tmp_path / "glue" / "SST-2" / "dev.tsv").read_text().startswith("sentence\tlabel\n")
        bad = run(["bash", str(ROOT / "scripts" / "run_download_glue_data.sh")], env={**env, "TASKS": "SST,XYZ"})
        assert bad.returncode == 2 and "XYZ" in bad.stderr
