"""What callers feed LaCTVideoPipeline (issue 13): embeddings however supplied (Kind C), output files (Kind D),
and diffusers' conventions (`None` components, output tuples, loading keywords).

Kind C: precomputed embeddings must get the rows and the length that encoded prompts get, so both guidance
branches batch as rows of one forward (`br05`). Kind D: the output container is checked before the first step,
encoded with a codec it takes, read back, and nothing generated is lost when ffmpeg fails (`br08`).
"""

import inspect
import re
import stat

import decord
import imageio_ffmpeg
import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from lact_video import LaCTWanTransformer3DModel
from lact_video.geometry import video_num_frames
from lact_video.sequence import interleave_teacher_forcing, interleave_timesteps
from pipelines import LaCTVideoPipeline, VideoWriteError, WrittenVideo, pipeline_lact_video, streaming
from pipelines import generate as generate_module

SIZE, K = 32, 2  # 4x4 latents; chunk_frames
PROMPTS = ["a red car", "a cat walks"]
NEGATIVE = "blurry"


def frames_for(num_chunks: int) -> int:
    return video_num_frames(K * num_chunks, 4)


# Latents out unless a test asks for frames: they need no VAE decoding.
CALL = dict(height=SIZE, width=SIZE, num_frames=frames_for(2), num_inference_steps=2, guidance_scale=5.0)


def call_kwargs(**overrides):
    return {**CALL, "max_sequence_length": 16, "output_type": "latent", **overrides}


def generators(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.fixture(scope="module")
def pipe(tiny_wan_dir):
    pipe = LaCTVideoPipeline.from_wan(tiny_wan_dir, chunk_frames=K, fw_head_dim=12)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# Kind C: embeddings however supplied


@pytest.mark.parametrize("guidance_scale", [5.0, 1.0], ids=["cfg", "no-cfg"])
def test_embeddings_with_videos_per_prompt_equal_prompt_strings(pipe, guidance_scale):
    """br05: `prompt_embeds` (+ `negative_prompt_embeds`) with num_videos_per_prompt=2 give the two videos that
    the same prompt as a string gives (the old code failed in the batched forward)."""
    cond, uncond = pipe.encode_prompt(PROMPTS[0], NEGATIVE, max_sequence_length=16)
    kwargs = call_kwargs(num_videos_per_prompt=2, guidance_scale=guidance_scale)
    from_strings = pipe(prompt=PROMPTS[0], negative_prompt=NEGATIVE, generator=generators(0, 1), **kwargs).frames
    from_embeds = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, generator=generators(0, 1), **kwargs).frames
    assert from_embeds.shape == (2, 16, 2 * K, 4, 4)
    # Equal up to float rounding (2e-6 measured): embeddings made outside the pipeline's inference mode take other
    # CPU kernels (embeddings encoded under `torch.inference_mode` give identical latents).
    torch.testing.assert_close(from_embeds, from_strings, rtol=1e-5, atol=1e-5)
    assert (from_embeds[0] - from_embeds[1]).abs().max() > 1e-3  # two generators: two videos


def test_batch_of_prompts_with_one_negative_embedding(pipe):
    """A batch of prompt embeddings with one negative row, as one negative string serves every prompt."""
    cond, _ = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=False, max_sequence_length=16)
    _, uncond = pipe.encode_prompt(PROMPTS[0], NEGATIVE, max_sequence_length=16)
    kwargs = call_kwargs(num_videos_per_prompt=2)
    expected = pipe(prompt=PROMPTS, negative_prompt=NEGATIVE, generator=generators(0, 1, 2, 3), **kwargs).frames
    for supplied in (dict(prompt_embeds=cond), dict(prompt=PROMPTS)):
        got = pipe(**supplied, negative_prompt_embeds=uncond, generator=generators(0, 1, 2, 3), **kwargs).frames
        assert got.shape == (4, 16, 2 * K, 4, 4)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_embeddings_of_different_lengths_are_padded_as_wan_pads(pipe):
    """Branches encoded with different max_sequence_length batch together: the shorter is zero-padded, which is
    what encoding it at the longer length gives (WanPipeline pads every prompt with zeros)."""
    cond_8, _ = pipe.encode_prompt(PROMPTS[0], do_classifier_free_guidance=False, max_sequence_length=8)
    cond_24, uncond_24 = pipe.encode_prompt(PROMPTS[0], NEGATIVE, max_sequence_length=24)
    assert cond_24[:, 8:].abs().max() == 0  # the prompt fits in 8 tokens: the guard of this test
    torch.testing.assert_close(cond_24[:, :8], cond_8, rtol=1e-5, atol=1e-6)
    expected = pipe(prompt_embeds=cond_24, negative_prompt_embeds=uncond_24, generator=generators(0), **call_kwargs())
    for cond, uncond in [(cond_8, uncond_24), (cond_24, uncond_24[:, :5])]:
        got = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, generator=generators(0), **call_kwargs())
        if cond is cond_8:
            torch.testing.assert_close(got.frames, expected.frames, rtol=1e-5, atol=1e-5)
        assert got.frames.shape == (1, 16, 2 * K, 4, 4)


@pytest.mark.parametrize(
    "supplied, match",
    [
        pytest.param(
            dict(prompt_embeds=torch.zeros(2, 16, 32), negative_prompt_embeds=torch.zeros(3, 16, 32)),
            r"B = 2 or 1.*`prompt_embeds` \(2, 16, 32\), `negative_prompt_embeds` \(3, 16, 32\)",
            id="rows",
        ),
        pytest.param(
            dict(prompt=PROMPTS, negative_prompt_embeds=torch.zeros(3, 16, 32)),
            r"for 2 prompt\(s\); got `negative_prompt_embeds` \(3, 16, 32\)",
            id="negative-rows-vs-prompt-list",
        ),
        pytest.param(
            dict(prompt_embeds=torch.zeros(1, 16, 32), negative_prompt_embeds=torch.zeros(1, 16, 24)),
            r"widths D differ: `prompt_embeds` \(1, 16, 32\), `negative_prompt_embeds` \(1, 16, 24\)",
            id="width",
        ),
        pytest.param(dict(prompt_embeds=torch.zeros(16, 32)), r"must be \(B, L, D\).*\(16, 32\)", id="2-d"),
        pytest.param(
            dict(prompt_embeds=torch.zeros(2, 16, 32), num_videos_per_prompt=2, generator=generators(0, 1, 2)),
            "list of generators of length 3, but requested an effective batch size of 4",
            id="generators-vs-rows",
        ),
    ],
)
def test_mismatched_embeddings_fail_up_front_naming_both_shapes(pipe, supplied, match):
    calls = []
    with pytest.raises(ValueError, match=match):
        pipe(**call_kwargs(**supplied), callback_on_step_end=lambda p, i, t, kw: calls.append(i) or {})
    assert calls == []


def test_callback_may_hand_back_embeddings_of_another_length(pipe):
    """The padding also applies to embeddings a callback replaces mid-video."""

    def shorten(p, step, timestep, kwargs):
        return {"prompt_embeds": kwargs["prompt_embeds"][:, :5]} if step == 1 else {}

    kwargs = call_kwargs(prompt=PROMPTS[0], callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"])
    frames = pipe(**kwargs, generator=generators(0), callback_on_step_end=shorten).frames
    assert frames.shape == (1, 16, 2 * K, 4, 4) and torch.isfinite(frames).all()


# Kind D: output files


def read_back(path):
    """Frames (f, H, W, 3) in [0, 1] and what decord makes of the file."""
    reader = decord.VideoReader(str(path))
    return reader.get_batch(range(len(reader))).asnumpy() / 255.0, len(reader), reader.get_avg_fps()


@pytest.mark.parametrize("suffix, codec", [(".mp4", "h264"), (".mov", "h264"), (".mkv", "h264"), (".webm", "vp9")])
def test_containers_are_written_with_a_codec_that_fits(pipe, tmp_path, suffix, codec):
    path = tmp_path / f"video{suffix}"
    kwargs = call_kwargs(prompt=PROMPTS[0], output_type="np", num_frames=frames_for(3))
    out = pipe(**kwargs, generator=generators(0), output_path=path, fps=8)
    expected = pipe(**kwargs, generator=generators(0)).frames[0]
    assert out.video_paths == [str(path)]
    assert out.written_videos == [WrittenVideo(str(path), frames_for(3), SIZE, SIZE, 8.0, codec)]
    assert list(tmp_path.iterdir()) == [path]  # the partial file was renamed
    frames, count, fps = read_back(path)
    assert count == frames_for(3) and fps == pytest.approx(8.0) and frames.shape == (frames_for(3), SIZE, SIZE, 3)
    assert np.abs(frames - expected).mean() < 0.06  # lossy codecs on random-weight "noise" video


@pytest.mark.parametrize("name", ["video.gif", "video.avi", "video", "clip.webp"])
def test_unsupported_containers_are_refused_before_any_step(pipe, tmp_path, name):
    calls = []
    with pytest.raises(ValueError, match=r"supported containers are \.mp4 \(h264\), .*\.webm \(vp9\)"):
        pipe(
            **call_kwargs(prompt=PROMPTS[0], output_type="np"),
            output_path=tmp_path / name,
            callback_on_step_end=lambda p, i, t, kw: calls.append(i) or {},
        )
    assert calls == [] and list(tmp_path.iterdir()) == []


def test_unwritable_output_path_fails_before_any_step(pipe, tmp_path):
    (tmp_path / "taken.mp4").mkdir()
    calls = []
    with pytest.raises(IsADirectoryError, match="taken.mp4"):
        pipe(
            **call_kwargs(prompt=PROMPTS[0], output_type="np"),
            output_path=tmp_path / "taken.mp4",
            callback_on_step_end=lambda p, i, t, kw: calls.append(i) or {},
        )
    assert calls == []


def fake_ffmpeg(tmp_path, monkeypatch, body: str):
    """Run the writer's ffmpeg through a script: `-encoders` goes to the real one, encoding runs `body`."""
    script = tmp_path / "ffmpeg"
    real = imageio_ffmpeg.get_ffmpeg_exe()
    script.write_text(f'#!/bin/sh\ncase "$*" in *-encoders*) exec "{real}" "$@";; esac\n{body}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(streaming, "_ffmpeg_exe", lambda: str(script))


def test_ffmpeg_failing_at_close_raises_and_keeps_the_generated_latents(pipe, tmp_path, monkeypatch):
    fake_ffmpeg(tmp_path, monkeypatch, 'cat > /dev/null; echo "No space left on device" >&2; exit 1')
    kwargs = call_kwargs(prompt=PROMPTS[0], num_frames=frames_for(3))
    with pytest.raises(VideoWriteError) as failure:
        pipe(**{**kwargs, "output_type": "np"}, generator=generators(0), output_path=tmp_path / "out" / "v.mp4")
    message = str(failure.value)
    assert "exited with status 1" in message and "No space left on device" in message
    assert f"{tmp_path / 'out' / 'v.mp4'} (libx264, {frames_for(3)} frames sent)" in message
    saved = tmp_path / "out" / "v.latents.pt"
    assert str(saved) in message and "(1, 16, 6, 4, 4)" in message
    latents = torch.load(saved)
    torch.testing.assert_close(latents, pipe(**kwargs, generator=generators(0)).frames, rtol=0, atol=0)
    expected = pipe(**{**kwargs, "output_type": "np"}, generator=generators(0)).frames
    np.testing.assert_allclose(pipe.decode_latents(latents), expected, rtol=0, atol=1e-6)


def test_ffmpeg_dying_mid_video_stops_and_keeps_the_chunks_so_far(pipe, tmp_path, monkeypatch):
    chunk_bytes = (4 * K - 3) * SIZE * SIZE * 3  # chunk 0's frames as rgb24
    fake_ffmpeg(tmp_path, monkeypatch, f"head -c {chunk_bytes} > /dev/null; exit 1")
    kwargs = call_kwargs(prompt=PROMPTS[0], num_frames=frames_for(50))
    (tmp_path / "v.mkv").write_bytes(b"an earlier video")
    chunks = []
    with pytest.raises(VideoWriteError, match="exited with status 1") as failure:
        pipe(**{**kwargs, "output_type": "np"}, generator=generators(0), output_path=tmp_path / "v.mkv",
             callback_on_step_end=lambda p, i, t, kw: chunks.append(p.current_chunk) or {})  # fmt: skip
    assert f"What it wrote is in {tmp_path / 'v.partial.mkv'}; {tmp_path / 'v.mkv'} is left as it was" in str(
        failure.value
    )
    assert (tmp_path / "v.mkv").read_bytes() == b"an earlier video"
    assert max(chunks) < 10  # stopped soon after ffmpeg, not after 50 chunks
    latents = torch.load(tmp_path / "v.latents.pt")
    n = latents.shape[2] // K
    assert latents.shape == (1, 16, n * K, 4, 4) and n == max(chunks) + 1
    full = pipe(**call_kwargs(prompt=PROMPTS[0], num_frames=frames_for(n)), generator=generators(0)).frames
    torch.testing.assert_close(latents, full, rtol=0, atol=0)


def test_an_error_midway_keeps_the_earlier_file_and_the_frames_so_far_as_a_partial_video(pipe, tmp_path):
    """A run that fails in chunk 2 leaves an earlier file at the path as it was, and chunks 0 and 1's frames in
    `v.partial.mp4`, named in a note on the error."""
    path = tmp_path / "v.mp4"
    path.write_bytes(b"an earlier video")

    def fail_in_chunk_2(pipe, step, timestep, callback_kwargs):
        if pipe.current_chunk == 2:
            raise RuntimeError("out of memory")
        return {}

    kwargs = call_kwargs(prompt=PROMPTS[0], output_type="np", num_frames=frames_for(4))
    with pytest.raises(RuntimeError, match="out of memory") as failure:
        pipe(**kwargs, generator=generators(0), output_path=path, callback_on_step_end=fail_in_chunk_2)
    partial = tmp_path / "v.partial.mp4"
    assert path.read_bytes() == b"an earlier video" and sorted(tmp_path.iterdir()) == [path, partial]
    assert WrittenVideo.read(partial).num_frames == frames_for(2)
    assert f"the frames written so far are in {partial} ({frames_for(2)} frames" in " ".join(failure.value.__notes__)
    frames, _, _ = read_back(partial)
    expected = pipe(**{**kwargs, "num_frames": frames_for(2)}, generator=generators(0)).frames[0]
    assert np.abs(frames - expected).mean() < 0.05  # lossy H.264 of random-weight "noise" video


@pytest.mark.parametrize("earlier", ["state", "clip"])
def test_a_failed_writer_after_earlier_chunks_saves_what_decodes_its_frames(pipe, tmp_path, monkeypatch, earlier):
    """A resumed call (or a continued clip) whose writer fails: the saved latents with the saved decoder cache
    decode to the call's frames (16 new frames), not to a video's start (13 frames from a fresh decoder)."""
    kwargs = call_kwargs(prompt=PROMPTS[0], output_type="np")
    if earlier == "state":
        first = pipe(**{**kwargs, "num_frames": frames_for(1)}, generator=generators(0), return_state=True)
        go_on = dict(state=first.state)
    else:
        go_on = dict(video_latents=pipe(**call_kwargs(prompt=PROMPTS[0], num_frames=frames_for(1))).frames)
    kwargs.update(num_frames=2 * 4 * K, **go_on)
    expected = pipe(**kwargs, generator=generators(1)).frames
    assert expected.shape[1] == 16
    fake_ffmpeg(tmp_path, monkeypatch, 'cat > /dev/null; echo "No space left on device" >&2; exit 1')
    with pytest.raises(VideoWriteError) as failure:
        pipe(**kwargs, generator=generators(1), output_path=tmp_path / "v.mp4")
    latents_file, cache_file = tmp_path / "v.latents.pt", tmp_path / "v.decoder_cache.pt"
    hint = f"pipe.decode_latents(torch.load({str(latents_file)!r}), decoder_cache=torch.load({str(cache_file)!r}))"
    assert hint in str(failure.value)
    frames = pipe.decode_latents(torch.load(latents_file), decoder_cache=torch.load(cache_file))
    np.testing.assert_allclose(frames, expected, rtol=0, atol=1e-6)


def test_generate_script_reports_what_was_written(tiny_wan_dir, tmp_path, capsys):
    """num_frames=30 is rounded to whole chunks (29): the message says what the file holds (read back), not 30."""
    path = tmp_path / "v.webm"
    args = ["--model", str(tiny_wan_dir), "--from_wan", "--lact", f"chunk_frames={K}", "--lact", "fw_head_dim=12",
            "--prompt", PROMPTS[0], "--num_frames", "30", "--height", str(SIZE), "--width", str(SIZE),
            "--steps", "1", "--max_sequence_length", "8", "--fps", "12", "--output", str(path)]  # fmt: skip
    generate_module.main(args)
    written = WrittenVideo.read(path)
    assert written.num_frames == frames_for(4) == imageio_ffmpeg.count_frames_and_secs(str(path))[0]
    assert f"Wrote {path} ({frames_for(4)} frames, {SIZE}x{SIZE}, 12 fps, vp9) in" in capsys.readouterr().out


@pytest.mark.parametrize(
    "output, named",
    [
        ("a.gif", "--output a.gif: a GIF is not written directly; write a video (--output a.mp4) and convert it, "
         "e.g. ffmpeg -i a.mp4 a.gif"),
        ("a.avi", "--output: Cannot write a video to a.avi: supported containers are .mp4"),
        ("/proc/nope/x.mp4", "--output /proc/nope/x.mp4: cannot write in /proc/nope ("),
        ("{tmp}/taken.mp4", "taken.mp4 is a folder: give a file name"),
    ],
)  # fmt: skip
def test_generate_script_checks_the_output_before_loading_a_model(tmp_path, capsys, monkeypatch, output, named):
    monkeypatch.setattr(generate_module.LaCTVideoPipeline, "from_pretrained", pytest.fail)  # no model may load
    (tmp_path / "taken.mp4").mkdir()
    with pytest.raises(SystemExit) as exited:
        generate_module.main(["--model", str(tmp_path), "--prompt", "x", "--output", output.format(tmp=tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2 and named in err[-1]
    assert [p.name for p in tmp_path.iterdir()] == ["taken.mp4"]


def test_generate_script_takes_diffusers_num_inference_steps(tmp_path, monkeypatch):
    """`--num_inference_steps` (diffusers' name) is `--steps`; the pipeline loads with diffusers' `dtype=`."""
    calls = {}

    class Loaded:
        def to(self, device):
            pass

        def __call__(self, prompt, **kwargs):
            calls.update(kwargs)
            raise KeyboardInterrupt  # stop before generating

    def from_pretrained(model, **kwargs):
        calls["load"] = kwargs
        return Loaded()

    monkeypatch.setattr(generate_module.LaCTVideoPipeline, "from_pretrained", from_pretrained)
    with pytest.raises(KeyboardInterrupt):
        generate_module.main(["--model", "m", "--prompt", "x", "--num_inference_steps", "7",
                              "--output", str(tmp_path / "v.mp4")])  # fmt: skip
    assert calls["num_inference_steps"] == 7 and set(calls["load"]) == {"dtype"}


# diffusers conventions


def test_pipeline_without_transformer_encodes_prompts(pipe):
    """As WanPipeline, a pipeline with transformer=None encodes prompts; generating then says what is missing."""
    text_only = LaCTVideoPipeline(**{**pipe.components, "transformer": None})
    for got, expected in zip(
        text_only.encode_prompt(PROMPTS, NEGATIVE, max_sequence_length=16),
        pipe.encode_prompt(PROMPTS, NEGATIVE, max_sequence_length=16),
    ):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="no transformer.*transformer=None"):
        text_only(**call_kwargs(prompt=PROMPTS[0]))


def test_model_tuple_has_the_positions_of_to_tuple(pipe):
    """return_dict=False gives `(sample, state, text_context)` in every mode, as `.to_tuple()` and `output[i]`."""
    model = pipe.transformer
    embeds, _ = pipe.encode_prompt(PROMPTS[0], do_classifier_free_guidance=False, max_sequence_length=8)
    x = torch.randn(1, 16, K, 4, 4, generator=torch.Generator().manual_seed(0))
    state = model.init_state()
    calls = {
        "denoise": dict(hidden_states=x, timestep=torch.tensor([500.0]), mode="denoise", state=state),
        "commit": dict(hidden_states=x, timestep=torch.zeros(1), mode="commit", state=state),
        "teacher_forcing": dict(  # 2 chunks: noisy 0, clean 0, noisy 1
            hidden_states=interleave_teacher_forcing(torch.cat([x, x], 2)[:, None], torch.cat([x, x], 2), K),
            timestep=interleave_timesteps(torch.tensor([[[500.0, 300.0]]])),
        ),
    }
    with torch.no_grad():
        for mode, call in calls.items():
            output = model(encoder_hidden_states=embeds, **call)
            as_tuple = model(encoder_hidden_states=embeds, **call, return_dict=False)
            assert len(as_tuple) == len(output.to_tuple()) == 3, mode
            for i, (got, expected) in enumerate(zip(as_tuple, output.to_tuple())):
                assert (got is None) == (expected is None) and (got is None or type(got) is type(expected)), mode
                assert output[i] is expected
            assert (as_tuple[0] is None) == (mode == "commit") and (as_tuple[1] is None) == (mode == "teacher_forcing")
            if as_tuple[0] is not None:
                torch.testing.assert_close(as_tuple[0], output.sample, rtol=0, atol=0)


def test_unknown_loading_keywords_are_refused_with_the_close_match(pipe, tiny_wan_dir, tmp_path):
    with pytest.raises(ValueError, match=r"'chunk_frame' \(did you mean 'chunk_frames'\?\)"):
        LaCTVideoPipeline.from_pretrained(tiny_wan_dir, chunk_frame=3, fw_head_dim=12)
    with pytest.raises(ValueError, match=r"'fw_head_dims' \(did you mean 'fw_head_dim'\?\)"):
        LaCTVideoPipeline.from_wan(tiny_wan_dir, fw_head_dims=12)
    pipe.save_pretrained(tmp_path / "lact")
    with pytest.raises(ValueError, match=r"'torch_dtyp' \(did you mean 'torch_dtype'\?\)"):
        LaCTVideoPipeline.from_pretrained(tmp_path / "lact", torch_dtyp=torch.float32)
    # Known keywords still load: a component passed in, and diffusers' loading keywords.
    loaded = LaCTVideoPipeline.from_pretrained(tmp_path / "lact", transformer=None, low_cpu_mem_usage=False)
    assert loaded.transformer is None and isinstance(pipe.transformer, LaCTWanTransformer3DModel)


def test_loading_keywords_are_those_diffusers_takes():
    """The list of `DiffusionPipeline.from_pretrained`'s loading keywords follows the installed diffusers."""
    source = inspect.getsource(DiffusionPipeline.from_pretrained)
    popped = set(re.findall(r'kwargs\.pop\("(\w+)"', source))
    assert popped == set(pipeline_lact_video.DIFFUSERS_LOADING_KWARGS)
