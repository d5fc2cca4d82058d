"""Training data: its settings, captioned video folders, and the latent cache.

The encoders live in `lact_video.data.encode`, imported on its own because it pulls in
diffusers' Wan pipeline; everything here is cheap enough to check a config before any model
loads. The clip geometry (the 4F - 3 rule, whole chunks, sizes) is `lact_video.geometry`.
"""

from lact_video.data.config import DataConfig
from lact_video.data.latent_cache import LatentCacheDataset, LatentCacheWriter, cache_geometry
from lact_video.data.video_dataset import (
    SkippedVideo,
    VideoDecodeError,
    VideoEntry,
    VideoFolderDataset,
    read_metadata,
    scan_videos,
)

__all__ = [
    "DataConfig",
    "LatentCacheDataset",
    "LatentCacheWriter",
    "SkippedVideo",
    "VideoDecodeError",
    "VideoEntry",
    "VideoFolderDataset",
    "cache_geometry",
    "read_metadata",
    "scan_videos",
]
