"""diffusers pipelines for lact-video."""

from .pipeline_lact_video import LaCTVideoPipeline, LaCTVideoPipelineOutput
from .streaming import Mp4StreamWriter, WanStreamingDecoder

__all__ = ["LaCTVideoPipeline", "LaCTVideoPipelineOutput", "Mp4StreamWriter", "WanStreamingDecoder"]
