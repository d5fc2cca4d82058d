"""Opening the LaCT memory for tests: the one place that knows how to make the fast weights matter."""

import torch

from lact_video.layers import FastWeightMemory


@torch.no_grad()
def open_memory(
    model: torch.nn.Module,
    *,
    generator: torch.Generator | None = None,
    noise: dict[str, float] | None = None,
    gate_bias: float = 1.0,
    lr_logit: float | None = None,
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
        lr_logit: `None` keeps the base rate. Otherwise every token's rates become
            `softplus(lr_logit + W_lr x)`: about 0.31 for -1 and 0.69 for 0, large enough that each update
            changes the fast weights visibly. How the rate is parametrised is known here only.
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
        if lr_logit is not None:
            # lr_proj.bias holds the whole pre-softplus offset today (the base rate is folded into it).
            memory.lr_proj.bias.fill_(lr_logit)
        if momentum_bias is not None and memory.momentum_proj is not None:
            memory.momentum_proj.bias.fill_(momentum_bias)
