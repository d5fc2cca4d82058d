"""Plain reference for the fast-weight memory: walks the interleaved sequence segment by segment.

No fusions and no chunk grouping: every formula is written as in docs/design.md, Sec. 1.4, with explicit sums
over tokens (einsum). Slow; used by the tests to pin down `chunk.py`.
"""

import torch
import torch.nn.functional as F

from ..muon import zeropower_via_newtonschulz5
from .chunk import WEIGHT_NORM_EPS, UpdateRule


def _swiglu_parts(w0, w2, x):
    """`g = W0 x`, `h = W2 x` for every token. w: (B, dh, d), x: (B, T, d) -> 2 x (B, T, dh)."""
    return torch.einsum("bhd,btd->bth", w0, x), torch.einsum("bhd,btd->bth", w2, x)


def naive_apply(w0, w1, w2, x):
    """`f_S(x) = W1 (silu(W0 x) * (W2 x))`. x: (B, T, d) -> (B, T, d)."""
    g, h = _swiglu_parts(w0, w2, x)
    return torch.einsum("bdh,bth->btd", w1, F.silu(g) * h)


def naive_gradient(w0, w1, w2, k, v, lr):
    """The three lr-weighted update directions, term by term as in docs/design.md, Sec. 1.4.

    k, v: (B, T, d); lr: (B, T, 3). Returns (dW0 (B, dh, d), dW1 (B, d, dh), dW2 (B, dh, d)).
    """
    g, h = _swiglu_parts(w0, w2, k)
    a = F.silu(g) * h
    delta = torch.einsum("bdh,btd->bth", w1, v)  # W1^T v_j
    silu_prime = torch.sigmoid(g) * (1 + g * (1 - torch.sigmoid(g)))
    d1 = torch.einsum("bt,btd,bth->bdh", lr[..., 1], v, a)
    d2 = torch.einsum("bt,bth,btd->bhd", lr[..., 2], delta * F.silu(g), k)
    d0 = torch.einsum("bt,bth,btd->bhd", lr[..., 0], delta * h * silu_prime, k)
    return d0, d1, d2


def fast_weight_naive(w0, w1, w2, query, key, value, lr, momentum, is_clean, rule: UpdateRule):
    """The memory branch over an interleaved teacher-forcing sequence.

    Args:
        w0, w1, w2: the initial state, (B, dh, d), (B, d, dh), (B, dh, d).
        query, key, value: (B, S, T, d) for all `S` segments in sequence order.
        lr: (B, S, T, 3).  momentum: (B, S, T) per-token momentum gates, or None.
        is_clean: `S` booleans; a clean segment updates the state, then reads it.

    Returns:
        `(out (B, S, T, d), (w0, w1, w2))`: every segment's read-out and the final state.
    """
    weights = initial = [w0, w1, w2]
    initial_norms = [w.norm(dim=-1, keepdim=True) for w in weights]
    previous = None
    outputs = []
    for s, clean in enumerate(is_clean):
        if clean:
            update = list(naive_gradient(*weights, key[:, s], value[:, s], lr[:, s]))
            if rule.momentum:
                if previous is not None:
                    m = momentum[:, s].mean(dim=1)[:, None, None]  # chunk mean, (B, 1, 1)
                    update = [u + m * p for u, p in zip(update, previous)]
                previous = update
            if rule.muon:
                update = [zeropower_via_newtonschulz5(u, rule.muon_dtype) for u in update]
            weights = [w + u for w, u in zip(weights, update)]
            if rule.weight_norm:
                weights = [
                    w / (w.norm(dim=-1, keepdim=True) + WEIGHT_NORM_EPS) * n for w, n in zip(weights, initial_norms)
                ]
            if rule.retention_decay:
                weights = [a + (1 - rule.retention_decay) * (w - a) for w, a in zip(weights, initial)]
        outputs.append(naive_apply(*weights, query[:, s]))
    return torch.stack(outputs, dim=1), tuple(weights)
