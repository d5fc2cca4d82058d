from .transformer_lact_wan import LaCTTransformerOutput, LaCTWanTransformer3DModel

__all__ = ["LaCTTransformerOutput", "LaCTWanTransformer3DModel"]
