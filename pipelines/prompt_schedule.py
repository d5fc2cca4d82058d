"""Prompt schedules: switch prompts inside one video, at chunk boundaries (issue 15, Sec. 2).

A schedule maps video frames to prompts, `{0: "a cat walks on the grass", 97: "the cat jumps onto a wall"}`, or
the same as a list of `(frame, text)` pairs: each entry is in force from its frame until the next entry's. A text
may be a list of texts, one per prompt of the batch (a batch of schedules with the same boundaries); a plain
`str` or `list[str]` is a schedule of one entry at frame 0. LaCT generates whole chunks, so every frame rounds to
the nearest chunk start (`lact_video.geometry.first_frame_of_chunk`), with a warning, and the chunk with absolute
index c is denoised, and committed, with the entry in force at c. Each entry is encoded once, and each prompt
(an entry of the positive and of the negative schedule) projected to `text_context` once. docs/design.md,
Sec. 3.7 says why the memory needs no recomputation at a switch.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar, Union

import torch
from diffusers.utils import logging

from lact_video.errors import ConfigError
from lact_video.geometry import chunk_of_frame, first_frame_of_chunk

logger = logging.get_logger(__name__)

PromptText = Union[str, list[str]]  # one prompt, or one per prompt of the batch
# What `prompt` and `negative_prompt` take: a text (or batch), a mapping frame -> text, or (frame, text) pairs.
PromptArgument = Union[PromptText, Mapping[int, PromptText], list[tuple[int, PromptText]]]
P = TypeVar("P")  # a prompt as the pipeline prepares it for the transformer


def _is_schedule(prompt) -> bool:
    """A mapping, or a non-empty list of (frame, text) pairs (a list of texts is a batch)."""
    if isinstance(prompt, Mapping):
        return True
    return isinstance(prompt, list) and bool(prompt) and all(isinstance(e, tuple) and len(e) == 2 for e in prompt)


def _check_text(text, name: str, frame: int, allow_empty: bool) -> int:
    """The batch size of one entry's text (1 for a `str`); ConfigError for a wrong type or an empty text."""
    texts = [text] if isinstance(text, str) else text
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise ConfigError(
            f"`{name}` at frame {frame}: a schedule's text must be a `str` or a non-empty list of `str` (one per "
            f"prompt of the batch), got {text!r}."
        )
    if not allow_empty and any(not t.strip() for t in texts):
        raise ConfigError(f"`{name}` at frame {frame} is empty: give every schedule entry a text, or leave it out.")
    return len(texts)


def schedule_entries(prompt: PromptArgument | None, name: str, negative: bool = False) -> list[tuple[int, PromptText]]:
    """A prompt argument's `(frame, text)` entries, checked; a plain text or batch is `[(0, prompt)]`, `None` is `[]`.
    A `negative` prompt's texts may be empty (Wan's default negative prompt is ""), and its `str` entries serve
    every prompt of a batch.

    Raises:
        ValueError: a type that is neither a text, a list of texts, a mapping nor (frame, text) pairs (the message
            of `WanPipeline.check_inputs`).
        ConfigError: naming the entry, for a frame that is not an integer >= 0, a schedule that does not start at
            frame 0 or is out of order, an empty text (but for a `negative` prompt), or batches of different sizes.
    """
    if prompt is None:
        return []
    if not _is_schedule(prompt):
        if not isinstance(prompt, (str, list)):
            raise ValueError(
                f"`{name}` has to be of type `str` or `list` (a batch of texts, or (frame, text) pairs), or a "
                f"mapping frame -> text, but is {type(prompt)}"
            )
        return [(0, prompt)]
    entries = list(prompt.items()) if isinstance(prompt, Mapping) else list(prompt)
    if not entries:
        raise ConfigError(f"`{name}` is an empty schedule: give at least the text from frame 0, e.g. {{0: 'a cat'}}.")
    sizes = {}
    for frame, text in entries:
        if isinstance(frame, bool) or not isinstance(frame, int) or frame < 0:
            raise ConfigError(f"`{name}`: schedule frames are video frame indices (integers >= 0), got {frame!r}.")
        size = _check_text(text, name, frame, allow_empty=negative)
        if not (negative and isinstance(text, str)):
            sizes[frame] = size
    frames = [frame for frame, _ in entries]
    for before, after in zip(frames, frames[1:]):
        if after == before:
            raise ConfigError(f"`{name}` schedule: frame {after} has two entries; keep one text per frame.")
        if after < before:
            raise ConfigError(
                f"`{name}` schedule is out of order: frame {after} comes after frame {before}. List the entries by "
                f"increasing frame: {sorted(frames)}."
            )
    if frames[0] != 0:
        raise ConfigError(
            f"`{name}` schedule starts at frame {frames[0]}: it must start at frame 0 (the first entry is the text "
            "of the video's beginning)."
        )
    if len(set(sizes.values())) > 1:
        raise ConfigError(
            f"`{name}` schedule: every entry must hold as many texts (a batch of schedules with the same frames), got "
            + ", ".join(f"{n} at frame {f}" for f, n in sizes.items())
            + "."
        )
    return entries


def _nearest_chunk(frame: int, chunk_frames: int, temporal_factor: int) -> int:
    """The chunk whose first frame is nearest to `frame` (the earlier one on a tie)."""
    chunk = chunk_of_frame(frame, chunk_frames, temporal_factor)
    after = first_frame_of_chunk(chunk + 1, chunk_frames, temporal_factor)
    return chunk + 1 if after - frame < frame - first_frame_of_chunk(chunk, chunk_frames, temporal_factor) else chunk


@dataclass(frozen=True)
class PromptSchedule:
    """A schedule of prompts by absolute chunk index: entry i is in force from chunk `starts[i]` on.

    Attributes:
        starts: the first chunk of each entry: 0, then increasing.
        values: each entry's text (`str` or one per prompt), or caller-supplied embeddings (B, L, D).
    """

    starts: tuple[int, ...]
    values: tuple[PromptText | torch.Tensor, ...]

    @classmethod
    def from_argument(
        cls,
        prompt: PromptArgument | None,
        embeds: torch.Tensor | None,
        name: str,
        chunk_frames: int,
        temporal_factor: int,
        negative: bool = False,
    ) -> PromptSchedule:
        """The schedule of a `prompt` argument, its frames rounded to chunk starts (with a warning naming the frame
        asked and the frame used), or the one entry of caller-supplied `embeds` (B, L, D).

        Raises:
            ConfigError: as `schedule_entries` (`negative` as there), and when two entries round to the same chunk.
        """
        if embeds is not None:
            return cls((0,), (embeds,))
        starts, values, frames = [], [], []
        for frame, text in schedule_entries(prompt, name, negative):
            chunk = _nearest_chunk(frame, chunk_frames, temporal_factor)
            used = first_frame_of_chunk(chunk, chunk_frames, temporal_factor)
            chunk_starts = (
                f"chunks of chunk_frames={chunk_frames} latent frames start at frames 0, "
                f"{first_frame_of_chunk(1, chunk_frames, temporal_factor)}, then every {temporal_factor * chunk_frames}"
            )
            if starts and chunk == starts[-1]:
                raise ConfigError(
                    f"`{name}` schedule: frames {frames[-1]} and {frame} both round to chunk {chunk} (frame {used}); "
                    f"{chunk_starts}. A chunk has one prompt: keep one of the two entries."
                )
            if used != frame:
                logger.warning(
                    f"`{name}` switches at frame {frame}, which does not start a chunk ({chunk_starts}): switching at "
                    f"frame {used} (chunk {chunk}), the nearest chunk start, instead."
                )
            starts.append(chunk)
            frames.append(frame)
            values.append(text)
        return cls(tuple(starts), tuple(values))

    @property
    def batch_size(self) -> int:
        """Prompts per entry: B of embeddings, the length of a list of texts, 1 for a `str`."""
        value = self.values[0]
        return value.shape[0] if isinstance(value, torch.Tensor) else 1 if isinstance(value, str) else len(value)

    def entry_at(self, chunk: int) -> int:
        """The index of the entry in force at absolute chunk index `chunk`."""
        return bisect.bisect_right(self.starts, chunk) - 1


class ScheduledPrompts(Generic[P]):
    """The prompts of one generation by absolute chunk index: the positive (and, under guidance, the negative)
    schedule's entries in force over `chunks`, each encoded once, and each pair of them prepared once.

    `at(c)` is the prompt for chunk c. The transformer's first call with a prompt projects it (`text_context`) and
    a `callback_on_step_end` may replace its embeddings; `update(c, prompt)` keeps either for the rest of the
    pair's chunks (a replacement applies to the current entry only: the next entry starts from its own text).
    This is the generation's own bookkeeping, dropped with it: never state of the pipeline or the model.
    """

    def __init__(
        self,
        positive: PromptSchedule,
        negative: PromptSchedule | None,
        chunks: range,
        encode: Callable[[PromptText | torch.Tensor], torch.Tensor],
        prepare: Callable[[torch.Tensor, torch.Tensor | None], P],
        goes_on: bool = False,
    ):
        """`encode` makes one entry's embeddings (B * num_videos_per_prompt, L, D); `prepare` a prompt from the
        positive and negative embeddings (`None` without guidance). A negative `str` serves every prompt.
        `goes_on`: the call hands out its state, so entries after its last chunk are for later calls (the same
        schedule passed to every call): logged at debug level; otherwise no call can use them, and they warn.

        Raises:
            ConfigError: when a negative entry's batch is not the positive schedule's.
        """
        self._positive, self._negative = positive, negative
        keys = sorted({self._key(c) for c in chunks})
        batch_size = positive.batch_size
        negatives = {}
        for j in sorted({j for _, j in keys if j is not None}):
            value = negative.values[j]
            if isinstance(value, str):
                value = [value] * batch_size
            elif not isinstance(value, torch.Tensor) and len(value) != batch_size:
                raise ConfigError(
                    f"`negative_prompt` (from chunk {negative.starts[j]}) has batch size {len(value)}, but `prompt` "
                    f"has batch size {batch_size}: give one negative text, or one per prompt."
                )
            negatives[j] = encode(value)
        positives = {i: encode(positive.values[i]) for i in sorted({i for i, _ in keys})}
        self._prompts = {(i, j): prepare(positives[i], negatives.get(j)) for i, j in keys}
        for schedule, name in ((positive, "prompt"), (negative, "negative_prompt")):
            unused = [start for start in (schedule.starts if schedule else ()) if start >= chunks.stop]
            if unused:
                (logger.debug if goes_on else logger.warning)(
                    f"`{name}` entries from chunks {unused} start after the last chunk this call generates (chunk "
                    f"{chunks.stop - 1}): they are not used here"
                    + (" (a call going on from the state handed out uses them)." if goes_on else ".")
                )

    def _key(self, chunk: int) -> tuple[int, int | None]:
        """The entries in force at `chunk`: (positive, negative or None)."""
        j = self._negative.entry_at(chunk) if self._negative is not None else None
        return self._positive.entry_at(chunk), j

    def at(self, chunk: int) -> P:
        """The prompt for the chunk with absolute index `chunk`."""
        return self._prompts[self._key(chunk)]

    def update(self, chunk: int, prompt: P) -> None:
        """Keep `prompt` (projected, or replaced by a callback) for the later chunks of the entries in force at
        `chunk`."""
        self._prompts[self._key(chunk)] = prompt
