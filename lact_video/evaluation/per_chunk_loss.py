"""Teacher-forcing validation loss per chunk index, at fixed noise levels.

Every chunk of every clip is noised to the same level `t` (no shift: `t` is the noise level the
model sees), for each level of a fixed grid. The noise is drawn per clip from a generator seeded
by `(seed, clip index)`, so two checkpoints evaluated on the same data see identical inputs, and
a rerun gives identical numbers. The loss is `training.flow_matching.teacher_forcing_loss`, the
training objective itself, so these numbers are the training loss per chunk at those levels.

If the memory works, later chunks (beyond the attention window) get a lower loss than with
window attention alone: the per-chunk curve is where that shows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..training.flow_matching import sample_seed, teacher_forcing_loss

# Ten levels from almost clean to almost pure noise, the same on every chunk.
DEFAULT_NOISE_LEVELS = tuple(round(float(x), 4) for x in np.linspace(0.05, 0.95, 10))


def check_noise_levels(noise_levels: Iterable[float]) -> None:
    """Raise ValueError unless `noise_levels` is a non-empty list of levels in (0, 1): the open interval, as the
    levels compare noisy chunks (0 is a clean chunk, 1 pure noise). Shared by train.validation_noise_levels and
    validate.py's --noise_levels, so both accept the same levels."""
    levels = list(noise_levels)
    if not levels or not all(0.0 < t < 1.0 for t in levels):
        raise ValueError(
            f"the noise levels must be one or more numbers strictly between 0 (clean) and 1 (pure noise), "
            f"got {levels}; for example [0.25, 0.5, 0.75]"
        )


@dataclass
class PerChunkLoss:
    """Results for one checkpoint.

    Attributes:
        noise_levels: the L levels.
        matrix: (L, N) mean loss per noise level and chunk index, over clips.
        num_clips: clips evaluated.
    """

    noise_levels: tuple[float, ...]
    matrix: np.ndarray
    num_clips: int

    @property
    def mean_per_chunk(self) -> np.ndarray:
        """(N,) the mean over noise levels of each chunk's loss."""
        return self.matrix.mean(axis=0)

    def to_dict(self) -> dict:
        return {
            "noise_levels": list(self.noise_levels),
            "matrix": self.matrix.tolist(),
            "mean_per_chunk": self.mean_per_chunk.tolist(),
            "num_clips": self.num_clips,
        }


@torch.no_grad()
def per_chunk_loss(
    model,
    clip_at: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    num_clips: int,
    noise_levels: Iterable[float] = DEFAULT_NOISE_LEVELS,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    process_index: int = 0,
    num_processes: int = 1,
    reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = False,
) -> PerChunkLoss:
    """Evaluate `model` on `num_clips` clips, one clip at a time.

    Args:
        model: a `LaCTWanTransformer3DModel` (or its accelerate/DeepSpeed wrapper).
        clip_at: index -> (latents (1, C, F, H, W), prompt_embeds (1, L, D)) on the model's device.
        noise_levels: noise levels in (0, 1); every chunk gets the same one.
        process_index, num_processes, reduce_sum: for data-parallel evaluation, each process takes
            every `num_processes`-th clip and `reduce_sum` adds the processes' sums. Processes with fewer
            clips repeat one with weight 0, so all run the same number of forwards (collective under ZeRO-3).

    Returns:
        A `PerChunkLoss` with the (levels x chunks) matrix averaged over clips.
    """
    if num_clips < 1:
        raise ValueError("No clips to evaluate: the validation data is empty.")
    check_noise_levels(noise_levels)
    levels = tuple(float(x) for x in noise_levels)
    # The LaCT config, also through a DeepSpeed/DDP wrapper (whose own `config` is something else).
    config = getattr(model, "module", model).config
    chunk_frames, num_repeat = config.chunk_frames, config.num_repeat
    total, count = None, 0
    indices = range(process_index, math.ceil(num_clips / num_processes) * num_processes, num_processes)
    for index in tqdm(indices, desc="Validation clips", disable=not progress):
        latents, prompt_embeds = clip_at(min(index, num_clips - 1))
        num_chunks = latents.shape[2] // chunk_frames
        generator = torch.Generator().manual_seed(sample_seed(seed, index))
        noise = torch.randn((1, num_repeat, *latents.shape[1:]), generator=generator).to(latents.device)
        rows = []
        for level in levels:
            t = torch.full((1, num_repeat, num_chunks), level, device=latents.device)  # (1, R, N)
            _, chunk_losses = teacher_forcing_loss(model, latents, prompt_embeds, t, noise, chunk_frames, dtype=dtype)
            rows.append(chunk_losses.double())
        weight = 1.0 if index < num_clips else 0.0
        clip_matrix = weight * torch.stack(rows)  # (L, N)
        total = clip_matrix if total is None else total + clip_matrix
        count += weight
    count = torch.tensor(float(count), dtype=torch.float64, device=total.device)
    if reduce_sum is not None:
        total, count = reduce_sum(total), reduce_sum(count)
    return PerChunkLoss(levels, (total / count).cpu().numpy(), int(round(count.item())))
