"""The LaCT layer end to end: its fast path against the naive reference, gradients included."""

import pytest
import torch
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

import lact_video.layers.fast_weight_memory as memory_module
from lact_video.layers import FastWeightMemory, LaCTAttention
from lact_video.layers.rotary import RotaryTables, apply_rotary_emb, chunk_rotary_emb
from lact_video.ops.fast_weight import LOCAL_TOKENS, fast_weight_naive
from lact_video.ops.fast_weight.chunk import UpdateRule
from lact_video.sequence import TeacherForcingLayout
from lact_video.state import ForwardMode
from lact_video.testing import open_memory


def naive_teacher_forcing(
    weights, noisy_query, clean_query, clean_key, clean_value, clean_lr, rule, clean_momentum=None, reduction=None
):
    """Same signature as the fast op, computed by walking the interleaved sequence naively (one device: every
    chunk's tokens are here, so the reduction must be the identity)."""
    assert reduction is LOCAL_TOKENS
    b, n, _, d = noisy_query.shape
    t = clean_query.shape[2] if n > 1 else noisy_query.shape[2]
    r = noisy_query.shape[2] // t
    noisy = noisy_query.view(b, n, r, t, d)
    layout = TeacherForcingLayout(n, r)
    seq_q, seq_k, seq_v, seq_lr, seq_m = [], [], [], [], []
    zeros = torch.zeros_like(noisy[:, 0, 0])
    for i, is_clean in layout.segments:
        j = i if is_clean else None
        seq_q.append(clean_query[:, i] if is_clean else noisy[:, i, 0])
        seq_k.append(clean_key[:, j] if is_clean else zeros)
        seq_v.append(clean_value[:, j] if is_clean else zeros)
        seq_lr.append(clean_lr[:, j] if is_clean else zeros[..., :3])
        m = clean_momentum[:, j, None].expand(b, t) if is_clean and clean_momentum is not None else zeros[..., 0]
        seq_m.append(m)
    # Each noisy copy reads the same state; evaluate every copy by substituting its queries.
    outs = []
    for copy in range(r):
        q = [noisy[:, i, copy] if not c else x for x, (i, c) in zip(seq_q, layout.segments)]
        out, _ = fast_weight_naive(
            *weights,
            *(torch.stack(x, 1) for x in (q, seq_k, seq_v, seq_lr, seq_m)),
            [c for _, c in layout.segments],
            rule,
        )
        outs.append(out)
    noisy_idx = [s for s, (_, c) in enumerate(layout.segments) if not c][::r]
    clean_idx = [s for s, (_, c) in enumerate(layout.segments) if c]
    noisy_out = torch.stack([torch.stack([o[:, s] for o in outs], 1) for s in noisy_idx], 1)  # (B, N, R, T, d)
    return noisy_out.reshape(b, n, r * t, d), outs[0][:, clean_idx]


@pytest.mark.parametrize(
    "rule",
    [
        UpdateRule(),
        UpdateRule(momentum=True),
        UpdateRule(muon=True, momentum=True, muon_dtype=torch.float64),
        UpdateRule(momentum=True, retention_decay=0.3),
    ],
    ids=["default", "momentum", "muon-momentum", "momentum-retention"],
)
def test_layer_fast_path_matches_naive_with_gradients(monkeypatch, rule):
    torch.manual_seed(0)
    dim, heads, k, h, w, n, r = 24, 2, 2, 2, 2, 3, 2
    layer = LaCTAttention(dim, heads, 1e-6, None, FastWeightMemory(dim, dim // heads, 8, 2, rule)).double()
    open_memory(layer, noise={"lr_proj.weight": 0.3, "momentum_proj.weight": 0.3})
    layout = TeacherForcingLayout(n, r)
    rope = WanRotaryPosEmbed(dim // heads, (1, 2, 2), 64)
    rotary = chunk_rotary_emb(rope, layout.grouped_chunks, k, h, w, dtype=torch.float64)
    x = torch.randn(1, layout.num_segments, k * h * w, dim, dtype=torch.float64)

    results = []
    for op in ("fast", "naive"):
        if op == "naive":
            monkeypatch.setattr(memory_module, "fast_weight_teacher_forcing", naive_teacher_forcing)
        layer.zero_grad()
        out, _ = layer(x, RotaryTables(rotary, rotary), ForwardMode.TEACHER_FORCING, layout)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        results.append((out.detach(), {name: p.grad.clone() for name, p in layer.named_parameters()}))
    (fast_out, fast_grads), (naive_out, naive_grads) = results
    torch.testing.assert_close(fast_out, naive_out, rtol=1e-10, atol=1e-12)
    assert fast_grads["memory.w0"].abs().max() > 0
    for name in fast_grads:
        torch.testing.assert_close(fast_grads[name], naive_grads[name], rtol=1e-9, atol=1e-12, msg=name)


def wan_rotary_reference(x, cos, sin):
    """Wan's attention processor, verbatim in effect: rotate interleaved pairs with real tables."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


@pytest.mark.parametrize("path", ["eager-complex", "compiled-real"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_chunk_rotary_equals_wan_rotary_over_a_clip(monkeypatch, dtype, path):
    """Per-chunk tables, chunk after chunk, rotate exactly as Wan does over the whole clip, on both the
    eager (complex product) path and the real-arithmetic path that compiled graphs take."""
    if path == "compiled-real":
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    torch.manual_seed(0)
    heads, head_dim, k, h, w, n = 2, 12, 2, 3, 4, 3
    rope = WanRotaryPosEmbed(head_dim, (1, 2, 2), 64)
    cos, sin = rope(torch.zeros(1, 16, n * k, 2 * h, 2 * w))  # (1, L, 1, D), float64
    x = torch.randn(1, n * k * h * w, heads, head_dim).to(dtype)
    table_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    freqs = chunk_rotary_emb(rope, tuple(range(n)), k, h, w, table_dtype)  # (N, T, 1, D/2, 2)
    ours = apply_rotary_emb(x.unflatten(1, (n, -1)), freqs).flatten(1, 2)
    assert ours.dtype == dtype
    tolerance = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(ours, wan_rotary_reference(x, cos, sin), rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("path", ["eager-complex", "compiled-real"])
def test_rotary_gradient_equals_wan_reference(monkeypatch, path):
    """Training backpropagates through the rotation: its gradient matches Wan's real-arithmetic one."""
    if path == "compiled-real":
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    torch.manual_seed(0)
    rope = WanRotaryPosEmbed(12, (1, 2, 2), 64)
    cos, sin = rope(torch.zeros(1, 16, 4, 4, 4))  # (1, 16, 1, 12)
    freqs = chunk_rotary_emb(rope, (0, 1), 2, 2, 2, torch.float64).flatten(0, 1)  # (16, 1, 6, 2)
    x = torch.randn(1, 16, 2, 12, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(1, 16, 2, 12, dtype=torch.float64)
    (grad_ours,) = torch.autograd.grad((apply_rotary_emb(x, freqs) * weights).sum(), x)
    (grad_wan,) = torch.autograd.grad((wan_rotary_reference(x, cos, sin) * weights).sum(), x)
    torch.testing.assert_close(grad_ours, grad_wan, rtol=1e-12, atol=1e-12)
