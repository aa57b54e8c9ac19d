#!/usr/bin/env bash
# Usage: bash scripts/test.sh [pytest arguments]
# Sets up .venv with the test requirements (first run: a few minutes, ~4 GB), checks src, tests and bench with
# ruff (lint and format; pyproject.toml), then runs the test suite. Fails when ruff finds anything, else the exit
# status is pytest's verdict (tests/conftest.py guards against OneFlow teardown crashes).
set -euo pipefail
[ "${1:-}" = "-h" ] && { sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; exit 0; }
DISTIL_SETUP_ARGS=--test source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$DISTIL_ROOT"
# lint and format first (pyproject.toml's [tool.ruff]): CI fails on either
lint=0
ruff check --quiet src tests bench || lint=1
ruff format --check --quiet src tests bench || lint=1
if [ "$lint" != 0 ]; then
  cat >&2 <<MSG
test.sh: ruff found the problems above (rules: [tool.ruff] in pyproject.toml). Fix them with
  $DISTIL_VENV/bin/ruff check --fix src tests bench && $DISTIL_VENV/bin/ruff format src tests bench
and fix by hand what --fix leaves; then run bash scripts/test.sh again.
MSG
  exit 1
fi
exec python -m pytest "$@"
