"""The flow-matching objective of teacher-forced, chunk-by-chunk training (docs/design.md, Sec. 2.3).

Pure functions, no modules. Per sample, per noisy copy and per chunk a time `t` in (0, 1) is
drawn (uniform or logit-normal), shifted with `t' = s t / (1 + (s - 1) t)`, and the chunk is
noised as `(1 - t') x + t' e`. The model predicts the velocity `u = e - x`; the loss counts the
noisy segments only (the model returns nothing else) and is reported per chunk index.

Shapes: `B` batch, `R` noisy copies per chunk, `N` chunks, `k` latent frames per chunk,
`C` latent channels, `F = N*k` latent frames, `H`/`W` latent height/width.
"""

from __future__ import annotations

import math
from enum import Enum

import numpy as np
import torch

from ..sequence import interleave_teacher_forcing, interleave_timesteps

# The token-following shift of the authors' Wan recipe: log(s) is linear in the tokens per chunk
# through these two (tokens, shift) points, and extrapolated outside them.
SHIFT_ANCHORS = ((32760, 3.0), (73710, 5.0))


class TimestepSampling(str, Enum):
    uniform = "uniform"  # t ~ U(0, 1)
    logit_normal = "logit_normal"  # t = sigmoid(m + s * n), n ~ N(0, 1)


class ShiftRule(str, Enum):
    fixed = "fixed"  # one shift for every clip size
    token_following = "token_following"  # log(shift) linear in the tokens per chunk


class LossWeighting(str, Enum):
    none = "none"
    logit_normal = "logit_normal"  # the logit-normal density at the unshifted t
    # The authors': 1000 x the logit-normal mass of the 1/1000-wide bin of t (`logit_normal_bin_mass`).
    logit_normal_bin_mass = "logit_normal_bin_mass"


# Their timestep bins: `num_train_timestep: 1000` (minVid's flow-matching model).
TIMESTEP_BINS = 1000


def token_following_shift(tokens_per_chunk: int, anchors=SHIFT_ANCHORS) -> float:
    """The shift `s` for `tokens_per_chunk` tokens: log-linear through `anchors`, extrapolated.

    With the authors' anchors, 4680 tokens (3 latent frames at 480x832) give s = 2.11. The caller passes
    the real tokens of a chunk at the training resolution (trainer.py, `chunk_tokens`); the authors'
    `adjust_timestep_shift` always passes `ar_window_size * 1560`, the 480x832 count, so the two agree
    there and differ at any other resolution (docs/design.md, Sec. 2.3).
    """
    (n0, s0), (n1, s1) = anchors
    slope = (math.log(s1) - math.log(s0)) / (n1 - n0)
    return math.exp(math.log(s0) + slope * (tokens_per_chunk - n0))


def tokens_per_chunk(chunk_frames: int, latent_height: int, latent_width: int, patch_size=(1, 2, 2)) -> int:
    """T = k * (h / p_h) * (w / p_w): the transformer tokens of one chunk."""
    p_t, p_h, p_w = patch_size
    return chunk_frames // p_t * (latent_height // p_h) * (latent_width // p_w)


def shift_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    """`t' = s t / (1 + (s - 1) t)`: s > 1 moves noise levels towards pure noise."""
    return shift * t / (1 + (shift - 1) * t)


def sample_timesteps(
    shape: tuple[int, ...],
    sampling: TimestepSampling,
    generator: torch.Generator | None = None,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
) -> torch.Tensor:
    """Unshifted times in (0, 1), float32 of `shape`, drawn on the CPU from `generator`."""
    sampling = TimestepSampling(sampling)
    if sampling is TimestepSampling.uniform:
        return torch.rand(shape, generator=generator)
    return torch.sigmoid(logit_mean + logit_std * torch.randn(shape, generator=generator))


def logit_normal_density(t: torch.Tensor, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """Density of the logit-normal distribution at `t` in (0, 1); integrates to 1 over (0, 1)."""
    t = t.clamp(1e-6, 1 - 1e-6)
    logit = torch.log(t / (1 - t))
    return torch.exp(-0.5 * ((logit - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi) * t * (1 - t))


def logit_normal_bin_mass(
    t: torch.Tensor, mean: float = 0.0, std: float = 1.0, num_bins: int = TIMESTEP_BINS
) -> torch.Tensor:
    """Logit-normal probability mass of the bin `[floor(n t) / n, (floor(n t) + 1) / n]` that holds `t`.

    The authors' per-chunk loss weight is `n` times this (`num_bins` n = 1000; minVid,
    `utils/logit_normal_weighting.py`, `logit_normal_integral`, at the unshifted t): constant within a bin,
    and unlike the density it stays finite and bounded by 1 at the ends. They clamp the bin edges to
    [1e-7, 1 - 1e-7]; here the edges 0 and 1 are exact (the clamped mass, below 1e-11, is dropped there).

    Args:
        t: unshifted times in [0, 1], any shape.

    Returns:
        The masses, float32 of `t`'s shape; they sum to 1 over the `num_bins` bins.
    """
    low = (t.double() * num_bins).floor().clamp(0, num_bins - 1) / num_bins
    cdf = [torch.special.ndtr((torch.logit(edge) - mean) / std) for edge in (low, low + 1 / num_bins)]
    return (cdf[1] - cdf[0]).float()


def chunk_loss_weights(
    t: torch.Tensor, weighting: LossWeighting, mean: float = 0.0, std: float = 1.0
) -> torch.Tensor | None:
    """Per-chunk loss weights at the unshifted times `t` (B, R, N), or None for `none`. Both logit-normal
    forms average about 1 over uniform t: the density, or `TIMESTEP_BINS` x the bin mass (the authors')."""
    weighting = LossWeighting(weighting)
    if weighting is LossWeighting.logit_normal:
        return logit_normal_density(t, mean, std)
    if weighting is LossWeighting.logit_normal_bin_mass:
        return TIMESTEP_BINS * logit_normal_bin_mass(t, mean, std)
    return None


def per_frame(values: torch.Tensor, chunk_frames: int) -> torch.Tensor:
    """Per-chunk values (B, R, N) to a broadcastable (B, R, 1, F, 1, 1), one per latent frame."""
    frames = values.repeat_interleave(chunk_frames, dim=-1)  # (B, R, F)
    return frames[:, :, None, :, None, None]


def add_noise(latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, chunk_frames: int) -> torch.Tensor:
    """Noisy copies `(1 - t) x + t e` of every chunk.

    Args:
        latents: (B, C, F, H, W) clean latents `x`.
        noise: (B, R, C, F, H, W) Gaussian noise `e`, one draw per copy.
        t: (B, R, N) shifted times, one per sample, copy and chunk.

    Returns:
        (B, R, C, F, H, W).
    """
    t = per_frame(t, chunk_frames).to(latents.dtype)
    return (1 - t) * latents.unsqueeze(1) + t * noise


def velocity_target(latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """`u = e - x`: (B, C, F, H, W) and (B, R, C, F, H, W) -> (B, R, C, F, H, W)."""
    return noise - latents.unsqueeze(1)


def chunk_mse(pred: torch.Tensor, target: torch.Tensor, chunk_frames: int) -> torch.Tensor:
    """Mean squared error per sample, copy and chunk, in float32: (B, R, C, F, H, W) -> (B, R, N)."""
    b, r, c, f, h, w = pred.shape
    err = (pred.float() - target.float()).square()
    err = err.view(b, r, c, f // chunk_frames, chunk_frames, h, w)  # (B, R, C, N, k, H, W)
    return err.mean(dim=(2, 4, 5, 6))


def reduce_chunk_losses(mse: torch.Tensor, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The training loss and the per-chunk report.

    Args:
        mse: (B, R, N) per-chunk mean squared errors.
        weights: (B, R, N) optional loss weights.

    Returns:
        loss: scalar, the mean of `weights * mse` over samples, copies and chunks (what is optimised).
        chunk_losses: (N,), the unweighted mean squared error of each chunk index, detached.
    """
    loss = (mse if weights is None else mse * weights).mean()
    return loss, mse.detach().mean(dim=(0, 1))


def sample_seed(*key: int) -> int:
    """A 63-bit generator seed from non-negative integers, e.g. (run seed, sample position)."""
    return int(np.random.SeedSequence(list(key)).generate_state(1, dtype=np.uint64)[0] >> 1)


def draw_position_offset(position: int, seed: int, offset_max: int) -> int:
    """A micro-batch's rotary position offset, in chunks, uniform in `0 .. offset_max` (`train.position_offset_max`,
    docs/design.md Sec. 1.7): drawn from `(seed, position)`, the batch's first sample position, so a resumed run
    draws the same offsets. 0 without drawing when `offset_max` is 0."""
    if offset_max == 0:
        return 0
    generator = torch.Generator().manual_seed(sample_seed(seed, position, 1))  # (.., 1): not the sample's stream
    return int(torch.randint(0, offset_max + 1, (), generator=generator))


def draw_sample_randomness(
    positions: list[int],
    *,
    seed: int,
    latent_shape: tuple[int, int, int, int],
    num_repeat: int,
    chunk_frames: int,
    sampling: TimestepSampling,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    caption_dropout: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Times, noise and caption drops for a batch, each sample from its own generator.

    Every sample's draws depend only on `(seed, position)`, its place in the run's stream of
    samples. A batch of 2 on one process and batches of 1 on two processes, a run and its
    resumption, a cached and an on-the-fly run: all see the same noise for the same sample.

    Args:
        positions: the B global sample positions.
        latent_shape: (C, F, H, W).

    Returns:
        t: (B, R, N) unshifted times; noise: (B, R, C, F, H, W); drop_caption: (B,) bool. On the CPU.
    """
    c, f, h, w = latent_shape
    ts, noises, drops = [], [], []
    for position in positions:
        generator = torch.Generator().manual_seed(sample_seed(seed, position))
        ts.append(sample_timesteps((num_repeat, f // chunk_frames), sampling, generator, logit_mean, logit_std))
        noises.append(torch.randn((num_repeat, c, f, h, w), generator=generator))
        drops.append(torch.rand((), generator=generator) < caption_dropout)
    return torch.stack(ts), torch.stack(noises), torch.stack(drops)


def teacher_forcing_loss(
    model,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    chunk_frames: int,
    weights: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
    position_offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One teacher-forced flow-matching loss over a batch of clips.

    Args:
        model: a `LaCTWanTransformer3DModel` (or its DeepSpeed/DDP wrapper).
        latents: (B, C, F, H, W) clean latents.
        prompt_embeds: (B, L, D).
        t: (B, R, N) shifted times in [0, 1]; the model sees `1000 t`.
        noise: (B, R, C, F, H, W).
        weights: (B, R, N) optional loss weights.
        dtype: the dtype of the model's inputs (bf16 under DeepSpeed bf16); the loss is float32.
        position_offset: the rotary position, in chunks, of the clips' first chunk (`draw_position_offset`).

    Returns:
        `reduce_chunk_losses`: the scalar loss and the (N,) per-chunk mean squared errors.
    """
    dtype = dtype or latents.dtype
    noisy = add_noise(latents, noise, t, chunk_frames)  # (B, R, C, F, H, W)
    sequence = interleave_teacher_forcing(noisy, latents, chunk_frames)  # (B, C, S*k, H, W)
    timesteps = interleave_timesteps(t * 1000)  # (B, S), 0 on clean segments
    pred = model(sequence.to(dtype), timesteps, prompt_embeds.to(dtype), position_offset=position_offset).sample
    mse = chunk_mse(pred, velocity_target(latents, noise), chunk_frames)  # (B, R, N)
    return reduce_chunk_losses(mse, weights)
