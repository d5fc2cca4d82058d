"""Real-size models with random weights, built on the device directly (no downloads, no host copy).

The base is diffusers' `WanTransformer3DModel` built under `torch.device(device)` (its initialisers run on
the GPU, seconds for 14B) in the dtype asked for, and patched with `LaCTWanTransformer3DModel.from_wan`,
the public path, which shares the base's tensors. Modules that diffusers keeps in float32 when it loads a
checkpoint in bf16 (`_keep_in_fp32_modules`) are put back in float32, as `from_pretrained` leaves them.
"""

from __future__ import annotations

import contextlib
import math

import torch

from lact_video import LaCTWanTransformer3DModel
from lact_video.layers import FastWeightMemory
from lact_video.testing import open_memory


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def keep_fp32_modules(model: torch.nn.Module) -> torch.nn.Module:
    """Put the parameters named by `model._keep_in_fp32_modules` back in float32 (diffusers' loading rule)."""
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, param in model.named_parameters():
        if param.is_floating_point() and any(k in name.split(".") for k in keep):
            param.data = param.data.float()
    return model


def to_dtype(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """`model` cast to `dtype` in place, except `_keep_in_fp32_modules` (diffusers' `.to` would warn and cast all)."""
    return keep_fp32_modules(torch.nn.Module.to(model, dtype))


def build_wan(config: dict, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """A random `WanTransformer3DModel` of `config`, built on `device` in `dtype`, in eval mode."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    with torch.device(device), default_dtype(dtype):
        wan = WanTransformer3DModel(**config)
    return keep_fp32_modules(wan).eval()


def build_lact(config: dict, device, dtype, seed: int = 0, **lact_config) -> LaCTWanTransformer3DModel:
    """A random LaCT model: `build_wan`, then `from_wan` with the LaCT keys (the base's tensors are shared)."""
    wan = build_wan(config, device, dtype, seed)
    return lact_from_wan(wan, **lact_config)


def lact_from_wan(wan, **lact_config) -> LaCTWanTransformer3DModel:
    return keep_fp32_modules(LaCTWanTransformer3DModel.from_wan(wan, **lact_config))


def open_memory_like_tests(model: torch.nn.Module, seed: int = 0) -> None:
    """Make the fast-weight memory matter, as the parity tests do (lact_video/testing.py, the one place that
    knows the rate parametrisation): at initialisation its gate is zero and its rates tiny, so a comparison of
    teacher forcing with chunk-by-chunk inference would not exercise it. Noise on the weights that act on the
    hidden state is scaled by 1/sqrt(dim), so that real widths get rates and gates of the tests' size."""
    dim = model.config.num_attention_heads * model.config.attention_head_dim
    width = 1.5 / math.sqrt(dim)  # 0.3 at the tiny test width (24)
    noise = {"lr_proj.weight": width, "gate_proj.weight": width, "qk_scale": 0.3, "qk_offset": 0.3}
    # open_memory draws its noise on the CPU: open the memories there, then move them back.
    memories = [m for m in model.modules() if isinstance(m, FastWeightMemory)]
    device = next(model.parameters()).device
    for memory in memories:
        memory.to("cpu")
    rate = math.log1p(math.exp(-1.0))  # softplus(-1) = 0.31 per token, as the parity tests use
    open_memory(model, generator=torch.Generator().manual_seed(seed), noise=noise, rate=rate)
    for memory in memories:
        memory.to(device)
