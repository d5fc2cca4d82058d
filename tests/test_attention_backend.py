"""The attention backend is per model: `set_attention_backend` on one LaCT model switches the kernel of
all its attentions (window or full-causal self-attention, text cross-attention), keeps its outputs,
and leaves every other model in the process on its own kernel."""

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

from lact_video import LaCTWanTransformer3DModel, interleave_teacher_forcing, interleave_timesteps

C, K, H, W, N = 16, 2, 4, 4, 3  # latent channels, frames per chunk, latent height/width, chunks


@pytest.fixture(scope="module")
def wan(tiny_wan_dir):
    return WanTransformer3DModel.from_pretrained(tiny_wan_dir, subfolder="transformer").eval()


@pytest.fixture
def kernel_calls(monkeypatch):
    """The backend name of every attention kernel call, in order: each registered backend, wrapped."""
    calls = []
    # A model that (wrongly) sets diffusers' process-wide backend must not leak it into later tests.
    monkeypatch.setattr(_AttentionBackendRegistry, "_active_backend", _AttentionBackendRegistry._active_backend)

    def recording(name, kernel):
        def record(**kwargs):
            calls.append(name)
            return kernel(**kwargs)

        return record

    for name, kernel in list(_AttentionBackendRegistry._backends.items()):
        monkeypatch.setitem(_AttentionBackendRegistry._backends, name, recording(name, kernel))
    return calls


def every_mode(model: LaCTWanTransformer3DModel) -> torch.Tensor:
    """Teacher forcing over N chunks, then chunk by chunk (denoise, commit, denoise against the state)."""
    g = torch.Generator().manual_seed(0)
    clean, noisy = torch.randn(2, 1, C, N * K, H, W, generator=g)  # (B, C, F, H, W) each
    text, t = torch.randn(1, 7, 32, generator=g), 1000 * torch.rand(1, 1, N, generator=g)
    sequence = interleave_teacher_forcing(noisy[:, None], clean, K)
    outs = [model(sequence, interleave_timesteps(t), text).sample.flatten()]
    state = model.init_state()
    for i in range(2):
        chunk = slice(i * K, (i + 1) * K)
        outs.append(model(noisy[:, :, chunk], t[:, 0, i], text, mode="denoise", state=state).sample.flatten())
        state = model(clean[:, :, chunk], torch.zeros(1), text, mode="commit", state=state).state
    return torch.cat(outs)


def wan_forward(wan: WanTransformer3DModel) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    latents, text = torch.randn(1, C, K, H, W, generator=g), torch.randn(1, 7, 32, generator=g)
    return wan(latents, torch.tensor([500]), text).sample


@pytest.mark.parametrize("attention_mode", ["window", "full_causal"])
@torch.no_grad()
def test_backend_switches_only_this_models_attentions(wan, kernel_calls, attention_mode):
    default = _AttentionBackendRegistry.get_active_backend()[0]
    switched = next(b for b in (AttentionBackendName._NATIVE_MATH, AttentionBackendName.NATIVE) if b != default)
    bystander_mode = {"window": "full_causal", "full_causal": "window"}[attention_mode]
    model = LaCTWanTransformer3DModel.from_wan(wan, chunk_frames=K, fw_head_dim=8, attention_mode=attention_mode)
    bystander = LaCTWanTransformer3DModel.from_wan(wan, chunk_frames=K, fw_head_dim=8, attention_mode=bystander_mode)
    expected = every_mode(model)

    model.set_attention_backend(switched.value)
    kernel_calls.clear()
    out = every_mode(model)
    # Every call, self- and cross-attention, in every mode: nothing left on the default kernel.
    assert set(kernel_calls) == {switched}
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)

    for other in (lambda: every_mode(bystander), lambda: wan_forward(wan)):
        kernel_calls.clear()
        other()
        assert set(kernel_calls) == {default}

    model.reset_attention_backend()
    kernel_calls.clear()
    every_mode(model)
    assert set(kernel_calls) == {default}


def test_unknown_backend_raises(wan):
    model = LaCTWanTransformer3DModel.from_wan(wan, chunk_frames=K, fw_head_dim=8)
    with pytest.raises(ValueError, match="not a diffusers attention backend"):
        model.set_attention_backend("no_such_kernel")
