"""Typed configuration of the trainer (`finetune/finetune.py`): one dataclass per concern, parsed by OmegaConf.

A run's config is the defaults below, then a recipe (`--config configs/<recipe>.yaml`), then
command-line overrides, later ones winning. Overrides are `key=value` or `--key value` (also
`--key=value`). Keys are dotted (`optimizer.learning_rate=1e-4`, `model.lact.fw_head_dim=768`);
a field name that occurs once in the whole tree may be given alone (`--max_train_steps 10`).
Values are parsed by OmegaConf (YAML syntax: `model.lact.lact_blocks=[0,2]`, `train.resume_from_checkpoint=null`).

    python finetune/finetune.py --help     # prints every field with its default
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import importlib.util
import inspect
import os
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field

from omegaconf import MISSING, OmegaConf

from .. import __version__
from ..data.config import DataConfig
from ..evaluation.per_chunk_loss import DEFAULT_NOISE_LEVELS
from ..geometry import latent_size
from ..models.lact_config import DEPRECATED_FINETUNE_KEYS, LaCTConfig, Variant, deprecated_key, rename_deprecated
from ..models.transformer_lact_wan import VARIANTS
from .flow_matching import LossWeighting, ShiftRule, TimestepSampling
from .trainable import Trainable


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
    # Which transformer weights train: all, lact_layers or new_params.
    trainable: Trainable = Trainable.all


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
    # Optimizer steps to train for.
    max_train_steps: int = 5000
    # Clips per process per micro-step.
    train_batch_size: int = 1
    # Micro-batches per optimizer step.
    gradient_accumulation_steps: int = 1
    # Recompute each block's activations in the backward pass: less memory, more compute.
    gradient_checkpointing: bool = False
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


@dataclass
class FinetuneConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    flow_matching: FlowMatchingConfig = field(default_factory=FlowMatchingConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
REPORT_TO = ("tensorboard", "wandb", "all", "none")


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


def _qualify(key: str, paths: list[str]) -> str:
    """`key` as a dotted path: as is when it is one, else the one path ending in `.key`."""
    if key in paths:
        return key
    matches = [] if "." in key else [p for p in paths if p.endswith("." + key)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ValueError(f"{key!r} is ambiguous: write one of {', '.join(matches)}")
    close = difflib.get_close_matches(key, paths + [p.rsplit(".", 1)[-1] for p in paths], n=3)
    raise ValueError(f"unknown config key {key!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))


def split_argv(argv: list[str]) -> tuple[str | None, list[str]]:
    """`--config PATH` and the overrides, normalised to `dotted.key=value`."""
    config_path, overrides, paths = None, [], leaf_paths()
    known = paths + list(DEPRECATED_FINETUNE_KEYS)  # old names qualify as they did (`--mode`), then get renamed
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            key, has_value, value = arg[2:].partition("=")
            if not has_value:
                if i + 1 >= len(argv):
                    raise ValueError(f"{arg} needs a value")
                value, i = argv[i + 1], i + 1
        elif "=" in arg:
            key, _, value = arg.partition("=")
        else:
            raise ValueError(f"cannot read argument {arg!r}: use key=value or --key value")
        if key == "config":
            config_path = value
        else:
            path = deprecated_key(_qualify(key.replace("-", "_"), known), DEPRECATED_FINETUNE_KEYS, "the command line")
            overrides.append(f"{path}={value}")
        i += 1
    return config_path, overrides


def load_config(argv: list[str] | None = None) -> FinetuneConfig:
    """Defaults, then the recipe, then the overrides: a checked `FinetuneConfig`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        print(OmegaConf.to_yaml(OmegaConf.structured(FinetuneConfig)))
        raise SystemExit(0)
    if argv and argv[0] == "--version":
        print(f"lact-video {__version__}")
        raise SystemExit(0)
    config_path, overrides = split_argv(argv)
    merged = OmegaConf.structured(FinetuneConfig)
    if config_path is not None:
        recipe = OmegaConf.to_container(OmegaConf.load(config_path), resolve=False)  # keeps ${...} interpolations
        merged = OmegaConf.merge(merged, _rename_deprecated_keys(recipe, f"config {config_path}"))
    merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(overrides))
    config = OmegaConf.to_object(merged)
    check_config(config)
    return config


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
    """Cheap checks, before any model loads: clip geometry, data sources, training settings."""
    config.data.validate()
    train, optim = config.train, config.optimizer
    positive = {
        "train.max_train_steps": train.max_train_steps,
        "train.train_batch_size": train.train_batch_size,
        "train.gradient_accumulation_steps": train.gradient_accumulation_steps,
        "train.checkpointing_steps": train.checkpointing_steps,
        "train.logging_steps": train.logging_steps,
        "model.lact.num_repeat": config.model.lact.num_repeat,
    }
    for key, value in positive.items():
        if value < 1:
            raise ValueError(f"{key} must be >= 1, got {value}")
    if train.checkpoints_total_limit is not None and train.checkpoints_total_limit < 1:
        raise ValueError(f"train.checkpoints_total_limit must be >= 1 or null, got {train.checkpoints_total_limit}")
    if train.mixed_precision not in MIXED_PRECISION:
        raise ValueError(f"train.mixed_precision must be one of {MIXED_PRECISION}, got {train.mixed_precision!r}")
    if train.report_to not in REPORT_TO:
        raise ValueError(f"train.report_to must be one of {REPORT_TO}, got {train.report_to!r}")
    if train.report_to == "wandb" and importlib.util.find_spec("wandb") is None:
        raise ValueError("train.report_to=wandb needs the wandb package (pip install wandb)")
    if train.validation_steps < 0:
        raise ValueError(f"train.validation_steps must be >= 0, got {train.validation_steps}")
    if train.validation_steps and config.data.validation_data_dir is None:
        raise ValueError("train.validation_steps is set but data.validation_data_dir is not")
    if not all(0.0 <= t <= 1.0 for t in train.validation_noise_levels):
        raise ValueError(f"train.validation_noise_levels must lie in [0, 1], got {train.validation_noise_levels}")
    if train.export_only and not train.resume_from_checkpoint:
        raise ValueError("train.export_only needs train.resume_from_checkpoint (a checkpoint folder or 'latest')")
    if not 0.0 <= config.flow_matching.caption_dropout <= 1.0:
        raise ValueError(
            f"flow_matching.caption_dropout must be in [0, 1], got {config.flow_matching.caption_dropout}"
        )
    if config.flow_matching.shift <= 0 or config.flow_matching.logit_std <= 0:
        raise ValueError("flow_matching.shift and flow_matching.logit_std must be > 0")
    if optim.learning_rate <= 0 or optim.new_params_lr_multiplier <= 0 or optim.max_grad_norm <= 0:
        raise ValueError("optimizer.learning_rate, new_params_lr_multiplier and max_grad_norm must be > 0")
    base, export_dir = config.model.pretrained_model_name_or_path, train.export_dir or train.output_dir
    if os.path.isdir(base) and os.path.realpath(export_dir) == os.path.realpath(base):
        raise ValueError(f"the export folder {export_dir} is the base model's folder; the export would overwrite it")
    if not 0.0 <= config.ema.ema_decay < 1.0:
        raise ValueError(f"ema.ema_decay must lie in [0, 1), got {config.ema.ema_decay}")


def check_against_transformer(config: FinetuneConfig, transformer_config: dict) -> None:
    """Checks that need the base transformer's config.json (read without loading any weights)."""
    dim = transformer_config["num_attention_heads"] * transformer_config["attention_head_dim"]
    lact = config.model.lact
    if lact.fw_head_dim <= 0 or dim % lact.fw_head_dim:
        raise ValueError(f"model.lact.fw_head_dim={lact.fw_head_dim} must divide the model dim {dim}")
    layers = transformer_config["num_layers"]
    if lact.lact_blocks is not None and not all(0 <= i < layers for i in lact.lact_blocks):
        raise ValueError(f"model.lact.lact_blocks={lact.lact_blocks} must be block indices in [0, {layers})")
    p_t, p_h, p_w = transformer_config["patch_size"]
    data = config.data
    h, w = latent_size(data.height, data.width)
    post_patch = (data.latent_frames // p_t, h // p_h, w // p_w)
    if max(post_patch) > transformer_config["rope_max_seq_len"]:
        raise ValueError(
            f"the clip is {post_patch} (frames, height, width) after patching, beyond the transformer's "
            f"rope_max_seq_len={transformer_config['rope_max_seq_len']}"
        )


def lact_config(config: FinetuneConfig) -> dict:
    """The LaCT keys for `LaCTWanTransformer3DModel.from_wan`: the lact section, the variant, chunk_frames."""
    return {**vars(config.model.lact), **VARIANTS[config.model.variant], "chunk_frames": config.data.chunk_frames}


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
