"""Memory per GPU of a finetuning recipe, computed rather than guessed: model states and activations.

    python scripts/estimate_memory.py --config configs/wan2.1-t2v-14b-lact-165f.yaml --num_nodes 2 --gpus_per_node 8
    python scripts/estimate_memory.py --config configs/tiny.yaml --base_config tiny     # seconds, for the tests

- Model states (bf16 weights, their gradients, fp32 master weights and AdamW moments, all weights counted as
  trainable): DeepSpeed's own ZeRO-3 estimator (`estimate_zero3_model_states_mem_needs`, the formula behind
  `estimate_zero3_model_states_mem_needs_all_cold`), fed the LaCT model's parameter counts read on the meta device.
  It counts every weight as trained; the recipes train the LaCT layers only, so it is an upper bound.
- Activations: one teacher-forcing training step (`flow_matching.teacher_forcing_loss`, forward and backward) of the
  real config on the meta device, adding up every tensor autograd saves for the backward pass
  (`torch.autograd.graph.saved_tensors_hooks`, each tensor object once, parameters left out; attention saved as a
  GPU's memory-efficient kernel saves it, not as the attention matrix), at the tokens one
  rank holds: T/S tokens of every segment at sequence-parallel size S (Ulysses: attention then runs on all T tokens
  for H/S heads, the same number of elements). With gradient checkpointing, each block's inputs are kept (the
  checkpoint holds them; counted from the blocks' inputs) and one block's saved tensors come back during its
  recompute (the largest block of the run without checkpointing).
Not counted: the all-to-all buffers, the allocator's slack, CUDA/NCCL workspaces, and the frozen text encoder and
VAE (not loaded when training from a latent cache). Prints a markdown table (README, "When to use S > 1").
"""

from __future__ import annotations

import argparse
import math
import sys
import unittest.mock

import torch

GIB = 2**30


def largest_divisor_pair(n: int) -> tuple[int, int]:
    """(a, b) with a * b = n and a the largest divisor <= sqrt(n): a token grid of n tokens per frame."""
    a = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return a, n // a


def base_transformer_config(config, name: str | None) -> dict:
    from lact_video.tiny import TRANSFORMER_CONFIGS
    from lact_video.wan_configs import WAN21_T2V_CONFIGS

    known = {**WAN21_T2V_CONFIGS, **TRANSFORMER_CONFIGS}
    if name is None:
        name = config.model.pretrained_model_name_or_path.removeprefix("Wan-AI/").removesuffix("-Diffusers")
    if name not in known:
        sys.exit(f"--base_config: the base transformer config {name!r} is not one of {sorted(known)}; name one.")
    return known[name]


def meta_model(config, wan: dict):
    from lact_video import LaCTWanTransformer3DModel
    from lact_video.training.config import lact_config

    with torch.device("meta"):
        model = LaCTWanTransformer3DModel(**LaCTWanTransformer3DModel.lact_init_kwargs(wan, lact_config(config)))
    # The DeepSpeed engine casts every weight to bf16 (the fp32-kept modules too), so the meta model is all bf16.
    return torch.nn.Module.to(model, torch.bfloat16).train()


def model_states(model, num_nodes: int, gpus_per_node: int) -> dict:
    """DeepSpeed's ZeRO-3 estimate per GPU (and per node's CPU memory) for its three offload settings."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    total = sum(p.numel() for p in model.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    settings = {"none": (False, False), "offload_optimizer": (True, False), "offload_param+optimizer": (True, True)}
    out = {"total_params": total, "largest_layer_params": largest}
    for name, (offload, offload_params) in settings.items():
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            total, largest, gpus_per_node, num_nodes, offload, offload_params, zero_init=True
        )
        out[name] = {"gpu_bytes": gpu, "cpu_bytes_per_node": cpu}
    return out


def memory_efficient_attention(
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
):
    """`F.scaled_dot_product_attention` as a GPU's memory-efficient kernel runs it, also on the meta device (where SDPA
    falls back to its math form, which would save the whole attention matrix): autograd saves q, k, v, the output and
    the log-sum-exp. (B, H, L, D) in and out."""
    bias = None if attn_mask is None else torch.zeros(attn_mask.shape, dtype=query.dtype, device=query.device)
    if bias is not None:
        bias = bias.expand(*query.shape[:-1], key.shape[-2])
    return torch.ops.aten._scaled_dot_product_efficient_attention(
        query, key, value, bias, True, dropout_p, is_causal, scale=scale
    )[0]


def activations(model, config, sequence_parallel_size: int) -> dict:
    """Bytes autograd saves in one training step of this rank's tokens, without and with gradient checkpointing."""
    from lact_video.geometry import latent_size
    from lact_video.training.flow_matching import teacher_forcing_loss

    data, s = config.data, sequence_parallel_size
    p_t, p_h, p_w = model.config.patch_size
    h, w = latent_size(data.height, data.width)
    per_frame = (h // p_h) * (w // p_w)
    if per_frame % s:
        sys.exit(f"sequence parallel size {s} does not divide the {per_frame} tokens of a latent frame.")
    rows, cols = largest_divisor_pair(per_frame // s)  # this rank's tokens of a frame, as a grid
    shape = (1, model.config.in_channels, data.latent_frames, rows * p_h, cols * p_w)
    num_chunks, repeat = data.latent_frames // data.chunk_frames, config.model.lact.num_repeat
    text = (1, data.max_sequence_length, model.config.text_dim)

    def step(checkpointing: bool) -> dict:
        counted, by_block, current = {}, {}, [None]
        inputs = []

        def pack(tensor):
            if not isinstance(tensor, torch.nn.Parameter) and id(tensor) not in counted:
                counted[id(tensor)] = tensor  # kept alive, so that no other tensor takes its id
                size = tensor.numel() * tensor.element_size()
                by_block[current[0]] = by_block.get(current[0], 0) + size
            return tensor

        def enter(index):
            def hook(module, args):
                current[0] = index
                inputs.append(sum(a.numel() * a.element_size() for a in args if isinstance(a, torch.Tensor)))

            return hook

        def leave(module, args, output):
            current[0] = None

        handles = [b.register_forward_pre_hook(enter(i)) for i, b in enumerate(model.blocks)]
        handles += [b.register_forward_hook(leave) for b in model.blocks]
        model.gradient_checkpointing = checkpointing
        if checkpointing:
            model.enable_gradient_checkpointing()
        efficient = unittest.mock.patch.object(
            torch.nn.functional, "scaled_dot_product_attention", memory_efficient_attention
        )
        with efficient:  # the backward pass recomputes checkpointed blocks: the same attention there
            with torch.device("meta"), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                latents = torch.empty(shape)
                loss, _ = teacher_forcing_loss(
                    model, latents, torch.empty(text), torch.rand(1, repeat, num_chunks),
                    torch.empty(1, repeat, *shape[1:]), data.chunk_frames, dtype=torch.bfloat16,
                )  # fmt: skip
            loss.backward()
        for handle in handles:
            handle.remove()
        if checkpointing:
            model.disable_gradient_checkpointing()
        blocks = [v for k, v in by_block.items() if k is not None]
        return {
            "outside_blocks": by_block.get(None, 0),
            "blocks": blocks,
            "block_inputs": sum(inputs[: len(model.blocks)]),
        }

    plain, ckpt = step(False), step(True)
    return {
        "tokens_per_segment": rows * cols * data.chunk_frames,
        "segments": (2 * num_chunks - 1) * repeat if repeat == 1 else None,
        "no_checkpointing_bytes": plain["outside_blocks"] + sum(plain["blocks"]),
        "checkpointing_bytes": ckpt["outside_blocks"]
        + sum(ckpt["blocks"])
        + ckpt["block_inputs"]
        + max(plain["blocks"]),
    }


def main(argv=None) -> dict:
    from lact_video.training.config import load_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="a finetuning recipe (configs/*.yaml)")
    parser.add_argument("--base_config", help="lact_video.wan_configs / lact_video.tiny name (default: the recipe's)")
    parser.add_argument("--num_nodes", type=int, default=1)
    parser.add_argument("--gpus_per_node", type=int, default=8)
    parser.add_argument("--sequence_parallel_size", type=int, nargs="+", help="default: 1 and the recipe's")
    args = parser.parse_args(argv)
    config = load_config(["--config", args.config, "data.cache_dir=unused"])
    model = meta_model(config, base_transformer_config(config, args.base_config))
    sizes = args.sequence_parallel_size or sorted({1, config.train.sequence_parallel_size})
    result = {
        "model_states": model_states(model, args.num_nodes, args.gpus_per_node),
        "activations": {s: activations(model, config, s) for s in sizes},
    }
    print(table(result, args))
    return result


def table(result: dict, args) -> str:
    states = result["model_states"]
    gib = lambda b: f"{b / GIB:.1f} GiB"  # noqa: E731
    lines = [
        f"Per GPU, {args.num_nodes} node(s) x {args.gpus_per_node} GPUs, {states['total_params'] / 1e9:.2f}B "
        f"parameters (scripts/estimate_memory.py --config {args.config}):",
        "",
        "| what | per GPU |",
        "|---|---|",
    ]
    for name in ("none", "offload_optimizer", "offload_param+optimizer"):
        entry = states[name]
        lines.append(
            f"| model states, ZeRO-3, offload {name} (DeepSpeed's estimate; host: {gib(entry['cpu_bytes_per_node'])} "
            f"per node) | {gib(entry['gpu_bytes'])} |"
        )
    for s, act in result["activations"].items():
        lines.append(
            f"| activations, S = {s} ({act['tokens_per_segment']} tokens per segment), no checkpointing | "
            f"{gib(act['no_checkpointing_bytes'])} |"
        )
        lines.append(f"| activations, S = {s}, gradient checkpointing | {gib(act['checkpointing_bytes'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
