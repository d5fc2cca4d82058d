"""Prompt schedules (`pipelines.prompt_schedule`, docs/design.md Sec. 3.7) on the tiny model with its memory open:
a switch leaves the chunks before it as they were and carries the memory on; each entry is encoded and projected
once; bad schedules raise; the command line's `--prompt_at`."""

import contextlib
import logging
import re

import pytest
import torch
from test_pipeline import NEGATIVE, PROMPT, SIZE, K, call_kwargs, frames_for, reference_latents
from test_pipeline import pipe as pipe  # noqa: F401  (the module's fixture: tiny model, memory open)
from utils import assert_bitwise_equal

from lact_video.geometry import first_frame_of_chunk
from pipelines import generate as generate_module

OTHER = "the cat jumps onto a wall"
STEPS = 2


def start(chunk: int) -> int:
    """The first video frame of a chunk of K latent frames."""
    return first_frame_of_chunk(chunk, K)


def latents(pipe, num_chunks, **overrides):
    kwargs = call_kwargs(num_frames=frames_for(num_chunks), num_inference_steps=STEPS, output_type="latent")
    return pipe(**{**kwargs, **overrides}).frames


def test_a_switch_keeps_the_chunks_before_it_and_carries_the_memory(pipe):
    """Chunks 0-1 bit for bit those of the video without the switch; chunks 2-3 those of the plain per-branch
    reference that denoises and commits every chunk with its own prompt against the state carried from the start
    (a reset state, a recomputed past or a commit with the next prompt would all differ)."""
    plain = latents(pipe, 4)
    switched = latents(pipe, 4, prompt={0: PROMPT, start(2): OTHER})
    assert_bitwise_equal(switched[:, :, : 2 * K], plain[:, :, : 2 * K])
    assert (switched[:, :, 2 * K :] - plain[:, :, 2 * K :]).abs().max() > 1e-3
    expected = reference_latents(pipe, [[PROMPT, PROMPT, OTHER, OTHER]], [0], 4, STEPS, 5.0)
    torch.testing.assert_close(switched, expected, rtol=1e-5, atol=1e-5)


def test_negative_schedule_and_a_batch_of_schedules(pipe):
    """Two videos, each with its own prompts switching at chunk 2, and a negative prompt of their own that drops
    to Wan's empty one from chunk 1: the reference with those texts per chunk."""
    second = "a dog runs along the beach at sunset"
    out = latents(
        pipe,
        3,
        prompt=[(0, [PROMPT, second]), (start(2), [OTHER, "the dog swims"])],
        negative_prompt={0: NEGATIVE, start(1): ""},
        generator=[torch.Generator().manual_seed(s) for s in (3, 4)],
    )
    prompts = [[PROMPT, PROMPT, OTHER], [second, second, "the dog swims"]]
    expected = reference_latents(pipe, prompts, [3, 4], 3, STEPS, 5.0, negatives=[[NEGATIVE, "", ""]] * 2)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_a_frame_inside_a_chunk_rounds_to_the_nearest_chunk_start(pipe, caplog):
    asked = start(2) - 4  # nearer chunk 2's start than chunk 1's
    with caplog.at_level(logging.WARNING):
        rounded = latents(pipe, 3, prompt={0: PROMPT, asked: OTHER})
    assert f"switches at frame {asked}" in caplog.text and f"frame {start(2)} (chunk 2)" in caplog.text
    assert_bitwise_equal(rounded, latents(pipe, 3, prompt=[(0, PROMPT), (start(2), OTHER)]))


@contextlib.contextmanager
def counting_calls(*modules: torch.nn.Module):
    """Yields one list per module that grows by one item with each of its forward calls."""
    counts = [[] for _ in modules]
    handles = [module.register_forward_hook(lambda *_, c=c: c.append(1)) for module, c in zip(modules, counts)]
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()


def test_each_entry_is_encoded_once_and_each_prompt_projected_once(pipe, caplog):
    """Prompts (A, A, B, B) and negatives (N, M, M, M) over 4 chunks: the text encoder runs once per entry (4), the
    transformer projects each pair in force once ((A, N), (A, M), (B, M)); an entry after the video is neither."""
    with counting_calls(pipe.text_encoder, pipe.transformer.condition_embedder.text_embedder) as counts:
        text_encoder_calls, projections = counts
        latents(pipe, 1)
        assert (len(text_encoder_calls), len(projections)) == (2, 1)  # a plain prompt: as before
        with caplog.at_level(logging.WARNING):
            latents(
                pipe,
                4,
                prompt={0: PROMPT, start(2): OTHER, start(5): "never shown"},
                negative_prompt={0: NEGATIVE, start(1): "blurry"},
            )
        assert (len(text_encoder_calls), len(projections)) == (2 + 4, 1 + 3)
    assert "entries from chunks [5] start after the last chunk" in caplog.text


def test_later_entries_do_not_warn_when_the_state_goes_on(pipe, caplog):
    """The same schedule passed to every call of a paused video: a call that hands out its state leaves the later
    entries to the next call (debug only); one that does not would never use them (a warning)."""
    schedule = {0: PROMPT, start(3): OTHER}
    with caplog.at_level(logging.DEBUG, logger="pipelines.prompt_schedule"):
        latents(pipe, 2, prompt=schedule, return_state=True)
    assert [r.levelno for r in caplog.records if "start after the last chunk" in r.getMessage()] == [logging.DEBUG]
    caplog.clear()
    latents(pipe, 2, prompt=schedule)
    assert [r.levelno for r in caplog.records if "start after the last chunk" in r.getMessage()] == [logging.WARNING]


def test_a_callback_replacement_applies_to_the_current_entry(pipe):
    """A callback halves the prompt at the end of chunk 0: chunk 1 (same entry) keeps the halved embeddings, chunk
    2 starts from its own entry's."""
    seen = {}

    def halve_after_chunk_0(p, step, timestep, kwargs):
        seen.setdefault(p.current_chunk, kwargs["prompt_embeds"])
        return {"prompt_embeds": 0.5 * kwargs["prompt_embeds"]} if step == STEPS - 1 else {}

    latents(
        pipe,
        3,
        prompt={0: PROMPT, start(2): OTHER},
        callback_on_step_end=halve_after_chunk_0,
        callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"],
    )
    with torch.no_grad():  # as the pipeline encodes (with autograd on, the encoder's kernels round differently)
        first, _ = pipe.encode_prompt(PROMPT, max_sequence_length=16, do_classifier_free_guidance=False)
        other, _ = pipe.encode_prompt(OTHER, max_sequence_length=16, do_classifier_free_guidance=False)
    assert_bitwise_equal(seen[0], first)
    assert_bitwise_equal(seen[1], 0.5 * first)
    assert_bitwise_equal(seen[2], other)


BAD_SCHEDULES = [
    pytest.param({0: PROMPT, start(2): OTHER, start(1): "x"}, f"out of order: frame {start(1)} comes", id="order"),
    pytest.param({start(1): OTHER, 0: PROMPT}, f"out of order: frame 0 comes after frame {start(1)}", id="order-0"),
    pytest.param([(0, PROMPT), (0, OTHER)], "frame 0 has two entries", id="frame-twice"),
    pytest.param({start(1): PROMPT}, f"starts at frame {start(1)}: it must start at frame 0", id="no-frame-0"),
    pytest.param({0: PROMPT, 3: OTHER}, "frames 0 and 3 both round to chunk 0", id="same-chunk"),
    pytest.param({0: PROMPT, -4: OTHER}, "integers >= 0), got -4", id="negative-frame"),
    pytest.param({0: PROMPT, "9": OTHER}, "integers >= 0), got '9'", id="frame-type"),
    pytest.param({0: 3}, "must be a `str` or a non-empty list of `str`", id="text-type"),
    pytest.param({}, "empty schedule", id="empty-schedule"),
]
# What a negative schedule may hold: an empty text (Wan's default negative prompt), a `str` beside a batch.
BAD_PROMPT_SCHEDULES = [
    pytest.param({0: PROMPT, start(1): " "}, f"at frame {start(1)} is empty", id="empty-text"),
    pytest.param({0: [PROMPT, OTHER], 9: OTHER}, "2 at frame 0, 1 at frame 9", id="batch-sizes"),
]


@pytest.mark.parametrize(
    "name, schedule, match",
    [
        pytest.param(name, *p.values, id=f"{name}-{p.id}")
        for name in ("prompt", "negative_prompt")
        for p in BAD_SCHEDULES
    ]
    + [pytest.param("prompt", *p.values, id=f"prompt-{p.id}") for p in BAD_PROMPT_SCHEDULES],
)
def test_bad_schedules_raise_before_any_work(pipe, name, schedule, match):
    with counting_calls(pipe.text_encoder) as (calls,), pytest.raises(ValueError, match=re.escape(match)):
        latents(pipe, 2, **{name: schedule})
    assert not calls


def test_negative_batch_must_match_the_prompts(pipe):
    with pytest.raises(
        ValueError, match=r"`negative_prompt` \(from chunk 1\) has batch size 2, but `prompt` has batch size 1"
    ):
        latents(pipe, 2, negative_prompt={0: NEGATIVE, start(1): [NEGATIVE, ""]})


def test_generate_script_switches_prompts(tiny_wan_dir, tmp_path, capsys, monkeypatch):
    """`--prompt_at` / `--negative_prompt_at` reach the pipeline as schedules (the video is written); every bad
    schedule is one line on stderr and exit status 2, or argparse's error, before any model loads where it can."""
    prompts = []
    call = generate_module.LaCTVideoPipeline.__call__

    def recording_call(self, prompt, **kwargs):
        prompts.append((prompt, kwargs["negative_prompt"]))
        return call(self, prompt, **kwargs)

    monkeypatch.setattr(generate_module.LaCTVideoPipeline, "__call__", recording_call)
    path = tmp_path / "video.mp4"
    args = ["--model", str(tiny_wan_dir), "--from_wan", "--lact", "fw_head_dim=12", "--num_frames", str(frames_for(3)),
            "--height", str(SIZE), "--width", str(SIZE), "--steps", "1", "--max_sequence_length", "8",
            "--output", str(path)]  # fmt: skip
    generate_module.main([*args, "--prompt", PROMPT, "--prompt_at", str(start(2)), OTHER, "--prompt_at", "9", "x",
                          "--negative_prompt_at", str(start(1)), "blurry"])  # fmt: skip
    assert prompts == [({0: PROMPT, 9: "x", start(2): OTHER}, {0: "", start(1): "blurry"})]
    assert path.exists()  # the video was made

    bad = [
        (["--prompt", PROMPT, "--prompt_at", "9", ""], "--prompt_at` at frame 9 is empty"),
        (["--prompt", PROMPT, "--prompt_at", "nine", OTHER], "FRAME must be a video frame index"),
        (["--prompt", PROMPT, "--prompt_at", "0", OTHER], "frame 0 already has a text (--prompt holds from frame 0)"),
        (["--prompt_at", "9", OTHER], "give --prompt (the text from frame 0) too"),
        (["--prompt", PROMPT, "--prompt_at", "3", OTHER], "frames 0 and 3 both round to chunk 0"),  # after loading
    ]
    for extra, message in bad:
        with pytest.raises(SystemExit) as exit_info:
            generate_module.main([*args, *extra])
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and message in err.splitlines()[-1] and "Traceback" not in err
