"""OneFlow's CPU matrix products on numpy's OpenBLAS, which uses every core.

OneFlow 0.9's wheel links a single-threaded OpenBLAS into liboneflow, which is why a 2-core CPU
runs a OneFlow BERT at about half PyTorch's speed. numpy's wheel, in the same environment, ships
a multi-threaded OpenBLAS whose kernels also suit current CPUs. liboneflow calls `cblas_sgemm`
through its procedure linkage table, so a definition loaded into the global scope before
`import oneflow` takes the place of its own: `blas_sgemm.c` defines one that forwards to
numpy's `cblas_sgemm64_` (64-bit sizes). It is compiled once per environment with the system's C
compiler (distil.native); without one, or with DISTIL_BLAS=oneflow, OneFlow keeps its own BLAS.

Threads: OpenBLAS's own variables (OPENBLAS_NUM_THREADS, OMP_NUM_THREADS) decide, read when numpy
is imported; the multi-process launcher gives each process one thread per core it owns.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import logging
import os
from pathlib import Path

import numpy

from distil import native

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("blas_sgemm.c")


def _numpy_openblas() -> ctypes.CDLL | None:
    """numpy's bundled ILP64 OpenBLAS, if this numpy has one."""
    libs = Path(numpy.__file__).resolve().parent.parent / "numpy.libs"
    for path in sorted(glob.glob(str(libs / "libopenblas64_*.so*"))):
        lib = ctypes.CDLL(path)
        if hasattr(lib, "cblas_sgemm64_"):
            return lib
    return None


def shim_command() -> list[str]:
    """The compiler command that builds `blas_sgemm.c` (the output path follows)."""
    return [os.environ.get("CC", "cc"), "-O2", "-shared", "-fPIC", str(SOURCE), "-o"]


@functools.cache
def use_numpy_sgemm() -> str:
    """Before `import oneflow`: route its sgemm to numpy's OpenBLAS when possible; returns which BLAS it uses
    (decided once per process)."""
    if os.environ.get("DISTIL_BLAS", "numpy") == "oneflow":
        return "oneflow"
    openblas = _numpy_openblas()
    if openblas is None:
        log.debug("numpy has no ILP64 OpenBLAS: OneFlow keeps its own BLAS")
        return "oneflow"
    library = native.load_global(native.library_path("distil-sgemm", SOURCE), shim_command())
    if library is None:
        return "oneflow"
    library.distil_use_sgemm(ctypes.cast(openblas.cblas_sgemm64_, ctypes.c_void_p))
    return "numpy"
