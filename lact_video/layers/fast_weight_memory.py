"""The fast-weight memory branch of a LaCT layer: every new parameter of the layer lives here.

docs/design.md, Sec. 1.4. At initialisation the output gate is `silu(0) = 0`, so a patched model starts as
pure window attention and reproduces pretrained Wan on a one-chunk clip.

Shapes: `B` batch, `S` segments, `T` tokens per chunk, `C` model dim, `H`/`D` Wan attention
heads/head dim, `Hf`/`d` fast-weight heads/head dim, `dh = fw_mlp_ratio * d`.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.fast_weight import (
    LOCAL_TOKENS,
    FastWeights,
    UpdateRule,
    fast_weight_apply,
    fast_weight_teacher_forcing,
    fast_weight_update,
    row_norms,
)
from ..sequence import TeacherForcingLayout
from ..state import ForwardMode, LayerState
from .rotary import apply_rotary_emb


def inverse_softplus(y: float) -> float:
    """x with softplus(x) = y > 0, in a form that neither overflows for large y nor loses digits for small y."""
    return y + math.log(-math.expm1(-y))


class FastWeightMemory(nn.Module):
    def __init__(
        self,
        dim: int,
        attention_head_dim: int,
        fw_head_dim: int,
        fw_mlp_ratio: int,
        rule: UpdateRule,
        base_lr: float = 1e-3,
    ):
        """`base_lr` (> 0) is the per-token rate at `lr_proj = 0`: rate = softplus(lr_proj(x) + lr_offset), with
        the constant `lr_offset = softplus^-1(base_lr)` (lact-video-spec Sec. 3(b), as the authors' layer)."""
        super().__init__()
        if base_lr <= 0:
            raise ValueError(f"fw_base_lr must be > 0 (the rate is a softplus); got {base_lr}.")
        self.num_heads = dim // fw_head_dim  # Hf
        self.head_dim = fw_head_dim  # d
        self.hidden_dim = fw_mlp_ratio * fw_head_dim  # dh
        self.attention_head_dim = attention_head_dim  # D, for the rotary layout
        self.rule = rule
        self.base_lr = base_lr
        # A constant, not a parameter: it is in no state dict, and weight decay on lr_proj pulls the rate to base_lr.
        self.lr_offset = inverse_softplus(base_lr)
        hf, d, dh = self.num_heads, self.head_dim, self.hidden_dim
        # The slow initial fast weights S_0, one SwiGLU per head.
        self.w0 = nn.Parameter(torch.empty(hf, dh, d))
        self.w1 = nn.Parameter(torch.empty(hf, d, dh))
        self.w2 = nn.Parameter(torch.empty(hf, dh, d))
        # Per-channel scale and offset of the memory's queries and keys: [..., 0] q, [..., 1] k.
        self.qk_scale = nn.Parameter(torch.empty(dim, 2))
        self.qk_offset = nn.Parameter(torch.empty(dim, 2))
        # Head-major per-token learning rates: for each head, the rates of (w0, w1, w2).
        self.lr_proj = nn.Linear(dim, 3 * hf)
        self.momentum_proj = nn.Linear(dim, hf) if rule.momentum else None
        self.output_norm = nn.RMSNorm(d, eps=1e-6)
        self.gate_proj = nn.Linear(dim, 1)
        # Completes the per-chunk sums and means over tokens held elsewhere: identity here; sequence parallelism
        # (`lact_video.parallel`) swaps it, as diffusers swaps an attention processor (docs/design.md, Sec. 2.5).
        self.token_reduction = LOCAL_TOKENS
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        for w in (self.w0, self.w2):
            nn.init.normal_(w, std=self.head_dim**-0.5)
        nn.init.normal_(self.w1, std=self.hidden_dim**-0.5)
        nn.init.ones_(self.qk_scale)
        nn.init.zeros_(self.qk_offset)
        # Every token's rate is base_lr until lr_proj learns otherwise (spec Sec. 3(b)).
        nn.init.zeros_(self.lr_proj.weight)
        nn.init.zeros_(self.lr_proj.bias)
        if self.momentum_proj is not None:
            self.momentum_proj.reset_parameters()
        self.output_norm.reset_parameters()
        # Gate silu(0) = 0: the layer starts as pure window attention.
        nn.init.zeros_(self.gate_proj.weight)
        nn.init.zeros_(self.gate_proj.bias)

    def rates(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Per-token fast-weight learning rates, float32, head-major: (..., C) -> (..., Hf*3), for each head
        the rates of (w0, w1, w2). `softplus(lr_proj(x) + lr_offset)`, the sum in float32 as the authors'."""
        return F.softplus(self.lr_proj(hidden_states).float() + self.lr_offset)

    def _initial_weights(self, batch_size: int) -> FastWeights:
        """S_0 for every (sample, head): (B*Hf, ...), still differentiable w.r.t. the parameters."""
        return FastWeights(
            *(w.unsqueeze(0).expand(batch_size, *w.shape).flatten(0, 1) for w in (self.w0, self.w1, self.w2))
        )

    def _to_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, T, C) -> (B*Hf, S, T, d)."""
        b, s, t, _ = x.shape
        return x.view(b, s, t, self.num_heads, self.head_dim).permute(0, 3, 1, 2, 4).flatten(0, 1)

    def _query_or_key(self, x, which: int, rotary_emb):
        """Scale/offset (`which`: 0 query, 1 key), rotary in Wan's head layout, regroup into Hf heads,
        L2-normalise. (B, S, T, C) -> (B*Hf, S, T, d)."""
        x = torch.addcmul(self.qk_offset[:, which], x, self.qk_scale[:, which])  # (B, S, T, C)
        x = apply_rotary_emb(x.unflatten(-1, (-1, self.attention_head_dim)), rotary_emb).flatten(-2)
        return F.normalize(self._to_heads(x), dim=-1)

    def _write_inputs(self, hidden_states, key, value, rotary_emb):
        """What an update needs, for segments that write: keys and values (B*Hf, S', T, d), per-token
        rates (B*Hf, S', T, 3), and the chunk-mean momentum gate (B*Hf, S') or None."""
        b, s, t, _ = hidden_states.shape
        k = self._query_or_key(key, 1, rotary_emb)
        v = self._to_heads(value)
        lr = self.rates(hidden_states).type_as(k)  # (B, S', T, Hf*3)
        lr = lr.view(b, s, t, self.num_heads, 3).permute(0, 3, 1, 2, 4).flatten(0, 1)
        momentum = None
        if self.momentum_proj is not None:
            # One momentum per head and chunk: the mean gate over the chunk's tokens.
            momentum = torch.sigmoid(self.momentum_proj(hidden_states)).mean(dim=2)  # (B, S', Hf)
            (momentum,) = self.token_reduction.mean((momentum,))
            momentum = momentum.permute(0, 2, 1).flatten(0, 1)
        return k, v, lr, momentum

    def forward(
        self,
        hidden_states: torch.Tensor,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        rotary_emb: torch.Tensor,
        mode: ForwardMode,
        layout: TeacherForcingLayout | None = None,
        state: LayerState | None = None,
    ) -> tuple[torch.Tensor, FastWeights | None, FastWeights | None]:
        """Gated memory read-out, and for `COMMIT` the new fast weights and momentum.

        Args:
            hidden_states: (B, S, T, C) the block's normalised, modulated input (drives lr and gate).
            query, key: (B, S, T, C) after `norm_q`/`norm_k`, before rotary.  value: (B, S, T, C).
            rotary_emb: (S, T, 1, D/2, 2) rotary table (`chunk_rotary_emb`).
            layout: grouped teacher-forcing layout (`TEACHER_FORCING` only).
            state: the layer's state (`DENOISE`, `COMMIT`).

        Returns:
            `(out (B, S, T, C), fast_weights, momentum)`; the last two are `None` unless committing.
        """
        b, s, t, c = hidden_states.shape
        q = self._query_or_key(query, 0, rotary_emb)  # (B*Hf, S, T, d)
        new_weights = new_momentum = None
        if mode is ForwardMode.DENOISE:
            # Read only: keys, values and rates matter only where the memory is written.
            weights = state.fast_weights if state.fast_weights is not None else self._initial_weights(b)
            out = fast_weight_apply(weights, q[:, 0]).unsqueeze(1)  # (B*Hf, 1, T, d)
        elif mode is ForwardMode.TEACHER_FORCING:
            # 1. Keys, values and rates of the clean segments only: the noisy ones never write.
            n, noisy = layout.num_chunks, layout.num_noisy
            # split, not slicing: a slice's backward zero-fills a buffer of the whole sequence.
            noisy_q, clean_q = q.split([noisy, s - noisy], dim=1)
            clean_inputs = (x.split([noisy, s - noisy], dim=1)[1] for x in (hidden_states, key, value))
            clean_rotary = rotary_emb.split([noisy, s - noisy], dim=0)[1]
            clean_k, clean_v, clean_lr, clean_momentum = self._write_inputs(*clean_inputs, clean_rotary)
            # 2. Write the memory chunk by chunk, and read it.
            out_noisy, out_clean = fast_weight_teacher_forcing(
                self._initial_weights(b),
                noisy_q.reshape(b * self.num_heads, n, -1, self.head_dim),  # (B*Hf, N, R*T, d)
                clean_q,
                clean_k,
                clean_v,
                clean_lr,
                self.rule,
                clean_momentum,
                self.token_reduction,
            )
            out = torch.cat([out_noisy.reshape(b * self.num_heads, noisy, t, -1), out_clean], dim=1)
        else:  # COMMIT: write the chunk, then read it.
            k, v, lr, momentum = self._write_inputs(hidden_states, key, value, rotary_emb)
            initial = self._initial_weights(b)
            weights = state.fast_weights if state.fast_weights is not None else initial
            norms = row_norms(initial) if self.rule.weight_norm else None
            m = momentum[:, 0] if momentum is not None else None
            new_weights, new_momentum = fast_weight_update(
                weights, k[:, 0], v[:, 0], lr[:, 0], self.rule, norms, m, state.momentum, initial=initial
            )
            out = fast_weight_apply(new_weights, q[:, 0]).unsqueeze(1)  # (B*Hf, 1, T, d)

        # 3. Per-head RMSNorm, merge heads, per-token scalar gate.
        out = self.output_norm(out)
        out = out.unflatten(0, (b, self.num_heads)).permute(0, 2, 3, 1, 4).reshape(b, s, t, c)  # (B, S, T, C)
        gate = F.silu(self.gate_proj(hidden_states))  # (B, S, T, 1)
        return gate * out, new_weights, new_momentum
