# Sourced by the scripts: makes .venv with the project installed, unless it is already current.
# The stamp holds a hash of pyproject.toml and requirements.lock; an edit to either reinstalls.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
stamp=".venv/.xray_jax-installed"
want=$(cat pyproject.toml requirements.lock | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "Setting up .venv with $PY (one time, about a minute)..." >&2
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  # requirements.lock pins the versions this repo was tested with; pyproject.toml gives the ranges.
  if ! .venv/bin/python -m pip install -c requirements.lock -e ".[test]" > .venv/install.log 2>&1 \
      || ! .venv/bin/python -c "import xray_jax.trainer" 2>> .venv/install.log; then
    tail -n 30 .venv/install.log >&2
    echo "error: installing into .venv failed; the whole log is .venv/install.log" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
