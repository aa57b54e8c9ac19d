"""Importing OneFlow quietly and picking the device; exiting with the job's own status.

OneFlow 0.9's CUDA wheel prints start-up noise on CPU-only machines (a libibverbs line written
straight to fd 2, glog warnings about the missing CUDA driver) and sometimes segfaults while
the interpreter shuts down; every entry point therefore leaves through :func:`exit_now`.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType
from typing import Optional

_flow: Optional[ModuleType] = None


def _prepare_environment() -> None:
    """Defaults that must be in place before `import oneflow`; the user's own values win."""
    os.environ.setdefault("GLOG_minloglevel", "3")  # hides glog W/E lines about CUDA on CPU


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


def default_device() -> str:
    """'cuda' when OneFlow sees a GPU (respects CUDA_VISIBLE_DEVICES), else 'cpu'."""
    flow = import_oneflow()
    return "cuda" if flow.cuda.is_available() else "cpu"


def exit_now(status: int) -> None:
    """Flush and leave immediately with `status`, skipping interpreter teardown.

    OneFlow 0.9 can crash during teardown (feasibility.md §8), which would replace the job's
    verdict by a signal; `os._exit` makes the exit status the job's own.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)
