"""Pause, save, resume and extend (issue 15, part 3): a video made in two calls, the state saved in between and
loaded in a new process, equals the one-call video bit for bit; the state after an interrupt; the refusals.

The memory is opened (as in tests/test_pipeline.py), so that every chunk depends on the state of the chunks
before it: a state restored wrongly changes the later chunks.
"""

import json
import pathlib
import subprocess
import sys
import textwrap
from dataclasses import replace

import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file, save_file
from utils import assert_bitwise_equal

from lact_video import LaCTWanTransformer3DModel
from lact_video.geometry import first_frame_of_chunk, video_num_frames
from lact_video.testing import open_memory
from pipelines import (
    LaCTGenerationState,
    LaCTVideoChunk,
    LaCTVideoPipeline,
    StateFileError,
    StateMismatchError,
    generation_state,
    state_io,
)
from pipelines import generate as generate_module

REPO = pathlib.Path(__file__).resolve().parents[1]
SIZE, K = 32, 2  # 4x4 latents; chunk_frames
LACT_CONFIG = dict(chunk_frames=K, fw_head_dim=12, use_momentum=True)
PROMPT, NEGATIVE = "a cat walks across a sunny kitchen floor", "blurry"
NEW_CHUNK_FRAMES = 4 * K  # video frames of every chunk after the first


def frames_for(num_chunks: int) -> int:
    """Video frames of a video of `num_chunks` whole chunks from its start: 4F - 3."""
    return video_num_frames(K * num_chunks)


def call_kwargs(**overrides):
    kwargs = dict(prompt=PROMPT, negative_prompt=NEGATIVE, height=SIZE, width=SIZE, num_inference_steps=2)
    kwargs.update(guidance_scale=5.0, max_sequence_length=16, generator=torch.Generator().manual_seed(0))
    return {**kwargs, **overrides}


def lact_transformer(tiny_wan_dir, rope_max_seq_len=1024, **config):
    """The tiny Wan transformer patched with LaCT (`LACT_CONFIG` updated by `config`), its memory opened."""
    wan = WanTransformer3DModel.from_pretrained(
        tiny_wan_dir, subfolder="transformer", rope_max_seq_len=rope_max_seq_len
    )
    transformer = LaCTWanTransformer3DModel.from_wan(wan, **{**LACT_CONFIG, **config})
    noise = {"gate_proj.weight": 0.5, "lr_proj.weight": 0.1}
    open_memory(transformer, generator=torch.Generator().manual_seed(1), noise=noise, rate=0.7)
    return transformer


@pytest.fixture(scope="module")
def pipe(tiny_wan_dir):
    pipe = LaCTVideoPipeline.from_wan(tiny_wan_dir, **LACT_CONFIG)
    pipe.transformer = lact_transformer(tiny_wan_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def model_dir(pipe, tmp_path_factory):
    """The pipeline saved, for other processes and the command line."""
    path = tmp_path_factory.mktemp("model") / "lact"
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def one_call(pipe):
    """The 4-chunk video made in one call: its frames ("pt") and latents, and the state after it."""
    frames = pipe(**call_kwargs(num_frames=frames_for(4), output_type="pt", return_state=True))
    latents = pipe(**call_kwargs(num_frames=frames_for(4), output_type="latent")).frames
    return frames.frames, latents, frames.state


def flatten(state: LaCTGenerationState) -> dict:
    """Every tensor and marker of a generation state by name (None entries included)."""
    entries = {}
    for i, layer in enumerate(state.lact_state.layers):
        for name in ("key", "value", "fast_weights", "momentum"):
            value = getattr(layer, name)
            parts = value._asdict().items() if value is not None and not torch.is_tensor(value) else [("", value)]
            entries.update({f"{i}.{name}.{p}": t for p, t in parts})
    entries.update({f"vae.{j}": slot for j, slot in enumerate(state.decoder_cache or ())})
    generators = state.generator if isinstance(state.generator, tuple) else (state.generator,)
    entries.update({f"generator.{j}": g and g.state for j, g in enumerate(generators)})
    return entries


def assert_same_state(got: LaCTGenerationState, expected: LaCTGenerationState) -> None:
    assert got.next_chunk == expected.next_chunk
    got_entries, expected_entries = flatten(got), flatten(expected)
    assert got_entries.keys() == expected_entries.keys()
    for name, value in expected_entries.items():
        if torch.is_tensor(value):
            assert got_entries[name].dtype == value.dtype, name
            assert_bitwise_equal(got_entries[name].cpu(), value.cpu())
        else:
            assert got_entries[name] == value, name


def test_memory_makes_later_chunks_depend_on_the_state(pipe, one_call):
    """Guard: going on at chunk 2 with chunk 2's noise and positions but an empty memory gives other latents, so
    the equalities below say something about the restored LaCT state."""
    _, latents, _ = one_call
    first = pipe(**call_kwargs(num_frames=frames_for(2), output_type="latent", return_state=True))
    assert first.state.next_chunk == 2
    forgetful = replace(first.state, lact_state=replace(pipe.transformer.init_state(), num_chunks=2))
    kwargs = call_kwargs(num_frames=2 * NEW_CHUNK_FRAMES, output_type="latent", generator=None)
    assert not torch.equal(pipe(**kwargs, state=forgetful).frames, latents[:, :, 2 * K :])
    assert_bitwise_equal(pipe(**kwargs, state=first.state).frames, latents[:, :, 2 * K :])


# Bit-identical resumption


RESUME_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from safetensors.torch import save_file
    from pipelines import LaCTGenerationState, LaCTVideoPipeline

    torch.set_num_threads(1)  # as tests/conftest.py: the same kernels' reduction order as the first process
    model, decoded_state, latent_state, out = sys.argv[1:]
    pipe = LaCTVideoPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(prompt={prompt!r}, negative_prompt={negative!r}, height={size}, width={size}, num_inference_steps=2,
                  guidance_scale=5.0, max_sequence_length=16, num_frames=2 * {new})
    frames = pipe(**kwargs, output_type="pt", state=LaCTGenerationState.load(decoded_state, pipe)).frames
    latents = pipe(**kwargs, output_type="latent", state=LaCTGenerationState.load(latent_state, pipe)).frames
    save_file({{"frames": frames.contiguous(), "latents": latents.contiguous()}}, out)
    """
).format(prompt=PROMPT, negative=NEGATIVE, size=SIZE, new=NEW_CHUNK_FRAMES)


def test_two_calls_in_two_processes_equal_one_call_bit_for_bit(pipe, model_dir, one_call, tmp_path):
    """2 chunks, save, a NEW PROCESS loads the pipeline and the state, 2 more chunks: frames and latents equal those
    of the one-call video (guidance on: both rows' states travel)."""
    frames, latents, _ = one_call
    first_frames = pipe(**call_kwargs(num_frames=frames_for(2), output_type="pt", return_state=True))
    first_latents = pipe(**call_kwargs(num_frames=frames_for(2), output_type="latent", return_state=True))
    first_frames.state.save(tmp_path / "decoded.safetensors")
    first_latents.state.save(tmp_path / "latent.safetensors")

    script = tmp_path / "resume.py"
    script.write_text(RESUME_SCRIPT)
    paths = [
        model_dir,
        *(tmp_path / name for name in ("decoded.safetensors", "latent.safetensors", "out.safetensors")),
    ]
    done = subprocess.run(
        [sys.executable, str(script), *map(str, paths)],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    second = load_file(paths[-1])
    assert second["frames"].shape[1] == 2 * NEW_CHUNK_FRAMES
    assert_bitwise_equal(torch.cat([first_frames.frames, second["frames"]], dim=1), frames)
    assert_bitwise_equal(torch.cat([first_latents.frames, second["latents"]], dim=2), latents)


def test_stream_hands_out_the_state_after_every_chunk_and_resumes_from_any(pipe, one_call):
    """`stream(return_state=True)` yields (frames, state) pairs; the state after chunk 2, held while chunks 3 and
    4 were made (nothing writes into it), gives chunks 3 and 4 again, and the same final state."""
    frames, _, final_state = one_call
    chunks = list(pipe.stream(**call_kwargs(num_frames=frames_for(4), output_type="pt", return_state=True)))
    assert all(isinstance(chunk, LaCTVideoChunk) for chunk in chunks)
    assert [chunk.state.next_chunk for chunk in chunks] == [1, 2, 3, 4]
    assert_bitwise_equal(torch.cat([chunk.frames for chunk in chunks], dim=1), frames)
    assert_same_state(chunks[-1].state, final_state)

    kwargs = call_kwargs(num_frames=2 * NEW_CHUNK_FRAMES, output_type="pt", generator=None, return_state=True)
    again = list(pipe.stream(**kwargs, state=chunks[1].state))
    assert [chunk.state.next_chunk for chunk in again] == [3, 4]
    assert_bitwise_equal(torch.cat([chunk.frames for chunk in again], dim=1), frames[:, frames_for(2) :])
    assert_same_state(again[-1].state, final_state)
    # Without return_state, stream yields the frames alone, as before.
    plain = next(pipe.stream(**call_kwargs(num_frames=frames_for(1), output_type="pt")))
    assert_bitwise_equal(plain, frames[:, : frames_for(1)])


def test_a_prompt_switch_in_the_resumed_call_equals_the_one_call_video(pipe, one_call, tmp_path):
    """A schedule switching at chunk 3 and a negative one switching at chunk 2, both given to both calls: call 1
    makes chunks 0-1 (before either switch) and saves the state, call 2 loads it and makes chunks 2-3 (each switch
    inside it, looked up by absolute chunk index): bit for bit the one-call video with the same schedules. Guard:
    the switches change chunks 2-3 of the video without them, and only those."""
    frames, _, _ = one_call
    prompts = dict(
        prompt={0: PROMPT, first_frame_of_chunk(3, K): "the cat jumps onto a wall"},
        negative_prompt={0: NEGATIVE, first_frame_of_chunk(2, K): "static"},
        output_type="pt",
    )
    whole = pipe(**call_kwargs(**prompts, num_frames=frames_for(4))).frames
    assert_bitwise_equal(whole[:, : frames_for(2)], frames[:, : frames_for(2)])
    assert not torch.equal(whole[:, frames_for(2) : frames_for(3)], frames[:, frames_for(2) : frames_for(3)])
    assert not torch.equal(whole[:, frames_for(3) :], frames[:, frames_for(3) :])

    first = pipe(**call_kwargs(**prompts, num_frames=frames_for(2), return_state=True))
    first.state.save(tmp_path / "s.safetensors")
    state = LaCTGenerationState.load(tmp_path / "s.safetensors", pipe)
    rest = pipe(**call_kwargs(**prompts, num_frames=2 * NEW_CHUNK_FRAMES, state=state, generator=None)).frames
    assert_bitwise_equal(torch.cat([first.frames, rest], dim=1), whole)


def test_a_saved_state_loads_bit_for_bit_with_a_list_of_generators(pipe, tmp_path):
    """Two videos, one generator each: the state file restores both generators (as a list), the state of both
    guidance rows per video, and the video goes on as in one call."""
    kwargs = call_kwargs(prompt=[PROMPT, "a red car"], output_type="latent")
    seeds = lambda: [torch.Generator().manual_seed(s) for s in (3, 4)]  # noqa: E731
    whole = pipe(**{**kwargs, "generator": seeds()}, num_frames=frames_for(3), return_state=True)
    first = pipe(**{**kwargs, "generator": seeds()}, num_frames=frames_for(1), return_state=True)
    first.state.save(tmp_path / "s.safetensors")
    loaded = LaCTGenerationState.load(tmp_path / "s.safetensors", pipe)
    assert isinstance(loaded.generator, tuple) and len(loaded.generator) == 2 and loaded.num_videos == 2
    assert_same_state(loaded, first.state)
    rest = pipe(**{**kwargs, "generator": None}, num_frames=2 * NEW_CHUNK_FRAMES, state=loaded, return_state=True)
    assert_bitwise_equal(torch.cat([first.frames, rest.frames], dim=2), whole.frames)
    assert_same_state(rest.state, whole.state)


def interrupt_in_chunk(chunk: int):
    def callback(pipe, step, timestep, callback_kwargs):
        if pipe.current_chunk == chunk:
            pipe._interrupt = True
        return callback_kwargs

    return callback


@pytest.mark.parametrize("chunk", [0, 2])
def test_an_interrupt_hands_out_the_state_after_the_last_finished_chunk(pipe, one_call, tmp_path, chunk):
    """Interrupted during chunk `chunk`, the output's state is that after chunk `chunk - 1` (for chunk 0, a state
    of 0 chunks); it goes on, through a file, to the one-call video (from 0 chunks: with num_frames counted from
    the start, as a new video)."""
    frames, _, final_state = one_call
    interrupted = pipe(**call_kwargs(num_frames=frames_for(4), output_type="pt", return_state=True),
                       callback_on_step_end=interrupt_in_chunk(chunk))  # fmt: skip
    assert interrupted.state.next_chunk == chunk
    assert interrupted.frames.shape[1] == frames_for(chunk + 1)  # the interrupted chunk is still decoded
    interrupted.state.save(tmp_path / "s.safetensors")
    state = LaCTGenerationState.load(tmp_path / "s.safetensors", pipe)
    num_frames = frames_for(4) if chunk == 0 else (4 - chunk) * NEW_CHUNK_FRAMES
    rest = pipe(**call_kwargs(num_frames=num_frames, output_type="pt", state=state, generator=None, return_state=True))
    kept = frames_for(chunk) if chunk else 0
    assert_bitwise_equal(torch.cat([interrupted.frames[:, :kept], rest.frames], dim=1), frames)
    assert_same_state(rest.state, final_state)


def test_continuing_counts_new_frames_in_whole_chunks(pipe, caplog):
    state = pipe(**call_kwargs(num_frames=frames_for(1), output_type="latent", return_state=True)).state
    with caplog.at_level("WARNING"):
        out = pipe(**call_kwargs(num_frames=NEW_CHUNK_FRAMES + 3, output_type="latent", state=state))
    assert out.frames.shape[2] == K and out.state is None
    assert (
        f"num_frames={NEW_CHUNK_FRAMES + 3} counts the new frames only, after the 1 chunk before this call"
        in caplog.text
    )


# Refusals


@pytest.fixture(scope="module")
def saved(pipe, tmp_path_factory):
    """A state after 1 decoded chunk, with guidance, in a file."""
    path = tmp_path_factory.mktemp("state") / "s.safetensors"
    pipe(**call_kwargs(num_frames=frames_for(1), output_type="pt", return_state=True)).state.save(path)
    return path


@pytest.mark.parametrize(
    "config, named",
    [
        (dict(window_size=1), "transformer.window_size: state None, this model 1"),
        (dict(fw_head_dim=8), "transformer.fw_head_dim: state 12, this model 8"),
    ],
)
def test_another_lact_config_is_refused_naming_the_key(pipe, tiny_wan_dir, saved, config, named):
    other = LaCTVideoPipeline(**{**pipe.components, "transformer": lact_transformer(tiny_wan_dir, **config)})
    with pytest.raises(StateMismatchError, match=f"was saved with another model.*{named}"):
        LaCTGenerationState.load(saved, other)
    state = LaCTGenerationState.load(saved)  # without a pipeline: the call refuses it
    with pytest.raises(StateMismatchError, match=named):
        other(**call_kwargs(num_frames=NEW_CHUNK_FRAMES, state=state))


def test_a_key_the_state_predates_counts_as_its_default(pipe, tiny_wan_dir, saved):
    """A state saved before a config key existed computed what the key's default computes: it goes on with a model
    at the default, and is refused, naming the key, by one that is not."""
    state = LaCTGenerationState.load(saved)
    del state.model_configs["transformer"]["fw_retention_decay"]  # as a state written before the key existed
    state.check_matches(pipe, height=SIZE, width=SIZE, num_videos=1, guidance=True, decoding=True)
    other = LaCTVideoPipeline(
        **{**pipe.components, "transformer": lact_transformer(tiny_wan_dir, fw_retention_decay=0.3)}
    )
    with pytest.raises(StateMismatchError, match="transformer.fw_retention_decay: state 0.0, this model 0.3"):
        state.check_matches(other, height=SIZE, width=SIZE, num_videos=1, guidance=True, decoding=True)


@pytest.mark.parametrize(
    "change, named",
    [
        (dict(height=48), "height: state 32, this call 48"),
        (dict(num_videos_per_prompt=2), r"videos \(prompts x num_videos_per_prompt\): state 1, this call 2"),
        (dict(guidance_scale=1.0), r"classifier-free guidance \(guidance_scale > 1\): state True, this call False"),
    ],
)
def test_another_size_batch_or_guidance_is_refused(pipe, saved, change, named):
    state = LaCTGenerationState.load(saved, pipe)
    with pytest.raises(StateMismatchError, match=named):
        pipe(**call_kwargs(num_frames=NEW_CHUNK_FRAMES, state=state, **change))


def test_a_latent_state_cannot_be_decoded_from(pipe):
    state = pipe(**call_kwargs(num_frames=frames_for(1), output_type="latent", return_state=True)).state
    assert state.decoder_cache is None
    with pytest.raises(
        StateMismatchError, match=r"without decoding \(output_type='latent', 1 chunk\), so it has no VAE cache"
    ):
        pipe(**call_kwargs(num_frames=NEW_CHUNK_FRAMES, state=state, output_type="np"))


def test_the_rotary_table_is_not_part_of_the_match_but_bounds_the_absolute_chunk(pipe, tiny_wan_dir, saved):
    """A state loads into the same model with a longer or shorter rotary table (it holds no weights), and the table
    must reach the last new chunk counted from the video's start."""
    short = LaCTVideoPipeline(
        **{**pipe.components, "transformer": lact_transformer(tiny_wan_dir, rope_max_seq_len=3 * K)}
    )
    state = LaCTGenerationState.load(saved, short)  # 1 chunk
    with pytest.raises(ValueError, match="needs 8 latent frames .* counted from its start.*rope_max_seq_len=6"):
        short(**call_kwargs(num_frames=3 * NEW_CHUNK_FRAMES, state=state, output_type="latent"))
    assert (
        short(**call_kwargs(num_frames=2 * NEW_CHUNK_FRAMES, state=state, output_type="latent")).frames.shape[2]
        == 2 * K
    )


def test_files_that_are_not_states_are_refused(tmp_path, saved):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(StateFileError, match="notes.txt is not a readable safetensors file"):
        LaCTGenerationState.load(notes)
    weights = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(weights))
    with pytest.raises(StateFileError, match="weights.safetensors is not a lact-video state file"):
        LaCTGenerationState.load(weights)
    newer = tmp_path / "newer.safetensors"
    from safetensors import safe_open

    with safe_open(str(saved), framework="pt") as f:
        save_file({k: f.get_tensor(k) for k in f.keys()}, str(newer), metadata={**f.metadata(), "format_version": "2"})
    with pytest.raises(StateFileError, match="has state format 2; .* reads up to 1. Upgrade lact-video"):
        LaCTGenerationState.load(newer)


def test_a_failed_save_keeps_the_earlier_file(pipe, saved, tmp_path, monkeypatch):
    path = tmp_path / "s.safetensors"
    path.write_bytes(saved.read_bytes())
    state = LaCTGenerationState.load(path, pipe)

    def fail(tensors, filename, metadata):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(state_io, "save_file", fail)
    with pytest.raises(OSError, match="No space left"):
        state.save(path)
    assert path.read_bytes() == saved.read_bytes() and [p.name for p in tmp_path.iterdir()] == ["s.safetensors"]


def test_save_creates_a_missing_folder_and_warns_of_another_suffix(pipe, saved, tmp_path, caplog):
    """`save` into a folder not made yet makes it (as the video writer does); `x.pt` is written, as safetensors,
    with a warning saying so."""
    state = LaCTGenerationState.load(saved, pipe)
    with caplog.at_level("WARNING"):
        state.save(tmp_path / "new" / "folder" / "s.safetensors")
    assert caplog.text == ""
    with caplog.at_level("WARNING"):
        state.save(tmp_path / "x.pt")
    assert "x.pt: the file is safetensors (read it with `LaCTGenerationState.load`, not `torch.load`)" in caplog.text
    for path in (tmp_path / "new" / "folder" / "s.safetensors", tmp_path / "x.pt"):
        assert_same_state(LaCTGenerationState.load(path, pipe), state)


def test_the_repr_is_a_short_summary(pipe, one_call):
    """The repr of a state (and of an output carrying it) names the next chunk, the rows, blocks, dtype, device and
    sizes, in one line, rather than every tensor."""
    state = one_call[2]
    lact_bytes = sum(t.numel() * t.element_size() for t in flatten(state).values() if torch.is_tensor(t))
    cache_bytes = sum(t.numel() * t.element_size() for t in state.decoder_cache if torch.is_tensor(t))
    lact_bytes -= cache_bytes + sum(g.state.numel() for g in (state.generator,))  # flatten holds all three
    text = repr(state)
    assert text == (
        f"LaCTGenerationState(next_chunk=4, {SIZE}x{SIZE}, videos=1, guidance=True (2 rows), "
        f"blocks={len(state.lact_state.layers)}, dtype=float32, device=cpu, LaCT state {lact_bytes / 1e6:.1f} MB, "
        f"VAE cache {cache_bytes / 1e6:.1f} MB, generator saved)"
    )
    output = pipe(**call_kwargs(num_frames=frames_for(1), output_type="latent", return_state=True))
    assert f"state={output.state!r}" in repr(output) and len(repr(output)) - len(repr(output.frames)) < 400
    assert "not decoded" in repr(output.state)


def test_the_file_holds_tensors_and_a_json_header_only(saved):
    from safetensors import safe_open

    with safe_open(str(saved), framework="pt") as f:
        metadata, names = f.metadata(), set(f.keys())
    header = json.loads(metadata["header"])
    assert metadata["format"] == "lact-video-state" and header["height"] == SIZE and header["guidance"] is True
    assert header["generator"] == {"devices": ["cpu"], "list": False} and "extra.generator.0" in names
    assert header["model_configs"]["transformer"]["fw_head_dim"] == 12


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_generator_is_restored_on_its_device():
    generator = torch.Generator("cuda").manual_seed(5)
    torch.randn(3, generator=generator, device="cuda")
    saved = generation_state.capture_generator([generator])
    restored = generation_state.restore_generator(saved)
    assert restored[0].device.type == "cuda"
    assert torch.equal(
        torch.randn(4, generator=restored[0], device="cuda"), torch.randn(4, generator=generator, device="cuda")
    )


# The command line


def cli_args(model_dir, output, *options):
    return ["--model", str(model_dir), "--prompt", PROMPT, "--negative_prompt", NEGATIVE, "--height", str(SIZE),
            "--width", str(SIZE), "--steps", "2", "--max_sequence_length", "16", "--output", str(output), *options]  # fmt: skip


def test_generate_script_saves_and_resumes_the_state(model_dir, one_call, tmp_path, capsys):
    """Two runs of scripts/generate.py, 2 chunks with --save_state, then 2 more with --resume_state: the second
    file holds the new frames, and the state after it is the one-call video's, bit for bit."""
    first, second = tmp_path / "first.safetensors", tmp_path / "second.safetensors"
    generate_module.main(
        cli_args(model_dir, tmp_path / "a.mp4", "--num_frames", str(frames_for(2)), "--save_state", str(first))
    )
    assert f"Saved the state after chunk 2 to {first}" in capsys.readouterr().out
    options = ("--num_frames", str(2 * NEW_CHUNK_FRAMES), "--resume_state", str(first), "--save_state", str(second))
    generate_module.main(cli_args(model_dir, tmp_path / "b.mp4", *options))
    assert f"Wrote {tmp_path / 'b.mp4'} ({2 * NEW_CHUNK_FRAMES} frames" in capsys.readouterr().out
    assert_same_state(LaCTGenerationState.load(second), one_call[2])


@pytest.mark.parametrize(
    "options, named",
    [
        (["--resume_state", "{tmp}/missing.safetensors"], "--resume_state {tmp}/missing.safetensors: no such file"),
        (["--resume_state", "{tmp}/notes.txt"], "--resume_state: {tmp}/notes.txt is not a readable safetensors file"),
        (["--save_state", "/proc/nope/s.safetensors"], "--save_state /proc/nope/s.safetensors: cannot write in"),
    ],
)
def test_generate_script_refuses_bad_state_files_before_loading_a_model(tmp_path, capsys, monkeypatch, options, named):
    monkeypatch.setattr(generate_module.LaCTVideoPipeline, "from_pretrained", pytest.fail)  # no model may load
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SystemExit) as exited:
        generate_module.main(cli_args(tmp_path, tmp_path / "v.mp4", *(o.format(tmp=tmp_path) for o in options)))
    err = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2 and named.format(tmp=tmp_path) in err[-1]  # argparse: usage, then the error


def test_generate_script_refuses_a_state_of_another_size_in_one_line(model_dir, saved, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        generate_module.main(cli_args(model_dir, tmp_path / "v.mp4", "--resume_state", str(saved), "--height", "48"))
    err = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2 and f"--resume_state {saved}: The generation state does not fit" in err[-1]
    assert "height: state 32, this call 48" in err[-1] and not (tmp_path / "v.mp4").exists()
