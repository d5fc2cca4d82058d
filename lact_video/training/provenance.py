"""How a checkpoint was made, recorded in its `checkpoint.json`, and the checks of a resume against it
(docs/design.md, Sec. 6.6).

Every checkpoint records the run's full config, how it was launched (accelerate's distributed type, the
ZeRO stage, the number of processes, the mixed precision) and the lact-video version that wrote it.
`check_resume` compares the record with the starting run before any model loads and before anything
is written to the run folder:
- model keys (`model.*`) and the data-shape keys (`DATA_SHAPE_KEYS`) must be equal: the weights, the
  optimizer's parameter groups and the clips they were trained on. Refused, with the changed keys named.
- the launch must be able to load the files: a DeepSpeed checkpoint needs DeepSpeed with the same ZeRO
  stage and mixed precision, and under ZeRO (stage >= 1 splits the optimizer states per process) the
  same number of processes; a checkpoint written without DeepSpeed cannot be loaded by a DeepSpeed run.
- `train.sequence_parallel_size` may change: ZeRO-3's shards and the EMA slices depend on the number of processes
  only. The data-parallel size changes with it, and so do the clips per optimizer step (warned, with both counts).
- the length: resuming at or past `train.max_train_steps` would train nothing and export the checkpoint as the
  finetune; refused unless `train.export_only` asks for that export.
- everything else may change and is logged as a warning; the optimizer settings (`optimizer.*`, and the schedule's
  length `train.max_train_steps`) apply from the first resumed step (the trainer puts them back after
  `load_state`, which restores the checkpoint's).
Configs are compared after the deprecated aliases of `lact_video.models.lact_config` are resolved, so a
checkpoint whose record uses an old key name is not refused for the rename alone.

A checkpoint written before this record existed also predates weights format 2 (`lact_video.models.formats`):
`check_weights_format` refuses it first, saying how to finish or export it.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from dataclasses import dataclass

from omegaconf import OmegaConf

from .. import __version__
from ..errors import ConfigError
from ..models.formats import CHECKPOINT_FORMAT_KEY, FORMAT_VERSION, saved_format
from ..models.lact_config import DEPRECATED_FINETUNE_KEYS, rename_deprecated
from .checkpointing import MARKER

logger = logging.getLogger(__name__)

DEEPSPEED = "DEEPSPEED"  # accelerate's DistributedType.DEEPSPEED.value
# What the checkpoint's weights, optimizer groups and training clips are: refused when changed.
FIXED_PREFIX = "model."
DATA_SHAPE_KEYS = ("data.height", "data.width", "data.num_frames", "data.chunk_frames", "data.max_sequence_length")


@dataclass(frozen=True)
class Provenance:
    """How a checkpoint was made: the keys of `checkpoint.json` besides step, ema, time and loss.

    A field added later takes as default the value that describes the checkpoints written before it
    (docs/design.md Sec. 6.3); `from_marker` fills it in.
    """

    num_processes: int
    # accelerate's DistributedType value (NO, MULTI_CPU, MULTI_GPU, DEEPSPEED, ...); None: not recorded.
    distributed_type: str | None = None
    zero_stage: int | None = None  # DeepSpeed's ZeRO stage; None without DeepSpeed or not recorded
    mixed_precision: str | None = None  # accelerate's resolved mixed precision (no, bf16, fp16)
    lact_video_version: str | None = None
    config: dict | None = None  # the full FinetuneConfig as plain data (enums as strings)
    sequence_parallel_size: int = 1  # processes per sequence-parallel group (train.sequence_parallel_size)

    @classmethod
    def of_run(cls, config, accelerator) -> Provenance:
        plugin = accelerator.state.deepspeed_plugin
        return cls(
            num_processes=accelerator.num_processes,
            distributed_type=accelerator.distributed_type.value,
            zero_stage=plugin.zero_stage if plugin is not None else None,
            mixed_precision=accelerator.mixed_precision,
            sequence_parallel_size=config.train.sequence_parallel_size,
            lact_video_version=__version__,
            config=OmegaConf.to_container(OmegaConf.structured(config), enum_to_str=True),
        )

    @classmethod
    def from_marker(cls, marker: dict) -> Provenance:
        return cls(**{f.name: marker[f.name] for f in dataclasses.fields(cls) if f.name in marker})

    def as_marker(self) -> dict:
        return dataclasses.asdict(self)


def split_per_process(path: pathlib.Path) -> bool:
    """Whether the checkpoint's optimizer states are split by process (DeepSpeed ZeRO stage >= 1 writes one
    `*zero_pp_rank_<r>_*_optim_states.pt` per rank)."""
    return any((path / "pytorch_model").glob("*zero_pp_rank_*_optim_states.pt"))


def check_resume(path: pathlib.Path, marker: dict, config, accelerator) -> None:
    """Raise `ConfigError` if this run cannot resume checkpoint `path`; log the settings that changed.

    Call it before any model loads. See the module docstring for what is refused and what applies.
    """
    check_weights_format(path, marker)
    if config.train.max_train_steps is not None:  # None: derived from num_train_epochs once the data is read
        check_length(path, marker["step"], config.train)
    then, now = Provenance.from_marker(marker), Provenance.of_run(config, accelerator)
    check_launch(path, then, now)
    if then.sequence_parallel_size != now.sequence_parallel_size and then.config is not None:
        logger.warning(
            "%s was trained with train.sequence_parallel_size=%d, this run uses %d: the clips per optimizer step go "
            "from %d to %d", path.name, then.sequence_parallel_size, now.sequence_parallel_size,
            clips_per_step(then), clips_per_step(now),
        )  # fmt: skip
    changes = config_changes(then.config, now.config, where=str(path / MARKER))
    fixed = {key: change for key, change in changes.items() if is_fixed(key)}
    if fixed:
        listed = "; ".join(f"{key}={old!r} there, {new!r} here" for key, (old, new) in fixed.items())
        raise ConfigError(
            f"{path} was trained with other model or data-shape settings than this run: {listed}. Resume with the "
            "checkpoint's values (drop these overrides), or start a new run in a new train.output_dir."
        )
    if changes:
        # A warning for all of them: even an optimizer setting makes the resumed run differ from the one recorded.
        listed = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changes.items())
        logger.warning("Settings changed since %s: %s (they apply from this resume on)", path.name, listed)


def clips_per_step(made: Provenance) -> int:
    """Clips one optimizer step reads: data-parallel processes x train_batch_size x gradient_accumulation_steps."""
    train = made.config["train"]
    data_parallel = made.num_processes // made.sequence_parallel_size
    return data_parallel * train["train_batch_size"] * train["gradient_accumulation_steps"]


def check_length(path: pathlib.Path, step: int, train) -> None:
    """Refuse resuming checkpoint `path` (at `step`) into a run of `train.max_train_steps` <= step: it would train
    nothing and export the checkpoint as if it were the finetune. `train.export_only` asks for that deliberately."""
    if not train.export_only and train.max_train_steps <= step:
        raise ConfigError(
            f"{path} is at step {step} and train.max_train_steps={train.max_train_steps}: this run would train "
            f"nothing. Raise train.max_train_steps above {step} (--max_train_steps N) to train on, or pass "
            "train.export_only=true to export the checkpoint as it is."
        )


def check_weights_format(path: pathlib.Path, marker: dict) -> None:
    """Refuse a checkpoint whose weights have another meaning than this package trains (`lact_video.models.formats`,
    docs/design.md Sec. 6.3): resuming would train them as if they had this one."""
    version = saved_format(marker, CHECKPOINT_FORMAT_KEY, str(path / MARKER))
    if version != FORMAT_VERSION:
        raise ConfigError(
            f"{path} holds weights of format {version} (no {CHECKPOINT_FORMAT_KEY} in {MARKER}: written before "
            f"the fast-weight rate became softplus(lr_proj(x) + softplus^-1(fw_base_lr))); this lact-video trains "
            f"format {FORMAT_VERSION}, and resuming would give the weights another meaning. Finish or export the run "
            "with the lact-video that wrote it (an exported folder converts on load), or start a new run from that "
            "export; lact-video-validate converts it on load."
        )


def check_launch(path: pathlib.Path, then: Provenance, now: Provenance) -> None:
    """Refuse a launch that cannot load the checkpoint's files (module docstring), saying how to proceed."""
    was, written = then.distributed_type == DEEPSPEED, f"written by {then.num_processes} process(es)"
    stage = "ZeRO" if then.zero_stage is None else f"ZeRO-{then.zero_stage}"
    export = (
        f"or export it from such a launch (train.export_only=true train.resume_from_checkpoint={path}) and start a "
        "new run in a new train.output_dir."
    )
    if was and now.distributed_type != DEEPSPEED:
        raise ConfigError(
            f"{path} holds DeepSpeed {stage} state {written}; this run has no DeepSpeed ({now.distributed_type}, "
            f"{now.num_processes} process(es)) and cannot load it. Resume it under accelerate launch with a DeepSpeed "
            f"{stage} config and {then.num_processes} processes (e.g. configs/accelerate/zero3_cpu_2proc.yaml), "
            + export
        )
    if not was and now.distributed_type == DEEPSPEED:
        raise ConfigError(
            f"{path} was {written} without DeepSpeed; this DeepSpeed run cannot load it. Resume it with the launch it "
            "was written with (no DeepSpeed), " + export
        )
    if not was:
        return
    if then.zero_stage is not None and then.zero_stage != now.zero_stage:
        raise ConfigError(
            f"{path} holds DeepSpeed ZeRO-{then.zero_stage} state; this run uses ZeRO-{now.zero_stage}. Resume it "
            f"with a ZeRO-{then.zero_stage} DeepSpeed config, " + export
        )
    if then.num_processes != now.num_processes and split_per_process(path):
        raise ConfigError(
            f"{path} holds DeepSpeed {stage} shards {written}, and DeepSpeed cannot load them into "
            f"{now.num_processes} process(es). Resume it with {then.num_processes} processes (accelerate launch "
            f"--num_processes {then.num_processes}, or num_processes in the accelerate config), " + export
        )
    if then.mixed_precision is not None and then.mixed_precision != now.mixed_precision:
        raise ConfigError(
            f"{path} holds DeepSpeed state in mixed precision {then.mixed_precision!r}; this run uses "
            f"{now.mixed_precision!r} (train.mixed_precision), whose optimizer files differ. Resume it with "
            f"train.mixed_precision={then.mixed_precision}, " + export
        )


def is_fixed(key: str) -> bool:
    """A key whose change a resume refuses: the model's, or the shape of the training clips."""
    return key.startswith(FIXED_PREFIX) or key in DATA_SHAPE_KEYS


def config_changes(recorded: dict, current: dict, where: str) -> dict[str, tuple]:
    """{dotted key: (recorded value, current value)} for the keys in both configs whose values differ, sorted.

    The recorded keys are renamed through the deprecated aliases first (`where` names the file in the
    FutureWarning). A key in only one of them (a field added or removed since) is not compared.
    """
    old = rename_deprecated(_flatten(recorded), DEPRECATED_FINETUNE_KEYS, where)
    new = _flatten(current)
    return {key: (old[key], new[key]) for key in sorted(old.keys() & new.keys()) if old[key] != new[key]}


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat
