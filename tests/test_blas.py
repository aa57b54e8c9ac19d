"""OneFlow's matrix products on numpy's OpenBLAS (distil.blas): routed, exact, and safe to lack."""

from __future__ import annotations

import ctypes
import json
import subprocess

import pytest

from conftest import PYTHON, run

PRODUCTS = """
import json
import numpy as np
from distil import blas
from distil.runtime import import_oneflow
flow = import_oneflow()
rng = np.random.default_rng(0)
a, b = rng.standard_normal((300, 200), dtype=np.float32), rng.standard_normal((200, 257), dtype=np.float32)
c, d = rng.standard_normal((257, 200), dtype=np.float32), rng.standard_normal((300, 150), dtype=np.float32)
x, y = rng.standard_normal((4, 65, 40), dtype=np.float32), rng.standard_normal((4, 40, 33), dtype=np.float32)
products = {
    "a @ b": (flow.matmul(flow.tensor(a), flow.tensor(b)), a @ b),
    "a @ c.T": (flow.matmul(flow.tensor(a), flow.tensor(c), transpose_b=True), a @ c.T),
    "a.T @ d": (flow.matmul(flow.tensor(a), flow.tensor(d), transpose_a=True), a.T @ d),  # (numpy: a.T @ a is syrk)
    "batched": (flow.matmul(flow.tensor(x), flow.tensor(y)), x @ y),
}
print(json.dumps({"blas": blas.use_numpy_sgemm(),
                  "diff": {k: float(np.abs(ours.numpy() - ref).max()) for k, (ours, ref) in products.items()}}))
"""


def products(env: dict) -> dict:
    result = run([PYTHON, "-c", PRODUCTS], env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_oneflows_matmuls_run_on_numpys_openblas_and_give_its_exact_results():
    routed, own = products({}), products({"DISTIL_BLAS": "oneflow"})
    assert routed["blas"] == "numpy" and own["blas"] == "oneflow"
    assert routed["diff"] == {"a @ b": 0.0, "a @ c.T": 0.0, "a.T @ d": 0.0, "batched": 0.0}
    # OneFlow's own OpenBLAS rounds differently: the comparison above can tell the two apart
    assert 0 < max(own["diff"].values()) < 1e-3


def test_the_shim_is_built_atomically_and_a_failing_compiler_leaves_nothing(tmp_path, monkeypatch):
    from distil import blas, native

    native.build(blas.shim_command(), tmp_path / "shim.so")
    library = ctypes.CDLL(str(tmp_path / "shim.so"))
    assert hasattr(library, "cblas_sgemm") and hasattr(library, "distil_use_sgemm")
    assert [p.name for p in tmp_path.iterdir()] == ["shim.so"]

    monkeypatch.setenv("CC", "false")
    with pytest.raises(subprocess.CalledProcessError):
        native.build(blas.shim_command(), tmp_path / "other.so")
    assert [p.name for p in tmp_path.iterdir()] == ["shim.so"]
