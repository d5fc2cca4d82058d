"""Data settings for finetuning, and the clip-geometry check that runs before any model loads.

Wan's VAE encodes the first video frame alone and every later group of 4 frames into one
latent frame, so `num_frames = 4F - 3` video frames give `F` latent frames. It compresses
space 8x, and the transformer's (1, 2, 2) patch embedding halves it again. LaCT cuts the `F`
latent frames into chunks of `k = chunk_frames`, so `F` must be a multiple of `k`
(lact-video-spec.md, section 1).
"""

from __future__ import annotations

from dataclasses import dataclass

VAE_TEMPORAL_FACTOR = 4
# The VAE's 8x spatial compression times the transformer's 2x2 patches.
SPATIAL_MULTIPLE = 16


@dataclass
class DataConfig:
    # Folder of videos with a metadata.jsonl or metadata.csv (columns file_name, text).
    train_data_dir: str | None = None
    # Same layout as train_data_dir; clips held out for the validation loss.
    validation_data_dir: str | None = None
    # Latents and prompt embeddings written by finetune/precompute.py; used instead of decoding.
    cache_dir: str | None = None
    # Crop height in pixels; a multiple of 16.
    height: int = 480
    # Crop width in pixels; a multiple of 16.
    width: int = 832
    # Video frames per clip: 4F - 3, with F latent frames a multiple of chunk_frames.
    num_frames: int = 81
    # Clips are resampled to this frame rate (frames per second) before the crop.
    fps: float = 16.0
    # Latent frames per autoregressive chunk (k).
    chunk_frames: int = 3
    # Text tokens per prompt; UMT5 embeddings are zero-padded to this length.
    max_sequence_length: int = 512
    # Start each clip at a seeded random frame; False starts every clip at frame 0.
    random_start: bool = True
    # Seeds the random start frames (with the sample index and the epoch).
    seed: int = 0
    # DataLoader worker processes; 0 decodes in the training process.
    dataloader_num_workers: int = 0

    @property
    def latent_frames(self) -> int:
        """F, the number of latent frames per clip."""
        return latent_num_frames(self.num_frames)

    def check_clip(self) -> None:
        """Raise ValueError, with the fix, if the clip's frames, size or frame rate cannot work."""
        check_video_geometry(self.num_frames, self.chunk_frames, self.height, self.width)
        if not self.fps > 0:
            raise ValueError(f"fps must be positive, got {self.fps}")

    def validate(self) -> None:
        """Check the whole config; cheap, so call it before loading any model."""
        self.check_clip()
        if self.train_data_dir is None and self.cache_dir is None:
            raise ValueError("set train_data_dir (a video folder) or cache_dir (latents from finetune/precompute.py)")
        if self.dataloader_num_workers < 0:
            raise ValueError(f"dataloader_num_workers must be >= 0, got {self.dataloader_num_workers}")


def latent_num_frames(num_frames: int) -> int:
    """Latent frames F that Wan's VAE makes from `num_frames` (= 4F - 3) video frames."""
    return (num_frames - 1) // VAE_TEMPORAL_FACTOR + 1


def nearest_valid_num_frames(num_frames: int, chunk_frames: int) -> list[int]:
    """The valid frame counts just below and just above `num_frames` (both when they exist).

    Valid counts are `4 m k - 3` for m >= 1: 4n+1 frames whose latent count is a multiple of k.
    """
    step = VAE_TEMPORAL_FACTOR * chunk_frames
    below = (num_frames + 3) // step * step - 3
    if below == num_frames:
        return [num_frames]
    return [n for n in (below, below + step) if n >= 1]


def check_video_geometry(num_frames: int, chunk_frames: int, height: int, width: int) -> None:
    """Raise ValueError, with the fix, if Wan's VAE and LaCT's chunks cannot use this clip geometry."""
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    suggestion = " or ".join(str(n) for n in nearest_valid_num_frames(num_frames, chunk_frames))
    if num_frames < 1 or (num_frames - 1) % VAE_TEMPORAL_FACTOR:
        raise ValueError(
            f"num_frames={num_frames} is not of the form 4n+1: Wan's VAE encodes the first frame "
            f"alone, then 4 frames per latent frame. With chunk_frames={chunk_frames}, use {suggestion}."
        )
    latent_frames = latent_num_frames(num_frames)
    if latent_frames % chunk_frames:
        raise ValueError(
            f"num_frames={num_frames} gives {latent_frames} latent frames, which do not split into "
            f"chunks of chunk_frames={chunk_frames}. Use num_frames={suggestion} (4F-3 with F a "
            f"multiple of {chunk_frames}), or change chunk_frames."
        )
    for name, size in (("height", height), ("width", width)):
        if size < SPATIAL_MULTIPLE or size % SPATIAL_MULTIPLE:
            lower = max(size // SPATIAL_MULTIPLE * SPATIAL_MULTIPLE, SPATIAL_MULTIPLE)
            upper = (size // SPATIAL_MULTIPLE + 1) * SPATIAL_MULTIPLE
            fix = " or ".join(str(n) for n in sorted({lower, upper}))
            raise ValueError(
                f"{name}={size} is not a positive multiple of {SPATIAL_MULTIPLE} (the VAE downsamples 8x, "
                f"then the transformer patches 2x2): use {fix}."
            )
