"""Test-only start-up hook for the tests that start OneFlow's launcher directly with a script of their own (they put
this folder on PYTHONPATH; conftest.STARTUP). It changes nothing in the code under test.

A job that `python -m distil` launches waits for its master in `distil.launch.watch_rank` before a rank > 0
imports OneFlow (else OneFlow 0.9 refuses it and sleeps 10 s). A script started by the launcher itself has no such
watcher: here its first `import oneflow` makes the same wait (`distil.launch.wait_for_local_master`).
"""

import sys


class _WaitForTheMaster:
    """A meta path finder that finds nothing: it only waits, once, before `oneflow` is first imported."""

    def find_spec(self, name, path=None, target=None):
        if name == "oneflow":
            sys.meta_path.remove(self)
            from distil.launch import wait_for_local_master

            wait_for_local_master()
        return None


sys.meta_path.insert(0, _WaitForTheMaster())
