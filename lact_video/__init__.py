"""lact-video: Large-Chunk Test-Time Training for autoregressive video diffusion on Wan2.1."""

__version__ = "0.4.0"

from .models import LaCTTransformerOutput, LaCTWanTransformer3DModel
from .sequence import TeacherForcingLayout, interleave_teacher_forcing, interleave_timesteps
from .state import ForwardMode, LaCTState, LayerState, TextContext

__all__ = [
    "ForwardMode",
    "LaCTState",
    "LaCTTransformerOutput",
    "LaCTWanTransformer3DModel",
    "LayerState",
    "TeacherForcingLayout",
    "TextContext",
    "__version__",
    "interleave_teacher_forcing",
    "interleave_timesteps",
]
