"""An exponential moving average of the trainable weights that works under DeepSpeed ZeRO-3.

Design: every rank keeps the EMA of exactly the slice of each trainable parameter it owns. Under
ZeRO-3 that slice is `param.ds_tensor` (1/world_size of the flattened parameter, padded); without
ZeRO-3 it is the whole `param.data`. So

- an update is local elementwise work, `ema += (1 - decay) * (local - ema)` in float32, with no
  communication and 1/world_size of the memory of a full copy;
- a checkpoint stores one EMA file per rank, beside DeepSpeed's own per-rank shards (accelerate's
  `register_for_checkpointing` saves from the main process only, so it cannot hold rank-local
  shards); resuming therefore needs the same world size, as ZeRO-3's own checkpoints do;
- exporting the EMA weights swaps the EMA slices into the local slices, gathers the full state
  dict through the usual path (`accelerator.get_state_dict`), and swaps the raw weights back.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


def local_tensor(param: torch.nn.Parameter) -> torch.Tensor:
    """The part of `param` this rank holds: its ZeRO-3 partition, or the whole tensor."""
    return param.ds_tensor if hasattr(param, "ds_tensor") else param.data


@torch.no_grad()
def ema_update_(ema: list[torch.Tensor], values: list[torch.Tensor], decay: float) -> None:
    """In place, `ema <- decay * ema + (1 - decay) * value` for every pair (values cast to ema's dtype)."""
    torch._foreach_lerp_(ema, [v.to(e.dtype) for e, v in zip(ema, values)], 1.0 - decay)


class ShardedEMA:
    """Float32 EMA of `params`, each rank holding the slices it owns (see the module docstring)."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1); got {decay}")
        self.params = list(params)
        self.decay = decay
        self.sharded = any(hasattr(p, "ds_tensor") for p in self.params)
        self.shadow = [local_tensor(p).detach().float().clone() for p in self.params]
        self.num_updates = 0

    def step(self) -> None:
        """One update after an optimizer step."""
        ema_update_(self.shadow, [local_tensor(p) for p in self.params], self.decay)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": [s.cpu() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        shadow = state["shadow"]
        shapes = [tuple(s.shape) for s in self.shadow]
        if [tuple(s.shape) for s in shadow] != shapes:
            raise ValueError(
                "The checkpoint's EMA does not fit this model's trainable parameters (a different model, "
                "trainable set or number of processes)."
            )
        for mine, saved in zip(self.shadow, shadow):
            mine.copy_(saved)
        self.num_updates = state["num_updates"]

    @contextmanager
    @torch.no_grad()
    def swapped_in(self):
        """Inside the block the model's (local) weights are the EMA weights; restored afterwards."""
        locals_ = [local_tensor(p) for p in self.params]
        backup = [t.clone() for t in locals_]
        for t, s in zip(locals_, self.shadow):
            t.copy_(s)
        try:
            yield
        finally:
            for t, b in zip(locals_, backup):
                t.copy_(b)
