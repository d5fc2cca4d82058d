"""Which transformer weights train, and their optimizer groups: chosen by module type, never by name.

- `all`: every weight;
- `lact_layers`: the `LaCTAttention` modules (their pretrained q/k/v/o projections and norms, and
  the new memory);
- `new_params`: the `FastWeightMemory` modules only;
- `lora`: PEFT LoRA adapters on the pretrained linears that `model.lora.target_modules` names (the base
  weights stay frozen), and the `FastWeightMemory` modules in full, as they start from scratch
  (docs/design.md, Sec. 5.6).

Every new parameter lives in a `FastWeightMemory`; those form their own group with a larger lr.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from enum import Enum

import torch

from ..layers import FastWeightMemory, LaCTAttention


class Trainable(str, Enum):
    """The trainable sets (`model.trainable` of the finetune config)."""

    all = "all"  # every transformer weight
    lact_layers = "lact_layers"  # the LaCT attention layers: their pretrained q/k/v/o and the new memory
    new_params = "new_params"  # only the new fast-weight memory parameters
    lora = "lora"  # LoRA adapters on the pretrained linears, and the new fast-weight memory parameters


class LoraInit(str, Enum):
    """How the LoRA matrices start; both give B = 0, so training starts from the unchanged model."""

    default = "default"  # peft's default: A Kaiming-uniform (as nn.Linear), B zero
    gaussian = "gaussian"  # A normal with std 1/rank, B zero


# Wan's attention projections, in self- and cross-attention (the modules diffusers' and finetrainers' Wan LoRAs use).
DEFAULT_TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]
PLAIN_NAME = re.compile(r"[\w.]+")  # a module name, not a regular expression


@dataclass
class LoraSettings:
    """The `model.lora` group of the finetune config (used when model.trainable=lora); names as in peft's LoraConfig."""

    # LoRA rank r: the A matrices are (r, in_features), the B matrices (out_features, r). Flag: --rank.
    rank: int = 16
    # The update B A is scaled by lora_alpha / rank. Flag: --lora_alpha.
    lora_alpha: float = 16.0
    # Dropout on the LoRA branch's input. Flag: --lora_dropout.
    lora_dropout: float = 0.0
    # Module names (a suffix of the full name, as peft matches: to_q, attn1.to_q, blocks.0.attn1.to_q), or one
    # regular expression that peft matches against the full names (blocks\.\d+\.attn1\.to_[qkv]). On the command
    # line a comma-separated list works too: --lora_target_modules to_q,to_k,to_v,to_out.0.
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    # default (A Kaiming-uniform) or gaussian; B starts at zero either way.
    init_lora_weights: LoraInit = LoraInit.default


def target_modules_spec(target_modules: list[str]) -> list[str] | str:
    """`model.lora.target_modules` as peft takes it: a list of module names, or one regular expression.

    An entry made of anything but letters, digits, `_` and `.` is a regular expression; it must stand alone.

    Raises:
        ValueError: an empty list, or a regular expression among other entries, or one that does not compile.
    """
    if not target_modules:
        raise ValueError(
            "model.lora.target_modules is empty: name modules (to_q,to_k,to_v,to_out.0) or give a pattern"
        )
    patterns = [entry for entry in target_modules if not PLAIN_NAME.fullmatch(entry)]
    if not patterns:
        return list(target_modules)
    if len(target_modules) > 1:
        raise ValueError(
            f"model.lora.target_modules={list(target_modules)} mixes module names with the pattern {patterns[0]!r}: "
            "give either names (to_q,to_k) or one regular expression"
        )
    try:
        re.compile(patterns[0])
    except re.error as error:
        raise ValueError(f"model.lora.target_modules={patterns[0]!r} is not a regular expression: {error}") from None
    return patterns[0]


def lora_config(settings: LoraSettings, model: torch.nn.Module):
    """peft's `LoraConfig` for `settings` on `model`; the fast-weight memories' modules that the targets match are
    excluded (they train in full)."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=target_modules_spec(settings.target_modules),
        init_lora_weights=True if settings.init_lora_weights == LoraInit.default else "gaussian",
    )
    memories = [name for name, module in model.named_modules() if isinstance(module, FastWeightMemory)]
    inside = [
        name for name, _ in model.named_modules() if any(name == m or name.startswith(m + ".") for m in memories)
    ]
    matched = [name for name in inside if check_target_module_exists(config, name)]
    return dataclasses.replace(config, exclude_modules=matched) if matched else config


def add_lora(model: torch.nn.Module, settings: LoraSettings) -> None:
    """Inject LoRA adapters (adapter "default") into `model` with peft, in place.

    Raises:
        ValueError: `model.lora.target_modules` matches no linear of the model, with the names it has.
    """
    from peft import inject_adapter_in_model

    config = lora_config(settings, model)
    try:
        inject_adapter_in_model(config, model)
    except ValueError as error:
        names = sorted(
            {name.rpartition(".")[2] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        )
        raise ValueError(
            f"model.lora.target_modules={settings.target_modules} found no module to adapt ({error}). Linear module "
            f"names of this model: {', '.join(names)} (or a pattern over full names such as blocks.0.attn1.to_q)"
        ) from None


def lora_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The LoRA matrices of every peft LoRA layer in `model` (not their frozen base layers)."""
    from peft.tuners.lora import LoraLayer

    found = []
    for module in model.modules():
        if isinstance(module, LoraLayer):
            for adapters in (module.lora_A, module.lora_B):
                found += [p for adapter in adapters.values() for p in adapter.parameters()]
    return found


TRAINABLE_MODULES = {
    Trainable.all: torch.nn.Module,
    Trainable.lact_layers: LaCTAttention,
    Trainable.new_params: FastWeightMemory,
    Trainable.lora: FastWeightMemory,  # and the LoRA matrices, see set_trainable
}


def new_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters LaCT adds to Wan: those of every `FastWeightMemory`."""
    return [p for m in model.modules() if isinstance(m, FastWeightMemory) for p in m.parameters()]


def set_trainable(
    model: torch.nn.Module, trainable: Trainable | str, lora: LoraSettings | None = None
) -> list[torch.nn.Parameter]:
    """Freeze `model` except the modules `trainable` names; returns the trainable parameters.

    `trainable=lora` first injects the adapters of `lora` (default `LoraSettings()`) into `model`.

    Raises ValueError naming the valid sets for any other value, or from `add_lora`.
    """
    if trainable not in {t.value for t in Trainable}:
        raise ValueError(f"trainable must be one of {[t.value for t in Trainable]}, got {trainable!r}")
    if trainable == Trainable.lora:
        add_lora(model, lora or LoraSettings())
    model.requires_grad_(False)
    kind = TRAINABLE_MODULES[Trainable(trainable)]
    for module in model.modules():
        if isinstance(module, kind):
            module.requires_grad_(True)
    if trainable == Trainable.lora:
        for param in lora_parameters(model):
            param.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def parameter_groups(model: torch.nn.Module, learning_rate: float, new_params_lr_multiplier: float) -> list[dict]:
    """AdamW groups of the trainable parameters: pretrained (or their LoRA matrices, group `lora`) at
    `learning_rate`, new ones at the multiple.

    Empty groups are left out; every group carries a `name` for logging.
    """
    new = {id(p) for p in new_parameters(model)}
    trainable = [p for p in model.parameters() if p.requires_grad]
    new_lr = learning_rate * new_params_lr_multiplier
    base = "lora" if lora_parameters(model) else "pretrained"
    groups = [
        {"name": base, "params": [p for p in trainable if id(p) not in new], "lr": learning_rate},
        {"name": "new", "params": [p for p in trainable if id(p) in new], "lr": new_lr},
    ]
    return [g for g in groups if g["params"]]


def optimizer_state_bytes(numel: int, weights_dtype: torch.dtype) -> int:
    """Bytes of AdamW state for `numel` trained weights: two float32 moments, plus a float32 master copy when the
    weights are held in 16 bits (DeepSpeed bf16/fp16). Gradients and activations are not counted."""
    master = 4 if weights_dtype in (torch.bfloat16, torch.float16) else 0
    return numel * (8 + master)
