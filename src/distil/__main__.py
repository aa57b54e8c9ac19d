"""`python -m distil`: run the CLI and leave with its status (never a teardown crash's)."""

from distil.cli import main
from distil.runtime import exit_now

if __name__ == "__main__":
    exit_now(main())
