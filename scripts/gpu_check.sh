#!/usr/bin/env bash
# The GPU validation kit on a bare GPU machine: installs the wheels prepared by scripts/prepare_gpu_wheels.py
# (.whl/, if present) into a private folder, then runs benchmarks/bench_gpu.py from this tree.
#   bash scripts/gpu_check.sh --quick --json OUT.json     # under 5 minutes on one H100/H200
#   bash scripts/gpu_check.sh --json OUT.json             # every figure, more repeats (about 10 minutes)
# PYTHON (default python3) is the interpreter that has the CUDA build of torch; GPU_CHECK_SITE (default
# /tmp/lact_video_site) is where the wheels go. On a machine that has the packages already, .whl/ may be absent.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python=${PYTHON:-python3}
site=${GPU_CHECK_SITE:-/tmp/lact_video_site}
path="$root"
if compgen -G ".whl/*.whl" > /dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
  path="$site:$root"
fi
export PYTHONPATH="$path${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$python" benchmarks/bench_gpu.py "$@"
