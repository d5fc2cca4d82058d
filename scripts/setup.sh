#!/usr/bin/env bash
# Creates .venv at the repository root and installs lact-video with its training and test
# extras. Idempotent: a second run only checks that everything is there.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=.venv/.lact-video-installed
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ]; then
  # The CPU wheel first: an unpinned torch would resolve to a CUDA build of several GB.
  # On a GPU machine, install your CUDA torch into .venv before running this script.
  if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/pip install --quiet "torch==2.13.0"
  fi
  .venv/bin/pip install --quiet -c scripts/constraints.txt -e ".[train,test]"
  touch "$stamp"
fi
