"""The ZeRO-3 training step of bench_gpu.py, run under `accelerate launch --use_deepspeed` (see training.py).

    accelerate launch --use_deepspeed --deepspeed_config_file configs/deepspeed/zero3.json --num_processes 1 \\
        benchmarks/gpukit/zero3_worker.py --sizes quick --json OUT.json --output_dir TMP

Writes `{"shapes", "figures"}` or `{"error"}` to OUT.json (rank 0).
"""

import argparse
import json
import pathlib

from gpukit.report import error_message
from gpukit.sizes import SIZES
from gpukit.training import measure_step
from lact_video.models.lact_config import Variant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", choices=sorted(SIZES), required=True)
    parser.add_argument("--json", required=True)
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args()
    try:
        shapes, figures = measure_step(SIZES[args.sizes], Variant.lact, args.output_dir)
        result = {"shapes": shapes, "figures": figures}
    except Exception as error:  # noqa: BLE001 -- reported to the parent through the JSON
        result = {"error": error_message(error)}
        raise
    finally:
        pathlib.Path(args.json).write_text(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
