"""The interleaved teacher-forcing sequence (docs/design.md, Sec. 2.1) and the grouped layout the model uses.

Sequence order, with `R` noisy copies `n_i^r` and clean chunks `c_i` of `k` latent frames each:

    n_0^1 .. n_0^R, c_0, n_1^1 .. n_1^R, c_1, ..., c_{N-2}, n_{N-1}^1 .. n_{N-1}^R

That is `S = N*R + N - 1` segments. Inside the model the segments are regrouped once into
"grouped order": all noisy copies (chunk-major, copy-minor) and then all clean chunks. Causality
is unchanged (it lives in which segment sees which, not in memory layout), and every cross-segment
operation becomes a batched op over contiguous blocks.
"""

from dataclasses import dataclass
from functools import cached_property

import torch

from .geometry import check_chunking


@dataclass(frozen=True)
class TeacherForcingLayout:
    """Segment bookkeeping for `num_chunks` chunks with `num_repeat` noisy copies each."""

    num_chunks: int
    num_repeat: int

    @classmethod
    def from_num_segments(cls, num_segments: int, num_repeat: int) -> "TeacherForcingLayout":
        num_chunks, rest = divmod(num_segments + 1, num_repeat + 1)
        if rest or num_chunks < 1:
            raise ValueError(
                f"A teacher-forcing sequence with num_repeat={num_repeat} has N*{num_repeat} + N - 1 segments "
                f"for N chunks; got {num_segments} segments, which fits no N. Build it with "
                "`lact_video.interleave_teacher_forcing`."
            )
        return cls(num_chunks, num_repeat)

    @property
    def num_segments(self) -> int:
        return self.num_chunks * self.num_repeat + self.num_chunks - 1

    @property
    def num_noisy(self) -> int:
        return self.num_chunks * self.num_repeat

    @cached_property
    def segments(self) -> tuple[tuple[int, bool], ...]:
        """(chunk index, is clean) of every segment, in sequence order."""
        order = []
        for i in range(self.num_chunks):
            order += [(i, False)] * self.num_repeat
            if i < self.num_chunks - 1:
                order.append((i, True))
        return tuple(order)

    @cached_property
    def grouped_order(self) -> tuple[int, ...]:
        """Sequence positions of the grouped segments: `grouped = sequence[grouped_order]`."""
        noisy = [s for s, (_, clean) in enumerate(self.segments) if not clean]
        clean = [s for s, (_, clean) in enumerate(self.segments) if clean]
        return tuple(noisy + clean)

    @cached_property
    def grouped_chunks(self) -> tuple[int, ...]:
        """Chunk index of each grouped segment: rotary positions follow the chunk."""
        return tuple(self.segments[s][0] for s in self.grouped_order)


def interleave_teacher_forcing(noisy: torch.Tensor, clean: torch.Tensor, chunk_frames: int) -> torch.Tensor:
    """Build the interleaved latent sequence.

    Args:
        noisy: (B, R, C, F, H, W), `R` noisy copies of the clip (each chunk with its own noise level).
        clean: (B, C, F, H, W), the clean clip. Its last chunk is dropped (nothing comes after it).

    Returns:
        (B, C, S*k, H, W) in sequence order.
    """
    b, r, c, f, h, w = noisy.shape
    n = check_chunking(f, chunk_frames)
    noisy = noisy.view(b, r, c, n, chunk_frames, h, w).permute(0, 2, 3, 1, 4, 5, 6)  # (B, C, N, R, k, H, W)
    clean = clean.view(b, c, n, 1, chunk_frames, h, w)  # (B, C, N, 1, k, H, W)
    both = torch.cat([noisy, clean], dim=3).flatten(2, 3)  # (B, C, N*(R+1), k, H, W)
    return both[:, :, :-1].flatten(2, 3)  # drop c_{N-1}: (B, C, S*k, H, W)


def interleave_timesteps(noisy_timesteps: torch.Tensor) -> torch.Tensor:
    """Per-segment timesteps. (B, R, N) noisy timesteps -> (B, S), clean segments at 0."""
    b, r, n = noisy_timesteps.shape
    per_chunk = noisy_timesteps.transpose(1, 2)  # (B, N, R)
    both = torch.cat([per_chunk, per_chunk.new_zeros(b, n, 1)], dim=2).flatten(1)  # (B, N*(R+1))
    return both[:, :-1]
