"""`python -m distil`: run the CLI and leave with its status (never a teardown crash's)."""

import traceback

from distil import crash

crash.enable_fault_reports()  # before OneFlow is imported: a fatal signal anywhere prints the Python stacks

from distil.cli import main  # noqa: E402
from distil.launch import finish_rank  # noqa: E402
from distil.runtime import exit_now  # noqa: E402

if __name__ == "__main__":
    try:
        status = main()
    except Exception:  # noqa: BLE001  an unexpected error: its traceback, then out at once, because OneFlow's
        traceback.print_exc()  # teardown in a multi-process job waits for the other ranks, which may never come
        status = 1
    crash.report_finished(status)
    finish_rank(status)
    exit_now(status)
