"""Rotary position policies past the training length (docs/design.md Sec. 1.7): the positions from their formulas,
window offsets kept, the memory bounded, teacher forcing with a position offset equal to inference from that chunk,
old folders loading as "absolute", the rotary table limit lifted, and the trainer's offsets.
(Teacher forcing equals chunk-by-chunk inference under every policy: tests/test_model.py, PARITY.)"""

import dataclasses
import json

import pytest
import torch
from test_model import K, chunk_by_chunk, clip, lact_model, teacher_forcing, wan  # noqa: F401 (fixture)
from utils import rel_err

from lact_video import LaCTState, LaCTWanTransformer3DModel, interleave_teacher_forcing, interleave_timesteps
from lact_video.layers.rotary import chunk_position, segment_positions
from lact_video.training.config import ConfigError, check_config, load_config
from lact_video.training.config import lact_config as finetune_lact_config
from lact_video.training.flow_matching import draw_position_offset


def test_chunk_positions_follow_their_formulas():
    trained = 6
    assert [chunk_position("absolute", i, trained) for i in range(10)] == list(range(10))
    assert [chunk_position("clamp", i, trained) for i in range(10)] == [0, 1, 2, 3, 4, 5, 5, 5, 5, 5]
    assert [chunk_position("cyclic", i, trained) for i in range(10)] == [0, 1, 2, 3, 4, 5, 4, 5, 4, 5]
    assert chunk_position("absolute", 7, None) == 7  # absolute needs no training length
    assert chunk_position("cyclic", 7, None) == 7  # nor does a model whose training length is unknown


@pytest.mark.parametrize("trained", [1, 2, 6])
@pytest.mark.parametrize("policy", ["absolute", "clamp", "cyclic"])
def test_a_noisy_chunk_is_one_chunk_after_its_window_under_every_policy(policy, trained):
    chunks = tuple(range(30))
    (noisy, memory), (clean, _) = (segment_positions(policy, trained, chunks, (flag,) * 30) for flag in (True, False))
    assert all(noisy[i] - clean[i - 1] == 1 for i in range(1, 30))  # chunk i's window: clean chunk i - 1
    assert noisy[:trained] == memory[:trained] == chunks[:trained]  # within the training length: absolute
    if policy != "absolute":
        assert max(memory) == trained - 1 and max(noisy) <= trained and min(clean) >= 0  # bounded, never negative


def test_bounded_policies_equal_absolute_within_the_training_length_and_differ_past_it(wan):  # noqa: F811
    clean, noisy, t, text = clip(n=5)
    with torch.no_grad():
        absolute = teacher_forcing(lact_model(wan), clean, noisy, t, text)
        for policy in ("clamp", "cyclic"):
            bounded = teacher_forcing(lact_model(wan, position_policy=policy, trained_chunks=3), clean, noisy, t, text)
            torch.testing.assert_close(bounded[:, :, :, : 3 * K], absolute[:, :, :, : 3 * K], rtol=0, atol=0)
            assert rel_err(bounded[:, :, :, 3 * K :], absolute[:, :, :, 3 * K :]) > 1e-3, policy


@pytest.mark.parametrize("policy", ["clamp", "cyclic"])
def test_window_attention_alone_is_unchanged_by_a_bounded_policy(wan, policy):  # noqa: F811
    """Without a memory only position differences matter, and the policies keep the window's: same outputs up to
    float rounding. (A naive clamp of every position would put chunk i and its window at one position.)"""
    clean, noisy, t, text = clip(n=6)
    with torch.no_grad():
        absolute = teacher_forcing(lact_model(wan, lact_blocks=[]), clean, noisy, t, text)
        bounded = lact_model(wan, lact_blocks=[], position_policy=policy, trained_chunks=3)
        torch.testing.assert_close(teacher_forcing(bounded, clean, noisy, t, text), absolute, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("policy", ["absolute", "cyclic"])
def test_teacher_forcing_at_a_position_offset_equals_inference_from_that_chunk(wan, policy):  # noqa: F811
    """Training's random offsets (train.position_offset_max): a clip at offset 3 is a video whose first chunk is
    chunk 3 of an empty state."""
    model = lact_model(wan, position_policy=policy, trained_chunks=4)
    clean, noisy, t, text = clip(n=3)
    with torch.no_grad():
        sequence = interleave_teacher_forcing(noisy, clean, K)
        expected = model(sequence, interleave_timesteps(t), text, position_offset=3).sample
        model.init_state = lambda: dataclasses.replace(LaCTState.empty(len(model.blocks)), num_chunks=3)
        actual = chunk_by_chunk(model, clean, noisy, t, text)
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
        unshifted = teacher_forcing(model, clean, noisy, t, text)
    assert rel_err(unshifted, expected) > 1e-3
    with pytest.raises(ValueError, match="position_offset is for teacher forcing"):
        model(noisy[:, 0, :, :K], t[:, 0, 0], text, mode="denoise", state=model.init_state(), position_offset=1)


def test_bounded_policy_lifts_the_rotary_table_limit(wan):  # noqa: F811
    """The tiny model's table holds 256 latent frames (128 chunks of 2): absolute refuses chunk 200, cyclic runs it."""
    x, t, text = torch.randn(1, 16, K, 4, 4), torch.tensor([500.0]), torch.randn(1, 7, 32)
    absolute, cyclic = lact_model(wan), lact_model(wan, position_policy="cyclic", trained_chunks=4)
    late = dataclasses.replace(LaCTState.empty(len(absolute.blocks)), num_chunks=200)
    with pytest.raises(ValueError, match="rope_max_seq_len=256 .* bounded `position_policy`"):
        absolute(x, t, text, mode="denoise", state=late)
    assert cyclic(x, t, text, mode="denoise", state=late).sample.shape == x.shape
    assert absolute.rotary_latent_frames(400) == 400 and cyclic.rotary_latent_frames(400) == (4 + 1) * K


def test_pipeline_frame_check_follows_the_policy(tiny_wan_dir):
    from pipelines.pipeline_lact_video import LaCTVideoPipeline

    lact = dict(chunk_frames=K, fw_head_dim=12)
    small = LaCTVideoPipeline.from_wan(tiny_wan_dir, rope_max_seq_len=6, **lact)
    with pytest.raises(ValueError, match=r"bounded position_policy \('clamp' or 'cyclic', with trained_chunks\)"):
        small.check_num_frames(4 * 20 - 3)
    bounded = LaCTVideoPipeline.from_wan(
        tiny_wan_dir, rope_max_seq_len=6, position_policy="cyclic", trained_chunks=2, **lact
    )
    assert bounded.check_num_frames(4 * 20 - 3) == 4 * 20 - 3


def test_generate_script_sets_the_policy_of_a_saved_folder(tiny_wan_dir, tmp_path, monkeypatch, capsys):
    """`--position_policy` / `--trained_chunks` override a LaCT folder's config (and a Wan base's with --from_wan);
    a value the model refuses is one line on stderr with exit status 2."""
    from pipelines import generate as generate_module
    from pipelines.pipeline_lact_video import LaCTVideoPipeline

    folder = tmp_path / "lact"
    LaCTVideoPipeline.from_wan(tiny_wan_dir, chunk_frames=K, fw_head_dim=12).save_pretrained(folder)
    loaded = []
    load = generate_module.load_pipeline
    monkeypatch.setattr(generate_module, "load_pipeline", lambda *a: loaded.append(load(*a)) or loaded[-1])
    run = ["--prompt", "a cat", "--num_frames", "5", "--height", "16", "--width", "16", "--steps", "1",
           "--max_sequence_length", "8", "--output", str(tmp_path / "v.mp4")]  # fmt: skip
    generate_module.main(["--model", str(folder), *run])
    generate_module.main(["--model", str(folder), "--position_policy", "cyclic", "--trained_chunks", "3", *run])
    base = ["--model", str(tiny_wan_dir), "--from_wan", "--lact", f"chunk_frames={K}", "--lact", "fw_head_dim=12"]
    generate_module.main([*base, "--position_policy", "absolute", "--trained_chunks", "4", *run])
    configs = [(pipe.transformer.config.position_policy, pipe.transformer.config.trained_chunks) for pipe in loaded]
    assert configs == [("clamp", None), ("cyclic", 3), ("absolute", 4)]

    for argv, message in [
        (
            [*base, "--lact", "position_policy=Cyclic"],
            "with --lact: position_policy must be one of ('absolute', 'clamp', 'cyclic'); got 'Cyclic'",
        ),
        (["--model", str(tiny_wan_dir), "--from_wan"], f"--model {tiny_wan_dir}: "),  # the base's dim, not 768's
        (["--model", str(folder), "--trained_chunks", "0"], "--trained_chunks 0: give the number of chunks"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            generate_module.main([*argv, *run])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and "Traceback" not in err


def test_a_folder_records_its_policy_and_an_older_one_loads_absolute(wan, tmp_path):  # noqa: F811
    fresh = lact_model(wan).config  # the default policy, inactive until the trainer records trained_chunks
    assert (fresh.position_policy, fresh.trained_chunks, fresh.rope_max_seq_len) == ("clamp", None, 256)
    model = lact_model(wan, position_policy="clamp", trained_chunks=3)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["position_policy"], config["trained_chunks"]) == ("clamp", 3)
    assert LaCTWanTransformer3DModel.from_pretrained(tmp_path).config.position_policy == "clamp"
    for key in ("position_policy", "trained_chunks"):  # as written before position policies existed
        del config[key]
    (tmp_path / "config.json").write_text(json.dumps(config))
    old = LaCTWanTransformer3DModel.from_pretrained(tmp_path)
    assert (old.config.position_policy, old.config.trained_chunks) == ("absolute", None)
    chosen = LaCTWanTransformer3DModel.from_pretrained(tmp_path, position_policy="cyclic", trained_chunks=3)
    assert (chosen.config.position_policy, chosen.config.trained_chunks) == ("cyclic", 3)


def test_trainer_records_the_training_length_and_draws_offsets_in_range():
    base = [
        "model.pretrained_model_name_or_path=unused",
        "data.cache_dir=unused",
        "data.num_frames=21",
        "data.chunk_frames=2",
    ]
    assert finetune_lact_config(load_config(base))["trained_chunks"] == 3  # 6 latent frames, chunks of 2
    offset = load_config([*base, "train.position_offset_max=5"])
    assert finetune_lact_config(offset)["trained_chunks"] == 8
    assert finetune_lact_config(load_config([*base, "model.lact.trained_chunks=4"]))["trained_chunks"] == 4
    draws = [draw_position_offset(position, 0, 5) for position in range(200)]
    assert set(draws) == set(range(6))
    assert draws == [draw_position_offset(position, 0, 5) for position in range(200)]  # a resume draws the same
    assert draw_position_offset(7, 0, 0) == 0
    with pytest.raises(ConfigError, match="train.position_offset_max"):
        check_config(load_config([*base, "train.position_offset_max=-1"]))
