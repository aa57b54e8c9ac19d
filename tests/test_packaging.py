"""The package as pip installs it: the `distil` command is `python -m distil`, its metadata is requirements*.txt."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import distil
from conftest import PYTHON, ROOT, run
from distil.cli import EXTRA_OF_MODULE

DISTIL = Path(PYTHON).parent / "distil"  # the console script (scripts/setup.sh installs the project editable)


def test_the_distil_command_is_python_m_distil(tmp_path):
    assert DISTIL.exists(), "no distil command in the environment: run bash scripts/setup.sh"
    command, module = run([str(DISTIL), "--help"], cwd=tmp_path), run([PYTHON, "-m", "distil", "--help"], cwd=tmp_path)
    assert command.returncode == module.returncode == 0, command.stderr + module.stderr
    assert command.stdout.startswith("usage: distil ") and module.stdout.startswith("usage: python -m distil ")
    assert command.stdout.replace("usage: distil", "usage: python -m distil") == module.stdout
    bad = run([str(DISTIL), "glue-process", "NOPE"], cwd=tmp_path)
    assert bad.returncode == 2 and "unknown task 'NOPE'" in bad.stderr


def test_the_command_line_loads_neither_oneflow_nor_an_extra():
    """`distil.cli.main` enables the crash reports once `distil.cli` is imported: OneFlow must not be loaded yet;
    and `distil` works without the onnx and serve extras."""
    heavy = ["oneflow", "numpy", *EXTRA_OF_MODULE]
    program = f"import sys, distil.cli; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    result = run([PYTHON, "-c", program])
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr


def test_a_missing_extra_names_the_pip_install_that_adds_it(tmp_path):
    program = (
        "import sys; sys.modules['uvicorn'] = None; from distil.cli import run_command; "
        f"sys.exit(run_command(['serve', {str(tmp_path)!r}]))"
    )
    result = run([PYTHON, "-c", program])
    assert result.returncode == 2, result.stderr
    assert "this command needs the 'serve' extra: pip install 'distil[serve]'" in result.stderr


def _pins(file: str) -> list:
    lines = (line.strip() for line in (ROOT / file).read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_the_installed_metadata_is_the_requirements_files():
    """pyproject.toml's dependencies and extras are read from the requirements files: one list, not two."""
    pins = {
        None: _pins("requirements.txt"),
        "onnx": _pins("requirements-onnx.txt"),
        "serve": _pins("requirements-serve.txt"),
    }
    for lines in pins.values():
        assert lines and all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][0-9A-Za-z.]*", line) for line in lines), lines
    got = {None: [], "onnx": [], "serve": []}
    for requirement in importlib.metadata.requires("distil"):
        pin, _, marker = requirement.partition(";")
        extra = re.search(r"extra == \"(\w+)\"", marker)
        got[extra.group(1) if extra else None].append(pin.strip())
    assert {k: sorted(v) for k, v in got.items()} == {k: sorted(v) for k, v in pins.items()}
    assert importlib.metadata.version("distil") == distil.__version__
