"""How far the fast-weight memory moves from its initial state, chunk after chunk (docs/design.md Sec. 1.7).

A model trained on clips of `L` chunks only ever reads states after at most `L - 1` updates. Past the training
length the state keeps moving: this measures how far, so the per-chunk loss past `L` can be read against it.
The clips are committed chunk by chunk (`ForwardMode.COMMIT`, the clean passes of inference), so the states are
the ones teacher forcing and inference both read (design.md Sec. 3.4).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..ops.fast_weight import FastWeights
from ..state import ForwardMode


@torch.no_grad()
def fast_weight_drift(
    model, clip_at: Callable[[int], tuple[torch.Tensor, torch.Tensor]], num_clips: int
) -> np.ndarray:
    """The memory's distance from its initial state after each committed chunk, averaged over clips.

    Args:
        model: a `LaCTWanTransformer3DModel` with at least one memory block (`lact_blocks`).
        clip_at: index -> (clean latents (1, C, F, H, W), prompt embeddings (1, L, text_dim)).
        num_clips: clips to average over.

    Returns:
        (N, 3) float64, N = F / chunk_frames: row `i` is, after committing chunks `0 .. i`, the relative
        Frobenius distance `||W - W_init|| / ||W_init||` of `(W0, W1, W2)`, averaged over memory blocks, samples
        and fast-weight heads. Unitless; under weight norm (rows kept at their initial norms) each is <= 2.

    Raises:
        ValueError: the model has no memory block, or `num_clips < 1`.
    """
    memories = [block.attn1.memory for block in model.blocks if getattr(block.attn1, "memory", None) is not None]
    if not memories:
        raise ValueError("The model has no fast-weight memory (lact_blocks is empty, or variant swa/full_causal).")
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1; got {num_clips}.")
    k = model.config.chunk_frames
    initial = [FastWeights(memory.w0, memory.w1, memory.w2) for memory in memories]  # (Hf, ...) each
    total = None
    for index in range(num_clips):
        latents, prompt_embeds = clip_at(index)
        text_context = model.encode_text(prompt_embeds)
        state, rows = model.init_state(), []
        for chunk in latents.split(k, dim=2):  # (1, C, k, H, W) each
            timestep = torch.zeros(latents.shape[0], device=latents.device)
            state = model(chunk, timestep, mode=ForwardMode.COMMIT, state=state, text_context=text_context).state
            layers = [layer.fast_weights for layer in state.layers if layer.fast_weights is not None]
            rows.append(torch.stack([_relative_distance(w, w0) for w, w0 in zip(layers, initial)]).mean(0))
        clip_drift = torch.stack(rows).double()  # (N, 3)
        total = clip_drift if total is None else total + clip_drift
    return (total / num_clips).cpu().numpy()


def _relative_distance(weights: FastWeights, initial: FastWeights) -> torch.Tensor:
    """(3,) per matrix, `||W - W_init||_F / ||W_init||_F` averaged over samples and heads: `weights` (B*Hf, ...),
    `initial` the layer's learnable initial state (Hf, ...)."""
    distances = []
    for w, w0 in zip(weights, initial):
        w = w.unflatten(0, (-1, w0.shape[0]))  # (B, Hf, rows, cols)
        distances.append(((w - w0).norm(dim=(-2, -1)) / w0.norm(dim=(-2, -1))).float().mean())
    return torch.stack(distances)
