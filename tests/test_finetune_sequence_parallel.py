"""`train.sequence_parallel_size`: the trainer's side of sequence parallelism (issue 16; docs/design.md, Sec. 7).

The fast tests check the layout of the processes and the refusals. The slow ones launch the tiny model under
DeepSpeed ZeRO-3 on the CPU (gloo) and compare with fewer processes on the same clips: the loss and every
parameter's gradient after one micro-step (`tests/sp_gradients.py`), and the per-step losses of 3-step runs.
"""

import json
import pathlib
import subprocess
import sys

import pytest
import torch
from test_finetune import (
    REPO,
    TINY,
    ZERO3_CPU,
    _free_port,
    assert_weights_match,
    launch_env,
    metrics,
    run,
    weights,
)
from test_finetune import cache as cache  # noqa: F401  (pytest fixtures, shared)
from test_finetune import trainer as trainer  # noqa: F401
from test_finetune import videos as videos  # noqa: F401

import lact_video.training.trainer
from lact_video.training.config import ConfigError
from lact_video.training.distributed import ParallelLayout
from lact_video.training.sampling import ResumableSampler

GRADIENTS = REPO / "tests" / "sp_gradients.py"
# Momentum on and a window smaller than a chunk, as issue 16's proof asks; fp32 on CPU. Chunks of one latent frame
# (4 tokens) make 4 chunks of the tiny clip, so that the momentum gate shapes an update that later chunks read.
MODEL = ["data.chunk_frames=1", "model.lact.use_momentum=true", "model.lact.window_size=2", "train.report_to=none"]


# Fast


def test_layout_groups_consecutive_ranks_into_one_data_parallel_replica():
    layouts = [ParallelLayout.of(8, rank, 4) for rank in range(8)]
    assert [(x.data_parallel_size, x.data_parallel_rank) for x in layouts] == [(2, 0)] * 4 + [(2, 1)] * 4
    assert ParallelLayout.of(3, 2, 1) == ParallelLayout(1, 3, 2)


def test_a_sequence_parallel_group_reads_the_same_clips_as_one_data_parallel_rank():
    """4 processes at S = 2 read, group by group, what 2 data-parallel processes read (the same stream positions,
    hence the same clips, times, noise and caption dropout)."""

    def read(num_processes, rank, size):
        layout = ParallelLayout.of(num_processes, rank, size)
        sampler = ResumableSampler(5, 2, layout.data_parallel_size, layout.data_parallel_rank, seed=3)
        return [next(keys) for keys in [iter(sampler)] for _ in range(6)]

    for rank in range(4):
        assert read(4, rank, 2) == read(2, rank // 2, 1)
    assert read(4, 0, 2) != read(4, 2, 2)


def test_a_size_that_does_not_divide_the_processes_is_refused_with_status_2(tmp_path, monkeypatch, capsys):
    with pytest.raises(ConfigError, match=r"train.sequence_parallel_size=3 does not divide the 2 process"):
        ParallelLayout.of(2, 0, 3)
    monkeypatch.setattr(sys, "argv", ["finetune.py", "--config", TINY, f"train.output_dir={tmp_path / 'run'}",
                                      "model.pretrained_model_name_or_path=/no/model", "data.cache_dir=/no/cache",
                                      "train.sequence_parallel_size=2", "train.report_to=none"])  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        lact_video.training.trainer.cli()
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    assert "train.sequence_parallel_size=2 does not divide the 1 process(es)" in err and "use one of 1" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("size, refused", [(2, False), (4, False), (8, True), (5, True)])
def test_size_must_divide_the_heads_and_the_tokens_of_a_chunk(size, refused):
    """The 1.3B recipe: 12 heads, 4680 tokens per chunk (3 x 30 x 52): S = 2 and 4 fit; 8 splits no head count
    evenly and 5 no chunk. Checked from the base's config.json, before any weights load."""
    from lact_video.training.config import check_against_transformer, load_config
    from lact_video.wan_configs import WAN21_T2V_CONFIGS

    recipe = str(REPO / "configs" / "wan2.1-t2v-1.3b-lact.yaml")
    config = load_config(["--config", recipe, "data.cache_dir=/c", f"train.sequence_parallel_size={size}"])
    wan = WAN21_T2V_CONFIGS["Wan2.1-T2V-1.3B"]
    if not refused:
        check_against_transformer(config, wan)
        return
    with pytest.raises(ConfigError, match=f"sequence_parallel_size={size} must divide .* 12 attention heads and the 4680 "
                       "tokens of a chunk .* use one of 1, 2, 3, 4, 6, 12"):  # fmt: skip
        check_against_transformer(config, wan)


def test_checkpoints_record_s_and_a_resume_may_change_it():
    """A record without the field was written at S = 1; changing S changes the clips per optimizer step."""
    from lact_video.training.provenance import Provenance, clips_per_step

    assert Provenance.from_marker({"num_processes": 4}).sequence_parallel_size == 1
    train = {"train": {"train_batch_size": 2, "gradient_accumulation_steps": 3}}
    then = Provenance(8, "DEEPSPEED", 3, "bf16", "0.3.0", train, sequence_parallel_size=4)
    assert clips_per_step(then) == 2 * 2 * 3  # 8 processes / S = 4: 2 data-parallel ranks
    assert clips_per_step(Provenance.from_marker({**then.as_marker(), "sequence_parallel_size": 1})) == 8 * 2 * 3


def test_size_below_one_is_refused():
    from lact_video.training.config import load_config

    with pytest.raises(ConfigError, match="train.sequence_parallel_size"):
        load_config(["--config", TINY, "data.cache_dir=/c", "train.sequence_parallel_size=0"])


# Slow: launches


def launch(log, script, num_processes: int, *args, timeout=600) -> int:
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", ZERO3_CPU,
        "--num_processes", str(num_processes), "--main_process_port", str(_free_port()), str(script),
        "--config", TINY, *args,
    ]  # fmt: skip
    with open(log, "w") as stream:
        done = subprocess.run(command, cwd=REPO, env=launch_env(), stdout=stream, stderr=subprocess.STDOUT,
                              timeout=timeout)  # fmt: skip
    return done.returncode


def gradients(out: pathlib.Path, log: pathlib.Path, rc: int) -> dict:
    path = out / "gradients.pt"
    assert path.is_file(), f"exit code {rc}; log tail:\n{log.read_text()[-4000:]}"
    return torch.load(path, weights_only=True)


def launched_gradients(tmp_path, name, num_processes, base, cache, *overrides) -> dict:
    out, log = tmp_path / name, tmp_path / f"{name}.txt"
    args = [f"model.pretrained_model_name_or_path={base}", f"data.cache_dir={cache}", f"train.output_dir={out}"]
    rc = launch(log, GRADIENTS, num_processes, *args, *MODEL, *overrides)
    return gradients(out, log, rc)


def one_process_gradients(tmp_path, base, cache, *overrides) -> dict:
    out, log = tmp_path / "one", tmp_path / "one.txt"
    command = [sys.executable, str(GRADIENTS), "--config", TINY, f"model.pretrained_model_name_or_path={base}",
               f"data.cache_dir={cache}", f"train.output_dir={out}", *MODEL, *overrides]  # fmt: skip
    with open(log, "w") as stream:
        done = subprocess.run(
            command, cwd=REPO, env=launch_env(), stdout=stream, stderr=subprocess.STDOUT, timeout=300
        )
    return gradients(out, log, done.returncode)


def assert_gradients_match(a: dict, b: dict, rtol=1e-5):
    assert a["loss"] == pytest.approx(b["loss"], rel=rtol)
    assert a["grads"].keys() == b["grads"].keys()
    assert all(grad.abs().max() > 0 for grad in b["grads"].values())  # every parameter is checked, the memory's too
    for name, grad in a["grads"].items():
        other = b["grads"][name]
        scale = other.abs().max().item()
        assert grad.shape == other.shape, name
        assert (grad - other).abs().max().item() <= rtol * scale + 1e-12, (name, scale)


@pytest.mark.slow
def test_sp2_under_zero3_gives_one_process_loss_and_gradients(tiny_wan_dir, cache, tmp_path):
    """2 processes, S = 2, ZeRO-3, one clip; against one process without DeepSpeed on the same clip."""
    split = launched_gradients(tmp_path, "sp2", 2, tiny_wan_dir, cache, "train.sequence_parallel_size=2")
    whole = one_process_gradients(tmp_path, tiny_wan_dir, cache)
    assert_gradients_match(split, whole)


@pytest.mark.slow
def test_data2_x_sequence2_equals_data_parallel_2(tiny_wan_dir, cache, tmp_path):
    """4 processes (data 2 x sequence 2) against 2 processes of data parallelism, both ZeRO-3."""
    both = launched_gradients(tmp_path, "dp2sp2", 4, tiny_wan_dir, cache, "train.sequence_parallel_size=2")
    data = launched_gradients(tmp_path, "dp2", 2, tiny_wan_dir, cache)
    assert_gradients_match(both, data)


@pytest.mark.slow
def test_three_steps_at_sp2_log_one_process_losses(trainer, tiny_wan_dir, cache, videos, tmp_path):
    """`accelerate launch finetune/finetune.py ... train.sequence_parallel_size=2` (ZeRO-3, 2 processes): the
    per-step losses and validation losses of metrics.jsonl, and the exported EMA weights, equal one process's; the
    checkpoint records S, and the run resumes at S = 1."""
    from lact_video import LaCTWanTransformer3DModel

    common = [f"data.cache_dir={cache}", "train.max_train_steps=3", "train.checkpointing_steps=3", *MODEL]
    validation = [
        f"data.validation_data_dir={videos}",
        "train.validation_steps=3",
        "train.validation_noise_levels=[0.5]",
    ]
    out, log = tmp_path / "sp2", tmp_path / "sp2.txt"
    rc = launch(log, REPO / "finetune" / "finetune.py", 2, f"model.pretrained_model_name_or_path={tiny_wan_dir}",
                f"train.output_dir={out}", "train.sequence_parallel_size=2", *common, *validation)  # fmt: skip
    assert (out / "model_index.json").is_file(), f"exit code {rc}; log tail:\n{log.read_text()[-4000:]}"
    single = run(trainer, tmp_path / "one", tiny_wan_dir, *common, *validation)
    val = [{r["step"]: r["val/loss"] for r in map(json.loads, (o / "metrics.jsonl").read_text().splitlines())
            if "val/loss" in r} for o in (out, single)]  # fmt: skip
    assert sorted(val[0]) == [0, 3] and val[0] == pytest.approx(val[1], rel=1e-5)
    split, whole = metrics(out), metrics(single)
    assert sorted(split) == [1, 2, 3]
    for step in (1, 2, 3):
        assert split[step]["loss"] == pytest.approx(whole[step]["loss"], rel=1e-5), step
        assert split[step]["chunk_losses"] == pytest.approx(whole[step]["chunk_losses"], rel=1e-5), step
    marker = json.loads((out / "checkpoint-3" / "checkpoint.json").read_text())
    assert marker["sequence_parallel_size"] == 2 and marker["num_processes"] == 2
    info = json.loads((out / "train_info.json").read_text())
    assert (info["sequence_parallel_size"], info["data_parallel_size"]) == (2, 1)
    LaCTWanTransformer3DModel.from_pretrained(out / "transformer")
    assert_weights_match(weights(out), weights(single), atol=1e-5)  # the exported EMA weights

    # Resumed on the same 2 processes at S = 1: ZeRO-3's shards and the EMA slices load; the step reads 2 clips.
    resumed_log = tmp_path / "resumed.txt"
    rc = launch(resumed_log, REPO / "finetune" / "finetune.py", 2, f"model.pretrained_model_name_or_path={tiny_wan_dir}",
                f"train.output_dir={out}", "train.resume_from_checkpoint=latest", *common[:1],
                "train.max_train_steps=4", *common[3:])  # fmt: skip
    assert (out / "checkpoint-4").is_dir(), f"exit code {rc}; log tail:\n{resumed_log.read_text()[-4000:]}"
    assert "train.sequence_parallel_size=2, this run uses 1: the clips per optimizer step go from 1 to 2" in (
        resumed_log.read_text()
    )
    assert sorted(metrics(out)) == [1, 2, 3, 4]
