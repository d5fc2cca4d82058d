"""One training micro-step through the trainer's own pieces, then the loss and every parameter's full gradient.

    accelerate launch --config_file configs/accelerate/zero3_cpu_2proc.yaml tests/sp_gradients.py \\
        --config configs/tiny.yaml ... train.sequence_parallel_size=2
    python tests/sp_gradients.py --config configs/tiny.yaml ...      # one process, no DeepSpeed

Writes `train.output_dir/gradients.pt` (main process): {"loss": the logged (process-mean) loss, "grads":
{name: full gradient, float32}} of the model with its memory opened (`lact_video.testing.open_memory`) after `trainer.forward_backward` of the first micro-batch, before any optimizer
step. Under ZeRO-3 the gradients are read with `deepspeed.utils.safe_get_full_grad` (collective: every rank calls
it for every parameter).
"""

import contextlib
import pathlib

import torch

from lact_video.testing import open_memory
from lact_video.training import trainer
from lact_video.training.distributed import parallel_layout
from lact_video.training.trainable import set_trainable


def full_grad(param: torch.nn.Parameter) -> torch.Tensor:
    if hasattr(param, "ds_tensor"):
        from deepspeed.utils import safe_get_full_grad

        return safe_get_full_grad(param)
    return param.grad if param.grad is not None else torch.zeros_like(param)  # as ZeRO-3 reports an unused one


def gathered(model: torch.nn.Module):
    """Every parameter whole for the block (rank 0's edits kept) when ZeRO-3 partitioned them, else nothing."""
    params = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if not params:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0)


def main(argv=None) -> None:
    config = trainer.load_config(argv)
    accelerator = trainer.make_accelerator(config)
    layout = parallel_layout(accelerator, config.train.sequence_parallel_size)
    datasets = trainer.make_datasets(config)
    models = trainer.load_models(config, accelerator, encode_on_the_fly=config.data.cache_dir is None)
    # At initialisation the memory's gate is 0 and its parameters get no gradient: open it (the same on every rank).
    # Under ZeRO-3 the trainer built the model partitioned (`zero_loading`): open it gathered, rank 0's values kept.
    noise = dict.fromkeys(["lr_proj.weight", "gate_proj.weight", "qk_scale", "qk_offset"], 0.3)
    with gathered(models.transformer):
        open_memory(
            models.transformer, generator=torch.Generator().manual_seed(0), noise=noise, rate=0.3, momentum_bias=1.0
        )
    set_trainable(models.transformer, config.model.trainable, config.model.lora)
    if layout.group is not None:
        trainer.enable_sequence_parallel(models.transformer, layout.group)
    optimizer, lr_scheduler = trainer.make_optimizer(config, models.transformer)
    prepared = trainer.prepare(config, accelerator, models.transformer, optimizer, lr_scheduler)
    settings = trainer.StepSettings.of_run(config, accelerator, layout, prepared.transformer)
    if hasattr(prepared.transformer, "step"):
        # accelerate's DeepSpeed backward also steps the engine (DeepSpeedEngineWrapper.backward: clipping, the
        # optimizer, zero_grad); stubbed, so that the gradients are read as the backward left them.
        prepared.transformer.step = lambda *args, **kwargs: None
    batch = next(iter(trainer.make_loader(config, layout, datasets.train, start_micro_batch=0)))
    reduced = trainer.forward_backward(
        config, accelerator, prepared.transformer, models, settings, batch, trainer.StepTimer(), step=1
    )
    model = accelerator.unwrap_model(prepared.transformer)
    grads = {name: full_grad(p) for name, p in model.named_parameters() if p.requires_grad}
    if accelerator.is_main_process:
        grads = {name: g.detach().float().cpu() for name, g in grads.items()}
        out = pathlib.Path(config.train.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        torch.save({"loss": reduced[0].item(), "grads": grads}, out / "gradients.pt")
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main()
