"""A memory task small enough for a CPU: LaCT remembers what window attention cannot see.

Synthetic latent clips of 6 chunks of one latent frame (8x8 latents, 16 tokens per chunk). Chunk 0
shows a key: one of 4 colours (a latent channel vector) times one of 4 shapes (a spatial mask).
Odd chunks are blank: the key is hidden. Chunks 2 and 4 show the key again. Window attention sees
one chunk back, a blank one, so on chunks 2 and 4 the key lies beyond its window; LaCT's memory
and full block-causal attention can still reach it.

The three variants (`model.variant`) train with `finetune/finetune.py` on the same data, seed, recipe
(`configs/memory_task.yaml`) and step budget, from the same random base, and are compared by
`finetune/validate.py` on held-out clips. The clips are built in latent space: the task is about
the transformer's memory, and a random tiny VAE would only blur what the key is.

    python benchmarks/memory_task.py --json outputs/memory_task.json [--steps 600]

Figures: `lact_vs_swa_late_chunks`, the mean loss over chunks 2..5 (after the window) of LaCT over
SWA (target below 0.9), and `lact_vs_full_late_chunks` beside it.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import torch
from common import report
from diffusers import WanTransformer3DModel

from lact_video.data.latent_cache import LatentCacheWriter
from lact_video.models.lact_config import Variant
from lact_video.tiny import build_tiny_wan

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "memory_task.yaml"
VARIANTS = tuple(variant.value for variant in Variant)
CHANNELS, SIZE, NUM_CHUNKS = 16, 8, 6  # latent channels, latent height/width, chunks of one frame
GEOMETRY = {"height": 64, "width": 64, "num_frames": 21, "fps": 16.0, "max_sequence_length": 16}


def make_base(folder: pathlib.Path) -> pathlib.Path:
    """The tiny Wan folder with a slightly larger random transformer (dim 64, 3 blocks)."""
    build_tiny_wan(folder, seed=0)
    torch.manual_seed(0)
    WanTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=32,
        in_channels=CHANNELS,
        out_channels=CHANNELS,
        text_dim=32,
        freq_dim=32,
        ffn_dim=128,
        num_layers=3,
        rope_max_seq_len=64,
    ).save_pretrained(folder / "transformer")
    return folder


def make_clips(num_clips: int, seed: int) -> torch.Tensor:
    """(B, C, 6, 8, 8) latent clips: key, blank, key, blank, key, blank."""
    g = torch.Generator().manual_seed(1234)  # the colours and shapes: the same for every split
    colours = 1.5 * torch.randn(4, CHANNELS, generator=g)
    y, x = torch.meshgrid(torch.arange(SIZE) - 3.5, torch.arange(SIZE) - 3.5, indexing="ij")
    shapes = torch.stack([(y.abs() < 2.5) & (x.abs() < 2.5), y**2 + x**2 < 9, y < 0, x >= 0]).float()
    g = torch.Generator().manual_seed(seed)
    colour = torch.randint(0, 4, (num_clips,), generator=g)
    shape = torch.randint(0, 4, (num_clips,), generator=g)
    key = colours[colour][:, :, None, None] * shapes[shape][:, None]  # (B, C, 8, 8)
    clips = torch.zeros(num_clips, CHANNELS, NUM_CHUNKS, SIZE, SIZE)
    clips[:, :, 0::2] = key[:, :, None]
    return clips


def write_cache(folder: pathlib.Path, num_clips: int, seed: int) -> pathlib.Path:
    with LatentCacheWriter(folder, GEOMETRY, shard_size=4096, task="memory_task") as writer:
        prompt = torch.zeros(num_clips, GEOMETRY["max_sequence_length"], 32)  # no text cue
        writer.add(make_clips(num_clips, seed), prompt, [f"clip_{i}" for i in range(num_clips)], [""] * num_clips)
    return folder


def run(script: str, *args: str, threads: int) -> None:
    # Few threads: these steps are tiny, and an oversubscribed 2-core machine slows torch 10x or more.
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run([sys.executable, str(ROOT / "finetune" / script), *args], check=True, cwd=ROOT, env=env)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--output_dir", default="outputs/memory_task")
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps per variant (batch 8)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the training processes")
    args = parser.parse_args()
    out = (ROOT / args.output_dir).resolve()

    # 1. Data and the shared random base
    base = make_base(out / "base")
    train, val = write_cache(out / "train_cache", 4096, seed=0), write_cache(out / "val_cache", 64, seed=1)

    # 2. Train every variant on the same budget
    seconds = {}
    for variant in VARIANTS:
        start = time.perf_counter()
        run(
            "finetune.py", "--config", str(RECIPE), f"model.pretrained_model_name_or_path={base}",
            f"model.variant={variant}", f"data.cache_dir={train}", f"train.output_dir={out / variant}",
            f"train.max_train_steps={args.steps}", threads=args.threads,
        )  # fmt: skip
        seconds[variant] = time.perf_counter() - start

    # 3. Per-chunk report on held-out clips, identical noise for all variants
    run(
        "validate.py", "--data_dir", str(val), "--checkpoints", *(str(out / m) for m in VARIANTS),
        "--names", *VARIANTS, "--output_dir", str(out / "report"), "--config", str(RECIPE),
        f"model.pretrained_model_name_or_path={base}", threads=args.threads,
    )  # fmt: skip
    results = json.loads((out / "report" / "per_chunk_loss.json").read_text())
    late = {v: sum(results[v]["mean_per_chunk"][2:]) / (NUM_CHUNKS - 2) for v in VARIANTS}
    figures = {
        "lact_vs_swa_late_chunks": late["lact"] / late["swa"],
        "lact_vs_full_late_chunks": late["lact"] / late["full_causal"],
        **{f"late_chunk_loss_{m}": late[m] for m in VARIANTS},
        **{f"mean_per_chunk_{m}": [round(x, 4) for x in results[m]["mean_per_chunk"]] for m in VARIANTS},
        **{f"train_seconds_{m}": seconds[m] for m in VARIANTS},
        "steps_per_variant": args.steps,
        "threads": args.threads,
        "report": str(out / "report" / "report.md"),
    }
    report(figures, args.json)


if __name__ == "__main__":
    main()
