"""A folder of captioned videos, read as a player shows them into fixed-size clips for Wan finetuning.

Layout: the videos, plus `metadata.jsonl` (one JSON object per line) or `metadata.csv`, with
the columns `file_name` (a path relative to the folder) and `text` (the caption; a column
named `caption` is accepted instead). Both may start with a byte-order mark (spreadsheet exports do).

Every video is probed once up front (`scan_videos`: the times of the frames a player shows, the
display size, the first frame; `lact_video.data.video_reader`). Files that are missing, empty,
unreadable, too short at the target frame rate, or that have no caption are skipped, each with one
warning line that says what to do, and a summary follows. A video whose frame data turns out corrupt
only when decoded is skipped at read time.
"""

from __future__ import annotations

import collections
import csv
import json
import logging
import os
import pathlib
from dataclasses import dataclass

import numpy as np
import torch

from lact_video.data.config import DataConfig
from lact_video.data.video_reader import (
    VideoDecodeError,
    VideoInfo,
    latest_start,
    open_errors,
    probe_video,
    read_frames,
    resample_times,
)
from lact_video.errors import ConfigError

logger = logging.getLogger(__name__)

METADATA_FILES = ("metadata.jsonl", "metadata.csv")
CAPTION_COLUMNS = ("text", "caption")
REMOVE_ROW = "or remove its row from the metadata"
# Files counted as videos when looking for ones the metadata does not list.
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")


def data_key(name: str) -> str:
    """How the trainer names a data setting in messages: its config key (`data.num_frames`)."""
    return f"data.{name}"


@dataclass(frozen=True)
class VideoEntry:
    """A usable video, as found by `scan_videos`."""

    file_name: str  # relative to the data folder
    text: str  # the caption
    info: VideoInfo  # the frames a player shows, and the display size

    @property
    def num_frames(self) -> int:
        """Frames a player shows (pre-roll frames of a cut are not counted)."""
        return self.info.num_frames


@dataclass(frozen=True)
class SkippedVideo:
    """A metadata row that `scan_videos` left out, and why."""

    file_name: str
    reason: str  # a short label: "file missing", "too short", ...
    detail: str  # what is wrong, in the user's terms, and what to do about it


def read_metadata(data_dir: str | pathlib.Path) -> list[dict[str, str]]:
    """Rows `{"file_name", "text"}` from the folder's metadata.jsonl or metadata.csv.

    A missing caption comes back as "" (`scan_videos` skips the row). A missing or ambiguous
    metadata file, or a row without `file_name`, is a `ConfigError`: the folder itself is wrong.
    A UTF-8 byte-order mark at the start is ignored.
    """
    data_dir = pathlib.Path(data_dir)
    if not data_dir.is_dir():
        raise ConfigError(f"data folder {data_dir} does not exist")
    found = [data_dir / name for name in METADATA_FILES if (data_dir / name).is_file()]
    if not found:
        raise ConfigError(
            f"{data_dir} has no metadata file: add metadata.jsonl (one JSON object per line with "
            f'"file_name" and "text") or metadata.csv (columns file_name,text)'
        )
    if len(found) > 1:
        raise ConfigError(f"{data_dir} has both metadata.jsonl and metadata.csv; keep one")
    path = found[0]
    # utf-8-sig drops the byte-order mark that spreadsheet programs write; without it the first
    # column would be read as "\ufefffile_name".
    if path.suffix == ".jsonl":
        records = []
        for line_number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((line_number, json.loads(line)))
            except json.JSONDecodeError as error:
                raise ConfigError(f"{path}, line {line_number}: not valid JSON ({error})") from None
    else:
        with path.open(newline="", encoding="utf-8-sig") as stream:
            # Line numbers count the header as line 1.
            reader = csv.DictReader(stream)
            if reader.fieldnames and len(reader.fieldnames) == 1 and ";" in reader.fieldnames[0]:
                raise ConfigError(
                    f"{path}: the file looks semicolon-separated (header {reader.fieldnames[0]!r}); save it "
                    "comma-separated, with the columns file_name,text"
                )
            records = list(enumerate(reader, start=2))
    rows = []
    for line_number, record in records:
        if not isinstance(record, dict) or not record.get("file_name"):
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise ConfigError(
                f"{path}, line {line_number}: no file_name (found {keys}); every row needs file_name, "
                f"the video's path relative to {data_dir}, and text, its caption"
            )
        caption = next((record[key] for key in CAPTION_COLUMNS if record.get(key) is not None), "")
        rows.append({"file_name": str(record["file_name"]), "text": str(caption).strip()})
    return rows


def count_reasons(skipped: list[SkippedVideo]) -> str:
    """A summary such as "1 empty file, 2 too short"."""
    counts = collections.Counter(video.reason for video in skipped)
    return ", ".join(f"{count} {reason}" for reason, count in sorted(counts.items()))


def _too_short(info: VideoInfo, num_frames: int, fps: float, key) -> str:
    need = (num_frames - 1) / fps
    return (
        f"a player shows {info.num_frames} frames over {info.duration:.3f} s; a clip of {num_frames} frames at "
        f"{fps:g} fps needs at least {need:.3f} s. Lower {key('num_frames')} or {key('fps')}, {REMOVE_ROW}"
    )


def warn_unlisted(data_dir: pathlib.Path, rows: list[dict[str, str]]) -> None:
    """One warning naming how many video files in `data_dir` (and below) have no metadata row, and a few of them:
    they are not trained on, which a user who just copied them in would not expect."""
    listed = {os.path.normpath(row["file_name"]) for row in rows}
    unlisted = sorted(
        str(path.relative_to(data_dir))
        for path in data_dir.rglob("*")
        if path.suffix.lower() in VIDEO_SUFFIXES and path.is_file()
        and os.path.normpath(path.relative_to(data_dir)) not in listed
    )  # fmt: skip
    if unlisted:
        shown = ", ".join(unlisted[:5]) + (f" and {len(unlisted) - 5} more" if len(unlisted) > 5 else "")
        logger.warning(
            "%d video file(s) in %s have no row in the metadata and are not used: %s. Add a row for each to train "
            "on them.",
            len(unlisted),
            data_dir,
            shown,
        )


def scan_videos(
    data_dir: str | pathlib.Path, rows: list[dict[str, str]], num_frames: int, fps: float, key=data_key
) -> tuple[list[VideoEntry], list[SkippedVideo]]:
    """Probe every video once: the usable ones, and the skipped ones with their reasons.

    Logs one warning per skipped video, one for the video files no row lists, and a summary; never raises for a
    bad video. `key` names a data setting in the messages (the trainer's `data.fps`; precompute's `--fps`).
    """
    data_dir = pathlib.Path(data_dir)
    entries, skipped = [], []

    def skip(file_name: str, reason: str, detail: str) -> None:
        logger.warning("Skipping video %s: %s (%s)", file_name, reason, detail)
        skipped.append(SkippedVideo(file_name, reason, detail))

    for row in rows:
        file_name, path = row["file_name"], data_dir / row["file_name"]
        if not row["text"]:
            skip(file_name, "missing caption", f"its text in the metadata is empty; write a caption {REMOVE_ROW}")
            continue
        if not path.is_file():
            skip(
                file_name,
                "file missing",
                f"no file at {path}; file_name is a path relative to {data_dir}: fix it {REMOVE_ROW}",
            )
            continue
        if path.stat().st_size == 0:
            skip(file_name, "empty file", f"the file has 0 bytes (an unfinished copy?); copy it again {REMOVE_ROW}")
            continue
        try:
            info = probe_video(path)
        except open_errors() as error:
            message = str(error).strip()[:200] or type(error).__name__
            skip(
                file_name,
                "unreadable",
                f"FFmpeg cannot read it as a video ({message}); re-encode it, e.g. `ffmpeg -i {file_name} "
                f"-c:v libx264 -pix_fmt yuv420p fixed.mp4`, {REMOVE_ROW}",
            )
            continue
        if latest_start(info, num_frames, fps) < 0:
            skip(file_name, "too short", _too_short(info, num_frames, fps, key))
            continue
        entries.append(VideoEntry(file_name, row["text"], info))

    warn_unlisted(data_dir, rows)
    if skipped:
        reasons = count_reasons(skipped)
        logger.warning("Kept %d of %d videos in %s; skipped %s", len(entries), len(rows), data_dir, reasons)
    else:
        logger.info("Kept all %d videos in %s", len(entries), data_dir)
    return entries, skipped


class VideoFolderDataset(torch.utils.data.Dataset):
    """Captioned clips from a video folder: resampled to `fps` by frame time, resized and center-cropped.

    Output frame i of an item is the source frame a player shows at `t_start + i / fps`, where
    `t_start` is the time of the start frame, upright and at the display aspect ratio.

    Items are `{"pixel_values": (C=3, num_frames, H, W) float32 in [-1, 1], "text", "file_name"}`.
    The start frame depends only on (seed, epoch, index), so runs are reproducible; call
    `set_epoch` to draw new starts (DataLoader workers pick it up when they restart each epoch).
    """

    def __init__(self, data_dir: str | pathlib.Path, config: DataConfig, key=data_key):
        """`key(name)`: how messages name the data setting `name` (see `scan_videos`)."""
        config.check_clip()
        self.data_dir = pathlib.Path(data_dir)
        self.config = config
        self.epoch = 0
        rows = read_metadata(self.data_dir)
        self.entries, self.skipped = scan_videos(self.data_dir, rows, config.num_frames, config.fps, key)
        if not self.entries:
            reasons = count_reasons(self.skipped) or "no metadata rows"
            raise ConfigError(f"no usable video in {self.data_dir} ({reasons}); see the warnings above")
        # Items whose frames failed to decode in this process; each DataLoader worker keeps its own.
        self._failed: set[int] = set()

    def __len__(self) -> int:
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        """Draw the random start frames for `epoch` (they are fixed within an epoch)."""
        self.epoch = epoch

    def start_frame(self, index: int) -> int:
        """The shown frame item `index` starts at: 0, or a draw seeded by (seed, epoch, index)."""
        entry, config = self.entries[index], self.config
        latest = latest_start(entry.info, config.num_frames, config.fps)
        if not config.random_start or latest <= 0:
            return 0
        return int(np.random.default_rng((config.seed, self.epoch, index)).integers(0, latest + 1))

    def load(self, index: int) -> dict:
        """Decode item `index`; raises VideoDecodeError if its frame data is corrupt."""
        entry, config = self.entries[index], self.config
        times = resample_times(entry.info, config.fps, self.start_frame(index), config.num_frames)
        path = self.data_dir / entry.file_name
        frames = np.stack(list(read_frames(path, times, entry.info, (config.height, config.width))))
        pixel_values = torch.from_numpy(frames).permute(3, 0, 1, 2)  # (3, num_frames, H, W)
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
