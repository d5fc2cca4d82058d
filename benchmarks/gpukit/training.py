"""Section 2, training: one teacher-forcing step of the 1.3B model through the trainer's own functions.

`lact_video.training.trainer`'s `make_accelerator`, `make_optimizer` and `prepare` set up accelerate (bf16,
gradient checkpointing, AdamW in the recipe's two groups), and each step is `teacher_forcing_loss`, backward,
clipping, the optimizer and the schedule, as `micro_step` does them (the data pipeline and the EMA are left
out: random latents stand in for the VAE's). The plain step runs in this process; the ZeRO-3 step runs in
an `accelerate launch --use_deepspeed` child (`zero3_worker.py`), one process, configs/deepspeed/zero3.json.

Figures: the best step time of the timed steps, tokens per second (the interleaved sequence's tokens: 7 noisy
+ 6 clean chunks of 4680 = 60840 at the real size), peak memory, and MFU from `flops.train_step_flops`.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile

import torch

from lact_video.models.lact_config import Variant
from lact_video.training import trainer
from lact_video.training.config import FinetuneConfig, lact_config
from lact_video.training.flow_matching import teacher_forcing_loss
from lact_video.training.trainable import set_trainable

from .build import build_wan, lact_from_wan
from .flops import train_step_flops
from .report import PeakMemory, timed

REPO = pathlib.Path(__file__).resolve().parents[2]
# Dense bf16 tensor-core peaks from the vendors' datasheets (FLOP/s), matched against the GPU's name.
DATASHEET_BF16_FLOPS = {"H200": 989.4e12, "H100 PCIe": 756e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362e12}


def datasheet_peak(gpu_name: str | None) -> float | None:
    for key, flops in DATASHEET_BF16_FLOPS.items():  # "H100 PCIe" is listed before "H100"
        if gpu_name and key in gpu_name:
            return flops
    return None


def finetune_config(sizes, variant: Variant, output_dir: str) -> FinetuneConfig:
    """The 1.3B recipe's settings that a step depends on, as the trainer's typed config."""
    config = FinetuneConfig()
    config.model.pretrained_model_name_or_path = "random-weights"  # never loaded: the model is built here
    config.model.variant = variant
    config.model.lact.fw_head_dim = sizes.fw_head_dim
    config.data.height, config.data.width = sizes.height, sizes.width
    config.data.num_frames = 4 * sizes.train_chunks * sizes.chunk_frames - 3
    config.data.chunk_frames = sizes.chunk_frames
    config.data.max_sequence_length = sizes.text_tokens
    config.train.output_dir = output_dir
    config.train.gradient_checkpointing = True
    config.train.mixed_precision = "bf16"
    config.train.report_to = "none"
    config.ema.use_ema = False
    return config


def measure_step(sizes, variant: Variant, output_dir: str) -> tuple[dict, dict]:
    """Build, prepare and time `sizes.train_steps` steps after `sizes.train_warmup` on accelerate's device;
    returns (shapes, figures)."""
    config = finetune_config(sizes, variant, output_dir)
    accelerator = trainer.make_accelerator(config)
    device = accelerator.device
    # Under DeepSpeed bf16 the trainer loads the weights in bf16 (`input_dtype`); otherwise fp32 under autocast.
    dtype = trainer.input_dtype(accelerator)
    wan = build_wan(sizes.model, device, dtype)
    model = lact_from_wan(wan, **lact_config(config))
    del wan
    model.enable_gradient_checkpointing()
    model.train()
    set_trainable(model, config.model.trainable)
    optimizer, lr_scheduler = trainer.make_optimizer(config, model)
    prepared = trainer.prepare(config, accelerator, model, optimizer, lr_scheduler)
    params = trainer.trainable_parameters(accelerator, prepared.transformer)

    k, n = sizes.chunk_frames, sizes.train_chunks
    h, w = sizes.latent
    channels, text_dim = sizes.model["in_channels"], sizes.model["text_dim"]
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, channels, n * k, h, w, generator=g).to(device)
    noise = torch.randn(1, 1, channels, n * k, h, w, generator=g).to(device)
    prompt_embeds = torch.randn(1, sizes.text_tokens, text_dim, generator=g).to(device)
    t = torch.rand(1, 1, n, generator=g).to(device)

    def step():
        loss, _ = teacher_forcing_loss(prepared.transformer, latents, prompt_embeds, t, noise, k, None, dtype)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, config.optimizer.max_grad_norm)
        prepared.optimizer.step()
        prepared.lr_scheduler.step()
        prepared.optimizer.zero_grad(set_to_none=True)
        return loss.detach().float().item()

    for _ in range(sizes.train_warmup):
        step()
    times, losses = [], []
    with PeakMemory(device) as peak:
        for _ in range(sizes.train_steps):
            seconds, loss = timed(step, device)
            times.append(seconds)
            losses.append(loss)
    tokens_per_chunk = sizes.tokens_per_chunk()
    sequence_tokens = (2 * n - 1) * tokens_per_chunk
    flops = train_step_flops(
        dict(model.config), num_chunks=n, tokens_per_chunk=tokens_per_chunk, text_tokens=sizes.text_tokens
    )
    step_s = min(times)
    figures = {
        "step_s": step_s,
        "tokens_per_s": sequence_tokens / step_s,
        "model_tflops_per_step": flops / 1e12,
        "achieved_tflops": flops / step_s / 1e12,
        "loss": losses[-1],
    }
    if peak.gib is not None:
        figures["peak_memory_gib"] = peak.gib
    shapes = {
        "variant": variant.value,
        "latent": [1, channels, n * k, h, w],
        "sequence_tokens": sequence_tokens,
        "tokens_per_chunk": tokens_per_chunk,
        "text_tokens": sizes.text_tokens,
        "parameters": trainer.full_numel(model.parameters()),  # whole also when ZeRO-3 partitioned them
        "distributed_type": str(accelerator.distributed_type),
        "mixed_precision": accelerator.mixed_precision,
        "gradient_checkpointing": True,
        "timed_steps": len(times),
    }
    accelerator.free_memory()
    return shapes, figures


def add_mfu(section, prefix: str, figures: dict, measured_matmul_flops: float | None, gpu: str | None) -> None:
    flops_per_s = figures["achieved_tflops"] * 1e12
    peak = datasheet_peak(gpu)
    if peak is not None:
        section.figure(f"{prefix}mfu", flops_per_s / peak)
    else:
        section.record["errors"][f"{prefix}mfu"] = f"not measured: no datasheet peak for {gpu!r}"
    if measured_matmul_flops:
        section.figure(f"{prefix}mfu_vs_measured_matmul", flops_per_s / measured_matmul_flops)


def run_plain(section, sizes, measured_matmul_flops, gpu) -> None:
    """Plain (one process, no DeepSpeed) steps of LaCT and of the full block-causal baseline, on accelerate's device."""
    with tempfile.TemporaryDirectory() as output_dir:
        shapes, figures = measure_step(sizes, Variant.lact, output_dir)
        section.shapes(lact=shapes)
        section.figures(**figures)
        add_mfu(section, "", figures, measured_matmul_flops, gpu)
        with section.optional("full_causal"):
            shapes, full = measure_step(sizes, Variant.full_causal, output_dir)
            section.shapes(full_causal=shapes)
            section.figures(**{f"full_causal_{k}": v for k, v in full.items()})
            section.figure("full_causal_over_lact_step_time", full["step_s"] / figures["step_s"])


def run_zero3(section, sizes, device, measured_matmul_flops, gpu, budget) -> None:
    """The same LaCT step under DeepSpeed ZeRO-3, launched by `accelerate launch` (one process)."""
    ds_config = REPO / "configs" / "deepspeed" / ("zero3.json" if device.type == "cuda" else "zero3_cpu.json")
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "zero3.json"
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--use_deepspeed",
            "--deepspeed_config_file", str(ds_config), "--num_processes", "1", "--num_machines", "1",
            "--dynamo_backend", "no", str(pathlib.Path(__file__).with_name("zero3_worker.py")),
            "--sizes", sizes.name, "--json", str(out), "--output_dir", tmp,
        ]  # fmt: skip
        paths = [str(REPO), str(REPO / "benchmarks"), os.environ.get("PYTHONPATH", "")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "PYTHONUNBUFFERED": "1"}
        section.shapes(zero3_command=" ".join(command[1:]))
        timeout_s = min(600.0, max(60.0, budget.remaining()))  # a hung launch must not eat the whole lease
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
        result = json.loads(out.read_text()) if out.is_file() else {}
    if "figures" not in result:
        log = (done.stdout + done.stderr)[-3000:]
        raise RuntimeError(
            f"the ZeRO-3 launch wrote no figures (exit code {done.returncode}): {result.get('error')}\n{log}"
        )
    section.shapes(**result["shapes"])
    section.figures(**result["figures"])
    add_mfu(section, "", result["figures"], measured_matmul_flops, gpu)
    if done.returncode != 0:  # all work done, then a failure in teardown (platform notes: gloo, 1 in 27)
        section.record["errors"]["teardown"] = f"exit code {done.returncode}: {(done.stderr or '')[-500:]}"
