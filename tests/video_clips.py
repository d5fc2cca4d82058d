"""Awkward but valid video files, written with the ffmpeg that imageio-ffmpeg bundles, and what a player shows of them.

Every source frame has the same picture but for its green level: red rises across the coded width, blue
down the coded height (so a frame's orientation and its horizontal stretch show in its pixels) and
green is `GREEN_STEP * i` for source frame i (so the frame a reader returns names its source frame).
Each `Clip` records the frames a player shows, with their times, and how it shows them (rotation,
sample aspect ratio), worked out from the ffmpeg arguments, not read back from the file.
"""

from __future__ import annotations

import dataclasses
import fractions
import pathlib
import subprocess

import numpy as np
import torch

GREEN_STEP = 12
SIZE = (32, 48)  # coded (height, width) unless a clip says otherwise: not square, so turns show in the shape


def source_frames(num_frames: int, height: int = SIZE[0], width: int = SIZE[1]) -> np.ndarray:
    """(num_frames, height, width, 3) uint8: red ramp across, blue ramp down, green = 12 i."""
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    frames[..., 0] = np.linspace(0, 255, width).round().astype(np.uint8)[None, None]
    frames[..., 2] = np.linspace(0, 255, height).round().astype(np.uint8)[None, :, None]
    frames[..., 1] = (GREEN_STEP * np.arange(num_frames))[:, None, None]
    return frames


def ffmpeg(*args) -> None:
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", *map(str, args)], check=True)


def encode(path: pathlib.Path, frames: np.ndarray, rate: float, *options: str, codec: str = "libx264") -> pathlib.Path:
    """Encode raw RGB frames (lossless H.264 by default) given at `rate` fps; `options` are output options."""
    import imageio_ffmpeg

    _, height, width, _ = frames.shape
    lossless = ["-qp", "0"] if codec == "libx264" else ["-lossless", "1"]
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24"]
    command += ["-s", f"{width}x{height}", "-r", str(rate), "-i", "-", "-c:v", codec, *lossless, *options, str(path)]
    subprocess.run(command, input=frames.tobytes(), check=True)
    return path


@dataclasses.dataclass
class Clip:
    """A generated file and what a player shows of it."""

    path: pathlib.Path
    frames: np.ndarray  # (N, h, w, 3) the source frames, coded orientation
    shown: list[int]  # source index of each shown frame, in order
    times: list[float]  # their presentation times in seconds
    end_time: float  # when the last shown frame leaves the screen
    rotation: int = 0  # degrees counterclockwise
    sar: fractions.Fraction = fractions.Fraction(1)

    @property
    def display_size(self) -> tuple[int, int]:
        height, width = self.frames.shape[1], round(self.frames.shape[2] * self.sar)
        return (width, height) if self.rotation % 180 else (height, width)

    def on_screen(self, times) -> list[int]:
        """Source index of the frame on screen at each time (the last one that started by then)."""
        starts = np.asarray(self.times)
        return [self.shown[max(0, int(np.searchsorted(starts, t + 1e-9, side="right")) - 1)] for t in times]

    def expected_picture(self, source_index: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """Source frame `source_index` as a player shows it, resized to cover `size` and center-cropped: (H, W, 3) float."""
        picture = torch.from_numpy(self.frames[source_index]).permute(2, 0, 1)[None].double()  # (1, 3, h, w)
        display = self.display_size
        unturned = display[::-1] if self.rotation % 180 else display
        if size is not None:
            scale = max(size[0] / display[0], size[1] / display[1])
            display = (max(size[0], round(display[0] * scale)), max(size[1], round(display[1] * scale)))
            unturned = display[::-1] if self.rotation % 180 else display
        picture = torch.nn.functional.interpolate(picture, size=unturned, mode="bilinear", antialias=True)
        picture = torch.rot90(picture[0].permute(1, 2, 0), self.rotation // 90, dims=(0, 1))  # counterclockwise
        if size is not None:
            top, left = (display[0] - size[0]) // 2, (display[1] - size[1]) // 2
            picture = picture[top : top + size[0], left : left + size[1]]
        return picture.numpy()


def constant_rate_times(count: int, fps: float, first: int = 0) -> dict:
    return {
        "shown": list(range(first, first + count)),
        "times": [i / fps for i in range(count)],
        "end_time": count / fps,
    }


def make_clips(folder: pathlib.Path) -> dict[str, Clip]:
    """The awkward set, about 20 small files (a second or two to write)."""
    folder.mkdir(parents=True, exist_ok=True)
    clips = {}

    def vfr(name: str, num_frames: int, pts: str, timescale: int, ticks: list[int], end: int, *options: str):
        frames = source_frames(num_frames)
        path = encode(folder / name, frames, timescale, "-vf", f"setpts={pts}", "-fps_mode", "vfr", *options)
        clips[name] = Clip(path, frames, list(range(num_frames)), [t / timescale for t in ticks], end / timescale)

    # Variable frame rate: the times, not index / average fps, place the frames.
    ticks = [n if n < 8 else 8 + 4 * (n - 8) for n in range(16)]  # 8 frames of 1/32 s, then 8 of 1/8 s
    vfr("vfr_fast_then_slow.mp4", 16, r"if(lt(N\,8)\,N\,8+4*(N-8))/(32*TB)", 32, ticks, ticks[-1] + 4,
        "-video_track_timescale", "32")  # fmt: skip
    ticks = [33 * n + (7 * n) % 5 for n in range(20)]  # a phone's jittery 30 fps, in ms
    vfr("vfr_jitter.mkv", 20, r"(N*33+mod(N*7\,5))/(1000*TB)", 1000, ticks, ticks[-1] + 33)
    ticks = [n + 3 * (n >= 6) for n in range(14)]  # 16 fps with three frames dropped after frame 5
    vfr(
        "vfr_dropped_frames.mp4",
        14,
        r"(N+3*gte(N\,6))/(16*TB)",
        16,
        ticks,
        ticks[-1] + 1,
        "-video_track_timescale",
        "16",
    )

    # Stream-copy cuts: the pre-roll frames before the edit point are in the file, a player skips them.
    gop = source_frames(32)
    encode(folder / "gop32.mp4", gop, 16, "-g", "32", "-bf", "0")
    encode(folder / "gop32_bframes.mp4", gop, 16, "-g", "32", "-bf", "2")
    for name, source, start, count in [
        ("cut_mid_gop.mp4", "gop32.mp4", 8, 12),
        ("cut_bframes.mp4", "gop32_bframes.mp4", 8, 12),
        ("cut_mid_gop.mov", "gop32.mp4", 5, 10),
    ]:
        ffmpeg("-ss", start / 16, "-i", folder / source, "-t", count / 16, "-c", "copy", folder / name)
        clips[name] = Clip(folder / name, gop, **constant_rate_times(count, 16, first=start))

    # Non-square pixels: the display width is the coded width times the sample aspect ratio.
    for name, size, sar in [("sar_2_1.mp4", (32, 32), 2), ("sar_1_2.mp4", (32, 32), fractions.Fraction(1, 2)),
                            ("sar_4_3.mp4", (32, 48), fractions.Fraction(4, 3))]:  # fmt: skip
        frames = source_frames(12, *size)
        encode(folder / name, frames, 16, "-vf", f"setsar={sar.numerator}/{sar.denominator}")
        clips[name] = Clip(folder / name, frames, **constant_rate_times(12, 16), sar=fractions.Fraction(sar))

    # Rotation in the display matrix (phones record this way); the last one is anamorphic too.
    upright = source_frames(12)
    encode(folder / "upright.mp4", upright, 16, "-g", "4")
    for rotation in (90, 180, 270):
        name = f"rotate_{rotation}.mp4"
        ffmpeg("-display_rotation", rotation, "-i", folder / "upright.mp4", "-c", "copy", folder / name)
        clips[name] = Clip(folder / name, upright, **constant_rate_times(12, 16), rotation=rotation)
    anamorphic = source_frames(12, 32, 32)
    encode(folder / "sar_2_1_upright.mp4", anamorphic, 16, "-vf", "setsar=2/1")
    ffmpeg(
        "-display_rotation", 90, "-i", folder / "sar_2_1_upright.mp4", "-c", "copy", folder / "rotate_90_sar_2_1.mp4"
    )
    clips["rotate_90_sar_2_1.mp4"] = Clip(
        folder / "rotate_90_sar_2_1.mp4",
        anamorphic,
        **constant_rate_times(12, 16),
        rotation=90,
        sar=fractions.Fraction(2),
    )

    # Colour range: full-range (0-255) and limited-range (16-235) samples must both come back as the source RGB.
    full = source_frames(12)
    for name, options, codec in [
        ("range_full.mp4", ["-vf", "scale=out_range=full", "-color_range", "pc", "-pix_fmt", "yuv420p"], "libx264"),
        ("range_full_444.webm", ["-vf", "scale=out_range=full", "-color_range", "pc", "-pix_fmt", "yuv444p"], "libvpx-vp9"),
        ("range_limited.mp4", ["-color_range", "tv", "-pix_fmt", "yuv420p"], "libx264"),
    ]:  # fmt: skip
        encode(folder / name, full, 16, *options, codec=codec)
        clips[name] = Clip(folder / name, full, **constant_rate_times(12, 16))

    # A stream that does not start at 0 (MPEG-TS starts at 1.4 s): times count from the first shown frame.
    encode(folder / "offset_start.ts", source_frames(12), 16, "-pix_fmt", "yuv420p")
    clips["offset_start.ts"] = Clip(folder / "offset_start.ts", source_frames(12), **constant_rate_times(12, 16))
    return clips
