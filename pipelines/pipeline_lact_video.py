"""Text-to-video generation of any length with LaCT on Wan2.1, chunk by chunk, in diffusers.

Paper: "Test-Time Training Done Right" (LaCT, arXiv 2505.23884), Sec. 5.3; semantics in
docs/design.md, Sec. 3.3 "Chunk-by-chunk inference". Every chunk of `k` latent frames is
denoised against the model's explicit `LaCTState` (fast weights + window keys/values of the chunks
before it), then committed once as a clean chunk at t=0. Time and memory per chunk do not grow
with the video's length, so `stream` can write a video of any length (up to the rotary table).

Shapes: `B` batch, `C` latent channels, `F` latent frames, `k` latent frames per chunk, `h, w`
latent height/width, `H, W` video height/width.
"""

from __future__ import annotations

import difflib
import inspect
import os
import pathlib
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan, DiffusionPipeline, WanPipeline, WanTransformer3DModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput
from diffusers.schedulers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from diffusers.utils import logging, replace_example_docstring
from diffusers.utils.torch_utils import get_module_execution_device, randn_tensor
from diffusers.video_processor import VideoProcessor
from transformers import AutoTokenizer, UMT5EncoderModel

from lact_video.geometry import (
    check_chunking,
    chunk_count,
    denormalize_latents,
    latent_num_frames,
    latent_size,
    round_num_frames,
    vae_scale_factors,
    video_num_frames,
)
from lact_video.models import LaCTWanTransformer3DModel
from lact_video.models.lact_config import DEPRECATED_LACT_KEYS, LACT_CONFIG_KEYS
from lact_video.state import LaCTState, TextContext

from .generation_state import LaCTGenerationState, LaCTVideoChunk
from .lora import LaCTLoraLoaderMixin
from .prompt_schedule import PromptArgument, PromptSchedule, PromptText, ScheduledPrompts, schedule_entries
from .streaming import (
    VideoStreamWriter,
    VideoWriteError,
    WanStreamingDecoder,
    WrittenVideo,
    container_codec,
    partial_video_path,
    video_paths,
)
from .video_input import VideoChunks, open_video

logger = logging.get_logger(__name__)

OUTPUT_TYPES = ("np", "pt", "pil", "latent")
# `from_pretrained` keywords that say where to find the files (also needed to read `model_index.json`).
_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision")
# Every keyword `DiffusionPipeline.from_pretrained` takes besides components and config values. diffusers takes them
# as `kwargs.pop(...)` calls, not as a signature; tests/test_pipeline_inputs.py checks this list against its source.
DIFFUSERS_LOADING_KWARGS = (
    *_HUB_KWARGS,
    *("custom_pipeline", "custom_revision", "device_map", "disable_mmap", "dtype", "load_connected_pipeline"),
    *("low_cpu_mem_usage", "max_memory", "offload_folder", "offload_state_dict", "provider", "provider_options"),
    *("quantization_config", "sess_options", "torch_dtype", "trust_remote_code", "use_flashpack", "use_onnx"),
    *("use_safetensors", "variant"),
)

# `callback_on_step_end` as diffusers pipelines call it: `callback(pipe, step, timestep, callback_kwargs)`, returning
# the tensors it replaces (`{}` for none).
StepEndCallback = Callable[["LaCTVideoPipeline", int, torch.Tensor, dict[str, torch.Tensor]], dict[str, torch.Tensor]]

EXAMPLE_DOC_STRING = """
    Examples:
        ```python
        >>> from pipelines import LaCTVideoPipeline

        >>> # A plain Wan2.1 base, patched on load (untrained memory); a finetuned LaCT folder loads with
        >>> # `LaCTVideoPipeline.from_pretrained(path)` instead, without LaCT keywords.
        >>> pipe = LaCTVideoPipeline.from_wan("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", chunk_frames=3, fw_head_dim=768)
        >>> # Any length: 4 * F - 3 frames with F a multiple of chunk_frames (here 63 chunks, about 47 s at 16 fps)
        >>> pipe("A cat walks on the grass, realistic", num_frames=753, output_path="cat.mp4")
        >>> for frames in pipe.stream("A cat walks on the grass", num_frames=81):  # (1, f, H, W, 3) per chunk
        ...     print(frames.shape)  # 9 frames, then 12 per chunk
        ```
"""


@dataclass
class LaCTVideoPipelineOutput(WanPipelineOutput):
    r"""
    Output of `LaCTVideoPipeline`: `WanPipelineOutput` plus the files written and the generation state.

    Args:
        frames: as in `WanPipelineOutput`: np (B, F, H, W, 3), pt (B, F, 3, H, W), a list of lists of PIL
            images, or latents (B, C, F, h, w). `None` when the videos went to `output_path` instead.
        video_paths: the video files written (one per video) when `output_path` was given.
        written_videos: what those files hold, read back from them: frames, size, fps and codec.
        state: with `return_state=True`, the state after the last finished chunk, to go on from
            (`pipelines.generation_state.LaCTGenerationState`).
    """

    video_paths: list[str] | None = None
    written_videos: list[WrittenVideo] | None = None
    state: LaCTGenerationState | None = None


@dataclass(frozen=True)
class _GenerationSettings:
    """The arguments of one `LaCTVideoPipeline.__call__` or `stream` call but `return_dict`, defaults applied
    (documented in `__call__`): everything one generation needs, collected once."""

    prompt: PromptArgument | None
    negative_prompt: PromptArgument | None
    height: int
    width: int
    num_frames: int
    num_inference_steps: int
    guidance_scale: float
    num_videos_per_prompt: int | None
    generator: torch.Generator | list[torch.Generator] | None
    latents: torch.Tensor | None
    prompt_embeds: torch.Tensor | None
    negative_prompt_embeds: torch.Tensor | None
    output_type: str | None
    callback_on_step_end: StepEndCallback | PipelineCallback | MultiPipelineCallbacks | None
    callback_on_step_end_tensor_inputs: list[str]
    max_sequence_length: int
    output_path: str | os.PathLike | list | None
    fps: int
    state: LaCTGenerationState | None
    return_state: bool
    video: Any
    video_latents: torch.Tensor | None
    return_input_video: bool

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Any]) -> _GenerationSettings:
        """The settings among a call's arguments, by name; other names (`self`, `return_dict`) are left out."""
        return cls(**{field.name: arguments[field.name] for field in fields(cls)})


@dataclass(frozen=True)
class _EncodedPrompt:
    """A prompt as the transformer takes it (a plain prompt, or one entry of a schedule with the negative entry
    in force beside it: `ScheduledPrompts`), through every call of its chunks.

    `embeds` and `negative_embeds` (B, L, D) are what callbacks see and may replace. `text_context`, their
    cross-attention keys and values, is projected by the first transformer call with this prompt and handed back
    for every later call (through the transformer's forward, so that offloading hooks run); `None` until then, and
    again after a callback replaced the embeddings.
    """

    embeds: torch.Tensor
    negative_embeds: torch.Tensor | None
    text_context: TextContext | None = None


@dataclass
class _KeptLatents:
    """The latents of the chunks written to video files, (B, C, k, h, w) each on the CPU (1/48 of the frames'
    size), and the VAE decoder's causal cache before the first of them: what `decode_latents` needs to give their
    frames again if a writer fails. The cache is `None` when the files start the video (a fresh decoder); after a
    resumed state's chunks or a clip's it is theirs, without which the first frames would decode as a video's first.
    """

    chunks: list[torch.Tensor] = field(default_factory=list)
    decoder_cache: tuple | None = None

    def add(self, latents: torch.Tensor, decoder: WanStreamingDecoder) -> None:
        """Keep a chunk's latents before `decoder` decodes them (its cache then is the one to start from)."""
        if not self.chunks and any(slot is not None for slot in decoder.feat_cache):
            self.decoder_cache = tuple(decoder.feat_cache)  # the VAE replaces slots, never writes into them
        self.chunks.append(latents.cpu())

    def save(self, path: str) -> str:
        """Save the latents (B, C, F, h, w) beside `path` (`video.latents.pt`; in a temporary folder if that fails)
        with `torch.save`, and the decoder cache, if any, as `video.decoder_cache.pt`; returns a sentence saying
        where and how to decode them."""
        if not self.chunks:
            return "no chunk was generated, so no latents are saved"
        latents = torch.cat(self.chunks, dim=2)
        files = {".latents.pt": latents}
        if self.decoder_cache is not None:
            files[".decoder_cache.pt"] = [s.cpu() if isinstance(s, torch.Tensor) else s for s in self.decoder_cache]
        stem = pathlib.Path(path).with_suffix("")
        try:
            saved = {suffix: _save(value, stem.with_name(stem.name + suffix)) for suffix, value in files.items()}
        except OSError:
            folder = pathlib.Path(tempfile.mkdtemp(prefix="lact_video_"))
            saved = {suffix: _save(value, folder / (stem.name + suffix)) for suffix, value in files.items()}
        decode = f"pipe.decode_latents(torch.load({saved['.latents.pt']!r}))"
        why = ""
        if self.decoder_cache is not None:
            decode = decode[:-1] + f", decoder_cache=torch.load({saved['.decoder_cache.pt']!r}))"
            why = (
                " (the VAE decoder's cache after the chunks before them, a resumed state's or a clip's, so that they "
                "decode as in the video)"
            )
        return (
            f"the generated latents {tuple(latents.shape)} (B, C, F, h, w; a row per video) are "
            f"saved in {saved['.latents.pt']}: `{decode}` gives their frames{why}"
        )


def _save(value, path: pathlib.Path) -> str:
    torch.save(value, path)
    return str(path)


def _rows_per_video(embeds: torch.Tensor, batch_size: int, num_videos_per_prompt: int) -> torch.Tensor:
    """Caller-supplied embeddings, (batch_size or 1, L, D), as one row per video, (batch_size * n, L, D): every
    prompt's copies side by side, the order `WanPipeline.encode_prompt` gives encoded prompts. One row serves
    every prompt, as one negative prompt string does."""
    return embeds.expand(batch_size, -1, -1).repeat_interleave(num_videos_per_prompt, dim=0)


def _same_length(
    embeds: torch.Tensor, negative_embeds: torch.Tensor | None, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Both guidance branches' embeddings (B, L, D) and (B, L', D) on `device` in `dtype`, the shorter padded with
    zero rows to the longer length, so that they batch as rows of one forward. Wan pads every prompt with zeros
    to `max_sequence_length` (`WanPipeline._get_t5_prompt_embeds`), so this equals encoding both at the longer
    length."""
    embeds = embeds.to(device=device, dtype=dtype)
    if negative_embeds is None:
        return embeds, None
    negative_embeds = negative_embeds.to(device=device, dtype=dtype)
    length = max(embeds.shape[1], negative_embeds.shape[1])
    embeds, negative_embeds = (F.pad(x, (0, 0, 0, length - x.shape[1])) for x in (embeds, negative_embeds))
    return embeds, negative_embeds


def _concatenate_chunks(chunks: list[np.ndarray | torch.Tensor | list], output_type: str):
    """Chunks' frames (see `LaCTVideoPipeline.stream`) joined along the frame axis, as `__call__` returns them."""
    if output_type == "np":
        return np.concatenate(chunks, axis=1)
    if output_type == "pil":
        videos = None
        for frames in chunks:
            videos = frames if videos is None else [v + f for v, f in zip(videos, frames)]
        return videos
    return torch.cat(chunks, dim=1 if output_type == "pt" else 2)  # pt: (B, F, 3, H, W); latent: (B, C, F, h, w)


def _as_normal_tensor(x: torch.Tensor) -> torch.Tensor:
    """A copy of an inference-mode tensor that can be modified in place outside inference mode."""
    with torch.inference_mode(False):
        return x.clone()


def _init_parameters(pipeline_class: type[DiffusionPipeline]) -> tuple[str, ...]:
    """The components and config values a pipeline class takes, by name (keywords of its `from_pretrained`)."""
    return tuple(name for name in inspect.signature(pipeline_class.__init__).parameters if name != "self")


def _check_known_kwargs(kwargs: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    """Refuse keywords that neither `where` nor `DiffusionPipeline.from_pretrained` takes, which diffusers would
    ignore with a warning: a mistyped LaCT key (`chunk_frame=3`) would load a model with the default instead.

    Raises:
        ValueError: naming each unknown keyword and its closest known one.
    """
    known = (*known, *DIFFUSERS_LOADING_KWARGS)
    unknown = [key for key in kwargs if key not in known]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, known, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(
            f"{where} got unknown keyword arguments: {', '.join(hints)}. It takes the LaCT config keys "
            f"({', '.join(LACT_CONFIG_KEYS)}; for a plain Wan2.1 folder only), the pipeline's components, and the "
            "loading keywords of `DiffusionPipeline.from_pretrained`."
        )


class LaCTVideoPipeline(DiffusionPipeline, LaCTLoraLoaderMixin):
    r"""
    Autoregressive text-to-video generation with a LaCT-patched Wan2.1 transformer, chunk by chunk.

    Same components as `WanPipeline`, with the transformer replaced by `LaCTWanTransformer3DModel`. Load a
    saved LaCT pipeline with `from_pretrained`, or patch a plain Wan2.1 base with `from_wan`. Wan2.1 LoRAs load
    with `load_lora_weights`, as in `WanPipeline` (`pipelines.lora.LaCTLoraLoaderMixin`).

    Args:
        tokenizer ([`T5Tokenizer`]): the UMT5 tokenizer.
        text_encoder ([`UMT5EncoderModel`]): the UMT5 text encoder.
        vae ([`AutoencoderKLWan`]): the Wan VAE, decoded chunk by chunk with its causal cache.
        scheduler ([`UniPCMultistepScheduler`] or [`FlowMatchEulerDiscreteScheduler`]): flow-matching scheduler,
            reset for every chunk.
        transformer ([`LaCTWanTransformer3DModel`], *optional*): the LaCT transformer. As in `WanPipeline`, it may
            be `None`, e.g. to encode prompts alone; generating then raises.
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _optional_components = ["transformer"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(
        self,
        tokenizer: AutoTokenizer,
        text_encoder: UMT5EncoderModel,
        vae: AutoencoderKLWan,
        scheduler: UniPCMultistepScheduler | FlowMatchEulerDiscreteScheduler,
        transformer: LaCTWanTransformer3DModel | None = None,
    ):
        super().__init__()
        if transformer is not None and not isinstance(transformer, LaCTWanTransformer3DModel):
            raise TypeError(
                f"LaCTVideoPipeline needs a LaCTWanTransformer3DModel, got {type(transformer).__name__}. To start "
                "from a plain Wan2.1 base model, use `LaCTVideoPipeline.from_wan(path, **lact_config)`."
            )
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, scheduler=scheduler
        )
        vae_config = self.vae.config if getattr(self, "vae", None) else None
        self.vae_scale_factor_temporal, self.vae_scale_factor_spatial = vae_scale_factors(vae_config)
        self.video_processor = VideoProcessor(vae_scale_factor=self.vae_scale_factor_spatial)

    @classmethod
    def from_wan(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        torch_dtype: torch.dtype | dict | None = None,
        rope_max_seq_len: int | None = None,
        **kwargs,
    ) -> "LaCTVideoPipeline":
        """Load a plain Wan2.1 T2V diffusers folder (or hub id) and patch its transformer with LaCT.

        The new LaCT parameters start at their initial values (the memory gate is zero), so the model is
        pure window attention until it is finetuned; it generates nonetheless.

        Args:
            pretrained_model_name_or_path: a `WanPipeline` folder or hub id.
            torch_dtype: as in `DiffusionPipeline.from_pretrained`.
            rope_max_seq_len: override the rotary table length (latent frames; the default of Wan2.1 is 1024).
                It holds no weights, so raising it is free; it bounds how long a video can be.
            kwargs: LaCT config keys (`chunk_frames`, `window_size`, `fw_head_dim`, ...; see
                `LaCTWanTransformer3DModel`; the deprecated names warn); any other keyword goes to
                `WanPipeline.from_pretrained`.
        """
        _check_known_kwargs(
            kwargs,
            (*LACT_CONFIG_KEYS, *DEPRECATED_LACT_KEYS, *_init_parameters(WanPipeline)),
            "LaCTVideoPipeline.from_wan",
        )
        lact_config = {key: kwargs.pop(key) for key in (*LACT_CONFIG_KEYS, *DEPRECATED_LACT_KEYS) if key in kwargs}
        components = {}
        if rope_max_seq_len is not None:  # a config override: load the transformer ourselves
            dtype = torch_dtype
            if isinstance(torch_dtype, dict):
                dtype = torch_dtype.get("transformer", torch_dtype.get("default", torch.float32))
            components["transformer"] = WanTransformer3DModel.from_pretrained(
                pretrained_model_name_or_path,
                subfolder="transformer",
                dtype=dtype,
                rope_max_seq_len=rope_max_seq_len,
                **{k: v for k, v in kwargs.items() if k in _HUB_KWARGS},
            )
        # diffusers >= 0.42 names it `dtype` (and deprecates `torch_dtype`, the name this method keeps for now).
        wan = WanPipeline.from_pretrained(pretrained_model_name_or_path, dtype=torch_dtype, **components, **kwargs)
        if wan.transformer is None or wan.transformer_2 is not None:
            raise ValueError(
                "LaCT patches single-transformer Wan2.1 T2V models; this folder has no `transformer`, "
                "or has a `transformer_2`."
            )
        return cls(
            tokenizer=wan.tokenizer,
            text_encoder=wan.text_encoder,
            vae=wan.vae,
            scheduler=wan.scheduler,
            transformer=LaCTWanTransformer3DModel.from_wan(wan.transformer, **lact_config),
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "LaCTVideoPipeline":
        """Load a LaCT pipeline folder (exported by finetuning, or written by `save_pretrained`), or a plain
        Wan2.1 T2V folder, which is patched on load as `from_wan` does (LaCT config keys as keyword
        arguments, e.g. `chunk_frames=3, fw_head_dim=768`; the memory is then untrained: window attention
        only). Other keywords are those of `DiffusionPipeline.from_pretrained`.
        """
        index = cls.load_config(pretrained_model_name_or_path, **{k: v for k, v in kwargs.items() if k in _HUB_KWARGS})
        if index.get("transformer", [None, None])[1] == WanTransformer3DModel.__name__:
            logger.warning(
                f"{pretrained_model_name_or_path} is a plain Wan2.1 pipeline: patching its transformer with LaCT. The "
                "fast-weight memory is untrained (its gate is zero), so this is window attention only until finetuned."
            )
            return cls.from_wan(pretrained_model_name_or_path, **kwargs)
        lact_keys = sorted(set(kwargs) & {*LACT_CONFIG_KEYS, *DEPRECATED_LACT_KEYS})
        if lact_keys:
            raise ValueError(
                f"{lact_keys} configure the patching of a plain Wan2.1 folder, but {pretrained_model_name_or_path} "
                "already holds a LaCT transformer, whose config sets them (and whose weights depend on them). Load it "
                "without them, or patch the Wan base again with `LaCTVideoPipeline.from_wan(base, ...)`."
            )
        _check_known_kwargs(kwargs, _init_parameters(cls), "LaCTVideoPipeline.from_pretrained")
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    # Prompt encoding is exactly Wan's (it only touches the tokenizer and the text encoder): reuse it.
    _get_t5_prompt_embeds = WanPipeline._get_t5_prompt_embeds
    encode_prompt = WanPipeline.encode_prompt

    # Copied from diffusers.pipelines.wan.pipeline_wan.WanPipeline.check_inputs with guidance_scale_2->output_type
    def check_inputs(
        self,
        prompt,
        negative_prompt,
        height,
        width,
        prompt_embeds=None,
        negative_prompt_embeds=None,
        callback_on_step_end_tensor_inputs=None,
        output_type="np",
    ):
        if height % 16 != 0 or width % 16 != 0:
            raise ValueError(f"`height` and `width` have to be divisible by 16 but are {height} and {width}.")

        if callback_on_step_end_tensor_inputs is not None and not all(
            k in self._callback_tensor_inputs for k in callback_on_step_end_tensor_inputs
        ):
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` has to be in {self._callback_tensor_inputs}, but found {[k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]}"
            )

        if prompt is not None and prompt_embeds is not None:
            raise ValueError(
                f"Cannot forward both `prompt`: {prompt} and `prompt_embeds`: {prompt_embeds}. Please make sure to"
                " only forward one of the two."
            )
        elif negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError(
                f"Cannot forward both `negative_prompt`: {negative_prompt} and `negative_prompt_embeds`: {negative_prompt_embeds}. Please make sure to"
                " only forward one of the two."
            )
        elif prompt is None and prompt_embeds is None:
            raise ValueError(
                "Provide either `prompt` or `prompt_embeds`. Cannot leave both `prompt` and `prompt_embeds` undefined."
            )
        # A text, a batch of texts, or a schedule of them (pipelines/prompt_schedule.py); an empty negative text is
        # Wan's default.
        schedule_entries(prompt, "prompt")
        schedule_entries(negative_prompt, "negative_prompt", negative=True)

        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {list(OUTPUT_TYPES)}, got {output_type!r}.")

    @staticmethod
    def check_prompt_embeds(
        batch_size: int, prompt_embeds: torch.Tensor | None, negative_prompt_embeds: torch.Tensor | None
    ) -> None:
        """Check embeddings the caller supplies against the prompt batch: (B, L, D) `prompt_embeds` and
        (B or 1, L', D) `negative_prompt_embeds`, B the number of prompts. Any L, L': the shorter is padded.

        Raises:
            ValueError: naming both shapes, when the rows or the embedding width D do not match.
        """
        supplied = {"prompt_embeds": prompt_embeds, "negative_prompt_embeds": negative_prompt_embeds}
        supplied = {name: x for name, x in supplied.items() if x is not None}
        shapes = ", ".join(f"`{name}` {tuple(x.shape)}" for name, x in supplied.items())
        for name, x in supplied.items():
            rows = (batch_size,) if name == "prompt_embeds" else (batch_size, 1)
            if x.ndim != 3 or x.shape[0] not in rows:
                raise ValueError(
                    f"`{name}` must be (B, L, D) with B = {' or '.join(map(str, rows))} (one row per prompt; "
                    f"`num_videos_per_prompt` repeats them), for {batch_size} prompt(s); got {shapes}."
                )
        if len({x.shape[2] for x in supplied.values()}) > 1:
            raise ValueError(f"The embeddings' widths D differ: {shapes}. Encode both with the same text encoder.")

    def check_output_path(
        self, output_path: str | os.PathLike | list | None, output_type: str, num_videos: int, video: Any = None
    ) -> list[str]:
        """The video file of every video (see `video_paths`), each checked before any denoising step: its container
        must be one the writer encodes (`pipelines.streaming.CONTAINER_CODECS`), and it must not be the `video`
        file to continue (through a symlink, a relative path or a hard link too), which writing it would destroy
        before it is read. (`VideoStreamWriter` opens the files before the first step too, so an unwritable path
        fails then.)

        Raises:
            ValueError: naming the file and the supported containers, or the file and the clip it would overwrite.
        """
        if output_path is None:
            return []
        if output_type == "latent":
            raise ValueError("`output_path` writes decoded frames; it cannot be used with output_type='latent'.")
        paths = video_paths(output_path, num_videos)
        for path in paths:
            container_codec(path)
            if isinstance(video, (str, os.PathLike)) and os.path.exists(video):
                for written in (path, partial_video_path(path)):  # the writer writes the second, then renames it
                    if os.path.exists(written) and os.path.samefile(written, video):
                        raise ValueError(
                            f"`output_path` {path} would overwrite the clip to continue, `video` {video} (the same "
                            f"file as {written}), before it is read. Choose another `output_path`."
                        )
        return paths

    def check_num_frames(self, num_frames: int, continuing: bool = False, first_chunk: int = 0) -> int:
        """Round `num_frames` to whole chunks and check it against the rotary table; returns the new value.

        Valid values are `4 * F - 3` with `F` latent frames a multiple of `chunk_frames`. Like `WanPipeline`,
        other values are rounded down (to `4n + 1`, then to whole chunks, at least one) with one warning.
        `continuing`: the frames follow earlier chunks, so they count the new frames only, `4 * chunk_frames`
        per chunk (other values are rounded down to whole chunks, at least one, with a warning); the rotary
        table must then reach the last new chunk's absolute index, counted from `first_chunk`, the first new one.
        """
        t, k = self.vae_scale_factor_temporal, self.transformer.config.chunk_frames
        requested = num_frames
        if continuing:
            step = t * k
            num_frames = max(num_frames // step, 1) * step
            if num_frames != requested:
                logger.warning(
                    f"num_frames={requested} counts the new frames only, after the {chunk_count(first_chunk)} "
                    f"before this call (a state's or a clip's), {step} per chunk (chunk_frames={k}): generating "
                    f"num_frames={num_frames} ({chunk_count(num_frames // step)}) instead."
                )
            return self._check_rotary_table(num_frames, first_chunk * k + num_frames // t, first_chunk)
        rounded = round_num_frames(num_frames, k, t)
        num_frames, num_latent_frames = rounded.num_frames, rounded.latent_frames
        if rounded.to_4n_plus_1 or rounded.to_whole_chunks:  # one warning for both roundings
            examples = ", ".join(str(video_num_frames(k * n, t)) for n in (1, 2, 3))
            logger.warning(
                f"num_frames={requested} is not a whole number of chunks of chunk_frames={k} latent frames: valid "
                f"values are {t} * F - {t - 1} with F a multiple of {k} ({examples}, ...). Generating "
                f"num_frames={num_frames} ({num_latent_frames} latent frames, {chunk_count(num_latent_frames // k)}) "
                "instead."
            )
        return self._check_rotary_table(num_frames, num_latent_frames)

    def _check_rotary_table(self, num_frames: int, num_latent_frames: int, first_chunk: int = 0) -> int:
        """Refuse a video whose last chunk ends at latent frame `num_latent_frames` (absolute; this call's frames
        start at chunk `first_chunk`) past the rotary table; returns `num_frames`. Only absolute positions can
        pass the table: a bounded `position_policy` (with `trained_chunks`) stops them below it."""
        t, k = self.vae_scale_factor_temporal, self.transformer.config.chunk_frames
        limit = self.transformer.config.rope_max_seq_len
        if self.transformer.rotary_latent_frames(num_latent_frames) > limit:  # a bounded position_policy stops early
            longest = video_num_frames(limit // k * k, t)
            earlier = (
                f": the {chunk_count(first_chunk)} before this call, a state's or a clip's, included"
                if first_chunk
                else ""
            )
            config = self.transformer.config
            policy = f"position_policy={str(getattr(config.position_policy, 'value', config.position_policy))!r}"
            if config.trained_chunks is None:
                policy += " (trained_chunks unknown, so absolute positions)"
            raise ValueError(
                f"num_frames={num_frames} needs {num_latent_frames} latent frames (the video's, counted from its "
                f"start{earlier}), under {policy} past the transformer's rotary table (rope_max_seq_len={limit} latent frames: at most "
                f"num_frames={longest} in all). The table holds no weights, "
                "so raise it when loading: `LaCTVideoPipeline.from_wan(path, rope_max_seq_len=..., **lact_config)`, or "
                "`transformer=LaCTWanTransformer3DModel.from_pretrained(path, subfolder='transformer', "
                "rope_max_seq_len=...)` passed to `LaCTVideoPipeline.from_pretrained`; or load it with "
                "a bounded position_policy ('clamp' or 'cyclic', with trained_chunks), whose positions stop there."
            )
        return num_frames

    def prepare_latents(
        self,
        batch_size: int,
        num_channels_latents: int = 16,
        height: int = 480,
        width: int = 832,
        num_frames: int = 81,
        dtype: torch.dtype | None = None,
        device: torch.device | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
    ) -> Iterator[torch.Tensor]:
        """The initial noise, one chunk at a time: an iterator of (B, C, k, h, w) tensors.

        Mirrors `WanPipeline.prepare_latents`, but the noise is drawn lazily, chunk by chunk, from `generator`,
        so a longer video with the same seed starts with exactly the noise (and so the frames) of a shorter one,
        and no noise for the whole video is ever held. `latents`, if given, is the whole (B, C, F, h, w) noise.
        """
        k = self.transformer.config.chunk_frames
        num_latent_frames = latent_num_frames(num_frames, self.vae_scale_factor_temporal)
        h, w = latent_size(height, width, self.vae_scale_factor_spatial)
        shape = (batch_size, num_channels_latents, num_latent_frames, h, w)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"You have passed a list of generators of length {len(generator)}, but requested an effective batch"
                f" size of {batch_size}. Make sure the batch size matches the length of the generators."
            )
        if latents is not None:
            if tuple(latents.shape) != shape:
                raise ValueError(f"`latents` must have shape {shape} (B, C, F, h, w), got {tuple(latents.shape)}.")
            return (chunk.to(device=device, dtype=dtype) for chunk in latents.split(k, dim=2))
        chunk_shape = (batch_size, num_channels_latents, k, h, w)
        return (
            randn_tensor(chunk_shape, generator=generator, device=device, dtype=dtype)
            for _ in range(num_latent_frames // k)
        )

    @property
    def guidance_scale(self):
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self):
        return self._guidance_scale > 1.0

    @property
    def num_timesteps(self):
        """Denoising steps of the whole video, `num_chunks * steps per chunk`: the number of callback calls."""
        return self._num_timesteps

    @property
    def current_timestep(self):
        return self._current_timestep

    @property
    def current_chunk(self):
        """Index of the chunk being denoised, counted from the video's first chunk (after a `state=`, its chunks
        included); `None` outside generation."""
        return self._current_chunk

    @property
    def interrupt(self):
        return self._interrupt

    def stream(self, *args, **kwargs) -> Iterator[np.ndarray | torch.Tensor | list | LaCTVideoChunk]:
        r"""
        Generate chunk by chunk and yield every chunk's frames as soon as it is decoded.

        Takes the arguments of `__call__`. Yields, per chunk, the batch's new frames in the `output_type` of
        `__call__`'s `frames`: np (B, f, H, W, 3) floats in [0, 1], pt (B, f, 3, H, W), a list of B lists of PIL
        images, or latents (B, C, k, h, w). Chunk 0 has `f = 4k - 3` frames, every later chunk `4k` (continuing a
        `video`, the new chunks follow the clip's, which come first with `return_input_video` only);
        concatenating them along the frame axis gives `__call__`'s frames. With `output_path`, the frames are
        also appended to video file(s) as they come, and what the files hold is logged when they close. No frames
        accumulate, so memory stays flat however long the video is (but for the latents kept while writing
        files, 1/48 of the frames' size; see `__call__`). Stopping the iteration early closes the files with the
        chunks so far.

        With `return_state=True`, every item is a `LaCTVideoChunk(frames, state)` instead: the frames, and the
        state after that chunk (committed, the last one too), which `state=` takes to go on from there, at once or
        after `state.save(path)` in another process. The state goes out with each chunk, rather than through an
        object passed in, so that it stays explicit and immutable, and so that a caller who stops iterating at any
        chunk holds the state that fits the frames it has. A chunk interrupted by `pipe._interrupt` comes with the
        state after the last chunk that finished (docs/design.md, Sec. 3.6).

        Generation runs under `torch.inference_mode`. The tensors yielded here are ordinary tensors, but those a
        `callback_on_step_end` receives are inference tensors: to keep one and edit it in place after the call,
        clone it under `torch.inference_mode(False)`. So are the state's: they are never modified in place.
        """
        # Bound when the first chunk is asked for, as the arguments of the inference_mode-wrapped generator
        # were before; a wrong one raises the TypeError Python would.
        try:
            arguments = inspect.signature(self.stream).bind(*args, **kwargs)
        except TypeError as error:
            raise TypeError(f"{LaCTVideoPipeline.stream.__qualname__}() {error}") from None
        arguments.apply_defaults()
        settings = _GenerationSettings.from_arguments(arguments.arguments)
        for chunk in self._generate(settings):
            yield chunk if settings.return_state else chunk.frames

    # inference_mode rather than no_grad: a chunk's forward is a few hundred small kernels, and skipping
    # autograd's view and version bookkeeping on each pays (README, Benchmarks). Yielded tensors are copied out
    # of inference mode (`_as_normal_tensor`), so callers may still modify them in place.
    @torch.inference_mode()
    def _generate(
        self, settings: _GenerationSettings, written_videos: list[WrittenVideo] | None = None
    ) -> Iterator[LaCTVideoChunk]:
        """The generation behind `stream` and `__call__`: yields every chunk's frames (see `stream`) with the state
        after it (`None` without `return_state`).

        With `output_path`, what the files hold (read back from them) is logged and appended to `written_videos`.
        """
        callback = settings.callback_on_step_end
        if isinstance(callback, (PipelineCallback, MultiPipelineCallbacks)):
            settings = replace(settings, callback_on_step_end_tensor_inputs=callback.tensor_inputs)

        # 1. Check inputs. Raise error if not correct
        if self.transformer is None:
            raise ValueError(
                "This LaCTVideoPipeline has no transformer (built with transformer=None, which is enough for "
                "`encode_prompt`). Load one to generate: `LaCTVideoPipeline.from_pretrained(path)`."
            )
        self.check_inputs(
            settings.prompt,
            settings.negative_prompt,
            settings.height,
            settings.width,
            settings.prompt_embeds,
            settings.negative_prompt_embeds,
            settings.callback_on_step_end_tensor_inputs,
            settings.output_type,
        )
        if settings.state is not None and (settings.video is not None or settings.video_latents is not None):
            raise ValueError(
                "A clip (`video=` / `video_latents=`) starts a video, and `state=` goes on with one: pass one of them. "
                "To continue a clip and go on later, pass the clip with `return_state=True`, then `state=` the state "
                "handed back (docs/design.md, Sec. 3.8)."
            )
        clip = self._open_video(settings)
        # The first chunk this call generates, by absolute index: after a resumed state's chunks, or a clip's.
        first_chunk = settings.state.next_chunk if settings.state is not None else 0
        if clip is not None:
            first_chunk = clip.num_chunks
        num_frames = self.check_num_frames(settings.num_frames, continuing=first_chunk > 0, first_chunk=first_chunk)
        num_latent_frames = latent_num_frames(num_frames, self.vae_scale_factor_temporal)
        num_chunks = check_chunking(num_latent_frames, self.transformer.config.chunk_frames)

        self._guidance_scale = settings.guidance_scale
        self._current_timestep = None
        self._current_chunk = None
        self._interrupt = False

        device = self._execution_device

        # 2. Define call parameters, and check the output files before any work. Every prompt is a schedule by
        # absolute chunk index (one entry for a plain text); its frames round to chunk starts here.
        k, t = self.transformer.config.chunk_frames, self.vae_scale_factor_temporal
        schedule = PromptSchedule.from_argument(settings.prompt, settings.prompt_embeds, "prompt", k, t)
        negative_schedule = PromptSchedule.from_argument(
            settings.negative_prompt or "", settings.negative_prompt_embeds, "negative_prompt", k, t, negative=True
        )
        batch_size = schedule.batch_size
        self.check_prompt_embeds(batch_size, settings.prompt_embeds, settings.negative_prompt_embeds)
        num_videos = batch_size * settings.num_videos_per_prompt
        paths = self.check_output_path(settings.output_path, settings.output_type, num_videos, settings.video)
        if clip is not None and clip.batch_size not in (1, batch_size):
            raise ValueError(
                f"The clip to continue has {clip.batch_size} rows for {batch_size} prompts: pass one clip for all, "
                "or one per prompt."
            )
        if settings.state is not None:
            settings.state.check_matches(
                self,
                height=settings.height,
                width=settings.width,
                num_videos=num_videos,
                guidance=self.do_classifier_free_guidance,
                decoding=settings.output_type != "latent",
            )

        # 3. Encode input prompt: every schedule entry in force in this video once, as `encode_prompt` does, and
        # embeddings the caller supplied get the rows and length of encoded ones. The negative prompt is not used
        # without guidance.
        transformer_dtype = self.transformer.dtype
        prompts = ScheduledPrompts(
            schedule,
            negative_schedule if self.do_classifier_free_guidance else None,
            range(0 if clip is not None else first_chunk, first_chunk + num_chunks),  # a clip's chunks too
            lambda value: self._embed_prompt(value, settings, batch_size, device),
            lambda embeds, negative_embeds: _EncodedPrompt(
                *_same_length(embeds, negative_embeds, device, transformer_dtype)
            ),
            goes_on=settings.return_state,
        )

        # 4. Prepare timesteps. Every chunk runs the whole schedule, so `num_timesteps` (the number of
        # callback calls) is chunks x steps.
        self.scheduler.set_timesteps(settings.num_inference_steps, device=device)
        self._num_timesteps = num_chunks * len(self.scheduler.timesteps)

        # 5. Prepare the inference state (new, or the one to go on from), the latent variables (lazily, chunk by
        # chunk) and the outputs
        state = self.transformer.init_state()
        decoder = WanStreamingDecoder(self.vae) if settings.output_type != "latent" else None
        if decoder is not None and self.vae.use_tiling:
            logger.warning("Streaming decoding runs one latent frame at a time and does not use VAE tiling.")
        generator = settings.generator
        if settings.state is not None:
            state, generator = settings.state.resume(decoder, generator, device)
        handed_state = None  # the state after the last finished chunk, handed out with each chunk
        if settings.return_state:
            handed_state = LaCTGenerationState.begin(
                self, state, decoder, generator, height=settings.height, width=settings.width, num_videos=num_videos
            )
        chunk_noise = self.prepare_latents(
            num_videos,
            self.transformer.config.in_channels,
            settings.height,
            settings.width,
            num_frames,
            torch.float32,
            device,
            generator,
            settings.latents,
        )
        writers = []
        # With files to write, the chunks' latents are kept, so that a failing writer loses none of the generated
        # video (`_close_writers` saves them).
        kept_latents = _KeptLatents()
        stopped_by = None  # an error that ends the generation midway: the files are then partial
        try:
            writers.extend(VideoStreamWriter(p, settings.height, settings.width, settings.fps) for p in paths)
            if clip is not None:  # 5b. The clip's chunks first, committed as the video's chunks 0, 1, ...
                state, handed_state = yield from self._ingest_video(
                    clip, state, prompts, num_videos, decoder, generator, handed_state, writers, kept_latents, settings
                )

            # 6. Chunk loop; the bar counts every denoising step of the video and names the chunk
            with self.progress_bar(total=self._num_timesteps) as progress_bar:
                for chunk_index in range(num_chunks):
                    if self.interrupt:
                        break
                    self._current_chunk = first_chunk + chunk_index
                    progress_bar.set_postfix_str(f"chunk {chunk_index + 1}/{num_chunks}", refresh=False)

                    # 6a. This chunk's noise (B, C, k, h, w), drawn only now
                    latents = next(chunk_noise)

                    # 6b. Denoise against the state (which the denoising passes do not change), with the prompt
                    # scheduled at this absolute chunk index
                    prompt = prompts.at(first_chunk + chunk_index)
                    latents, prompt = self._denoise_chunk(latents, state, prompt, settings, chunk_index, progress_bar)

                    # 6c. Commit the finished chunk with the prompt that generated it. The last chunk has no
                    # successor, so its commit is skipped, unless the state after it is handed out.
                    finished = not self.interrupt
                    if finished and (chunk_index < num_chunks - 1 or settings.return_state):
                        state, prompt = self._commit_chunk(latents, state, prompt)
                    prompts.update(
                        first_chunk + chunk_index, prompt
                    )  # its projection, or a callback's replacement, carries on

                    # 6d. Decode this chunk (the VAE's causal cache carries over) and hand it out, with the state
                    if writers:
                        kept_latents.add(latents, decoder)
                    frames = self._decode_chunk(latents, decoder, writers, settings.output_type)
                    if settings.return_state and finished:
                        handed_state = handed_state.after_chunk(state, decoder, generator)
                    yield LaCTVideoChunk(frames, handed_state)
        except GeneratorExit:
            raise  # the caller stopped iterating: the files are whole videos of the chunks so far
        except BaseException as error:
            stopped_by = error
            raise
        finally:
            # 7. Close the files (also when the caller stops early) and offload all models
            self._current_chunk = None
            self.maybe_free_model_hooks()
            written = self._close_writers(writers, kept_latents, stopped_by)
            if written_videos is not None:
                written_videos.extend(written)

    def _open_video(self, settings: _GenerationSettings) -> VideoChunks | None:
        """The clip to continue (`video` or `video_latents`) cut into chunks, checked before any work
        (`video_input.open_video`); None without one."""
        config = self.transformer.config
        return open_video(
            settings.video,
            settings.video_latents,
            (settings.height, settings.width),
            settings.fps,
            chunk_frames=config.chunk_frames,
            latent_channels=config.in_channels,
            temporal_factor=self.vae_scale_factor_temporal,
            spatial_factor=self.vae_scale_factor_spatial,
        )

    def _ingest_video(
        self,
        clip: VideoChunks,
        state: LaCTState,
        prompts: ScheduledPrompts[_EncodedPrompt],
        num_videos: int,
        decoder: WanStreamingDecoder | None,
        generator: torch.Generator | list[torch.Generator] | None,
        handed_state: LaCTGenerationState | None,
        writers: list[VideoStreamWriter],
        kept_latents: _KeptLatents,
        settings: _GenerationSettings,
    ) -> Iterator[LaCTVideoChunk]:
        """Commit the clip's chunks into `state` one at a time, as clean chunks at t=0, the way generated chunks are
        committed, each with the prompt scheduled at its absolute chunk index; the state and the state to hand out
        (`None` without `return_state`) come back as the generator's return value (docs/design.md, Sec. 3.8).

        Each chunk is encoded (the VAE's causal cache carried, `VideoChunks.latents`) and decoded through the
        video's `decoder`, which primes its causal cache, so that the first generated frames join the clip without
        a seam. With `return_input_video`, the decoded frames are yielded (and written) like generated chunks.
        """
        device = self._execution_device
        for latents in clip.latents(self.vae):
            # One clip for all videos, or one per prompt: (rows, C, k, h, w) -> a row per video, as the prompts
            latents = latents.to(device).repeat_interleave(num_videos // clip.batch_size, dim=0)
            chunk = state.num_chunks  # the absolute index
            state, prompt = self._commit_chunk(latents, state, prompts.at(chunk))
            prompts.update(chunk, prompt)  # its projection carries on to the entry's later chunks
            frames = None
            if settings.return_input_video:
                if writers:
                    kept_latents.add(latents, decoder)
                frames = self._decode_chunk(latents, decoder, writers, settings.output_type)
            elif decoder is not None:
                decoder.decode(self._denormalize(latents))
            if handed_state is not None:
                handed_state = handed_state.after_chunk(state, decoder, generator)
            if settings.return_input_video:
                yield LaCTVideoChunk(frames, handed_state)
        return state, handed_state

    def _close_writers(
        self, writers: list[VideoStreamWriter], kept_latents: _KeptLatents, stopped_by: BaseException | None
    ) -> list[WrittenVideo]:
        """Close every file and return what each holds. After a whole generation (or one the caller stopped), the
        files take their names; when an error `stopped_by` ended it midway, each keeps the frames written so far
        under its partial name (`VideoStreamWriter.close`), named in a warning and in a note on the error, and an
        earlier file at the path is left as it was. If any writer failed, save the generated latents
        (`_KeptLatents.save`) and raise.

        Raises:
            VideoWriteError: naming every failed file, ffmpeg's words, and where the latents are.
        """
        written, failures = [], []
        for writer in writers:
            try:
                video = writer.close(complete=stopped_by is None)
            except VideoWriteError as error:
                failures.append(str(error))
            else:
                written += [video] if video is not None else []
        if failures:
            where = kept_latents.save(writers[0].path)
            raise VideoWriteError(" | ".join(failures) + f". Nothing generated is lost: {where}.")
        if stopped_by is None:
            for video in written:
                logger.info(f"Wrote {video}")
            return written
        if written:
            note = (
                f"The generation stopped before the videos were complete: the frames written so far are in "
                f"{', '.join(map(str, written))}; {', '.join(writer.path for writer in writers)} left as before."
            )
            logger.warning(note)
            stopped_by.add_note(note)
        return []

    def _denoise_chunk(
        self,
        latents: torch.Tensor,
        state: LaCTState,
        prompt: _EncodedPrompt,
        settings: _GenerationSettings,
        chunk_index: int,
        progress_bar,
    ) -> tuple[torch.Tensor, _EncodedPrompt]:
        """Denoise one chunk, (B, C, k, h, w) noise -> latents, against `state` (the chunks before it).

        Runs the whole schedule with classifier-free guidance, calls `callback_on_step_end` after every step,
        stops at `self.interrupt` and advances `progress_bar` once a step. Returns the latents and the prompt,
        which a callback may have replaced (it is then projected again by the next transformer call).
        """
        # `set_timesteps` restarts the scheduler: it clears the step index and UniPC's multistep history
        # (`model_outputs`, `lower_order_nums`, `last_sample`), so every chunk is a fresh run.
        self.scheduler.set_timesteps(settings.num_inference_steps, device=latents.device)
        self.scheduler.set_begin_index(0)  # no DtoH sync to find the step index
        timesteps = self.scheduler.timesteps
        for i, t in enumerate(timesteps):
            if self.interrupt:
                break
            self._current_timestep = t
            latent_model_input = self._guidance_rows(latents)
            noise_pred, _, prompt = self._transformer_forward(
                latent_model_input, t.expand(len(latent_model_input)), "denoise", state, prompt
            )
            if self.do_classifier_free_guidance:
                noise_uncond, noise_pred = noise_pred.chunk(2)
                noise_pred = noise_uncond + self.guidance_scale * (noise_pred - noise_uncond)

            # compute the previous noisy sample x_t -> x_t-1
            latents = self.scheduler.step(noise_pred, t, latents, return_dict=False)[0]

            if settings.callback_on_step_end is not None:
                tensors = {
                    "latents": latents,
                    "prompt_embeds": prompt.embeds,
                    "negative_prompt_embeds": prompt.negative_embeds,
                }
                callback_kwargs = {k: tensors[k] for k in settings.callback_on_step_end_tensor_inputs}
                step = chunk_index * len(timesteps) + i  # 0 .. num_timesteps - 1
                callback_outputs = settings.callback_on_step_end(self, step, t, callback_kwargs)

                latents = callback_outputs.pop("latents", latents)
                embeds = callback_outputs.pop("prompt_embeds", prompt.embeds)
                negative_embeds = callback_outputs.pop("negative_prompt_embeds", prompt.negative_embeds)
                if embeds is not prompt.embeds or negative_embeds is not prompt.negative_embeds:
                    self.check_prompt_embeds(len(latents), embeds, negative_embeds)
                    if negative_embeds is not None:
                        negative_embeds = _rows_per_video(negative_embeds, len(latents), 1)
                    embeds = _same_length(embeds, negative_embeds, latents.device, self.transformer.dtype)
                    prompt = _EncodedPrompt(*embeds)  # without `text_context`: projected anew
            progress_bar.update()
        self._current_timestep = None
        return latents, prompt

    def _commit_chunk(
        self, latents: torch.Tensor, state: LaCTState, prompt: _EncodedPrompt
    ) -> tuple[LaCTState, _EncodedPrompt]:
        """Commit a finished chunk, (B, C, k, h, w) latents, as clean at t=0: returns the new state, whose fast
        weights and window now hold it, and the prompt."""
        clean = self._guidance_rows(latents)
        timestep = torch.zeros(len(clean), device=clean.device, dtype=clean.dtype)
        _, state, prompt = self._transformer_forward(clean, timestep, "commit", state, prompt)
        return state, prompt

    def _decode_chunk(
        self,
        latents: torch.Tensor,
        decoder: WanStreamingDecoder | None,
        writers: list[VideoStreamWriter],
        output_type: str,
    ) -> np.ndarray | torch.Tensor | list:
        """A finished chunk's frames in `output_type` (see `stream`), from its (B, C, k, h, w) latents.

        `decoder` carries the VAE's causal cache from the chunks before (`None` for "latent"); the frames are
        also appended to the `writers`' files. Tensors come back out of inference mode.
        """
        if output_type == "latent":
            return _as_normal_tensor(latents)
        video = decoder.decode(self._denormalize(latents))  # (B, 3, f, H, W) in [-1, 1]
        frames = self.video_processor.postprocess_video(video, output_type=output_type)
        if writers:
            np_frames = frames if output_type == "np" else self.video_processor.postprocess_video(video)
            for writer, video_frames in zip(writers, np_frames):
                writer.write(video_frames)
        return _as_normal_tensor(frames) if output_type == "pt" else frames

    @torch.inference_mode()
    def decode_latents(
        self, latents: torch.Tensor, output_type: str = "np", decoder_cache: list | tuple | None = None
    ) -> np.ndarray | torch.Tensor | list:
        """Decode (B, C, F, h, w) normalised latents, as `output_type="latent"` returns them or a failed video
        writer saves them, into frames as `__call__` returns them (`output_type` "np", "pt" or "pil"): the same
        causal decoding, one latent frame at a time, so the same frames.

        `decoder_cache`: the VAE decoder's causal cache after the video's earlier chunks, to go on from (as a failed
        writer saves it beside the latents, or `LaCTGenerationState.decoder_cache`): then the latents decode as
        the video's later chunks (`4k` frames each), not as its start (`4k - 3` frames for the first chunk).

        Raises:
            ValueError: another `output_type`, or a cache of another VAE.
        """
        if output_type not in ("np", "pt", "pil"):
            raise ValueError(f"`output_type` must be 'np', 'pt' or 'pil', got {output_type!r}.")
        decoder = WanStreamingDecoder(self.vae)
        if decoder_cache is not None:
            decoder.load_cache(decoder_cache)
        frames = self._decode_chunk(latents, decoder, [], output_type)
        self.maybe_free_model_hooks()
        return frames

    def _embed_prompt(
        self, value: PromptText | torch.Tensor, settings: _GenerationSettings, batch_size: int, device: torch.device
    ) -> torch.Tensor:
        """One prompt schedule entry as (B, L, D) embeddings, one row per video (`batch_size` prompts times
        `num_videos_per_prompt`): texts through the text encoder as `encode_prompt` encodes them, embeddings the
        caller supplied repeated (`_rows_per_video`)."""
        if isinstance(value, torch.Tensor):
            return _rows_per_video(value, batch_size, settings.num_videos_per_prompt)
        return self._get_t5_prompt_embeds(value, settings.num_videos_per_prompt, settings.max_sequence_length, device)

    def _guidance_rows(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, k, h, w) latents -> the transformer's input (rows, C, k, h, w) in its dtype.

        Classifier-free guidance runs both branches as batch rows [uncond, cond] of one forward, each row with
        its own state: the unconditional rows see the negative prompt throughout, commits included.
        """
        latents = latents.to(self.transformer.dtype)
        return torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents

    def _transformer_forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        mode: str,
        state: LaCTState,
        prompt: _EncodedPrompt,
    ) -> tuple[torch.Tensor | None, LaCTState, _EncodedPrompt]:
        """One transformer call on (rows, C, k, h, w) latents at `timestep` (rows,): the output, the state and
        the prompt with its `text_context`, projected by the first call and reused by every later one."""
        embeds = self._batch_embeds(prompt) if prompt.text_context is None else None
        output, state, text_context = self.transformer(
            hidden_states,
            timestep,
            embeds,
            mode=mode,
            state=state,
            text_context=prompt.text_context,
            return_dict=False,
        )
        return output, state, replace(prompt, text_context=text_context)

    def _batch_embeds(self, prompt: _EncodedPrompt) -> torch.Tensor:
        """(rows, L, D) text embeddings: [negative; positive] under classifier-free guidance."""
        if self.do_classifier_free_guidance:
            return torch.cat([prompt.negative_embeds, prompt.embeds])
        return prompt.embeds

    def _denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, f, h, w) latents on the VAE's device and in its dtype, the normalisation undone for decoding."""
        latents = latents.to(get_module_execution_device(self.vae), dtype=self.vae.dtype)
        return denormalize_latents(latents, self.vae.config)

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: PromptArgument = None,
        negative_prompt: PromptArgument = None,
        height: int = 480,
        width: int = 832,
        num_frames: int = 81,
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
        num_videos_per_prompt: int | None = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str | None = "np",
        return_dict: bool = True,
        callback_on_step_end: StepEndCallback | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        max_sequence_length: int = 512,
        output_path: str | os.PathLike | list | None = None,
        fps: int = 16,
        state: LaCTGenerationState | None = None,
        return_state: bool = False,
        video: Any = None,
        video_latents: torch.Tensor | None = None,
        return_input_video: bool = False,
    ) -> LaCTVideoPipelineOutput | tuple:
        r"""
        Generate videos chunk by chunk (see `stream` for the chunk-wise generator).

        Args:
            prompt (`str`, `list[str]`, or a schedule, *optional*):
                The prompt or prompts to guide the video generation. If not defined, pass `prompt_embeds` instead.
                A schedule switches prompts inside the video: a mapping from video frames to prompts,
                `{0: "a cat walks on the grass", 97: "the cat jumps onto a wall"}`, or a list of such
                `(frame, prompt)` pairs, from frame 0 on in increasing order; a prompt may be a list (one per video
                of the batch, the same frames for all). Frames round to the nearest chunk start, with a warning;
                two entries in one chunk, an empty prompt or a schedule out of order raise `ValueError`
                (`pipelines.prompt_schedule`; docs/design.md, Sec. 3.7).
            negative_prompt (`str`, `list[str]`, or a schedule, *optional*):
                The prompt or prompts to avoid, or a schedule of them with its own frames (empty texts allowed).
                Ignored when not using guidance (`guidance_scale` <= 1).
            height (`int`, defaults to `480`), width (`int`, defaults to `832`):
                The video size in pixels; multiples of 16.
            num_frames (`int`, defaults to `81`):
                Video frames: `4 * F - 3` with `F` latent frames a multiple of the transformer's `chunk_frames`
                (other values are rounded down, with a warning). Any length up to the transformer's
                `rope_max_seq_len` latent frames, far beyond the training clips.
            num_inference_steps (`int`, defaults to `50`):
                Denoising steps per chunk.
            guidance_scale (`float`, defaults to `5.0`):
                Classifier-free guidance scale; enabled when > 1. Both branches run as batch rows of one forward.
            num_videos_per_prompt (`int`, *optional*, defaults to 1):
                The number of videos to generate per prompt.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*):
                Makes generation deterministic. The noise is drawn chunk by chunk, so the same seed with a larger
                `num_frames` gives the same first frames.
            latents (`torch.Tensor`, *optional*):
                The whole initial noise, (B, C, F, h, w); drawn from `generator` if not given.
            prompt_embeds (`torch.Tensor`, *optional*), negative_prompt_embeds (`torch.Tensor`, *optional*):
                Pre-generated (negative) text embeddings, instead of `prompt` (`negative_prompt`).
            output_type (`str`, *optional*, defaults to `"np"`):
                `"np"`, `"pt"`, `"pil"`, or `"latent"` (the normalised latents, not decoded).
            return_dict (`bool`, *optional*, defaults to `True`):
                Return a `LaCTVideoPipelineOutput` instead of a plain tuple.
            callback_on_step_end (`Callable`, `PipelineCallback`, `MultiPipelineCallbacks`, *optional*):
                Called at the end of every denoising step of every chunk, `num_timesteps = chunks * steps` calls
                in all, as `callback_on_step_end(self, step, timestep, callback_kwargs)`. `step` counts over the
                whole video (`chunk * steps + i`; `self.current_chunk` tells the chunk), and the `"latents"` in
                `callback_kwargs` are the current chunk's, (B, C, k, h, w). Setting `pipe._interrupt = True` ends
                the current chunk at that step (it is still decoded) and starts no further chunk. Returned
                `prompt_embeds` (`negative_prompt_embeds`) replace the current schedule entry's for the rest of its
                chunks; the next entry starts from its own prompt.
            callback_on_step_end_tensor_inputs (`list`, *optional*):
                Tensors passed in `callback_kwargs`: any of `._callback_tensor_inputs`.
            max_sequence_length (`int`, defaults to `512`):
                The maximum sequence length of the text encoder.
            output_path (`str`, `os.PathLike` or a list, *optional*):
                Write the video(s) to files incrementally instead of returning frames: .mp4, .mov, .mkv (H.264) or
                .webm (VP9), checked before the first step (other containers raise `ValueError`, and so does the
                `video` file itself). One path for several videos gets `_0`, `_1`, ... suffixes. Each file is written
                as `name.partial.mp4` and renamed to `name.mp4` when the video is complete: an error midway leaves an
                earlier `name.mp4` as it was, and the frames so far in the partial file (named in a note on the
                error). The chunks' latents are kept meanwhile (1/48 of the frames' size): if ffmpeg fails, a
                `VideoWriteError` says where they were saved, with the VAE decoder's cache to decode them from after
                a resumed state's or a clip's chunks (`decode_latents`).
            fps (`int`, defaults to 16): frame rate of the files written to `output_path`, and the rate a `video`
                file is resampled to.
            video (np, pt, a list of PIL images, or a path, *optional*):
                A real clip to continue: np (F, H, W, 3) or (B, F, H, W, 3) in [0, 1] or uint8, pt (F, 3, H, W) or
                (B, F, 3, H, W) in [0, 1] (or [-1, 1]), as diffusers' `VideoProcessor` takes them, or a video file
                read chunk by chunk (resampled to `fps` by frame time, like the training data). One clip, or one per
                prompt. Frames of another size are resized to cover `height` x `width` and center-cropped. Its whole
                chunks (the first `4k - 3` frames, then `4k` each) are encoded one at a time, the VAE's causal cache
                carried, and committed into the memory as clean chunks; trailing frames that fill no chunk are
                dropped with a warning, and a clip shorter than one chunk raises `ValueError`. Generation then
                continues at the next chunk, with the positions that follow: `num_frames` counts the new frames,
                whole chunks of `4k` (`pipelines/video_input.py`). The clip's chunks count as the video's first
                chunks: a prompt schedule's frames count from the clip's first frame, and each clip chunk is
                committed with the prompt in force at it. A clip starts a video, so it cannot go with `state=`
                (`ValueError`); with `return_state=True` the state handed out holds the clip (docs/design.md,
                Sec. 3.8).
            video_latents (`torch.Tensor`, *optional*):
                The clip as normalised latents (B, C, F, h, w) instead, `F` a multiple of `chunk_frames` (as
                `output_type="latent"` returns them).
            return_input_video (`bool`, defaults to `False`):
                Whether the output (and `stream`, and the files) starts with the clip's frames, as the VAE decodes
                its latents (the decoder that continues it), before the new frames. Either way the decoder's causal
                cache is primed with the clip, so the new frames join it without a seam.
            state (`LaCTGenerationState`, *optional*):
                Go on from a state handed out earlier (`return_state=True`) or loaded with
                `LaCTGenerationState.load`: generation continues at chunk `state.next_chunk`, with the positions
                that follow, the decoder's causal cache and the generator's state, so the new frames are exactly
                those an uninterrupted call would have made next. `num_frames` then counts the new frames only,
                `4 * k` per chunk (other values are rounded down, with a warning). A `generator` passed with it
                draws the noise instead of the saved one (another continuation). The model, size, batch and
                guidance (on or off) must be the state's (`StateMismatchError` otherwise).
            return_state (`bool`, defaults to `False`):
                Also commit the last chunk and hand out the state after it, as `state` of the output (see
                `stream` for the chunk-wise form). After `pipe._interrupt`, it is the state after the last chunk
                that finished denoising (`state.next_chunk` says which).

        Examples:

        Returns:
            `LaCTVideoPipelineOutput` or `tuple`: `frames` as in `WanPipelineOutput` (or `video_paths` and
            `written_videos`, what the files hold, when `output_path` is given; `state` with `return_state`); as a
            tuple, the fields that are set.
        """
        # 1. Generate chunk by chunk. Every argument but `return_dict` is a setting of the generation, and this
        # first statement's `locals()` holds exactly the arguments.
        written_videos = []
        chunks = self._generate(_GenerationSettings.from_arguments(locals()), written_videos)

        # 2. Write the video files (every chunk goes to the files only: nothing accumulates), or gather the chunks
        # along the frame axis; keep the state after the last one
        frames, last_state = [], None
        for chunk in chunks:
            last_state = chunk.state
            if output_path is None:
                frames.append(chunk.frames)
        if output_path is not None:
            paths = [video.path for video in written_videos]
            output = LaCTVideoPipelineOutput(None, paths, written_videos, last_state)
        else:
            output = LaCTVideoPipelineOutput(_concatenate_chunks(frames, output_type), state=last_state)

        if not return_dict:
            return output.to_tuple()
        return output

    # `stream` takes the arguments of `__call__` but `return_dict`, so its signature is derived from `__call__`'s
    # rather than written twice; `inspect.signature`, `help()` and notebooks show it as written out.
    stream.__signature__ = inspect.signature(__call__).replace(
        parameters=[p for p in inspect.signature(__call__).parameters.values() if p.name != "return_dict"],
        return_annotation=inspect.signature(stream).return_annotation,
    )
