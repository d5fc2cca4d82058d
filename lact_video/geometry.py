"""Wan2.1 clip geometry: video frames and pixels <-> latent frames and latents, and LaCT's whole chunks.

Wan's VAE (diffusers' `AutoencoderKLWan`, models/autoencoders/autoencoder_kl_wan.py) is causal in time:
it encodes the first video frame alone and every later group of `t = 4` frames into one latent frame, so
`num_frames = 4F - 3` video frames give `F` latent frames. It compresses space `s = 8` times, and the
transformer's (1, 2, 2) patch embedding halves it again, so height and width are multiples of 16. LaCT
cuts the `F` latent frames into chunks of `k = chunk_frames`, so `F` must be a multiple of `k`
(docs/design.md, Sec. 1.1 "Names and shapes").

The factors default to Wan2.1's; where a VAE is at hand, `vae_scale_factors` reads them from its config,
as diffusers' `WanPipeline` (pipelines/wan/pipeline_wan.py) does. The transformer works in normalised
latents: `normalize_latents` and `denormalize_latents` apply the VAE's per-channel `latents_mean` and
`latents_std` as `WanPipeline` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

VAE_TEMPORAL_FACTOR = 4  # Wan2.1 VAE: video frames per latent frame after the first (`scale_factor_temporal`)
VAE_SPATIAL_FACTOR = 8  # Wan2.1 VAE: pixels per latent height/width (`scale_factor_spatial`)
# The VAE's 8x spatial compression times the transformer's 2x2 patches.
SPATIAL_MULTIPLE = 16
# Latent frames per autoregressive chunk (`k`) unless a config says otherwise: the paper's choice.
DEFAULT_CHUNK_FRAMES = 3


def vae_scale_factors(vae_config=None) -> tuple[int, int]:
    """(temporal, spatial) compression of a Wan VAE: from its config, else Wan2.1's (4, 8).

    `vae_config` is an `AutoencoderKLWan.config` (or any object with `scale_factor_temporal` and
    `scale_factor_spatial`), or None, as `WanPipeline.__init__` falls back when it has no VAE.
    """
    if vae_config is None:
        return VAE_TEMPORAL_FACTOR, VAE_SPATIAL_FACTOR
    return vae_config.scale_factor_temporal, vae_config.scale_factor_spatial


def latent_num_frames(num_frames: int, temporal_factor: int = VAE_TEMPORAL_FACTOR) -> int:
    """Latent frames F that Wan's VAE makes from `num_frames` (= 4F - 3) video frames.

    As `WanPipeline.prepare_latents`: `(num_frames - 1) // t + 1`.
    """
    return (num_frames - 1) // temporal_factor + 1


def video_num_frames(latent_frames: int, temporal_factor: int = VAE_TEMPORAL_FACTOR) -> int:
    """Video frames (4F - 3) that Wan's VAE decodes from `latent_frames` F; the inverse of `latent_num_frames`."""
    return (latent_frames - 1) * temporal_factor + 1


def nearest_valid_num_frames(num_frames: int, chunk_frames: int) -> list[int]:
    """The valid frame counts just below and just above `num_frames` (both when they exist).

    Valid counts are `4 m k - 3` for m >= 1: 4n+1 frames whose latent count is a multiple of k.
    """
    step = VAE_TEMPORAL_FACTOR * chunk_frames
    below = (num_frames + VAE_TEMPORAL_FACTOR - 1) // step * step - (VAE_TEMPORAL_FACTOR - 1)
    if below == num_frames:
        return [num_frames]
    return [n for n in (below, below + step) if n >= 1]


def check_video_geometry(num_frames: int, chunk_frames: int, height: int, width: int) -> None:
    """Raise ValueError, with the fix, if Wan's VAE and LaCT's chunks cannot use this clip geometry.

    `num_frames` video frames must be 4F - 3 with F a multiple of `chunk_frames`; `height` and `width`
    (pixels) positive multiples of 16. Each error names the nearest valid values.
    """
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    suggestion = " or ".join(str(n) for n in nearest_valid_num_frames(num_frames, chunk_frames))
    if num_frames < 1 or (num_frames - 1) % VAE_TEMPORAL_FACTOR:
        raise ValueError(
            f"num_frames={num_frames} is not of the form 4n+1: Wan's VAE encodes the first frame "
            f"alone, then 4 frames per latent frame. With chunk_frames={chunk_frames}, use {suggestion}."
        )
    latent_frames = latent_num_frames(num_frames)
    if latent_frames % chunk_frames:
        raise ValueError(
            f"num_frames={num_frames} gives {latent_frames} latent frames, which do not split into "
            f"chunks of chunk_frames={chunk_frames}. Use num_frames={suggestion} (4F-3 with F a "
            f"multiple of {chunk_frames}), or change chunk_frames."
        )
    for name, size in (("height", height), ("width", width)):
        if size < SPATIAL_MULTIPLE or size % SPATIAL_MULTIPLE:
            lower = max(size // SPATIAL_MULTIPLE * SPATIAL_MULTIPLE, SPATIAL_MULTIPLE)
            upper = (size // SPATIAL_MULTIPLE + 1) * SPATIAL_MULTIPLE
            fix = " or ".join(str(n) for n in sorted({lower, upper}))
            raise ValueError(
                f"{name}={size} is not a positive multiple of {SPATIAL_MULTIPLE} (the VAE downsamples 8x, "
                f"then the transformer patches 2x2): use {fix}."
            )


@dataclass(frozen=True)
class RoundedNumFrames:
    """A requested frame count rounded to whole chunks, and which of the two roundings changed it."""

    num_frames: int  # 4F - 3 video frames, F a positive multiple of chunk_frames
    latent_frames: int  # F
    to_4n_plus_1: bool  # the request was not 4n + 1 (WanPipeline's rounding applied)
    to_whole_chunks: bool  # the 4n + 1 count did not fill whole chunks (rounded down, at least one chunk)


def round_num_frames(
    num_frames: int, chunk_frames: int, temporal_factor: int = VAE_TEMPORAL_FACTOR
) -> RoundedNumFrames:
    """Round a requested `num_frames` down to whole chunks of `chunk_frames` latent frames.

    First `WanPipeline.__call__`'s rule: a count that is not `t n + 1` becomes `num_frames // t * t + 1`,
    at least 1. Then the latent frames are rounded down to a multiple of `chunk_frames`, at least one chunk.
    Pure: the caller warns, using the returned flags.
    """
    t, k = temporal_factor, chunk_frames
    to_4n_plus_1 = num_frames % t != 1
    if to_4n_plus_1:
        num_frames = num_frames // t * t + 1
    num_frames = max(num_frames, 1)
    latent_frames = latent_num_frames(num_frames, t)
    to_whole_chunks = latent_frames % k != 0
    if to_whole_chunks:
        latent_frames = max(latent_frames // k, 1) * k
        num_frames = video_num_frames(latent_frames, t)
    return RoundedNumFrames(num_frames, latent_frames, to_4n_plus_1, to_whole_chunks)


def check_chunking(num_latent_frames: int, chunk_frames: int) -> int:
    """Number of chunks N in a clip of `num_latent_frames` F; a clear error when F is not a multiple of k."""
    if num_latent_frames % chunk_frames:
        ok = [n * chunk_frames for n in (num_latent_frames // chunk_frames, num_latent_frames // chunk_frames + 1)]
        ok = [f for f in ok if f > 0]
        raise ValueError(
            f"{num_latent_frames} latent frames do not split into chunks of chunk_frames={chunk_frames}. "
            f"Use {' or '.join(str(f) for f in ok)} latent frames (video frames = 4 * latent - 3: "
            f"{' or '.join(str(video_num_frames(f)) for f in ok)})."
        )
    return num_latent_frames // chunk_frames


def chunk_count(num_chunks: int) -> str:
    """A number of chunks as messages write it: "1 chunk", "2 chunks"."""
    return f"{num_chunks} chunk" if num_chunks == 1 else f"{num_chunks} chunks"


def first_frame_of_chunk(chunk: int, chunk_frames: int, temporal_factor: int = VAE_TEMPORAL_FACTOR) -> int:
    """The first video frame of chunk `chunk` (absolute index, counted from the video's first frame).

    Chunk 0 holds the frames [0, t k - (t - 1)) (the VAE encodes the first frame alone), every later chunk
    the next `t k` frames, so chunk c >= 1 starts at `t k c - (t - 1)`: the frames decoded from the c chunks
    before it (`video_num_frames(c k)`). docs/design.md, Sec. 3.7.

    Raises:
        ValueError: when `chunk` is negative.
    """
    if chunk < 0:
        raise ValueError(f"chunk={chunk}: chunk indices count from 0.")
    return max(temporal_factor * chunk_frames * chunk - (temporal_factor - 1), 0)


def chunk_of_frame(frame: int, chunk_frames: int, temporal_factor: int = VAE_TEMPORAL_FACTOR) -> int:
    """The chunk (absolute index) that holds video frame `frame`; the inverse of `first_frame_of_chunk`.

    Raises:
        ValueError: when `frame` is negative.
    """
    if frame < 0:
        raise ValueError(f"frame={frame}: video frames count from 0.")
    return (frame + temporal_factor - 1) // (temporal_factor * chunk_frames)


def latent_size(height: int, width: int, spatial_factor: int = VAE_SPATIAL_FACTOR) -> tuple[int, int]:
    """Latent (h, w) of a (height, width) pixel frame, as `WanPipeline.prepare_latents`: pixels // 8."""
    return int(height) // spatial_factor, int(width) // spatial_factor


def _latent_stats(vae_config, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE's per-channel latents_mean and 1/latents_std, shaped (1, C, 1, 1, 1) to broadcast."""
    shape = (1, vae_config.z_dim, 1, 1, 1)
    latents_mean = torch.tensor(vae_config.latents_mean).view(shape).to(like.device, like.dtype)
    # As in WanPipeline, "latents_std" below holds the reciprocal of the config's std.
    latents_std = 1.0 / torch.tensor(vae_config.latents_std).view(shape).to(like.device, like.dtype)
    return latents_mean, latents_std


def normalize_latents(latents: torch.Tensor, vae_config) -> torch.Tensor:
    """Raw VAE latents (B, C, F, h, w) to the unit-scale latents the transformer works in.

    `(latents - latents_mean) / latents_std` per channel, computed in `latents`' dtype on its device, as
    `WanImageToVideoPipeline.prepare_latents` (diffusers pipelines/wan/pipeline_wan_i2v.py) does after encoding.
    """
    latents_mean, latents_std = _latent_stats(vae_config, latents)
    return (latents - latents_mean) * latents_std


def denormalize_latents(latents: torch.Tensor, vae_config) -> torch.Tensor:
    """The inverse of `normalize_latents`, exactly as `WanPipeline.__call__` does before decoding.

    (B, C, F, h, w) in, the same shape out, in `latents`' dtype on its device.
    """
    latents_mean, latents_std = _latent_stats(vae_config, latents)
    return latents / latents_std + latents_mean
