#!/usr/bin/env bash
# Usage: bash scripts/setup.sh [--test] [-q]
#
# Creates the project's virtual environment (.venv, or $DISTIL_VENV) from a Python 3.10
# interpreter, installs requirements.txt (and the onnx and serve extras' files) into it, then
# the project itself in editable mode (the `distil` command, `import distil` without PYTHONPATH);
# --test also installs the test requirements. Idempotent: a second run with unchanged
# requirements and pyproject.toml does nothing. PYTHON310=/path/to/python3.10 picks the interpreter.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${DISTIL_VENV:-$ROOT/.venv}
WITH_TEST=0
QUIET=0
for arg in "$@"; do
  case "$arg" in
    --test) WITH_TEST=1 ;;
    -q|--quiet) QUIET=1 ;;
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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

RUNTIME_REQS=("$ROOT/requirements.txt" "$ROOT/requirements-onnx.txt" "$ROOT/requirements-serve.txt")
TEST_REQS=("$ROOT/requirements-test.txt" "$ROOT/requirements-test-nodeps.txt")
REQ_FILES=("${RUNTIME_REQS[@]}")
RUNTIME_ARGS=()
for f in "${RUNTIME_REQS[@]}"; do RUNTIME_ARGS+=(-r "$f"); done
[ "$WITH_TEST" = 1 ] && REQ_FILES+=("${TEST_REQS[@]}")
# the stamp: the requirement files, pyproject.toml (the editable install) and the checkout it points at
stamp_of() { { cat "$@" "$ROOT/pyproject.toml"; echo "$ROOT"; } | sha256sum | cut -d' ' -f1; }
WANT=$(stamp_of "${REQ_FILES[@]}")
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
"${PIP[@]}" install "${RUNTIME_ARGS[@]}"
if [ "$WITH_TEST" = 1 ]; then
  "${PIP[@]}" install -r "$ROOT/requirements-test.txt"
  "${PIP[@]}" install --no-deps -r "$ROOT/requirements-test-nodeps.txt"
fi
# the project itself, editable: its dependencies are the files above (pyproject.toml reads them)
say "installing the project (editable) from $ROOT"
"${PIP[@]}" install --no-deps -e "$ROOT"
echo "$WANT" > "$STAMP"
# a test environment also satisfies the runtime-only requirements
[ "$WITH_TEST" = 1 ] && stamp_of "${RUNTIME_REQS[@]}" > "$VENV/.distil-requirements-0"
say "done: $VENV"
