"""scripts/estimate_memory.py on the tiny recipe: DeepSpeed's model-state estimate and a meta-device training step."""

import pathlib
import runpy

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_estimate_on_the_tiny_recipe():
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    from lact_video import LaCTWanTransformer3DModel
    from lact_video.tiny import TRANSFORMER_CONFIGS

    estimate = runpy.run_path(str(REPO / "scripts" / "estimate_memory.py"), run_name="estimate_memory")["main"]
    result = estimate(["--config", str(REPO / "configs" / "tiny.yaml"), "--base_config", "tiny",
                       "--num_nodes", "2", "--gpus_per_node", "4", "--sequence_parallel_size", "1", "2"])  # fmt: skip
    lact = {"chunk_frames": 2, "fw_head_dim": 12, "fw_mlp_ratio": 2, "num_repeat": 1}
    model = LaCTWanTransformer3DModel(**TRANSFORMER_CONFIGS["tiny"], **lact)
    total = sum(p.numel() for p in model.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    states = result["model_states"]
    assert (states["total_params"], states["largest_layer_params"]) == (total, largest)
    # no offload: 18 bytes per weight (bf16 weight and gradient, fp32 master and 2 AdamW moments) over 8 GPUs,
    # plus the largest layer gathered in fp32
    assert states["none"]["gpu_bytes"] == 4 * largest + int(18 * total / 8)
    assert states["none"]["gpu_bytes"] == estimate_zero3_model_states_mem_needs(total, largest, 4, 2, False, False)[1]
    one, two = result["activations"][1], result["activations"][2]
    # 32x32 pixels = 4x4 latents = 2x2 tokens per frame, 2 frames per chunk; 2 chunks = 3 segments
    assert (one["tokens_per_segment"], two["tokens_per_segment"], one["segments"]) == (8, 4, 3)
    assert 0 < two["no_checkpointing_bytes"] < one["no_checkpointing_bytes"]
    assert 0 < two["checkpointing_bytes"] < one["checkpointing_bytes"]
