"""The trainer's command line: diffusers' flags with dotted overrides, --help and --version anywhere, and config
errors as one line naming the keys and the fix (exit status 2, no traceback).

Inputs are generated from the config tree (every field, every switch, every bound of the config check), so a
field added later is covered without editing this file.
"""

import dataclasses
import itertools
import pathlib
import subprocess
import sys
import typing

import pytest
import torch

import lact_video
from lact_video.models import LaCTWanTransformer3DModel
from lact_video.models.lact_config import Variant
from lact_video.tiny import TRANSFORMER_CONFIGS
from lact_video.training import trainer, validate
from lact_video.training.config import (
    ConfigError,
    _field_comments,
    _leaf_fields,
    check_against_transformer,
    check_config,
    flag_names,
    lact_config,
    load_config,
    parse_command_line,
    with_training_length,
)
from lact_video.training.trainable import Trainable, set_trainable

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")
SOURCES = ["data.cache_dir=/cache"]  # a data source, so that the config check passes
LEAVES = list(_leaf_fields())
SWITCHES = [path for path, cls, name in LEAVES if typing.get_type_hints(cls)[name] is bool]


def field(config, path):
    """The value at a dotted path of a `FinetuneConfig`."""
    for part in path.split("."):
        config = getattr(config, part)
    return config


# 1. Flags: every field, every spelling


@pytest.mark.parametrize("path", [path for path, _, _ in LEAVES])
def test_every_spelling_of_a_field_gives_the_same_override(path):
    """`--name V`, `--name=V`, `--dotted.path V`, `dotted.path=V`, `name=V` and `--name-with-dashes V` all read as
    `dotted.path=V`; the name alone where it names one field (`flag_names`)."""
    names = [name for name, target in flag_names().items() if target == path]
    assert path in names
    value = "true" if path in SWITCHES else "12"
    spellings = [[f"--{name}", value] for name in names] + [[f"--{name}={value}"] for name in names]
    spellings += [[f"{name}={value}"] for name in names] + [[f"--{names[-1].replace('_', '-')}", value]]
    reference = parse_command_line([f"{path}={value}"])
    assert reference[1][0] == f"{path}={value}"  # (num_train_epochs also clears max_train_steps)
    for argv in spellings:
        assert parse_command_line(argv) == reference, argv


def test_switches_are_the_bool_fields():
    """The generated switch list is right (a test of the test): the bool fields of the tree, by their type."""
    assert {"train.gradient_checkpointing", "ema.use_ema", "train.export_only", "data.random_start"} <= set(SWITCHES)
    assert "train.max_train_steps" not in SWITCHES


@pytest.mark.parametrize("path", SWITCHES)
@pytest.mark.parametrize("after", ["end", "flag", "override", "value false"])
def test_a_bare_switch_does_not_take_the_next_argument(path, after):
    """diffusers' `store_true` flags: `--use_ema` alone is true; what follows it is read on its own. `--use_ema
    false` (the old `--key value` form) still sets false."""
    flag = f"--{path.rpartition('.')[2]}" if flag_names().get(path.rpartition(".")[2]) == path else f"--{path}"
    following = {
        "end": [],
        "flag": ["--max_train_steps", "3"],
        "override": ["optimizer.learning_rate=0.5"],
        "value false": ["false"],
    }[after]
    _, overrides = parse_command_line([flag, *following])
    expected = {
        "end": [f"{path}=true"],
        "flag": [f"{path}=true", "train.max_train_steps=3"],
        "override": [f"{path}=true", "optimizer.learning_rate=0.5"],
        "value false": [f"{path}=false"],
    }[after]
    assert sorted(overrides) == sorted(expected)


def test_diffusers_training_command_sets_what_it_says(tmp_path):
    """A command line as diffusers' train_text_to_image.py users type it, mixed with dotted overrides."""
    argv = [
        "--config", TINY, "--pretrained_model_name_or_path=/models/wan", "--train_data_dir", "/data/videos",
        "--output_dir", str(tmp_path / "out"), "--seed", "7", "--train_batch_size=2",
        "--gradient_accumulation_steps", "4", "--gradient_checkpointing", "--use_ema", "--mixed_precision", "no",
        "--max_train_steps=400", "--learning_rate=1e-05", "--max_grad_norm=1", "--checkpointing_steps=100",
        "--checkpoints_total_limit", "3", "--lr_scheduler=constant", "--lr_warmup_steps=0", "--report_to", "none",
        "--resume_from_checkpoint", "latest", "--adam_beta1", "0.8", "--adam_weight_decay=0.02",
        "--dataloader_num_workers", "2", "--tracker_project_name", "wan-lact", "model.lact.lact_blocks=[0]",
        "--validation_steps", "50", "--validation_data_dir", "/data/held-out",
    ]  # fmt: skip
    config = load_config(argv)
    expected = {
        "model.pretrained_model_name_or_path": "/models/wan", "data.train_data_dir": "/data/videos",
        "train.output_dir": str(tmp_path / "out"), "train.seed": 7, "data.seed": 7, "train.train_batch_size": 2,
        "train.gradient_accumulation_steps": 4, "train.gradient_checkpointing": True, "ema.use_ema": True,
        "train.mixed_precision": "no", "train.max_train_steps": 400, "optimizer.learning_rate": 1e-5,
        "optimizer.max_grad_norm": 1.0, "train.checkpointing_steps": 100, "train.checkpoints_total_limit": 3,
        "optimizer.lr_scheduler": "constant", "optimizer.lr_warmup_steps": 0, "train.report_to": "none",
        "train.resume_from_checkpoint": "latest", "optimizer.adam_beta1": 0.8, "optimizer.adam_weight_decay": 0.02,
        "data.dataloader_num_workers": 2, "train.tracker_project_name": "wan-lact", "model.lact.lact_blocks": [0],
        "train.validation_steps": 50, "data.validation_data_dir": "/data/held-out",
    }  # fmt: skip
    assert {path: field(config, path) for path in expected} == expected


def test_the_last_of_a_key_wins_whatever_its_spelling():
    """Flags and overrides are read in one pass, in order (scripts append an override to a base command)."""
    assert parse_command_line(["--max_train_steps", "3", "train.max_train_steps=4"])[1] == ["train.max_train_steps=4"]
    assert parse_command_line(["max_train_steps=4", "--use_ema", "--train.max_train_steps=3"])[1] == [
        "train.max_train_steps=3",
        "ema.use_ema=true",
    ]
    # a flag's value is its value, whatever it looks like
    assert parse_command_line(["--output_dir", "runs/lr=1e-4", "--config", "a=b.yaml"]) == (
        "a=b.yaml",
        ["train.output_dir=runs/lr=1e-4"],
    )


def test_seed_seeds_the_run_and_data_seed_follows_it():
    """`--seed` is train.seed; data.seed follows it with or without a recipe, unless given itself."""
    base = ["--pretrained_model_name_or_path", "/m", *SOURCES]
    for recipe in ([], ["--config", TINY]):
        config = load_config([*recipe, *base, "--seed", "7"])
        assert (config.train.seed, config.data.seed) == (7, 7)
        config = load_config([*recipe, *base, "--seed", "7", "--data.seed", "3"])
        assert (config.train.seed, config.data.seed) == (7, 3)


# 2. Training length: epochs as in diffusers


@pytest.mark.parametrize(
    "num_samples, batch, processes, accumulation, epochs",
    list(itertools.product([1, 6, 7, 64], [1, 2, 3], [1, 2, 8], [1, 4], [1, 3])),
)
def test_num_train_epochs_gives_the_steps_of_that_many_passes(num_samples, batch, processes, accumulation, epochs):
    """Reference: walk the sample stream of `sampling.ResumableSampler` (a global micro-batch is batch x processes
    samples) until each epoch's samples are all drawn, counting optimizer steps (a partial accumulation at the
    end of an epoch counts, as in diffusers)."""
    config = load_config(
        ["--pretrained_model_name_or_path", "/m", *SOURCES, "--num_train_epochs", str(epochs),
         "--train_batch_size", str(batch), "--gradient_accumulation_steps", str(accumulation)]
    )  # fmt: skip
    assert config.train.max_train_steps is None
    steps = 0
    for _ in range(epochs):
        drawn, micro_batches = 0, 0
        while drawn < num_samples:
            drawn += batch * processes
            micro_batches += 1
        steps += -(-micro_batches // accumulation)
    assert with_training_length(config, num_samples, processes).train.max_train_steps == steps


def test_max_train_steps_wins_over_epochs_within_a_layer(tmp_path):
    """diffusers: --max_train_steps overrides --num_train_epochs. A layer that gives only epochs clears an earlier
    layer's max_train_steps (the tiny recipe's 20)."""
    base = ["--config", TINY, *SOURCES]
    assert load_config([*base, "--num_train_epochs", "2"]).train.max_train_steps is None
    config = load_config([*base, "--num_train_epochs", "2", "--max_train_steps", "5"])
    assert (config.train.max_train_steps, with_training_length(config, 10, 1).train.max_train_steps) == (5, 5)
    recipe = tmp_path / "epochs.yaml"
    recipe.write_text(pathlib.Path(TINY).read_text().replace("max_train_steps: 20", "num_train_epochs: 4"))
    config = load_config(["--config", str(recipe), *SOURCES])
    assert (config.train.max_train_steps, config.train.num_train_epochs) == (None, 4)


# 3. --help and --version anywhere


@pytest.mark.parametrize("where", ["first", "last", "after an override"])
def test_help_anywhere_lists_every_flag_with_its_comment(where, capsys):
    argv = {"first": ["--help", "--config", TINY], "last": ["--config", TINY, "--seed", "1", "--help"]}.get(
        where, ["train.max_train_steps=3", "-h", "--use_ema"]
    )
    with pytest.raises(SystemExit) as exit_info:
        load_config(argv)
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the help text
    for path, cls, name in LEAVES:
        assert f"--{path}" in out
        comment = " ".join(_field_comments(cls)[name].split())
        assert comment[:40] in out, path
    for flag in ("--seed", "--gradient_checkpointing", "--num_train_epochs", "--learning_rate", "--output_dir"):
        assert flag in out


def test_version_anywhere(capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_config(["--config", TINY, "--max_train_steps", "3", "--version"])
    assert exit_info.value.code == 0 and lact_video.__version__ in capsys.readouterr().out


# 4. Errors: one line naming the keys, exit status 2


def cli_error(module, argv, monkeypatch, capsys) -> str:
    """Run a console script's `cli()` with `argv`; assert exit status 2 and return its one-line error."""
    monkeypatch.setattr(sys, "argv", ["prog", *argv])
    with pytest.raises(SystemExit) as exit_info:
        module.cli()
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


# (variant, how the variant is given, lact_blocks): every combination that leaves new_params with nothing
NOTHING_TO_TRAIN = [
    *[
        (v, spelling, None)
        for v in ("swa", "full_causal")
        for spelling in ("model.variant=", "model.mode=", "--mode ")
    ],
    ("lact", "model.variant=", "[]"),
]


@pytest.mark.parametrize("variant, spelling, blocks", NOTHING_TO_TRAIN)
def test_new_params_with_no_memory_is_refused_naming_both_keys(variant, spelling, blocks, monkeypatch, capsys):
    """br14's kind: model.trainable=new_params trains only the fast-weight memories; a baseline variant (however
    spelled) or lact_blocks=[] removes them. Refused before any model loads (the base folder does not exist)."""
    argv = ["--config", TINY, *SOURCES, "--trainable", "new_params", *f"{spelling}{variant}".split(" ")]
    argv += [f"model.lact.lact_blocks={blocks}"] if blocks else []
    err = cli_error(trainer, argv, monkeypatch, capsys)
    assert "model.trainable=new_params" in err
    assert (f"model.variant={variant}" in err) if blocks is None else ("model.lact.lact_blocks=[]" in err)
    assert "set model.trainable=lact_layers" in err


@pytest.mark.parametrize(
    "variant, trainable, blocks",
    list(itertools.product(list(Variant), list(Trainable), [None, [0], []])),
    ids=lambda value: str(getattr(value, "value", value)),
)
def test_the_check_refuses_exactly_the_settings_that_train_nothing(variant, trainable, blocks):
    """Equivalence with the model: build the tiny LaCT transformer of each (variant, trainable, lact_blocks) and
    count what `set_trainable` leaves trainable; the config check refuses exactly the empty sets."""
    argv = ["--config", TINY, *SOURCES, f"model.variant={variant.value}", "model.trainable=all"]
    argv += [f"model.lact.lact_blocks={blocks}".replace(" ", "")] if blocks is not None else []
    config = load_config(argv)  # trainable=all passes: the model depends on the variant and lact_blocks only
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, trainable=trainable))
    try:
        check_config(config)
        refused = False
    except ConfigError:
        refused = True
    torch.manual_seed(0)
    model = LaCTWanTransformer3DModel(**TRANSFORMER_CONFIGS["tiny"], **lact_config(config))
    assert refused == (len(set_trainable(model, trainable)) == 0)


CONTRADICTIONS = {
    "train.validation_steps=5": ["train.validation_steps", "data.validation_data_dir"],
    "data.validation_data_dir=/held-out": ["data.validation_data_dir", "train.validation_steps"],
    "train.export_only=true": ["train.export_only", "train.resume_from_checkpoint"],
    "train.max_train_steps=null": ["train.max_train_steps", "train.num_train_epochs"],
}


@pytest.mark.parametrize("override", list(CONTRADICTIONS))
def test_settings_that_contradict_each_other_name_both_keys(override, monkeypatch, capsys):
    err = cli_error(trainer, ["--config", TINY, *SOURCES, override], monkeypatch, capsys)
    assert all(key in err for key in CONTRADICTIONS[override]), err
    assert ": set " in err or "set one" in err  # the fix


# Every bound of the config check, with a value just outside it.
OUT_OF_RANGE = {
    "train.train_batch_size": "0", "train.gradient_accumulation_steps": "0", "train.checkpointing_steps": "0",
    "train.logging_steps": "0", "model.lact.num_repeat": "0", "train.max_train_steps": "0",
    "train.num_train_epochs": "0", "train.checkpoints_total_limit": "0", "train.mixed_precision": "fp8",
    "train.report_to": "mlflow", "train.validation_steps": "-1", "train.validation_noise_levels": "[0.5,1.0]",
    "optimizer.learning_rate": "0", "optimizer.new_params_lr_multiplier": "-1", "optimizer.max_grad_norm": "0",
    "optimizer.adam_epsilon": "0", "optimizer.adam_beta1": "1.0", "optimizer.adam_beta2": "-0.1",
    "optimizer.adam_weight_decay": "-0.01", "optimizer.lr_warmup_steps": "-1", "optimizer.lr_scheduler": "cosin",
    "flow_matching.shift": "0", "flow_matching.logit_std": "0", "flow_matching.caption_dropout": "1.5",
    "ema.ema_decay": "1.0", "data.num_frames": "14", "data.height": "30", "data.fps": "0",
    "data.dataloader_num_workers": "-1", "model.variant": "fp16", "model.trainable": "qlora",
    "model.lact.fw_retention_decay": "1.5", "model.lact.fw_base_lr": "0",
}  # fmt: skip


@pytest.mark.parametrize("key", list(OUT_OF_RANGE))
def test_every_bad_value_is_one_line_naming_its_key(key, monkeypatch, capsys):
    err = cli_error(trainer, ["--config", TINY, *SOURCES, f"{key}={OUT_OF_RANGE[key]}"], monkeypatch, capsys)
    name = key.rpartition(".")[2]
    assert (key in err) if not key.startswith("data.") else (f"{name}=" in err and "data" in err), err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--learning_rat", "1"], "unknown flag --learning_rat; did you mean --learning_rate"),
        (["learning_rat=1"], "unknown config key 'learning_rat'; did you mean learning_rate"),
        (["--validation_prompt", "a cat"], "run scripts/generate.py (lact-video-generate) --model EXPORT_DIR"),
        (["--resolution", "512"], "--height H --width W"),
        (["--use_ema", "maybe"], "--use_ema is a switch"),
        (["stray"], "cannot read argument 'stray'"),
        (["--max_train_steps", "many"], "train.max_train_steps: Value 'many'"),
        (["--max_train_steps"], "--max_train_steps/--train.max_train_steps: expected one argument"),
    ],
)
def test_command_line_mistakes_are_one_line(argv, expected, monkeypatch, capsys):
    assert expected in cli_error(trainer, ["--config", TINY, *SOURCES, *argv], monkeypatch, capsys)


def test_recipe_mistakes_are_one_line(tmp_path, monkeypatch, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("train:\n  max_train_step: 3\n")
    assert "unknown config key train.max_train_step; did you mean" in cli_error(
        trainer, ["--config", str(recipe), *SOURCES], monkeypatch, capsys
    )
    recipe.write_text("train: [unclosed\n")
    assert "not valid YAML" in cli_error(trainer, ["--config", str(recipe)], monkeypatch, capsys)
    assert "cannot read the recipe" in cli_error(trainer, ["--config", str(tmp_path / "no.yaml")], monkeypatch, capsys)
    err = cli_error(trainer, [*SOURCES], monkeypatch, capsys)  # no recipe: the base model is required
    assert "model.pretrained_model_name_or_path has no value" in err


@pytest.mark.parametrize("levels", [[0.0], [1.0], [-0.1, 0.5], [0.5, 1.2], []], ids=str)
def test_validate_and_the_trainer_refuse_the_same_noise_levels(levels, tmp_path, monkeypatch, capsys):
    """train.validation_noise_levels and validate.py's --noise_levels accept the same (0, 1)."""
    err = cli_error(
        trainer, ["--config", TINY, *SOURCES, f"train.validation_noise_levels={levels}"], monkeypatch, capsys
    )
    assert "train.validation_noise_levels" in err
    if levels:  # (no level at all is argparse's own error there: --noise_levels takes one or more)
        argv = ["--data_dir", str(tmp_path), "--checkpoints", str(tmp_path), "--output_dir", str(tmp_path)]
        err = cli_error(validate, [*argv, "--noise_levels", *map(str, levels)], monkeypatch, capsys)
        assert err.startswith("prog: error: --noise_levels: the noise levels must be")


def test_finetune_script_exits_2_with_one_line(tmp_path):
    """The real entry point, as `accelerate launch finetune/finetune.py` runs it: no traceback, status 2."""
    command = [sys.executable, "finetune/finetune.py", "--config", "configs/tiny.yaml", *SOURCES,
               "--variant", "swa", "--trainable", "new_params"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("finetune.py: error: model.trainable=new_params") and "model.variant=swa" in last


@pytest.mark.parametrize(
    "override, keys",
    [
        ("model.lact.fw_head_dim=7", ["model.lact.fw_head_dim=7", "dim 24", "a divisor such as"]),
        ("model.lact.lact_blocks=[0,5]", ["model.lact.lact_blocks=[0, 5]", "indices 0 to 1"]),
        ("data.num_frames=4093", ["data.num_frames=4093", "rope_max_seq_len"]),
    ],
)
def test_settings_that_do_not_fit_the_base_name_the_key_and_what_fits(override, keys):
    """The checks against the base transformer's config.json (the tiny Wan: dim 24, 2 blocks)."""
    config = load_config(["--config", TINY, *SOURCES, override, "data.chunk_frames=1"])
    with pytest.raises(ConfigError) as error:
        check_against_transformer(config, {**TRANSFORMER_CONFIGS["tiny"], "rope_max_seq_len": 1000})
    assert all(key in str(error.value) for key in keys), str(error.value)


def test_a_lact_export_as_the_base_is_refused_naming_what_to_give():
    config = load_config(["--config", TINY, *SOURCES])
    lact = {**TRANSFORMER_CONFIGS["tiny"], "_class_name": "LaCTWanTransformer3DModel"}
    with pytest.raises(ConfigError, match="holds a LaCT pipeline .an export.: finetuning starts from a plain Wan2.1"):
        check_against_transformer(config, lact)


@pytest.mark.parametrize("source", ["cache", "videos"])
def test_a_data_folder_that_cannot_work_is_one_line(source, tiny_wan_dir, tmp_path, monkeypatch, capsys):
    """Found at run time, before any model loads: a cache folder without its index, a video folder without
    metadata. One line and exit status 2, as a bad flag."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    data = f"data.cache_dir={tmp_path}" if source == "cache" else f"data.train_data_dir={tmp_path}"
    argv = ["--config", TINY, data, f"train.output_dir={tmp_path / 'run'}", "train.report_to=none"]
    err = cli_error(trainer, [*argv, "model.pretrained_model_name_or_path=/nowhere"], monkeypatch, capsys)
    assert "model.pretrained_model_name_or_path=/nowhere: no Wan2.1 diffusers model there" in err  # checked first
    err = cli_error(trainer, [*argv, f"model.pretrained_model_name_or_path={tiny_wan_dir}"], monkeypatch, capsys)
    assert ("no index.json: build the cache" if source == "cache" else "has no metadata file") in err
