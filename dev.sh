#!/usr/bin/env bash
# jaxsparse developer entry point: sets up ./.venv once (Python >= 3.12, pinned
# versions from requirements/constraints.txt) and runs a task.
#
#   ./dev.sh demo          jaxsparse bench, then jaxsparse show causal
#   ./dev.sh test [ARGS]   the test suite (what CI runs); ARGS go to pytest
#                          (in JAXSPARSE_TEST_WORKERS processes, default 2; 0 = one process,
#                          as for GPU tests: each process would take the GPU's memory)
#   ./dev.sh run CMD...    any command inside the environment
set -euo pipefail
cd "$(dirname "$0")"

find_python() {
  local c
  for c in "${PYTHON:-}" python3.12 python3.13 python3.14 python3 python; do
    if [ -n "$c" ] && command -v "$c" >/dev/null 2>&1 &&
      "$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then
      echo "$c"; return 0
    fi
  done
  # pyenv installs that are not the active version (e.g. this dev machine).
  for c in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[2-9]*/bin/python3; do
    if [ -x "$c" ]; then echo "$c"; return 0; fi
  done
  echo "jaxsparse needs Python >= 3.12 (jax 0.11); install it or set PYTHON=/path/to/python3.12" >&2
  return 1
}

setup() {
  local stamp=.venv/.jaxsparse-installed want
  want=$(cat pyproject.toml requirements/constraints.txt | cksum)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
  if [ ! -x .venv/bin/python ]; then
    local py; py=$(find_python)
    echo "Creating .venv with $($py --version)" >&2
    "$py" -m venv .venv
  fi
  echo "Installing jaxsparse and its pinned dependencies into .venv ..." >&2
  .venv/bin/python -m pip install -q --upgrade pip >&2
  .venv/bin/python -m pip install -q -c requirements/constraints.txt -e ".[test,dev]" >&2
  echo "$want" > "$stamp"
}

task=${1:-demo}
shift || true
setup
export PATH="$PWD/.venv/bin:$PATH"
case "$task" in
  demo)
    jaxsparse bench "$@"
    mkdir -p out  # git ignores it
    jaxsparse show causal --seq 2048 --png out/causal.png
    ;;
  test)
    python -m pytest -q -m "not slow and not gpu" -n "${JAXSPARSE_TEST_WORKERS:-2}" "$@"
    ;;
  run)
    "$@"
    ;;
  *)
    echo "usage: ./dev.sh [demo|test|run CMD...]" >&2; exit 2 ;;
esac
