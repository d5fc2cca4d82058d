"""Which transformer weights train, and their optimizer groups: chosen by module type, never by name.

- `all`: every weight;
- `lact_layers`: the `LaCTAttention` modules (their pretrained q/k/v/o projections and norms, and
  the new memory);
- `new_params`: the `FastWeightMemory` modules only.

Every new parameter lives in a `FastWeightMemory`; those form their own group with a larger lr.
"""

from __future__ import annotations

from enum import Enum

import torch

from ..layers import FastWeightMemory, LaCTAttention


class Trainable(str, Enum):
    """The trainable sets (`model.trainable` of the finetune config)."""

    all = "all"  # every transformer weight
    lact_layers = "lact_layers"  # the LaCT attention layers: their pretrained q/k/v/o and the new memory
    new_params = "new_params"  # only the new fast-weight memory parameters


TRAINABLE_MODULES = {
    Trainable.all: torch.nn.Module,
    Trainable.lact_layers: LaCTAttention,
    Trainable.new_params: FastWeightMemory,
}


def new_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters LaCT adds to Wan: those of every `FastWeightMemory`."""
    return [p for m in model.modules() if isinstance(m, FastWeightMemory) for p in m.parameters()]


def set_trainable(model: torch.nn.Module, trainable: Trainable | str) -> list[torch.nn.Parameter]:
    """Freeze `model` except the modules `trainable` names; returns the trainable parameters.

    Raises ValueError naming the valid sets for any other value.
    """
    if trainable not in {t.value for t in Trainable}:
        raise ValueError(f"trainable must be one of {[t.value for t in Trainable]}, got {trainable!r}")
    model.requires_grad_(False)
    kind = TRAINABLE_MODULES[Trainable(trainable)]
    for module in model.modules():
        if isinstance(module, kind):
            module.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def parameter_groups(model: torch.nn.Module, learning_rate: float, new_params_lr_multiplier: float) -> list[dict]:
    """AdamW groups of the trainable parameters: pretrained at `learning_rate`, new ones at the multiple.

    Empty groups are left out; every group carries a `name` for logging.
    """
    new = {id(p) for p in new_parameters(model)}
    trainable = [p for p in model.parameters() if p.requires_grad]
    new_lr = learning_rate * new_params_lr_multiplier
    groups = [
        {"name": "pretrained", "params": [p for p in trainable if id(p) not in new], "lr": learning_rate},
        {"name": "new", "params": [p for p in trainable if id(p) in new], "lr": new_lr},
    ]
    return [g for g in groups if g["params"]]
