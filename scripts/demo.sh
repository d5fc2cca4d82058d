#!/usr/bin/env bash
# The demo, runnable on a CPU in minutes: sets up .venv and builds a tiny random Wan2.1
# text-to-video base model (no 1.3B download) into outputs/demo/base.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup.sh
base=outputs/demo/base
.venv/bin/python -m lact_video.tiny --output_dir "$base" --seed 0
echo "Tiny base model: $root/$base"
