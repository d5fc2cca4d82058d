"""Validation loss per frame chunk (the LaCT paper's figure for AR video models) and its reports."""

from .per_chunk_loss import DEFAULT_NOISE_LEVELS, PerChunkLoss, check_noise_levels, per_chunk_loss
from .report import plot_per_chunk, write_report

__all__ = [
    "DEFAULT_NOISE_LEVELS",
    "PerChunkLoss",
    "check_noise_levels",
    "per_chunk_loss",
    "plot_per_chunk",
    "write_report",
]
