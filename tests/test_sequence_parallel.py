"""Ulysses sequence parallelism (docs/design.md, Sec. 2.5): 2 CPU processes over gloo compute the same output, loss
and summed gradients as one process on the same clip, for the window attention (heads split evenly and unevenly)
and the exact, token-parallel fast-weight memory (momentum, Muon, float64, gradient checkpointing).

One spawn of 2 processes runs every case: each process computes the single-process reference itself, then enables
sequence parallelism on the same model and compares; rank 0 saves the measured errors for the assertions here.
"""

import types

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed import _functional_collectives as funcol
from utils import rel_err

from lact_video import LaCTWanTransformer3DModel, interleave_teacher_forcing, interleave_timesteps
from lact_video.ops.fast_weight import LOCAL_TOKENS
from lact_video.parallel import (
    all_reduce_bytes_per_step,
    all_to_all_bytes_per_step,
    disable_sequence_parallel,
    enable_sequence_parallel,
)
from lact_video.testing import open_memory
from lact_video.tiny import TRANSFORMER_CONFIGS

WORLD = 2
K = 2  # latent frames per chunk; with 4x4 latents, T = 2 * 2 * 2 = 8 tokens, 4 per rank
BASE = dict(TRANSFORMER_CONFIGS["tiny"], chunk_frames=K, num_repeat=2, fw_head_dim=8, window_size=5, use_momentum=True)
# name: (config overrides, dtype, tolerance of the spec)
CASES = {
    "momentum_window5_fp32": ({}, torch.float32, 1e-5),
    "muon_fp32": ({"use_muon": True}, torch.float32, 1e-4),
    "muon_fp64": ({"use_muon": True, "muon_dtype": "float64"}, torch.float64, 1e-5),
    "full_causal_checkpointing_fp32": ({"attention_mode": "full_causal", "window_size": None}, torch.float32, 1e-5),
    "three_heads_uneven_fp32": ({"num_attention_heads": 3, "fw_head_dim": 12}, torch.float32, 1e-5),
    # Chunk 2 of 3 lies past the training length: the attention's and the memory's rotary tables differ there.
    "clamp_past_training_fp32": ({"position_policy": "clamp", "trained_chunks": 2}, torch.float32, 1e-5),
    # Retention decays each rank's copy of the state after the update's token reduction.
    "retention_fp32": ({"fw_retention_decay": 0.3}, torch.float32, 1e-5),
}


def _model(overrides, dtype):
    torch.manual_seed(0)
    model = LaCTWanTransformer3DModel(**{**BASE, **overrides}).to(dtype)
    noise = dict.fromkeys(["lr_proj.weight", "gate_proj.weight", "qk_scale", "qk_offset", "momentum_proj.weight"], 0.3)
    open_memory(model, generator=torch.Generator().manual_seed(1), noise=noise, rate=0.3, momentum_bias=1.0)
    return model


def _inputs(dtype, b=2, n=3, r=2, height=4, width=4, chunk_frames=K):
    g = torch.Generator().manual_seed(2)
    clean = torch.randn(b, 16, n * chunk_frames, height, width, generator=g, dtype=dtype)
    noisy = torch.randn(b, r, 16, n * chunk_frames, height, width, generator=g, dtype=dtype)
    t = 1000 * torch.rand(b, r, n, generator=g, dtype=dtype)
    text = torch.randn(b, 7, 32, generator=g, dtype=dtype)
    weight = torch.randn(noisy.shape, generator=g, dtype=dtype)  # the loss: a fixed projection of the output
    return interleave_teacher_forcing(noisy, clean, chunk_frames), interleave_timesteps(t), text, weight


def _step(model, inputs, after_forward=lambda: None):
    """Output, loss and every parameter's gradient of one teacher-forcing step."""
    sequence, timesteps, text, weight = inputs
    model.zero_grad(set_to_none=True)
    out = model(sequence, timesteps, text).sample
    after_forward()
    loss = (out * weight).sum()
    loss.backward()
    return out.detach(), loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def _count_bytes(group) -> tuple[list[int], list[int]]:
    """Wrap DeepSpeed's `all_to_all_single` and torch's functional `all_reduce` to add up the bytes this rank sends
    to the others, and the bytes it all-reduces in the forward (the backward's all-reduces, of the same sizes, call
    the operator directly)."""
    import deepspeed.comm

    sent, reduced, rank = [0], [0], dist.get_rank(group)
    all_to_all, all_reduce = deepspeed.comm.all_to_all_single, funcol.all_reduce

    def counting_all_to_all(output, tensor, output_split_sizes=None, input_split_sizes=None, **kwargs):
        rows = input_split_sizes or [tensor.shape[0] // dist.get_world_size(group)] * dist.get_world_size(group)
        sent[0] += (tensor.shape[0] - rows[rank]) * tensor[0].numel() * tensor.element_size()
        return all_to_all(output, tensor, output_split_sizes, input_split_sizes, **kwargs)

    def counting_all_reduce(tensor, *args, **kwargs):
        reduced[0] += tensor.numel() * tensor.element_size()
        return all_reduce(tensor, *args, **kwargs)

    deepspeed.comm.all_to_all_single, funcol.all_reduce = counting_all_to_all, counting_all_reduce
    return sent, reduced


def _compare(model, inputs, group):
    """Errors of sequence parallelism against the same model on one process, and between the ranks; the bytes
    all-to-all'd by the busiest rank and all-reduced, measured and as `lact_video.parallel` predicts them."""
    import deepspeed.comm

    reference = _step(model, inputs)
    enable_sequence_parallel(model, group)
    originals = deepspeed.comm.all_to_all_single, funcol.all_reduce
    sent, reduced = _count_bytes(group)
    in_forward = []
    out, loss, grads = _step(model, inputs, lambda: in_forward.append(reduced[0]))
    deepspeed.comm.all_to_all_single, funcol.all_reduce = originals
    ranks_sent = [None] * dist.get_world_size(group)
    dist.all_gather_object(ranks_sent, sent[0], group=group)
    for grad in grads.values():
        dist.all_reduce(grad, group=group)  # each rank holds its tokens' share
    rank0_out = out.clone()
    dist.broadcast(rank0_out, 0, group=group)
    disable_sequence_parallel(model)
    return {
        "after_disable": (_step(model, inputs)[0] - reference[0]).abs().max().item(),
        "output": rel_err(out, reference[0]),
        "loss": rel_err(loss, reference[1]),
        "gradients": max(rel_err(grads[name], ref) for name, ref in reference[2].items()),
        "ranks_differ": (out - rank0_out).abs().max().item(),
        "all_to_all_bytes": (max(ranks_sent), all_to_all_bytes_per_step(model, inputs[0].shape, WORLD)),
        # The backward's all-reduces mirror the forward's; the recompute of checkpointed blocks is counted in reduced.
        "all_reduce_bytes": (reduced[0] + in_forward[0], all_reduce_bytes_per_step(model, inputs[0].shape)),
    }


def _error(call) -> str:
    try:
        call()
    except ValueError as error:
        return str(error)
    return "no error"


def _worker(rank, store, results_path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    group = dist.new_group(list(range(WORLD)))  # a group of its own, as the trainer builds one
    results = {}
    for name, (overrides, dtype, _) in CASES.items():
        model = _model(overrides, dtype)
        if name.startswith("full_causal"):
            model.enable_gradient_checkpointing()
        if name.startswith("three_heads"):
            results["uneven_without_deepspeed_group"] = _error(lambda: enable_sequence_parallel(model, group))
            from deepspeed.utils import groups

            # What the trainer's mpu gives deepspeed.initialize: DeepSpeed's own sequence-parallel group.
            groups.mpu = types.SimpleNamespace(
                get_sequence_parallel_world_size=lambda: WORLD, get_sequence_parallel_rank=lambda: rank
            )
        results[name] = _compare(model, _inputs(dtype), group)

    # Control: without the memory's all-reduce each rank writes its half of every chunk only, and the test sees it.
    model = _model({}, torch.float32)
    inputs = _inputs(torch.float32)
    reference = _step(model, inputs)[0]
    enable_sequence_parallel(model, group)
    for block in model.blocks:
        block.attn1.memory.token_reduction = LOCAL_TOKENS
    results["control_without_all_reduce"] = rel_err(_step(model, inputs)[0], reference)

    # Refusals, raised before any collective, on both ranks alike.
    sequence, timesteps, text, _ = inputs
    results["denoise"] = _error(
        lambda: model(sequence[:, :, :K], timesteps[:, 0], text, "denoise", model.init_state())
    )
    disable_sequence_parallel(model)
    odd = _model({"chunk_frames": 1}, torch.float32)  # T = 1 * 3 * 3 = 9 tokens
    enable_sequence_parallel(odd, group)
    results["odd_tokens"] = _error(lambda: _step(odd, _inputs(torch.float32, height=6, width=6, chunk_frames=1)))
    if rank == 0:
        torch.save(results, results_path)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sequence_parallel")
    mp.spawn(_worker, args=(str(folder / "store"), str(folder / "results.pt")), nprocs=WORLD)
    return torch.load(folder / "results.pt")


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_equal_one_process(results, case):
    tolerance = CASES[case][2]
    measured = results[case]
    assert measured["ranks_differ"] == 0, measured
    assert measured["after_disable"] == 0, measured
    for what in ("output", "loss", "gradients"):
        assert measured[what] <= tolerance, f"{case}: {what} relative error {measured[what]:.3g} > {tolerance:g}"
    for what in ("all_to_all_bytes", "all_reduce_bytes"):
        counted, predicted = measured[what]
        assert counted == predicted > 0, f"{case}: {what} counted {counted}, predicted {predicted}"


def test_memory_without_all_reduce_is_caught(results):
    assert results["control_without_all_reduce"] > 1e-3


def test_refusals(results):
    assert "teacher-forcing training only" in results["denoise"] and "'denoise'" in results["denoise"]
    assert "T=9" in results["odd_tokens"] and "2 does not divide 9" in results["odd_tokens"]
    assert "3 attention heads do not split evenly over 2 ranks" in results["uneven_without_deepspeed_group"]


def test_refuses_a_wrapped_model():
    with pytest.raises(TypeError, match="takes the LaCTWanTransformer3DModel itself; got a Linear"):
        enable_sequence_parallel(torch.nn.Linear(2, 2), group=None)
