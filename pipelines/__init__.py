"""diffusers pipelines for lact-video."""

from .generation_state import LaCTGenerationState, LaCTVideoChunk, StateMismatchError
from .pipeline_lact_video import LaCTVideoPipeline, LaCTVideoPipelineOutput
from .state_io import StateFileError
from .streaming import VideoStreamWriter, VideoWriteError, WanStreamingDecoder, WanStreamingEncoder, WrittenVideo

__all__ = [
    "LaCTGenerationState",
    "LaCTVideoChunk",
    "LaCTVideoPipeline",
    "LaCTVideoPipelineOutput",
    "StateFileError",
    "StateMismatchError",
    "VideoStreamWriter",
    "VideoWriteError",
    "WanStreamingDecoder",
    "WanStreamingEncoder",
    "WrittenVideo",
]
