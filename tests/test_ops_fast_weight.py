"""Fast-weight op: manual gradients vs autograd, fast chunked path vs the naive reference."""

import pytest
import torch
import torch.nn.functional as F
from utils import assert_rel_close

from lact_video.ops.fast_weight import (
    FastWeights,
    UpdateRule,
    fast_weight_apply,
    fast_weight_gradient,
    fast_weight_naive,
    fast_weight_teacher_forcing,
    fast_weight_update,
    row_norms,
)
from lact_video.ops.fast_weight.naive import naive_gradient
from lact_video.ops.muon import zeropower_via_newtonschulz5
from lact_video.sequence import TeacherForcingLayout

RULES = {
    "plain": UpdateRule(weight_norm=False),
    "weightnorm": UpdateRule(),
    "momentum": UpdateRule(momentum=True),
    "muon": UpdateRule(muon=True),
    "muon-momentum": UpdateRule(muon=True, momentum=True),
    "retention": UpdateRule(retention_decay=0.3),
    "retention-momentum-plain": UpdateRule(momentum=True, weight_norm=False, retention_decay=0.5),
}


def random_weights(b, d, dh, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return FastWeights(
        torch.randn(b, dh, d, generator=g, dtype=dtype) / d**0.5,
        torch.randn(b, d, dh, generator=g, dtype=dtype) / dh**0.5,
        torch.randn(b, dh, d, generator=g, dtype=dtype) / d**0.5,
    )


@pytest.mark.parametrize("d,dh,t", [(8, 16, 5), (16, 16, 33)], ids=["d8-dh16-t5", "d16-dh16-t33"])
def test_manual_gradient_matches_autograd(d, dh, t):
    b = 3
    weights = [w.clone().requires_grad_() for w in random_weights(b, d, dh)]
    k = F.normalize(torch.randn(b, t, d, dtype=torch.float64), dim=-1)
    v = torch.randn(b, t, d, dtype=torch.float64)
    lr = torch.rand(b, t, 3, dtype=torch.float64)
    manual = fast_weight_gradient(FastWeights(*weights), k, v, lr)
    naive = naive_gradient(*weights, k, v, lr)
    for m in range(3):
        # The fast-weight loss (docs/design.md, Sec. 1.4), with matrix m's per-token rates: L_m = -sum_j eta_m,j f_S(k_j) . v_j.
        f = fast_weight_apply(FastWeights(*weights), k)
        loss = -(lr[..., m] * (f * v).sum(-1)).sum()
        (grad,) = torch.autograd.grad(loss, weights[m])
        assert_rel_close(manual[m], -grad, 1e-10, f"fast dW{m}")
        assert_rel_close(naive[m], -grad, 1e-10, f"naive dW{m}")


def make_sequence(b, n, r, t, d, dh, dtype=torch.float64, seed=0):
    """Random memory inputs for an interleaved sequence, in sequence order."""
    g = torch.Generator().manual_seed(seed)
    layout = TeacherForcingLayout(n, r)
    s = layout.num_segments
    q = F.normalize(torch.randn(b, s, t, d, generator=g, dtype=dtype), dim=-1)
    k = F.normalize(torch.randn(b, s, t, d, generator=g, dtype=dtype), dim=-1)
    v = torch.randn(b, s, t, d, generator=g, dtype=dtype)
    lr = torch.rand(b, s, t, 3, generator=g, dtype=dtype) * 0.5
    mom = torch.rand(b, s, t, generator=g, dtype=dtype)
    return layout, q, k, v, lr, mom


def run_fast(weights, layout, q, k, v, lr, mom, rule):
    """The fast path on grouped tensors; returns outputs back in sequence order."""
    order = list(layout.grouped_order)
    q, k, v, lr, mom = (x[:, order] for x in (q, k, v, lr, mom))
    b, _, t, d = q.shape
    nn_ = layout.num_noisy
    noisy, clean = fast_weight_teacher_forcing(
        weights,
        q[:, :nn_].reshape(b, layout.num_chunks, -1, d),
        q[:, nn_:],
        k[:, nn_:],
        v[:, nn_:],
        lr[:, nn_:],
        rule,
        mom[:, nn_:].mean(dim=2),
    )
    grouped = torch.cat([noisy.reshape(b, nn_, t, d), clean], dim=1)
    out = torch.empty_like(grouped)
    out[:, order] = grouped
    return out


@pytest.mark.parametrize("rule", RULES.values(), ids=RULES.keys())
@pytest.mark.parametrize("n,r", [(1, 1), (2, 1), (4, 2)], ids=["N1-R1", "N2-R1", "N4-R2"])
def test_teacher_forcing_matches_naive(rule, n, r):
    b, t, d, dh = 2, 6, 8, 16
    layout, q, k, v, lr, mom = make_sequence(b, n, r, t, d, dh)
    weights = random_weights(b, d, dh)
    clean = [c for _, c in layout.segments]
    expected, _ = fast_weight_naive(*weights, q, k, v, lr, mom, clean, rule)
    assert_rel_close(run_fast(weights, layout, q, k, v, lr, mom, rule), expected, 1e-10, "outputs")


@pytest.mark.parametrize("rule", RULES.values(), ids=RULES.keys())
def test_gradients_match_naive(rule):
    """Gradients w.r.t. every input of the op, including the slow initial weights."""
    b, n, r, t, d, dh = 2, 3, 2, 5, 8, 16
    layout, *inputs = make_sequence(b, n, r, t, d, dh)
    clean = [c for _, c in layout.segments]
    grads = []
    for fn in ("fast", "naive"):
        leaves = [x.clone().requires_grad_() for x in (*random_weights(b, d, dh), *inputs)]
        w, (q, k, v, lr, mom) = FastWeights(*leaves[:3]), leaves[3:]
        if fn == "fast":
            out = run_fast(w, layout, q, k, v, lr, mom, rule)
        else:
            out, _ = fast_weight_naive(*w, q, k, v, lr, mom, clean, rule)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads.append([x.grad for x in leaves])
    names = ["w0", "w1", "w2", "q", "k", "v", "lr", "momentum"]
    for name, fast, naive in zip(names, *grads):
        if name == "momentum" and not rule.momentum:
            continue
        assert_rel_close(fast, naive, 1e-9, f"grad {name}")


@pytest.mark.parametrize("rule", RULES.values(), ids=RULES.keys())
def test_chunk_updates_final_state_matches_naive(rule):
    """Inference's chunk-by-chunk updates end in the same fast weights as the naive walk."""
    b, n, t, d, dh = 2, 4, 7, 8, 16
    layout, q, k, v, lr, mom = make_sequence(b, n, 1, t, d, dh)
    weights = random_weights(b, d, dh)
    clean = [c for _, c in layout.segments]
    _, expected = fast_weight_naive(*weights, q, k, v, lr, mom, clean, rule)
    state, previous, norms = weights, None, row_norms(weights)
    for s, (_, is_clean) in enumerate(layout.segments):
        if is_clean:
            state, previous = fast_weight_update(
                state, k[:, s], v[:, s], lr[:, s], rule, norms, mom[:, s].mean(1), previous, initial=weights
            )
    for m in range(3):
        assert_rel_close(state[m], expected[m], 1e-10, f"final W{m}")


def test_weight_norm_keeps_initial_row_norms():
    b, t, d, dh = 2, 9, 8, 16
    weights = random_weights(b, d, dh)
    k = F.normalize(torch.randn(b, t, d, dtype=torch.float64), dim=-1)
    new, _ = fast_weight_update(
        weights,
        k,
        torch.randn(b, t, d, dtype=torch.float64),
        torch.ones(b, t, 3, dtype=torch.float64),
        UpdateRule(),
        row_norms(weights),
    )
    for w_new, w_old in zip(new, weights):
        assert not torch.allclose(w_new, w_old)
        # Exact up to the eps that keeps the rescale finite.
        torch.testing.assert_close(w_new.norm(dim=-1), w_old.norm(dim=-1), rtol=1e-4, atol=0)


def test_retention_decays_towards_the_initial_state():
    """lambda = 0 is the update without retention, bit for bit; lambda = 1 puts back the initial state exactly;
    in between, W0 + (1 - lambda) (W - W0) of the update without retention."""
    b, t, d, dh = 2, 9, 8, 16
    weights = random_weights(b, d, dh)
    k = F.normalize(torch.randn(b, t, d, dtype=torch.float64), dim=-1)
    v, lr = torch.randn(b, t, d, dtype=torch.float64), torch.ones(b, t, 3, dtype=torch.float64)

    def update(decay):
        rule = UpdateRule(retention_decay=decay)
        return fast_weight_update(weights, k, v, lr, rule, row_norms(weights), initial=weights)[0]

    plain = fast_weight_update(weights, k, v, lr, UpdateRule(), row_norms(weights))[0]
    for m in range(3):
        assert not torch.allclose(plain[m], weights[m])
        assert torch.equal(update(0.0)[m], plain[m])
        assert torch.equal(update(1.0)[m], weights[m])
        assert_rel_close(update(0.25)[m], weights[m] + 0.75 * (plain[m] - weights[m]), 1e-12, f"W{m}")


def test_retention_needs_the_initial_state():
    weights = random_weights(1, 8, 16)
    k = v = torch.ones(1, 2, 8, dtype=torch.float64)
    lr = torch.ones(1, 2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="pass initial="):
        fast_weight_update(weights, k, v, lr, UpdateRule(retention_decay=0.5), row_norms(weights))


@pytest.mark.parametrize("shape", [(3, 16, 8), (3, 8, 16)], ids=["tall", "wide"])
def test_newton_schulz_orthogonalises(shape):
    x = torch.randn(*shape, dtype=torch.float64)
    y = zeropower_via_newtonschulz5(x, dtype=torch.float64)
    assert y.shape == x.shape and y.dtype == x.dtype
    sv = torch.linalg.svdvals(y)
    # The quintic's fixed band: every singular value lands in roughly [0.7, 1.2].
    assert sv.min() > 0.6 and sv.max() < 1.25, sv
    # Same singular vectors as the input: y ~ U f(S) V^T, so U^T y V is diagonal.
    u, _, vh = torch.linalg.svd(x, full_matrices=False)
    core = u.transpose(-2, -1) @ y @ vh.transpose(-2, -1)
    off = core - torch.diag_embed(torch.diagonal(core, dim1=-2, dim2=-1))
    assert off.abs().max() < 1e-8
