"""diffusers' LoRA loading for `LaCTVideoPipeline`: Wan2.1 LoRAs apply to the LaCT transformer unchanged.

A LaCT transformer keeps every Wan2.1 T2V module under its Wan name (`blocks.{i}.attn1.to_q`, `attn2.to_k`,
`ffn.net.0.proj`, `proj_out`, ...; docs/design.md Sec. 1.2), so a LoRA trained for `WanTransformer3DModel`
lands on the same base linears. Everything is diffusers' `WanLoraLoaderMixin` (reading the file, converting
the original-Wan `diffusion_model.` names that musubi-tuner and DiffSynth-Studio write, `fuse_lora`,
`set_adapters`, ...); this mixin only adds a check before loading, because diffusers merely logs a warning for
LoRA keys that match no layer, and the LoRA then silently does not apply.
"""

from __future__ import annotations

import torch
from diffusers.loaders import WanLoraLoaderMixin

TRANSFORMER_PREFIX = "transformer."
# The parameters a diffusers-format LoRA holds for a linear layer `m`: m.lora_A.weight (r, in),
# m.lora_B.weight (out, r) and, for LoRAs with `diff_b` bias deltas, m.lora_B.bias (out,).
_LINEAR_SHAPES = {
    "lora_A.weight": lambda linear, value: (value.shape[0], linear.in_features),
    "lora_B.weight": lambda linear, value: (linear.out_features, value.shape[-1]),
    "lora_B.bias": lambda linear, value: (linear.out_features,),
}


class LaCTLoraLoaderMixin(WanLoraLoaderMixin):
    r"""Load LoRA layers into the `LaCTWanTransformer3DModel` of `LaCTVideoPipeline`, as diffusers' `WanPipeline`
    loads them into Wan's: `load_lora_weights`, `save_lora_weights`, `fuse_lora` / `unfuse_lora`,
    `set_adapters`, `disable_lora`, `unload_lora_weights`, ... (see diffusers' `WanLoraLoaderMixin`).

    Accepted key layouts: diffusers' (`transformer.blocks.0.attn1.to_q.lora_A.weight`, as `save_lora_weights`
    writes), original Wan's (`diffusion_model.blocks.0.self_attn.q.lora_A.weight` or `lora_down`/`lora_up` with
    `alpha`, converted by diffusers), and a model adapter without prefix (`blocks.0.attn1.to_q.lora_A.weight`,
    as the model's `save_lora_adapter` writes), taken as the transformer's.

    Raises (`load_lora_weights`):
        ValueError: naming every key that cannot apply: one for another component (LoRA loads into the
            transformer only), one for a layer the transformer lacks (e.g. an image-to-video LoRA's
            `attn2.add_k_proj`, or block 30 on a 30-block model), or one whose shape does not fit its layer
            (a LoRA for another Wan size).
    """

    _lora_loadable_modules = ["transformer"]  # Wan2.1 T2V: no `transformer_2`

    @classmethod
    def load_lora_into_transformer(cls, state_dict, transformer, metadata=None, **kwargs):
        """diffusers' `WanLoraLoaderMixin.load_lora_into_transformer`, after `check_lora_state_dict`.

        A model adapter's keys (and its LoRA config in `metadata`) get the `transformer.` prefix, which
        diffusers' loader filters on: it would otherwise load nothing, with a warning only.
        """
        if not any(key.startswith(TRANSFORMER_PREFIX) for key in state_dict):
            state_dict = {TRANSFORMER_PREFIX + key: value for key, value in state_dict.items()}
            metadata = metadata and {TRANSFORMER_PREFIX + key: value for key, value in metadata.items()}
        check_lora_state_dict(state_dict, transformer)
        super().load_lora_into_transformer(state_dict, transformer, metadata=metadata, **kwargs)


def check_lora_state_dict(state_dict: dict[str, torch.Tensor], transformer: torch.nn.Module) -> None:
    """Check that every key of a diffusers-format LoRA `state_dict` (`transformer.`-prefixed) applies to a layer
    of `transformer` with fitting shapes.

    Raises:
        ValueError: listing each key that cannot apply and why.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    modules = dict(transformer.named_modules())
    problems = []
    for key, value in state_dict.items():
        if not key.startswith(TRANSFORMER_PREFIX):
            problems.append(f"{key}: not for the transformer (LaCTVideoPipeline loads LoRA into its transformer only)")
            continue
        name, _, parameter = key.removeprefix(TRANSFORMER_PREFIX).partition(".lora_")
        module = modules.get(name)
        if module is None:
            problems.append(f"{key}: {type(transformer).__name__} has no layer {name!r}")
            continue
        # A layer that already holds an adapter is peft's wrapper around the base layer.
        base = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
        expected = _LINEAR_SHAPES.get(f"lora_{parameter}")
        if isinstance(base, torch.nn.Linear) and expected and tuple(value.shape) != expected(base, value):
            problems.append(
                f"{key}: shape {tuple(value.shape)} does not fit {name} (in_features {base.in_features}, "
                f"out_features {base.out_features}), expected {expected(base, value)}"
            )
    if problems:
        raise ValueError(
            f"This LoRA does not fit the {type(transformer).__name__} ({len(problems)} of {len(state_dict)} keys; "
            "a Wan2.1 T2V LoRA for the same model size applies unchanged):\n  " + "\n  ".join(problems)
        )
