"""Load the LaCT transformer under DeepSpeed ZeRO-3 so that each rank only ever holds its shard of the weights.

`LaCTWanTransformer3DModel.from_wan` and diffusers' `from_pretrained` build the whole model in every process
before ZeRO-3 partitions it: 28 GB of host memory per process for Wan2.1-T2V-14B in bf16. Here the model is
built under `deepspeed.zero.Init` (every weight is partitioned as soon as its module exists, with
`diffusers.models.modeling_utils.no_init_weights` skipping the random initialisation the checkpoint replaces),
then each weight is gathered alone (`deepspeed.zero.GatheredParameters`), filled on rank 0 from the
checkpoint read one tensor at a time (safetensors' lazy `safe_open`, sharded index files too), and
broadcast and partitioned again on leaving the block. The peak per rank is its shard plus one full tensor.

The result equals the ordinary path, bit for bit (tests/test_zero_loading.py):
- a Wan base: `from_wan(path, **lact_config)`, the new LaCT parameters drawn from the global RNG exactly as
  there (the same seed gives the same values, and leaves the same RNG state);
- a LaCT folder: `LaCTWanTransformer3DModel.from_pretrained(path)`, format-1 weights converted
  (`models.formats`);
then cast to the training dtype, as the DeepSpeed engine casts the ordinary path's weights.
Buffers (the rotary tables) are the ordinary path's, computed in float32: `zero.Init` would build them in the
training dtype. docs/design.md Sec. 7.
"""

from __future__ import annotations

import json
import os
import pathlib
import unittest.mock

import torch
from accelerate import init_empty_weights
from diffusers import WanTransformer3DModel
from diffusers.models.modeling_utils import no_init_weights

from ..layers.fast_weight_memory import FastWeightMemory
from ..models import LaCTWanTransformer3DModel
from ..models.formats import FORMAT_KEY, FORMAT_VERSION, convert_weights, saved_format


def is_zero3(accelerator) -> bool:
    """Whether accelerate runs DeepSpeed ZeRO stage 3 (the trainer then builds the model with `load_zero3`)."""
    plugin = accelerator.state.deepspeed_plugin
    return plugin is not None and plugin.zero_stage == 3


def zero_init_config(accelerator) -> dict:
    """The DeepSpeed config for `zero.Init`: accelerate's copy with its "auto" batch sizes resolved (the one it
    registers with transformers for the same purpose)."""
    return accelerator.state.deepspeed_plugin.dschf.config


def load_zero3(
    pretrained_model_name_or_path: str | os.PathLike,
    *,
    ds_config: dict,
    subfolder: str | None = None,
    revision: str | None = None,
    lact_config: dict | None = None,
) -> LaCTWanTransformer3DModel:
    """A `LaCTWanTransformer3DModel` whose weights are ZeRO-3 partitioned from the start, in eval mode.

    Call it on every rank of an initialised process group, with the same global RNG state on each (the new
    LaCT parameters of a Wan base are drawn from it, as `from_wan` draws them).

    Args:
        pretrained_model_name_or_path: a folder or hub id holding a Wan2.1 T2V transformer (config.json and
            diffusers safetensors weights, one file or an index of shards) or a LaCT transformer.
        ds_config: the DeepSpeed config (`zero_init_config`). The weights take its training dtype (bf16 when
            `bf16.enabled`, fp16 when `fp16.enabled`, else float32), as the DeepSpeed engine casts them on the
            ordinary path; its ZeRO section says where shards live (`offload_param`) and how they persist.
        subfolder: "transformer" for a pipeline folder.
        lact_config: LaCT config keys for a Wan base (as `from_wan` takes them); a LaCT folder brings its own.

    Raises:
        ValueError: no safetensors weights; LaCT keys given for a LaCT folder; the checkpoint's keys or shapes
            do not match the model (the message names them).
    """
    import deepspeed

    folder = _local_folder(pretrained_model_name_or_path, subfolder, revision)
    config = json.loads((folder / LaCTWanTransformer3DModel.config_name).read_text())
    is_lact = config.get("_class_name") == LaCTWanTransformer3DModel.__name__
    if is_lact and lact_config:
        raise ValueError(
            f"{folder} holds a LaCT transformer, whose config.json sets the LaCT keys; lact_config "
            f"{sorted(lact_config)} applies to a Wan base only. Leave it out."
        )
    if is_lact:
        version = saved_format(config, FORMAT_KEY, str(folder / LaCTWanTransformer3DModel.config_name))
        build = lambda: LaCTWanTransformer3DModel.from_config(config)  # noqa: E731 (renames deprecated keys)
    else:
        kwargs = LaCTWanTransformer3DModel.lact_init_kwargs(config, lact_config or {})
        build = lambda: LaCTWanTransformer3DModel(**kwargs)  # noqa: E731

    # The ordinary path's model on the meta device: names, shapes, real buffers, the new parameters' init. Wan's
    # constructor draws its modulation tables from the global RNG even there (`torch.randn`), so this draws what
    # the ordinary path draws: from_wan builds the Wan model (in from_pretrained) and then the LaCT model.
    with init_empty_weights():
        if not is_lact:
            WanTransformer3DModel.from_config(config)
        reference = build()
    # Building under zero.Init leaves the RNG as it was (fork_rng), and skips the random initialisation
    # (no_init_weights): the checkpoint replaces it. The weights take the training dtype of ds_config.
    # A memory's own reset (in its __init__) would re-initialise its momentum_proj after zero.Init partitioned it;
    # every memory's values are set below instead.
    skip_memory_reset = unittest.mock.patch.object(FastWeightMemory, "reset_parameters", lambda self: None)
    zero_init = deepspeed.zero.Init(config_dict_or_path=ds_config)
    with torch.random.fork_rng(devices=[]), no_init_weights(), skip_memory_reset, zero_init:
        model = build()
    buffers = dict(reference.named_buffers())
    for name, buffer in model.named_buffers():
        buffer.data = buffers[name].to(buffer.device)

    # Every rank checks the checkpoint's keys and shapes (headers only) before any collective, so that a bad
    # checkpoint stops all of them with the same error.
    new = set() if is_lact else _new_parameter_names(reference)
    index = _weight_index(folder)
    _check_keys(folder, index, {name: tuple(p.shape) for name, p in reference.named_parameters() if name not in new})
    rank = torch.distributed.get_rank()
    for name, param in model.named_parameters():
        if name in new:
            continue
        with deepspeed.zero.GatheredParameters([param], modifier_rank=0), torch.no_grad():
            if rank == 0:
                param.copy_(_read_tensor(index[name][0], name))
    _init_new_parameters(model, reference, new)
    if is_lact and version < FORMAT_VERSION:
        biases = [m.lr_proj.bias for m in _memories(model).values()]
        with deepspeed.zero.GatheredParameters(biases, modifier_rank=0):
            convert_weights(model, version, str(folder))
    return model.eval()


def _local_folder(path, subfolder: str | None, revision: str | None) -> pathlib.Path:
    """The folder holding config.json and the weights: `path/subfolder`, downloaded first for a hub id."""
    if not os.path.isdir(path):
        from huggingface_hub import snapshot_download

        pattern = f"{subfolder}/*" if subfolder else None
        path = snapshot_download(str(path), revision=revision, allow_patterns=pattern)
    return pathlib.Path(path, *filter(None, [subfolder]))


def _weight_index(folder: pathlib.Path) -> dict[str, tuple[pathlib.Path, tuple]]:
    """Parameter name -> (the safetensors file that holds it, its shape): diffusers' single file or its sharded
    index, read from the files' headers."""
    from diffusers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFETENSORS_WEIGHTS_NAME
    from safetensors import safe_open

    index_file, single = folder / SAFE_WEIGHTS_INDEX_NAME, folder / SAFETENSORS_WEIGHTS_NAME
    if index_file.is_file():
        files = sorted({folder / file for file in json.loads(index_file.read_text())["weight_map"].values()})
    elif single.is_file():
        files = [single]
    else:
        raise ValueError(
            f"{folder} holds neither {SAFETENSORS_WEIGHTS_NAME} nor {SAFE_WEIGHTS_INDEX_NAME}: loading under ZeRO-3 "
            "reads safetensors weights only. Convert the checkpoint (load it and save_pretrained it again)."
        )
    index = {}
    for file in files:
        with safe_open(file, framework="pt") as f:
            index.update({name: (file, tuple(f.get_slice(name).get_shape())) for name in f.keys()})
    return index


def _check_keys(folder: pathlib.Path, index: dict, expected: dict[str, tuple]) -> None:
    """`expected`: the model's parameter names and shapes that the checkpoint must hold, and nothing else."""
    missing, unexpected = sorted(set(expected) - set(index)), sorted(set(index) - set(expected))
    shapes = [f"{name} {index[name][1]} (the model's: {shape})" for name, shape in expected.items()
              if name in index and index[name][1] != shape]  # fmt: skip
    if missing or unexpected or shapes:
        raise ValueError(
            f"The checkpoint in {folder} does not match the LaCT model: missing keys {missing}, unexpected keys "
            f"{unexpected}, other shapes {shapes}. Is it a Wan2.1 T2V (or LaCT) transformer of the configured size?"
        )


def _read_tensor(file: pathlib.Path, name: str) -> torch.Tensor:
    """One tensor of a safetensors file. The file is opened for this tensor only: its memory map, and the pages
    read through it, go when it closes, so reading a 28 GB checkpoint never holds more than one tensor."""
    from safetensors import safe_open

    with safe_open(file, framework="pt") as f:
        return f.get_tensor(name)


def _memories(model: torch.nn.Module) -> dict:
    return {name: m for name, m in model.named_modules() if isinstance(m, FastWeightMemory)}


def _new_parameter_names(model: torch.nn.Module) -> set[str]:
    """The LaCT parameters a Wan checkpoint lacks: those of every fast-weight memory."""
    return {f"{name}.{p}" for name, m in _memories(model).items() for p, _ in m.named_parameters()}


@torch.no_grad()
def _init_new_parameters(model, reference, new: set[str]) -> None:
    """Every fast-weight memory's initial values, drawn exactly as `from_wan` draws them (materialise the
    memory in float32, `reset_parameters`, cast to the weights' dtype), on every rank; rank 0's are kept."""
    import deepspeed

    if not new:
        return
    memories = _memories(model)
    for name, memory in _memories(reference).items():
        memory.to_empty(device="cpu")
        memory.reset_parameters()
        target = memories[name]
        with deepspeed.zero.GatheredParameters(list(target.parameters()), modifier_rank=0):
            for (_, value), (_, param) in zip(memory.named_parameters(), target.named_parameters()):
                param.copy_(value)
        memory.to("meta")  # frees this memory's float32 copy
