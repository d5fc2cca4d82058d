"""The state of a chunk-by-chunk generation, held by the caller: pause, save, resume and extend a video
(docs/design.md, Sec. 3.6).

`LaCTVideoPipeline` hands it out with `return_state=True` and goes on from it with `state=`. It holds everything
the next chunk depends on: the `LaCTState` of every block and guidance row (its `num_chunks` is the next chunk's
absolute index, so positions and a prompt schedule continue from there), the VAE decoder's causal cache, and the
generators' states. The pipeline never keeps it. `save` writes it to one safetensors file (`pipelines.state_io`);
`load` reads it back bit for bit, so a video made in two calls, in two processes, equals the one-call video.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from lact_video.geometry import chunk_count
from lact_video.ops.fast_weight import FastWeights
from lact_video.state import LaCTState, LayerState

from .state_io import load_state, public_config, save_state
from .streaming import WanStreamingDecoder

if TYPE_CHECKING:
    from .pipeline_lact_video import LaCTVideoPipeline

# Config keys that do not change what a saved state means: the rotary table's length holds no weights and
# leaves every position's angle as it is (raising it is how a video goes past the table).
_IGNORED_CONFIG_KEYS = {"transformer": ("rope_max_seq_len",)}


class StateMismatchError(ValueError):
    """A generation state used with another model (config or dtype), size, batch or guidance than it was made
    with; the message names every difference."""


@dataclass(frozen=True, eq=False)
class GeneratorState:
    """One `torch.Generator`'s state: its device (`"cpu"`, `"cuda:0"`, ...) and `get_state()`, a uint8 tensor on
    the CPU (5056 bytes of Mersenne Twister for a CPU generator, seed and offset for a CUDA one)."""

    device: str
    state: torch.Tensor

    @classmethod
    def of(cls, generator: torch.Generator) -> GeneratorState:
        return cls(str(generator.device), generator.get_state())

    def restore(self) -> torch.Generator:
        """A new generator on `device` in this state.

        Raises:
            StateMismatchError: `device` does not exist here.
        """
        try:
            generator = torch.Generator(device=self.device)
        except RuntimeError as error:
            raise StateMismatchError(
                f"The state's generator is on {self.device}, which this machine lacks ({error}). Pass `generator=` "
                "to draw the rest of the video's noise from another generator (the video then differs from an "
                "uninterrupted one)."
            ) from error
        return generator.set_state(self.state)


SavedGenerator = GeneratorState | tuple[GeneratorState, ...] | None


def capture_generator(generator: torch.Generator | list[torch.Generator] | None) -> SavedGenerator:
    """The state of `generator` as the pipeline takes it: one generator, a list (one per video) or `None`."""
    if generator is None:
        return None
    if isinstance(generator, torch.Generator):
        return GeneratorState.of(generator)
    return tuple(GeneratorState.of(g) for g in generator)


def restore_generator(saved: SavedGenerator) -> torch.Generator | list[torch.Generator] | None:
    """New generators in the `saved` states, in the shape `capture_generator` took them."""
    if saved is None:
        return None
    if isinstance(saved, GeneratorState):
        return saved.restore()
    return [g.restore() for g in saved]


class LaCTVideoChunk(NamedTuple):
    """What `LaCTVideoPipeline.stream(..., return_state=True)` yields per chunk: the chunk's `frames` (as `stream`
    yields them otherwise) and the `state` after it (after the last finished chunk, if this one was interrupted)."""

    frames: np.ndarray | torch.Tensor | list
    state: LaCTGenerationState | None


@dataclass(frozen=True, eq=False, repr=False)
class LaCTGenerationState:
    """Everything a generation needs to go on after its last finished chunk; immutable, held by the caller.

    Attributes:
        lact_state: every block's memory, rows `num_videos` (x2 with guidance: [uncond, cond]); its `num_chunks`
            is `next_chunk`.
        decoder_cache: the VAE decoder's causal cache (`WanStreamingDecoder.feat_cache`) after the last chunk;
            `None` when the chunks were not decoded (`output_type="latent"`).
        generator: the generator's state after the last chunk's noise was drawn: one `GeneratorState`, a tuple
            (a list of generators), or `None` (no generator was passed).
        height, width: the video size in pixels.
        num_videos: the batch (prompts x `num_videos_per_prompt`).
        guidance: whether classifier-free guidance ran (the state then has the unconditional rows too).
        model_configs: the public configs of the transformer and the VAE (plus their dtypes) it was made with.

    Raises (`check_matches`, `load`): `StateMismatchError` naming each difference.

    Its `repr` is a one-line summary (the tensors run to hundreds of MB): the next chunk, the size, the rows, the
    blocks, the tensors' dtypes, devices and sizes.
    """

    lact_state: LaCTState
    decoder_cache: tuple | None
    generator: SavedGenerator
    height: int
    width: int
    num_videos: int
    guidance: bool
    model_configs: Mapping[str, Mapping[str, Any]]

    @property
    def next_chunk(self) -> int:
        """The absolute index of the next chunk (contract rule 1): the chunks generated so far."""
        return self.lact_state.num_chunks

    def __repr__(self) -> str:
        lact = _tensors(self.lact_state.layers)
        cache = _tensors(self.decoder_cache or ())
        everything = lact + cache
        rows = self.num_videos * (2 if self.guidance else 1)
        dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in everything})
        devices = sorted({str(t.device) for t in everything})
        generator = "none" if self.generator is None else "saved"
        cache_text = "not decoded" if self.decoder_cache is None else f"{_megabytes(cache)}"
        return (
            f"LaCTGenerationState(next_chunk={self.next_chunk}, {self.height}x{self.width}, videos={self.num_videos}, "
            f"guidance={self.guidance} ({rows} rows), blocks={len(self.lact_state.layers)}, "
            f"dtype={'/'.join(dtypes) or '-'}, device={'/'.join(devices) or '-'}, LaCT state {_megabytes(lact)}, "
            f"VAE cache {cache_text}, generator {generator})"
        )

    @classmethod
    def begin(
        cls,
        pipeline: LaCTVideoPipeline,
        lact_state: LaCTState,
        decoder: WanStreamingDecoder | None,
        generator: torch.Generator | list[torch.Generator] | None,
        *,
        height: int,
        width: int,
        num_videos: int,
    ) -> LaCTGenerationState:
        """The state of a generation of `pipeline` at its start (no chunk of this call finished yet)."""
        return cls(
            lact_state,
            None if decoder is None else tuple(decoder.feat_cache),
            capture_generator(generator),
            height,
            width,
            num_videos,
            pipeline.do_classifier_free_guidance,
            model_configs(pipeline),
        )

    def after_chunk(
        self,
        lact_state: LaCTState,
        decoder: WanStreamingDecoder | None,
        generator: torch.Generator | list[torch.Generator] | None,
    ) -> LaCTGenerationState:
        """The state once a chunk is committed into `lact_state` and decoded by `decoder`. The cache is copied
        as a tuple of its slots: the Wan VAE replaces slots, never writes into their tensors."""
        return replace(
            self,
            lact_state=lact_state,
            decoder_cache=None if decoder is None else tuple(decoder.feat_cache),
            generator=capture_generator(generator),
        )

    def check_matches(
        self, pipeline: LaCTVideoPipeline, *, height: int, width: int, num_videos: int, guidance: bool, decoding: bool
    ) -> None:
        """Refuse to go on with another model, size, batch or guidance than the state was made with, or to decode
        after chunks that were not decoded.

        Raises:
            StateMismatchError: naming every difference, with the state's value and the call's.
        """
        differences = config_differences(self.model_configs, model_configs(pipeline), config_defaults(pipeline))
        for name, saved, current in (
            ("height", self.height, height),
            ("width", self.width, width),
            ("videos (prompts x num_videos_per_prompt)", self.num_videos, num_videos),
            ("classifier-free guidance (guidance_scale > 1)", self.guidance, guidance),
        ):
            if saved != current:
                differences.append(f"{name}: state {saved!r}, this call {current!r}")
        if differences:
            raise StateMismatchError(
                "The generation state does not fit this call; go on with the model and settings it was made with. "
                "Differences: " + "; ".join(differences)
            )
        if decoding and self.decoder_cache is None and self.next_chunk > 0:
            raise StateMismatchError(
                f"The generation state comes from a generation without decoding (output_type='latent', "
                f"{chunk_count(self.next_chunk)}), so it has no VAE cache to decode the next chunks from: go on with "
                "output_type='latent' and decode the whole video's latents at the end with `pipe.decode_latents`."
            )

    def resume(
        self,
        decoder: WanStreamingDecoder | None,
        generator: torch.Generator | list[torch.Generator] | None,
        device: torch.device,
    ) -> tuple[LaCTState, torch.Generator | list[torch.Generator] | None]:
        """Start going on from this state (checked with `check_matches`): the LaCT state on `device`, `decoder`
        primed with the cache, and the generator to draw the next noise from: `generator` if given (a new
        continuation), else new generators in the saved states (the continuation of the uninterrupted video)."""
        if decoder is not None and self.decoder_cache is not None:
            decoder.load_cache(self.decoder_cache)
        if generator is None:
            generator = restore_generator(self.generator)
        return _lact_state_to(self.lact_state, device), generator

    def save(self, path: str | os.PathLike) -> None:
        """Write the state to `path`, a safetensors file (tensors, layout and a JSON header; no pickle;
        docs/design.md Sec. 3.5), atomically: a failed save leaves an earlier file at `path` as it was. A missing
        folder is created; a name without `.safetensors` warns (`pipelines.state_io.save_state`).

        Raises:
            OSError: the file cannot be written.
        """
        generators = (self.generator,) if isinstance(self.generator, GeneratorState) else (self.generator or ())
        header = {
            "model_configs": self.model_configs,
            "height": self.height,
            "width": self.width,
            "num_videos": self.num_videos,
            "guidance": self.guidance,
            # null: no generator; else the devices, and whether it was a list (one per video)
            "generator": None
            if self.generator is None
            else {"devices": [g.device for g in generators], "list": not isinstance(self.generator, GeneratorState)},
        }
        save_state(
            path,
            lact_state=self.lact_state,
            decoder_cache=self.decoder_cache,
            header=header,
            tensors={f"generator.{i}": g.state for i, g in enumerate(generators)},
        )

    @classmethod
    def load(cls, path: str | os.PathLike, pipeline: LaCTVideoPipeline | None = None) -> LaCTGenerationState:
        """Read a state written by `save`, tensors on the CPU (the pipeline moves them when it goes on). With
        `pipeline`, refuse at once a state made with another model (`check_matches` checks the rest at the call).

        Raises:
            pipelines.state_io.StateFileError: not a readable state file, or one of a newer format.
            StateMismatchError: `pipeline`'s transformer or VAE config or dtype differs, naming each key.
        """
        lact_state, cache, header, tensors = load_state(path)
        saved = header["generator"]
        generator = None
        if saved is not None:
            states = [GeneratorState(d, tensors[f"generator.{i}"]) for i, d in enumerate(saved["devices"])]
            generator = tuple(states) if saved["list"] else states[0]
        state = cls(
            lact_state,
            None if cache is None else tuple(cache),
            generator,
            header["height"],
            header["width"],
            header["num_videos"],
            header["guidance"],
            header["model_configs"],
        )
        if pipeline is not None:
            differences = config_differences(state.model_configs, model_configs(pipeline), config_defaults(pipeline))
            if differences:
                raise StateMismatchError(
                    f"{path} was saved with another model; load the pipeline it was made with. Differences: "
                    + "; ".join(differences)
                )
        return state


def model_configs(pipeline: LaCTVideoPipeline) -> dict[str, dict]:
    """What a state depends on besides the call: the transformer's and the VAE's public configs and dtypes."""
    return {
        name: {**public_config(module), "dtype": str(module.dtype)}
        for name, module in (("transformer", pipeline.transformer), ("vae", pipeline.vae))
    }


def config_defaults(pipeline: LaCTVideoPipeline) -> dict[str, dict]:
    """The transformer's and the VAE's config keys with a default in their constructors' signatures."""
    return {
        name: {
            key: parameter.default
            for key, parameter in inspect.signature(type(module).__init__).parameters.items()
            if parameter.default is not inspect.Parameter.empty
        }
        for name, module in (("transformer", pipeline.transformer), ("vae", pipeline.vae))
    }


def config_differences(
    saved: Mapping[str, Mapping], current: Mapping[str, Mapping], defaults: Mapping[str, Mapping] | None = None
) -> list[str]:
    """`component.key: state X, this model Y` for every key whose values differ (keys of `_IGNORED_CONFIG_KEYS`
    aside). A key the state lacks, saved before the key existed, matches this model's value if that is the key's
    default in `defaults` (component -> key -> default: what the state's model computed without it)."""
    differences = []
    defaults = defaults or {}
    for component in sorted(saved.keys() | current.keys()):
        old, new = saved.get(component, {}), current.get(component, {})
        old = {**{k: v for k, v in defaults.get(component, {}).items() if k in new and k not in old}, **old}
        for key in sorted(old.keys() | new.keys()):
            if key not in _IGNORED_CONFIG_KEYS.get(component, ()) and old.get(key) != new.get(key):
                differences.append(
                    f"{component}.{key}: state {old.get(key, '(absent)')!r}, this model {new.get(key, '(absent)')!r}"
                )
    return differences


def _tensors(value) -> list[torch.Tensor]:
    """Every tensor in `value`: a tensor, or (nested) dataclasses, named tuples, tuples and lists of them."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, LayerState):
        value = [getattr(value, f) for f in LayerState.__dataclass_fields__]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    return []


def _megabytes(tensors: list[torch.Tensor]) -> str:
    return f"{sum(t.numel() * t.element_size() for t in tensors) / 1e6:.1f} MB"


def _to(value, device: torch.device):
    return value.to(device) if isinstance(value, torch.Tensor) else value


def _lact_state_to(state: LaCTState, device: torch.device) -> LaCTState:
    """`state` with every tensor on `device` (a no-op for tensors already there)."""

    def move(value):
        return FastWeights(*(t.to(device) for t in value)) if isinstance(value, FastWeights) else _to(value, device)

    layers = tuple(
        LayerState(*(move(getattr(layer, f)) for f in LayerState.__dataclass_fields__)) for layer in state.layers
    )
    return LaCTState(layers, state.num_chunks)
