"""The authors' minVid training YAML -> our LaCT config: every option of their layer and model, mapped or refused.

A minVid state dict does not say how its layer computes: `qk_l2_norm`, the chunk size, the window, the
update rule... live only in the training YAML (LaCT repo, `lact_ar_video/minVid/configs/ar/*.yaml`). The
converter reads that YAML with `minvid_options` and maps each option onto our `LaCTConfig`, or refuses it
with an `UnsupportedMinVidOption` that names the option, its value and what we support: a converted model
computes what theirs computes, or there is no converted model (README, "Converting the authors' checkpoints";
docs/design.md, Sec. 6.7).

What their code does where lact-video-spec.md is silent (read in a1600012888/LaCT, `lact_ar_video/minVid`):

- `models/blocks/ar_lact_swa_repeat.py` and `..._sp.py` (`ARFastWeightSwiGLU`): the rate is
  `softplus(lr_proj(x) + softplus^-1(0.001))` with `base_lr = 0.001` hard-coded in `__init__` (not an
  option, not in the state dict): our `fw_base_lr` is set to it. Only `lr_parameterization: mamba` exists
  (anything else raises NotImplementedError in their forward). `lr_proj` and `momentum_proj` keep
  PyTorch's default `nn.Linear` init there (ours: zero `lr_proj`); a checkpoint brings its own values.
- `local_window_size` is their chunk length in TOKENS (`mini_batch_size = local_window_size`): the update
  loop and the window attention cut the sequence into pieces of that many tokens. It must be
  `ar_window_f * P` with `P` the tokens per latent frame, 1560 at 480x832: their layer is tied to one
  resolution, ours counts the tokens of each clip. `kv_cache_size` (-1: `local_window_size`) is the number
  of trailing clean tokens a noisy chunk sees: our `window_size`. `update_every` (-1: `2 * local_window_size`)
  is the period of one (noisy copies, clean chunk) group, so `update_every / local_window_size - 1` noisy
  copies: our `num_repeat`.
- Weight norm divides by `norm + 1e-5` (`w / (|w| + 1e-5) * |w_0|`), so a row's norm after an update is its
  initial norm times `|w| / (|w| + 1e-5)`; in inference they take the target norms from the current state,
  not from the initial one. Both differences are below 1e-5 relative for rows of norm ~1.
- `qk_l2_norm` divides by `norm + 1e-5` too (ours: `F.normalize`, `max(norm, 1e-12)`). `qkv_silu` would
  apply silu to the fast q, k, v after the L2 norm (before it if `l2_norm_before_silu: false`, SP layer).
- Momentum exists only in the sequence-parallel layer (`ar_lact_swa_repeat_sp.py`), as
  `momentum_proj = Sequential(Linear(dim, heads), Sigmoid())` (keys `momentum_proj.0.*`), applied before
  Newton-Schulz, with the chunk-mean gate: as the spec.
- Newton-Schulz (`models/blocks/functions.py`, `zeropower_via_newtonschulz5`) always runs in bf16; its
  step count is `num_moun_iters` (ours: 5, fixed). With `use_moun` the converter therefore sets
  `muon_dtype: bfloat16` unless `--muon_dtype` says otherwise.
- `learnable_ttt_scale: false` replaces the gate `silu(ttt_scale_proj(x))` by the constant `ttt_scale`; such
  a checkpoint has no `ttt_scale_proj`. We keep our gate module and set it to weight 0 and bias
  `silu^-1(ttt_scale)`, which gives that constant for every token.
- `models/wan/wan_base/modules/wan_model_warpper.py` (`WanModel`): block `i` is a PLAIN full-attention Wan
  block when `i % attn_every_n_layers == attn_every_n_layers - 1`, a LaCT block otherwise; so LaCT is in
  every block only when `attn_every_n_layers > num_layers` (their YAMLs: 100), and the default 1 makes
  every block plain. A list of layer configs is used round robin (`efficient_attn_config[i % len]`).
- `n_latent_f` (training clip length for their rotary tables) and `batch_size` (a reshape) shape training
  only; the layer's `window_size` is stored and never read.
"""

from __future__ import annotations

import dataclasses
import pathlib

import torch

from .errors import ConfigError
from .models.lact_config import MuonDtype

# `base_lr = 0.001` in ARFastWeightSwiGLU.__init__: the rate at lr_proj = 0, a constant of their layer.
MINVID_BASE_LR = 1e-3
# Their Newton-Schulz step count that ours (`ops/muon.py`, NS_STEPS) implements.
SUPPORTED_NS_STEPS = 5
_LAYER_MODULES = ("minVid.models.blocks.ar_lact_swa_repeat", "minVid.models.blocks.ar_lact_swa_repeat_sp")
LAYER_CLASSES = tuple(f"{m}.ARFastWeightSwiGLU" for m in _LAYER_MODULES)

# ARFastWeightSwiGLU's signature and defaults (ar_lact_swa_repeat.py); the SP layer adds SP_ONLY.
LAYER_DEFAULTS = {
    "dim": None,
    "num_heads": None,
    "window_size": (-1, -1),
    "qk_norm": True,
    "eps": 1e-6,
    "o_norm": True,
    "fw_head_dim": 768,
    "inter_multi": 2,
    "lr_dim": 1,
    "local_window_size": 4680,
    "kv_cache_size": -1,
    "w_init": "clean",
    "lr_parameterization": "mamba",
    "qk_l2_norm": False,
    "qkv_silu": False,
    "use_moun": False,
    "num_moun_iters": 5,
    "no_time_rope": False,
    "weight_norm": True,
    "ttt_scale": 1.0,
    "learnable_ttt_scale": True,
    "batch_size": 1,
    "n_latent_f": 21,
    "ar_window_f": 3,
    "update_every": -1,
}
SP_ONLY = {"use_momentum": False, "l2_norm_before_silu": True}
# WanModel's signature and defaults (wan_model_warpper.py), and the diffusers config key each must equal.
MODEL_DEFAULTS = {
    "model_type": "t2v",
    "patch_size": (1, 2, 2),
    "text_len": 512,
    "in_dim": 16,
    "dim": 2048,
    "ffn_dim": 8192,
    "freq_dim": 256,
    "text_dim": 4096,
    "out_dim": 16,
    "num_heads": 16,
    "num_layers": 32,
    "window_size": (-1, -1),
    "qk_norm": True,
    "cross_attn_norm": True,
    "eps": 1e-6,
    "efficient_attn_config": None,
    "attn_every_n_layers": 1,
}
_DIFFUSERS_NAMES = {
    "in_dim": "in_channels",
    "out_dim": "out_channels",
    "ffn_dim": "ffn_dim",
    "freq_dim": "freq_dim",
    "text_dim": "text_dim",
    "num_heads": "num_attention_heads",
    "num_layers": "num_layers",
    "eps": "eps",
    "cross_attn_norm": "cross_attn_norm",
}
# Options of their flow-matching model (`model.*`) and sampler that train or sample but leave the network
# as it is: listed, not mapped (the finetune recipe is configs/wan2.1-t2v-1.3b-lact.yaml).
TRAINING_ONLY = (
    "drop_text_prob",
    "adjust_timestep_shift",
    "frame_independent_noise",
    "logit_normal_weighting",
    "timestep_shift",
    "timestep_sample_method",
    "denoising_loss_type",
    "num_train_timestep",
    "mixed_precision",
    "sample_timestep_shift",
)
# The options of their released 1.3B YAML (configs/ar/lact_ar_chunk3f_1.3B.yaml) that our model fixes:
# what a conversion without --minvid_config assumes (besides the flags).
ASSUMED_WITHOUT_YAML = {
    "qk_l2_norm": True,
    "qkv_silu": False,
    "o_norm": True,
    "lr_dim": 1,
    "lr_parameterization": "mamba",
    "learnable_ttt_scale": True,
    "num_moun_iters": SUPPORTED_NS_STEPS,
    "no_time_rope": False,
    "attn_every_n_layers": "> num_layers (LaCT in every block)",
    "kv_cache_size": "--window_size (default: the whole chunk)",
    "update_every": "(--num_repeat + 1) * chunk tokens",
    "ar_window_f": "--chunk_frames",
}


class UnsupportedMinVidOption(ConfigError):
    """An option of the authors' YAML that lact-video does not implement (or that contradicts the base)."""


@dataclasses.dataclass
class MinVidOptions:
    """What a minVid YAML means for the converted model.

    Attributes:
        settings: LaCT config keys of `LaCTWanTransformer3DModel`.
        constant_gate: the constant memory gate (`learnable_ttt_scale: false`), else None.
        w_init: their initialisation of the fast weights (matters only for a plain Wan base).
        notes: one line per option that is accepted but leaves no trace in our model.
    """

    settings: dict
    constant_gate: float | None = None
    w_init: str = "clean"
    notes: list[str] = dataclasses.field(default_factory=list)


def load_minvid_yaml(path: str | pathlib.Path) -> dict:
    """Their YAML as a plain dict, parsed by OmegaConf as their `train.py` does (YAML 1.2 numbers: `1e-06`)."""
    try:
        from omegaconf import OmegaConf
    except ImportError as error:  # omegaconf comes with the train extra
        raise ImportError("--minvid_config needs omegaconf: pip install 'lact-video[train]'.") from error
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def _refuse(option: str, value, supported: str) -> UnsupportedMinVidOption:
    return UnsupportedMinVidOption(
        f"minVid option {option}: {value!r} is not supported; lact-video supports {supported}."
    )


def _require(option: str, value, allowed: tuple, why: str) -> None:
    if value not in allowed:
        raise _refuse(option, value, f"{' or '.join(repr(a) for a in allowed)} ({why})")


def _model_config(config: dict) -> dict:
    """`model.diffusion_config.model_config` of a training YAML (or the YAML itself if it is that section)."""
    if "efficient_attn_config" in config or "attn_every_n_layers" in config:
        return config
    try:
        return config["model"]["diffusion_config"]["model_config"]
    except (KeyError, TypeError):
        raise UnsupportedMinVidOption(
            "The minVid YAML has no model.diffusion_config.model_config (the layout of their "
            "configs/ar/lact_ar_chunk3f_1.3B.yaml); pass their training YAML."
        ) from None


def _check_model(model: dict, wan_config: dict) -> None:
    """WanModel options: each must describe the --base Wan (the converter keeps its Wan layers)."""
    unknown = sorted(set(model) - set(MODEL_DEFAULTS) - {"class_name"})
    if unknown:
        raise UnsupportedMinVidOption(f"minVid model_config options {unknown} are not options of their WanModel.")
    opt = {**MODEL_DEFAULTS, **model}
    _require("model_type", opt["model_type"], ("t2v",), "text-to-video only")
    _require("qk_norm", opt["qk_norm"], (True,), "Wan2.1's RMSNorm on queries and keys")
    if tuple(opt["patch_size"]) != tuple(wan_config["patch_size"]):
        raise _refuse("patch_size", opt["patch_size"], f"the --base patch_size {wan_config['patch_size']}")
    dim = wan_config["num_attention_heads"] * wan_config["attention_head_dim"]
    base = {"dim": dim, **{ours: wan_config[theirs] for ours, theirs in _DIFFUSERS_NAMES.items()}}
    for option, value in base.items():
        if opt[option] != value:
            raise _refuse(option, opt[option], f"the --base Wan's value, {value!r}")
    n, layers = opt["attn_every_n_layers"], opt["num_layers"]
    plain = [i for i in range(layers) if n > 0 and i % n == n - 1]
    if n < 1 or plain:
        raise _refuse(
            "attn_every_n_layers",
            n,
            f"values > num_layers={layers} (LaCT in every block, as their YAMLs' 100); this value makes blocks "
            f"{plain or 'all (division by zero in their code)'} plain full-attention Wan blocks, which lact-video "
            "does not build",
        )


def _layer_config(model: dict) -> dict:
    layers = model.get("efficient_attn_config")
    if isinstance(layers, list):
        if any(layer != layers[0] for layer in layers[1:]):
            raise _refuse(
                "efficient_attn_config",
                f"a list of {len(layers)} different layer configs",
                "one config for every block",
            )
        layers = layers[0] if layers else None
    if not isinstance(layers, dict):
        raise UnsupportedMinVidOption("minVid model_config has no efficient_attn_config: no LaCT layer to convert.")
    return layers


def constant_gate_bias(value: float) -> float:
    """The `gate_proj` bias b that, with weight 0, gives the constant gate silu(b) = value: b on silu's increasing branch (b > -1.278), by Newton's method in float64."""
    if value <= -0.2784645:  # silu's minimum
        raise _refuse("ttt_scale", value, "constants > -0.278 (the range of silu, the gate's activation)")
    b = torch.tensor(max(value, 0.0) + 1.3, dtype=torch.float64)  # right of the root; silu is convex there
    for _ in range(100):
        s = torch.sigmoid(b)
        b = b - (b * s - value) / (s * (1 + b * (1 - s)))
    return b.item()


def minvid_options(config: dict, wan_config: dict) -> MinVidOptions:
    """Map their training YAML onto our LaCT config, refusing every value we do not implement.

    Args:
        config: their training YAML as a dict (`load_minvid_yaml`), or its `model_config` section.
        wan_config: the --base Wan transformer config (diffusers keys), which the Wan options must match.

    Raises:
        UnsupportedMinVidOption: naming the option, its value and what lact-video supports.
    """
    model = _model_config(config)
    _check_model(model, wan_config)
    layer = _layer_config(model)
    cls = layer.get("class_name", LAYER_CLASSES[0])
    _require("class_name", cls, LAYER_CLASSES, "their LaCT layers")
    signature = {**LAYER_DEFAULTS, **(SP_ONLY if cls == LAYER_CLASSES[1] else {})}
    unknown = sorted(set(layer) - set(signature) - {"class_name"})
    if unknown:
        raise UnsupportedMinVidOption(f"minVid layer options {unknown} are not options of {cls}.")
    opt = {**signature, **layer}
    dim = wan_config["num_attention_heads"] * wan_config["attention_head_dim"]
    _require("dim", opt["dim"], (dim,), "the --base Wan's model dim")
    _require("num_heads", opt["num_heads"], (wan_config["num_attention_heads"],), "the --base Wan's heads")
    _require("qk_norm", opt["qk_norm"], (True,), "Wan2.1's RMSNorm on queries and keys")
    _require("eps", opt["eps"], (1e-6,), "the eps of our memory's output RMSNorm")
    _require("o_norm", opt["o_norm"], (True,), "the RMSNorm on each fast-weight head's output")
    _require("lr_dim", opt["lr_dim"], (1,), "one rate per head and matrix")
    _require("lr_parameterization", opt["lr_parameterization"], ("mamba",), "softplus(lr_proj(x) + c)")
    _require("qk_l2_norm", opt["qk_l2_norm"], (True,), "L2-normalised fast-weight queries and keys")
    _require("qkv_silu", opt["qkv_silu"], (False,), "no silu on the fast-weight q, k, v")
    _require("no_time_rope", opt["no_time_rope"], (False,), "rotary time positions (theirs raises otherwise)")
    _require("num_moun_iters", opt["num_moun_iters"], (SUPPORTED_NS_STEPS,), "five Newton-Schulz steps")
    _require("w_init", opt["w_init"], ("clean", "identity", "mup"), "their initialisations")
    if not opt["learnable_ttt_scale"] and not isinstance(opt["ttt_scale"], (int, float)):
        raise _refuse("ttt_scale", opt["ttt_scale"], "a number (the constant gate)")

    chunk_frames, chunk_tokens = opt["ar_window_f"], opt["local_window_size"]
    if chunk_frames < 1 or chunk_tokens < 1 or chunk_tokens % chunk_frames:
        raise _refuse(
            "local_window_size",
            chunk_tokens,
            f"the tokens of one chunk: a positive multiple of ar_window_f={chunk_frames} (3 x 1560 at 480x832)",
        )
    window = chunk_tokens if opt["kv_cache_size"] == -1 else opt["kv_cache_size"]
    if not 1 <= window <= chunk_tokens:
        raise _refuse("kv_cache_size", opt["kv_cache_size"], f"-1 or 1..local_window_size={chunk_tokens} tokens")
    period = 2 * chunk_tokens if opt["update_every"] == -1 else opt["update_every"]
    if period % chunk_tokens or period < 2 * chunk_tokens:
        raise _refuse(
            "update_every", opt["update_every"], f"-1 or (num_repeat + 1) * local_window_size={chunk_tokens}"
        )
    num_repeat = period // chunk_tokens - 1
    outer = config.get("model") or {}  # their flow-matching model, if the YAML is the whole file
    for option, value in (("ar_window_size", chunk_frames), ("num_repeat", num_repeat)):
        if option in outer and outer[option] != value:
            raise _refuse(
                f"model.{option}", outer[option], f"the layer's value, {value} (from ar_window_f/update_every)"
            )

    use_muon = bool(opt["use_moun"])
    settings = {
        "chunk_frames": chunk_frames,
        "window_size": None if window == chunk_tokens else window,
        "num_repeat": num_repeat,
        "fw_head_dim": opt["fw_head_dim"] if opt["fw_head_dim"] >= 1 else wan_config["attention_head_dim"],
        "fw_mlp_ratio": opt["inter_multi"],
        "use_muon": use_muon,
        "use_momentum": bool(opt["use_momentum"]) if "use_momentum" in opt else False,
        "weight_norm": bool(opt["weight_norm"]),
        "fw_base_lr": MINVID_BASE_LR,
        "lact_blocks": None,
    }
    if use_muon:
        settings["muon_dtype"] = MuonDtype.bfloat16.value  # their only Newton-Schulz precision
    notes = [
        f"local_window_size={chunk_tokens}: {chunk_tokens // chunk_frames} tokens per latent frame "
        "(1560 = 480x832); their layer works at that size only, ours at any.",
        f"n_latent_f={opt['n_latent_f']}, batch_size={opt['batch_size']}: their training clip shape, not in the model.",
    ]
    if opt["qk_l2_norm"] and opt.get("l2_norm_before_silu") is False:
        notes.append("l2_norm_before_silu=false has no effect without qkv_silu.")
    given = sorted(k for k in TRAINING_ONLY if k in outer)
    if given:
        notes.append(f"training/sampling options {given} are not part of the model (see our finetune recipe).")
    gate = None if opt["learnable_ttt_scale"] else float(opt["ttt_scale"])
    if gate is not None:
        constant_gate_bias(gate)  # refuse now a constant no gate can give
    return MinVidOptions(settings=settings, constant_gate=gate, w_init=opt["w_init"], notes=notes)


def to_minvid_model_config(config: dict, tokens_per_latent_frame: int = 1560) -> dict:
    """Our transformer config (Wan and LaCT keys, e.g. `dict(model.config)`) -> their YAML's
    `model.diffusion_config.model_config`: the inverse of `minvid_options`, for a model exported with
    `convert.to_minvid_state_dict`. Their layer uses the SP class (the only one with momentum; without
    sequence parallelism it computes as the plain one) and the learnable gate, which our gate always is.

    Args:
        tokens_per_latent_frame: P of the resolution their code will run at (their layer fixes it; 1560 =
            480x832): `local_window_size = chunk_frames * P`.

    Raises:
        UnsupportedMinVidOption: for what their code cannot express, naming our key and value.
    """
    num_layers, heads = config["num_layers"], config["num_attention_heads"]
    dim = heads * config["attention_head_dim"]
    if config.get("lact_blocks") not in (None, list(range(num_layers))):
        raise UnsupportedMinVidOption(
            f"lact_blocks: {config['lact_blocks']!r} has no minVid form; their attn_every_n_layers puts LaCT in "
            "every block (or leaves every n-th block plain, which we do not build)."
        )
    for key, value, theirs in (
        ("attention_mode", config.get("attention_mode", "window"), "window"),
        ("fw_base_lr", config.get("fw_base_lr", MINVID_BASE_LR), MINVID_BASE_LR),
        ("fw_retention_decay", config.get("fw_retention_decay", 0.0), 0.0),
    ):
        if value != theirs:
            raise UnsupportedMinVidOption(f"{key}: {value!r} has no minVid form; their layer has {theirs!r} only.")
    chunk_tokens = config["chunk_frames"] * tokens_per_latent_frame
    layer = {
        "class_name": LAYER_CLASSES[1],
        "dim": dim,
        "num_heads": heads,
        "qk_norm": True,
        "eps": config["eps"],
        "o_norm": True,
        "fw_head_dim": config["fw_head_dim"],
        "inter_multi": config["fw_mlp_ratio"],
        "lr_dim": 1,
        "local_window_size": chunk_tokens,
        "kv_cache_size": config.get("window_size") or -1,
        "update_every": (config["num_repeat"] + 1) * chunk_tokens,
        "w_init": "clean",
        "lr_parameterization": "mamba",
        "qk_l2_norm": True,
        "qkv_silu": False,
        "use_moun": config["use_muon"],
        "num_moun_iters": SUPPORTED_NS_STEPS,
        "no_time_rope": False,
        "weight_norm": config["weight_norm"],
        "learnable_ttt_scale": True,
        "ar_window_f": config["chunk_frames"],
        "use_momentum": config["use_momentum"],
    }
    return {
        "model_type": "t2v",
        "patch_size": list(config["patch_size"]),
        "in_dim": config["in_channels"],
        "dim": dim,
        "ffn_dim": config["ffn_dim"],
        "freq_dim": config["freq_dim"],
        "text_dim": config["text_dim"],
        "out_dim": config["out_channels"],
        "num_heads": heads,
        "num_layers": num_layers,
        "eps": config["eps"],
        "cross_attn_norm": config["cross_attn_norm"],
        "attn_every_n_layers": num_layers + 1,  # no plain block: LaCT in every block
        "efficient_attn_config": [layer],
    }
