"""pytest hooks that make the process exit status pytest's verdict, even if OneFlow would crash at exit.

OneFlow 0.9 sometimes segfaults during interpreter teardown; after pytest has printed its
summary we leave with `os._exit(exitstatus)` so teardown never runs.
"""

import pytest

from distil.runtime import exit_now

_session = None


def pytest_sessionfinish(session):
    global _session
    _session = session


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    if _session is not None:
        exit_now(int(_session.exitstatus))
