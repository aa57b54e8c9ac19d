"""Small native libraries that take the place of functions inside OneFlow 0.9's wheel, built once per environment.

liboneflow calls some of its functions through its procedure linkage table (`readelf -r`: JUMP_SLOT
relocations, no BIND_NOW), so a definition loaded into the global scope before `import oneflow` is the one it
calls. Two are replaced (both loaded by `distil.runtime.import_oneflow`):

- `cblas_sgemm`, forwarded to numpy's multi-threaded OpenBLAS (`distil.blas`, `blas_sgemm.c`);
- the queue of running compiled graphs (`lazy_job_queue.cpp`): OneFlow 0.9.0 records a graph run as running
  only after handing it to its actors, so a short run on a busy CPU could end first and pop an empty queue,
  which killed the process with SIGSEGV about once in a hundred test runs (bench/README.md, "Crashes").

Each library is compiled from its source with the system's compiler into `<venv>/lib/` (named by its source's
hash: an edit rebuilds it), written under a temporary name and renamed. Without a compiler OneFlow keeps its own
functions; `DISTIL_LAZY_JOB_FIX=off` turns the queue fix off (for the stress benchmark's "before").
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
LAZY_JOB_SOURCE, LAZY_JOB_EXPORTS = HERE / "lazy_job_queue.cpp", HERE / "lazy_job_queue.map"
# the liboneflow whose layout lazy_job_queue.cpp mirrors: OneFlow 0.9.0's manylinux wheel
FIXED_LIBONEFLOW = "liboneflow-6f2d67ec.so"


def library_path(stem: str, *sources: Path) -> Path:
    """Where this environment keeps the library built from `sources`."""
    digest = hashlib.sha256(b"".join(source.read_bytes() for source in sources)).hexdigest()[:12]
    cache = Path(sys.prefix) / "lib"
    if not os.access(cache, os.W_OK):
        cache = Path.home() / ".cache" / "distil"
    return cache / f"{stem}-{digest}.so"


def build(command: list[str], target: Path) -> None:
    """Run a compiler `command` that writes its output to the path it is given last, then rename that to
    `target`: a failed or killed build leaves nothing."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([*command, tmp], check=True, capture_output=True, timeout=300)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_global(path: Path, command: list[str]) -> ctypes.CDLL | None:
    """The library at `path`, built first by `command` (+ output path) if absent, loaded into the global scope;
    None when it cannot be built or loaded (a debug line says why)."""
    try:
        if not path.exists():
            build(command, path)
        return ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    except (OSError, subprocess.SubprocessError) as e:
        log.debug("cannot build or load %s (%s)", path, e)
        return None


def _liboneflow() -> Path | None:
    """The liboneflow that `import oneflow` would load, found without importing it."""
    spec = importlib.util.find_spec("oneflow")
    if spec is None or not spec.submodule_search_locations:
        return None
    libs = Path(spec.submodule_search_locations[0]).parent / "oneflow.libs"
    return next(iter(sorted(libs.glob("liboneflow-*.so"))), None)


@functools.cache
def fix_lazy_job_queue() -> ctypes.CDLL | None:
    """Before `import oneflow`: load lazy_job_queue.cpp's definitions when this is the liboneflow they were made
    for; the library (with its counters) or None (decided once per process)."""
    if os.environ.get("DISTIL_LAZY_JOB_FIX", "on") == "off":
        return None
    found = _liboneflow()
    if found is None or found.name != FIXED_LIBONEFLOW:
        log.debug("liboneflow is %s, not %s: the lazy-job queue fix does not apply", found, FIXED_LIBONEFLOW)
        return None
    return load_global(
        library_path("distil-lazy-job-queue", LAZY_JOB_SOURCE, LAZY_JOB_EXPORTS),
        [
            os.environ.get("CXX", "c++"),
            "-O2",
            "-shared",
            "-fPIC",
            "-D_GLIBCXX_USE_CXX11_ABI=0",
            f"-Wl,--version-script={LAZY_JOB_EXPORTS}",
            str(LAZY_JOB_SOURCE),
            "-o",
        ],
    )
