"""Wan2.1 clip geometry (`lact_video.geometry`) against diffusers' `WanPipeline` and `AutoencoderKLWan`."""

import inspect

import pytest
import torch
from diffusers import AutoencoderKLWan, WanPipeline

from lact_video.geometry import (
    VAE_SPATIAL_FACTOR,
    VAE_TEMPORAL_FACTOR,
    check_chunking,
    check_video_geometry,
    chunk_of_frame,
    denormalize_latents,
    first_frame_of_chunk,
    latent_num_frames,
    latent_size,
    normalize_latents,
    round_num_frames,
    vae_scale_factors,
    video_num_frames,
)
from lact_video.tiny import VAE_CONFIG, build_tiny_pipeline

SIZE = 16  # pixels: one 2x2 patch of 8x latents


def wan_pipeline_num_frames(num_frames: int, t: int = VAE_TEMPORAL_FACTOR) -> int:
    """WanPipeline.__call__'s rounding (diffusers pipelines/wan/pipeline_wan.py), written out."""
    if num_frames % t != 1:
        num_frames = num_frames // t * t + 1
    return max(num_frames, 1)


@pytest.fixture(scope="module")
def wan():
    """The tiny WanPipeline with a VAE whose latents_mean/latents_std are not the identity."""
    pipe = build_tiny_pipeline(seed=0)
    generator = torch.Generator().manual_seed(0)
    stats = dict(
        latents_mean=torch.randn(VAE_CONFIG["z_dim"], generator=generator).tolist(),
        latents_std=(torch.rand(VAE_CONFIG["z_dim"], generator=generator) + 0.5).tolist(),
    )
    torch.manual_seed(0)
    vae = AutoencoderKLWan(**{**VAE_CONFIG, **stats}).eval()
    pipe = WanPipeline(**{**pipe.components, "vae": vae})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_wan(pipe, num_frames: int, **kwargs):
    return pipe(
        prompt="a cat",
        height=SIZE,
        width=SIZE,
        num_frames=num_frames,
        num_inference_steps=1,
        guidance_scale=1.0,
        max_sequence_length=16,
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    ).frames


def test_default_factors_are_the_wan_vaes():
    defaults = inspect.signature(AutoencoderKLWan.__init__).parameters
    assert (VAE_TEMPORAL_FACTOR, VAE_SPATIAL_FACTOR) == (
        defaults["scale_factor_temporal"].default,
        defaults["scale_factor_spatial"].default,
    )
    assert vae_scale_factors() == (4, 8)
    vae_config = AutoencoderKLWan(**{**VAE_CONFIG, "scale_factor_temporal": 2, "scale_factor_spatial": 16}).config
    assert vae_scale_factors(vae_config) == (2, 16)


@pytest.mark.parametrize("t", [1, 2, 4])
def test_4f_minus_3_round_trip(t):
    for latent_frames in range(1, 64):
        assert latent_num_frames(video_num_frames(latent_frames, t), t) == latent_frames


def test_4f_minus_3_values():
    assert [video_num_frames(f) for f in (1, 3, 21)] == [1, 9, 81]
    # Between two valid counts it rounds down, as WanPipeline.prepare_latents does.
    assert [latent_num_frames(n) for n in range(1, 10)] == [1, 1, 1, 1, 2, 2, 2, 2, 3]


def test_latent_size():
    assert latent_size(480, 832) == (60, 104)
    assert latent_size(SIZE, SIZE, spatial_factor=16) == (1, 1)


@pytest.mark.parametrize("chunk_frames", [1, 2, 3, 5])
def test_rounding_is_wan_pipelines_then_whole_chunks(chunk_frames):
    k = chunk_frames
    for requested in range(-4, 130):
        wan_frames = wan_pipeline_num_frames(requested)
        wan_latent = latent_num_frames(wan_frames)
        rounded = round_num_frames(requested, k)
        assert rounded.to_4n_plus_1 == (requested % 4 != 1)
        assert rounded.to_whole_chunks == (wan_latent % k != 0)
        # Rounded down to whole chunks, at least one; nothing changes when the chunks are whole.
        assert rounded.latent_frames == max(wan_latent // k, 1) * k
        assert rounded.num_frames == video_num_frames(rounded.latent_frames)
        if not rounded.to_whole_chunks:
            assert rounded.num_frames == wan_frames
        if requested >= 1 and not rounded.to_4n_plus_1 and not rounded.to_whole_chunks:
            assert rounded.num_frames == requested


def test_rounding_matches_wan_pipeline_run(wan):
    for requested in (0, 2, 8, 10, 13):
        latents = run_wan(wan, requested, output_type="latent")
        assert latents.shape[2] == round_num_frames(requested, 1).latent_frames, requested


def test_chunk_count_and_its_error():
    assert check_chunking(21, 3) == 7
    with pytest.raises(ValueError, match=r"7 latent frames .*chunk_frames=3\. Use 6 or 9 latent frames .*21 or 33\)"):
        check_chunking(7, 3)
    with pytest.raises(ValueError, match=r"Use 3 latent frames \(video frames = 4 \* latent - 3: 9\)"):
        check_chunking(2, 3)


@pytest.mark.parametrize(
    "height, width, message",
    [
        (100, 832, r"height=100 is not a positive multiple of 16 .*use 96 or 112\."),
        (480, 8, r"width=8 is not a positive multiple of 16 .*use 16\."),
        (0, 832, r"height=0 .*use 16\."),
    ],
    ids=["between", "below-16", "zero"],
)
def test_16_pixel_error_names_the_fix(height, width, message):
    with pytest.raises(ValueError, match=message):
        check_video_geometry(81, 3, height, width)


def test_normalisation_round_trip_is_identity():
    generator = torch.Generator().manual_seed(0)
    vae_config = AutoencoderKLWan(
        **{
            **VAE_CONFIG,
            "latents_mean": (torch.randn(16, generator=generator) * 2).tolist(),
            "latents_std": (torch.rand(16, generator=generator) * 3 + 0.1).tolist(),
        }
    ).config
    raw = torch.randn(2, 16, 3, 4, 4, generator=generator) * 5
    normalized = normalize_latents(raw, vae_config)
    assert normalized.shape == raw.shape and normalized.dtype == raw.dtype
    torch.testing.assert_close(denormalize_latents(normalized, vae_config), raw)  # fp32 tolerances


def test_denormalize_is_what_wan_pipeline_decodes(wan, monkeypatch):
    final, decoded = {}, {}

    def keep_latents(pipe, step, timestep, callback_kwargs):
        final["latents"] = callback_kwargs["latents"].clone()
        return {}

    decode = wan.vae.decode

    def spy(latents, *args, **kwargs):
        decoded["latents"] = latents.clone()
        return decode(latents, *args, **kwargs)

    monkeypatch.setattr(wan.vae, "decode", spy)
    run_wan(wan, 5, output_type="pt", callback_on_step_end=keep_latents)
    assert not torch.allclose(final["latents"], decoded["latents"])  # the VAE's statistics are not the identity
    torch.testing.assert_close(
        denormalize_latents(final["latents"], wan.vae.config), decoded["latents"], rtol=0, atol=0
    )


@pytest.mark.parametrize("t", [4, 2, 1], ids=lambda t: f"t{t}")
@pytest.mark.parametrize("k", [1, 2, 3], ids=lambda k: f"k{k}")
def test_chunk_of_frame_follows_the_frames_each_chunk_decodes_to(k, t):
    """Frame -> chunk by counting: chunk 0 decodes to `video_num_frames(k)` frames, every later chunk to the
    frames its k latent frames add (t k), as `LaCTVideoPipeline.stream` yields them."""
    owner = []
    for chunk in range(6):
        frames = video_num_frames((chunk + 1) * k, t) - len(owner)
        owner += [chunk] * frames
    assert owner.index(1) == t * k - (t - 1)  # Wan's t = 4: chunk 0 holds [0, 4k - 3), each later chunk 4k frames
    assert [chunk_of_frame(f, k, t) for f in range(len(owner))] == owner
    assert [first_frame_of_chunk(c, k, t) for c in range(6)] == [owner.index(c) for c in range(6)]


def test_chunk_of_frame_refuses_negative_indices():
    with pytest.raises(ValueError, match="frame=-1"):
        chunk_of_frame(-1, 3)
    with pytest.raises(ValueError, match="chunk=-2"):
        first_frame_of_chunk(-2, 3)
