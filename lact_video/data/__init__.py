"""Training data: its settings, captioned video folders, and the latent cache.

The encoders live in `lact_video.data.encode`, imported on its own because it pulls in
diffusers' Wan pipeline; everything here is cheap enough to check a config before any model
loads. The clip geometry (the 4F - 3 rule, whole chunks, sizes) is `lact_video.geometry`.
"""

from lact_video.data.config import DataConfig
from lact_video.data.latent_cache import LatentCacheDataset, LatentCacheWriter, cache_geometry
from lact_video.data.video_dataset import SkippedVideo, VideoEntry, VideoFolderDataset, read_metadata, scan_videos
from lact_video.data.video_reader import VideoDecodeError, VideoInfo, probe_video, read_frames, resample_times

__all__ = [
    "DataConfig",
    "LatentCacheDataset",
    "LatentCacheWriter",
    "SkippedVideo",
    "VideoDecodeError",
    "VideoEntry",
    "VideoFolderDataset",
    "VideoInfo",
    "cache_geometry",
    "probe_video",
    "read_frames",
    "read_metadata",
    "resample_times",
    "scan_videos",
]
