"""LaCTVideoPipeline on the tiny Wan model: chunk-by-chunk semantics, streaming, loading, errors.

The LaCT memory starts with a zero gate (pure window attention), which would hide any mistake in
the fast-weight state. The fixture therefore opens the gate and raises the fast-weight learning
rates, so that every chunk's output depends on the memory of the chunks before it.
"""

import collections.abc
import io
import json
import logging
import typing

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from diffusers.utils.torch_utils import randn_tensor

from lact_video import LaCTWanTransformer3DModel
from lact_video.layers.fast_weight_memory import FastWeightMemory
from lact_video.testing import open_memory
from pipelines import LaCTVideoPipeline
from pipelines import generate as generate_module

SIZE = 32  # video height and width: 4x4 latents, 2x2 tokens per latent frame
K = 3  # chunk_frames
LACT_CONFIG = dict(chunk_frames=K, fw_head_dim=12, use_momentum=True)
PROMPT = "a cat walks across a sunny kitchen floor"
NEGATIVE = "low quality, blurry, static"


def frames_for(num_chunks: int) -> int:
    """Video frames of `num_chunks` whole chunks: 4F - 3."""
    return 4 * K * num_chunks - 3


def call_kwargs(**overrides):
    kwargs = dict(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        height=SIZE,
        width=SIZE,
        num_frames=frames_for(2),
        num_inference_steps=2,
        guidance_scale=5.0,
        max_sequence_length=16,
        generator=torch.Generator().manual_seed(0),
    )
    kwargs.update(overrides)
    return kwargs


def activate_memory(transformer: LaCTWanTransformer3DModel) -> None:
    """The memory as these tests open it: random gates and rates (seed 1), rates about 0.7."""
    noise = {"gate_proj.weight": 0.5, "lr_proj.weight": 0.1}
    open_memory(transformer, generator=torch.Generator().manual_seed(1), noise=noise, rate=0.7)


@pytest.fixture(scope="module")
def pipe(tiny_wan_dir):
    pipe = LaCTVideoPipeline.from_wan(tiny_wan_dir, **LACT_CONFIG)
    activate_memory(pipe.transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def with_scheduler(pipe, scheduler):
    """The same components with another scheduler (the module fixture stays untouched)."""
    return LaCTVideoPipeline(**{**pipe.components, "scheduler": scheduler})


@torch.no_grad()
def reference_latents(pipe, prompts, seeds, num_chunks, steps, guidance_scale, negatives=None):
    """docs/design.md, Sec. 3.3 written out plainly: one video and one guidance branch at a time, each with its own
    state, a new scheduler for every chunk, and the chunk's noise drawn from that video's generator. Each video's
    prompt (and negative prompt, NEGATIVE by default) is a text, or a list of one text per chunk (a schedule)."""
    transformer, k = pipe.transformer, pipe.transformer.config.chunk_frames
    latent_size = SIZE // pipe.vae_scale_factor_spatial
    videos = []
    for prompt, negative, seed in zip(prompts, negatives or [NEGATIVE] * len(prompts), seeds):
        names = ("cond", "uncond") if guidance_scale > 1 else ("cond",)
        states = {name: transformer.init_state() for name in names}
        generator = torch.Generator().manual_seed(seed)
        chunks = []
        for c in range(num_chunks):
            texts = [text if isinstance(text, str) else text[c] for text in (prompt, negative)]
            branches = dict(zip(("cond", "uncond"), pipe.encode_prompt(*texts, max_sequence_length=16)))
            branches = {name: branches[name] for name in names}
            x = randn_tensor((1, 16, k, latent_size, latent_size), generator=generator)
            scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
            scheduler.set_timesteps(steps)
            for t in scheduler.timesteps:
                v = {
                    name: transformer(x, t.expand(1), embeds, mode="denoise", state=states[name]).sample
                    for name, embeds in branches.items()
                }
                if guidance_scale > 1:
                    velocity = v["uncond"] + guidance_scale * (v["cond"] - v["uncond"])
                else:
                    velocity = v["cond"]
                x = scheduler.step(velocity, t, x).prev_sample
            for name, embeds in branches.items():
                states[name] = transformer(x, torch.zeros(1), embeds, mode="commit", state=states[name]).state
            chunks.append(x)
        videos.append(torch.cat(chunks, dim=2))
    return torch.cat(videos)


def test_loads_from_a_wan_base_with_lact_config(pipe):
    assert isinstance(pipe.transformer, LaCTWanTransformer3DModel)
    assert pipe.transformer.config.chunk_frames == K and pipe.transformer.config.use_momentum
    assert isinstance(pipe.scheduler, UniPCMultistepScheduler)
    assert pipe.scheduler.config.use_flow_sigmas


def test_memory_is_active(pipe):
    """Guard for the other tests: the memory really changes later chunks (else they prove little)."""
    kwargs = call_kwargs(output_type="latent", num_frames=frames_for(2))
    with_memory = pipe(**kwargs).frames
    gates = [m.gate_proj.bias for m in pipe.transformer.modules() if isinstance(m, FastWeightMemory)]
    opened = [bias.detach().clone() for bias in gates]
    try:
        for bias in gates:
            bias.data.fill_(-30.0)  # silu(-30) ~ 0: memory read-out off
        without = pipe(**call_kwargs(output_type="latent", num_frames=frames_for(2))).frames
    finally:
        for bias, value in zip(gates, opened):
            bias.data.copy_(value)
    assert (with_memory[:, :, K:] - without[:, :, K:]).abs().max() > 1e-3


def test_same_seed_longer_video_starts_with_the_same_frames(pipe):
    short = pipe(**call_kwargs(num_frames=frames_for(2))).frames
    long = pipe(**call_kwargs(num_frames=frames_for(4))).frames
    assert short.shape == (1, frames_for(2), SIZE, SIZE, 3)
    assert long.shape == (1, frames_for(4), SIZE, SIZE, 3)
    np.testing.assert_allclose(long[:, : short.shape[1]], short, rtol=0, atol=1e-6)
    assert np.abs(long[:, short.shape[1] :]).max() > 0


UNIPC_3RD_ORDER = UniPCMultistepScheduler(
    prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, solver_order=3
)


@pytest.mark.parametrize(
    "scheduler, steps, guidance_scale",
    [
        pytest.param(None, 2, 5.0, id="unipc-cfg"),
        pytest.param(None, 2, 1.0, id="unipc-no-cfg"),
        # With 2 steps, UniPC-2 happens to ignore a stale history; 3rd order over 3 steps does not.
        pytest.param(UNIPC_3RD_ORDER, 3, 5.0, id="unipc3-cfg"),
        pytest.param(FlowMatchEulerDiscreteScheduler(shift=3.0), 2, 5.0, id="euler-cfg"),
    ],
)
def test_batched_guidance_equals_separate_branches(pipe, scheduler, steps, guidance_scale):
    """[uncond, cond] rows in one forward, each with its own state = each branch run on its own; and
    a per-chunk `set_timesteps` restarts the scheduler (UniPC's multistep history included) as
    cleanly as a new scheduler does."""
    if scheduler is not None:
        pipe = with_scheduler(pipe, scheduler)
    prompts, seeds, num_chunks = [PROMPT, "a dog runs along the beach at sunset"], [3, 4], 3
    latents = pipe(
        **call_kwargs(
            prompt=prompts,
            negative_prompt=[NEGATIVE] * 2,
            num_frames=frames_for(num_chunks),
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=[torch.Generator().manual_seed(s) for s in seeds],
            output_type="latent",
        )
    ).frames
    expected = reference_latents(pipe, prompts, seeds, num_chunks, steps, guidance_scale)
    assert latents.shape == expected.shape == (2, 16, K * num_chunks, 4, 4)
    torch.testing.assert_close(latents, expected, rtol=1e-5, atol=1e-5)


def test_streamed_decoding_equals_a_full_decode(pipe):
    num_chunks = 3
    chunks = list(pipe.stream(**call_kwargs(num_frames=frames_for(num_chunks))))
    assert [c.shape[1] for c in chunks] == [4 * K - 3] + [4 * K] * (num_chunks - 1)
    streamed = np.concatenate(chunks, axis=1)

    latents = pipe(**call_kwargs(num_frames=frames_for(num_chunks), output_type="latent")).frames
    with torch.no_grad():
        full = pipe.vae.decode(pipe._denormalize(latents), return_dict=False)[0]  # one decode of the whole clip
    full = pipe.video_processor.postprocess_video(full, output_type="np")
    assert full.shape == streamed.shape == (1, frames_for(num_chunks), SIZE, SIZE, 3)
    np.testing.assert_allclose(streamed, full, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(pipe(**call_kwargs(num_frames=frames_for(num_chunks))).frames, streamed)


def test_save_pretrained_then_from_pretrained_gives_identical_videos(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "lact")
    index = json.loads((tmp_path / "lact" / "model_index.json").read_text())
    assert index["_class_name"] == "LaCTVideoPipeline"
    assert index["transformer"] == ["lact_video.models.transformer_lact_wan", "LaCTWanTransformer3DModel"]
    reloaded = LaCTVideoPipeline.from_pretrained(tmp_path / "lact")
    reloaded.set_progress_bar_config(disable=True)
    assert type(reloaded.transformer) is LaCTWanTransformer3DModel
    assert reloaded.transformer.config.use_momentum
    np.testing.assert_array_equal(reloaded(**call_kwargs()).frames, pipe(**call_kwargs()).frames)


def test_from_pretrained_patches_a_plain_wan_folder_like_from_wan(tiny_wan_dir, caplog):
    with caplog.at_level(logging.WARNING):
        loaded = LaCTVideoPipeline.from_pretrained(tiny_wan_dir, **LACT_CONFIG)
    assert "plain Wan2.1 pipeline" in caplog.text and "window attention only" in caplog.text
    patched = LaCTVideoPipeline.from_wan(tiny_wan_dir, **LACT_CONFIG)
    assert loaded.transformer.config.use_momentum and loaded.transformer.config.chunk_frames == K
    for p in (loaded, patched):
        p.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(loaded(**call_kwargs()).frames, patched(**call_kwargs()).frames)


def test_lact_keys_for_a_lact_folder_are_refused(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "lact")
    with pytest.raises(ValueError, match=r"\['chunk_frames'\].*already holds a LaCT transformer"):
        LaCTVideoPipeline.from_pretrained(tmp_path / "lact", chunk_frames=2)


def test_fixed_generator_is_deterministic(pipe):
    a = pipe(**call_kwargs()).frames
    b = pipe(**call_kwargs()).frames
    c = pipe(**call_kwargs(generator=torch.Generator().manual_seed(1))).frames
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        pytest.param(dict(height=40), ValueError, "divisible by 16", id="height"),
        pytest.param(dict(width=24), ValueError, "divisible by 16", id="width"),
        pytest.param(
            dict(prompt_embeds=torch.zeros(1, 16, 32)), ValueError, "Cannot forward both", id="prompt+embeds"
        ),
        pytest.param(dict(prompt=None), ValueError, "Provide either", id="no-prompt"),
        pytest.param(dict(prompt=3), ValueError, "type `str` or `list`", id="prompt-type"),
        pytest.param(dict(output_type="gif"), ValueError, "output_type", id="output-type"),
        pytest.param(dict(output_type="latent", output_path="x.mp4"), ValueError, "output_path", id="latent-to-file"),
        pytest.param(dict(num_frames=4 * 258 - 3), ValueError, "rope_max_seq_len=256", id="past-rope-limit"),
        pytest.param(dict(latents=torch.zeros(1, 16, 5, 4, 4)), ValueError, r"\(1, 16, 6, 4, 4\)", id="latents-shape"),
        pytest.param(
            dict(generator=[torch.Generator()] * 2), ValueError, "list of generators of length 2", id="generators"
        ),
        pytest.param(
            dict(callback_on_step_end_tensor_inputs=["timestep"]), ValueError, "callback_on_step_end", id="callback"
        ),
        pytest.param(dict(negative_prompt=[NEGATIVE] * 2), ValueError, "batch size", id="negative-batch"),
    ],
)
def test_bad_arguments_raise_clear_errors(pipe, overrides, error, match):
    with pytest.raises(error, match=match):
        pipe(**call_kwargs(**overrides))


def test_rope_limit_message_and_how_to_raise_it(tiny_wan_dir):
    small = LaCTVideoPipeline.from_wan(tiny_wan_dir, rope_max_seq_len=6, **LACT_CONFIG)
    small.set_progress_bar_config(disable=True)
    assert small.transformer.config.rope_max_seq_len == 6
    assert small(**call_kwargs(num_frames=frames_for(2))).frames.shape[1] == frames_for(2)  # 6 latent frames
    with pytest.raises(ValueError, match=r"rope_max_seq_len=6 latent frames: at most num_frames=21") as info:
        small(**call_kwargs(num_frames=frames_for(3)))
    assert "from_wan(path, rope_max_seq_len=" in str(info.value)


@pytest.mark.parametrize(
    "num_frames, expected",
    [
        pytest.param(30, frames_for(2), id="30->21"),
        pytest.param(25, frames_for(2), id="25->21"),
        pytest.param(1, frames_for(1), id="1->9"),
    ],
)
def test_num_frames_round_down_to_whole_chunks(pipe, caplog, num_frames, expected):
    with caplog.at_level(logging.WARNING):
        frames = pipe(**call_kwargs(num_frames=num_frames, num_inference_steps=1)).frames
    assert frames.shape[1] == expected
    warnings = [record.getMessage() for record in caplog.records if "num_frames" in record.getMessage()]
    assert len(warnings) == 1 and f"Generating num_frames={expected}" in warnings[0]  # one warning, 30 too


def test_valid_num_frames_do_not_warn(pipe, caplog):
    with caplog.at_level(logging.WARNING):
        pipe(**call_kwargs(num_frames=frames_for(1), num_inference_steps=1))
    assert "num_frames" not in caplog.text


def test_list_of_prompts_and_videos_per_prompt(pipe):
    prompts = [PROMPT, "waves crash on the rocks under a cloudy sky"]
    generators = [torch.Generator().manual_seed(s) for s in range(4)]
    batch = pipe(
        **call_kwargs(prompt=prompts, negative_prompt=[NEGATIVE] * 2, num_videos_per_prompt=2, generator=generators)
    ).frames
    assert batch.shape == (4, frames_for(2), SIZE, SIZE, 3)
    # Rows are independent: video 2 (prompt 1, first copy) equals prompt 1 generated alone with its generator.
    alone = pipe(**call_kwargs(prompt=prompts[1], generator=torch.Generator().manual_seed(2))).frames
    np.testing.assert_allclose(batch[2:3], alone, rtol=0, atol=1e-5)
    assert np.abs(batch[0] - batch[1]).max() > 1e-3  # same prompt, other noise


def test_output_types(pipe):
    np_frames = pipe(**call_kwargs()).frames
    pt_frames = pipe(**call_kwargs(output_type="pt")).frames
    pil_frames = pipe(**call_kwargs(output_type="pil")).frames
    latents = pipe(**call_kwargs(output_type="latent")).frames
    (tuple_frames,) = pipe(**call_kwargs(return_dict=False))
    assert np_frames.dtype == np.float32 and 0 <= np_frames.min() and np_frames.max() <= 1
    assert pt_frames.shape == (1, frames_for(2), 3, SIZE, SIZE)
    np.testing.assert_allclose(pt_frames.permute(0, 1, 3, 4, 2).numpy(), np_frames, atol=1e-6)
    assert len(pil_frames) == 1 and len(pil_frames[0]) == frames_for(2) and pil_frames[0][0].size == (SIZE, SIZE)
    assert np.abs(np.asarray(pil_frames[0][-1]) / 255.0 - np_frames[0, -1]).max() <= 1 / 255 + 1e-6
    assert latents.shape == (1, 16, 2 * K, 4, 4)
    np.testing.assert_array_equal(tuple_frames, np_frames)


@pytest.mark.parametrize("output_type", ["pt", "latent"])
def test_tensors_handed_out_are_ordinary_tensors(pipe, output_type):
    """Generation runs under `torch.inference_mode`; what users get back must still allow in-place edits and
    autograd, which inference tensors refuse outside inference mode."""
    streamed = next(iter(pipe.stream(**call_kwargs(output_type=output_type))))
    called = pipe(**call_kwargs(output_type=output_type)).frames
    for frames in (streamed, called):
        assert not frames.is_inference()
        frames.mul_(2)  # raises for an inference tensor


def test_callback_once_per_step_per_chunk_matches_num_timesteps(pipe):
    calls = []

    def callback(p, step, timestep, kwargs):
        calls.append((step, p.current_chunk, int(timestep), tuple(kwargs["latents"].shape)))
        return {}

    num_chunks, steps = 3, 2
    pipe(**call_kwargs(num_frames=frames_for(num_chunks), num_inference_steps=steps, callback_on_step_end=callback))
    assert pipe.num_timesteps == num_chunks * steps == len(calls)
    assert [c[0] for c in calls] == list(range(num_chunks * steps))
    assert [c[1] for c in calls] == [i for i in range(num_chunks) for _ in range(steps)]
    assert len({c[2] for c in calls}) == steps  # every chunk runs the same schedule
    assert all(c[3] == (1, 16, K, 4, 4) for c in calls)  # the current chunk's latents
    assert pipe.current_chunk is None


def test_the_callback_type_hint_is_the_call_made(pipe):
    """`callback_on_step_end`'s hint says what it is called with and must return: (pipe, step, timestep,
    callback_kwargs) -> dict, diffusers' convention."""
    hint = typing.get_type_hints(LaCTVideoPipeline.__call__)["callback_on_step_end"]
    callable_hint = next(arg for arg in typing.get_args(hint) if typing.get_origin(arg) is collections.abc.Callable)
    parameters, returns = typing.get_args(callable_hint)
    calls = []
    pipe(**call_kwargs(num_inference_steps=1, callback_on_step_end=lambda *args: calls.append(args) or {}))
    assert len(parameters) == len(calls[0]) == 4
    for value, expected in zip(calls[0], parameters):
        assert isinstance(value, typing.get_origin(expected) or expected), (value, expected)
    assert typing.get_origin(returns) is dict


def test_callback_can_edit_latents_and_interrupt(pipe):
    def zero_last_step(p, step, timestep, kwargs):
        if step == p.num_timesteps - 1:
            return {"latents": torch.zeros_like(kwargs["latents"])}
        return {}

    latents = pipe(**call_kwargs(output_type="latent", callback_on_step_end=zero_last_step)).frames
    assert latents[:, :, K:].abs().max() == 0 and latents[:, :, :K].abs().max() > 0

    def stop_in_chunk_1(p, step, timestep, kwargs):
        if p.current_chunk == 1:
            p._interrupt = True
        return {}

    frames = pipe(**call_kwargs(num_frames=frames_for(4), callback_on_step_end=stop_in_chunk_1)).frames
    assert frames.shape[1] == frames_for(2)  # chunks 0 and 1 (cut short), no more


def test_callback_can_change_the_prompt_mid_video(pipe):
    """The projected prompt is computed once per video, and again when a callback hands back new
    embeddings: a stale projection would leave chunk 1 as it was."""
    steps = 2

    def dim_the_prompt_from_chunk_1(p, step, timestep, kwargs):
        return {"prompt_embeds": 0.5 * kwargs["prompt_embeds"]} if step == steps - 1 else {}

    kwargs = call_kwargs(num_frames=frames_for(2), num_inference_steps=steps, output_type="latent")
    plain = pipe(**kwargs).frames
    kwargs.update(generator=torch.Generator().manual_seed(0), callback_on_step_end=dim_the_prompt_from_chunk_1)
    kwargs["callback_on_step_end_tensor_inputs"] = ["latents", "prompt_embeds"]
    changed = pipe(**kwargs).frames
    torch.testing.assert_close(changed[:, :, :K], plain[:, :, :K], rtol=0, atol=0)
    assert (changed[:, :, K:] - plain[:, :, K:]).abs().max() > 1e-3


def test_output_path_writes_the_mp4_incrementally(pipe, tmp_path):
    path = tmp_path / "video.mp4"
    out = pipe(**call_kwargs(num_frames=frames_for(3), output_path=path, fps=8))
    assert out.frames is None and out.video_paths == [str(path)]
    assert imageio_ffmpeg.count_frames_and_secs(str(path))[0] == frames_for(3)
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    assert meta["size"] == (SIZE, SIZE)
    written = np.stack([np.frombuffer(f, np.uint8).reshape(SIZE, SIZE, 3) for f in reader]) / 255.0
    expected = pipe(**call_kwargs(num_frames=frames_for(3))).frames[0]
    assert np.abs(written - expected).mean() < 0.05  # lossy H.264 of random-weight "noise" video


def test_stream_to_files_for_a_batch_and_stop_early(pipe, tmp_path):
    frames = []
    kwargs = call_kwargs(num_frames=frames_for(4), num_videos_per_prompt=2, output_path=tmp_path / "v.mp4")
    stream = pipe.stream(**kwargs)
    for chunk in stream:
        frames.append(chunk)
        if len(frames) == 2:
            break
    stream.close()  # closes both files with the chunks so far
    assert [c.shape[:2] for c in frames] == [(2, 4 * K - 3), (2, 4 * K)]
    for i in range(2):
        assert imageio_ffmpeg.count_frames_and_secs(str(tmp_path / f"v_{i}.mp4"))[0] == frames_for(2)


@pytest.mark.parametrize(
    "how, expected_graphs",
    [
        # denoise and commit, each for chunk 0 (no window, initial fast weights) and for later chunks, and
        # the video's first call, which also projects the prompt
        ("compile", 5),
        # diffusers' regional compilation: one block graph per (mode, first chunk or not), shared by all blocks
        ("compile_repeated_blocks", 4),
    ],
)
def test_compiled_transformer_generates_the_same_video_without_recompiling_per_chunk(
    tiny_wan_dir, how, expected_graphs
):
    """`pipe.transformer.compile(fullgraph=True)` or `compile_repeated_blocks(fullgraph=True)`: graphs
    compiled in the first two chunks and reused by every later chunk, and the same video as eager up to
    float rounding."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()  # graphs compiled earlier in this process must not count
    pipe = LaCTVideoPipeline.from_wan(tiny_wan_dir, **LACT_CONFIG)
    activate_memory(pipe.transformer)
    pipe.set_progress_bar_config(disable=True)
    eager = pipe(**call_kwargs(num_frames=frames_for(3)), output_type="latent").frames

    getattr(pipe.transformer, how)(fullgraph=True)
    compiled = pipe(**call_kwargs(num_frames=frames_for(3)), output_type="latent").frames
    graphs = counters["stats"]["unique_graphs"]
    assert graphs == expected_graphs
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)

    longer = pipe(**call_kwargs(num_frames=frames_for(5)), output_type="latent").frames
    assert counters["stats"]["unique_graphs"] == graphs  # chunks 3 and 4 reuse the graphs
    torch.testing.assert_close(longer[:, :, : 3 * K], compiled, rtol=1e-4, atol=1e-4)


def test_progress_bar_counts_steps_and_names_the_chunk(pipe):
    bar = io.StringIO()
    pipe.set_progress_bar_config(file=bar, disable=False, mininterval=0)
    try:
        pipe(**call_kwargs(num_frames=frames_for(2), num_inference_steps=2), output_type="latent")
    finally:
        pipe.set_progress_bar_config(disable=True)
    assert "4/4" in bar.getvalue() and "chunk 2/2" in bar.getvalue()


def test_generate_script_patches_a_plain_wan_folder_with_lact_options(tiny_wan_dir, tmp_path, capsys):
    generate = generate_module
    path = tmp_path / "video.mp4"
    args = ["--model", str(tiny_wan_dir), "--prompt", PROMPT, "--num_frames", str(frames_for(2)), "--height", str(SIZE),
            "--width", str(SIZE), "--steps", "1", "--max_sequence_length", "8", "--output", str(path)]  # fmt: skip
    generate.main([*args, "--from_wan", "--lact", "fw_head_dim=12", "--lact", "lact_blocks=[0]"])
    assert imageio_ffmpeg.count_frames_and_secs(str(path))[0] == frames_for(2)
    bad_options = (
        ["--from_wan", "--lact", "fw_head_dims=12"],
        ["--from_wan", "--lact", "fw_head_dim"],
        ["--from_wan", "--lact", "lact_blocks=[0"],
        ["--lact", "fw_head_dim=12"],
    )
    for bad in bad_options:
        with pytest.raises(SystemExit):
            generate.main([*args, *bad])
        assert "--lact" in capsys.readouterr().err  # the message names the option at fault
