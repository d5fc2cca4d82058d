"""A clip to continue, cut into LaCT chunks: frames read and encoded one chunk at a time, or precomputed latents.

`LaCTVideoPipeline(video=...)` commits a real clip into the model's state chunk by chunk, then generates what
follows (issue 15, "Continue a real clip"; docs/design.md Sec. 3.8). A clip's chunks follow the VAE's causal
grouping: chunk 0 holds the first `4k - 3` frames, every later chunk the next `4k` (`k` latent frames per
chunk). Frames that do not fill a whole chunk at the end are dropped, with a warning.

Inputs, in diffusers' conventions (`diffusers.video_processor.VideoProcessor`):

- np (F, H, W, 3) or (B, F, H, W, 3): floats in [0, 1], or uint8;
- pt (F, 3, H, W) or (B, F, 3, H, W): floats in [0, 1], or in [-1, 1] (told apart by a negative value anywhere
  in the clip, as `VideoProcessor` tells them apart per call; here once for the whole clip, so that every chunk
  is read alike);
- a list of PIL images (one clip);
- a path to a video file, read with `lact_video.data.video_reader` as the training data is: resampled to the
  pipeline's `fps` by the frames' presentation times, resized to cover (height, width) and center-cropped, one
  chunk of frames at a time (the reader never holds more);
- or `video_latents`: normalised latents (B, C, F, h, w), `F` a multiple of `k`, as `output_type="latent"`
  returns them.

Frames of another size than (height, width) are resized to cover it, aspect ratio kept, and center-cropped, as a
file's frames are. Shapes: `B` clips, `C` latent channels, `f` frames of a chunk, `H, W` pixels, `h, w` latents.
"""

from __future__ import annotations

import itertools
import os
import pathlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan
from diffusers.utils import logging
from diffusers.utils.torch_utils import get_module_execution_device

from lact_video.data.video_reader import (
    open_errors,
    probe_video,
    read_frames,
    resample_times,
    resize_for_center_crop,
)
from lact_video.geometry import (
    chunk_count,
    chunk_of_frame,
    first_frame_of_chunk,
    latent_size,
    normalize_latents,
    video_num_frames,
)

from .streaming import WanStreamingEncoder

logger = logging.get_logger(__name__)


def _chunk_frame_bounds(chunk: int, chunk_frames: int, temporal_factor: int) -> tuple[int, int]:
    """Video frames [start, end) of chunk `chunk`: [0, 4k-3) for chunk 0, then 4k frames each."""
    return (
        first_frame_of_chunk(chunk, chunk_frames, temporal_factor),
        first_frame_of_chunk(chunk + 1, chunk_frames, temporal_factor),
    )


@dataclass(frozen=True)
class VideoChunks:
    """A clip as whole chunks, read lazily: iterate `latents(vae)` once to encode and hand out every chunk.

    Attributes:
        num_chunks: whole chunks of the clip (trailing frames that fill no chunk are already dropped).
        batch_size: clips (rows); one clip serves every video of the call.
        num_frames: the video frames kept (`4 k num_chunks - 3`); for `video_latents`, the frames they decode to.
    """

    num_chunks: int
    batch_size: int
    num_frames: int
    # Pixel chunks (B, 3, f, H, W) in [-1, 1], or normalised latent chunks (B, C, k, h, w) when `encoded`.
    _chunks: Callable[[], Iterator[torch.Tensor]]
    encoded: bool

    def latents(self, vae: AutoencoderKLWan) -> Iterator[torch.Tensor]:
        """Normalised float32 latents (B, C, k, h, w) of every chunk in order, on the VAE's execution device.

        Frames go through one `WanStreamingEncoder`, whose causal cache carries from chunk to chunk, so the
        latents equal those of one `vae.encode` of the whole clip (its posterior's mode, as the training
        latents, `lact_video.data.encode.encode_videos`).
        """
        if self.encoded:
            yield from self._chunks()
            return
        if vae.use_tiling:
            logger.warning("Streaming encoding runs 4 frames at a time and does not use VAE tiling.")
        encoder = WanStreamingEncoder(vae)
        for frames in self._chunks():
            frames = frames.to(get_module_execution_device(vae), dtype=vae.dtype)
            yield normalize_latents(encoder.encode(frames).float(), vae.config)


def open_video(
    video,
    video_latents: torch.Tensor | None,
    size: tuple[int, int],
    fps: float,
    *,
    chunk_frames: int,
    latent_channels: int,
    temporal_factor: int,
    spatial_factor: int,
) -> VideoChunks | None:
    """Check a clip to continue and cut it into chunks; nothing is decoded or encoded yet (a file is probed).

    Args:
        video: frames or a file path (see the module docstring), or None.
        video_latents: normalised latents (B, C, F, h, w) instead of `video`, or None.
        size: (height, width) of the video in pixels; frames of another size are resized to cover it and cropped.
        fps: the frame rate a file is resampled to (its frames are taken at the times i / fps).
        chunk_frames: `k`, latent frames per chunk; latent_channels: `C`.
        temporal_factor, spatial_factor: the VAE's compression (4 and 8 for Wan).

    Returns:
        The clip's chunks, or None when neither input is given.

    Raises:
        ValueError: both inputs given; a clip of an unknown kind or shape; a clip shorter than one chunk (naming
            the frames needed); latents of the wrong channels, size or length; a file that cannot be read.
        FileNotFoundError: `video` is a path to no file.
    """
    height, width = size
    if video is not None and video_latents is not None:
        raise ValueError("Pass the clip to continue either as `video` (frames or a file) or as `video_latents`.")
    if video_latents is not None:
        return _latent_chunks(
            video_latents, (height, width), chunk_frames, latent_channels, (temporal_factor, spatial_factor)
        )
    if video is None:
        return None
    if isinstance(video, (str, os.PathLike)):
        return _file_chunks(pathlib.Path(video), height, width, fps, (chunk_frames, temporal_factor))
    frames, to_model_range = _as_frames(video)
    batch_size, total = frames.shape[:2]
    num_chunks, kept = _whole_chunks(total, chunk_frames, temporal_factor, f"The video's {total} frames")

    def chunks() -> Iterator[torch.Tensor]:
        for chunk in range(num_chunks):
            start, end = _chunk_frame_bounds(chunk, chunk_frames, temporal_factor)
            yield _cover_and_crop(to_model_range(frames[:, start:end]), height, width)

    return VideoChunks(num_chunks, batch_size, kept, chunks, encoded=False)


def _whole_chunks(total: int, chunk_frames: int, temporal_factor: int, what: str) -> tuple[int, int]:
    """(whole chunks, frames they hold) of a clip of `total` frames; warns about the frames dropped after them.

    Raises:
        ValueError: the clip is shorter than one chunk.
    """
    first_chunk, per_chunk = first_frame_of_chunk(1, chunk_frames, temporal_factor), temporal_factor * chunk_frames
    if total < first_chunk:
        raise ValueError(
            f"{what} are fewer than one chunk: continuing a clip needs at least {first_chunk} frames (the first chunk "
            f"of {first_chunk} frames, then {per_chunk} per chunk). Pass a longer clip."
        )
    num_chunks = chunk_of_frame(total, chunk_frames, temporal_factor)  # the chunk the first missing frame would open
    kept = first_frame_of_chunk(num_chunks, chunk_frames, temporal_factor)
    if kept < total:
        logger.warning(
            f"{what} do not fill whole chunks ({first_chunk} frames, then {per_chunk} per chunk): "
            f"continuing from the first {kept} frames ({chunk_count(num_chunks)}); the last {total - kept} frames are "
            "dropped."
        )
    return num_chunks, kept


def _file_chunks(path: pathlib.Path, height: int, width: int, fps: float, geometry: tuple[int, int]) -> VideoChunks:
    """A video file's chunks: resampled to `fps` by time, resized and cropped as `VideoFolderDataset.load` reads
    training clips (`read_frames`), decoded one chunk at a time. `geometry`: (chunk_frames, temporal_factor)."""
    if not path.is_file():
        raise FileNotFoundError(f"`video`: no video file at {path}.")
    try:
        info = probe_video(path)
    except open_errors() as error:
        raise ValueError(f"`video`: cannot read {path} as a video ({str(error).strip()[:200]}).") from error
    times = resample_times(info, fps)
    what = f"The video {path} gives {len(times)} frames at fps={fps:g} ({info.duration:.2f} s), which"
    num_chunks, kept = _whole_chunks(len(times), *geometry, what)

    def chunks() -> Iterator[torch.Tensor]:
        frames = read_frames(path, times[:kept], info, (height, width))  # one decoded frame at a time
        for chunk in range(num_chunks):
            start, end = _chunk_frame_bounds(chunk, *geometry)
            chunk_frames = np.stack(list(itertools.islice(frames, end - start)))  # (f, H, W, 3) uint8
            yield _cover_and_crop(_from_rgb_array(chunk_frames[None]), height, width)  # already (height, width)

    return VideoChunks(num_chunks, 1, kept, chunks, encoded=False)


def _as_frames(video) -> tuple[np.ndarray | torch.Tensor, Callable]:
    """An in-memory clip with a batch axis, np (B, F, H, W, 3) or pt (B, F, 3, H, W), and the function that takes
    a slice of its frames to (B, f, 3, H, W) float32 in [-1, 1] (applied one chunk at a time: no copy of the clip).
    """
    if isinstance(video, list) and video and all(isinstance(frame, PIL.Image.Image) for frame in video):
        return np.stack([np.asarray(frame.convert("RGB")) for frame in video])[None], _from_rgb_array
    if isinstance(video, np.ndarray) and video.ndim in (4, 5) and video.shape[-1] == 3:
        return (video if video.ndim == 5 else video[None]), _from_rgb_array
    if isinstance(video, torch.Tensor) and video.ndim in (4, 5) and video.shape[-3] == 3:
        video = video if video.ndim == 5 else video[None]
        if video.dtype == torch.uint8:
            return video, lambda frames: frames.float() / 255 * 2 - 1
        # VideoProcessor's rule: tensors are in [0, 1]; one with a negative value is taken to be in [-1, 1].
        if video.min() < 0:
            return video, lambda frames: frames.float()
        return video, lambda frames: frames.float() * 2 - 1
    shape = getattr(video, "shape", None)
    raise ValueError(
        f"`video` must be np (F, H, W, 3) or (B, F, H, W, 3), pt (F, 3, H, W) or (B, F, 3, H, W), a list of PIL "
        f"images or a path to a video file; got {type(video).__name__}"
        + (f" of shape {tuple(shape)}" if shape else "")
    )


def _from_rgb_array(frames: np.ndarray) -> torch.Tensor:
    """(B, f, H, W, 3) uint8, or floats in [0, 1] -> (B, f, 3, H, W) float32 in [-1, 1] (as VideoProcessor does)."""
    frames = torch.from_numpy(np.ascontiguousarray(frames))
    frames = frames.float() / 255 if frames.dtype == torch.uint8 else frames.float()
    return frames.permute(0, 1, 4, 2, 3) * 2 - 1


def _cover_and_crop(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, f, 3, H', W') in [-1, 1] -> (B, 3, f, height, width): resized to cover, aspect kept, center-cropped
    (`resize_for_center_crop`, as `read_frames` does for files); frames of the right size pass unchanged."""
    b, f, _, src_height, src_width = frames.shape
    if (src_height, src_width) != (height, width):
        resized = resize_for_center_crop(src_height, src_width, height, width)
        frames = F.interpolate(frames.flatten(0, 1), size=resized, mode="bicubic", antialias=True)
        top, left = (resized[0] - height) // 2, (resized[1] - width) // 2
        frames = frames[..., top : top + height, left : left + width].clamp(-1, 1).unflatten(0, (b, f))
    return frames.transpose(1, 2)  # (B, 3, f, H, W)


def _latent_chunks(
    latents: torch.Tensor,
    video_size: tuple[int, int],
    chunk_frames: int,
    latent_channels: int,
    factors: tuple[int, int],
) -> VideoChunks:
    """Precomputed normalised latents (B, C, F, h, w) as chunks of `chunk_frames` latent frames; `video_size` is the
    (height, width) they encode, `factors` the VAE's (temporal, spatial) compression."""
    (height, width), (temporal_factor, spatial_factor) = video_size, factors
    size = latent_size(height, width, spatial_factor)
    if not isinstance(latents, torch.Tensor) or latents.ndim != 5:
        raise ValueError(
            f"`video_latents` must be a (B, C, F, h, w) tensor, got {getattr(latents, 'shape', latents)}."
        )
    b, c, f, h, w = latents.shape
    if c != latent_channels or (h, w) != size:
        raise ValueError(
            f"`video_latents` has shape {tuple(latents.shape)}; at height={height}, width={width} it must be "
            f"(B, {latent_channels}, F, {size[0]}, {size[1]}). Pass the height and width of the video they encode."
        )
    if f == 0 or f % chunk_frames:
        raise ValueError(
            f"`video_latents` has {f} latent frames: it must be whole chunks, a positive multiple of "
            f"chunk_frames={chunk_frames}."
        )
    num_chunks = f // chunk_frames

    def chunks() -> Iterator[torch.Tensor]:
        yield from (chunk.float() for chunk in latents.split(chunk_frames, dim=2))

    return VideoChunks(num_chunks, b, video_num_frames(f, temporal_factor), chunks, encoded=True)
