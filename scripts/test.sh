#!/usr/bin/env bash
# Runs the test suite: sets up .venv (scripts/setup.sh), then pytest from the repository root.
#   bash scripts/test.sh [PYTEST_ARGS...]          fast tests (setup.cfg skips slow and big_hardware)
#   bash scripts/test.sh --slow [PYTEST_ARGS...]   only the slow tests
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup.sh
if [ "${1:-}" = "--slow" ]; then
  shift
  # A later -m overrides the one in setup.cfg's addopts.
  set -- -m slow "$@"
fi
exec .venv/bin/python -m pytest "$@"
