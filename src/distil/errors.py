"""User-facing errors: the CLI prints their message (no traceback) and exits with status 2."""


class UsageError(ValueError):
    """Bad input from the user: a flag, a file, a line. The message names the culprit and the fix."""
