"""One process's load of the LaCT transformer, with its peak host memory: for bench_finetune.py (`--only load`)
and tests/test_zero_loading.py.

    accelerate launch --config_file configs/accelerate/zero3_cpu_2proc.yaml benchmarks/load_worker.py \\
        --base DIR [--subfolder transformer] [--tiny] [--save FILE] [--rss FILE]   # ZeRO-3: load_zero3
    python benchmarks/load_worker.py --base DIR --rss FILE                        # one process: from_wan

`--rss FILE` writes this process's peak RSS growth over its RSS after the imports and the process group
(`FILE.rank<N>.json`): the kernel's peak (VmHWM) is reset there (/proc/self/clear_refs) and read after the load
and one read of every weight the process holds.
`--save FILE` writes the gathered whole parameters (rank 0). The seed is 0; the LaCT keys are configs/tiny.yaml's
(`--tiny`) or configs/wan2.1-t2v-1.3b-lact.yaml's.
"""

import argparse
import json
import os
import pathlib

import torch
from common import proc_status_kib

REPO = pathlib.Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True)
    parser.add_argument("--subfolder")
    parser.add_argument("--tiny", action="store_true", help="the LaCT keys of configs/tiny.yaml")
    parser.add_argument("--save", help="write the gathered parameters here (rank 0)")
    parser.add_argument("--rss", help="write the peak RSS growth to RSS.rank<N>.json")
    args = parser.parse_args()

    import diffusers  # noqa: F401  (before zero.Init: docs/design.md Sec. 7)
    from accelerate import Accelerator

    from lact_video.models import LaCTWanTransformer3DModel
    from lact_video.training.config import lact_config, load_config
    from lact_video.training.distributed import (
        process_group_kwargs,
        silence_known_harmless_warnings,
        skip_deepspeed_shm_build,
    )
    from lact_video.training.zero_loading import is_zero3, load_zero3, zero_init_config

    silence_known_harmless_warnings()
    skip_deepspeed_shm_build()
    accelerator = Accelerator(kwargs_handlers=process_group_kwargs())
    recipe = REPO / "configs" / ("tiny.yaml" if args.tiny else "wan2.1-t2v-1.3b-lact.yaml")
    lact = lact_config(load_config(["--config", str(recipe), "data.cache_dir=unused"]))
    baseline_kib = proc_status_kib("VmRSS")
    pathlib.Path("/proc/self/clear_refs").write_text("5")  # the peak RSS starts again from now
    torch.manual_seed(0)
    if is_zero3(accelerator):
        model = load_zero3(
            args.base, ds_config=zero_init_config(accelerator), subfolder=args.subfolder, lact_config=lact
        )
    else:
        model = LaCTWanTransformer3DModel.from_wan(args.base, subfolder=args.subfolder, **lact)
    # Read every weight this process holds once, as training (and ZeRO-3 partitioning) does: from_wan's weights are
    # views of the memory-mapped file, resident only once read.
    for param in model.parameters():
        getattr(param, "ds_tensor", param).detach().sum()
    growth = (proc_status_kib("VmHWM") - baseline_kib) * 1024
    if args.rss:
        record = {"rank": accelerator.process_index, "peak_rss_growth_bytes": growth, "pid": os.getpid()}
        pathlib.Path(f"{args.rss}.rank{accelerator.process_index}.json").write_text(json.dumps(record))
    if args.save:
        import deepspeed
        from safetensors.torch import save_file

        gathered = {}
        for name, param in model.named_parameters():
            with deepspeed.zero.GatheredParameters([param]):
                gathered[name] = param.detach().clone()
        if accelerator.is_main_process:
            save_file(gathered, args.save)


if __name__ == "__main__":
    main()
