# Sourced by every script (not run): makes sure .venv is set up (runs setup.sh when it is missing
# or its requirements changed; it installs the project editable, so `import distil` finds src/
# without PYTHONPATH), activates it and keeps OneFlow quiet on CPU-only machines.
# DISTIL_SETUP_ARGS=--test also installs the test requirements.
DISTIL_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DISTIL_VENV=${DISTIL_VENV:-$DISTIL_ROOT/.venv}
bash "$DISTIL_ROOT/scripts/setup.sh" -q ${DISTIL_SETUP_ARGS:-}
export VIRTUAL_ENV=$DISTIL_VENV
export PATH="$DISTIL_VENV/bin:$PATH"
export GLOG_minloglevel=${GLOG_minloglevel:-3}

# add_env_flags VAR:flag ...: append `--flag "$VAR"` to the caller's ARGS for each variable that is set and not empty
add_env_flags() {
  local pair var
  for pair in "$@"; do
    var=${pair%%:*}
    if [ -n "${!var:-}" ]; then ARGS+=("--${pair#*:}" "${!var}"); fi
  done
}
