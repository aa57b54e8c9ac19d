"""Test-only start-up hook, loaded by Python at start-up in the processes the tests start (conftest.py puts this
folder on PYTHONPATH; tests/faults/sitecustomize.py loads it too). It changes nothing in the code under test.

In a rank of a multi-process job other than 0 (RANK > 0 and MASTER_PORT set, as OneFlow's launcher sets them),
`import oneflow` first waits until something on this machine listens on MASTER_PORT: the master's bootstrap
server. OneFlow 0.9 connects to that server as it is imported, and a rank that tries before the master listens
is refused and sleeps 10 s before it tries again (RpcClient::LoadServer). Which rank gets there first is a race
between processes started together, and `python -m distil ... --nproc_per_node 2` lost it in 5 of 6 launches on
a quiet 2-core machine (a 2-process eval: 14-16 s, 5-7 s with this hook); here the master always listens first.
With no listener after 60 s (a master on another machine, or one that failed) it goes on as before.
"""

import os
import sys
import time

_WAIT_SECONDS = 60.0


def _listening(port: int) -> bool:
    """Whether a TCP socket of this machine listens on `port` (from /proc, without connecting to it)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                        return True
        except (OSError, StopIteration, IndexError, ValueError):
            continue
    return False


class _WaitForTheMaster:
    """A meta path finder that finds nothing: it only waits, once, before `oneflow` is first imported."""

    def __init__(self, port: int):
        self.port = port

    def find_spec(self, name, path=None, target=None):
        if name == "oneflow":
            sys.meta_path.remove(self)
            if os.path.exists("/proc/net/tcp"):
                deadline = time.monotonic() + _WAIT_SECONDS
                while not _listening(self.port) and time.monotonic() < deadline:
                    time.sleep(0.01)
        return None


def _install() -> None:
    try:
        rank, port = int(os.environ.get("RANK", "0")), int(os.environ.get("MASTER_PORT", "0"))
    except ValueError:
        return
    if rank > 0 and port > 0:
        sys.meta_path.insert(0, _WaitForTheMaster(port))


_install()
