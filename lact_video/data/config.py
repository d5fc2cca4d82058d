"""Data settings for finetuning; `check_clip` checks the clip geometry (`lact_video.geometry`) before any
model loads.
"""

from __future__ import annotations

from dataclasses import dataclass

from lact_video.geometry import DEFAULT_CHUNK_FRAMES, check_video_geometry, latent_num_frames


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
    chunk_frames: int = DEFAULT_CHUNK_FRAMES
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
            raise ValueError(f"fps must be positive (the frame rate clips are resampled to), got fps={self.fps}")

    def validate(self) -> None:
        """Check the whole config; cheap, so call it before loading any model."""
        self.check_clip()
        if self.train_data_dir is None and self.cache_dir is None:
            raise ValueError(
                "train_data_dir and cache_dir are both unset, so there is nothing to train on: set train_data_dir "
                "(a video folder) or cache_dir (latents from finetune/precompute.py)"
            )
        if self.dataloader_num_workers < 0:
            raise ValueError(
                f"dataloader_num_workers={self.dataloader_num_workers} must be 0 or more (0 decodes in the training "
                "process)"
            )
