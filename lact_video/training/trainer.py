"""Finetune Wan2.1 text-to-video into an autoregressive LaCT video model: the trainer behind
`finetune/finetune.py` and the `lact-video-finetune` console script.

Paper: "Test-Time Training Done Right" (LaCT, arXiv 2505.23884), Sec. 5.3; the objective is
docs/design.md, Sec. 2: teacher forcing over the interleaved noisy/clean chunk
sequence, flow matching on the noisy chunks, the loss reported per chunk.

    accelerate launch --config_file configs/accelerate/zero3_8gpu.yaml finetune/finetune.py \\
        --config configs/wan2.1-t2v-1.3b-lact.yaml \\
        model.pretrained_model_name_or_path=Wan-AI/Wan2.1-T2V-1.3B-Diffusers data.cache_dir=CACHE

    python finetune/finetune.py --config configs/tiny.yaml ...   # one process, no launcher
    python finetune/finetune.py --help                            # every config field

Output (train.output_dir): `checkpoint-<step>/` (atomic; `train.resume_from_checkpoint=latest`
resumes model, optimizer, scheduler, EMA, RNG and data position exactly), `metrics.jsonl`
(one line per step), `train_info.json` (partitioning, trainable parameters and their optimizer state, skipped
videos), `logs/` (trackers), and at the end a diffusers pipeline folder (`transformer/`, `vae/`, ... and
`model_index.json`) that `pipelines.LaCTVideoPipeline.from_pretrained` loads; a LoRA run adds its adapters as
`pytorch_lora_weights.safetensors` (`load_lora_weights`), or fuses them (`train.export_fuse_lora`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import pathlib
import time
from dataclasses import dataclass

import torch

from ..data import LatentCacheDataset, VideoFolderDataset
from ..evaluation import per_chunk_loss, write_report
from ..geometry import latent_size
from ..models import LaCTWanTransformer3DModel
from ..parallel import disable_sequence_parallel, enable_sequence_parallel
from . import checkpointing, provenance
from .config import (
    ConfigError,
    FinetuneConfig,
    check_against_transformer,
    exit_on_config_error,
    lact_config,
    load_config,
    to_flat_dict,
    to_yaml,
    with_training_length,
)
from .distributed import (
    ParallelLayout,
    parallel_layout,
    partition_report,
    process_group_kwargs,
    resolve_deepspeed_config_file,
    silence_known_harmless_warnings,
    skip_deepspeed_shm_build,
    zero3_init_disabled,
)
from .ema import ShardedEMA
from .export import export_pipeline
from .flow_matching import (
    ShiftRule,
    chunk_loss_weights,
    draw_position_offset,
    draw_sample_randomness,
    shift_timesteps,
    teacher_forcing_loss,
    token_following_shift,
    tokens_per_chunk,
)
from .sampling import KeyedDataset, ResumableSampler
from .trainable import lora_parameters, new_parameters, optimizer_state_bytes, parameter_groups, set_trainable
from .zero_loading import is_zero3, load_zero3, zero_init_config

# The checkout this package runs from: accelerate configs name their DeepSpeed JSON relative to it.
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
logger = logging.getLogger("finetune")


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradient norm became NaN or Inf; training stops before any checkpoint is touched."""


@dataclass
class Models:
    transformer: LaCTWanTransformer3DModel
    tokenizer: object
    text_encoder: torch.nn.Module | None  # None when nothing is encoded on the fly
    vae: torch.nn.Module | None
    empty_prompt_embeds: torch.Tensor  # (L, D): the caption-dropout prompt ""


@dataclass
class Datasets:
    train: torch.utils.data.Dataset
    validation: torch.utils.data.Dataset | None
    skipped: list[dict]  # videos left out of training, with reasons


@dataclass
class Prepared:
    """What `accelerator.prepare` hands back, and the EMA of the prepared weights."""

    transformer: torch.nn.Module  # wrapped by accelerate (a DeepSpeed engine under ZeRO)
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    ema: ShardedEMA | None  # None when ema.use_ema is off


def main(argv: list[str] | None = None) -> pathlib.Path | None:
    """Train, checkpoint and export; returns the exported pipeline folder (None when not exported)."""
    asked = load_config(argv)  # checks the clip geometry before any model loads
    accelerator = make_accelerator(asked)
    layout = parallel_layout(accelerator, asked.train.sequence_parallel_size)
    resume_from = check_run_folder(asked, accelerator)  # before any model loads, and before any write
    check_base_transformer(asked)  # before the data is read
    datasets = make_datasets(asked)
    config = with_training_length(asked, len(datasets.train), layout.data_parallel_size)  # num_train_epochs
    if resume_from is not None and asked.train.max_train_steps is None:  # check_resume checked a length that was set
        provenance.check_length(resume_from, checkpointing.read_marker(resume_from)["step"], config.train)
    models = load_models(config, accelerator, encode_on_the_fly=not isinstance(datasets.train, LatentCacheDataset))
    set_trainable(models.transformer, config.model.trainable, config.model.lora)
    if layout.group is not None:
        enable_sequence_parallel(models.transformer, layout.group)
    optimizer, lr_scheduler = make_optimizer(config, models.transformer)
    prepared = prepare(config, accelerator, models.transformer, optimizer, lr_scheduler)
    step = resume(accelerator, prepared, resume_from)
    if not config.train.export_only:
        # The run folder's first write (a failed start leaves it as it was); it saves the config as asked, so that
        # a resume derives the length from num_train_epochs again.
        start_run_folder(asked, accelerator)
        write_run_info(config, accelerator, layout, prepared.transformer, datasets, step, resume_from)
        step = train(config, accelerator, layout, prepared, models, datasets, step)
    if layout.group is not None:  # the exported model is the plain single-device one
        disable_sequence_parallel(models.transformer)
    export_dir = None
    if config.train.export_at_end or config.train.export_only:
        export_dir = export(config, accelerator, prepared)
    accelerator.end_training()
    return export_dir


# 1. Accelerate and DeepSpeed


def make_accelerator(config: FinetuneConfig):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed

    silence_known_harmless_warnings()
    skip_deepspeed_shm_build()
    resolve_deepspeed_config_file(REPO_ROOT)
    train = config.train
    mixed_precision = train.mixed_precision
    if mixed_precision == "auto":
        mixed_precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    output_dir = pathlib.Path(train.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        mixed_precision=mixed_precision,
        log_with=None if train.report_to == "none" else train.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        kwargs_handlers=process_group_kwargs(),
        # The schedule counts optimizer steps, whatever the number of processes.
        step_scheduler_with_optimizer=False,
    )
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None:
        # This config is the one source of these values; the DeepSpeed JSON leaves them "auto".
        ds = plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = train.train_batch_size
        ds["gradient_clipping"] = config.optimizer.max_grad_norm
        ds.setdefault("zero_optimization", {})["stage3_gather_16bit_weights_on_model_save"] = True
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if not accelerator.is_main_process:
        logging.getLogger().setLevel(logging.ERROR)
    # The same seed on every rank: the new LaCT parameters are drawn identically everywhere.
    set_seed(train.seed)
    logger.info("%d process(es), %s, mixed precision %s", accelerator.num_processes, accelerator.distributed_type,
                mixed_precision)  # fmt: skip
    return accelerator


def check_run_folder(config: FinetuneConfig, accelerator) -> pathlib.Path | None:
    """The checkpoint this run resumes (None: it starts at step 0), after every check that needs no model.

    Raises ConfigError, before anything is read into memory or written: `train.export_only` with no
    checkpoint to export; a new run in a folder that holds another run's checkpoints or metrics.jsonl;
    a resume from a checkpoint older than others in the folder (this run would write its checkpoints
    beside theirs, under the same names); a checkpoint this run cannot resume (`provenance.check_resume`).
    """
    train = config.train
    output_dir = pathlib.Path(train.output_dir)
    path = checkpointing.resolve_resume(output_dir, train.resume_from_checkpoint)
    found = checkpointing.list_checkpoints(output_dir)
    if path is None:
        if train.export_only:
            raise ConfigError(
                f"train.export_only=true, but {output_dir} holds no complete checkpoint-<step> to export "
                f"(train.resume_from_checkpoint={train.resume_from_checkpoint!r}). Check train.output_dir, or train first."
            )
        others = [p.name for _, p in found] + (["metrics.jsonl"] if (output_dir / "metrics.jsonl").exists() else [])
        if others:
            resumable = "Resume that run (train.resume_from_checkpoint=latest), choose" if found else "Choose"
            raise ConfigError(
                f"train.output_dir={output_dir} holds another run's {', '.join(others)}; a new run there would mix "
                f"with it. {resumable} a new train.output_dir, or delete them."
            )
        if train.resume_from_checkpoint:
            logger.info("No complete checkpoint in %s; starting from step 0", output_dir)
        return None
    marker = checkpointing.read_marker(path)
    newer = [p.name for step, p in found if step > marker["step"]]
    if newer and not train.export_only:
        raise ConfigError(
            f"{output_dir} holds checkpoints newer than {path.name} ({', '.join(newer)}); resuming {path.name} there "
            "would write this run's checkpoints beside them, under the same names. Resume the newest "
            f"(train.resume_from_checkpoint=latest), or resume {path} into a new train.output_dir."
        )
    provenance.check_resume(path, marker, config, accelerator)
    return path


def start_run_folder(config: FinetuneConfig, accelerator) -> None:
    """The run's finetune_config.yaml and trackers in train.output_dir (main process)."""
    train = config.train
    if not accelerator.is_main_process:
        return
    output_dir = pathlib.Path(train.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "finetune_config.yaml").write_text(to_yaml(config))
    if train.report_to != "none":
        accelerator.init_trackers(train.tracker_project_name, config=to_flat_dict(config))


def input_dtype(accelerator) -> torch.dtype:
    """The dtype the model's inputs need: DeepSpeed bf16/fp16 casts the weights themselves."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision, torch.float32)
    return torch.float32


# 2. Data


def make_datasets(config: FinetuneConfig) -> Datasets:
    data = config.data
    if data.cache_dir is not None:
        train = LatentCacheDataset(data.cache_dir, expected=data)
        skipped = []
    else:
        train = VideoFolderDataset(data.train_data_dir, data)
        skipped = [dataclasses.asdict(s) for s in train.skipped]
    validation = VideoFolderDataset(data.validation_data_dir, data) if data.validation_data_dir else None
    logger.info("%d training clips (%d videos skipped)", len(train), len(skipped))
    return Datasets(train, validation, skipped)


def make_loader(config: FinetuneConfig, layout: ParallelLayout, dataset, start_micro_batch: int):
    """Batches for this process, from global micro-batch `start_micro_batch` on (see `sampling`): sharded by
    data-parallel rank, so the processes of one sequence-parallel group read the same clips (and, seeded by the
    clips' stream positions, draw the same times, noise and caption dropout)."""
    sampler = ResumableSampler(
        len(dataset),
        config.train.train_batch_size,
        layout.data_parallel_size,
        layout.data_parallel_rank,
        config.train.seed,
        start_micro_batch,
    )
    return torch.utils.data.DataLoader(
        KeyedDataset(dataset),
        batch_size=config.train.train_batch_size,
        sampler=sampler,
        num_workers=config.data.dataloader_num_workers,
        pin_memory=torch.cuda.is_available(),
    )


def encode_batch(batch: dict, models: Models, config: FinetuneConfig, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents (B, C, F, h, w) float32 and prompt embeddings (B, L, D), from the cache or encoded now."""
    from ..data.encode import encode_prompts, encode_videos

    if "latents" in batch:
        return batch["latents"].to(device, torch.float32), batch["prompt_embeds"].to(device)
    latents = encode_videos(models.vae, batch["pixel_values"])
    texts, length = list(batch["text"]), config.data.max_sequence_length
    prompt_embeds = encode_prompts(models.tokenizer, models.text_encoder, texts, length)
    return latents.to(device), prompt_embeds.to(device)


# 3. Models


def check_base_transformer(config: FinetuneConfig) -> None:
    """The checks that need the base transformer's config.json (read alone: no weights, no data yet).

    Raises:
        ConfigError: no base there; or the LaCT settings, the sequence-parallel size or the clip do not fit it.
    """
    from diffusers import WanTransformer3DModel

    path, revision = config.model.pretrained_model_name_or_path, config.model.revision
    try:
        base_config = WanTransformer3DModel.load_config(path, subfolder="transformer", revision=revision)
    except (OSError, ValueError) as error:  # huggingface_hub's errors derive from these
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(
            f"model.pretrained_model_name_or_path={path}: no Wan2.1 diffusers model there (a folder with "
            f"transformer/config.json, or a hub id such as Wan-AI/Wan2.1-T2V-1.3B-Diffusers): {first_line}"
        ) from error
    check_against_transformer(config, base_config)


def load_models(config: FinetuneConfig, accelerator, encode_on_the_fly: bool) -> Models:
    from ..data.encode import encode_prompts, load_frozen_encoders

    path, revision = config.model.pretrained_model_name_or_path, config.model.revision
    text_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision, torch.float32)
    encodes_clips = encode_on_the_fly or bool(config.data.validation_data_dir)
    with zero3_init_disabled():
        # The VAE in float32 like precompute's default, so cached and on-the-fly latents agree.
        encoders = load_frozen_encoders(
            path, revision=revision, text_dtype=text_dtype, device=accelerator.device, with_vae=encodes_clips
        )
        empty_prompt_embeds = encode_prompts(
            encoders.tokenizer, encoders.text_encoder, [""], config.data.max_sequence_length
        )[0]
        if is_zero3(accelerator):
            # Each rank builds and holds only its shard of the weights, never a whole copy (docs/design.md Sec. 7).
            transformer = load_zero3(
                path, ds_config=zero_init_config(accelerator), subfolder="transformer", revision=revision,
                lact_config=lact_config(config),
            )  # fmt: skip
        else:
            # Under DeepSpeed bf16 the engine casts the weights to bf16 anyway (its fp32 master copy is
            # made from them), so load them in bf16 and halve the peak host memory.
            transformer = LaCTWanTransformer3DModel.from_wan(
                path, subfolder="transformer", torch_dtype=input_dtype(accelerator), **lact_config(config)
            )
    if config.train.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    text_encoder = encoders.text_encoder if encodes_clips else None  # else the cache holds the prompt embeddings
    return Models(transformer, encoders.tokenizer, text_encoder, encoders.vae, empty_prompt_embeds)


def trainable_parameters(accelerator, model) -> list[torch.nn.Parameter]:
    return [p for p in accelerator.unwrap_model(model).parameters() if p.requires_grad]


def full_numel(params) -> int:
    """Weights in `params`, counted whole also when ZeRO-3 has partitioned them."""
    return sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in params)


# 4. Trainable weights and optimizer


def make_optimizer(config: FinetuneConfig, transformer):
    """AdamW over the weights `set_trainable` left trainable, in groups, and its lr schedule."""
    from diffusers.optimization import get_scheduler

    optim = config.optimizer
    groups = parameter_groups(transformer, optim.learning_rate, optim.new_params_lr_multiplier)
    for group in groups:
        numel = sum(p.numel() for p in group["params"])
        name, tensors, lr = group["name"], len(group["params"]), group["lr"]
        logger.info("Param group %s: %d tensors, %d weights, lr %g", name, tensors, numel, lr)
    optimizer = torch.optim.AdamW(
        groups,
        lr=optim.learning_rate,
        betas=(optim.adam_beta1, optim.adam_beta2),
        weight_decay=optim.adam_weight_decay,
        eps=optim.adam_epsilon,
    )
    lr_scheduler = get_scheduler(
        optim.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=optim.lr_warmup_steps,
        num_training_steps=config.train.max_train_steps,
    )
    return optimizer, lr_scheduler


# 5. accelerate's prepare, EMA and checkpoints


def prepare(config: FinetuneConfig, accelerator, transformer, optimizer, lr_scheduler) -> Prepared:
    """`accelerator.prepare` (DeepSpeed partitions the weights here), then the EMA of the prepared weights."""
    transformer, optimizer, lr_scheduler = accelerator.prepare(transformer, optimizer, lr_scheduler)
    return Prepared(transformer, optimizer, lr_scheduler, make_ema(config, accelerator, transformer))


def make_ema(config: FinetuneConfig, accelerator, transformer) -> ShardedEMA | None:
    """EMA of the trainable weights, each rank keeping its ZeRO-3 slice (see lact_video.training.ema)."""
    if not config.ema.use_ema:
        return None
    return ShardedEMA(trainable_parameters(accelerator, transformer), config.ema.ema_decay)


def resume(accelerator, prepared: Prepared, path: pathlib.Path | None) -> int:
    """The global step after restoring checkpoint `path` (checked by `check_run_folder`); 0 when None.

    The weights, the optimizer's moments, the schedule's position, the EMA and the RNG come from the
    checkpoint; the optimizer's settings (rates, betas, weight decay, epsilon, schedule) stay this run's.
    """
    if path is None:
        return 0
    groups = prepared.optimizer.param_groups
    settings = [{key: value for key, value in group.items() if key not in ("params", "lr")} for group in groups]
    step = checkpointing.load_checkpoint(accelerator, path, prepared.ema)["step"]
    apply_optimizer_settings(prepared.optimizer, prepared.lr_scheduler.scheduler, settings)
    rates = ", ".join(
        f"{group.get('name', i)} {group['lr']:g}" for i, group in enumerate(prepared.optimizer.param_groups)
    )
    logger.info("Resumed from %s at step %d; step %d trains at learning rates %s", path, step, step + 1, rates)
    return step


def apply_optimizer_settings(optimizer, schedule, settings: list[dict]) -> None:
    """Put this run's optimizer settings back after `load_state`, which restores the checkpoint's.

    Args:
        schedule: the `LambdaLR` of diffusers' `get_scheduler`. Its lambdas are this run's (LambdaLR saves
            no plain functions) and its step count the checkpoint's, so the rate of the next step is
            recomputed from this run's base rates, as a run with these settings from the start would have it.
        settings: per parameter group, every key but `params` and `lr`, taken before `load_state`.
    """
    groups = optimizer.param_groups
    for group, wanted in zip(groups, settings, strict=True):
        group.update(wanted)
    schedule.base_lrs = [group["initial_lr"] for group in groups]
    for group, base, factor in zip(groups, schedule.base_lrs, schedule.lr_lambdas, strict=True):
        group["lr"] = base * factor(schedule.last_epoch)


def trainable_report(accelerator, model) -> dict:
    """The weights `model.trainable` trains and the AdamW state they cost (`trainable.optimizer_state_bytes`: an
    estimate from the counts, per process divided among the ranks when ZeRO partitions the optimizer)."""
    trainable = full_numel(p for p in model.parameters() if p.requires_grad)
    state = optimizer_state_bytes(trainable, input_dtype(accelerator))
    plugin = accelerator.state.deepspeed_plugin
    shards = accelerator.num_processes if plugin is not None and plugin.zero_stage >= 1 else 1
    return {
        "total": full_numel(model.parameters()),
        "trainable": trainable,
        "new": full_numel(new_parameters(model)),
        "lora": full_numel(lora_parameters(model)),
        "optimizer_state_bytes": state,
        "optimizer_state_bytes_per_process": math.ceil(state / shards),
    }


def write_run_info(config, accelerator, layout, transformer, datasets: Datasets, global_step, resumed_from) -> None:
    """train_info.json: how ZeRO-3 split the weights on every rank, the parameters, the data."""
    from accelerate.utils import gather_object

    model = accelerator.unwrap_model(transformer)
    partition = gather_object([{"rank": accelerator.process_index, **partition_report(model)}])
    if not accelerator.is_main_process:
        return
    plugin = accelerator.state.deepspeed_plugin
    info = {
        "num_processes": accelerator.num_processes,
        "sequence_parallel_size": layout.sequence_parallel_size,
        "data_parallel_size": layout.data_parallel_size,
        "distributed_type": str(accelerator.distributed_type),
        "zero_stage": plugin.zero_stage if plugin is not None else None,
        "mixed_precision": accelerator.mixed_precision,
        "partition": partition,
        "trainable": config.model.trainable.value,
        "parameters": trainable_report(accelerator, model),
        "tokens_per_chunk": chunk_tokens(config, model),
        "timestep_shift": timestep_shift(config, model),
        "train_samples": len(datasets.train),
        "skipped_videos": datasets.skipped,
        "start_step": global_step,
        "resumed_from": resumed_from,
    }
    path = pathlib.Path(config.train.output_dir) / "train_info.json"
    path.write_text(json.dumps(info, indent=1, default=str))
    counts = info["parameters"]
    logger.info(
        "model.trainable=%s trains %d of %d weights (%.2f%%: %d new LaCT, %d LoRA); AdamW state %.3g GiB, %.3g GiB per "
        "process", info["trainable"], counts["trainable"], counts["total"], 100 * counts["trainable"] / counts["total"],
        counts["new"], counts["lora"], counts["optimizer_state_bytes"] / 2**30,
        counts["optimizer_state_bytes_per_process"] / 2**30,
    )  # fmt: skip


# 6. Training


def chunk_tokens(config: FinetuneConfig, model) -> int:
    data = config.data
    h, w = latent_size(data.height, data.width)
    return tokens_per_chunk(data.chunk_frames, h, w, model.config.patch_size)


def timestep_shift(config: FinetuneConfig, model) -> float:
    fm = config.flow_matching
    if fm.shift_rule is ShiftRule.token_following:
        return token_following_shift(chunk_tokens(config, model))
    return fm.shift


@dataclass(frozen=True)
class StepSettings:
    """What every micro-step needs besides the config and the models, worked out once per run."""

    shift: float  # the timestep shift s of `flow_matching.shift_timesteps`
    dtype: torch.dtype  # the model's input dtype (`input_dtype`)
    params: list[torch.nn.Parameter]  # the trainable weights, for gradient clipping
    # S: each process's gradient is its tokens' share (the sum over its sequence-parallel group is the clip's
    # gradient), and DeepSpeed and DDP average over all S x D processes, so the loss is scaled by S before backward.
    sequence_parallel_size: int = 1

    @classmethod
    def of_run(cls, config: FinetuneConfig, accelerator, layout: ParallelLayout, transformer) -> StepSettings:
        shift = timestep_shift(config, accelerator.unwrap_model(transformer))
        params = trainable_parameters(accelerator, transformer)
        return cls(shift, input_dtype(accelerator), params, layout.sequence_parallel_size)


def train(
    config, accelerator, layout, prepared: Prepared, models: Models, datasets: Datasets, global_step: int
) -> int:
    """The training loop from `global_step` to `train.max_train_steps`; returns the last step."""
    from accelerate.utils import tqdm

    train_cfg = config.train
    output_dir = pathlib.Path(train_cfg.output_dir)
    settings = StepSettings.of_run(config, accelerator, layout, prepared.transformer)
    start_micro_batch = global_step * train_cfg.gradient_accumulation_steps
    batches = iter(make_loader(config, layout, datasets.train, start_micro_batch=start_micro_batch))
    metrics = MetricsLog(output_dir / "metrics.jsonl", accelerator)
    progress = tqdm(total=train_cfg.max_train_steps, initial=global_step, desc="Steps", main_process_only=True)
    validate = functools.partial(
        validation_loss, config, accelerator, layout, prepared.transformer, models, datasets.validation, settings.dtype
    )
    made = provenance.Provenance.of_run(config, accelerator).as_marker()  # recorded in every checkpoint
    starting = global_step < train_cfg.max_train_steps
    if starting and train_cfg.validation_steps and global_step % train_cfg.validation_steps == 0:
        metrics.log(global_step, validate(global_step))  # the baseline, before the first step

    while global_step < train_cfg.max_train_steps:
        # 1. One optimizer step
        record = train_step(config, accelerator, prepared, models, settings, batches, global_step + 1)
        global_step += 1

        # 2. Log: the total loss beside the loss of every chunk index
        progress.update(1)
        progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{next(iter(record['lr'].values())):.2e}")
        metrics.write(global_step, record)
        if global_step % train_cfg.logging_steps == 0:
            accelerator.log(tracker_logs(record), step=global_step)

        # 3. Checkpoint and validate
        if global_step % train_cfg.checkpointing_steps == 0 or global_step == train_cfg.max_train_steps:
            limit, info = train_cfg.checkpoints_total_limit, {"loss": record["loss"], **made}
            checkpointing.save_checkpoint(accelerator, output_dir, global_step, prepared.ema, limit, info)
        if train_cfg.validation_steps and global_step % train_cfg.validation_steps == 0:
            metrics.log(global_step, validate(global_step))
    progress.close()
    metrics.close()
    return global_step


def train_step(config, accelerator, prepared: Prepared, models: Models, settings: StepSettings, batches, step) -> dict:
    """Optimizer step `step` over `gradient_accumulation_steps` micro-batches; returns its metrics.jsonl record."""
    accumulation = config.train.gradient_accumulation_steps
    timer = StepTimer()
    totals, grad_norm = 0.0, None

    # 1. Forward and backward over the micro-batches; the last one clips and steps the optimizer
    for _ in range(accumulation):
        with timer("data_wait_s"):
            batch = next(batches)
        with accelerator.accumulate(prepared.transformer):
            reduced, micro_grad_norm = micro_step(config, accelerator, prepared, models, settings, batch, timer, step)
        if micro_grad_norm is not None:  # only the micro-step that syncs gradients clips them
            grad_norm = micro_grad_norm
        totals = totals + reduced / accumulation

    # 2. Schedule and EMA
    groups = prepared.optimizer.param_groups
    lrs = {group.get("name", str(i)): group["lr"] for i, group in enumerate(groups)}  # this step's
    prepared.lr_scheduler.step()
    if prepared.ema is not None:
        prepared.ema.step()

    # 3. The record: the process-mean losses, the rates, the timings
    record = {"loss": totals[0].item(), "chunk_losses": totals[1:].tolist(), "lr": lrs, "grad_norm": grad_norm}
    record.update(timer.totals(), step_time_s=timer.elapsed())
    return record


def micro_step(config, accelerator, prepared: Prepared, models: Models, settings: StepSettings, batch, timer, step):
    """Forward and backward of one micro-batch, inside `accelerator.accumulate`.

    Returns the process-mean `[loss, *chunk_losses]` (1 + N,) on the CPU, and the gradient norm
    (None unless gradients synced here and the backend reports one). Raises `NonFiniteLossError`.
    """
    output_dir = config.train.output_dir
    reduced = forward_backward(config, accelerator, prepared.transformer, models, settings, batch, timer, step)
    grad_norm = None
    if accelerator.sync_gradients:
        grad_norm = accelerator.clip_grad_norm_(settings.params, config.optimizer.max_grad_norm)
        if grad_norm is not None:
            grad_norm = float(grad_norm)
            check_finite(torch.tensor(grad_norm), "gradient norm", step, output_dir)
    prepared.optimizer.step()
    prepared.optimizer.zero_grad()
    return reduced, grad_norm


def forward_backward(config, accelerator, transformer, models: Models, settings: StepSettings, batch, timer, step):
    """The loss of one micro-batch and its backward; returns the process-mean `[loss, *chunk_losses]` (1 + N,).

    Raises `NonFiniteLossError` before the backward.
    """
    with timer("encode_s"):
        latents, prompt_embeds = encode_batch(batch, models, config, accelerator.device)
    positions = batch["position"].tolist()
    loss, chunk_losses = batch_loss(
        config, transformer, models, latents, prompt_embeds, positions, settings.shift, settings.dtype
    )
    # One all-reduce and one host sync per micro-step: every rank sees the same value, so
    # all of them stop together (a lone rank stopping would hang the others). The processes of a
    # sequence-parallel group hold the same loss, so the mean over all is the mean over the clips.
    reduced = accelerator.reduce(torch.cat([loss.detach()[None], chunk_losses]), "mean").cpu()
    check_finite(reduced, "loss", step, config.train.output_dir)
    accelerator.backward(loss * settings.sequence_parallel_size)  # see StepSettings.sequence_parallel_size
    return reduced


def batch_loss(config, transformer, models: Models, latents, prompt_embeds, positions, shift, dtype):
    """The loss of one micro-batch: per-sample seeded times, noise and caption dropout, then teacher forcing."""
    fm, k = config.flow_matching, config.data.chunk_frames
    t_raw, noise, drop = draw_sample_randomness(
        positions,
        seed=config.train.seed,
        latent_shape=tuple(latents.shape[1:]),
        num_repeat=config.model.lact.num_repeat,
        chunk_frames=k,
        sampling=fm.timestep_sampling,
        logit_mean=fm.logit_mean,
        logit_std=fm.logit_std,
        caption_dropout=fm.caption_dropout,
    )
    device = latents.device
    t_raw, noise, drop = t_raw.to(device), noise.to(device), drop.to(device)
    empty = models.empty_prompt_embeds.to(device, prompt_embeds.dtype)
    prompt_embeds = torch.where(drop[:, None, None], empty, prompt_embeds)  # caption dropout, for CFG
    weights = chunk_loss_weights(t_raw, fm.loss_weighting, fm.logit_mean, fm.logit_std)  # at the unshifted t
    t = shift_timesteps(t_raw, shift)
    offset = draw_position_offset(positions[0], config.train.seed, config.train.position_offset_max)
    return teacher_forcing_loss(transformer, latents, prompt_embeds, t, noise, k, weights, dtype, offset)


def check_finite(value: torch.Tensor, what: str, step: int, output_dir) -> None:
    if not torch.isfinite(value).all():
        found = checkpointing.list_checkpoints(output_dir)
        last = f"the last checkpoint, {found[-1][1]}, is untouched" if found else "no checkpoint was written"
        raise NonFiniteLossError(
            f"Non-finite {what} ({value.tolist()}) at step {step}: stopping. {last}. Lower the learning rate, "
            "check the data (a NaN in a latent?), or resume from the checkpoint with other settings."
        )


def tracker_logs(record: dict) -> dict:
    """A step's record as tracker scalars: loss, per-chunk losses, rates, data-wait share, grad norm."""
    logs = {"loss": record["loss"], "data_wait_share": record["data_wait_s"] / record["step_time_s"]}
    logs.update({f"loss_chunk/{i}": v for i, v in enumerate(record["chunk_losses"])})
    logs.update({f"lr/{name}": lr for name, lr in record["lr"].items()})
    if record["grad_norm"] is not None:
        logs["grad_norm"] = record["grad_norm"]
    return logs


class StepTimer:
    """Wall time of named phases within one step (`with timer("data_wait_s"): ...`), and of the step."""

    def __init__(self):
        self.start, self._totals = time.perf_counter(), {"data_wait_s": 0.0, "encode_s": 0.0}

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        yield
        self._totals[name] = self._totals.get(name, 0.0) + time.perf_counter() - start

    def totals(self) -> dict:
        return dict(self._totals)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


class MetricsLog:
    """`metrics.jsonl` (main process, one line per step, flushed) and the trackers."""

    def __init__(self, path: pathlib.Path, accelerator):
        self.accelerator = accelerator
        self.stream = open(path, "a") if accelerator.is_main_process else None

    def write(self, step: int, record: dict) -> None:
        if self.stream is not None:
            self.stream.write(json.dumps({"step": step, **record}) + "\n")
            self.stream.flush()

    def log(self, step: int, values: dict) -> None:
        """Scalars to the trackers and to metrics.jsonl."""
        self.accelerator.log(values, step=step)
        self.write(step, values)

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()


@torch.no_grad()
def validation_loss(
    config, accelerator, layout, transformer, models: Models, dataset, dtype, global_step: int
) -> dict:
    """The per-chunk validation report (lact_video.evaluation) on the held-out clips.

    The same numbers as `finetune/validate.py`: fixed noise levels, noise seeded per clip. The clips are
    shared out by data-parallel rank (a sequence-parallel group evaluates each of its clips together, and
    the sum over all processes counts it S times). The main process writes the report files to
    `output_dir/validation/step-<N>/`; the trackers get the per-chunk means.
    """
    copies = layout.sequence_parallel_size

    def clip_at(index):
        item = dataset[index]
        return encode_batch(
            {"pixel_values": item["pixel_values"][None], "text": [item["text"]]}, models, config, accelerator.device
        )

    result = per_chunk_loss(
        transformer,
        clip_at,
        len(dataset),
        config.train.validation_noise_levels,
        seed=config.train.seed,
        dtype=dtype,
        process_index=layout.data_parallel_rank,
        num_processes=layout.data_parallel_size,
        reduce_sum=lambda x: accelerator.reduce(x, "sum") / copies,
    )
    if accelerator.is_main_process:
        folder = pathlib.Path(config.train.output_dir) / "validation" / f"step-{global_step}"
        write_report(
            {f"step {global_step}": result}, folder, title=f"Validation loss per frame chunk, step {global_step}"
        )
    chunk = result.mean_per_chunk.tolist()
    return {"val/loss": sum(chunk) / len(chunk), **{f"val/loss_chunk/{i}": v for i, v in enumerate(chunk)}}


# 7. Export


def export(config: FinetuneConfig, accelerator, prepared: Prepared) -> pathlib.Path:
    export_dir = pathlib.Path(config.train.export_dir or config.train.output_dir)
    use_ema = prepared.ema if config.ema.export_ema else None
    path = export_pipeline(
        accelerator,
        prepared.transformer,
        config.model.pretrained_model_name_or_path,
        export_dir,
        ema=use_ema,
        revision=config.model.revision,
        extra_files={"finetune_config.yaml": to_yaml(config)},
        fuse_lora=config.train.export_fuse_lora,
    )
    logger.info("Exported the %s weights as a diffusers pipeline to %s", "EMA" if use_ema else "raw", path)
    return path


def cli() -> None:
    """The `lact-video-finetune` console script: `main` with its return value dropped (a console script's return
    value is its exit status, so a returned folder would read as a failure). A `ConfigError` exits with
    status 2 and one line on stderr, as argparse does."""
    with exit_on_config_error():
        main()
