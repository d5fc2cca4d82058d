"""Training data: captioned video folders, the clip-geometry check, and the latent cache.

The encoders live in `lact_video.data.encode`, imported on its own because it pulls in
diffusers' Wan pipeline; everything here is cheap enough to check a config before any model
loads.
"""

from lact_video.data.config import DataConfig, check_video_geometry, latent_num_frames, nearest_valid_num_frames
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
    "check_video_geometry",
    "latent_num_frames",
    "nearest_valid_num_frames",
    "read_metadata",
    "scan_videos",
]
