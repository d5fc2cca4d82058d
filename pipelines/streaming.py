"""Streaming video for chunk-by-chunk generation: causal VAE encoding and decoding, incremental video writing.

These objects hold a fixed amount of memory however long the video gets: the encoder and the decoder keep
the Wan VAE's causal cache (the last two frames of every causal conv), the writer pipes each frame straight
to ffmpeg (imageio-ffmpeg's binary), with a codec that fits the file's container. Together they let
`LaCTVideoPipeline.stream` continue a clip of any length and produce a video of any length.
"""

from __future__ import annotations

import errno
import functools
import os
import pathlib
import subprocess
import tempfile
from dataclasses import dataclass, replace

import numpy as np
import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, patchify, unpatchify
from diffusers.utils.torch_utils import get_module_execution_device


def _run_offload_hook(vae: AutoencoderKLWan) -> None:
    """Offloading hooks run around `vae.encode`/`vae.decode` (`apply_forward_hook`); the streaming coders bypass
    those, so they run the hook themselves to move the VAE onto the execution device."""
    hook = getattr(vae, "_hf_hook", None)
    if hook is not None and hasattr(hook, "pre_forward"):
        hook.pre_forward(vae)


def _num_causal_convs(module: torch.nn.Module) -> int:
    """Cache slots of a Wan VAE encoder or decoder: one per causal conv, as `vae.clear_cache()` makes them."""
    return sum(isinstance(m, WanCausalConv3d) for m in module.modules())


class WanStreamingEncoder:
    """Encodes video chunks one after another, as one `AutoencoderKLWan.encode` of their concatenation.

    The Wan VAE encodes the first frame alone, then every group of 4 frames into one latent frame, and carries
    a causal cache (`feat_cache`) from group to group (`AutoencoderKLWan._encode`), which it clears on every
    call: the public API cannot continue a clip. This class runs the same per-group loop but owns the cache, so
    it survives between chunks: the latents of chunk `i` equal the frames of a full encode of chunks `0..i`.
    The first chunk takes `4n + 1` frames (`4k - 3` for a LaCT chunk of `k` latent frames), every later one
    `4n` (`4k`).

    The latents are the posterior's mode (its mean), as `lact_video.data.encode.encode_videos` encodes the
    training clips. VAE tiling is not applied (a group of 4 frames is already small); the pipeline warns when
    it is enabled.
    """

    def __init__(self, vae: AutoencoderKLWan):
        self.vae = vae
        self.feat_cache: list = [None] * _num_causal_convs(vae.encoder)
        self.first_frame = True

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, frames, H, W) video in [-1, 1] -> (B, C, f, H/8, W/8) raw (not normalised) latents.

        Raises:
            ValueError: the frame count does not fit the VAE's groups (`4n + 1` for the first chunk, then `4n`).
        """
        t = self.vae.config.scale_factor_temporal
        num_frames = video.shape[2]
        lead = 1 if self.first_frame else 0  # the clip's first frame is encoded alone
        if num_frames == 0 or (num_frames - lead) % t:
            form = f"{t}n + 1" if self.first_frame else f"{t}n"
            raise ValueError(
                f"The VAE encodes the first frame alone, then groups of {t}: this chunk needs {form} frames, got "
                f"{num_frames}."
            )
        _run_offload_hook(self.vae)
        if self.vae.config.patch_size is not None:
            video = patchify(video, patch_size=self.vae.config.patch_size)
        bounds = [0, lead] if lead else [0]
        bounds += range(lead + t, num_frames + 1, t)
        out = [
            self.vae.encoder(video[:, :, start:end], feat_cache=self.feat_cache, feat_idx=[0])
            for start, end in zip(bounds, bounds[1:])
        ]
        self.first_frame = False
        moments = self.vae.quant_conv(torch.cat(out, dim=2))  # kernel 1 in time: needs no cache
        return moments[:, : self.vae.config.z_dim]  # the mean: `DiagonalGaussianDistribution.mode()`


class WanStreamingDecoder:
    """Decodes latent chunks one after another, as one `AutoencoderKLWan.decode` of their concatenation.

    The Wan VAE decodes a clip one latent frame at a time and carries a causal cache (`feat_cache`)
    from frame to frame (`AutoencoderKLWan._decode`). `decode` and `clear_cache` keep that cache on the
    VAE module and reset it on every call, so the public API cannot continue a clip. This class runs
    the same per-frame loop but owns the cache, so it survives between chunks: the frames of chunk `i`
    equal frames of a full decode of chunks `0..i`. Latent frame 0 gives 1 video frame, every later
    one 4, so chunk 0 yields `4k - 3` frames and every later chunk `4k`.

    VAE tiling is not applied (a full-frame decode of one latent frame at a time is already small);
    the pipeline warns when it is enabled.
    """

    def __init__(self, vae: AutoencoderKLWan):
        self.vae = vae
        self.feat_cache: list = [None] * _num_causal_convs(vae.decoder)
        self.first_frame = True

    def load_cache(self, feat_cache: list) -> None:
        """Continue from a cache saved after earlier chunks (`pipelines.state_io.load_state`), on any device: its
        tensors move to the VAE's execution device.

        Raises:
            ValueError: `feat_cache` has another number of slots than this VAE's decoder has causal convs.
        """
        if len(feat_cache) != len(self.feat_cache):
            raise ValueError(
                f"The VAE cache has {len(feat_cache)} slots; this VAE's decoder has {len(self.feat_cache)} causal "
                "convs. Load the VAE the cache was saved with."
            )
        device = get_module_execution_device(self.vae)
        self.feat_cache = [slot.to(device) if isinstance(slot, torch.Tensor) else slot for slot in feat_cache]
        self.first_frame = all(slot is None for slot in feat_cache)  # every decoded frame fills the slots

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, f, h, w) denormalised latents -> (B, 3, frames, H, W) video in [-1, 1]."""
        _run_offload_hook(self.vae)
        x = self.vae.post_quant_conv(latents)  # kernel 1 in time: needs no cache
        frames = []
        for i in range(x.shape[2]):
            frames.append(
                self.vae.decoder(
                    x[:, :, i : i + 1], feat_cache=self.feat_cache, feat_idx=[0], first_chunk=self.first_frame
                )
            )
            self.first_frame = False
        video = torch.cat(frames, dim=2)
        if self.vae.config.patch_size is not None:
            video = unpatchify(video, patch_size=self.vae.config.patch_size)
        return video.clamp(min=-1.0, max=1.0)


@dataclass(frozen=True)
class VideoCodec:
    """An ffmpeg video encoder and its output options, for one kind of container."""

    name: str  # the codec as ffmpeg's decoders report it back (`WrittenVideo.codec`)
    encoder: str
    options: tuple[str, ...]


_H264 = VideoCodec("h264", "libx264", ("-pix_fmt", "yuv420p", "-crf", "25"))
# Output containers by file suffix, each with a codec it takes. WebM holds only VP8/VP9/AV1, so H.264 written
# there is a broken file. GIF is refused: its palette is 8-bit, its frame delays are whole 1/100 s (16 fps
# becomes 16.67), and decord, the reader of this project's training data, cannot open it.
CONTAINER_CODECS = {
    ".mp4": _H264,
    ".mov": _H264,
    ".mkv": _H264,
    ".webm": VideoCodec("vp9", "libvpx-vp9", ("-pix_fmt", "yuv420p", "-crf", "32", "-b:v", "0", "-row-mt", "1")),
}


class VideoWriteError(RuntimeError):
    """ffmpeg failed to write a video file (its exit status and message are in the error's text)."""


@dataclass(frozen=True)
class WrittenVideo:
    """What a video file holds, as read back from it after writing (not as requested)."""

    path: str
    num_frames: int
    width: int
    height: int
    fps: float
    codec: str

    def __str__(self) -> str:
        return f"{self.path} ({self.num_frames} frames, {self.width}x{self.height}, {self.fps:g} fps, {self.codec})"

    @classmethod
    def read(cls, path: str | os.PathLike) -> "WrittenVideo":
        """Probe `path` with imageio-ffmpeg's ffmpeg: the frames are counted by demuxing the whole file."""
        import imageio_ffmpeg

        reader = imageio_ffmpeg.read_frames(str(path))
        meta = next(reader)  # the header only; closing stops ffmpeg before it decodes frames
        reader.close()
        num_frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
        width, height = meta["size"]
        return cls(str(path), num_frames, width, height, meta["fps"], meta["codec"].split()[0].rstrip(","))


def container_codec(path: str | os.PathLike) -> VideoCodec:
    """The codec `VideoStreamWriter` encodes `path` with, chosen by its suffix.

    Raises:
        ValueError: the suffix is not one of `CONTAINER_CODECS`, or the bundled ffmpeg lacks its encoder.
    """
    suffix = pathlib.Path(path).suffix.lower()
    if suffix not in CONTAINER_CODECS:
        supported = ", ".join(f"{s} ({c.name})" for s, c in CONTAINER_CODECS.items())
        hint = " For a GIF, use output_type='pil' and `diffusers.utils.export_to_gif`." if suffix == ".gif" else ""
        raise ValueError(f"Cannot write a video to {path}: supported containers are {supported}.{hint}")
    codec = CONTAINER_CODECS[suffix]
    if codec.encoder not in _ffmpeg_encoders():
        raise ValueError(
            f"Cannot write {path}: the ffmpeg of imageio-ffmpeg ({_ffmpeg_exe()}) has no {codec.encoder} encoder. "
            "Choose another container, or point the IMAGEIO_FFMPEG_EXE environment variable to an ffmpeg that has it."
        )
    return codec


def _ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@functools.cache
def _ffmpeg_encoders() -> frozenset[str]:
    """The names of the video encoders the ffmpeg binary offers."""
    listing = subprocess.run([_ffmpeg_exe(), "-hide_banner", "-encoders"], capture_output=True, text=True, check=True)
    return frozenset(line.split()[1] for line in listing.stdout.splitlines() if line.startswith(" V"))


class VideoStreamWriter:
    """Writes frames to a video file as they arrive, holding none of them, and checks what ffmpeg wrote.

    The codec follows the container (`container_codec`: H.264 for mp4/mov/mkv, VP9 for webm). Frames are float
    RGB in [0, 1], converted to uint8 as `diffusers.utils.export_to_video` does, at their own size. ffmpeg runs
    here rather than through `imageio_ffmpeg.write_frames`, which neither checks ffmpeg's exit status nor keeps
    its messages: `close` raises `VideoWriteError` when ffmpeg failed or the file does not hold every frame sent.

    The frames go to `partial_path` (`video.partial.mp4` for `video.mp4`), which `close` renames to `path` once
    the video is complete, as `pipelines.state_io.save_state` writes state files: a run that fails or is killed
    midway leaves an earlier file at `path` as it was, and its frames so far under a name that says they are a
    part (an earlier partial file of the same path is replaced).
    """

    def __init__(self, path: str | os.PathLike, height: int, width: int, fps: int = 16):
        self.path = str(path)
        self.partial_path = partial_video_path(self.path)
        self.codec = container_codec(self.path)
        self.num_frames = 0
        if os.path.isdir(self.path):
            raise IsADirectoryError(errno.EISDIR, "the output path is a folder: give a video file name", self.path)
        pathlib.Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        open(self.partial_path, "wb").close()  # an unwritable folder fails here, before any frame is generated
        self._messages = tempfile.TemporaryFile()  # a file, not a pipe: a full pipe would stall ffmpeg
        self._ffmpeg = subprocess.Popen(
            [_ffmpeg_exe(), "-y", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
             "-r", str(fps), "-i", "-", "-an", "-c:v", self.codec.encoder, *self.codec.options, self.partial_path],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=self._messages,
        )  # fmt: skip

    def write(self, frames: np.ndarray) -> None:
        """frames: (f, H, W, 3) float in [0, 1]. Raises `VideoWriteError` if ffmpeg has stopped."""
        try:
            self._ffmpeg.stdin.write((frames * 255).astype(np.uint8).tobytes())
        except (BrokenPipeError, ValueError) as error:  # ValueError: written after `close`
            raise VideoWriteError(self._failure(f"ffmpeg stopped taking frames ({error})")) from error
        self.num_frames += len(frames)

    def close(self, complete: bool = True) -> WrittenVideo | None:
        """Finish the file and read back what it holds.

        `complete`: the video is whole, so the file is renamed to `path`. Otherwise (generation failed midway) it
        stays at `partial_path`, which the returned `WrittenVideo` names, or is removed when no frame was sent
        (then `None`).

        Raises:
            VideoWriteError: ffmpeg failed, or the file lacks frames sent; what ffmpeg wrote stays at
                `partial_path`, and `path` is left as it was.
        """
        if not self._ffmpeg.stdin.closed:
            try:
                self._ffmpeg.stdin.close()
            except BrokenPipeError:
                pass  # ffmpeg has exited: its status says why
        status = self._ffmpeg.wait()
        if not complete and self.num_frames == 0:
            self._messages.close()
            pathlib.Path(self.partial_path).unlink(missing_ok=True)
            return None
        if status != 0:
            raise VideoWriteError(self._failure(f"ffmpeg exited with status {status}"))
        self._messages.close()
        written = WrittenVideo.read(self.partial_path)
        if written.num_frames != self.num_frames:
            raise VideoWriteError(self._failure(f"the file holds {written.num_frames} frames"))
        if not complete:
            return written
        os.replace(self.partial_path, self.path)
        return replace(written, path=self.path)

    def _failure(self, what: str) -> str:
        """The message of a `VideoWriteError`: the file, the codec, the frames sent, what failed, ffmpeg's words,
        and where the frames it wrote are."""
        messages = ""
        if not self._messages.closed:
            self._messages.seek(0)
            messages = self._messages.read().decode(errors="replace").strip()[-2000:]
        return (
            f"Writing {self.path} ({self.codec.encoder}, {self.num_frames} frames sent): {what}. "
            f"ffmpeg said: {messages or '(nothing)'}. What it wrote is in {self.partial_path}; {self.path} is left "
            "as it was"
        )


def partial_video_path(path: str | os.PathLike) -> str:
    """Where `VideoStreamWriter` writes `path` until the video is complete: `video.partial.mp4` for `video.mp4`
    (the suffix kept, for ffmpeg's container and for players)."""
    path = pathlib.Path(path)
    return str(path.with_name(f"{path.stem}.partial{path.suffix}"))


def video_paths(output_path: str | os.PathLike | list, num_videos: int) -> list[str]:
    """One file per video: a list is taken as is; one path for several videos gets `_0`, `_1`, ... suffixes."""
    if isinstance(output_path, (list, tuple)):
        if len(output_path) != num_videos:
            raise ValueError(f"`output_path` lists {len(output_path)} files for {num_videos} videos.")
        return [str(p) for p in output_path]
    if num_videos == 1:
        return [str(output_path)]
    path = pathlib.Path(output_path)
    return [str(path.with_name(f"{path.stem}_{i}{path.suffix}")) for i in range(num_videos)]
