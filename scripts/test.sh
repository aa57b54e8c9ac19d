#!/usr/bin/env bash
# Usage: bash scripts/test.sh [pytest arguments]
# Sets up .venv with the test requirements (first run: a few minutes, ~4 GB) and runs the test suite.
# The exit status is pytest's verdict (tests/conftest.py guards against OneFlow teardown crashes).
set -euo pipefail
[ "${1:-}" = "-h" ] && { sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; exit 0; }
DISTIL_SETUP_ARGS=--test source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$DISTIL_ROOT"
exec python -m pytest "$@"
