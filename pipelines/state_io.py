"""Saving the generation state to a file and loading it in another process, bit for bit (docs/design.md, Sec. 3.5).

One safetensors file holds every tensor of a `LaCTState` (each block's window keys/values, fast weights and
momentum) and of a `WanStreamingDecoder.feat_cache`, under systematic names. Everything else is JSON in the
file's metadata: the layout (which entries are `None`, which VAE cache slots are markers such as `"Rep"`), the
model config the state belongs to, the lact_video version, and the caller's header. No pickle: loading runs no
code from the file.
"""

from __future__ import annotations

import json
import os

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from lact_video import __version__
from lact_video.ops.fast_weight import FastWeights
from lact_video.state import LaCTState, LayerState

FORMAT = "lact-video-state"  # metadata["format"]: what makes a safetensors file ours
FORMAT_VERSION = 1
_LAYER_FIELDS = ("key", "value", "fast_weights", "momentum")


class StateFileError(ValueError):
    """A state file cannot be read or does not belong to the model it is loaded into; the message says why."""


def state_header(model: torch.nn.Module, **fields) -> dict:
    """The header `save_state` needs: `model`'s public config (base and LaCT keys) and this package's version,
    plus the caller's JSON-serialisable `fields` (e.g. the next chunk index)."""
    return {"model_config": _public_config(model), "lact_video_version": __version__, **fields}


def save_state(path: str | os.PathLike, *, lact_state: LaCTState, decoder_cache: list | None, header: dict) -> None:
    """Write `lact_state` and `decoder_cache` (a `WanStreamingDecoder.feat_cache`, or `None`) to one file.

    Tensor names: `lact.{block}.{key|value}`, `lact.{block}.{fast_weights|momentum}.{w0|w1|w2}`,
    `vae.feat_cache.{slot}`. Tensors keep their dtype; they are read back on the CPU.

    Raises:
        StateFileError: `header` lacks `model_config` (build it with `state_header`), or is not JSON.
        TypeError: a cache slot is neither a tensor, `None` nor a string marker.
    """
    if "model_config" not in header:
        raise StateFileError("The state header has no `model_config`: build it with `state_header(model, ...)`.")
    tensors: dict[str, torch.Tensor] = {}
    layers = []
    for i, layer in enumerate(lact_state.layers):
        entry = {}
        for name in _LAYER_FIELDS:
            value = getattr(layer, name)
            if value is None:
                entry[name] = None
            elif isinstance(value, FastWeights):
                entry[name] = [_put(tensors, f"lact.{i}.{name}.{w}", t) for w, t in value._asdict().items()]
            else:
                entry[name] = _put(tensors, f"lact.{i}.{name}", value)
        layers.append(entry)
    cache = None
    if decoder_cache is not None:
        cache = []
        for j, slot in enumerate(decoder_cache):
            if isinstance(slot, torch.Tensor):
                cache.append({"tensor": _put(tensors, f"vae.feat_cache.{j}", slot)})
            elif slot is None or isinstance(slot, str):
                cache.append(slot)  # None: not yet written; a string: a marker of the Wan VAE ("Rep")
            else:
                raise TypeError(f"VAE cache slot {j} holds a {type(slot).__name__}; expected a tensor, None or a str.")
    layout = {"lact_state": {"num_chunks": lact_state.num_chunks, "layers": layers}, "decoder_cache": cache}
    try:
        metadata = {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "layout": json.dumps(layout),
            "header": json.dumps(header),
        }
    except TypeError as error:
        raise StateFileError(f"The state header must be JSON-serialisable: {error}") from error
    save_file(tensors, str(path), metadata=metadata)


def load_state(path: str | os.PathLike) -> tuple[LaCTState, list | None, dict]:
    """Read a file of `save_state`: `(lact_state, decoder_cache, header)`, tensors on the CPU, bit-identical.

    Check the header against the model with `check_state_matches` before using the state.

    Raises:
        StateFileError: the file is not a safetensors file, not a lact-video state, or of a newer format.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError) as error:
        raise StateFileError(f"{path} is not a readable safetensors file ({error}).") from error
    if metadata.get("format") != FORMAT:
        raise StateFileError(f"{path} is not a lact-video state file (no metadata format={FORMAT!r}).")
    version = int(metadata["format_version"])
    if version > FORMAT_VERSION:
        raise StateFileError(
            f"{path} has state format {version}; this lact-video ({__version__}) reads up to {FORMAT_VERSION}. "
            "Upgrade lact-video."
        )
    layout = json.loads(metadata["layout"])

    def entry_value(names):  # a layout entry: None, one tensor name, or the names of a FastWeights
        if names is None:
            return None
        return FastWeights(*(tensors[n] for n in names)) if isinstance(names, list) else tensors[names]

    layers = tuple(
        LayerState(**{name: entry_value(entry[name]) for name in _LAYER_FIELDS})
        for entry in layout["lact_state"]["layers"]
    )
    lact_state = LaCTState(layers, layout["lact_state"]["num_chunks"])
    cache = layout["decoder_cache"]
    if cache is not None:
        cache = [tensors[slot["tensor"]] if isinstance(slot, dict) else slot for slot in cache]
    return lact_state, cache, json.loads(metadata["header"])


def check_state_matches(header: dict, model: torch.nn.Module) -> None:
    """Refuse a state saved for another model: every public config key (base and LaCT) must be equal.

    Raises:
        StateFileError: naming each differing key with the saved and the current value.
    """
    saved, current = header["model_config"], _public_config(model)
    differing = [
        f"{key}: saved {saved.get(key, '(absent)')!r}, this model {current.get(key, '(absent)')!r}"
        for key in sorted(saved.keys() | current.keys())
        if saved.get(key) != current.get(key)
    ]
    if differing:
        raise StateFileError(
            "The saved state belongs to a model with another config; load the model it was saved with. "
            "Differing keys: " + "; ".join(differing)
        )


def _public_config(model: torch.nn.Module) -> dict:
    """`model.config` without diffusers' private `_` keys, as JSON reads it back (enums as their strings)."""
    return json.loads(json.dumps({k: v for k, v in model.config.items() if not k.startswith("_")}))


def _put(tensors: dict[str, torch.Tensor], name: str, tensor: torch.Tensor) -> str:
    # A copy: safetensors refuses tensors that share storage (views of one buffer) and non-contiguous ones.
    tensors[name] = tensor.detach().clone(memory_format=torch.contiguous_format)
    return name
