"""The fast-weight drift measure (lact_video.evaluation.state_drift; docs/design.md Sec. 1.7): it reads the state that
the memory's updates move, to first order in the rate, and stays at zero when the updates are zero."""

import numpy as np
import pytest
import torch
from test_model import C, H, K, W, lact_model, wan  # noqa: F401 (fixture)

from lact_video import LaCTWanTransformer3DModel
from lact_video.evaluation import fast_weight_drift


def clips(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents, text = torch.randn(2, C, n * K, H, W, generator=g), torch.randn(2, 1, 7, 32, generator=g)
    return lambda i: (latents[i : i + 1], text[i]), 2


def fresh(wan, base_lr):  # noqa: F811
    """A model as `from_wan` makes it, every token's rate exactly `base_lr` (lr_proj = 0), without weight norm
    (whose epsilon alone moves the rows by ~1e-5)."""
    torch.manual_seed(0)
    config = {"chunk_frames": K, "fw_head_dim": 8, "fw_base_lr": base_lr, "weight_norm": False}
    return LaCTWanTransformer3DModel.from_wan(wan, **config).eval()


def test_drift_is_linear_in_the_rate_after_one_chunk(wan):  # noqa: F811
    """The first update is `W_init + eta * g(W_init)`: its distance from `W_init` is exactly proportional to eta.
    Later chunks move the state further."""
    small, large = (fast_weight_drift(fresh(wan, lr), *clips()) for lr in (1e-3, 1e-2))
    torch.testing.assert_close(large[0] / small[0], np.full(3, 10.0), rtol=1e-4, atol=0)
    assert (small > 0).all() and (small[1:] > small[:1]).all()


def test_no_drift_when_the_keys_are_zero(wan):  # noqa: F811
    """Zero keys (scale and offset 0) make every gradient zero, so the state stays exactly the initial one."""
    model = lact_model(wan, weight_norm=False)  # its epsilon alone would move the rows by ~1e-5
    for block in model.blocks:
        torch.nn.init.zeros_(block.attn1.memory.qk_scale)
        torch.nn.init.zeros_(block.attn1.memory.qk_offset)
    assert (fast_weight_drift(model, *clips()) == 0).all()
    assert (fast_weight_drift(lact_model(wan), *clips()) > 0).all()


def test_a_model_without_memory_is_an_error(wan):  # noqa: F811
    with pytest.raises(ValueError, match="no fast-weight memory"):
        fast_weight_drift(lact_model(wan, lact_blocks=[]), *clips())
