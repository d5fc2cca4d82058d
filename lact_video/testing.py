"""Opening the LaCT memory for tests and benchmarks: the one place that knows how to make the fast weights matter.

Not used by the model or the pipelines; it lives in the package so that `tests/` and `benchmarks/` (the GPU kit)
import it the same way.
"""

import torch

from .layers import FastWeightMemory
from .layers.fast_weight_memory import inverse_softplus


@torch.no_grad()
def open_memory(
    model: torch.nn.Module,
    *,
    generator: torch.Generator | None = None,
    noise: dict[str, float] | None = None,
    gate_bias: float = 1.0,
    rate: float | None = None,
    momentum_bias: float | None = None,
) -> None:
    """Make every `FastWeightMemory` inside `model` contribute to the output, in place.

    At initialisation the memory's output gate is `silu(0) = 0` and its per-token rates are the small
    base rate (1e-3), so the memory adds nothing and its state barely moves. A test of the fast-weight
    state (teacher forcing equals chunk-by-chunk inference, causality, streaming) would then pass even
    with a broken state. This opens the gate and, if asked, raises the rates, so that every chunk's
    output depends on the memory written by the chunks before it.

    Args:
        model: a LaCT model, pipeline transformer or single layer.
        generator: draws `noise`; `None` draws from torch's global generator.
        noise: `{parameter name inside FastWeightMemory: std}`. For each memory in turn, and in this
            order, `std * N(0, 1)` is added to each named parameter (the order fixes the random numbers).
            `momentum_proj.*` entries apply only to memories with momentum.
        gate_bias: bias of `gate_proj`; the gate is `silu(gate_bias + W_gate x)`, about 0.73 for 1.0.
        rate: `None` keeps the base rate (`fw_base_lr`). Otherwise every token's rates become
            `softplus(softplus^-1(rate) + W_lr x)`, exactly `rate` where `W_lr x = 0` (0.3, say: large enough
            that each update changes the fast weights visibly). It sets `lr_proj.bias` to
            `softplus^-1(rate) - lr_offset`, as the rate is `softplus(lr_proj(x) + lr_offset)` (spec Sec. 3(b));
            how the rate is parametrised is known here only.
        momentum_bias: `None` keeps it; otherwise the bias of `momentum_proj` (momentum gate
            `sigmoid(momentum_bias + W_m x)`), where the memory has momentum.
    """
    for memory in model.modules():
        if not isinstance(memory, FastWeightMemory):
            continue
        for name, std in (noise or {}).items():
            if name.startswith("momentum_proj.") and memory.momentum_proj is None:
                continue
            p = memory.get_parameter(name)
            p.add_(std * torch.randn(p.shape, generator=generator, dtype=p.dtype))
        memory.gate_proj.bias.fill_(gate_bias)
        if rate is not None:
            memory.lr_proj.bias.fill_(inverse_softplus(rate) - memory.lr_offset)
        if momentum_bias is not None and memory.momentum_proj is not None:
            memory.momentum_proj.bias.fill_(momentum_bias)
