"""Continuing a real clip (issue 15, section 1): the streaming VAE encoder, the clip as chunks, the pipeline.

The tiny pipeline of tests/test_pipeline.py (its `pipe` fixture: memory opened), a clip of 2 chunks (21 frames at 32x32), 2 new
chunks. Continuing is checked against two references: the model's teacher-forcing forward on [clip chunks clean,
generated chunk noisy], and the same model generating the whole video in one call.
"""

import logging

import numpy as np
import PIL.Image
import pytest
import test_pipeline
import torch
from diffusers import AutoencoderKLWan
from diffusers.utils.torch_utils import randn_tensor
from test_pipeline import LACT_CONFIG, NEGATIVE, PROMPT, SIZE, K, call_kwargs, frames_for
from utils import assert_bitwise_equal, assert_rel_close
from video_clips import encode

from lact_video import interleave_teacher_forcing, interleave_timesteps
from lact_video.data.video_reader import probe_video, read_frames, resample_times
from lact_video.geometry import first_frame_of_chunk
from lact_video.tiny import VAE_CONFIG
from pipelines import LaCTVideoPipeline, WanStreamingEncoder
from pipelines import video_input as video_input_module

pipe = test_pipeline.pipe  # the module-scoped fixture: the tiny pipeline, memory opened
CLIP_CHUNKS, NEW_CHUNKS = 2, 2
NEW_FRAMES = 4 * K * NEW_CHUNKS  # continuing, num_frames counts the new frames: whole chunks of 4k


def clip_frames(num_frames: int = frames_for(CLIP_CHUNKS), seed: int = 0) -> np.ndarray:
    """(F, SIZE, SIZE, 3) uint8: smooth moving ramps (an H.264 file keeps them close), the same for a seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:SIZE, :SIZE] / SIZE
    frames = [
        np.stack(
            [np.sin(6 * x + 0.3 * i + c + rng.uniform(0, 0.1)) + np.cos(4 * y - 0.2 * i * c) for c in range(3)], -1
        )
        for i in range(num_frames)
    ]
    return ((np.stack(frames) + 2) / 4 * 255).round().astype(np.uint8)


def continue_kwargs(**overrides):
    return call_kwargs(num_frames=NEW_FRAMES, **overrides)


def test_streaming_encoder_equals_one_encode_of_the_whole_clip():
    torch.manual_seed(0)
    vae = AutoencoderKLWan(**VAE_CONFIG).eval()
    video = torch.rand(2, 3, frames_for(3), 32, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        full = vae.encode(video).latent_dist.mode()
        encoder = WanStreamingEncoder(vae)
        streamed = [encoder.encode(video[:, :, start:end]) for start, end in ((0, 9), (9, 21), (21, 33))]
        alone = vae.encode(video[:, :, 9:21]).latent_dist.mode()  # no cache: a chunk on its own is another clip
    assert [s.shape[2] for s in streamed] == [K] * 3
    assert_rel_close(torch.cat(streamed, dim=2), full, 1e-6, "streamed vs whole-clip encode")
    assert (alone - full[:, :, K : 2 * K]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="needs 4n frames, got 5"):
        encoder.encode(video[:, :, :5])


def denoiser_calls(pipe, **kwargs):
    """Run the pipeline and record every denoising forward: (input rows, timestep, output rows)."""
    calls = []

    def record(module, args, call_kwargs, output):
        if call_kwargs["mode"] == "denoise":
            calls.append((args[0].clone(), args[1].clone(), output[0].clone()))

    handle = pipe.transformer.register_forward_hook(record, with_kwargs=True)
    try:
        result = pipe(**kwargs).frames
    finally:
        handle.remove()
    return result, calls


def test_continuing_a_clip_equals_teacher_forcing_on_clip_and_continuation(pipe):
    """Every denoising forward of a generated chunk c equals the model's teacher-forcing output for the noisy
    copy of chunk c after the clean chunks [clip, generated chunks before c] (docs/design.md Sec. 3.8)."""
    g = torch.Generator().manual_seed(5)
    clip = randn_tensor((1, 16, CLIP_CHUNKS * K, 4, 4), generator=g)
    new, calls = denoiser_calls(pipe, **continue_kwargs(video_latents=clip, output_type="latent"))
    assert new.shape == (1, 16, NEW_CHUNKS * K, 4, 4)
    assert len(calls) == NEW_CHUNKS * 2  # 2 steps per chunk
    cond, uncond = pipe.encode_prompt(PROMPT, NEGATIVE, max_sequence_length=16)
    text = torch.cat([uncond, cond])  # the guidance rows [uncond, cond]
    clean = torch.cat([clip, new], dim=2).expand(2, -1, -1, -1, -1)
    for i, (noisy, t, expected) in enumerate(calls):
        c = CLIP_CHUNKS + i // 2  # the absolute chunk index
        frames = slice(c * K, (c + 1) * K)
        noisy_clip = clean[:, :, : (c + 1) * K].clone()  # earlier noisy copies are queries only: any value
        noisy_clip[:, :, frames] = noisy
        timesteps = torch.zeros(2, 1, c + 1)
        timesteps[:, 0, c] = t
        with torch.no_grad():
            sequence = interleave_teacher_forcing(noisy_clip[:, None], clean[:, :, : (c + 1) * K], K)
            out = pipe.transformer(sequence, interleave_timesteps(timesteps), text).sample[:, 0, :, frames]
        assert_rel_close(out, expected, 1e-5, f"chunk {c}, step {i % 2}")


def test_continuing_its_own_first_chunks_reproduces_a_video(pipe):
    """Chunks 0..1 of a 4-chunk video as the clip, the same noise for chunks 2..3: the same chunks 2..3, bit for
    bit, and with the clip in the output the same frames (the decoder's cache primed by the clip)."""
    g = torch.Generator().manual_seed(7)
    noise = randn_tensor((1, 16, 4 * K, 4, 4), generator=g)
    full = pipe(**call_kwargs(num_frames=frames_for(4), latents=noise, output_type="latent")).frames
    clip, rest = full[:, :, : CLIP_CHUNKS * K], noise[:, :, CLIP_CHUNKS * K :]
    new = pipe(**continue_kwargs(video_latents=clip, latents=rest, output_type="latent")).frames
    assert_bitwise_equal(new, full[:, :, CLIP_CHUNKS * K :])

    frames = pipe(**call_kwargs(num_frames=frames_for(4), latents=noise)).frames
    with_clip = pipe(**continue_kwargs(video_latents=clip, latents=rest, return_input_video=True)).frames
    without = pipe(**continue_kwargs(video_latents=clip, latents=rest)).frames
    assert with_clip.shape == frames.shape == (1, frames_for(4), SIZE, SIZE, 3)
    np.testing.assert_array_equal(with_clip, frames)
    np.testing.assert_array_equal(without, frames[:, frames_for(CLIP_CHUNKS) :])  # no seam: cache primed


def test_output_includes_the_clip_only_when_asked(pipe):
    clip = clip_frames()
    chunks = list(pipe.stream(**continue_kwargs(video=clip, return_input_video=True)))
    assert [c.shape[1] for c in chunks] == [4 * K - 3, 4 * K, 4 * K, 4 * K]
    streamed = np.concatenate(chunks, axis=1)
    latents = pipe(**continue_kwargs(video=clip, return_input_video=True, output_type="latent")).frames
    assert latents.shape[2] == (CLIP_CHUNKS + NEW_CHUNKS) * K
    np.testing.assert_array_equal(streamed, pipe.decode_latents(latents))  # the clip as the VAE decodes it
    without = pipe(**continue_kwargs(video=clip)).frames
    assert without.shape == (1, NEW_FRAMES, SIZE, SIZE, 3)
    np.testing.assert_array_equal(without, streamed[:, frames_for(CLIP_CHUNKS) :])


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    """A lossless H.264 file of `clip_frames()` at 16 fps, and the frames the reader gives for it at 16 fps."""
    path = encode(tmp_path_factory.mktemp("clip") / "clip.mp4", clip_frames(), 16)
    info = probe_video(path)
    return path, np.stack(list(read_frames(path, resample_times(info, 16), info, (SIZE, SIZE))))


def test_every_input_kind_gives_the_same_continuation(pipe, clip_file):
    path, frames = clip_file
    assert frames.shape == (frames_for(CLIP_CHUNKS), SIZE, SIZE, 3)
    unit = frames.astype(np.float32) / 255
    kinds = {
        "file": str(path),
        "np-uint8": frames,
        "np-float": unit,
        "np-batch": unit[None],
        "pt-unit": torch.from_numpy(unit).permute(0, 3, 1, 2),
        "pt-symmetric": torch.from_numpy(unit).permute(0, 3, 1, 2)[None] * 2 - 1,
        "pil": [PIL.Image.fromarray(frame) for frame in frames],
    }
    outputs = {
        name: pipe(**continue_kwargs(video=video, return_input_video=True, output_type="latent")).frames
        for name, video in kinds.items()
    }
    reference = outputs["np-uint8"]
    for name, latents in outputs.items():
        torch.testing.assert_close(latents, reference, rtol=0, atol=0, msg=name)
    clip_latents = reference[:, :, : CLIP_CHUNKS * K]
    from_latents = pipe(**continue_kwargs(video_latents=clip_latents, output_type="latent")).frames
    assert_bitwise_equal(from_latents, reference[:, :, CLIP_CHUNKS * K :])
    # The ingested latents are the VAE's encoding of the whole clip at once.
    with torch.no_grad():
        pixels = torch.from_numpy(unit).permute(3, 0, 1, 2)[None] * 2 - 1
        whole = pipe.vae.encode(pixels).latent_dist.mode()
    assert_rel_close(clip_latents, whole, 1e-6, "ingested vs vae.encode")


def test_a_file_is_read_one_chunk_at_a_time(clip_file, monkeypatch):
    path, _ = clip_file
    taken = []

    def counting_read_frames(*args, **kwargs):
        for frame in read_frames(*args, **kwargs):
            taken.append(frame)
            yield frame

    monkeypatch.setattr(video_input_module, "read_frames", counting_read_frames)
    chunks = video_input_module.open_video(
        str(path), None, (SIZE, SIZE), 16, chunk_frames=K, latent_channels=16, temporal_factor=4, spatial_factor=8,
    )  # fmt: skip
    assert (chunks.num_chunks, chunks.num_frames) == (CLIP_CHUNKS, frames_for(CLIP_CHUNKS))
    assert not taken  # opening only probes the file
    pixels = chunks._chunks()
    assert next(pixels).shape == (1, 3, 4 * K - 3, SIZE, SIZE) and len(taken) == 4 * K - 3
    assert next(pixels).shape == (1, 3, 4 * K, SIZE, SIZE) and len(taken) == frames_for(2)


def test_frames_of_another_size_are_resized_to_cover_and_center_cropped(pipe):
    """A 32x48 clip at 32x32: the scale that covers is 1, so the picture is the middle 32 columns, exactly."""
    wide = np.concatenate([clip_frames(seed=1)[:, :, :8], clip_frames(), clip_frames(seed=2)[:, :, -8:]], axis=2)
    assert wide.shape[1:] == (SIZE, SIZE + 16, 3)
    from_wide = pipe(**continue_kwargs(video=wide, output_type="latent")).frames
    assert_bitwise_equal(from_wide, pipe(**continue_kwargs(video=clip_frames(), output_type="latent")).frames)


def test_one_clip_serves_every_prompt(pipe):
    prompts, seeds = [PROMPT, "waves crash on the rocks under a cloudy sky"], [3, 4]
    batch = pipe(
        **continue_kwargs(
            prompt=prompts,
            negative_prompt=[NEGATIVE] * 2,
            video=clip_frames(),
            generator=[torch.Generator().manual_seed(s) for s in seeds],
            output_type="latent",
        )
    ).frames
    for row, (prompt, seed) in enumerate(zip(prompts, seeds)):
        alone = pipe(
            **continue_kwargs(
                prompt=prompt, video=clip_frames(), generator=torch.Generator().manual_seed(seed), output_type="latent"
            )
        ).frames
        assert_rel_close(batch[row : row + 1], alone, 1e-5, f"video {row}")


def test_frames_past_whole_chunks_are_dropped_with_a_warning(pipe, caplog):
    clip = clip_frames(frames_for(CLIP_CHUNKS) + 5)
    with caplog.at_level(logging.WARNING):
        longer = pipe(**continue_kwargs(video=clip, output_type="latent")).frames
    assert "continuing from the first 21 frames (2 chunks); the last 5 frames are dropped" in caplog.text
    exact = pipe(**continue_kwargs(video=clip[: frames_for(CLIP_CHUNKS)], output_type="latent")).frames
    assert_bitwise_equal(longer, exact)


def test_new_frames_round_down_to_whole_chunks(pipe, caplog):
    with caplog.at_level(logging.WARNING):
        new = pipe(**call_kwargs(video=clip_frames(), num_frames=NEW_FRAMES + 5, output_type="latent")).frames
    assert new.shape[2] == NEW_CHUNKS * K
    assert (
        f"num_frames={NEW_FRAMES + 5} counts the new frames only, after the 2 chunks before this call" in caplog.text
    )
    assert f"generating num_frames={NEW_FRAMES} ({NEW_CHUNKS} chunks) instead" in caplog.text


@pytest.mark.parametrize(
    "overrides, match",
    [
        pytest.param(dict(video=clip_frames(8)), "at least 9 frames", id="shorter-than-a-chunk"),
        pytest.param(
            dict(video=clip_frames(), video_latents=torch.zeros(1, 16, 3, 4, 4)), "either as `video`", id="both"
        ),
        pytest.param(dict(video=np.zeros((9, SIZE, SIZE))), r"np \(F, H, W, 3\)", id="not-rgb"),
        pytest.param(dict(video="no/such/clip.mp4"), "no video file at no/such/clip.mp4", id="missing-file"),
        pytest.param(dict(video_latents=torch.zeros(1, 16, 4, 4, 4)), "multiple of chunk_frames=3", id="latent-len"),
        pytest.param(dict(video_latents=torch.zeros(1, 16, 3, 8, 8)), r"\(B, 16, F, 4, 4\)", id="latent-size"),
        pytest.param(
            dict(prompt=[PROMPT] * 3, negative_prompt=[NEGATIVE] * 3, video=np.zeros((2, 9, SIZE, SIZE, 3))),
            "2 rows for 3 prompts",
            id="clip-rows",
        ),
    ],
)
def test_bad_clips_raise_clear_errors(pipe, overrides, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        pipe(**continue_kwargs(**overrides))


def test_a_short_file_names_the_frames_needed(pipe, tmp_path):
    path = encode(tmp_path / "short.mp4", clip_frames(6), 16)
    with pytest.raises(ValueError, match=r"gives 6 frames at fps=16 .* at least 9 frames"):
        pipe(**continue_kwargs(video=str(path)))


def test_a_clip_past_the_rotary_table_fails_before_any_work_unless_the_policy_is_bounded(tiny_wan_dir):
    """A table of 3 chunks: absolute positions (trained_chunks unknown) refuse 2 clip + 2 new chunks before the VAE
    or the transformer runs, naming the policy that lifts the limit; cyclic with trained_chunks=2 runs them."""
    small = LaCTVideoPipeline.from_wan(tiny_wan_dir, rope_max_seq_len=3 * K, **LACT_CONFIG)
    small.set_progress_bar_config(disable=True)
    calls = []
    small.vae.encoder.register_forward_pre_hook(lambda *args: calls.append(1))
    small.transformer.register_forward_pre_hook(lambda *args: calls.append(1))
    with pytest.raises(ValueError, match="needs 12 latent frames .* the 2 chunks before this call") as info:
        small(**continue_kwargs(video=clip_frames()))
    message = str(info.value)
    assert "(trained_chunks unknown, so absolute positions)" in message
    assert "bounded position_policy ('clamp' or 'cyclic', with trained_chunks)" in message
    assert not calls
    assert small(**call_kwargs(video=clip_frames(), num_frames=4 * K, output_type="latent")).frames.shape[2] == K
    bounded = LaCTVideoPipeline.from_wan(
        tiny_wan_dir, rope_max_seq_len=3 * K, position_policy="cyclic", trained_chunks=2, **LACT_CONFIG
    )
    bounded.set_progress_bar_config(disable=True)
    latents = bounded(**continue_kwargs(video=clip_frames(), output_type="latent")).frames
    assert latents.shape[2] == NEW_CHUNKS * K


@pytest.mark.parametrize("switch_chunk", [1, 3], ids=["inside-the-clip", "after-the-clip"])
def test_a_prompt_schedule_counts_from_the_clips_first_frame(pipe, switch_chunk):
    """The clip's chunks are the video's chunks 0, 1 (contract rule 1): a 4-chunk video made in one call with a
    schedule, its first 2 chunks as the clip, gives its chunks 2, 3 bit for bit (each clip chunk committed with the
    entry in force at it). Switching at chunk 3, chunk 2 is bit for bit that of the video without the switch, and
    chunk 3 differs from it."""
    schedule = {0: PROMPT, first_frame_of_chunk(switch_chunk, K): "waves crash on the rocks under a cloudy sky"}
    noise = randn_tensor((1, 16, 4 * K, 4, 4), generator=torch.Generator().manual_seed(11))
    full = pipe(**call_kwargs(prompt=schedule, num_frames=frames_for(4), latents=noise, output_type="latent")).frames
    clip, rest = full[:, :, : CLIP_CHUNKS * K], noise[:, :, CLIP_CHUNKS * K :]
    new = pipe(**continue_kwargs(prompt=schedule, video_latents=clip, latents=rest, output_type="latent")).frames
    assert_bitwise_equal(new, full[:, :, CLIP_CHUNKS * K :])
    unswitched = pipe(**continue_kwargs(video_latents=clip, latents=rest, output_type="latent")).frames
    if switch_chunk == 3:
        assert_bitwise_equal(new[:, :, :K], unswitched[:, :, :K])
    assert (new[:, :, -K:] - unswitched[:, :, -K:]).abs().max() > 1e-3


def test_a_clip_with_return_state_goes_on_like_one_call(pipe):
    """Clip + 1 new chunk with return_state, then state= for 1 more: the frames (and the noise, from the saved
    generator) of clip + 2 new chunks in one call. The state counts the clip's chunks."""
    clip = clip_frames()
    one_call = pipe(**continue_kwargs(video=clip, generator=torch.Generator().manual_seed(2))).frames
    first = pipe(
        **call_kwargs(video=clip, num_frames=4 * K, generator=torch.Generator().manual_seed(2), return_state=True)
    )
    assert first.state.next_chunk == CLIP_CHUNKS + 1
    rest = pipe(**call_kwargs(num_frames=4 * K, state=first.state, generator=None)).frames  # the saved one
    np.testing.assert_array_equal(np.concatenate([first.frames, rest], axis=1), one_call)
    chunks = list(pipe.stream(**continue_kwargs(video=clip, return_input_video=True, return_state=True)))
    assert [chunk.state.next_chunk for chunk in chunks] == [1, 2, 3, 4]


def test_a_clip_with_a_state_is_refused(pipe):
    state = pipe(**call_kwargs(num_frames=frames_for(1), output_type="latent", return_state=True)).state
    with pytest.raises(ValueError, match="pass one of them. To continue a clip and go on later"):
        pipe(**continue_kwargs(video=clip_frames(), state=state, output_type="latent"))


@pytest.mark.parametrize("how", ["same-path", "symlink", "relative", "hard-link", "partial-name"])
def test_writing_over_the_clip_to_continue_is_refused_before_any_work(pipe, clip_file, tmp_path, monkeypatch, how):
    """`output_path` naming the `video` file (itself, through a symlink, a relative path or a hard link, or as the
    partial file the writer writes first) is refused before any step, naming both and the fix; nothing is written."""
    data = clip_file[0].read_bytes()
    for name in ("clip.mp4", "v.partial.mp4"):
        (tmp_path / name).write_bytes(data)
    (tmp_path / "link.mp4").symlink_to(tmp_path / "clip.mp4")
    (tmp_path / "hard.mp4").hardlink_to(tmp_path / "clip.mp4")
    before = sorted(p.name for p in tmp_path.iterdir())
    monkeypatch.chdir(tmp_path)
    video, output = {
        "same-path": (tmp_path / "clip.mp4", tmp_path / "clip.mp4"),
        "symlink": (tmp_path / "clip.mp4", tmp_path / "link.mp4"),
        "relative": (str(tmp_path / "clip.mp4"), "clip.mp4"),
        "hard-link": ("clip.mp4", "hard.mp4"),
        "partial-name": (tmp_path / "v.partial.mp4", "v.mp4"),
    }[how]
    steps = []
    with pytest.raises(ValueError) as refused:
        pipe(**continue_kwargs(video=video, output_path=output,
                               callback_on_step_end=lambda p, i, t, kw: steps.append(i) or {}))  # fmt: skip
    assert f"`output_path` {output} would overwrite the clip to continue, `video` {video} " in str(refused.value)
    assert str(refused.value).endswith("Choose another `output_path`.")
    assert steps == [] and sorted(p.name for p in tmp_path.iterdir()) == before
    assert all((tmp_path / name).read_bytes() == data for name in ("clip.mp4", "v.partial.mp4"))


def test_generate_script_continues_a_clip_file(tiny_wan_dir, clip_file, tmp_path, capsys):
    """`--video` reaches the pipeline: the file holds the new frames, or the clip's and the new ones with
    `--return_input_video`; contradicting flags are refused before any model loads."""
    from pipelines import generate as generate_module

    clip, _ = clip_file
    args = ["--model", str(tiny_wan_dir), "--from_wan", "--lact", "fw_head_dim=12", "--lact", f"chunk_frames={K}",
            "--prompt", PROMPT, "--video", str(clip), "--num_frames", str(NEW_FRAMES), "--height", str(SIZE),
            "--width", str(SIZE), "--steps", "1", "--max_sequence_length", "8"]  # fmt: skip
    for flags, frames in {(): NEW_FRAMES, ("--return_input_video",): frames_for(CLIP_CHUNKS) + NEW_FRAMES}.items():
        output = tmp_path / f"out{len(flags)}.mp4"
        generate_module.main([*args, *flags, "--output", str(output)])
        assert len(probe_video(output).frame_times) == frames
    link = tmp_path / "link.mp4"
    link.symlink_to(clip)
    bad = [
        (["--resume_state", str(tmp_path / "s.safetensors")], "--video starts a video from a clip"),
        (["--video", str(tmp_path / "missing.mp4")], "missing.mp4: no such file"),
        (["--output", str(link)], "--video and --output name the same file"),  # would empty the clip
        (["--save_state", str(tmp_path / "out0.mp4")], "--output and --save_state name the same file"),
        (["--save_state", str(tmp_path / "folder.safetensors")], "is a folder: give a file name"),
        (["--save_state", str(tmp_path / "s.pt")], "a state file is safetensors; name it"),
    ]
    (tmp_path / "folder.safetensors").mkdir()
    before = clip.read_bytes()
    for extra, message in bad:
        with pytest.raises(SystemExit) as exit_info:
            generate_module.main([*args, "--output", str(tmp_path / "out0.mp4"), *extra])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert clip.read_bytes() == before
    with pytest.raises(SystemExit):
        generate_module.main(["--model", "m", "--prompt", PROMPT, "--return_input_video"])
    assert "give --video too" in capsys.readouterr().err
