"""Large-chunk fast-weight memory: the fast path (LaCT paper, Sec. 3; docs/design.md, Sec. 1.4).

The memory is a SwiGLU MLP per (sample, head), `f_S(u) = W1 (silu(W0 u) * (W2 u))`, whose weights
`S = (W0, W1, W2)` take one lr-weighted gradient step per *whole chunk* of clean tokens. Each step
is a handful of `(dh x T) @ (T x d)` GEMMs, which is what makes large chunks hardware friendly.

Shapes (batch and heads are folded into one leading dim `B`, i.e. `B = batch * Hf`):
    w0, w2: (B, dh, d)    w1: (B, d, dh)
    q, k, v: (B, L, d)    lr: (B, L, 3), rates for (w0, w1, w2)    momentum: (B,)

Speed notes (measured on the CPU, benchmarks/bench_core.py): the per-token rates scale the narrow
`(T, d)` operand of each outer product rather than the `(T, dh)` one; W0 and W2 stay separate GEMMs
(stacking them leaves strided halves that make the element-wise work slower than the saved call);
queries are never concatenated across segments (the copy costs more than a second call). The plain
reference in `naive.py` walks the same maths one segment at a time.
"""

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..muon import zeropower_via_newtonschulz5

# Keeps the weight-norm rescale finite for an all-zero row.
WEIGHT_NORM_EPS = 1e-5


class FastWeights(NamedTuple):
    """One SwiGLU fast-weight MLP per leading index. Also used for momentum buffers and row norms."""

    w0: torch.Tensor  # (B, dh, d)
    w1: torch.Tensor  # (B, d, dh)
    w2: torch.Tensor  # (B, dh, d)


@dataclass(frozen=True)
class UpdateRule:
    """How a chunk's gradient becomes a weight update (docs/design.md, Sec. 1.4)."""

    momentum: bool = False  # dW <- dW + m * dW_prev, applied before Muon
    muon: bool = False  # replace dW by its Newton-Schulz orthogonalisation
    weight_norm: bool = True  # rescale each row to its norm in the initial state
    muon_dtype: torch.dtype = torch.float32  # bf16 is the authors' GPU choice
    # lambda in [0, 1]: after each update W <- W0 + (1 - lambda) (W - W0), W0 the initial state; 0 (the spec) is off
    retention_decay: float = 0.0

    def __post_init__(self):
        if not 0 <= self.retention_decay <= 1:
            raise ValueError(f"UpdateRule.retention_decay must lie in [0, 1]; got {self.retention_decay}.")


class TokenReduction:
    """Completes a chunk's statistics over its tokens: identity, because a single device holds them all.

    The hook point of token-parallel training (docs/design.md, Sec. 2.5): `lact_video.parallel` substitutes a
    subclass whose methods complete the partial results over the ranks that hold the chunk's other tokens. The
    model code itself stays single-device.
    """

    def sum(self, partial: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """Sums over this device's tokens -> sums over all the chunk's tokens (same shapes)."""
        return partial

    def mean(self, partial: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """Means over this device's tokens -> means over all the chunk's tokens (same shapes)."""
        return partial


# All tokens on this device: the reduction every single-device caller uses.
LOCAL_TOKENS = TokenReduction()


def row_norms(weights: FastWeights) -> FastWeights:
    """Per-row L2 norms `(B, rows, 1)`: the targets of weight norm, taken from the initial state."""
    return FastWeights(*(w.norm(dim=-1, keepdim=True) for w in weights))


def fast_weight_apply(weights: FastWeights, query: torch.Tensor) -> torch.Tensor:
    """Memory read-out `f_S(q)` for every token. `query` (B, L, d) -> (B, L, d)."""
    gate = torch.bmm(query, weights.w0.transpose(1, 2))  # (B, L, dh)
    hidden = torch.bmm(query, weights.w2.transpose(1, 2))  # (B, L, dh)
    return torch.bmm(F.silu(gate) * hidden, weights.w1.transpose(1, 2))  # (B, L, d)


def fast_weight_gradient(
    weights: FastWeights, key: torch.Tensor, value: torch.Tensor, lr: torch.Tensor
) -> FastWeights:
    """Negative gradient of `L = -sum_j eta_j f_S(k_j) . v_j`, one lr per token and matrix.

    Args:
        key: (B, T, d) L2-normalised keys.  value: (B, T, d).  lr: (B, T, 3).

    Returns:
        The update directions `(dW0, dW1, dW2)`, shaped like the weights.
    """
    gate = torch.bmm(key, weights.w0.transpose(1, 2))  # (B, T, dh)
    hidden = torch.bmm(key, weights.w2.transpose(1, 2))  # (B, T, dh)
    delta = torch.bmm(value, weights.w1)  # W1^T v: (B, T, dh)
    sig = torch.sigmoid(gate)
    silu_gate = gate * sig
    # The per-token rates scale the (T, d) side of each outer product: fewer elements than (T, dh).
    lr0, lr1, lr2 = lr.unsqueeze(-1).unbind(-2)  # 3 x (B, T, 1)
    grad_hidden = delta * silu_gate  # (B, T, dh)
    # d silu(g)/dg = sig + silu(g) * (1 - sig).
    grad_gate = delta * hidden * torch.addcmul(sig, silu_gate, 1 - sig)  # (B, T, dh)
    d0 = torch.bmm(grad_gate.transpose(1, 2), key * lr0)  # (B, dh, d)
    d2 = torch.bmm(grad_hidden.transpose(1, 2), key * lr2)  # (B, dh, d)
    d1 = torch.bmm((value * lr1).transpose(1, 2), silu_gate * hidden)  # (B, d, dh)
    return FastWeights(d0, d1, d2)


def fast_weight_update(
    weights: FastWeights,
    key: torch.Tensor,
    value: torch.Tensor,
    lr: torch.Tensor,
    rule: UpdateRule,
    norms: FastWeights | None = None,
    momentum: torch.Tensor | None = None,
    previous_update: FastWeights | None = None,
    reduction: TokenReduction = LOCAL_TOKENS,
    initial: FastWeights | None = None,
) -> tuple[FastWeights, FastWeights | None]:
    """One large-chunk step: gradient, momentum, Muon, `W + dW`, weight norm, retention (docs/design.md Sec. 1.4;
    spec Sec. 3).

    Args:
        weights: the state before the chunk, `FastWeights` of (B, dh, d), (B, d, dh), (B, dh, d); B is batch x
            fast-weight heads.
        key: (B, T, d) L2-normalised keys of the chunk's T tokens.  value: (B, T, d).  lr: (B, T, 3) per-token
            rates of the three matrices.
        norms: row norms of the initial state (`row_norms`), required when `rule.weight_norm`.
        initial: the initial state, required when `rule.retention_decay > 0`: the state decays towards it.
        momentum: (B,) the chunk's mean momentum gate, required when `rule.momentum`.
        previous_update: the previous chunk's momentum-accumulated update, `None` before the first.
        reduction: completes the gradient, a sum over the chunk's tokens, where other devices hold some of them;
            it runs before momentum, Muon and weight norm, which need the whole chunk's gradient.

    Returns:
        The new weights and the update to carry as `previous_update` (`None` without momentum).
    """
    if rule.retention_decay and initial is None:
        raise ValueError("UpdateRule.retention_decay > 0 decays towards the initial state: pass initial=.")
    update = FastWeights(*reduction.sum(fast_weight_gradient(weights, key, value, lr)))
    carried = None
    if rule.momentum:
        if previous_update is not None:
            m = momentum.view(-1, 1, 1)  # (B, 1, 1)
            update = FastWeights(*(u + m * p for u, p in zip(update, previous_update)))
        carried = update
    if rule.muon:
        update = FastWeights(*(zeropower_via_newtonschulz5(u, rule.muon_dtype) for u in update))
    new = [w + u for w, u in zip(weights, update)]
    if rule.weight_norm:
        new = [w / (w.norm(dim=-1, keepdim=True) + WEIGHT_NORM_EPS) * n for w, n in zip(new, norms)]
    if rule.retention_decay:
        # W0 + (1 - lambda) (W - W0); lerp returns W0 exactly at lambda = 1.
        new = [torch.lerp(w, w_init, rule.retention_decay) for w, w_init in zip(new, initial)]
    return FastWeights(*new), carried


def fast_weight_teacher_forcing(
    weights: FastWeights,
    noisy_query: torch.Tensor,
    clean_query: torch.Tensor,
    clean_key: torch.Tensor,
    clean_value: torch.Tensor,
    clean_lr: torch.Tensor,
    rule: UpdateRule,
    clean_momentum: torch.Tensor | None = None,
    reduction: TokenReduction = LOCAL_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The memory over a whole teacher-forcing sequence, one short loop over chunks.

    Noisy segments of chunk `i` read the state after updates on `c_0 .. c_{i-1}`; clean chunk `c_i`
    updates the state and then reads it. So step `i` applies one state to `n_i` (all its copies at
    once) and to `c_{i-1}`, then updates on `c_i`: the same calls inference makes per chunk.

    Args:
        weights: the initial state, (B, ...) as in `FastWeights`.
        noisy_query: (B, N, Ln, d), all noisy copies of each chunk (`Ln = R * T`).
        clean_query, clean_key, clean_value: (B, N-1, T, d), clean chunks `c_0 .. c_{N-2}`.
        clean_lr: (B, N-1, T, 3).  clean_momentum: (B, N-1) mean momentum gate per clean chunk.
        reduction: as in `fast_weight_update` (`T` is then this device's share of each chunk's tokens).

    Returns:
        `(noisy_out (B, N, Ln, d), clean_out (B, N-1, T, d))`.
    """
    num_chunks, clean_shape = noisy_query.shape[1], clean_query.shape
    initial = weights
    norms = row_norms(weights) if rule.weight_norm else None
    # unbind, not indexing: the backward of N slices would write N full-size gradient buffers,
    # which makes training quadratic in the number of chunks; unbind's backward is one stack.
    noisy_query = noisy_query.unbind(1)
    clean_query, clean_key, clean_value, clean_lr = (
        x.unbind(1) for x in (clean_query, clean_key, clean_value, clean_lr)
    )
    clean_momentum = clean_momentum.unbind(1) if rule.momentum else None
    previous = None
    noisy_out, clean_out = [], []
    for i in range(num_chunks):
        noisy_out.append(fast_weight_apply(weights, noisy_query[i]))  # (B, Ln, d)
        if i > 0:
            clean_out.append(fast_weight_apply(weights, clean_query[i - 1]))  # (B, T, d)
        if i < num_chunks - 1:
            momentum = clean_momentum[i] if rule.momentum else None
            weights, previous = fast_weight_update(
                weights, clean_key[i], clean_value[i], clean_lr[i], rule, norms, momentum, previous, reduction, initial
            )
    noisy = torch.stack(noisy_out, dim=1)
    clean = torch.stack(clean_out, dim=1) if clean_out else noisy.new_zeros(clean_shape)
    return noisy, clean
