"""The trainer's configuration (`finetune/finetune.py`): one dataclass per concern, merged by OmegaConf,
with the flags of diffusers' training examples read by argparse.

A run's config is the defaults, then a recipe (--config configs/<recipe>.yaml), then the command line.
On the command line, flags and dotted overrides mix in any order:

  --learning_rate 1e-4  --learning_rate=1e-4  --optimizer.learning_rate 1e-4  optimizer.learning_rate=1e-4
  --gradient_checkpointing  --use_ema=false   (a bare switch means true and does not take the next argument)
  --seed 7                                    (train.seed, which data.seed follows unless set itself)
  --num_train_epochs 2                        (trains by epochs; train.max_train_steps wins when both are set)
  --trainable lora --rank 32 --lora_alpha 32 --lora_target_modules to_q,to_k,to_v,to_out.0   (model.lora.*)

Every field has a flag: its dotted path, and its name alone where that names one field. Values are YAML, as
in a recipe (model.lact.lact_blocks=[0,2], train.resume_from_checkpoint=null); a text field takes its text
as typed (--mixed_precision no). A key given twice: the last one wins. Errors name the key and the fix, and
exit with status 2.

  accelerate launch finetune/finetune.py --config configs/tiny.yaml --seed 7 --max_train_steps 3
"""

from __future__ import annotations

import argparse
import ast
import collections
import contextlib
import dataclasses
import difflib
import enum
import functools
import importlib.util
import inspect
import math
import os
import sys
import textwrap
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field

import yaml
from diffusers.optimization import SchedulerType
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from .. import __version__
from ..data.config import DataConfig
from ..errors import ConfigError, exit_on_config_error  # noqa: F401  (re-exported: the commands import them from here)
from ..evaluation.per_chunk_loss import DEFAULT_NOISE_LEVELS, check_noise_levels
from ..geometry import latent_size
from ..models.lact_config import DEPRECATED_FINETUNE_KEYS, LaCTConfig, Variant, deprecated_key, rename_deprecated
from ..models.transformer_lact_wan import VARIANTS
from .flow_matching import LossWeighting, ShiftRule, TimestepSampling, tokens_per_chunk
from .trainable import PLAIN_NAME, LoraSettings, Trainable, target_modules_spec


@dataclass
class ModelConfig:
    # A Wan2.1 T2V diffusers folder or hub id (vae, text_encoder, tokenizer, scheduler, transformer).
    pretrained_model_name_or_path: str = MISSING
    # Hub revision (branch, tag or commit) of pretrained_model_name_or_path.
    revision: str | None = None
    lact: LaCTConfig = field(default_factory=LaCTConfig)
    # lact, or a baseline of the same model for comparisons: swa (window attention only; memory off)
    # or full_causal (every segment sees all earlier clean chunks). Overrides the lact keys it names.
    variant: Variant = Variant.lact
    # Which transformer weights train: all, lact_layers, new_params, or lora (LoRA adapters on the pretrained
    # linears, see model.lora, and the new LaCT parameters in full).
    trainable: Trainable = Trainable.all
    lora: LoraSettings = field(default_factory=LoraSettings)


@dataclass
class FlowMatchingConfig:
    # uniform or logit_normal.
    timestep_sampling: TimestepSampling = TimestepSampling.uniform
    # Mean of the normal whose sigmoid gives t (logit_normal sampling and loss weights).
    logit_mean: float = 0.0
    # Std of that normal.
    logit_std: float = 1.0
    # fixed (`shift`) or token_following (log s linear in tokens per chunk: 32760 -> 3.0, 73710 -> 5.0).
    shift_rule: ShiftRule = ShiftRule.fixed
    # The fixed shift s of t' = s t / (1 + (s - 1) t) (shift_rule=fixed); 1 means no shift.
    shift: float = 3.0
    # none; logit_normal: weight each chunk's loss by the logit-normal density at its unshifted t;
    # logit_normal_bin_mass (the authors'): by 1000 x the logit-normal mass of the 1/1000-wide bin holding t.
    loss_weighting: LossWeighting = LossWeighting.none
    # Probability of training a sample on the empty prompt (for classifier-free guidance).
    caption_dropout: float = 0.1


@dataclass
class OptimizerConfig:
    """AdamW with a warmup + decay schedule from `diffusers.optimization.get_scheduler`."""

    # Peak learning rate of the pretrained weights.
    learning_rate: float = 2e-5
    # The new LaCT parameters train at learning_rate times this.
    new_params_lr_multiplier: float = 10.0
    # AdamW beta1.
    adam_beta1: float = 0.9
    # AdamW beta2.
    adam_beta2: float = 0.95
    # AdamW decoupled weight decay.
    adam_weight_decay: float = 0.01
    # AdamW epsilon.
    adam_epsilon: float = 1e-8
    # Gradient clipping by global norm.
    max_grad_norm: float = 1.0
    # Any name `diffusers.optimization.get_scheduler` knows: cosine, linear, constant_with_warmup, ...
    lr_scheduler: str = "cosine"
    # Optimizer steps of linear warmup.
    lr_warmup_steps: int = 1000


@dataclass
class EMAConfig:
    # Keep an exponential moving average of the trained weights (works under ZeRO-3).
    use_ema: bool = True
    # EMA decay per optimizer step.
    ema_decay: float = 0.995
    # Export the EMA weights (true) or the raw trained weights (false).
    export_ema: bool = True


@dataclass
class TrainConfig:
    # Checkpoints, logs, metrics.jsonl and (by default) the exported pipeline go here.
    output_dir: str = "outputs/lact"
    # Seeds the weights' new parameters, the data order, the noise and the caption dropout.
    seed: int = 0
    # Optimizer steps to train for; null trains num_train_epochs passes over the data instead.
    max_train_steps: int | None = 5000
    # Passes over the training data, used when max_train_steps is null (as in diffusers, max_train_steps wins).
    num_train_epochs: int | None = None
    # Clips per process per micro-step.
    train_batch_size: int = 1
    # Micro-batches per optimizer step.
    gradient_accumulation_steps: int = 1
    # Recompute each block's activations in the backward pass: less memory, more compute.
    gradient_checkpointing: bool = False
    # Processes that share one clip, each holding 1/S of its tokens (Ulysses sequence parallelism): activations per
    # process fall about 1/S. Divides the number of processes; data parallelism is processes / S.
    sequence_parallel_size: int = 1
    # auto (bf16 with CUDA, fp32 without), no, bf16 or fp16.
    mixed_precision: str = "auto"
    # Save an atomic checkpoint every this many optimizer steps (and at the end).
    checkpointing_steps: int = 500
    # Keep at most this many checkpoints (the newest); null keeps all.
    checkpoints_total_limit: int | None = None
    # A checkpoint folder, or "latest" (the newest complete one in output_dir, if any).
    resume_from_checkpoint: str | None = None
    # Validation loss on data.validation_data_dir every this many steps; 0 turns it off.
    validation_steps: int = 0
    # The noise levels t' of the per-chunk validation report; every chunk is noised to each of them.
    validation_noise_levels: list[float] = field(default_factory=lambda: list(DEFAULT_NOISE_LEVELS))
    # Shift each micro-batch's rotary chunk positions by a random 0..this many chunks (docs/design.md Sec. 1.7), so
    # the memory learns positions past the clip; 0: the clip's own positions. Sets model.lact.trained_chunks' default.
    position_offset_max: int = 0
    # tensorboard, wandb, all or none.
    report_to: str = "tensorboard"
    # Project name for the trackers.
    tracker_project_name: str = "lact-video"
    # Log to the trackers every this many steps (metrics.jsonl gets every step).
    logging_steps: int = 1
    # Where the diffusers pipeline folder goes; null means output_dir.
    export_dir: str | None = None
    # Export the diffusers pipeline folder when training ends.
    export_at_end: bool = True
    # Skip training: restore resume_from_checkpoint and export it.
    export_only: bool = False
    # A LoRA run (model.trainable=lora) exports one merged transformer instead of the base weights plus
    # pytorch_lora_weights.safetensors. Flag: --fuse.
    export_fuse_lora: bool = False


@dataclass
class FinetuneConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    # data.seed follows train.seed (`--seed` seeds the whole run, as in diffusers) unless set itself.
    data: DataConfig = field(default_factory=lambda: DataConfig(seed="${train.seed}"))
    flow_matching: FlowMatchingConfig = field(default_factory=FlowMatchingConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
REPORT_TO = ("tensorboard", "wandb", "all", "none")
LR_SCHEDULERS = tuple(kind.value for kind in SchedulerType)
# The text fields with a fixed set of values (checked by check_config, shown by --help).
TEXT_CHOICES = {
    "train.mixed_precision": MIXED_PRECISION,
    "train.report_to": REPORT_TO,
    "optimizer.lr_scheduler": LR_SCHEDULERS,
}

# Flags that are not a field name of the tree, or name more than one field: diffusers' `--seed` seeds the whole
# run (data.seed follows train.seed), as `set_seed(args.seed)` does in diffusers' training examples.
# `--lora_target_modules` is model.lora.target_modules, as LoRA training scripts spell it (finetrainers' `--target_modules`
# is its field name).
FLAG_ALIASES = {
    "seed": "train.seed",
    "lora_target_modules": "model.lora.target_modules",
    "fuse": "train.export_fuse_lora",
}
# Flags of diffusers' training examples that have no field here, and what to use instead.
DIFFUSERS_FLAGS_ELSEWHERE = {
    "validation_prompt": "this trainer validates by the per-chunk loss on held-out clips (data.validation_data_dir "
    "with train.validation_steps); for sample videos run "
    "scripts/generate.py (lact-video-generate) --model EXPORT_DIR --prompt ... --output sample.mp4",
    "validation_epochs": "validation runs every train.validation_steps optimizer steps (--validation_steps N)",
    "resolution": "set the clip size with --height H --width W (multiples of 16)",
    "dataset_name": "give a local video folder with metadata.jsonl or metadata.csv: --train_data_dir DIR",
    "logging_dir": "tracker logs go to train.output_dir/logs (--output_dir DIR)",
    "local_rank": "launch with accelerate launch (or torchrun), which passes the rank in the environment",
    "push_to_hub": "upload the exported folder (train.export_dir, by default train.output_dir) with "
    "huggingface_hub's upload_folder after training",
}
DIFFUSERS_FLAGS_ELSEWHERE["validation_prompts"] = DIFFUSERS_FLAGS_ELSEWHERE["validation_prompt"]
_BOOLEAN_WORDS = ("true", "false", "yes", "no", "on", "off", "1", "0")  # what OmegaConf reads as a bool


def _leaf_fields(cls=FinetuneConfig, prefix: str = "") -> Iterator[tuple[str, type, str]]:
    """(dotted path, the dataclass declaring it, field name) of every leaf field of the config tree, in order."""
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            yield from _leaf_fields(type(default), f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, cls, f.name


def leaf_paths() -> list[str]:
    """Every dotted field path of the config tree."""
    return [path for path, _, _ in _leaf_fields()]


@functools.cache
def flag_names() -> dict[str, str]:
    """Every name a key may be given by on the command line (`--NAME` or `NAME=`) -> its dotted path.

    The dotted path itself; the field name alone where it names one field (`max_train_steps`); `FLAG_ALIASES`;
    and the deprecated names of `DEPRECATED_FINETUNE_KEYS`, mapped to the old path (renamed, with a warning, when
    read), the short ones too (`mode`).
    """
    paths = leaf_paths() + list(DEPRECATED_FINETUNE_KEYS)
    counts = collections.Counter(path.rpartition(".")[2] for path in paths)
    short = {path.rpartition(".")[2]: path for path in paths if counts[path.rpartition(".")[2]] == 1}
    return {**{path: path for path in paths}, **short, **FLAG_ALIASES}


class _ConfigArgumentParser(argparse.ArgumentParser):
    """argparse with its errors raised as `ConfigError` (one line), so `load_config` reports like `check_config`."""

    def error(self, message):
        raise ConfigError(message)


class _Assign(argparse.Action):
    """`--FLAG VALUE`: records (dotted path, text) in `namespace.overrides`; OmegaConf parses the text later
    (YAML syntax, as in a recipe)."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.overrides.append((self.dest, values))


class _Switch(_Assign):
    """A boolean `--FLAG`: bare it means true and leaves the next argument alone (diffusers' `store_true`);
    `--FLAG=false` and `--FLAG false` also work. argparse hands a bare switch the next word when that is no
    flag: an unknown `KEY=VALUE` taken that way goes back, to be reported as unknown."""

    def __call__(self, parser, namespace, values, option_string=None):
        if values is not None and values.lower() not in _BOOLEAN_WORDS:
            if "=" not in values:
                raise ConfigError(
                    f"{option_string} is a switch: give it alone, or {option_string}=false; got {values!r}"
                )
            namespace.positional.append(values)
            values = None
        super().__call__(parser, namespace, "true" if values is None else values, option_string)


@functools.cache
def config_parser() -> argparse.ArgumentParser:
    """The trainer's command line: `--config`, one flag per config field (help from the field's comment), and
    `KEY=VALUE` overrides (kept for `parse_command_line`, argparse does not see them as arguments)."""
    parser = _ConfigArgumentParser(
        usage="%(prog)s [--config RECIPE.yaml] [--FLAG [VALUE] ...] [KEY=VALUE ...]",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # a prefix of a flag is an error, not a guess
    )
    parser.add_argument("--config", metavar="RECIPE.yaml", help="a recipe: YAML of the config tree (configs/*.yaml)")
    parser.add_argument("--version", action="version", version=f"lact-video {__version__}")
    names = flag_names()
    defaults = OmegaConf.to_container(OmegaConf.structured(FinetuneConfig), enum_to_str=True)
    groups = {}
    for path, cls, name in _leaf_fields():
        section = path.rpartition(".")[0]
        if section not in groups:
            groups[section] = parser.add_argument_group(f"{section} settings")
        annotation = typing.get_type_hints(cls)[name]
        switch = path in _switch_paths()
        options = sorted((f"--{flag}" for flag, target in names.items() if target == path), key=len)
        default = functools.reduce(dict.__getitem__, path.split("."), defaults)
        comment = _field_comments(cls).get(name, "").replace("%", "%%")  # argparse %-formats help texts
        groups[section].add_argument(
            *options,
            dest=path,
            action=_Switch if switch else _Assign,
            nargs="?" if switch else None,
            metavar="{" + ",".join(TEXT_CHOICES[path]) + "}" if path in TEXT_CHOICES else _metavar(annotation),
            help=f"{comment} [{path}; default: {'required' if default == MISSING else default}]",
        )
    for old in DEPRECATED_FINETUNE_KEYS:  # accepted, not shown: read with a FutureWarning
        options = [f"--{flag}" for flag, target in names.items() if target == old]
        parser.add_argument(*options, dest=old, action=_Assign, help=argparse.SUPPRESS)
    return parser


def _metavar(annotation) -> str:
    """How a flag's value looks in --help: the choices of an enum, `[FLOAT,...]` for a list, else the type."""
    if isinstance(annotation, types.UnionType):  # X | None
        (annotation,) = (kind for kind in typing.get_args(annotation) if kind is not type(None))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "{" + ",".join(member.value for member in annotation) + "}"
    if typing.get_origin(annotation) is list:
        return f"[{typing.get_args(annotation)[0].__name__.upper()},...]"
    return "true|false" if annotation is bool else annotation.__name__.upper()


def parse_command_line(argv: list[str]) -> tuple[str | None, list[str]]:
    """`argv` -> (the recipe of `--config`, the overrides as `dotted.path=value`).

    Flags (`--learning_rate 1e-4`, `--learning_rate=1e-4`, `--optimizer.learning_rate 1e-4`, bare switches such
    as `--gradient_checkpointing`) and `KEY=VALUE` overrides mix in any order, and the last one of a key wins
    (as in argparse); `-` in a flag reads as `_`. `--help` and `--version` print and exit 0, wherever they stand.

    Raises:
        ConfigError: an unknown flag or key (with the nearest names, or where a diffusers flag's setting lives
            here); a flag without its value; an argument that is neither a flag nor KEY=VALUE.
    """
    argv = _overrides_as_flags([_underscored(arg) for arg in argv])
    args, rest = config_parser().parse_known_args(argv, argparse.Namespace(overrides=[], positional=[]))
    for arg in [*args.positional, *rest]:  # what argparse did not read: unknown flags and keys, stray words
        key, has_value, _ = arg.partition("=")
        if arg.startswith("-"):
            raise ConfigError(_unknown(key.lstrip("-"), f"flag {key}", "--"))
        if not has_value:
            raise ConfigError(f"cannot read argument {arg!r}: write a flag (--max_train_steps 10) or KEY=VALUE")
        raise ConfigError(_unknown(key, f"config key {key!r}"))
    overrides = {
        deprecated_key(path, DEPRECATED_FINETUNE_KEYS, "the command line"): value for path, value in args.overrides
    }
    if _asks_for_epochs({path.removeprefix("train.") for path in overrides if path.startswith("train.")}):
        overrides["train.max_train_steps"] = "null"
    return args.config, [f"{path}={value}" for path, value in overrides.items()]


def _overrides_as_flags(argv: list[str]) -> list[str]:
    """Each `KEY=VALUE` override of a known key as `--KEY=VALUE`, so that argparse reads overrides and flags in
    one pass, in the order given. A word right after a flag that takes a value is that value, whatever it holds
    (`--output_dir runs/lr=1e-4`)."""
    names, switches = flag_names(), _switch_paths()
    converted, is_value = [], False
    for arg in argv:
        key, has_value, _ = arg.partition("=")
        if has_value and not is_value and not arg.startswith("-") and key in names:
            arg = f"--{arg}"
        converted.append(arg)
        flag = arg[2:] if arg.startswith("--") and "=" not in arg else None
        is_value = flag == "config" or (flag in names and names[flag] not in switches)
    return converted


@functools.cache
def _switch_paths() -> frozenset[str]:
    """The dotted paths of the bool fields: their flags are switches."""
    return frozenset(path for path, cls, name in _leaf_fields() if typing.get_type_hints(cls)[name] is bool)


def _underscored(arg: str) -> str:
    """`--max-train-steps=3` -> `--max_train_steps=3`: flags are written both ways; values are left alone."""
    if not arg.startswith("--"):
        return arg
    flag, has_value, value = arg.partition("=")
    return flag.replace("-", "_").replace("__", "--", 1) + has_value + value


def _unknown(key: str, what: str, prefix: str = "") -> str:
    """The message for an unknown flag or key: where diffusers' flag lives here, or the nearest names."""
    if key in DIFFUSERS_FLAGS_ELSEWHERE:
        return f"unknown {what}: {DIFFUSERS_FLAGS_ELSEWHERE[key]}"
    current = [name for name, path in flag_names().items() if path not in DEPRECATED_FINETUNE_KEYS]
    close = [prefix + name for name in difflib.get_close_matches(key, current, n=3)]
    hint = f"; did you mean {', '.join(close)}?" if close else "; --help lists them all"
    return f"unknown {what}{hint}"


def _asks_for_epochs(train_keys) -> bool:
    """Whether a layer (recipe or command line) that sets these train keys asks for epochs: num_train_epochs and
    not max_train_steps. Such a layer clears max_train_steps, which would otherwise win (a default or an
    earlier layer's)."""
    return "num_train_epochs" in train_keys and "max_train_steps" not in train_keys


def load_config(argv: list[str] | None = None) -> FinetuneConfig:
    """Defaults, then the recipe, then the command line (flags and overrides): a checked `FinetuneConfig`.

    Raises:
        ConfigError: a bad argument, an unknown key, a value of the wrong type, or a failed `check_config`.
    """
    config_path, overrides = parse_command_line(sys.argv[1:] if argv is None else list(argv))
    merged = OmegaConf.structured(FinetuneConfig)
    if config_path is not None:
        where = f"--config {config_path}"
        with _omegaconf_errors(where):
            recipe = _rename_deprecated_keys(OmegaConf.to_container(OmegaConf.load(config_path)), where)
            train = recipe.get("train") if isinstance(recipe.get("train"), dict) else {}
            if _asks_for_epochs(train):
                train["max_train_steps"] = None
            merged = OmegaConf.merge(merged, recipe)  # to_container keeps ${...} interpolations unresolved
    with _omegaconf_errors("the command line"):
        merged = OmegaConf.merge(merged, _command_line_tree(overrides))
    with _omegaconf_errors(None):  # a required key left unset, or an interpolation to no key
        config = OmegaConf.to_object(merged)
    check_config(config)
    return config


def _command_line_tree(overrides: list[str]):
    """`dotted.path=value` overrides as an OmegaConf tree. Values are YAML (`[0,2]`, `null`, `1e-4`), except that
    a text field (a str or an enum) takes its text as typed: YAML would read `--mixed_precision no` as false, and
    diffusers users type it so. `null` still clears such a field; a quoted value is unquoted."""
    hints = {path: typing.get_type_hints(cls)[name] for path, cls, name in _leaf_fields()}
    text_fields = {path for path, hint in hints.items() if _is_text(hint)}
    text_lists = {path for path, hint in hints.items() if hint == list[str]}
    verbatim, parsed = {}, []
    for item in overrides:
        path, _, value = item.partition("=")
        if path in text_fields and value not in ("null", "~") and value[:1] not in ("'", '"'):
            verbatim[path] = value
        elif path in text_lists and value[:1] not in ("[", "'", '"') and value not in ("null", "~"):
            verbatim[path] = _text_list(value)
        else:
            parsed.append(item)
    tree = OmegaConf.from_dotlist(parsed)
    for path, value in verbatim.items():
        OmegaConf.update(tree, path, value, force_add=True)
    return tree


def _text_list(value: str) -> list[str]:
    """A list-of-text field typed without brackets: comma-separated names (`to_q,to_k`, as diffusers' LoRA scripts
    take `--lora_layers`), or one entry when a piece is not a plain name (a regular expression may hold commas)."""
    pieces = value.split(",")
    return pieces if all(PLAIN_NAME.fullmatch(piece) for piece in pieces) else [value]


def _is_text(annotation) -> bool:
    """Whether a field holds text: str or an enum, also `| None`."""
    kinds = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    return any(kind is str or (isinstance(kind, type) and issubclass(kind, enum.Enum)) for kind in kinds)


@contextlib.contextmanager
def _omegaconf_errors(where: str | None):
    """OmegaConf's and YAML's errors (several lines, with the object types) as one `ConfigError` line."""
    try:
        yield
    except ConfigError:
        raise
    except OmegaConfBaseException as error:
        key = error.full_key
        if isinstance(error, ConfigKeyError):
            message = _unknown(key, f"config key {key}")
        elif isinstance(error, MissingMandatoryValue):
            message = f"{key} has no value: set it in the recipe or pass --{key} VALUE"
        else:
            message = f"{key}: {str(error).splitlines()[0]}" if key else str(error).splitlines()[0]
        raise ConfigError(f"{where}: {message}" if where else message) from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{where}: not valid YAML ({str(error).splitlines()[0]})") from None
    except OSError as error:
        raise ConfigError(f"{where}: cannot read the recipe ({error.strerror}): give an existing YAML file") from None
    except ValueError as error:  # rename_deprecated: an old key and its new name, with different values
        raise ConfigError(str(error)) from None


def _rename_deprecated_keys(tree: dict, where: str) -> dict:
    """A recipe (or a run's finetune_config.yaml) as a plain dict, with the old keys of
    `DEPRECATED_FINETUNE_KEYS` renamed in place (a FutureWarning each), before OmegaConf rejects them."""
    for parent in sorted({old.rpartition(".")[0] for old in DEPRECATED_FINETUNE_KEYS}):  # "model" before "model.lact"
        node = tree
        for part in parent.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            renamed = rename_deprecated({f"{parent}.{k}": v for k, v in node.items()}, DEPRECATED_FINETUNE_KEYS, where)
            node.clear()
            node.update({path.removeprefix(f"{parent}."): value for path, value in renamed.items()})
    return tree


def to_yaml(config: FinetuneConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def to_flat_dict(config: FinetuneConfig) -> dict:
    """`{"train.max_train_steps": 5000, ...}` with scalar values, for trackers' hyperparameter tables."""
    flat = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[prefix + key] = value if isinstance(value, (int, float, str, bool)) else str(value)

    walk(OmegaConf.to_container(OmegaConf.structured(config), enum_to_str=True), "")
    return flat


def check_config(config: FinetuneConfig) -> None:
    """Cheap checks, before any model loads: each `ConfigError` names the keys, what is wrong and the fix."""
    try:
        config.data.validate()
    except ValueError as error:
        raise ConfigError(f"data: {error}") from None
    _check_trainable(config.model, config.data)
    lact = config.model.lact
    _require(
        {
            "model.lact.fw_retention_decay": (lact.fw_retention_decay, 0 <= lact.fw_retention_decay <= 1,
                                              "must lie in [0, 1] (0: off, as the spec)"),
            "model.lact.fw_base_lr": (lact.fw_base_lr, lact.fw_base_lr > 0, "must be greater than 0"),
        }
    )  # fmt: skip
    if config.model.trainable == Trainable.lora:
        _check_lora(config.model.lora)
    elif config.train.export_fuse_lora:
        raise ConfigError(
            f"train.export_fuse_lora=true fuses LoRA adapters, and model.trainable={config.model.trainable.value} "
            "trains none: drop --fuse, or set model.trainable=lora"
        )
    _check_training_length(config.train)
    _check_train(config)
    _check_optimization(config)


def _check_trainable(model: ModelConfig, data: DataConfig) -> None:
    """The trainable set must hold parameters: new_params are the fast-weight memories, which a baseline variant
    (or an empty lact_blocks) removes; AdamW would fail after every model has loaded."""
    blocks = VARIANTS[model.variant].get("lact_blocks", model.lact.lact_blocks)
    if model.trainable == Trainable.new_params and blocks == []:
        cause = (
            f"model.variant={model.variant.value} (formerly model.mode) has no fast-weight memory"
            if model.variant != Variant.lact
            else "model.lact.lact_blocks=[] gives no block a fast-weight memory"
        )
        raise ConfigError(
            f"model.trainable=new_params trains only the fast-weight memories, and {cause}, so nothing would train: "
            f"set model.trainable=lact_layers (the attention layers) or all to finetune this baseline, or "
            f"model.variant=lact with memory blocks to train the memory"
        )


def _check_lora(lora: LoraSettings) -> None:
    _require(
        {
            "model.lora.rank": (lora.rank, lora.rank >= 1, "must be 1 or more (--rank R)"),
            "model.lora.lora_alpha": (lora.lora_alpha, lora.lora_alpha > 0, "must be greater than 0 (--lora_alpha A)"),
            "model.lora.lora_dropout": (lora.lora_dropout, 0 <= lora.lora_dropout < 1, "must lie in [0, 1)"),
        }
    )
    try:
        target_modules_spec(lora.target_modules)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _check_training_length(train: TrainConfig) -> None:
    if train.max_train_steps is None and train.num_train_epochs is None:
        raise ConfigError(
            "train.max_train_steps and train.num_train_epochs are both null, so the run has no length: "
            "set one (--max_train_steps N or --num_train_epochs N)"
        )
    lengths = {"train.max_train_steps": train.max_train_steps, "train.num_train_epochs": train.num_train_epochs}
    _require(
        {
            key: (value, value is None or value >= 1, "trains nothing: set it to 1 or more")
            for key, value in lengths.items()
        }
    )


def _check_train(config: FinetuneConfig) -> None:
    train = config.train
    at_least_one = {
        "train.train_batch_size": train.train_batch_size,
        "train.gradient_accumulation_steps": train.gradient_accumulation_steps,
        "train.checkpointing_steps": train.checkpointing_steps,
        "train.logging_steps": train.logging_steps,
        "train.sequence_parallel_size": train.sequence_parallel_size,
        "model.lact.num_repeat": config.model.lact.num_repeat,
    }
    _require({key: (value, value >= 1, "must be 1 or more") for key, value in at_least_one.items()})
    offset = train.position_offset_max
    _require({"train.position_offset_max": (offset, offset >= 0, "must be 0 (no offsets) or more chunks")})
    if train.checkpoints_total_limit is not None and train.checkpoints_total_limit < 1:
        raise ConfigError(
            f"train.checkpoints_total_limit={train.checkpoints_total_limit} would keep no checkpoint: "
            "set it to 1 or more, or null to keep them all"
        )
    if train.mixed_precision not in MIXED_PRECISION:
        raise ConfigError(
            f"train.mixed_precision={train.mixed_precision!r} is not a precision: use one of {', '.join(MIXED_PRECISION)}"
        )
    if train.report_to not in REPORT_TO:
        raise ConfigError(f"train.report_to={train.report_to!r} is not a tracker: use one of {', '.join(REPORT_TO)}")
    if train.report_to == "wandb" and importlib.util.find_spec("wandb") is None:
        raise ConfigError(
            "train.report_to=wandb needs the wandb package: pip install wandb, or set train.report_to=tensorboard"
        )
    _check_validation(train, config.data)
    if train.export_only and not train.resume_from_checkpoint:
        raise ConfigError(
            "train.export_only=true exports a trained checkpoint, but train.resume_from_checkpoint is not set: "
            "set it to a checkpoint folder or 'latest'"
        )
    base, export_dir = config.model.pretrained_model_name_or_path, train.export_dir or train.output_dir
    if os.path.isdir(base) and os.path.realpath(export_dir) == os.path.realpath(base):
        key = "train.export_dir" if train.export_dir else "train.output_dir"
        raise ConfigError(
            f"{key}={export_dir} is the base model's folder (model.pretrained_model_name_or_path), which the export "
            f"would overwrite: set {key} to another folder"
        )


def _check_validation(train: TrainConfig, data: DataConfig) -> None:
    if train.validation_steps < 0:
        raise ConfigError(
            f"train.validation_steps={train.validation_steps}: set N > 0 to validate every N steps, or 0 for none"
        )
    if train.validation_steps and data.validation_data_dir is None:
        raise ConfigError(
            f"train.validation_steps={train.validation_steps} needs held-out clips, and data.validation_data_dir "
            "is not set: set data.validation_data_dir=DIR, or train.validation_steps=0"
        )
    if not train.validation_steps and data.validation_data_dir is not None:
        raise ConfigError(
            "data.validation_data_dir is set but train.validation_steps=0, so it would never be used: "
            "set train.validation_steps=N to validate every N steps, or leave data.validation_data_dir unset"
        )
    try:
        check_noise_levels(train.validation_noise_levels)
    except ValueError as error:
        raise ConfigError(f"train.validation_noise_levels: {error}") from None


def _require(rules: dict[str, tuple[object, bool, str]]) -> None:
    """`{key: (value, whether it is right, what it must be)}`: a `ConfigError` for the first wrong one."""
    for key, (value, ok, requirement) in rules.items():
        if not ok:
            raise ConfigError(f"{key}={value} {requirement}")


def _check_optimization(config: FinetuneConfig) -> None:
    optim, flow, ema = config.optimizer, config.flow_matching, config.ema
    _require(
        {
            "optimizer.learning_rate": (optim.learning_rate, optim.learning_rate > 0, "must be greater than 0"),
            "optimizer.new_params_lr_multiplier": (
                optim.new_params_lr_multiplier,
                optim.new_params_lr_multiplier > 0,
                "must be greater than 0",
            ),
            "optimizer.max_grad_norm": (optim.max_grad_norm, optim.max_grad_norm > 0, "must be greater than 0"),
            "optimizer.adam_epsilon": (optim.adam_epsilon, optim.adam_epsilon > 0, "must be greater than 0"),
            "optimizer.adam_beta1": (optim.adam_beta1, 0 <= optim.adam_beta1 < 1, "must lie in [0, 1)"),
            "optimizer.adam_beta2": (optim.adam_beta2, 0 <= optim.adam_beta2 < 1, "must lie in [0, 1)"),
            "optimizer.adam_weight_decay": (
                optim.adam_weight_decay,
                optim.adam_weight_decay >= 0,
                "must be 0 or more",
            ),
            "optimizer.lr_warmup_steps": (optim.lr_warmup_steps, optim.lr_warmup_steps >= 0, "must be 0 or more"),
            "flow_matching.shift": (flow.shift, flow.shift > 0, "must be greater than 0 (1 means no shift)"),
            "flow_matching.logit_std": (flow.logit_std, flow.logit_std > 0, "must be greater than 0"),
            "flow_matching.caption_dropout": (
                flow.caption_dropout,
                0 <= flow.caption_dropout <= 1,
                "is a probability: set it in [0, 1] (0 keeps every prompt)",
            ),
            "ema.ema_decay": (ema.ema_decay, 0 <= ema.ema_decay < 1, "must lie in [0, 1)"),
        }
    )
    if optim.lr_scheduler not in LR_SCHEDULERS:
        raise ConfigError(
            f"optimizer.lr_scheduler={optim.lr_scheduler!r} is not a diffusers scheduler: use one of "
            f"{', '.join(LR_SCHEDULERS)}"
        )


def check_against_transformer(config: FinetuneConfig, transformer_config: dict) -> None:
    """Checks that need the base transformer's config.json (read without loading any weights).

    Raises:
        ConfigError: the LaCT settings or the clip do not fit the base transformer, with the values that do.
    """
    if transformer_config.get("_class_name") == "LaCTWanTransformer3DModel":
        raise ConfigError(
            f"model.pretrained_model_name_or_path={config.model.pretrained_model_name_or_path} holds a LaCT pipeline "
            "(an export): finetuning starts from a plain Wan2.1 T2V base and adds the LaCT layers of model.lact. "
            "Give the Wan base, or go on with a run from its checkpoint (train.resume_from_checkpoint)"
        )
    dim = transformer_config["num_attention_heads"] * transformer_config["attention_head_dim"]
    lact = config.model.lact
    if lact.fw_head_dim <= 0 or dim % lact.fw_head_dim:
        divisors = [d for d in range(dim // 8, dim + 1) if dim % d == 0][:4]
        raise ConfigError(
            f"model.lact.fw_head_dim={lact.fw_head_dim} does not divide the base model's dim {dim} (heads x head dim): "
            f"use a divisor such as {', '.join(map(str, divisors))}"
        )
    layers = transformer_config["num_layers"]
    if lact.lact_blocks is not None and not all(0 <= i < layers for i in lact.lact_blocks):
        raise ConfigError(
            f"model.lact.lact_blocks={lact.lact_blocks} names blocks the base model lacks: it has {layers} blocks, "
            f"indices 0 to {layers - 1} (null puts a memory in all of them)"
        )
    p_t, p_h, p_w = transformer_config["patch_size"]
    data = config.data
    h, w = latent_size(data.height, data.width)
    # Random position offsets (train.position_offset_max) reach that many chunks past the clip.
    frames = data.latent_frames + config.train.position_offset_max * data.chunk_frames
    post_patch = (frames // p_t, h // p_h, w // p_w)
    if max(post_patch) > transformer_config["rope_max_seq_len"]:
        raise ConfigError(
            f"the clip (data.num_frames={data.num_frames}, data.height={data.height}, data.width={data.width}) is "
            f"{post_patch} (frames, height, width) after patching, beyond the base transformer's "
            f"rope_max_seq_len={transformer_config['rope_max_seq_len']}: use fewer frames or a smaller size"
        )
    _check_sequence_parallel(config, transformer_config)


def _check_sequence_parallel(config: FinetuneConfig, transformer_config: dict) -> None:
    """Each rank of a sequence-parallel group holds 1/S of every chunk's tokens and, in attention, 1/S of the heads
    (`lact_video.parallel`); DeepSpeed's uneven-head all-to-all needs its own sequence-parallel group, which the
    trainer does not register (docs/design.md, Sec. 7), so S must divide both."""
    size, data = config.train.sequence_parallel_size, config.data
    heads = transformer_config["num_attention_heads"]
    tokens = tokens_per_chunk(
        data.chunk_frames, *latent_size(data.height, data.width), transformer_config["patch_size"]
    )
    if heads % size or tokens % size:
        fits = [d for d in range(1, heads + 1) if heads % d == 0 and tokens % d == 0]
        raise ConfigError(
            f"train.sequence_parallel_size={size} must divide the base model's {heads} attention heads and the "
            f"{tokens} tokens of a chunk (data.chunk_frames={data.chunk_frames} at {data.height}x{data.width}): use "
            f"one of {', '.join(map(str, fits))}"
        )


def with_training_length(config: FinetuneConfig, num_samples: int, num_processes: int) -> FinetuneConfig:
    """`config` with train.max_train_steps set from train.num_train_epochs when it is null (as diffusers'
    examples do): an epoch is ceil(ceil(num_samples / (train_batch_size * num_processes)) /
    gradient_accumulation_steps) optimizer steps. A config with max_train_steps comes back unchanged."""
    train = config.train
    if train.max_train_steps is not None:
        return config
    micro_batches = math.ceil(num_samples / (train.train_batch_size * num_processes))
    steps = math.ceil(micro_batches / train.gradient_accumulation_steps) * train.num_train_epochs
    return dataclasses.replace(config, train=dataclasses.replace(train, max_train_steps=steps))


def lact_config(config: FinetuneConfig) -> dict:
    """The LaCT keys for `LaCTWanTransformer3DModel.from_wan`: the lact section, the variant, chunk_frames, and
    trained_chunks, when null, from the clip: its chunks plus train.position_offset_max."""
    keys = {**vars(config.model.lact), **VARIANTS[config.model.variant], "chunk_frames": config.data.chunk_frames}
    if keys["trained_chunks"] is None:
        keys["trained_chunks"] = (
            config.data.latent_frames // config.data.chunk_frames + config.train.position_offset_max
        )
    return keys


REFERENCE_BEGIN, REFERENCE_END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"


def config_reference() -> str:
    """The markdown table of every field: dotted path, default and the comment above it in the source.

    README.md holds it between `REFERENCE_BEGIN` and `REFERENCE_END`.
    """
    header = ["| key | default | meaning |", "|---|---|---|"]
    return "\n".join([REFERENCE_BEGIN, *header, *_reference_rows(), REFERENCE_END])


@functools.cache
def _field_comments(cls) -> dict[str, str]:
    """The `# ...` lines right above each field of a dataclass, joined."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    comments = {}
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign):
            above, row = [], node.lineno - 2
            while row >= 0 and lines[row].strip().startswith("#"):
                above.insert(0, lines[row].strip().lstrip("#").strip())
                row -= 1
            comments[node.target.id] = " ".join(above)
    return comments


def _reference_rows() -> list[str]:
    defaults = OmegaConf.to_container(OmegaConf.structured(FinetuneConfig), enum_to_str=True)
    rows = []
    for path, cls, name in _leaf_fields():
        value = functools.reduce(dict.__getitem__, path.split("."), defaults)
        shown = "required" if value == "???" else f"`{value}`"
        rows.append(f"| `{path}` | {shown} | {_field_comments(cls).get(name, '')} |")
    return rows
