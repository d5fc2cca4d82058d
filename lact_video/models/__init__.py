from .lact_config import LaCTConfig
from .transformer_lact_wan import VARIANTS, LaCTTransformerOutput, LaCTWanTransformer3DModel

__all__ = ["VARIANTS", "LaCTConfig", "LaCTTransformerOutput", "LaCTWanTransformer3DModel"]
