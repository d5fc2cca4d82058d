from .transformer_lact_wan import MODES, LaCTTransformerOutput, LaCTWanTransformer3DModel

__all__ = ["MODES", "LaCTTransformerOutput", "LaCTWanTransformer3DModel"]
