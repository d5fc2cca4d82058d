"""The state file (pipelines/state_io.py): bit-identical round trips of the LaCT state, the VAE decoder cache and
extra tensors, decoding continued from a loaded cache, and the refusal of another VAE's cache. The refusals of
files and models: tests/test_generation_state.py."""

import pytest
import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from utils import assert_bitwise_equal

from lact_video import LaCTWanTransformer3DModel
from lact_video.ops.fast_weight import FastWeights
from lact_video.testing import open_memory
from pipelines.state_io import load_state, save_state
from pipelines.streaming import WanStreamingDecoder

C, K, H, W = 16, 2, 4, 4  # latent channels, frames per chunk, latent height/width


def lact_model(wan):
    """Memory in block 1 only (block 0 keeps fast_weights=None), with momentum, opened so the state moves."""
    torch.manual_seed(0)
    model = LaCTWanTransformer3DModel.from_wan(
        wan, chunk_frames=K, fw_head_dim=8, use_momentum=True, lact_blocks=[1]
    ).eval()
    noise = dict.fromkeys(["lr_proj.weight", "gate_proj.weight"], 0.3)
    open_memory(model, generator=torch.Generator().manual_seed(0), noise=noise, rate=0.3, momentum_bias=1.0)
    return model


@pytest.fixture(scope="module")
def wan(tiny_wan_dir):
    return WanTransformer3DModel.from_pretrained(tiny_wan_dir, subfolder="transformer").eval()


@pytest.fixture(scope="module")
def model(wan):
    return lact_model(wan)


@pytest.fixture(scope="module")
def committed(model):
    """The state after 3 COMMIT passes of random clean chunks, and the prompt they used."""
    g = torch.Generator().manual_seed(0)
    text = torch.randn(1, 7, 32, generator=g)
    state = model.init_state()
    with torch.no_grad():
        for _ in range(3):
            chunk = torch.randn(1, C, K, H, W, generator=g)
            state = model(chunk, torch.zeros(1), text, mode="commit", state=state).state
    return state, text


def flatten(state):
    """Every entry of every layer, FastWeights split, with its name: (name, tensor or None)."""
    for i, layer in enumerate(state.layers):
        for name in ("key", "value", "fast_weights", "momentum"):
            value = getattr(layer, name)
            if isinstance(value, FastWeights):
                yield from ((f"{i}.{name}.{part}", tensor) for part, tensor in value._asdict().items())
            else:
                yield f"{i}.{name}", value


def test_lact_state_round_trip_is_bitwise(model, committed, tmp_path):
    state, text = committed
    entries = dict(flatten(state))
    # Not trivial: block 1 carries fast weights and a non-zero momentum, block 0 has no memory (None entries).
    assert entries["0.fast_weights"] is None and entries["1.momentum.w0"] is not None
    assert entries["1.momentum.w0"].abs().max() > 0

    extra = {"generator": torch.Generator().manual_seed(0).get_state()}
    save_state(tmp_path / "s.safetensors", lact_state=state, decoder_cache=None, header={"next": 3}, tensors=extra)
    loaded, cache, header, tensors = load_state(tmp_path / "s.safetensors")
    assert cache is None and header == {"next": 3} and loaded.num_chunks == state.num_chunks == 3
    assert tensors.keys() == {"generator"} and torch.equal(tensors["generator"], extra["generator"])
    loaded_entries = dict(flatten(loaded))
    assert loaded_entries.keys() == entries.keys()
    for name, tensor in entries.items():
        if tensor is None:
            assert loaded_entries[name] is None, name
        else:
            assert loaded_entries[name].dtype == tensor.dtype, name
            assert_bitwise_equal(loaded_entries[name], tensor)

    # The loaded state drives the model exactly as the live one.
    noisy = torch.randn(1, C, K, H, W, generator=torch.Generator().manual_seed(1))
    t = torch.full((1,), 500.0)
    with torch.no_grad():
        live = model(noisy, t, text, mode="denoise", state=state).sample
        again = model(noisy, t, text, mode="denoise", state=loaded).sample
    assert_bitwise_equal(again, live)


def decode_frames(decoder, latents):
    with torch.no_grad():
        return decoder.decode(latents)


def test_decoder_cache_round_trip_and_continued_decoding_are_bitwise(tiny_wan_dir, model, tmp_path):
    vae = AutoencoderKLWan.from_pretrained(tiny_wan_dir, subfolder="vae").eval()
    g = torch.Generator().manual_seed(0)
    first, second, third = (torch.randn(1, C, n, H, W, generator=g) for n in (1, 2, 2))
    live = WanStreamingDecoder(vae)
    decode_frames(live, first)  # one latent frame: some slots still hold Wan's "Rep" marker, some None
    assert "Rep" in live.feat_cache and None in live.feat_cache

    path = tmp_path / "s.safetensors"
    save_state(path, lact_state=model.init_state(), decoder_cache=live.feat_cache, header={})
    cache = load_state(path).decoder_cache
    for saved, original in zip(cache, live.feat_cache, strict=True):
        if isinstance(original, torch.Tensor):
            assert_bitwise_equal(saved, original)
        else:
            assert saved == original

    resumed = WanStreamingDecoder(vae)
    resumed.load_cache(cache)
    for chunk in (second, third):
        assert_bitwise_equal(decode_frames(resumed, chunk), decode_frames(live, chunk))

    # After two more chunks: the cache holds tensors and None slots; round trip again.
    save_state(path, lact_state=model.init_state(), decoder_cache=live.feat_cache, header={})
    cache = load_state(path).decoder_cache
    assert None in cache
    for saved, original in zip(cache, live.feat_cache, strict=True):
        if isinstance(original, torch.Tensor):
            assert_bitwise_equal(saved, original)
        else:
            assert saved is original is None


def test_decoder_refuses_a_cache_of_another_vae(tiny_wan_dir):
    decoder = WanStreamingDecoder(AutoencoderKLWan.from_pretrained(tiny_wan_dir, subfolder="vae"))
    with pytest.raises(ValueError, match=r"2 slots; this VAE's decoder has \d+ causal convs"):
        decoder.load_cache([None, None])
