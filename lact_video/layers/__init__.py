"""Modules with parameters: the LaCT attention layer, its fast-weight memory, Wan's rotary tables."""

from .fast_weight_memory import FastWeightMemory
from .lact_attention import LaCTAttention

__all__ = ["FastWeightMemory", "LaCTAttention"]
