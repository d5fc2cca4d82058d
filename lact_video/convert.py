"""Convert a LaCT minVid checkpoint into a diffusers folder that `LaCTVideoPipeline` loads.

minVid is the LaCT authors' AR-video training code (LaCT repo, `lact_ar_video/minVid`); its
checkpoints are `.pt` or `.safetensors` state dicts, and its training YAML holds the layer's options.

    python -m lact_video.convert --from minvid CKPT --base WAN_DIFFUSERS_DIR --output_dir OUT \
        --minvid_config THEIR_TRAINING.yaml [--muon_dtype float32]

minVid keeps the ORIGINAL Wan parameter names. The mapping:

- Wrapper prefixes go first: leading `module.`, `model.`, `diffusion_model.`, `_orig_mod.`, and the
  activation-checkpointing/FSDP/compile wrappers (`_checkpoint_wrapped_module.`, ...) anywhere.
- The Wan part (`patch_embedding`, `text_embedding`, `blocks.N.self_attn.q`, `...cross_attn.o`,
  `blocks.N.norm3`, `head.head`, ...) goes through diffusers' own
  `convert_wan_transformer_to_diffusers`, exactly as a single-file Wan checkpoint does.
- The LaCT part, `blocks.N.self_attn.{w0,w1,w2,qk_scale,qk_offset,lr_proj,momentum_proj,output_norm}`,
  keeps its names under `blocks.N.attn1.memory.` (same shapes and layouts: lr_proj head-major and raw,
  their constant softplus^-1(1e-3) being our fw_base_lr; qk_* [dim, 2] with [..., 0] for q);
  `ttt_scale_proj` (the scalar gate) becomes `memory.gate_proj`; their sequence-parallel layer's
  `momentum_proj.0.*` (Sequential(Linear, Sigmoid)) becomes `momentum_proj.*`, and goes back so.

The memory shape is read off the tensors (fw_head_dim and fw_mlp_ratio from w0's shape, lact_blocks
from the blocks that have w0, use_momentum from momentum_proj). The rest is in no state dict: it comes
from --minvid_config (`lact_video.minvid_options` maps every option or refuses it by name), else from
the flags and the options of their released YAML, which a warning lists. A checkpoint without any LaCT
keys (Wan-AI's own release) is a plain Wan base: it gets a freshly initialised memory with a zero gate
(pure window attention), sized by --fw_head_dim/--fw_mlp_ratio/--lact_blocks/--use_momentum. vae,
text_encoder, tokenizer and scheduler are copied unchanged from --base.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import re

import torch
from accelerate import init_empty_weights
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from torch import nn

from .errors import ConfigError, exit_on_config_error
from .geometry import DEFAULT_CHUNK_FRAMES
from .layers import FastWeightMemory
from .minvid_options import (
    ASSUMED_WITHOUT_YAML,
    MinVidOptions,
    UnsupportedMinVidOption,
    constant_gate_bias,
    load_minvid_yaml,
    minvid_options,
)
from .models import LaCTWanTransformer3DModel
from .models.lact_config import DEPRECATED_LACT_KEYS, LACT_CONFIG_KEYS, LaCTConfig, MuonDtype, rename_deprecated
from .training.export import local_model_folder, write_pipeline_folder

logger = logging.getLogger(__name__)

# minVid name under `blocks.N.self_attn.` -> ours under `blocks.N.attn1.memory.`.
MEMORY_NAMES = {
    "w0": "w0",
    "w1": "w1",
    "w2": "w2",
    "qk_scale": "qk_scale",
    "qk_offset": "qk_offset",
    "lr_proj": "lr_proj",
    "momentum_proj": "momentum_proj",
    "output_norm": "output_norm",
    "ttt_scale_proj": "gate_proj",
}
_MEMORY_KEY = re.compile(rf"^blocks\.(\d+)\.self_attn\.({'|'.join(MEMORY_NAMES)})(\..+)?$")
_LEADING_PREFIXES = ("module.", "model.", "diffusion_model.", "_orig_mod.")
_WRAPPERS = ("_checkpoint_wrapped_module.", "_fsdp_wrapped_module.", "_orig_mod.")
# Containers that training scripts wrap a state dict in, most specific first.
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module", "generator", "net")
# Config keys read off the tensors; the flags may repeat them only if they agree.
INFERRED_KEYS = ("fw_head_dim", "fw_mlp_ratio", "lact_blocks", "use_momentum")
# LaCT keys (also under their old names) that a LaCT folder given as --base carries: not Wan's.
_LACT_NAMES = {*LACT_CONFIG_KEYS, *DEPRECATED_LACT_KEYS}


def wan_keys(transformer_config: dict) -> dict:
    """A transformer config's public Wan keys: without diffusers' private keys and LaCT's (old names too)."""
    return {k: v for k, v in transformer_config.items() if not k.startswith("_") and k not in _LACT_NAMES}


def strip_prefixes(key: str) -> str:
    for wrapper in _WRAPPERS:  # wrappers sit at any depth (e.g. per-block checkpointing)
        key = key.replace(wrapper, "")
    while key.startswith(_LEADING_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def convert_minvid_state_dict(
    state_dict: dict, wan_config: dict, constant_gate: float | None = None
) -> tuple[dict, dict]:
    """minVid (original Wan names + LaCT) -> (diffusers state dict, inferred LaCT config).

    The inferred config holds `INFERRED_KEYS`, or is empty for a checkpoint without LaCT keys (a plain
    Wan base, whose memory is then missing legitimately). `constant_gate`: their `learnable_ttt_scale:
    false` layer, which has no `ttt_scale_proj` (see `add_constant_gate`). Raises ValueError listing every
    unknown, missing or wrongly shaped key (in diffusers names).
    """
    stripped = {}
    for key, value in state_dict.items():
        name = strip_prefixes(key)
        if name in stripped:
            raise ConfigError(f"Keys {key!r} and another one both become {name!r} once wrapper prefixes are stripped.")
        stripped[name] = value
    if constant_gate is not None:
        add_constant_gate(stripped, constant_gate)
    base, converted = {}, {}
    for name, value in stripped.items():
        match = _MEMORY_KEY.match(name)
        if match:  # ours: kept away from diffusers' substring renames
            block, param, rest = match.groups()
            if param == "momentum_proj" and rest.startswith(".0."):  # their SP layer's Sequential(Linear, Sigmoid)
                rest = rest[2:]
            ours = f"blocks.{block}.attn1.memory.{MEMORY_NAMES[param]}{rest or ''}"
            if ours in converted:
                raise ConfigError(f"Two keys of the checkpoint become {ours!r}; one of them is {name!r}.")
            converted[ours] = value
        else:
            base[name] = value
    converted.update(convert_wan_transformer_to_diffusers(base))  # pops from its argument: a fresh dict

    wan_config = wan_keys(wan_config)
    lact_config = infer_lact_config(converted, wan_config["num_layers"])
    # Only shapes are needed; a base has no memory keys to expect (any valid fw_head_dim will do).
    no_memory = {
        "lact_blocks": [],
        "fw_head_dim": wan_config["num_attention_heads"] * wan_config["attention_head_dim"],
    }
    with init_empty_weights():
        model = LaCTWanTransformer3DModel(**wan_config, **(lact_config or no_memory))
    expected = {k: v.shape for k, v in model.state_dict().items()}
    unknown = sorted(set(converted) - set(expected))
    missing = sorted(set(expected) - set(converted))
    found = {k: tuple(getattr(v, "shape", ())) for k, v in converted.items()}  # () for a stray non-tensor
    wrong = [f"{k}: checkpoint {found[k]} vs model {tuple(s)}" for k, s in expected.items() if found.get(k, s) != s]
    if unknown or missing or wrong:
        raise ConfigError(
            f"The checkpoint does not match a LaCT Wan model with the --base config and the memory config "
            f"{lact_config or '(none: plain Wan)'} inferred from it. Unknown keys: {unknown}. Missing keys: "
            f"{missing}. Shape mismatches: {wrong}. (Keys in diffusers names.)"
        )
    return converted, lact_config


def add_constant_gate(stripped: dict, value: float) -> None:
    """Their `learnable_ttt_scale: false` blocks gate the memory by the constant `ttt_scale` and have no
    `ttt_scale_proj`; add one (weight 0, bias `silu^-1(value)`) to every block with a memory, in place."""
    bias = constant_gate_bias(value)
    for name in [k for k in stripped if re.fullmatch(r"blocks\.\d+\.self_attn\.lr_proj\.weight", k)]:
        prefix = name.removesuffix("lr_proj.weight") + "ttt_scale_proj."
        if prefix + "weight" in stripped:
            raise ConfigError(
                f"learnable_ttt_scale is false in the minVid YAML, but the checkpoint has {prefix}weight."
            )
        weight = stripped[name]
        stripped[prefix + "weight"] = weight.new_zeros(1, weight.shape[1])
        stripped[prefix + "bias"] = weight.new_full((1,), bias)


def infer_lact_config(converted: dict, num_layers: int) -> dict:
    """The memory config that the tensors determine; {} if there is no memory at all."""
    w0 = {int(k.split(".")[1]): v for k, v in converted.items() if re.fullmatch(r"blocks\.\d+\.attn1\.memory\.w0", k)}
    if not w0:
        if any(".attn1.memory." in k for k in converted):
            raise ConfigError("The checkpoint has LaCT memory keys but no `self_attn.w0` in any block.")
        return {}
    blocks = sorted(w0)
    _, dh, d = w0[blocks[0]].shape  # [Hf, dh, d]; the shape check catches blocks that disagree
    if dh % d:
        shape = tuple(w0[blocks[0]].shape)
        raise ConfigError(f"w0 of block {blocks[0]} has shape {shape}: dh={dh} is not a multiple of d={d}.")
    return {
        "fw_head_dim": d,
        "fw_mlp_ratio": dh // d,
        "lact_blocks": None if blocks == list(range(num_layers)) else blocks,
        "use_momentum": any(".attn1.memory.momentum_proj." in k for k in converted),
    }


_TO_MINVID = (  # diffusers -> original Wan / minVid, in this order (the inverse of the mapping above)
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("ffn.net.0.proj", "ffn.0"),
    ("ffn.net.2", "ffn.2"),
    (".attn1.memory.gate_proj.", ".self_attn.ttt_scale_proj."),
    (".attn1.memory.momentum_proj.", ".self_attn.momentum_proj.0."),  # their SP layer: Sequential(Linear, Sigmoid)
    (".attn1.memory.", ".self_attn."),
    (".attn1.", ".self_attn."),
    (".attn2.", ".cross_attn."),
    (".to_q.", ".q."),
    (".to_k.", ".k."),
    (".to_v.", ".v."),
    (".to_out.0.", ".o."),
    (".norm2.", ".norm3."),  # diffusers' norm2 is the cross-attention norm, Wan's norm3
    (".scale_shift_table", ".modulation"),
)


def to_minvid_state_dict(model: torch.nn.Module | dict) -> dict:
    """Our model (or a diffusers Wan model, or a state dict of either) -> the minVid layout."""
    state_dict = model.state_dict() if isinstance(model, torch.nn.Module) else model
    out = {}
    for name, value in state_dict.items():
        if name == "scale_shift_table":
            name = "head.modulation"
        elif name.startswith("proj_out."):
            name = "head.head." + name.removeprefix("proj_out.")
        for ours, theirs in _TO_MINVID:
            name = name.replace(ours, theirs)
        out[name] = value
    return out


def load_checkpoint(path: str | pathlib.Path, key: str | None = None) -> dict:
    """A state dict from a .safetensors or .pt file; `key` picks a nested entry (e.g. an EMA copy)."""
    path = pathlib.Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        # weights_only: a checkpoint is untrusted input; plain containers of tensors load fine.
        state = torch.load(path, map_location="cpu", weights_only=True)
    if key is not None:
        for part in key.split("."):
            state = state[part]
        return state
    while isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        container = next((k for k in _CONTAINER_KEYS if isinstance(state.get(k), dict)), None)
        if container is None:
            raise ConfigError(f"No state dict in {path}: top-level keys {sorted(state)}. Pick one with --key.")
        logger.info("Using the state dict under %r of %s.", container, path)
        state = state[container]
    return state


def convert(
    checkpoint: str | pathlib.Path,
    base: str | pathlib.Path,
    output_dir: str | pathlib.Path,
    key: str | None = None,
    minvid_config: str | pathlib.Path | dict | None = None,
    overwrite: bool = False,
    **lact_settings,
) -> pathlib.Path:
    """Convert `checkpoint` and write the pipeline folder.

    Args:
        minvid_config: their training YAML (path or dict): its options are mapped by `minvid_options` (and
            refused there when we do not implement them). Without it, the options of their released 1.3B
            YAML are assumed, and a warning lists them.
        lact_settings: LaCT config keys (None = unset; the deprecated names warn). They must agree with the
            checkpoint's tensors and with the YAML; `muon_dtype` may override the YAML's bf16 (it has no
            place there).
        overwrite: replace what `output_dir` holds; without it a non-empty `output_dir` is refused.

    Raises:
        ConfigError: a missing checkpoint or YAML file, an `output_dir` that is `base` or not empty (without
            `overwrite`), an unsupported YAML option (`UnsupportedMinVidOption`), or flags, YAML and tensors
            that disagree.
    """
    output_dir = pathlib.Path(output_dir)
    for name, path in (("checkpoint", checkpoint), ("--minvid_config", minvid_config)):
        if path is not None and not isinstance(path, dict) and not pathlib.Path(path).is_file():
            raise ConfigError(f"{name} {path}: no such file")
    if not overwrite and output_dir.is_dir() and any(output_dir.iterdir()):
        raise ConfigError(
            f"--output_dir {output_dir} is not empty: pass --overwrite to replace it, or pick a new folder"
        )
    base_folder = local_model_folder(str(base))
    if output_dir.resolve() == base_folder.resolve():
        raise ConfigError("--output_dir must differ from --base.")
    # From `base` itself: for a hub id, local_model_folder fetches the other components only.
    wan_config = dict(WanTransformer3DModel.load_config(str(base), subfolder="transformer"))
    settings = {k: v for k, v in lact_settings.items() if v is not None}
    settings = rename_deprecated(settings, DEPRECATED_LACT_KEYS, "lact_video.convert")
    options = yaml_settings(minvid_config, wan_config, settings)
    if options is not None:
        settings = {**options.settings, **settings}
    state_dict, inferred = convert_minvid_state_dict(
        load_checkpoint(checkpoint, key), wan_config, options.constant_gate if options else None
    )
    wan_config = wan_keys(wan_config)

    if inferred:
        num_layers = wan_config["num_layers"]
        given = dict(settings)
        if given.get("lact_blocks") is not None and sorted(given["lact_blocks"]) == list(range(num_layers)):
            given["lact_blocks"] = None  # "every block" has two spellings
        conflicts = {k: (given[k], inferred[k]) for k in INFERRED_KEYS if k in given and given[k] != inferred[k]}
        if conflicts:
            source = "--minvid_config and flags" if options else "Flags"
            raise ConfigError(f"{source} disagree with the checkpoint's tensors (given, checkpoint): {conflicts}.")
        with init_empty_weights():
            model = LaCTWanTransformer3DModel(**wan_config, **{**settings, **inferred})
        model.load_state_dict(state_dict, strict=True, assign=True)  # keys and shapes checked above
    else:
        if options is not None and options.w_init != "clean":
            raise UnsupportedMinVidOption(
                f"minVid option w_init: {options.w_init!r} is not supported for a plain Wan base (fresh fast "
                "weights); lact-video initialises as their 'clean'. A LaCT checkpoint brings its own weights."
            )
        with init_empty_weights():
            wan = WanTransformer3DModel(**wan_config)
        wan.load_state_dict(state_dict, strict=True, assign=True)
        model = LaCTWanTransformer3DModel.from_wan(wan, **settings)
        if options is not None and options.constant_gate is not None:
            for memory in model.modules():
                if isinstance(memory, FastWeightMemory):
                    nn.init.constant_(memory.gate_proj.bias, constant_gate_bias(options.constant_gate))
        gate = "a constant (learnable_ttt_scale: false)" if options and options.constant_gate is not None else "a zero"
        logger.info(
            "No LaCT keys in %s: converted it as a plain Wan base. The memory (blocks %s) is freshly "
            "initialised, with %s gate.",
            checkpoint,
            model.config.lact_blocks if model.config.lact_blocks is not None else "all",
            gate,
        )

    write_pipeline_folder(output_dir, model, base_folder)
    public = ", ".join(f"{k}={getattr(v, 'value', v)}" for k, v in model.config.items() if k in LACT_CONFIG_KEYS)
    logger.info("Wrote %s (LaCT config %s).", output_dir, public)
    return output_dir


def yaml_settings(minvid_config, wan_config: dict, flags: dict) -> MinVidOptions | None:
    """The YAML's mapped options, checked against the flags; None (with a warning of what is assumed) without one."""
    if minvid_config is None:
        shown = {
            k: flags.get(k, getattr(LaCTConfig, k)) for k in ("window_size", "num_repeat", "use_muon", "weight_norm")
        }
        logger.warning(
            "No --minvid_config: assuming the options of the authors' released YAML "
            "(lact_ar_video/minVid/configs/ar/lact_ar_chunk3f_1.3B.yaml) that a checkpoint cannot show: %s; and "
            "from the flags or our defaults: chunk_frames=%s, %s. If the checkpoint was trained with other "
            "options, pass its training YAML: --minvid_config their.yaml.",
            ", ".join(f"{k}={v}" for k, v in ASSUMED_WITHOUT_YAML.items()),
            flags.get("chunk_frames", DEFAULT_CHUNK_FRAMES),
            ", ".join(f"{k}={v}" for k, v in shown.items()),
        )
        return None
    config = minvid_config if isinstance(minvid_config, dict) else load_minvid_yaml(minvid_config)
    options = minvid_options(config, wan_config)
    overridable = {"muon_dtype"}
    conflicts = {
        k: (v, options.settings[k])
        for k, v in flags.items()
        if k in options.settings and k not in overridable and v != options.settings[k]
    }
    if conflicts:
        raise ConfigError(f"Flags disagree with --minvid_config (flag, YAML): {conflicts}. Drop the flags.")
    for note in options.notes:
        logger.info("minVid config: %s", note)
    return options


def main(argv=None) -> pathlib.Path:
    import lact_video

    parser = argparse.ArgumentParser(prog="python -m lact_video.convert", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--from",
        dest="source",
        nargs=2,
        metavar=("FORMAT", "CKPT"),
        required=True,
        help="checkpoint format (only 'minvid') and file (.pt or .safetensors)",
    )
    parser.add_argument("--base", required=True, help="the Wan2.1 T2V diffusers folder (or hub id) it started from")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--overwrite", action="store_true", help="replace what a non-empty --output_dir holds")
    parser.add_argument("--key", help="dotted path of the state dict in a .pt (default: state_dict, model, ...)")
    parser.add_argument(
        "--minvid_config",
        help="the authors' training YAML of the checkpoint: its layer options are mapped or refused by name "
        "(without it, their released 1.3B YAML's options are assumed)",
    )
    options = parser.add_argument_group("LaCT options", "read from --minvid_config when given (they must agree)")
    options.add_argument("--chunk_frames", type=int, help=f"latent frames per chunk (default {DEFAULT_CHUNK_FRAMES})")
    options.add_argument("--window_size", type=int, help="window tokens into the previous chunk (default: all of it)")
    options.add_argument("--use_muon", action="store_true", default=None)
    options.add_argument(
        "--muon_dtype",
        choices=[d.value for d in MuonDtype],
        help=f"Newton-Schulz precision (default {LaCTConfig.muon_dtype.value}; bfloat16, theirs, from a YAML)",
    )
    options.add_argument("--num_repeat", type=int, help="noisy copies per chunk in teacher forcing (default 1)")
    options.add_argument("--no_weight_norm", dest="weight_norm", action="store_false", default=None)
    group = parser.add_argument_group("memory shape", "read off a LaCT checkpoint; set them for a plain Wan base")
    group.add_argument("--fw_head_dim", type=int)
    group.add_argument("--fw_mlp_ratio", type=int)
    group.add_argument("--inter_multi", type=int, help=argparse.SUPPRESS)  # deprecated name of --fw_mlp_ratio
    group.add_argument("--lact_blocks", type=int, nargs="*", help="blocks with memory (none listed: window only)")
    group.add_argument("--use_momentum", action="store_true", default=None)
    parser.add_argument("--version", action="version", version=f"%(prog)s {lact_video.__version__}")
    args = vars(parser.parse_args(argv))
    source, checkpoint = args.pop("source")
    if source != "minvid":
        parser.error(f"--from {source!r}: only 'minvid' is supported")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return convert(
        checkpoint, args.pop("base"), args.pop("output_dir"), args.pop("key"), args.pop("minvid_config"), **args
    )


if __name__ == "__main__":
    with exit_on_config_error():  # a refusal: one line on stderr, exit status 2
        main()
