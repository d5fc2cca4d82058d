"""Tests of meaning for checkpoints from the authors' code: a minVid state dict built by hand, with their
training YAML, converts into a model that computes what lact-video-spec.md Sec. 3(b) says (rates, momentum
gate, weight norm, Muon, gates), and every option we do not implement is refused by name.

The YAML below is their released `lact_ar_video/minVid/configs/ar/lact_ar_chunk3f_1.3B.yaml`, sequence-parallel
layer, sized for the tiny Wan (dim 24, 2 heads, 2 layers; chunks of 2 latent frames of 2x2 tokens)."""

import copy
import logging
import math

import pytest
import torch
import torch.nn.functional as F
import yaml
from diffusers import WanTransformer3DModel
from safetensors.torch import save_file
from utils import minvid_convert_argv

from lact_video import LaCTWanTransformer3DModel, interleave_teacher_forcing, interleave_timesteps
from lact_video.convert import convert, main, to_minvid_state_dict
from lact_video.errors import ConfigError
from lact_video.layers.rotary import chunk_rotary_emb
from lact_video.minvid_options import (
    LAYER_DEFAULTS,
    MINVID_BASE_LR,
    MODEL_DEFAULTS,
    SP_ONLY,
    UnsupportedMinVidOption,
    minvid_options,
    to_minvid_model_config,
)
from lact_video.state import ForwardMode, LayerState
from lact_video.tiny import TRANSFORMER_CONFIGS

K, HW = 2, 2  # latent frames per chunk, post-patch height = width
T = K * HW * HW  # tokens per chunk: their local_window_size
FW_HEAD_DIM = 12
DIM = TRANSFORMER_CONFIGS["tiny"]["num_attention_heads"] * TRANSFORMER_CONFIGS["tiny"]["attention_head_dim"]  # 24
SP_LAYER = "minVid.models.blocks.ar_lact_swa_repeat_sp.ARFastWeightSwiGLU"


def their_yaml(**layer_options) -> dict:
    layer = dict(
        class_name=SP_LAYER,
        dim=DIM,
        num_heads=TRANSFORMER_CONFIGS["tiny"]["num_attention_heads"],
        qk_norm=True,
        o_norm=True,
        local_window_size=T,
        update_every=2 * T,
        qk_l2_norm=True,
        qkv_silu=False,
        w_init="clean",
        inter_multi=2,
        lr_dim=1,
        fw_head_dim=FW_HEAD_DIM,
        use_moun=False,
        num_moun_iters=5,
        weight_norm=True,
        ttt_scale=1.0,
        learnable_ttt_scale=True,
        ar_window_f=K,
        batch_size=1,
        n_latent_f=3 * K,
        use_momentum=True,
    )
    layer.update(layer_options)
    tiny = TRANSFORMER_CONFIGS["tiny"]
    model_config = dict(
        class_name="minVid.models.wan.wan_base.modules.wan_model_warpper.WanModel",
        model_type="t2v",
        patch_size=list(tiny["patch_size"]),
        in_dim=tiny["in_channels"],
        dim=DIM,
        ffn_dim=tiny["ffn_dim"],
        freq_dim=tiny["freq_dim"],
        text_dim=tiny["text_dim"],
        num_heads=tiny["num_attention_heads"],
        num_layers=tiny["num_layers"],
        out_dim=tiny["out_channels"],
        eps=1e-6,
        text_len=512,
        attn_every_n_layers=100,
        efficient_attn_config=[layer],
    )
    return {
        "model": dict(
            drop_text_prob=0.0,
            ar_window_size=K,
            num_repeat=1,
            logit_normal_weighting=True,
            diffusion_config=dict(shift=3.0, model_config=model_config),
        )
    }


def layer_options(config: dict) -> dict:
    return config["model"]["diffusion_config"]["model_config"]["efficient_attn_config"][0]


@pytest.fixture(scope="module")
def wan(tiny_wan_dir):
    return WanTransformer3DModel.from_pretrained(tiny_wan_dir, subfolder="transformer").eval()


def their_state_dict(wan, momentum=True, gate=True, lr_bias=0.0, seed=0) -> dict:
    """A state dict as their `WanModel` with the SP layer saves it: Wan's original names, and per block the
    memory in their names and layouts, every tensor set here (`lr_proj` weight 0, bias `lr_bias`)."""
    g = torch.Generator().manual_seed(seed)
    heads, dh = DIM // FW_HEAD_DIM, 2 * FW_HEAD_DIM
    sd = to_minvid_state_dict(wan)
    for block in range(2):
        p = f"blocks.{block}.self_attn."
        sd[p + "w0"] = torch.randn(heads, dh, FW_HEAD_DIM, generator=g) / FW_HEAD_DIM**0.5
        sd[p + "w1"] = torch.randn(heads, FW_HEAD_DIM, dh, generator=g) / dh**0.5
        sd[p + "w2"] = torch.randn(heads, dh, FW_HEAD_DIM, generator=g) / FW_HEAD_DIM**0.5
        sd[p + "qk_scale"] = 1 + 0.1 * torch.randn(DIM, 2, generator=g)
        sd[p + "qk_offset"] = 0.1 * torch.randn(DIM, 2, generator=g)
        sd[p + "lr_proj.weight"] = torch.zeros(3 * heads, DIM)
        sd[p + "lr_proj.bias"] = torch.full((3 * heads,), lr_bias)
        sd[p + "output_norm.weight"] = 1 + 0.1 * torch.randn(FW_HEAD_DIM, generator=g)
        if gate:
            sd[p + "ttt_scale_proj.weight"] = 0.1 * torch.randn(1, DIM, generator=g)
            sd[p + "ttt_scale_proj.bias"] = torch.tensor([0.5])
        if momentum:
            sd[p + "momentum_proj.0.weight"] = 0.3 * torch.randn(heads, DIM, generator=g)
            sd[p + "momentum_proj.0.bias"] = torch.tensor([0.4, -0.8])
    return sd


def converted(wan, tiny_wan_dir, tmp_path, state_dict, config, **flags) -> LaCTWanTransformer3DModel:
    tmp_path.mkdir(exist_ok=True)
    save_file({"model." + k: v.contiguous() for k, v in state_dict.items()}, tmp_path / "theirs.safetensors")
    out = convert(tmp_path / "theirs.safetensors", tiny_wan_dir, tmp_path / "out", minvid_config=config, **flags)
    return LaCTWanTransformer3DModel.from_pretrained(out / "transformer").eval()


def chunk_inputs(seed=0):
    """hidden states, queries, keys, values of one chunk: (B=1, S=1, T, C)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 1, T, DIM, generator=g) for _ in range(4)]


def commit(memory, model, state=LayerState(), seed=0):
    """One clean chunk written into `memory`: (new fast weights, carried momentum update)."""
    rotary = chunk_rotary_emb(model.rope, (0,), K, HW, HW)
    _, weights, carried = memory(*chunk_inputs(seed), rotary, ForwardMode.COMMIT, state=state)
    return weights, carried


def test_zero_lr_proj_gives_their_base_rate_for_every_token(wan, tiny_wan_dir, tmp_path):
    model = converted(wan, tiny_wan_dir, tmp_path, their_state_dict(wan), their_yaml())
    x = 3 * torch.randn(4, T, DIM)
    for block in model.blocks:
        rates = block.attn1.memory.rates(x)  # (4, T, 3 * heads): w0, w1, w2 of every head
        torch.testing.assert_close(rates, torch.full_like(rates, MINVID_BASE_LR), rtol=1e-6, atol=0)
    assert model.config.fw_base_lr == MINVID_BASE_LR


def test_export_back_gives_their_raw_bias(wan, tiny_wan_dir, tmp_path):
    theirs = their_state_dict(wan, lr_bias=0.25)
    back = to_minvid_state_dict(converted(wan, tiny_wan_dir, tmp_path, theirs, their_yaml()))
    for block in range(2):
        p = f"blocks.{block}.self_attn."
        for name in ("lr_proj.bias", "lr_proj.weight", "momentum_proj.0.weight", "momentum_proj.0.bias"):
            assert torch.equal(back[p + name], theirs[p + name]), p + name
    # A model that starts here exports their init form: bias 0 for the base rate, not softplus^-1(1e-3).
    fresh = to_minvid_state_dict(LaCTWanTransformer3DModel.from_wan(wan, fw_head_dim=FW_HEAD_DIM))
    assert fresh["blocks.0.self_attn.lr_proj.bias"].eq(0).all()


def test_momentum_gate_is_sigmoid_of_their_projection(wan, tiny_wan_dir, tmp_path):
    """Spec 3(b): dW <- dW + m dW_prev, m = chunk mean of sigmoid(W_m x + b_m), one per head."""
    theirs = their_state_dict(wan)
    model = converted(wan, tiny_wan_dir, tmp_path, theirs, their_yaml())
    memory = model.blocks[1].attn1.memory
    hidden = chunk_inputs()[0][0, 0]  # (T, C)
    w, b = theirs["blocks.1.self_attn.momentum_proj.0.weight"], theirs["blocks.1.self_attn.momentum_proj.0.bias"]
    expected = torch.sigmoid(hidden @ w.T + b).mean(dim=0)  # (heads,)
    assert (expected - expected.mean()).abs().max() > 0.05  # the two heads' gates differ
    with torch.no_grad():
        _, raw = commit(memory, model)  # no previous update: dW itself
        previous = type(raw)(*(torch.ones_like(u) for u in raw))
        _, mixed = commit(memory, model, LayerState(momentum=previous))
    for u_raw, u_mixed in zip(raw, mixed):
        gate = (u_mixed - u_raw).flatten(1)  # = m * 1 for every entry of a head
        torch.testing.assert_close(gate, expected[:, None].expand_as(gate), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("weight_norm", [True, False])
def test_weight_norm_keeps_every_row_at_its_stored_norm(wan, tiny_wan_dir, tmp_path, weight_norm):
    """Spec 3(b): after W <- W + dW, weight norm rescales each row to its norm in the initial (stored) state."""
    theirs = their_state_dict(wan, lr_bias=8.0)  # rate softplus(8 - 6.9) ~ 1.4: updates that change norms
    model = converted(wan, tiny_wan_dir, tmp_path, theirs, their_yaml(weight_norm=weight_norm))
    assert model.config.weight_norm is weight_norm
    memory = model.blocks[0].attn1.memory
    with torch.no_grad():
        first, carried = commit(memory, model)
        second, _ = commit(memory, model, LayerState(fast_weights=first, momentum=carried), seed=1)
    for name, new in zip(("w0", "w1", "w2"), second):
        stored = theirs[f"blocks.0.self_attn.{name}"].norm(dim=-1)  # (heads, rows)
        if weight_norm:
            torch.testing.assert_close(new.norm(dim=-1), stored, rtol=2e-5, atol=0)
        else:
            assert (new.norm(dim=-1) - stored).abs().max() > 1e-2, name


def test_muon_update_is_orthogonalised_in_their_bf16(wan, tiny_wan_dir, tmp_path):
    """use_moun: every dW becomes its Newton-Schulz orthogonalisation: its nonzero singular values near 1."""
    theirs = their_state_dict(wan, momentum=False)
    config = their_yaml(use_moun=True, weight_norm=False, use_momentum=False)
    model = converted(wan, tiny_wan_dir, tmp_path, theirs, config)
    assert model.config.use_muon and model.config.muon_dtype == "bfloat16"
    with torch.no_grad():
        new, _ = commit(model.blocks[0].attn1.memory, model)
    for name, w in zip(("w0", "w1", "w2"), new):
        # dW sums T outer products: rank <= T. Raw, at rate 1e-3, its singular values would be ~1e-3.
        singular = torch.linalg.svdvals(w - theirs[f"blocks.0.self_attn.{name}"])[:, :T]
        assert singular.min() > 0.6 and singular.max() < 1.3, (name, singular)
    # --muon_dtype has no place in their YAML: the flag wins.
    assert converted(wan, tiny_wan_dir, tmp_path / "fp32", theirs, config, muon_dtype="float32").config.muon_dtype == (
        "float32"
    )


@pytest.mark.parametrize("plain_wan", [False, True], ids=["their-checkpoint", "plain-wan-base"])
@pytest.mark.parametrize("ttt_scale", [1.0, 0.25, 0.0])
def test_constant_gate_gives_ttt_scale_for_every_token(wan, tiny_wan_dir, tmp_path, ttt_scale, plain_wan):
    """learnable_ttt_scale: false: their output is ttt_x * ttt_scale + window; no ttt_scale_proj is stored."""
    theirs = to_minvid_state_dict(wan) if plain_wan else their_state_dict(wan, gate=False)
    model = converted(wan, tiny_wan_dir, tmp_path, theirs, their_yaml(learnable_ttt_scale=False, ttt_scale=ttt_scale))
    x = 5 * torch.randn(3, T, DIM)
    for block in model.blocks:
        gate = F.silu(block.attn1.memory.gate_proj(x))
        torch.testing.assert_close(gate, torch.full_like(gate, ttt_scale), rtol=1e-6, atol=1e-7)


def test_zero_gate_gives_window_attention_only(wan, tiny_wan_dir, tmp_path):
    theirs = their_state_dict(wan)
    for block in range(2):
        theirs[f"blocks.{block}.self_attn.ttt_scale_proj.weight"].zero_()
        theirs[f"blocks.{block}.self_attn.ttt_scale_proj.bias"].zero_()
    model = converted(wan, tiny_wan_dir, tmp_path, theirs, their_yaml(kv_cache_size=T // 2))
    assert model.config.window_size == T // 2 and model.config.chunk_frames == K and model.config.num_repeat == 1
    window_only = LaCTWanTransformer3DModel.from_wan(
        wan, lact_blocks=[], fw_head_dim=FW_HEAD_DIM, chunk_frames=K, window_size=T // 2
    ).eval()
    g = torch.Generator().manual_seed(0)
    clean, noisy = torch.randn(1, 16, 3 * K, 4, 4, generator=g), torch.randn(1, 1, 16, 3 * K, 4, 4, generator=g)
    args = (interleave_teacher_forcing(noisy, clean, K), interleave_timesteps(1000 * torch.rand(1, 1, 3, generator=g)))
    text = torch.randn(1, 7, 32, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(model(*args, text).sample, window_only(*args, text).sample, rtol=0, atol=0)


def test_their_layout_converts_and_loads_with_from_pretrained(wan, tiny_wan_dir, tmp_path):
    theirs = their_state_dict(wan)
    (tmp_path / "their.yaml").write_text(yaml.safe_dump(their_yaml(update_every=3 * T)))
    config = their_yaml(update_every=3 * T)
    config["model"]["num_repeat"] = 2
    (tmp_path / "their.yaml").write_text(yaml.safe_dump(config))
    torch.save({"model": {"module." + k: v for k, v in theirs.items()}}, tmp_path / "model.pt")
    out = main(
        minvid_convert_argv(
            tmp_path / "model.pt", tiny_wan_dir, tmp_path / "out", "--minvid_config", str(tmp_path / "their.yaml")
        )
    )
    model = LaCTWanTransformer3DModel.from_pretrained(out / "transformer")
    lact = {k: model.config[k] for k in ("chunk_frames", "num_repeat", "window_size", "fw_head_dim", "use_momentum")}
    assert lact == dict(chunk_frames=K, num_repeat=2, window_size=None, fw_head_dim=FW_HEAD_DIM, use_momentum=True)
    back = to_minvid_state_dict(model)
    assert back.keys() == theirs.keys()
    for name, value in theirs.items():
        assert torch.equal(back[name], value), name


def test_export_back_writes_the_options_of_their_yaml(wan, tiny_wan_dir, tmp_path):
    """`to_minvid_model_config` gives their YAML's options (the literal above) and maps back to the same model."""
    model = converted(wan, tiny_wan_dir, tmp_path, their_state_dict(wan), their_yaml(kv_cache_size=T // 2))
    theirs = to_minvid_model_config(dict(model.config), tokens_per_latent_frame=HW * HW)
    expected = their_yaml(kv_cache_size=T // 2)["model"]["diffusion_config"]["model_config"]
    layer, expected_layer = theirs.pop("efficient_attn_config")[0], expected.pop("efficient_attn_config")[0]
    expected_layer = {**LAYER_DEFAULTS, **SP_ONLY, **expected_layer}  # their YAML leaves some at the default
    assert {k: expected_layer[k] for k in layer} == layer
    expected = {**MODEL_DEFAULTS, **expected, "attn_every_n_layers": theirs["attn_every_n_layers"]}
    assert {k: expected[k] for k in theirs} == theirs
    back = minvid_options({**theirs, "efficient_attn_config": [layer]}, dict(wan.config)).settings
    assert back == {k: model.config[k] for k in back}
    with pytest.raises(UnsupportedMinVidOption, match=r"lact_blocks: \[1\]"):
        to_minvid_model_config({**model.config, "lact_blocks": [1]})
    with pytest.raises(UnsupportedMinVidOption, match="fw_retention_decay: 0.3 has no minVid form"):
        to_minvid_model_config({**model.config, "fw_retention_decay": 0.3})


def test_without_a_yaml_the_assumed_options_are_named(wan, tiny_wan_dir, tmp_path, caplog):
    save_file(their_state_dict(wan), tmp_path / "theirs.safetensors")
    with caplog.at_level(logging.INFO, logger="lact_video.convert"):
        main(
            minvid_convert_argv(tmp_path / "theirs.safetensors", tiny_wan_dir, tmp_path / "out", "--chunk_frames", "2")
        )
    for assumed in (
        "No --minvid_config",
        "qk_l2_norm=True",
        "learnable_ttt_scale=True",
        "chunk_frames=2",
        "--minvid_config their.yaml",
    ):
        assert assumed in caplog.text, assumed


def _set(path: str, value):
    """An edit of their YAML: `path` is a layer option, or `model.X` / `model_config.X`."""

    def edit(config):
        where, _, name = path.rpartition(".")
        target = {
            "": layer_options(config),
            "model": config["model"],
            "model_config": config["model"]["diffusion_config"]["model_config"],
        }[where]
        target[name] = value

    return edit


REFUSED = {  # an edit of their YAML -> words the error must contain (option and value)
    "qk_l2_norm": (_set("qk_l2_norm", False), "qk_l2_norm: False"),
    "qkv_silu": (_set("qkv_silu", True), "qkv_silu: True"),
    "o_norm": (_set("o_norm", False), "o_norm: False"),
    "num_moun_iters": (_set("num_moun_iters", 3), "num_moun_iters: 3"),
    "lr_dim": (_set("lr_dim", 2), "lr_dim: 2"),
    "lr_parameterization": (_set("lr_parameterization", "linear"), "lr_parameterization: 'linear'"),
    "w_init": (_set("w_init", "orthogonal"), "w_init: 'orthogonal'"),
    "no_time_rope": (_set("no_time_rope", True), "no_time_rope: True"),
    "qk_norm": (_set("qk_norm", False), "qk_norm: False"),
    "eps": (_set("eps", 1e-5), "eps: 1e-05"),
    "ttt_scale": (lambda c: (_set("learnable_ttt_scale", False)(c), _set("ttt_scale", -0.5)(c)), "ttt_scale: -0.5"),
    "kv_cache_size": (_set("kv_cache_size", T + 1), f"kv_cache_size: {T + 1}"),
    "kv_cache_size-0": (_set("kv_cache_size", 0), "kv_cache_size: 0"),
    "update_every": (_set("update_every", 3 * T // 2), f"update_every: {3 * T // 2}"),
    "update_every-no-noise": (_set("update_every", T), f"update_every: {T}"),
    "local_window_size": (_set("local_window_size", 7), "local_window_size: 7"),
    "dim": (_set("dim", 48), "dim: 48"),
    "num_heads": (_set("num_heads", 4), "num_heads: 4"),
    "class_name": (_set("class_name", "minVid.models.blocks.other.Layer"), "class_name: 'minVid.models.blocks.other"),
    "unknown-layer-option": (_set("use_swa", True), "['use_swa'] are not options of"),
    "sp-only-option": (
        lambda c: (_set("class_name", SP_LAYER.replace("_sp", ""))(c), _set("use_momentum", False)(c)),
        "['use_momentum'] are not options of minVid.models.blocks.ar_lact_swa_repeat.ARFastWeightSwiGLU",
    ),
    "attn_every_n_layers-1": (_set("model_config.attn_every_n_layers", 1), "attn_every_n_layers: 1"),
    "attn_every_n_layers-2": (_set("model_config.attn_every_n_layers", 2), "makes blocks [1] plain full-attention"),
    "attn_every_n_layers-0": (_set("model_config.attn_every_n_layers", 0), "attn_every_n_layers: 0"),
    "model_type": (_set("model_config.model_type", "i2v"), "model_type: 'i2v'"),
    "num_layers": (_set("model_config.num_layers", 30), "num_layers: 30"),
    "ffn_dim": (_set("model_config.ffn_dim", 8960), "ffn_dim: 8960"),
    "patch_size": (_set("model_config.patch_size", [1, 1, 1]), "patch_size: [1, 1, 1]"),
    "cross_attn_norm": (_set("model_config.cross_attn_norm", False), "cross_attn_norm: False"),
    "mixed-layers": (
        lambda c: c["model"]["diffusion_config"]["model_config"]["efficient_attn_config"].append(
            {**layer_options(c), "fw_head_dim": 8}
        ),
        "efficient_attn_config: 'a list of 2 different layer configs'",
    ),
    "model.num_repeat": (_set("model.num_repeat", 2), "model.num_repeat: 2"),
    "model.ar_window_size": (_set("model.ar_window_size", 3), "model.ar_window_size: 3"),
}


@pytest.mark.parametrize("edit,named", REFUSED.values(), ids=REFUSED.keys())
def test_every_unsupported_option_is_refused_by_name(wan, tiny_wan_dir, tmp_path, edit, named):
    config = copy.deepcopy(their_yaml())
    edit(config)
    (tmp_path / "their.yaml").write_text(yaml.safe_dump(config))
    save_file(their_state_dict(wan), tmp_path / "theirs.safetensors")
    argv = minvid_convert_argv(tmp_path / "theirs.safetensors", tiny_wan_dir, tmp_path / "out")
    with pytest.raises(UnsupportedMinVidOption) as error:
        main([*argv, "--minvid_config", str(tmp_path / "their.yaml")])
    assert named in str(error.value)
    assert not (tmp_path / "out").exists()  # nothing written


def test_yaml_and_tensors_or_flags_must_agree(wan, tiny_wan_dir, tmp_path):
    theirs = their_state_dict(wan)
    with pytest.raises(ConfigError, match=r"'fw_head_dim': \(8, 12\)"):
        converted(wan, tiny_wan_dir, tmp_path, theirs, their_yaml(fw_head_dim=8))
    with pytest.raises(ConfigError, match=r"'use_momentum': \(False, True\)"):
        converted(wan, tiny_wan_dir, tmp_path, theirs, their_yaml(use_momentum=False))
    with pytest.raises(ConfigError, match=r"Flags disagree with --minvid_config.*'chunk_frames': \(3, 2\)"):
        converted(wan, tiny_wan_dir, tmp_path, theirs, their_yaml(), chunk_frames=3)


def test_output_dir_is_not_overwritten_without_the_flag(wan, tiny_wan_dir, tmp_path, caplog):
    save_file(their_state_dict(wan), tmp_path / "theirs.safetensors")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    argv = minvid_convert_argv(tmp_path / "theirs.safetensors", tiny_wan_dir, tmp_path / "out", "--chunk_frames", "2")
    with pytest.raises(ConfigError, match="--output_dir .*out is not empty: pass --overwrite"):
        main(argv)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]
    with caplog.at_level(logging.INFO, logger="lact_video.convert"):
        main([*argv, "--overwrite", "--use_muon", "--muon_dtype", "float32"])
    wrote = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("Wrote "))
    assert "muon_dtype=float32" in wrote and "<" not in wrote  # values, not enum reprs


@pytest.mark.parametrize("problem", ["missing_checkpoint", "unsupported_option"])
def test_command_line_refusal_is_one_line_with_status_2(wan, tiny_wan_dir, tmp_path, problem):
    import subprocess
    import sys

    checkpoint = tmp_path / "theirs.safetensors"
    argv = minvid_convert_argv(checkpoint, tiny_wan_dir, tmp_path / "out")
    if problem == "unsupported_option":
        save_file(their_state_dict(wan), checkpoint)
        config = their_yaml()
        _set("model.ar_window_size", 3)(config)
        (tmp_path / "their.yaml").write_text(yaml.safe_dump(config))
        argv += ["--minvid_config", str(tmp_path / "their.yaml")]
    done = subprocess.run([sys.executable, "-m", "lact_video.convert", *argv], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convert.py: error: ")
    assert ("no such file" if problem == "missing_checkpoint" else "model.ar_window_size: 3") in lines[0]
    assert not (tmp_path / "out").exists()


def test_constant_gate_bias_is_exact_for_the_released_value():
    from lact_video.minvid_options import constant_gate_bias

    b = constant_gate_bias(1.0)
    assert b * (1 / (1 + math.exp(-b))) == pytest.approx(1.0, abs=1e-12)


def test_w_init_matters_only_for_fresh_fast_weights(wan, tiny_wan_dir, tmp_path):
    """w_init sets their initial fast weights: a checkpoint brings its own, a plain Wan base gets ours ('clean')."""
    config = their_yaml(w_init="identity")
    assert converted(wan, tiny_wan_dir, tmp_path / "ckpt", their_state_dict(wan), config).config.fw_head_dim == 12
    with pytest.raises(UnsupportedMinVidOption, match="w_init: 'identity'"):
        converted(wan, tiny_wan_dir, tmp_path / "base", to_minvid_state_dict(wan), config)
