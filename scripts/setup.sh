#!/usr/bin/env bash
# Usage: bash scripts/setup.sh [--test] [-q]
#
# Creates the project's virtual environment (.venv, or $DISTIL_VENV) from a Python 3.10
# interpreter and installs requirements.txt into it; --test also installs the test
# requirements. Idempotent: a second run with unchanged requirements does nothing.
# PYTHON310=/path/to/python3.10 picks the interpreter explicitly.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${DISTIL_VENV:-$ROOT/.venv}
WITH_TEST=0
QUIET=0
for arg in "$@"; do
  case "$arg" in
    --test) WITH_TEST=1 ;;
    -q|--quiet) QUIET=1 ;;
    -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup.sh: unknown argument '$arg' (expected --test, -q or -h)" >&2; exit 2 ;;
  esac
done
say() { [ "$QUIET" = 1 ] || echo "setup: $*"; }

is_py310() { [ -n "$1" ] && "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' >/dev/null 2>&1; }

find_python310() {
  local cand root
  for cand in "${PYTHON310:-}" "$(command -v python3.10 || true)"; do
    if is_py310 "$cand"; then echo "$cand"; return 0; fi
  done
  root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
  for cand in "$root"/versions/3.10*/bin/python3.10 /usr/bin/python3.10 /usr/local/bin/python3.10; do
    if is_py310 "$cand"; then echo "$cand"; return 0; fi
  done
  return 1
}

REQ_FILES=("$ROOT/requirements.txt")
[ "$WITH_TEST" = 1 ] && REQ_FILES+=("$ROOT/requirements-test.txt" "$ROOT/requirements-test-nodeps.txt")
WANT=$(cat "${REQ_FILES[@]}" | sha256sum | cut -d' ' -f1)
STAMP="$VENV/.distil-requirements-$WITH_TEST"

if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  say "environment in $VENV is up to date"
  exit 0
fi

if [ -x "$VENV/bin/python" ]; then
  if ! is_py310 "$VENV/bin/python"; then
    echo "setup: $VENV exists but is not a Python 3.10 environment; remove it and run again." >&2
    exit 1
  fi
else
  if ! PY=$(find_python310); then
    cat >&2 <<EOF
setup: no Python 3.10 interpreter found.
OneFlow 0.9.0, the last OneFlow release, publishes wheels for CPython 3.7, 3.8, 3.9 and 3.10 only;
this project uses 3.10. Install it (for example 'pyenv install 3.10'), put python3.10 on PATH,
or point PYTHON310 at it, then run: bash scripts/setup.sh
EOF
    exit 1
  fi
  say "creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi

PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
[ "$QUIET" = 1 ] && PIP+=(-q)
say "installing ${REQ_FILES[*]##*/} (the OneFlow wheel and CUDA libraries are about 2 GB)"
"${PIP[@]}" install -r "$ROOT/requirements.txt"
if [ "$WITH_TEST" = 1 ]; then
  "${PIP[@]}" install -r "$ROOT/requirements-test.txt"
  "${PIP[@]}" install --no-deps -r "$ROOT/requirements-test-nodeps.txt"
fi
echo "$WANT" > "$STAMP"
# a test environment also satisfies the runtime-only requirements
[ "$WITH_TEST" = 1 ] && sha256sum < "$ROOT/requirements.txt" | cut -d' ' -f1 > "$VENV/.distil-requirements-0"
say "done: $VENV"
