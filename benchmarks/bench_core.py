"""Core LaCT benchmarks on the CPU: fast-weight utilisation, speed-up over the naive reference,
training cost per chunk as videos grow, and decode cost per chunk as videos grow.

    python benchmarks/bench_core.py --json outputs/bench_core.json [--threads 2]
"""

import argparse

import torch
import torch.nn.functional as F
from common import interleaved_min, malloc_tuned, report, run_with_tuned_malloc
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

from lact_video import LaCTWanTransformer3DModel
from lact_video.layers import FastWeightMemory, LaCTAttention
from lact_video.layers.rotary import RotaryTables, apply_rotary_emb, chunk_rotary_emb
from lact_video.ops.fast_weight import FastWeights, UpdateRule, fast_weight_naive, fast_weight_teacher_forcing
from lact_video.sequence import TeacherForcingLayout
from lact_video.state import ForwardMode
from lact_video.tiny import TRANSFORMER_CONFIGS


def fast_weight_figures(b=2, d=128, dh=256, t=2048, n=4):
    """Utilisation of the fast op against `torch.bmm` at the update's GEMM shape, and its speed-up
    over the naive reference, on one interleaved sequence (R=1, N chunks, fp32)."""
    g = torch.Generator().manual_seed(0)
    weights = FastWeights(*(torch.randn(b, *s, generator=g) / s[1] ** 0.5 for s in ((dh, d), (d, dh), (dh, d))))
    noisy_q = F.normalize(torch.randn(b, n, t, d, generator=g), dim=-1)
    clean_q, clean_k = (F.normalize(torch.randn(b, n - 1, t, d, generator=g), dim=-1) for _ in range(2))
    clean_v = torch.randn(b, n - 1, t, d, generator=g)
    clean_lr = torch.rand(b, n - 1, t, 3, generator=g) * 1e-2
    rule = UpdateRule()

    layout = TeacherForcingLayout(n, 1)
    seq = {"q": [], "k": [], "v": [], "lr": []}
    for i, clean in layout.segments:
        seq["q"].append(clean_q[:, i] if clean else noisy_q[:, i])
        seq["k"].append(clean_k[:, i] if clean else torch.zeros_like(noisy_q[:, i]))
        seq["v"].append(clean_v[:, i] if clean else torch.zeros_like(noisy_q[:, i]))
        seq["lr"].append(clean_lr[:, i] if clean else torch.zeros(b, t, 3))
    seq = {k: torch.stack(v, 1) for k, v in seq.items()}
    is_clean = [c for _, c in layout.segments]

    a, bb = torch.randn(b, dh, t), torch.randn(b, t, d)
    with torch.no_grad():
        times = interleaved_min(
            {
                "bmm": lambda: torch.bmm(a, bb),
                "fast": lambda: fast_weight_teacher_forcing(
                    weights, noisy_q, clean_q, clean_k, clean_v, clean_lr, rule
                ),
                "naive": lambda: fast_weight_naive(
                    *weights, seq["q"], seq["k"], seq["v"], seq["lr"], None, is_clean, rule
                ),
            },
            repeats=7,
        )
    gemm = 2 * d * dh  # FLOPs of one token through one (dh x d) matrix
    flops = b * gemm * (3 * (2 * n - 1) * t + 6 * (n - 1) * t)  # apply all tokens; update clean tokens
    peak = b * gemm * t / times["bmm"]
    return {
        "bmm_gflops": peak / 1e9,
        "fastweight_gflops": flops / times["fast"] / 1e9,
        "fastweight_utilisation": flops / times["fast"] / peak,
        "fastweight_speedup_vs_naive": times["naive"] / times["fast"],
    }


def full_block_causal_mask(layout: TeacherForcingLayout, t: int) -> torch.Tensor:
    """Every segment sees itself and all earlier clean chunks (CausVid-style teacher forcing)."""
    s = layout.num_segments
    allowed = torch.zeros(s, s, dtype=torch.bool)
    for i, (chunk_i, clean_i) in enumerate(layout.segments):
        for j, (chunk_j, clean_j) in enumerate(layout.segments):
            allowed[i, j] = i == j or (clean_j and (chunk_j < chunk_i or (clean_i and chunk_j < chunk_i)))
    return allowed.repeat_interleave(t, 0).repeat_interleave(t, 1)


def train_cost_figures(dim=256, heads=2, fw_head_dim=128, grid=(1, 8, 16), short=4, long=32):
    """Forward + backward time per chunk of one LaCT layer, long video over short video, and the
    same for full block-causal attention over the same interleaved sequence."""
    torch.manual_seed(0)
    k, h, w = grid
    t = k * h * w
    layer = LaCTAttention(dim, heads, 1e-6, None, FastWeightMemory(dim, dim // heads, fw_head_dim, 2, UpdateRule()))
    rope = WanRotaryPosEmbed(dim // heads, (1, 2, 2), 1024)

    def lact_step(n):
        layout = TeacherForcingLayout(n, 1)
        rotary = chunk_rotary_emb(rope, layout.grouped_chunks, k, h, w)
        x = torch.randn(1, layout.num_segments, t, dim, requires_grad=True)
        tables = RotaryTables(rotary, rotary)
        return lambda: layer(x, tables, ForwardMode.TEACHER_FORCING, layout)[0].sum().backward()

    def full_step(n):
        layout = TeacherForcingLayout(n, 1)
        rotary = chunk_rotary_emb(rope, tuple(c for c, _ in layout.segments), k, h, w)
        mask = full_block_causal_mask(layout, t)
        x = torch.randn(1, layout.num_segments * t, dim, requires_grad=True)

        def step():
            q, kk, v = (proj(x).unflatten(-1, (heads, -1)) for proj in (layer.to_q, layer.to_k, layer.to_v))
            q = layer.norm_q(q.flatten(-2)).unflatten(-1, (heads, -1))
            kk = layer.norm_k(kk.flatten(-2)).unflatten(-1, (heads, -1))
            freqs = rotary.flatten(0, 1)  # (L, 1, D/2, 2)
            q, kk = apply_rotary_emb(q, freqs), apply_rotary_emb(kk, freqs)
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2), kk.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
            ).transpose(1, 2)
            layer.to_out[0](out.flatten(-2)).sum().backward()

        return step

    times = interleaved_min(
        {
            "lact_short": lact_step(short),
            "lact_long": lact_step(long),
            "full_short": full_step(short),
            "full_long": full_step(long),
        },
        repeats=5,
    )
    per_chunk = {name: value / (short if name.endswith("short") else long) for name, value in times.items()}
    return {
        "train_cost_growth": per_chunk["lact_long"] / per_chunk["lact_short"],
        "train_cost_growth_full_attention": per_chunk["full_long"] / per_chunk["full_short"],
        f"lact_over_full_attention_time_N{long}": times["lact_long"] / times["full_long"],
    }


def decode_cost_figures(late=64, early=2):
    """One denoising step of chunk 64 over one of chunk 2, chunk-by-chunk inference, small model."""
    torch.manual_seed(0)
    model = LaCTWanTransformer3DModel(**TRANSFORMER_CONFIGS["small"], fw_head_dim=128, chunk_frames=3).eval()
    text = torch.randn(1, 16, 32)
    chunk = torch.randn(1, 16, 3, 8, 8)
    states = {}
    state = model.init_state()
    with torch.no_grad():
        for i in range(late):
            if i + 1 in (early, late):
                states[i + 1] = state
            state = model(chunk, torch.zeros(1), text, mode="commit", state=state).state
        step = lambda s: lambda: model(chunk, torch.tensor([500.0]), text, mode="denoise", state=s)  # noqa: E731
        times = interleaved_min({"early": step(states[early]), "late": step(states[late])}, repeats=20)
    return {"decode_cost_growth": times["late"] / times["early"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no_malloc_tuning", action="store_true", help="keep glibc's default large-buffer handling")
    args = parser.parse_args()
    if not args.no_malloc_tuning:
        run_with_tuned_malloc()
    torch.set_num_threads(args.threads)
    figures = {"threads": torch.get_num_threads(), "malloc_tuned": malloc_tuned()}
    figures.update(fast_weight_figures())
    figures.update(train_cost_figures())
    figures.update(decode_cost_figures())
    report(figures, args.json)


if __name__ == "__main__":
    main()
