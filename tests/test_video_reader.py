"""The video reader on awkward but valid files (tests/video_clips.py): it returns what a player shows.

Each file's expected frames are worked out from how it was made: which source frame is on screen at
each time, and how it is turned and stretched. A frame is checked by its pixels against that source
frame (its green level names the frame, its red and blue ramps show orientation and stretch).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging

import numpy as np
import pytest
from video_clips import GREEN_STEP, encode, source_frames

from lact_video.data import DataConfig, VideoFolderDataset, probe_video, read_frames, resample_times
from lact_video.data.video_reader import VideoDecodeError, latest_start

pytest.importorskip("av")
pytest.importorskip("imageio_ffmpeg")

# Mean absolute error (0-255) allowed between a returned frame and its expected picture: lossless
# 4:2:0 chroma and two different scalers stay under 4; the wrong frame, turn or stretch is 12 or more.
TOLERANCE = 4.0
VFR = {"vfr_fast_then_slow.mp4", "vfr_jitter.mkv", "vfr_dropped_frames.mp4"}
CUTS = {"cut_mid_gop.mp4", "cut_bframes.mp4", "cut_mid_gop.mov"}
SAR = {"sar_2_1.mp4", "sar_1_2.mp4", "sar_4_3.mp4", "rotate_90_sar_2_1.mp4"}
ROTATED = {"rotate_90.mp4", "rotate_180.mp4", "rotate_270.mp4", "rotate_90_sar_2_1.mp4"}
RANGE = {"range_full.mp4", "range_full_444.webm", "range_limited.mp4"}
NAMES = sorted(VFR | CUTS | SAR | ROTATED | RANGE | {"offset_start.ts"})


@pytest.fixture(scope="session")
def clips(tmp_path_factory):
    from video_clips import make_clips

    return make_clips(tmp_path_factory.mktemp("awkward"))


def assert_pictures(actual: np.ndarray, clip, source_indices: list[int], size=None) -> None:
    """Each frame of `actual` (T, H, W, 3) is the expected picture of its source frame."""
    assert actual.dtype == np.uint8
    for frame, index in zip(actual, source_indices, strict=True):
        expected = clip.expected_picture(index, size)
        assert frame.shape == expected.shape
        error = np.abs(frame.astype(np.float64) - expected).mean()
        assert error < TOLERANCE, f"{clip.path.name}: frame for source {index} is off by {error:.1f} on average"


@pytest.mark.parametrize("name", NAMES)
def test_probe_counts_the_frames_a_player_shows_with_their_times(clips, name):
    clip = clips[name]
    info = probe_video(clip.path)
    assert info.num_frames == len(clip.shown)
    np.testing.assert_allclose(info.frame_times - info.frame_times[0], clip.times, atol=1e-3)
    assert (info.height, info.width, info.rotation) == (*clip.display_size, clip.rotation)
    assert info.sample_aspect_ratio == clip.sar
    if name not in VFR:  # a VFR file's last frame lasts what its muxer wrote; a constant rate one lasts 1/16 s
        assert info.end_time - info.frame_times[0] == pytest.approx(clip.end_time, abs=1e-3)
    assert info.end_time > info.frame_times[-1]


@pytest.mark.parametrize("name", NAMES)
def test_frames_at_target_times_are_the_frames_on_screen(clips, name):
    clip = clips[name]
    info = probe_video(clip.path)
    times = resample_times(info, fps=20.0)  # not a multiple of any source rate
    assert times[-1] < info.end_time and times[-1] + 1 / 20 >= info.end_time - 1e-3
    frames = np.stack(list(read_frames(clip.path, times, info)))  # (T, h, w, 3) at the display size
    assert frames.shape == (len(times), *clip.display_size, 3)
    assert_pictures(frames, clip, clip.on_screen(times - info.frame_times[0]))


@pytest.mark.parametrize("name", sorted(SAR | ROTATED | {"cut_bframes.mp4", "vfr_jitter.mkv"}))
def test_frames_resized_and_cropped_like_training_data(clips, name):
    clip = clips[name]
    info = probe_video(clip.path)
    times = resample_times(info, fps=16.0, num_frames=5)
    frames = np.stack(list(read_frames(clip.path, times, info, size=(16, 32))))
    assert frames.shape == (5, 16, 32, 3)
    assert_pictures(frames, clip, clip.on_screen(times - info.frame_times[0]), size=(16, 32))


@pytest.mark.parametrize("name", ["rotate_90.mp4", "cut_bframes.mp4", "vfr_dropped_frames.mp4"])
def test_seeking_and_chunks_give_the_frames_of_one_pass(clips, name):
    """A read that starts mid-file seeks; a read taken in chunks holds one chunk; both match one full pass."""
    clip = clips[name]
    info = probe_video(clip.path)
    times = resample_times(info, fps=24.0)
    full = list(read_frames(clip.path, times, info))
    for start in (3, len(times) // 2, len(times) - 1):
        part = list(read_frames(clip.path, times[start:], info))
        np.testing.assert_array_equal(np.stack(part), np.stack(full[start:]))
    frames = read_frames(clip.path, times, info)
    chunks = list(iter(lambda: list(itertools.islice(frames, 4)), []))
    assert [len(chunk) for chunk in chunks[:-1]] == [4] * (len(chunks) - 1)
    np.testing.assert_array_equal(np.concatenate(chunks), np.stack(full))


def test_reading_past_the_end_is_an_error(clips):
    clip = clips["cut_mid_gop.mp4"]
    info = probe_video(clip.path)
    with pytest.raises(VideoDecodeError, match=r"no frame on screen at 0\.750 s: the video ends at 0\.750 s"):
        list(read_frames(clip.path, [0.0, info.end_time], info))


def test_latest_start_fits_the_clip_before_the_end(clips):
    info = probe_video(clips["cut_mid_gop.mp4"].path)  # 12 frames at 16 fps: 0.75 s
    assert latest_start(info, num_frames=9, fps=16.0) == 3  # frames 0-3 start a 0.5 s clip ending before 0.75 s
    assert latest_start(info, num_frames=12, fps=16.0) == 0
    assert latest_start(info, num_frames=13, fps=16.0) == -1


def test_training_clips_from_awkward_files(clips, caplog):
    """VideoFolderDataset over the whole set: every clip is the frames on screen at t_start + i / 16, as shown."""
    folder = next(iter(clips.values())).path.parent
    names = [name for name in NAMES if name != "offset_start.ts"] + ["offset_start.ts"]
    (folder / "metadata.jsonl").write_text("".join(f'{{"file_name": "{n}", "text": "{n}"}}\n' for n in names))
    config = DataConfig(height=32, width=32, num_frames=9, fps=16.0, chunk_frames=3, random_start=False)
    with caplog.at_level(logging.WARNING, logger="lact_video.data"):
        dataset = VideoFolderDataset(folder, config)
    assert not dataset.skipped and [entry.file_name for entry in dataset.entries] == names
    times = np.arange(9) / 16
    for index, name in enumerate(names):
        clip = clips[name]
        pixels = dataset[index]["pixel_values"]  # (3, 9, 32, 32) in [-1, 1]
        assert pixels.shape == (3, 9, 32, 32)
        frames = ((pixels.permute(1, 2, 3, 0) + 1) * 127.5).round().byte().numpy()
        assert_pictures(frames, clip, clip.on_screen(times), size=(32, 32))

    random = VideoFolderDataset(folder, dataclasses.replace(config, random_start=True, seed=1))
    index = names.index("cut_mid_gop.mp4")  # 12 shown frames: a 9-frame clip can start at frames 0-3
    starts = {random.start_frame(index)} | {
        (random.set_epoch(epoch), random.start_frame(index))[1] for epoch in range(8)
    }
    assert starts <= {0, 1, 2, 3} and len(starts) > 1
    start = random.start_frame(index)
    frames = ((random[index]["pixel_values"][1].mean(dim=(1, 2)) + 1) * 127.5 / GREEN_STEP).round().int().tolist()
    assert frames == [8 + start + i for i in range(9)]  # the cut's first shown frame is source frame 8


def test_files_without_frames_to_show(tmp_path):
    audio = tmp_path / "audio.m4a"
    from video_clips import ffmpeg

    ffmpeg("-f", "lavfi", "-i", "sine=duration=0.2", "-c:a", "aac", audio)
    with pytest.raises(VideoDecodeError, match="no video stream"):
        probe_video(audio)
    encode(tmp_path / "clip.mp4", source_frames(4), 16)
    info = probe_video(tmp_path / "clip.mp4")
    assert info.num_frames == 4 and list(read_frames(tmp_path / "clip.mp4", [], info)) == []
