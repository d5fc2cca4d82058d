"""A folder of captioned videos, decoded with decord into fixed-size clips for Wan finetuning.

Layout: the videos, plus `metadata.jsonl` (one JSON object per line) or `metadata.csv`, with
the columns `file_name` (a path relative to the folder) and `text` (the caption; a column
named `caption` is accepted instead).

Every video is opened once up front (`scan_videos`: container header and first frame). Files
that are missing, empty, unreadable, too short at the target frame rate, or that have no
caption are skipped, each with one warning line, and a summary follows. A video whose frame
data turns out corrupt only when decoded is skipped at read time.

decord's bridge is process-global and DataLoader workers inherit it, so this module never sets
it: it reads decord's native arrays through numpy.
"""

from __future__ import annotations

import collections
import csv
import json
import logging
import math
import pathlib
from dataclasses import dataclass

import numpy as np
import torch

from lact_video.data.config import DataConfig

logger = logging.getLogger(__name__)

METADATA_FILES = ("metadata.jsonl", "metadata.csv")
CAPTION_COLUMNS = ("text", "caption")

# Measured on decord 0.6.0: at these output widths (any height, any source) it returns 4 or 6
# channels and `get_batch` raises. Widths of 80 and up are all fine.
_DECORD_BAD_WIDTHS = frozenset({4, 6, 8, 12, 16, 24, 48, 72})


class VideoDecodeError(Exception):
    """decord could not decode the frames of a video that looked fine when scanned."""


@dataclass(frozen=True)
class VideoEntry:
    """A usable video, as found by `scan_videos`."""

    file_name: str  # relative to the data folder
    text: str  # the caption
    num_frames: int  # source frames, as the container reports them
    fps: float  # source frame rate
    height: int  # source height in pixels
    width: int  # source width in pixels


@dataclass(frozen=True)
class SkippedVideo:
    """A metadata row that `scan_videos` left out, and why."""

    file_name: str
    reason: str  # a short label: "file missing", "too short", ...
    detail: str


def read_metadata(data_dir: str | pathlib.Path) -> list[dict[str, str]]:
    """Rows `{"file_name", "text"}` from the folder's metadata.jsonl or metadata.csv.

    A missing caption comes back as "" (`scan_videos` skips the row). A missing or ambiguous
    metadata file, or a row without `file_name`, is a ValueError: the folder itself is wrong.
    """
    data_dir = pathlib.Path(data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"data folder {data_dir} does not exist")
    found = [data_dir / name for name in METADATA_FILES if (data_dir / name).is_file()]
    if not found:
        raise ValueError(
            f"{data_dir} has no metadata file: add metadata.jsonl (one JSON object per line with "
            f'"file_name" and "text") or metadata.csv (columns file_name,text)'
        )
    if len(found) > 1:
        raise ValueError(f"{data_dir} has both metadata.jsonl and metadata.csv; keep one")
    path = found[0]
    if path.suffix == ".jsonl":
        records = []
        for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((line_number, json.loads(line)))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {line_number}: not valid JSON ({error})") from None
    else:
        with path.open(newline="", encoding="utf-8") as stream:
            # Line numbers count the header as line 1.
            records = list(enumerate(csv.DictReader(stream), start=2))
    rows = []
    for line_number, record in records:
        if not isinstance(record, dict) or not record.get("file_name"):
            raise ValueError(f"{path}, line {line_number}: no file_name")
        caption = next((record[key] for key in CAPTION_COLUMNS if record.get(key) is not None), "")
        rows.append({"file_name": str(record["file_name"]), "text": str(caption).strip()})
    return rows


def source_frame_span(src_fps: float, num_frames: int, fps: float) -> int:
    """Source frames that `num_frames` frames sampled at `fps` cover, from the first to the last."""
    # The small epsilon keeps exact ratios (25 fps -> 12.5 fps) from flooring one frame short.
    return math.floor((num_frames - 1) * src_fps / fps + 1e-6) + 1


def sample_frame_indices(src_fps: float, num_frames: int, fps: float, start: int = 0) -> np.ndarray:
    """Source frame indices (num_frames,) that resample a clip from `src_fps` to `fps`, from `start`.

    Each target frame takes the source frame shown at its time; below the source rate frames are
    dropped, above it they repeat.
    """
    return start + np.floor(np.arange(num_frames) * (src_fps / fps) + 1e-6).astype(np.int64)


def resize_for_center_crop(src_height: int, src_width: int, height: int, width: int) -> tuple[int, int]:
    """The (height, width) to decode at: the aspect ratio kept, and just covering the crop."""
    scale = max(height / src_height, width / src_width)
    resized_height = max(height, round(src_height * scale))
    resized_width = max(width, round(src_width * scale))
    # One pixel wider changes nothing after the crop and steers clear of decord's bad widths.
    while resized_width in _DECORD_BAD_WIDTHS:
        resized_width += 1
    return resized_height, resized_width


def _decord():
    """decord and the exceptions it raises on bad files (imported late: it is a training extra)."""
    import decord

    # DECORDError is not a RuntimeError. A file that opens with zero frames fails decord's assert.
    return decord, (RuntimeError, decord.DECORDError, AssertionError)


def _to_numpy(frames) -> np.ndarray:
    # Native decord arrays have asnumpy(); anything else (a bridge someone else set) converts directly.
    return frames.asnumpy() if hasattr(frames, "asnumpy") else np.asarray(frames)


def _probe(path: pathlib.Path) -> tuple[int, float, int, int]:
    """(frames, fps, height, width) of a video, from its header and its first frame."""
    decord, _ = _decord()
    reader = decord.VideoReader(str(path), num_threads=1)
    # The first frame gives the size; at a few widths decord gets the channels wrong, never H or W.
    src_height, src_width = _to_numpy(reader.next()).shape[:2]
    return len(reader), float(reader.get_avg_fps()), int(src_height), int(src_width)


def count_reasons(skipped: list[SkippedVideo]) -> str:
    """A summary such as "1 empty file, 2 too short"."""
    counts = collections.Counter(video.reason for video in skipped)
    return ", ".join(f"{count} {reason}" for reason, count in sorted(counts.items()))


def scan_videos(
    data_dir: str | pathlib.Path, rows: list[dict[str, str]], num_frames: int, fps: float
) -> tuple[list[VideoEntry], list[SkippedVideo]]:
    """Open every video once: the usable ones, and the skipped ones with their reasons.

    Logs one warning per skipped video and a summary; never raises for a bad video.
    """
    _, decord_errors = _decord()
    data_dir = pathlib.Path(data_dir)
    entries, skipped = [], []

    def skip(file_name: str, reason: str, detail: str) -> None:
        logger.warning("Skipping video %s: %s (%s)", file_name, reason, detail)
        skipped.append(SkippedVideo(file_name, reason, detail))

    for row in rows:
        file_name, path = row["file_name"], data_dir / row["file_name"]
        if not row["text"]:
            skip(file_name, "missing caption", "empty or absent text in the metadata")
            continue
        if not path.is_file():
            skip(file_name, "file missing", f"no file at {path}")
            continue
        if path.stat().st_size == 0:
            skip(file_name, "empty file", "0 bytes")
            continue
        try:
            src_frames, src_fps, src_height, src_width = _probe(path)
        except decord_errors as error:
            skip(file_name, "unreadable", f"{type(error).__name__}: {str(error).strip()[:200] or 'no message'}")
            continue
        if not (math.isfinite(src_fps) and src_fps > 0):
            skip(file_name, "unknown frame rate", f"the container reports {src_fps} fps")
            continue
        span = source_frame_span(src_fps, num_frames, fps)
        if src_frames < span:
            skip(
                file_name,
                "too short",
                f"{num_frames} frames at {fps:g} fps need {span} source frames at {src_fps:g} fps, "
                f"it has {src_frames}",
            )
            continue
        entries.append(VideoEntry(file_name, row["text"], src_frames, src_fps, src_height, src_width))

    if skipped:
        reasons = count_reasons(skipped)
        logger.warning("Kept %d of %d videos in %s; skipped %s", len(entries), len(rows), data_dir, reasons)
    else:
        logger.info("Kept all %d videos in %s", len(entries), data_dir)
    return entries, skipped


class VideoFolderDataset(torch.utils.data.Dataset):
    """Captioned clips from a video folder: resampled to `fps`, resized and center-cropped.

    Items are `{"pixel_values": (C=3, num_frames, H, W) float32 in [-1, 1], "text", "file_name"}`.
    The start frame depends only on (seed, epoch, index), so runs are reproducible; call
    `set_epoch` to draw new starts (DataLoader workers pick it up when they restart each epoch).
    """

    def __init__(self, data_dir: str | pathlib.Path, config: DataConfig):
        config.check_clip()
        self.data_dir = pathlib.Path(data_dir)
        self.config = config
        self.epoch = 0
        rows = read_metadata(self.data_dir)
        self.entries, self.skipped = scan_videos(self.data_dir, rows, config.num_frames, config.fps)
        if not self.entries:
            reasons = count_reasons(self.skipped) or "no metadata rows"
            raise ValueError(f"no usable video in {self.data_dir} ({reasons}); see the warnings above")
        # Items whose frames failed to decode in this process; each DataLoader worker keeps its own.
        self._failed: set[int] = set()

    def __len__(self) -> int:
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        """Draw the random start frames for `epoch` (they are fixed within an epoch)."""
        self.epoch = epoch

    def start_frame(self, index: int) -> int:
        """The first source frame of item `index`: 0, or a draw seeded by (seed, epoch, index)."""
        entry, config = self.entries[index], self.config
        latest = entry.num_frames - source_frame_span(entry.fps, config.num_frames, config.fps)
        if not config.random_start or latest <= 0:
            return 0
        return int(np.random.default_rng((config.seed, self.epoch, index)).integers(0, latest + 1))

    def load(self, index: int) -> dict:
        """Decode item `index`; raises VideoDecodeError if its frame data is corrupt."""
        decord, decord_errors = _decord()
        entry, config = self.entries[index], self.config
        indices = sample_frame_indices(entry.fps, config.num_frames, config.fps, self.start_frame(index))
        resized_height, resized_width = resize_for_center_crop(entry.height, entry.width, config.height, config.width)
        try:
            path = str(self.data_dir / entry.file_name)
            reader = decord.VideoReader(path, width=resized_width, height=resized_height)
            frames = _to_numpy(reader.get_batch(indices.tolist()))  # (num_frames, h, w, 3) uint8
        except decord_errors as error:
            raise VideoDecodeError(f"{type(error).__name__}: {str(error).strip()[:200]}") from error
        if frames.shape != (config.num_frames, resized_height, resized_width, 3):
            raise VideoDecodeError(f"decord returned frames of shape {frames.shape}")
        top, left = (resized_height - config.height) // 2, (resized_width - config.width) // 2
        frames = frames[:, top : top + config.height, left : left + config.width]  # (num_frames, H, W, 3)
        pixel_values = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)  # (3, num_frames, H, W)
        pixel_values = pixel_values.float() / 127.5 - 1.0
        return {"pixel_values": pixel_values, "text": entry.text, "file_name": entry.file_name}

    def __getitem__(self, index: int) -> dict:
        # A corrupt video must not end the run: take the next decodable item, the same one every time.
        for offset in range(len(self)):
            candidate = (index + offset) % len(self)
            if candidate in self._failed:
                continue
            try:
                return self.load(candidate)
            except VideoDecodeError as error:
                self._failed.add(candidate)
                file_name = self.entries[candidate].file_name
                logger.warning("Skipping video %s: frames do not decode (%s)", file_name, error)
        raise RuntimeError(f"no video in {self.data_dir} could be decoded; see the warnings above")
