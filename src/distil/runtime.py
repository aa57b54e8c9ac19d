"""Importing OneFlow quietly; exiting with the job's own status.

OneFlow 0.9's CUDA wheel prints start-up noise on CPU-only machines (a libibverbs line written
straight to fd 2, glog warnings about the missing CUDA driver) and sometimes segfaults while
the interpreter shuts down; every entry point therefore leaves through :func:`exit_now`.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType

import numpy  # noqa: F401  (loaded first, so its own OpenBLAS never sees the setting below)

from distil import blas, native

_flow: ModuleType | None = None


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


def _prepare_environment() -> None:
    """Defaults that must be in place before `import oneflow`; the user's own values win.

    OneFlow 0.9 bundles an OpenBLAS that takes current AVX2 CPUs for a 2008 "Barcelona" and runs
    SSE kernels: 15 GFLOPS against 57 with its Haswell kernels on this machine (bench/bench_bert.py);
    the results agree to float32 rounding (tests compare against an independent reference). Its
    matrix products go to numpy's multi-threaded OpenBLAS where that can be arranged (distil.blas), and its
    queue of running graphs is made safe against a run that ends early (distil.native).
    """
    os.environ.setdefault("GLOG_minloglevel", "3")  # hides glog W/E lines about CUDA on CPU
    blas.use_numpy_sgemm()
    native.fix_lazy_job_queue()
    if "OPENBLAS_CORETYPE" not in os.environ and {"avx2", "fma"} <= _cpu_flags():
        os.environ["OPENBLAS_CORETYPE"] = "Haswell"


def import_oneflow() -> ModuleType:
    """Import oneflow once, with fd 2 silenced during the import (its libibverbs line is not glog)."""
    global _flow
    if _flow is not None:
        return _flow
    _prepare_environment()
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import oneflow
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    _flow = oneflow
    return oneflow


def exit_now(status: int) -> None:
    """Flush and leave immediately with `status`, skipping interpreter teardown.

    OneFlow 0.9 can crash during teardown (measured: a printed `flow.topk` result kept alive at exit segfaults in 1-9 of 10 runs), which would replace the job's
    verdict by a signal; `os._exit` makes the exit status the job's own.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)
