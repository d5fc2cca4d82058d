"""The state file: a `LaCTState` and a VAE decoder cache in safetensors, read back bit for bit in another process
(docs/design.md, Sec. 3.5). `pipelines.generation_state` builds the generation state on it.

One safetensors file holds every tensor of a `LaCTState` (each block's window keys/values, fast weights and
momentum), of a `WanStreamingDecoder.feat_cache` and the caller's other tensors, under systematic names.
Everything else is JSON in the file's metadata: the layout (which entries are `None`, which VAE cache slots are
markers such as `"Rep"`), the format version, the lact_video version, and the caller's header. No pickle:
loading runs no code from the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import tempfile
from collections.abc import Mapping
from typing import NamedTuple

import torch
from diffusers.utils import logging
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from lact_video import __version__
from lact_video.ops.fast_weight import FastWeights
from lact_video.state import LaCTState, LayerState

logger = logging.get_logger(__name__)

FORMAT = "lact-video-state"  # metadata["format"]: what makes a safetensors file ours
FORMAT_VERSION = 1
_LAYER_FIELDS = tuple(field.name for field in dataclasses.fields(LayerState))  # the file keeps their order


class StateFileError(ValueError):
    """A file that cannot be read as a state file: not safetensors, not ours, or of a newer format."""


class StateFile(NamedTuple):
    """What `load_state` reads: the LaCT state and the VAE decoder cache (tensors on the CPU), the caller's JSON
    header, and the caller's other tensors by name."""

    lact_state: LaCTState
    decoder_cache: list | None
    header: dict
    tensors: dict[str, torch.Tensor]


def save_state(
    path: str | os.PathLike,
    *,
    lact_state: LaCTState,
    decoder_cache: list | tuple | None,
    header: dict,
    tensors: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Write `lact_state`, `decoder_cache` (a `WanStreamingDecoder.feat_cache`, or `None`), the JSON `header` and
    the caller's other `tensors` to one file, atomically: the file is written under a temporary name beside
    `path` and renamed over it, so a failed save leaves an earlier file at `path` as it was. A missing folder is
    created (as the video writer creates it); a name that does not end in `.safetensors` is written all the same,
    with a warning (the file is safetensors, not a `torch.save` pickle).

    Tensor names: `lact.{block}.{key|value}`, `lact.{block}.{fast_weights|momentum}.{w0|w1|w2}`,
    `vae.feat_cache.{slot}`, and `extra.{name}` for `tensors`. Tensors keep their dtype; they are read back on
    the CPU.

    Raises:
        StateFileError: `header` is not JSON-serialisable.
        TypeError: a cache slot is neither a tensor, `None` nor a string marker.
        OSError: the file cannot be written (an earlier file at `path` is kept).
    """
    tensors = {f"extra.{name}": _contiguous_copy(t) for name, t in (tensors or {}).items()}
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
            "lact_video_version": __version__,
            "layout": json.dumps(layout),
            "header": json.dumps(header),
        }
    except TypeError as error:
        raise StateFileError(f"The state header must be JSON-serialisable: {error}") from error
    path = pathlib.Path(path)
    if path.suffix != ".safetensors":
        logger.warning(
            f"Saving the state to {path}: the file is safetensors (read it with `LaCTGenerationState.load`, not "
            f"`torch.load`); name it {path.with_suffix('.safetensors').name} to say so."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary file sits in the target's folder, so the rename stays on one file system (and is atomic).
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as file:
        temporary = pathlib.Path(file.name)
    try:
        save_file(tensors, str(temporary), metadata=metadata)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def load_state(path: str | os.PathLike) -> StateFile:
    """Read a file of `save_state`, tensors on the CPU, bit-identical.

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
    extra = {name.removeprefix("extra."): t for name, t in tensors.items() if name.startswith("extra.")}
    return StateFile(lact_state, cache, json.loads(metadata["header"]), extra)


def public_config(module: torch.nn.Module) -> dict:
    """`module.config` without diffusers' private `_` keys, as JSON reads it back (enums as their strings)."""
    return json.loads(json.dumps({k: v for k, v in module.config.items() if not k.startswith("_")}))


def _put(tensors: dict[str, torch.Tensor], name: str, tensor: torch.Tensor) -> str:
    tensors[name] = _contiguous_copy(tensor)
    return name


def _contiguous_copy(tensor: torch.Tensor) -> torch.Tensor:
    # A copy: safetensors refuses tensors that share storage (views of one buffer) and non-contiguous ones.
    return tensor.detach().clone(memory_format=torch.contiguous_format)
