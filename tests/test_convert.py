"""`lact_video.convert`: a minVid-layout checkpoint (original Wan names + LaCT keys, wrapper prefixes)
converts into a pipeline folder whose transformer is tensor-for-tensor and output-for-output the model
it came from; a plain Wan checkpoint converts as a base; bad checkpoints fail listing their keys."""

import logging

import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import save_file
from utils import minvid_convert_argv

from lact_video import LaCTWanTransformer3DModel, interleave_teacher_forcing, interleave_timesteps
from lact_video.convert import convert_minvid_state_dict, main, to_minvid_state_dict
from lact_video.layers import FastWeightMemory
from pipelines import LaCTVideoPipeline

K = 2  # chunk_frames
# Not in a state dict: given as flags, and must come back in the config.
FLAGS = dict(chunk_frames=K, window_size=3, num_repeat=2, use_muon=True, muon_dtype="float64", weight_norm=False)
CLI_FLAGS = "--chunk_frames 2 --window_size 3 --num_repeat 2 --use_muon --muon_dtype float64 --no_weight_norm".split()


@pytest.fixture(scope="module")
def wan(tiny_wan_dir):
    return WanTransformer3DModel.from_pretrained(tiny_wan_dir, subfolder="transformer").eval()


@pytest.fixture(scope="module")
def wan_config(wan):
    return dict(wan.config)


@pytest.fixture(scope="module")
def model(wan):
    """Memory in block 1 only, with momentum; every memory parameter random (none at its init value)."""
    torch.manual_seed(0)
    model = LaCTWanTransformer3DModel.from_wan(wan, lact_blocks=[1], use_momentum=True, fw_head_dim=12, **FLAGS)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for memory in model.modules():
            if isinstance(memory, FastWeightMemory):
                for p in memory.parameters():
                    p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


def minvid_layout(model):
    """Our model in the minVid layout, with the wrapper prefixes that training scripts leave behind."""
    out = {}
    for i, (name, value) in enumerate(to_minvid_state_dict(model).items()):
        if name.startswith("blocks.") and i % 2:  # per-block activation checkpointing
            block, rest = name.split(".", 2)[1:]
            name = f"blocks.{block}._checkpoint_wrapped_module.{rest}"
        out[("module._orig_mod." if i % 3 else "model.") + name] = value.clone()
    return out


def public(config):
    return {k: v for k, v in config.items() if not k.startswith("_")}


def clip(b=1, n=3, r=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randn(b, 16, n * K, 4, 4, generator=g)
    noisy = torch.randn(b, r, 16, n * K, 4, 4, generator=g)
    t = 1000 * torch.rand(b, r, n, generator=g)
    return interleave_teacher_forcing(noisy, clean, K), interleave_timesteps(t), torch.randn(b, 7, 32, generator=g)


def test_minvid_layout_has_their_names(model):
    theirs = to_minvid_state_dict(model)
    for name in (
        "patch_embedding.weight",
        "text_embedding.0.weight",
        "time_projection.1.bias",
        "head.head.weight",
        "head.modulation",
        "blocks.0.modulation",
        "blocks.0.norm3.weight",
        "blocks.0.cross_attn.o.weight",
        "blocks.0.ffn.2.bias",
        "blocks.1.self_attn.norm_q.weight",
        "blocks.1.self_attn.w0",
        "blocks.1.self_attn.ttt_scale_proj.weight",
        "blocks.1.self_attn.momentum_proj.0.bias",  # their SP layer: Sequential(Linear, Sigmoid)
    ):
        assert name in theirs, name
    assert not any(k.startswith("blocks.0.self_attn.w") for k in theirs)  # block 0 has no memory


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_round_trip_is_exact(model, tiny_wan_dir, tmp_path, fmt):
    ckpt = tmp_path / f"minvid.{fmt}"
    if fmt == "safetensors":
        save_file(minvid_layout(model), ckpt)
    else:
        torch.save({"model": minvid_layout(model), "step": 7}, ckpt)
    out = main(minvid_convert_argv(ckpt, tiny_wan_dir, tmp_path / "out", *CLI_FLAGS))

    loaded = LaCTVideoPipeline.from_pretrained(out).transformer.eval()
    assert public(loaded.config) == public(model.config)
    expected, actual = model.state_dict(), loaded.state_dict()
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(actual[name], value), name
    with torch.no_grad():
        torch.testing.assert_close(loaded(*clip()).sample, model(*clip()).sample, rtol=0, atol=0)


def test_inferred_config(wan, model, wan_config):
    converted, config = convert_minvid_state_dict(minvid_layout(model), wan_config)
    assert config == {"fw_head_dim": 12, "fw_mlp_ratio": 2, "lact_blocks": [1], "use_momentum": True}
    assert converted.keys() == model.state_dict().keys()
    # Memory everywhere, no momentum, a wider hidden layer: each read off the tensors.
    torch.manual_seed(0)
    other = LaCTWanTransformer3DModel.from_wan(wan, fw_head_dim=8, fw_mlp_ratio=3)
    assert convert_minvid_state_dict(to_minvid_state_dict(other), wan_config)[1] == {
        "fw_head_dim": 8,
        "fw_mlp_ratio": 3,
        "lact_blocks": None,
        "use_momentum": False,
    }


def test_plain_wan_checkpoint_converts_as_a_base(wan, tiny_wan_dir, tmp_path, caplog):
    save_file(to_minvid_state_dict(wan), tmp_path / "wan.safetensors")  # Wan-AI's original names
    assert "blocks.0.self_attn.q.weight" in to_minvid_state_dict(wan)
    with caplog.at_level(logging.INFO, logger="lact_video.convert"):
        argv = minvid_convert_argv(tmp_path / "wan.safetensors", tiny_wan_dir, tmp_path / "out")
        out = main([*argv, "--fw_head_dim", "8", "--lact_blocks", "0"])
    assert "converted it as a plain Wan base" in caplog.text
    loaded = LaCTWanTransformer3DModel.from_pretrained(out / "transformer")
    assert loaded.config.fw_head_dim == 8 and loaded.config.lact_blocks == [0] and loaded.config.chunk_frames == 3
    actual = loaded.state_dict()
    for name, value in wan.state_dict().items():
        assert torch.equal(actual[name], value), name
    assert set(actual) - set(wan.state_dict()) == {k for k in actual if k.startswith("blocks.0.attn1.memory.")}
    assert loaded.blocks[0].attn1.memory.gate_proj.weight.eq(0).all()  # fresh memory: window attention only


BAD = {  # edit of the checkpoint -> what the error must list (in diffusers names)
    "unknown": (
        lambda sd: sd.update({"model.blocks.0.self_attn.extra.weight": torch.ones(3)}),
        "Unknown keys: ['blocks.0.attn1.extra.weight']",
    ),
    "missing": (
        lambda sd: sd.pop("model.blocks.1.self_attn.lr_proj.bias"),
        "Missing keys: ['blocks.1.attn1.memory.lr_proj.bias']",
    ),
    "wrong-shape": (
        lambda sd: sd.update({"model.blocks.0.cross_attn.q.weight": torch.ones(24, 23)}),
        "blocks.0.attn2.to_q.weight: checkpoint (24, 23) vs model (24, 24)",
    ),
    "wrong-memory-shape": (
        lambda sd: sd.update({"model.blocks.1.self_attn.w1": torch.ones(2, 12, 25)}),
        "blocks.1.attn1.memory.w1: checkpoint (2, 12, 25) vs model (2, 12, 24)",
    ),
}


@pytest.mark.parametrize("edit,listed", BAD.values(), ids=BAD.keys())
def test_bad_checkpoints_list_the_keys(model, wan_config, edit, listed):
    sd = {"model." + k: v for k, v in to_minvid_state_dict(model).items()}
    convert_minvid_state_dict(dict(sd), wan_config)  # fine before the edit
    edit(sd)
    with pytest.raises(ValueError) as error:
        convert_minvid_state_dict(sd, wan_config)
    assert listed in str(error.value)


def test_flags_that_contradict_the_tensors_raise(model, tiny_wan_dir, tmp_path):
    save_file(minvid_layout(model), tmp_path / "minvid.safetensors")
    with pytest.raises(ValueError, match=r"'fw_head_dim': \(8, 12\)"):
        main(
            minvid_convert_argv(tmp_path / "minvid.safetensors", tiny_wan_dir, tmp_path / "out", "--fw_head_dim", "8")
        )
