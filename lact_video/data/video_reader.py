"""Read a video as a player shows it: frames picked by presentation time, rotated upright, at the display
aspect ratio, resized and center-cropped (docs/design.md Sec. 5.5).

Decoding is PyAV's (FFmpeg's libraries). Its demuxer applies the container's edit list, so the pre-roll
frames that a stream-copy cut keeps before its edit point are marked to discard and never come out of
the decoder; its frames carry their presentation times and the display matrix. decord, the reader
before, counts and returns the pre-roll frames, ignores rotation and non-square pixels, and picks
frames by `index / average_fps` (measured in docs/design.md Sec. 5.5).

Two steps:

- `probe_video` reads the container once without decoding past the first frame: the times of the
  frames a player shows, the display size, the rotation (`VideoInfo`).
- `read_frames` decodes forward from a seek point and yields, for each requested time, the frame on
  screen at that time (`(H, W, 3)` uint8 RGB). It holds one decoded frame at a time, so a caller that
  groups its output (e.g. by chunk) never holds more than one group; `resample_times` gives the times
  of a clip at a target frame rate.
"""

from __future__ import annotations

import dataclasses
import fractions
import pathlib
from collections.abc import Iterable, Iterator

import numpy as np

# Frame times are compared with this slack (seconds): Matroska's 1/1000 s time base rounds a frame's
# start by up to 0.5 ms (3/16 s is stored as 0.188), and that must not push it past a target time.
# Well below a frame interval at any real rate (4 ms at 240 fps).
TIME_EPS = 1e-3


class VideoDecodeError(Exception):
    """The frames of a video could not be decoded (the container or its frame data is damaged)."""


@dataclasses.dataclass(frozen=True, eq=False)
class VideoInfo:
    """What a player shows of a video: its frame times and its upright display size.

    `frame_times` (N,) float64 are the presentation times in seconds of the N frames a player shows,
    ascending; the last one stays on screen until `end_time`. `height` and `width` are the display
    size in pixels: the coded size with the sample aspect ratio applied to the width, then rotated.
    """

    frame_times: np.ndarray
    end_time: float
    height: int
    width: int
    rotation: int  # degrees counterclockwise the player turns the coded picture: 0, 90, 180 or 270
    sample_aspect_ratio: fractions.Fraction  # pixel width / pixel height of the coded picture

    @property
    def num_frames(self) -> int:
        return len(self.frame_times)

    @property
    def duration(self) -> float:
        """Seconds from the first shown frame to the end of the last."""
        return self.end_time - float(self.frame_times[0])

    @property
    def average_fps(self) -> float:
        return self.num_frames / self.duration


def _av():
    """PyAV, imported late: it is a training extra."""
    try:
        import av
    except ImportError as error:
        raise ImportError("reading videos needs PyAV: pip install 'lact-video[train]' (or pip install av)") from error
    return av


def open_errors() -> tuple[type[Exception], ...]:
    """The exceptions PyAV raises for files it cannot open or decode."""
    av = _av()
    return (av.FFmpegError, VideoDecodeError)


def probe_video(path: str | pathlib.Path) -> VideoInfo:
    """The frames a player shows of the first video stream of `path`, and how it shows them.

    Reads every packet header (no decoding) for the frame times, and decodes the first frame for the
    rotation. Raises VideoDecodeError (no video stream, no frame to show) or av.FFmpegError.
    """
    av = _av()
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise VideoDecodeError("the file has no video stream")
        stream = container.streams.video[0]
        packets = [
            (packet.pts, packet.duration or 0)
            for packet in container.demux(stream)
            if packet.size and packet.pts is not None and not packet.is_discard  # discard: pre-roll of an edit list
        ]
        if not packets:
            raise VideoDecodeError("the video stream has no frames to show")
        packets.sort()
        time_base = float(stream.time_base)
        frame_times = np.array([pts for pts, _ in packets], np.float64) * time_base
        last_duration = packets[-1][1] * time_base
        if last_duration <= 0:  # not every container stores durations: take the typical frame interval
            last_duration = float(np.median(np.diff(frame_times))) if len(frame_times) > 1 else 1 / 25
        container.seek(0, stream=stream)
        first = next(container.decode(stream), None)
        if first is None:
            raise VideoDecodeError("no frame decodes")
        rotation = round(first.rotation or 0) % 360
        if rotation % 90:
            raise VideoDecodeError(f"the display matrix rotates by {rotation} degrees, not a multiple of 90")
        sample_aspect_ratio = fractions.Fraction(stream.sample_aspect_ratio or 1)
        if sample_aspect_ratio <= 0:
            sample_aspect_ratio = fractions.Fraction(1)
        height, width = first.height, max(1, round(first.width * sample_aspect_ratio))
    if rotation % 180:
        height, width = width, height
    return VideoInfo(frame_times, float(frame_times[-1]) + last_duration, height, width, rotation, sample_aspect_ratio)


def latest_start(info: VideoInfo, num_frames: int, fps: float) -> int:
    """The last shown frame a clip of `num_frames` at `fps` can start at; -1 if the video is too short.

    A clip starting at frame k covers the times `frame_times[k] + i / fps`; its last time must fall
    before `end_time`.
    """
    span = (num_frames - 1) / fps
    return int(np.searchsorted(info.frame_times + span, info.end_time - TIME_EPS, side="left")) - 1


def resample_times(info: VideoInfo, fps: float, start: int = 0, num_frames: int | None = None) -> np.ndarray:
    """Times (num_frames,) in seconds of a clip at `fps` starting at shown frame `start`.

    With `num_frames=None`, as many as fit before `end_time`.
    """
    first = float(info.frame_times[start])
    if num_frames is None:
        num_frames = int(np.floor((info.end_time - TIME_EPS - first) * fps)) + 1
    return first + np.arange(num_frames) / fps


def shown_frame_indices(info: VideoInfo, times: np.ndarray) -> np.ndarray:
    """Index (len(times),) of the shown frame on screen at each time: the last one that started by then."""
    return np.searchsorted(info.frame_times, np.asarray(times) + TIME_EPS, side="right") - 1


def resize_for_center_crop(src_height: int, src_width: int, height: int, width: int) -> tuple[int, int]:
    """The (height, width) to resize to: the aspect ratio kept, and just covering the crop."""
    scale = max(height / src_height, width / src_width)
    return max(height, round(src_height * scale)), max(width, round(src_width * scale))


def _upright_rgb(frame, info: VideoInfo, height: int, width: int) -> np.ndarray:
    """`frame` as (height, width, 3) uint8 RGB in display orientation; one scaling applies the SAR too."""
    quarter_turns = info.rotation // 90
    coded_height, coded_width = (width, height) if quarter_turns % 2 else (height, width)
    # The frame's own colour range and matrix (full vs limited) drive the conversion to RGB.
    rgb = frame.reformat(width=coded_width, height=coded_height, format="rgb24", interpolation="BICUBIC")
    return np.rot90(rgb.to_ndarray(), quarter_turns)  # np.rot90 turns counterclockwise, as the display matrix


def read_frames(
    path: str | pathlib.Path,
    times: Iterable[float],
    info: VideoInfo,
    size: tuple[int, int] | None = None,
) -> Iterator[np.ndarray]:
    """For each time (seconds, ascending), the frame on screen then: (H, W, 3) uint8 RGB, upright.

    `size=(H, W)` resizes the display picture to cover H x W (aspect ratio kept) and crops the center;
    None keeps the display size. Times before the first shown frame get the first, times at or after
    `info.end_time` raise VideoDecodeError, as does damaged frame data. A frame on screen at several
    times is yielded as the same (read-only) array each time.
    """
    av = _av()
    times = iter(times)
    target = next(times, None)
    if target is None:
        return
    out_height, out_width = size or (info.height, info.width)
    resized = resize_for_center_crop(info.height, info.width, out_height, out_width)
    top, left = (resized[0] - out_height) // 2, (resized[1] - out_width) // 2

    def shown(frame) -> np.ndarray:
        picture = _upright_rgb(frame, info, *resized)
        picture = np.ascontiguousarray(picture[top : top + out_height, left : left + out_width])
        picture.flags.writeable = False  # it may be yielded again for the next time
        return picture

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            # Seek to the key frame before the first time needed; if the demuxer lands past it, start over.
            seek = max(target, float(info.frame_times[0]))
            container.seek(int(seek / float(stream.time_base)), stream=stream, backward=True)
            frames = container.decode(stream)
            current = next(frames, None)
            if current is None or current.time > seek + TIME_EPS:
                container.seek(0, stream=stream)
                frames = container.decode(stream)
                current = next(frames, None)
            if current is None:
                raise VideoDecodeError("no frame decodes")
            picture = None  # `current` converted, made once however many times it is shown
            for following in frames:
                while target is not None and target < following.time - TIME_EPS:
                    picture = shown(current) if picture is None else picture
                    yield picture
                    target = next(times, None)
                if target is None:
                    return
                current, picture = following, None
            while target is not None and target < info.end_time - TIME_EPS:
                picture = shown(current) if picture is None else picture
                yield picture
                target = next(times, None)
    except av.FFmpegError as error:
        raise VideoDecodeError(f"{type(error).__name__}: {str(error).strip()[:200]}") from error
    if target is not None:
        raise VideoDecodeError(f"no frame on screen at {target:.3f} s: the video ends at {info.end_time:.3f} s")
