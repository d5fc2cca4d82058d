"""diffusers pipelines for lact-video."""

from .pipeline_lact_video import LaCTVideoPipeline, LaCTVideoPipelineOutput
from .streaming import VideoStreamWriter, VideoWriteError, WanStreamingDecoder, WanStreamingEncoder, WrittenVideo

__all__ = [
    "LaCTVideoPipeline",
    "LaCTVideoPipelineOutput",
    "VideoStreamWriter",
    "VideoWriteError",
    "WanStreamingDecoder",
    "WanStreamingEncoder",
    "WrittenVideo",
]
