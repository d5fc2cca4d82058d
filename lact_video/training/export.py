"""Export a trained LaCT transformer as a diffusers pipeline folder that `LaCTVideoPipeline` loads.

The folder holds `transformer/` (the LaCT transformer, `save_pretrained`), the base model's
`vae/`, `text_encoder/`, `tokenizer/` and `scheduler/` unchanged, and `model_index.json` naming
`LaCTVideoPipeline` with the transformer class from `lact_video.models.transformer_lact_wan`, as
the pipeline's own `save_pretrained` writes it. `model_index.json` is written last: a folder
without it is an unfinished export. `write_pipeline_folder` writes that layout for the trainer's
export and for `lact_video.convert` alike.

A LoRA run (`model.trainable=lora`) exports the transformer with its base Wan weights and its trained LaCT
parameters, and beside it the adapters in diffusers' Wan LoRA format (`pytorch_lora_weights.safetensors`, keys
`transformer.<module>.lora_A.weight`, peft's config as metadata), which `LaCTVideoPipeline.load_lora_weights` and
diffusers' `WanPipeline` read. With `fuse_lora` the folder holds one merged transformer (W + lora_alpha / r B A, as
diffusers' `fuse_lora`) and no LoRA file.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from contextlib import nullcontext

import diffusers
from accelerate import init_empty_weights
from diffusers.loaders.lora_base import LORA_WEIGHT_NAME_SAFE

from ..models import LaCTWanTransformer3DModel

PIPELINE_CLASS = "LaCTVideoPipeline"
BASE_COMPONENTS = ("scheduler", "text_encoder", "tokenizer", "vae")


def local_model_folder(pretrained_model_name_or_path: str, revision: str | None = None) -> pathlib.Path:
    """The local folder of a diffusers model: the path itself, or its snapshot in the hub cache."""
    if os.path.isdir(pretrained_model_name_or_path):
        return pathlib.Path(pretrained_model_name_or_path)
    from huggingface_hub import snapshot_download

    patterns = ["model_index.json"] + [f"{c}/*" for c in BASE_COMPONENTS]
    return pathlib.Path(snapshot_download(pretrained_model_name_or_path, revision=revision, allow_patterns=patterns))


def model_index(base_folder: pathlib.Path) -> dict:
    """`model_index.json` for the exported folder, from the base Wan folder's one."""
    base = json.loads((base_folder / "model_index.json").read_text())
    index = {"_class_name": PIPELINE_CLASS, "_diffusers_version": diffusers.__version__}
    for component in BASE_COMPONENTS:
        index[component] = base[component]
    index["transformer"] = [LaCTWanTransformer3DModel.__module__, LaCTWanTransformer3DModel.__name__]
    return dict(sorted(index.items()))


def transformer_from_state_dict(state_dict: dict, config, lora_config=None) -> LaCTWanTransformer3DModel:
    """The transformer of `config` holding a full state dict (e.g. gathered from ZeRO-3 shards), without a copy.

    `lora_config`: peft's `LoraConfig` of a LoRA run, whose adapters (adapter "default") the state dict holds.
    """
    from peft import inject_adapter_in_model

    with init_empty_weights():
        model = LaCTWanTransformer3DModel.from_config(config)
        if lora_config is not None:
            inject_adapter_in_model(lora_config, model)
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model


def remove_lora(model: LaCTWanTransformer3DModel, fuse: bool) -> LaCTWanTransformer3DModel:
    """`model` without its peft LoRA layers, in place: their base weights, or with `fuse` the merged weights
    W + scale B A (diffusers' `PeftAdapterMixin.fuse_lora`, then `unload_lora`)."""
    if fuse:
        model.fuse_lora()
    model.unload_lora()
    return model


def save_lora_weights(output_dir: pathlib.Path, model: LaCTWanTransformer3DModel) -> None:
    """The adapters of `model` as diffusers' Wan LoRA file, `WanPipeline.save_lora_weights`' format."""
    from diffusers import WanPipeline
    from peft import get_peft_model_state_dict

    WanPipeline.save_lora_weights(
        output_dir,
        transformer_lora_layers=get_peft_model_state_dict(model),
        transformer_lora_adapter_metadata=model.peft_config["default"].to_dict(),
    )


def write_pipeline_folder(
    output_dir: pathlib.Path,
    transformer: LaCTWanTransformer3DModel,
    base_folder: pathlib.Path,
    extra_files: dict[str, str] | None = None,
) -> None:
    """Write the pipeline folder: `transformer/` (`save_pretrained`), the base components, `model_index.json`.

    The base folder's components are copied byte for byte rather than loaded and re-saved (the UMT5
    encoder alone is ~11 GB), replacing any already there. `extra_files` ({file name: text}) go beside
    `model_index.json`, which is written last: its absence marks a partial folder.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "model_index.json").unlink(missing_ok=True)
    transformer.save_pretrained(output_dir / "transformer")
    for component in BASE_COMPONENTS:
        if (output_dir / component).exists():
            shutil.rmtree(output_dir / component)
        shutil.copytree(base_folder / component, output_dir / component)
    for name, text in (extra_files or {}).items():
        (output_dir / name).write_text(text)
    (output_dir / "model_index.json").write_text(json.dumps(model_index(base_folder), indent=2) + "\n")


def export_pipeline(
    accelerator, model, base_model: str, export_dir, ema=None, revision=None, extra_files=None, fuse_lora=False
):
    """Write the pipeline folder (all processes call this: under ZeRO-3 the gather is collective).

    Args:
        model: the prepared transformer.
        ema: a `ShardedEMA` to export instead of the raw weights, or None.
        extra_files: {file name: text} written beside model_index.json (e.g. the training config).
        fuse_lora: a LoRA model's adapters merged into its weights (one folder, no LoRA file); without it they go
            to `pytorch_lora_weights.safetensors` beside the base weights (see the module docstring).
    """
    export_dir = pathlib.Path(export_dir)
    if os.path.isdir(base_model) and export_dir.resolve() == pathlib.Path(base_model).resolve():
        raise ValueError(f"refusing to export into the base model's own folder {base_model}; pick another export_dir")
    with ema.swapped_in() if ema is not None else nullcontext():
        state_dict = accelerator.get_state_dict(model)
        if ema is not None and not ema.sharded and accelerator.is_main_process:
            # Unsharded, the state dict shares storage with the weights, which get the raw values back
            # when the block ends. (ZeRO-3's gathered state dict is a fresh copy already.)
            state_dict = {k: v.detach().to("cpu", copy=True) for k, v in state_dict.items()}
    if accelerator.is_main_process:
        base = local_model_folder(base_model, revision)
        unwrapped = accelerator.unwrap_model(model)
        lora_config = getattr(unwrapped, "peft_config", {}).get("default")
        transformer = transformer_from_state_dict(state_dict, unwrapped.config, lora_config)
        export_dir.mkdir(parents=True, exist_ok=True)
        (export_dir / "model_index.json").unlink(missing_ok=True)  # the folder is unfinished from here on
        (export_dir / LORA_WEIGHT_NAME_SAFE).unlink(missing_ok=True)  # an earlier export's adapters, never stacked
        if lora_config is not None:
            if not fuse_lora:
                save_lora_weights(export_dir, transformer)
            transformer = remove_lora(transformer, fuse=fuse_lora)
        write_pipeline_folder(export_dir, transformer, base, extra_files)
    accelerator.wait_for_everyone()
    return export_dir
