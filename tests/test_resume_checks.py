"""Kind E of issue 13: every checkpoint records how it was made, and a resume is checked against it before any
model loads and before anything is written to the run folder (lact_video.training.provenance).

One short single-process run (4 steps, checkpoints 2 and 4) is the source of every resume below; each test
copies it, so that a refused start can be shown to leave the copy byte-identical.
"""

import copy
import hashlib
import json
import logging
import pathlib
import shutil

import pytest
import torch

from lact_video.data.demo_dataset import write_video_folder
from lact_video.training import provenance
from lact_video.training import trainer as trainer_module
from lact_video.training.checkpointing import MARKER
from lact_video.training.config import ConfigError, load_config
from lact_video.training.provenance import DEEPSPEED, Provenance, check_launch, config_changes

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")
# A constant rate, so that the rate of a step is the configured one times the warmup factor only.
FIRST = ["optimizer.lr_scheduler=constant", "optimizer.lr_warmup_steps=0", "train.checkpointing_steps=2"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return write_video_folder(tmp_path_factory.mktemp("videos"), num_synthetic=2, real=False)


def args(base, videos, output_dir, *overrides) -> list[str]:
    return [
        "--config", TINY, f"model.pretrained_model_name_or_path={base}", f"data.train_data_dir={videos}",
        f"train.output_dir={output_dir}", "train.report_to=none", "train.export_at_end=false", *overrides,
    ]  # fmt: skip


def reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def run(*argv):
    reset_accelerate()
    return trainer_module.main(list(argv))


@pytest.fixture(scope="module")
def first_run(tiny_wan_dir, videos, tmp_path_factory):
    """4 steps at lr 1e-3 (constant), checkpoints 2 and 4."""
    out = tmp_path_factory.mktemp("first") / "run"
    run(*args(tiny_wan_dir, videos, out, "train.max_train_steps=4", *FIRST))
    return out


@pytest.fixture
def run_copy(first_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(first_run, out)
    return out


def folder_hash(folder: pathlib.Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any model load fails the test: the checks must come first."""

    def fail(*args, **kwargs):
        raise AssertionError("a model was loaded before the resume was refused")

    monkeypatch.setattr(trainer_module, "load_models", fail)


def edit_marker(checkpoint: pathlib.Path, **changes):
    marker = json.loads((checkpoint / MARKER).read_text())
    marker.update(changes)
    (checkpoint / MARKER).write_text(json.dumps(marker))
    return marker


def resumed_param_groups(argv: list[str]) -> list[dict]:
    """The optimizer's parameter groups right after the resume, built as `trainer.main` builds them."""
    reset_accelerate()
    t = trainer_module
    config = load_config(argv)
    accelerator = t.make_accelerator(config)
    path = t.check_run_folder(config, accelerator)
    models = t.load_models(config, accelerator, encode_on_the_fly=False)
    t.set_trainable(models.transformer, config.model.trainable)
    prepared = t.prepare(config, accelerator, models.transformer, *t.make_optimizer(config, models.transformer))
    t.resume(accelerator, prepared, path)
    return prepared.optimizer.param_groups


# The record


def test_checkpoint_records_config_launch_and_version(first_run):
    import lact_video

    marker = json.loads((first_run / "checkpoint-4" / MARKER).read_text())
    assert marker["step"] == 4 and marker["num_processes"] == 1
    assert marker["distributed_type"] == "NO" and marker["zero_stage"] is None and marker["mixed_precision"] == "no"
    assert marker["lact_video_version"] == lact_video.__version__
    assert marker["config"]["model"]["lact"]["fw_head_dim"] == 12
    assert marker["config"]["optimizer"]["learning_rate"] == 1e-3 and marker["config"]["model"]["variant"] == "lact"
    assert Provenance.from_marker(marker).config == marker["config"]


# Optimizer changes apply: the logged rate is the rate that trains (br09)


def test_changed_learning_rate_trains_and_is_logged(tiny_wan_dir, videos, run_copy, caplog):
    caplog.set_level(logging.INFO)
    run(*args(tiny_wan_dir, videos, run_copy, "train.max_train_steps=6", *FIRST, "optimizer.learning_rate=1e-5",
              "train.resume_from_checkpoint=latest"))  # fmt: skip
    lines = [json.loads(line) for line in (run_copy / "metrics.jsonl").read_text().splitlines()]
    rates = {r["step"]: r["lr"] for r in lines}
    assert [rates[s]["pretrained"] for s in range(1, 7)] == [1e-3] * 4 + [1e-5] * 2
    assert [rates[s]["new"] for s in (5, 6)] == [pytest.approx(1e-4, rel=1e-12)] * 2  # new_params_lr_multiplier 10
    assert "optimizer.learning_rate 0.001 -> 1e-05" in caplog.text
    changed = [r for r in caplog.records if r.getMessage().startswith("Settings changed since checkpoint-4")]
    assert [r.levelno for r in changed] == [logging.WARNING]
    assert "step 5 trains at learning rates pretrained 1e-05, new 0.0001" in caplog.text


@pytest.mark.parametrize(
    "overrides, expected",
    [
        # (pretrained rate, betas, weight decay, eps) at step 5, from the formulas of the settings
        (["optimizer.learning_rate=3e-4"], (3e-4, (0.9, 0.95), 0.01, 1e-8)),
        (["optimizer.adam_beta1=0.5", "optimizer.adam_beta2=0.75"], (1e-3, (0.5, 0.75), 0.01, 1e-8)),
        (["optimizer.adam_weight_decay=0.25", "optimizer.adam_epsilon=1e-6"], (1e-3, (0.9, 0.95), 0.25, 1e-6)),
        # constant_with_warmup over 16 steps, resumed after 4: the factor is 4 / 16
        (
            ["optimizer.lr_scheduler=constant_with_warmup", "optimizer.lr_warmup_steps=16"],
            (0.25e-3, (0.9, 0.95), 0.01, 1e-8),
        ),
        # linear decay to 0 at step 8: after 4 steps the factor is (8 - 4) / 8
        (["optimizer.lr_scheduler=linear", "train.max_train_steps=8"], (0.5e-3, (0.9, 0.95), 0.01, 1e-8)),
    ],
    ids=["learning_rate", "betas", "weight_decay_eps", "warmup", "linear_to_8"],
)
def test_resumed_optimizer_uses_this_runs_settings(tiny_wan_dir, videos, first_run, overrides, expected):
    """Read from the optimizer's parameter groups after `resume`, before any step."""
    rate, betas, weight_decay, eps = expected
    argv = args(tiny_wan_dir, videos, first_run, *FIRST, "train.max_train_steps=6", *overrides,
                "train.resume_from_checkpoint=latest")  # fmt: skip
    groups = {group["name"]: group for group in resumed_param_groups(argv)}
    assert groups["pretrained"]["lr"] == pytest.approx(rate, rel=1e-12)
    assert groups["new"]["lr"] == pytest.approx(10 * rate, rel=1e-12)
    for group in groups.values():
        assert tuple(group["betas"]) == betas and group["weight_decay"] == weight_decay and group["eps"] == eps


# Model and data-shape changes are refused before any model loads, leaving the folder as it was (br10)


@pytest.mark.parametrize(
    "override, named",
    [
        ("model.lact.fw_head_dim=24", "model.lact.fw_head_dim=12 there, 24 here"),
        ("model.lact.use_momentum=true", "model.lact.use_momentum=False there, True here"),
        ("model.variant=swa", "model.variant='lact' there, 'swa' here"),
        ("model.trainable=lact_layers", "model.trainable='all' there, 'lact_layers' here"),
        ("data.height=48", "data.height=32 there, 48 here"),
        ("data.max_sequence_length=24", "data.max_sequence_length=16 there, 24 here"),
    ],
)
def test_changed_model_or_data_shape_is_refused_untouched(
    tiny_wan_dir, videos, run_copy, no_model_loads, override, named
):
    before = folder_hash(run_copy)
    with pytest.raises(ConfigError, match="other model or data-shape settings") as error:
        run(*args(tiny_wan_dir, videos, run_copy, "train.max_train_steps=6", *FIRST, override,
                  "train.resume_from_checkpoint=latest"))  # fmt: skip
    assert named in str(error.value) and "checkpoint-4" in str(error.value)
    assert folder_hash(run_copy) == before


def test_two_changed_keys_are_both_named(tiny_wan_dir, videos, run_copy, no_model_loads):
    with pytest.raises(ConfigError) as error:
        run(*args(tiny_wan_dir, videos, run_copy, *FIRST, "data.width=48", "model.lact.fw_mlp_ratio=4",
                  "train.resume_from_checkpoint=checkpoint-4"))  # fmt: skip
    assert "data.width=32 there, 48 here; model.lact.fw_mlp_ratio=2 there, 4 here" in str(error.value)


def test_refusal_at_the_command_line_is_one_line_with_status_2(tiny_wan_dir, videos, run_copy, no_model_loads,
                                                                monkeypatch, capsys):  # fmt: skip
    argv = args(tiny_wan_dir, videos, run_copy, *FIRST, "data.width=48", "train.resume_from_checkpoint=latest")
    monkeypatch.setattr("sys.argv", ["lact-video-finetune", *argv])
    reset_accelerate()
    with pytest.raises(SystemExit) as exited:
        trainer_module.cli()
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lact-video-finetune: error: ") and "data.width=32 there" in err[0]


# A resume that would train nothing


@pytest.mark.parametrize(
    "checkpoint, length, step",
    [
        ("checkpoint-2", ["train.max_train_steps=1"], 2),
        ("checkpoint-2", ["train.max_train_steps=2"], 2),
        # derived from num_train_epochs (2 clips, batch 1: 2 steps), checked once the data is read
        ("checkpoint-4", ["train.max_train_steps=null", "train.num_train_epochs=1"], 4),
    ],
)
def test_resume_that_would_train_nothing_is_refused(
    tiny_wan_dir, videos, first_run, tmp_path, no_model_loads, checkpoint, length, step
):
    """Resuming into another folder at a length the checkpoint has reached would export it as the finetune."""
    before = folder_hash(first_run)
    other = tmp_path / "other"
    with pytest.raises(ConfigError) as error:
        run(*args(tiny_wan_dir, videos, other, *FIRST, *length, "train.export_at_end=true",
                  f"train.resume_from_checkpoint={first_run / checkpoint}"))  # fmt: skip
    message = str(error.value)
    assert f"is at step {step} and train.max_train_steps=" in message
    assert "Raise train.max_train_steps" in message and "train.export_only=true" in message
    assert folder_hash(first_run) == before and not other.exists()


def test_record_with_deprecated_key_names_compares_renamed(first_run, monkeypatch):
    """A record written with the names before the 0.2.0 rename compares equal to the renamed config; a changed
    value under an old name is refused under its new name."""
    monkeypatch.setattr("lact_video.models.lact_config._warned", set())  # warned once per process
    marker = json.loads((first_run / "checkpoint-4" / MARKER).read_text())
    current = copy.deepcopy(marker["config"])
    lact = marker["config"]["model"]["lact"]
    lact["base_lr"], lact["inter_multi"] = lact.pop("fw_base_lr"), lact.pop("fw_mlp_ratio")
    marker["config"]["model"]["mode"] = marker["config"]["model"].pop("variant")
    with pytest.warns(FutureWarning) as warned:
        assert config_changes(marker["config"], current, where="old checkpoint.json") == {}
    assert sorted(str(w.message).split("'")[1] for w in warned) == [
        "model.lact.base_lr",
        "model.lact.inter_multi",
        "model.mode",
    ]
    lact["base_lr"] = 0.5
    changes = config_changes(marker["config"], current, where="old checkpoint.json")
    assert changes == {"model.lact.fw_base_lr": (0.5, 1e-3)} and provenance.is_fixed("model.lact.fw_base_lr")


# export_only with nothing to export, and runs that would mix (br12)


@pytest.mark.parametrize("state", ["missing", "empty", "unfinished"])
def test_export_only_without_a_checkpoint_is_refused(tiny_wan_dir, videos, tmp_path, no_model_loads, state):
    out = tmp_path / "run"
    if state != "missing":
        out.mkdir()
    if state == "unfinished":  # a run killed while writing its first checkpoint
        (out / ".tmp-checkpoint-2").mkdir()
        (out / ".tmp-checkpoint-2" / "model.safetensors").write_bytes(b"partial")
    before = folder_hash(out) if out.exists() else None
    with pytest.raises(ConfigError, match="export_only=true, but .* holds no complete checkpoint-<step> to export"):
        run(*args(tiny_wan_dir, videos, out, "train.export_only=true", "train.resume_from_checkpoint=latest"))
    assert (folder_hash(out) if out.exists() else None) == before
    assert not (out / "model_index.json").exists()


@pytest.mark.parametrize(
    "leave, resume, named",
    [
        (("checkpoint-2", "checkpoint-4", "metrics.jsonl"), None, "checkpoint-2, checkpoint-4, metrics.jsonl"),
        (("checkpoint-4",), None, "checkpoint-4"),
        (("metrics.jsonl",), None, "metrics.jsonl"),
        (("metrics.jsonl",), "latest", "metrics.jsonl"),  # killed before its first checkpoint
    ],
    ids=["checkpoints_and_metrics", "checkpoint", "metrics", "metrics_latest"],
)
def test_new_run_does_not_mix_with_another_runs_files(
    tiny_wan_dir, videos, run_copy, no_model_loads, leave, resume, named
):
    for path in run_copy.iterdir():
        if path.name not in leave:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    before = folder_hash(run_copy)
    extra = [f"train.resume_from_checkpoint={resume}"] if resume else []
    with pytest.raises(ConfigError, match=f"holds another run's {named}; a new run there would mix"):
        run(*args(tiny_wan_dir, videos, run_copy, *FIRST, *extra))
    assert folder_hash(run_copy) == before


def test_resuming_an_older_checkpoint_beside_newer_ones_is_refused(tiny_wan_dir, videos, run_copy, no_model_loads):
    before = folder_hash(run_copy)
    with pytest.raises(ConfigError, match=r"newer than checkpoint-2 \(checkpoint-4\)"):
        run(*args(tiny_wan_dir, videos, run_copy, *FIRST, "train.resume_from_checkpoint=checkpoint-2"))
    assert folder_hash(run_copy) == before


# The launch: DeepSpeed, ZeRO stage, process count (br13)


def fake_zero3(checkpoint: pathlib.Path, processes: int):
    """Make a single-process checkpoint look like a ZeRO-3 one of `processes` ranks (files and record)."""
    shards = checkpoint / "pytorch_model"
    shards.mkdir()
    for rank in range(processes):
        (shards / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"")
    edit_marker(checkpoint, distributed_type=DEEPSPEED, zero_stage=3, num_processes=processes)


@pytest.mark.parametrize("processes", [2, 4])
def test_zero3_checkpoint_without_deepspeed_is_refused_up_front(
    tiny_wan_dir, videos, run_copy, no_model_loads, processes
):
    fake_zero3(run_copy / "checkpoint-4", processes)
    before = folder_hash(run_copy)
    with pytest.raises(ValueError, match=f"holds DeepSpeed ZeRO-3 state written by {processes} process") as error:
        run(*args(tiny_wan_dir, videos, run_copy, *FIRST, "train.resume_from_checkpoint=latest"))
    message = str(error.value)
    assert f"with a DeepSpeed ZeRO-3 config and {processes} processes" in message
    assert "train.export_only=true" in message and "new train.output_dir" in message
    assert folder_hash(run_copy) == before


def provenance_of(distributed_type, processes, zero_stage=None, mixed_precision="no"):
    return Provenance(processes, distributed_type, zero_stage, mixed_precision, "0.2.0", {})


@pytest.mark.parametrize(
    "then, now, shards, refused",
    [
        (provenance_of(DEEPSPEED, 2, 3), provenance_of(DEEPSPEED, 4, 3), 2, "cannot load them into 4 process"),
        (provenance_of(DEEPSPEED, 8, 3), provenance_of(DEEPSPEED, 2, 3), 8, "Resume it with 8 processes"),
        (provenance_of(DEEPSPEED, 2, 2), provenance_of(DEEPSPEED, 2, 3), 2, "ZeRO-2 state; this run uses ZeRO-3"),
        (provenance_of(DEEPSPEED, 2, 3, "bf16"), provenance_of(DEEPSPEED, 2, 3), 2, "mixed precision 'bf16'"),
        (provenance_of("NO", 1), provenance_of(DEEPSPEED, 2, 3), 0, "without DeepSpeed; this DeepSpeed run"),
        (provenance_of(DEEPSPEED, 2, 3), provenance_of(DEEPSPEED, 2, 3), 2, None),
        (provenance_of(DEEPSPEED, 1, 0), provenance_of(DEEPSPEED, 2, 0), 0, None),  # stage 0 splits nothing
        (provenance_of("NO", 1), provenance_of("MULTI_CPU", 4), 0, None),  # accelerate's own state: any count
        (provenance_of("MULTI_GPU", 8), provenance_of("NO", 1), 0, None),
    ],
    ids=["zero3_2to4", "zero3_8to2", "stage", "precision", "plain_to_ds", "same", "stage0", "ddp_1to4", "ddp_8to1"],
)
def test_launch_checks(tmp_path, then, now, shards, refused):
    checkpoint = tmp_path / "checkpoint-2"
    (checkpoint / "pytorch_model").mkdir(parents=True)
    for rank in range(shards):
        (checkpoint / "pytorch_model" / f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"")
    if refused is None:
        check_launch(checkpoint, then, now)
    else:
        with pytest.raises(ValueError, match=refused):
            check_launch(checkpoint, then, now)


# Checkpoints written before the record (and before weights format 2)


def test_checkpoint_without_a_record_is_refused_for_its_weights_format(tiny_wan_dir, videos, run_copy, no_model_loads):
    marker = json.loads((run_copy / "checkpoint-4" / MARKER).read_text())
    old = {k: marker[k] for k in ("step", "num_processes", "ema", "time", "loss")}
    (run_copy / "checkpoint-4" / MARKER).write_text(json.dumps(old))
    before = folder_hash(run_copy)
    with pytest.raises(ValueError, match="holds weights of format 1") as error:
        run(*args(tiny_wan_dir, videos, run_copy, *FIRST, "train.resume_from_checkpoint=latest"))
    assert "export" in str(error.value)
    assert folder_hash(run_copy) == before


# Warning floods


@pytest.fixture
def process_group():
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_known_harmless_warnings_are_silenced_and_no_others(process_group):
    """The two collectives DeepSpeed's ZeRO-3 calls every step warn as torch deprecates them; the filter drops
    exactly those and keeps every other warning, also from the same torch module."""
    import warnings

    import torch.distributed as dist

    from lact_video.training.distributed import silence_known_harmless_warnings

    def collectives():
        dist.all_gather_into_tensor(torch.zeros(2), torch.ones(2))
        dist.reduce_scatter_tensor(torch.zeros(2), torch.ones(2))

    with warnings.catch_warnings(record=True) as unfiltered:
        warnings.simplefilter("always")
        collectives()
    assert sorted(str(w.message).split("`")[1] for w in unfiltered if w.category is FutureWarning) == [
        "torch.distributed.all_gather_into_tensor",
        "torch.distributed.reduce_scatter_tensor",
    ]  # the real messages the filter must match
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_known_harmless_warnings()
        for _ in range(3):
            collectives()
        warnings.warn_explicit(  # same module and category, another message: kept
            "`torch.distributed.all_reduce_coalesced` will be deprecated", FutureWarning, "c10d_logger.py", 83,
            module="torch.distributed.c10d_logger",
        )  # fmt: skip
        warnings.warn_explicit(  # same message from another module: kept
            "`torch.distributed.all_gather_into_tensor` is deprecated", FutureWarning, "mine.py", 1, module="mine"
        )
        warnings.warn("something else", UserWarning)
    assert [(str(w.message).split(" ")[0], w.category) for w in caught] == [
        ("`torch.distributed.all_reduce_coalesced`", FutureWarning),
        ("`torch.distributed.all_gather_into_tensor`", FutureWarning),
        ("something", UserWarning),
    ]
