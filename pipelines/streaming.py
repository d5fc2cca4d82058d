"""Streaming output for chunk-by-chunk generation: causal VAE decoding and incremental mp4 writing.

Both objects hold a fixed amount of memory however long the video gets: the decoder keeps the Wan
VAE's causal cache (the last two frames of every causal conv), the writer pipes each frame straight
to ffmpeg. Together they let `LaCTVideoPipeline.stream` produce a video of any length.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, unpatchify


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
        num_convs = sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules())
        self.feat_cache: list = [None] * num_convs  # one slot per causal conv, as `vae.clear_cache()` makes
        self.first_frame = True

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, f, h, w) denormalised latents -> (B, 3, frames, H, W) video in [-1, 1]."""
        # Offloading hooks run around `vae.decode` (`apply_forward_hook`); we bypass `decode`, so run
        # the hook here to move the VAE onto the execution device.
        hook = getattr(self.vae, "_hf_hook", None)
        if hook is not None and hasattr(hook, "pre_forward"):
            hook.pre_forward(self.vae)
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


class Mp4StreamWriter:
    """Writes frames to an mp4 as they arrive (imageio-ffmpeg), holding none of them.

    Frames are float RGB in [0, 1], converted to uint8 exactly as `diffusers.utils.export_to_video`
    does. `macro_block_size=1` keeps the frame size (imageio would pad it to multiples of 16).
    """

    def __init__(self, path: str | os.PathLike, height: int, width: int, fps: int = 16, quality: float = 5.0):
        import imageio_ffmpeg

        self.path = str(path)
        pathlib.Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._frames = imageio_ffmpeg.write_frames(
            self.path, (width, height), fps=fps, quality=quality, macro_block_size=1
        )
        self._frames.send(None)  # start ffmpeg
        self.num_frames = 0

    def write(self, frames: np.ndarray) -> None:
        """frames: (f, H, W, 3) float in [0, 1]."""
        for frame in (frames * 255).astype(np.uint8):
            self._frames.send(np.ascontiguousarray(frame))
        self.num_frames += len(frames)

    def close(self) -> None:
        self._frames.close()

    def __enter__(self) -> "Mp4StreamWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
