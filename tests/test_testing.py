"""`open_memory`, the tests' one way to open the LaCT memory: it must give the rates and gates it names."""

import pytest
import torch
import torch.nn.functional as F

from lact_video.layers import FastWeightMemory
from lact_video.ops.fast_weight import UpdateRule
from lact_video.testing import open_memory


@pytest.mark.parametrize("base_lr", [1e-3, 0.05])
@pytest.mark.parametrize("rate", [None, 0.3, 0.7])
def test_open_memory_gives_the_rate_and_gate_it_names(base_lr, rate):
    torch.manual_seed(0)
    memory = FastWeightMemory(16, 8, 8, 2, UpdateRule(momentum=True), base_lr)
    open_memory(memory, rate=rate, gate_bias=1.0, momentum_bias=2.0)
    x = torch.randn(2, 5, 16)
    expected = torch.full((2, 5, 3 * memory.num_heads), base_lr if rate is None else rate)
    torch.testing.assert_close(memory.rates(x), expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(F.silu(memory.gate_proj(x)), torch.full((2, 5, 1), F.silu(torch.tensor(1.0)).item()))
    assert (memory.momentum_proj.bias == 2.0).all()


def test_open_memory_noise_on_lr_proj_spreads_the_rates_around_the_named_rate():
    torch.manual_seed(0)
    memory = FastWeightMemory(16, 8, 8, 2, UpdateRule())
    open_memory(memory, generator=torch.Generator().manual_seed(0), noise={"lr_proj.weight": 0.1}, rate=0.7)
    rates = memory.rates(torch.randn(64, 16))
    assert rates.std() > 0.05
    assert 0.5 < rates.median() < 0.9  # about the named rate, far from the base rate 1e-3
