"""A memory task small enough for a CPU: LaCT remembers what window attention cannot see.

Synthetic latent clips of chunks of one latent frame (8x8 latents, 16 tokens per chunk). Chunk 0
shows a key: one of 4 colours (a latent channel vector) times one of 4 shapes (a spatial mask).
Odd chunks are blank: the key is hidden. Even chunks show the key again. Window attention sees
one chunk back, a blank one, so on even chunks from 2 on the key lies beyond its window; LaCT's memory
and full block-causal attention can still reach it.

The three variants (`model.variant`) train with `finetune/finetune.py` on clips of 6 chunks, on the same
data, seed, recipe (`configs/memory_task.yaml`) and step budget, from the same random base; a fourth,
`lact_offset`, is LaCT trained with random rotary position offsets (`train.position_offset_max=18`). They are
compared by the teacher-forcing loss per chunk (`lact_video.evaluation`) on held-out clips of 24 chunks built
by the same rule, under every position policy (`LaCTConfig.position_policy`, docs/design.md Sec. 1.7): chunks
6 to 23 lie past the training length. The clips are built in latent space: the task is about the
transformer's memory, and a random tiny VAE would only blur what the key is.

    python benchmarks/memory_task.py --json outputs/memory_task.json [--steps 600] [--reuse_trained]

Figures, per policy: `lact_beyond_over_within`, LaCT's mean loss on chunks 6..23 over its mean on chunks 2..5
(target <= 1.10 for the default policy), `lact_vs_swa_beyond`, LaCT over SWA on chunks 6..23 (target <= 0.90),
the same two for `full_causal`, and `lact_vs_swa_late_chunks` (chunks 2..5, target below 0.9). And the state's
drift (`lact_video.evaluation.state_drift`): `lact_fast_weight_drift`, per chunk, the fast weights' relative
distance from their initial state, and `lact_drift_last_over_trained`, that distance in the last state the 24-chunk
clips read over the last state a training clip reads (docs/design.md Sec. 1.7: what grows past the training length).
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import torch
from common import report
from diffusers import WanTransformer3DModel

from lact_video import LaCTWanTransformer3DModel
from lact_video.data.latent_cache import LatentCacheWriter
from lact_video.evaluation import fast_weight_drift
from lact_video.evaluation.per_chunk_loss import PerChunkLoss, per_chunk_loss
from lact_video.evaluation.report import write_report
from lact_video.models.lact_config import PositionPolicy, Variant
from lact_video.tiny import build_tiny_wan

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "memory_task.yaml"
VARIANTS = tuple(variant.value for variant in Variant)
POLICIES = tuple(policy.value for policy in PositionPolicy)
DEFAULT_POLICY = PositionPolicy.clamp.value  # the evaluated policy of the plot and the headline figures
CHANNELS, SIZE, NUM_CHUNKS = 16, 8, 6  # latent channels, latent height/width, training chunks of one frame
EVAL_CHUNKS = 24  # held-out clips: chunks NUM_CHUNKS..23 lie past the training length
GEOMETRY = {"height": 64, "width": 64, "num_frames": 21, "fps": 16.0, "max_sequence_length": 16}
# What each trained model overrides in the recipe: the variants, and LaCT with random position offsets that
# cover the evaluated clips' positions (its trained_chunks, recorded by the trainer, is then EVAL_CHUNKS).
TRAINED = {
    **{variant: [f"model.variant={variant}"] for variant in VARIANTS},
    "lact_offset": ["model.variant=lact", f"train.position_offset_max={EVAL_CHUNKS - NUM_CHUNKS}"],
}


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


def make_clips(num_clips: int, seed: int, num_chunks: int = NUM_CHUNKS) -> torch.Tensor:
    """(B, C, num_chunks, 8, 8) latent clips: the key on even chunks, blank odd chunks."""
    g = torch.Generator().manual_seed(1234)  # the colours and shapes: the same for every split
    colours = 1.5 * torch.randn(4, CHANNELS, generator=g)
    y, x = torch.meshgrid(torch.arange(SIZE) - 3.5, torch.arange(SIZE) - 3.5, indexing="ij")
    shapes = torch.stack([(y.abs() < 2.5) & (x.abs() < 2.5), y**2 + x**2 < 9, y < 0, x >= 0]).float()
    g = torch.Generator().manual_seed(seed)
    colour = torch.randint(0, 4, (num_clips,), generator=g)
    shape = torch.randint(0, 4, (num_clips,), generator=g)
    key = colours[colour][:, :, None, None] * shapes[shape][:, None]  # (B, C, 8, 8)
    clips = torch.zeros(num_clips, CHANNELS, num_chunks, SIZE, SIZE)
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


def load(folder: pathlib.Path, policy: str) -> tuple[LaCTWanTransformer3DModel, int]:
    """A trained model (its exported `transformer/`) under `policy`, and its training length in chunks (recorded
    by the trainer; NUM_CHUNKS for folders trained before it was)."""
    transformer = folder / "transformer"
    trained = json.loads((transformer / "config.json").read_text()).get("trained_chunks") or NUM_CHUNKS
    model = LaCTWanTransformer3DModel.from_pretrained(transformer, position_policy=policy, trained_chunks=trained)
    return model.eval(), trained


def evaluate(folder: pathlib.Path, policy: str, clips: torch.Tensor) -> tuple[PerChunkLoss, int]:
    """The teacher-forcing loss per chunk of a trained model under `policy`, on `clips`, with the per-clip noise
    of `per_chunk_loss` (identical for every model and policy); and the model's training length in chunks."""
    model, trained = load(folder, policy)
    prompt = torch.zeros(1, GEOMETRY["max_sequence_length"], 32)
    return per_chunk_loss(model, lambda i: (clips[i : i + 1], prompt), len(clips)), trained


def ratio(a: np.ndarray, b: np.ndarray, chunks: slice, b_chunks: slice | None = None) -> float:
    """Mean of `a` over `chunks` over the mean of `b` over `b_chunks` (default: the same chunks)."""
    return float(a[chunks].mean() / b[b_chunks or chunks].mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--output_dir", default="outputs/memory_task")
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps per variant (batch 8)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the training processes")
    parser.add_argument(
        "--reuse_trained",
        action="store_true",
        help="keep the models already trained (exported) in output_dir, with the steps they had; train the others",
    )
    parser.add_argument("--num_clips", type=int, default=32, help="held-out clips of 24 chunks")
    parser.add_argument(
        "--without_offset", action="store_true", help="skip lact_offset (LaCT trained with random position offsets)"
    )
    args = parser.parse_args()
    out = (ROOT / args.output_dir).resolve()

    # 1. What to train: every model, or (--reuse_trained) those not yet exported in output_dir
    trained = {name: o for name, o in TRAINED.items() if not (args.without_offset and name == "lact_offset")}
    missing = [n for n in trained if not (args.reuse_trained and (out / n / "transformer" / "config.json").exists())]

    # 2. Data and the shared random base, then train on the same budget
    seconds = {}
    if missing:
        base = make_base(out / "base")
        train = write_cache(out / "train_cache", 4096, seed=0)
    for name in missing:
        start = time.perf_counter()
        run(
            "finetune.py", "--config", str(RECIPE), f"model.pretrained_model_name_or_path={base}", *trained[name],
            f"data.cache_dir={train}", f"train.output_dir={out / name}", f"train.max_train_steps={args.steps}",
            threads=args.threads,
        )  # fmt: skip
        seconds[name] = time.perf_counter() - start

    # 3. Per-chunk loss on held-out 24-chunk clips, identical noise for every model and policy. Policies act at
    # inference only, so each is evaluated on the same weights. SWA is evaluated once: without a memory a bounded
    # policy changes only rounding (tests/test_position_policy.py). lact_offset runs at its own positions.
    torch.set_num_threads(args.threads)
    clips = make_clips(args.num_clips, seed=1, num_chunks=EVAL_CHUNKS)
    results = {(v, p): evaluate(out / v, p, clips)[0] for v in ("lact", "full_causal") for p in POLICIES}
    results["swa", "absolute"] = evaluate(out / "swa", "absolute", clips)[0]
    loss = {key: r.mean_per_chunk for key, r in results.items()}
    swa = loss["swa", "absolute"]
    within, beyond = slice(2, NUM_CHUNKS), slice(NUM_CHUNKS, EVAL_CHUNKS)
    policies = {}
    for p in POLICIES:
        lact, full = loss["lact", p], loss["full_causal", p]
        policies[p] = {
            "lact_beyond_over_within": ratio(lact, lact, beyond, within),
            "lact_vs_swa_beyond": ratio(lact, swa, beyond),
            "full_causal_beyond_over_within": ratio(full, full, beyond, within),
            "full_causal_vs_swa_beyond": ratio(full, swa, beyond),
            "lact_vs_full_causal_beyond": ratio(lact, full, beyond),
        }
    default = loss["lact", DEFAULT_POLICY], loss["full_causal", DEFAULT_POLICY]
    figures = {
        **{f"{key}[{p}]": value for p, row in policies.items() for key, value in row.items()},
        "swa_beyond_over_within": ratio(swa, swa, beyond, within),
        "lact_vs_swa_late_chunks": ratio(default[0], swa, within),
        "lact_vs_full_late_chunks": ratio(default[0], default[1], within),
        "default_policy": DEFAULT_POLICY,
    }
    # How far the fast weights move from their initial state: the last state a training clip reads (after chunk
    # NUM_CHUNKS - 2) against the last one the evaluated clips read (after chunk EVAL_CHUNKS - 2).
    model, _ = load(out / "lact", DEFAULT_POLICY)
    prompt = torch.zeros(1, GEOMETRY["max_sequence_length"], 32)
    drift = fast_weight_drift(model, lambda i: (clips[i : i + 1], prompt), min(8, len(clips))).mean(axis=1)
    figures |= {
        "lact_fast_weight_drift": [round(float(x), 4) for x in drift],
        "lact_drift_last_over_trained": float(drift[EVAL_CHUNKS - 2] / drift[NUM_CHUNKS - 2]),
    }
    if "lact_offset" in trained:
        results["lact_offset", "absolute"], offset_trained = evaluate(out / "lact_offset", "absolute", clips)
        offset = loss["lact_offset", "absolute"] = results["lact_offset", "absolute"].mean_per_chunk
        figures |= {
            "lact_offset_beyond_over_within[absolute]": ratio(offset, offset, beyond, within),
            "lact_offset_vs_swa_beyond[absolute]": ratio(offset, swa, beyond),
            "lact_offset_trained_chunks": offset_trained,
        }
    figures |= {
        **{f"mean_per_chunk_{v}[{p}]": [round(float(x), 4) for x in loss[v, p]] for v, p in loss},
        **{f"train_seconds_{m}": seconds[m] for m in seconds},
        "steps_per_model": args.steps if not args.reuse_trained else "as trained (reused; see each run's metrics)",
        "trained_chunks": NUM_CHUNKS,
        "eval_chunks": EVAL_CHUNKS,
        "eval_clips": args.num_clips,
        "threads": args.threads,
    }

    # 4. The report: LaCT and full_causal under the default policy and under absolute positions, SWA, lact_offset.
    shown = {
        f"lact ({DEFAULT_POLICY})": results["lact", DEFAULT_POLICY],
        "lact (absolute)": results["lact", "absolute"],
        "swa": results["swa", "absolute"],
        f"full_causal ({DEFAULT_POLICY})": results["full_causal", DEFAULT_POLICY],
        "full_causal (absolute)": results["full_causal", "absolute"],
    }
    if "lact_offset" in trained:
        shown["lact_offset (absolute)"] = results["lact_offset", "absolute"]
    title = f"Memory task: {EVAL_CHUNKS}-chunk clips, trained on {NUM_CHUNKS}, position_policy={DEFAULT_POLICY}"
    figures["report"] = str(write_report(shown, out / "report", title, trained_chunks=NUM_CHUNKS)["markdown"])
    report(figures, args.json)


if __name__ == "__main__":
    main()
