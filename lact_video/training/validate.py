"""Validation loss per frame chunk for one or more checkpoints, side by side (`finetune/validate.py`,
`lact-video-validate`).

The LaCT paper judges AR video models by the teacher-forcing loss of each chunk index at fixed
noise levels: a memory that works gives later chunks a lower loss than window attention alone.

    python finetune/validate.py --data_dir DIR --checkpoints A [B ...] --output_dir OUT \\
        [--names a b] [--noise_levels 0.25 0.5 0.75] [--max_clips N] [--config RECIPE.yaml] [key=value ...]

A checkpoint is:
- a diffusers folder exported by finetune.py (or any `LaCTVideoPipeline.save_pretrained` folder);
- a LaCT transformer folder (`config.json` of `LaCTWanTransformer3DModel`);
- a plain Wan2.1 diffusers folder: patched with the config's LaCT settings, untrained (`model.variant`
  picks lact, swa or full_causal);
- a `checkpoint-<step>` folder of a finetune.py run (accelerate `save_state`, also ZeRO-3 shards);
  its run's `finetune_config.yaml` says how to build the model (the raw weights, not the EMA).

`DIR` is a video folder (`metadata.jsonl`/`.csv`) or a latent cache from `finetune/precompute.py`.
A video folder is encoded with each checkpoint's own VAE and text encoder when it is a complete
pipeline folder (`vae/`, `text_encoder/`, `tokenizer/`), else with its run's base (a training
checkpoint) or `model.pretrained_model_name_or_path`; the log says which. Clips are encoded once per
set of encoders, and every checkpoint sees the same noise. The clip geometry
and every other setting come from the trainer's config (defaults, `--config`, overrides).
Writes `per_chunk_loss.{json,csv,png}` and `report.md` to `OUT`.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys

import torch
from omegaconf import OmegaConf

from .. import __version__
from ..data import LatentCacheDataset, VideoFolderDataset
from ..evaluation import DEFAULT_NOISE_LEVELS, check_noise_levels, per_chunk_loss, write_report
from ..models import LaCTWanTransformer3DModel
from ..models.formats import CHECKPOINT_FORMAT_KEY, convert_weights, saved_format
from .checkpointing import MARKER, read_marker
from .config import ConfigError, FinetuneConfig, exit_on_config_error, lact_config, load_config, parse_command_line

logger = logging.getLogger("validate")
RUN_CONFIG = "finetune_config.yaml"
ENCODER_FOLDERS = ("vae", "text_encoder", "tokenizer")  # what a checkpoint needs to encode clips itself


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # a prefix of a trainer flag (--out for --output_dir) is not taken as one of these
        epilog="Any other argument is a trainer config flag or KEY=VALUE override: python finetune/finetune.py --help",
    )
    parser.add_argument("--data_dir", required=True, help="video folder or latent cache")
    parser.add_argument("--checkpoints", nargs="+", required=True, help="folders to evaluate")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--names", nargs="+", help="labels for the checkpoints (default: folder names)")
    parser.add_argument("--noise_levels", nargs="+", type=float, default=list(DEFAULT_NOISE_LEVELS))
    parser.add_argument("--max_clips", type=int, default=None, help="evaluate only the first N clips")
    parser.add_argument("--seed", type=int, default=0, help="seeds the per-clip noise")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    # 1. Check arguments and the clip geometry before loading anything
    if args.names and len(args.names) != len(args.checkpoints):
        raise ConfigError(
            f"--names has {len(args.names)} labels for {len(args.checkpoints)} checkpoints: give one per checkpoint"
        )
    try:
        check_noise_levels(args.noise_levels)
    except ValueError as error:
        raise ConfigError(f"--noise_levels: {error}") from None
    checkpoints = [pathlib.Path(c) for c in args.checkpoints]
    kinds = [checkpoint_kind(path) for path in checkpoints]
    data_dir = pathlib.Path(args.data_dir)
    is_cache = (data_dir / "index.json").is_file()
    source = f"data.cache_dir={data_dir}" if is_cache else f"data.train_data_dir={data_dir}"
    config = load_config([*overrides, source, *base_override(checkpoints, overrides)])
    names = unique_names(args.names or [path.name for path in checkpoints], checkpoints)

    # 2. Encode the clips once per VAE and text encoder: a checkpoint's own, else its base's
    sources = [None if is_cache else encoder_source(path, kind, config) for path, kind in zip(checkpoints, kinds)]
    encoded = {source: encode_clips(config, data_dir, source, args.max_clips) for source in dict.fromkeys(sources)}

    # 3. Evaluate every checkpoint on the same noise (and the same clips where the encoders agree)
    results, trained = {}, set()  # trained: the training lengths the models record (docs/design.md Sec. 1.7)
    for name, path, kind, source in zip(names, checkpoints, kinds, sources):
        clips = encoded[source]
        model = load_transformer(path, kind, config).eval()
        logger.info(
            "Evaluating %s (%s) on %d clips at %d noise levels", name, path, len(clips), len(args.noise_levels)
        )
        results[name] = per_chunk_loss(
            model, clips.__getitem__, len(clips), args.noise_levels, args.seed, progress=True
        )
        trained.add(model.config.trained_chunks)
        del model

    # 4. Write the report, marking the training length if every model records the same one
    paths = write_report(results, args.output_dir, trained_chunks=trained.pop() if len(trained) == 1 else None)
    for kind, path in paths.items():
        print(f"{kind:>8}: {path}")
    return paths


def base_override(checkpoints: list[pathlib.Path], overrides: list[str]) -> list[str]:
    """Where the VAE, text encoder and tokenizer come from, as an override when the config has none:
    the first checkpoint that holds them (or names them, for a training checkpoint)."""
    config_path, normalized = parse_command_line(overrides)
    recipe = OmegaConf.load(config_path) if config_path else OmegaConf.create()
    if OmegaConf.select(recipe, "model.pretrained_model_name_or_path") is not None or any(
        o.startswith("model.pretrained_model_name_or_path=") for o in normalized
    ):
        return []
    for path in checkpoints:
        if has_own_encoders(path):
            return [f"model.pretrained_model_name_or_path={path}"]
        if (path / MARKER).is_file() and (path.parent / RUN_CONFIG).is_file():
            return [f"model.pretrained_model_name_or_path={run_base(path)}"]
    looked = ", ".join(str(path / part) for path in checkpoints for part in ENCODER_FOLDERS)
    raise ConfigError(
        f"None of the checkpoints holds a VAE and text encoder to encode the clips with (looked for {looked}, and "
        f"for a training run's {RUN_CONFIG}); pass model.pretrained_model_name_or_path=WAN_FOLDER."
    )


def has_own_encoders(path: pathlib.Path) -> bool:
    """A complete pipeline folder: `model_index.json` and its own VAE, text encoder and tokenizer."""
    return (path / "model_index.json").is_file() and all((path / part).is_dir() for part in ENCODER_FOLDERS)


def run_base(path: pathlib.Path) -> str:
    """The base model of the run that wrote training checkpoint `path`."""
    return OmegaConf.load(path.parent / RUN_CONFIG).model.pretrained_model_name_or_path


def encoder_source(path: pathlib.Path, kind: str, config: FinetuneConfig) -> str:
    """Where the VAE, text encoder and tokenizer for checkpoint `path` come from, logged with where it looked.

    A complete pipeline folder's own; for a training checkpoint, its run's base; else the config's
    model.pretrained_model_name_or_path (a hub id is looked up on the Hugging Face Hub).
    """
    if has_own_encoders(path):
        logger.info("%s: encoding the clips with its own VAE and text encoder", path)
        return str(path)
    own = ", ".join(part + "/" for part in ENCODER_FOLDERS)
    if kind == "training" and (path.parent / RUN_CONFIG).is_file():
        source, origin = run_base(path), f"its run's base ({path.parent / RUN_CONFIG})"
    else:
        source, origin = config.model.pretrained_model_name_or_path, "model.pretrained_model_name_or_path"
    where = "a local folder" if pathlib.Path(source).is_dir() else "not a local folder: a Hugging Face Hub id"
    logger.info("%s has no %s of its own: encoding with those of %s, %s (%s)", path, own, origin, source, where)
    return source


def unique_names(names: list[str], paths: list[pathlib.Path]) -> list[str]:
    if len(set(names)) == len(names):
        return names
    return [f"{p.parent.name}/{p.name}" for p in paths]


def encode_clips(config: FinetuneConfig, data_dir: pathlib.Path, source: str | None, max_clips: int | None) -> list:
    """(latents (1, C, F, h, w), prompt_embeds (1, L, D)) per clip, float32 on the CPU.

    Args:
        source: the folder or hub id of the VAE, text encoder and tokenizer (`encoder_source`); None for
            a latent cache, which holds them encoded.
    """
    if source is None:
        dataset = LatentCacheDataset(data_dir, expected=config.data)
        items = (dataset[i] for i in range(len(dataset)))
        clips = [(item["latents"][None].float(), item["prompt_embeds"][None].float()) for item in items]
        return clips[:max_clips]
    from ..data.encode import encode_prompts, encode_videos, load_frozen_encoders

    # On the CPU; the VAE in float32, the text encoder in its checkpoint's dtype.
    revision = config.model.revision if source == config.model.pretrained_model_name_or_path else None
    try:
        encoders = load_frozen_encoders(source, revision=revision)
    except OSError as error:
        raise OSError(
            f"Could not load the VAE, text encoder and tokenizer from {source} ({error}). Give the checkpoint its own "
            f"({', '.join(ENCODER_FOLDERS)}), or pass model.pretrained_model_name_or_path=WAN_FOLDER."
        ) from error
    dataset = VideoFolderDataset(data_dir, config.data)
    clips = []
    with torch.no_grad():
        for i in range(min(len(dataset), max_clips or len(dataset))):
            item = dataset[i]
            latents = encode_videos(encoders.vae, item["pixel_values"][None])
            texts, length = [item["text"]], config.data.max_sequence_length
            embeds = encode_prompts(encoders.tokenizer, encoders.text_encoder, texts, length)
            clips.append((latents.float(), embeds.float()))
    return clips


def checkpoint_kind(path: pathlib.Path) -> str:
    """ "diffusers" (a pipeline folder), "transformer" or "training"; a clear error for anything else."""
    if (path / "model_index.json").is_file():
        return "diffusers"
    if (path / "config.json").is_file():
        return "transformer"
    if (path / MARKER).is_file():
        return "training"
    raise ValueError(
        f"{path} is not a checkpoint: expected model_index.json (a diffusers folder), config.json (a LaCT "
        f"transformer) or {MARKER} (a finetune.py checkpoint-<step> folder)."
    )


def load_transformer(path: pathlib.Path, kind: str, config: FinetuneConfig) -> LaCTWanTransformer3DModel:
    """The LaCT transformer of any of the checkpoint kinds in the module docstring."""
    if kind == "diffusers":
        index = json.loads((path / "model_index.json").read_text())
        if index.get("transformer", [None, None])[1] == LaCTWanTransformer3DModel.__name__:
            return LaCTWanTransformer3DModel.from_pretrained(path, subfolder="transformer")
        return LaCTWanTransformer3DModel.from_wan(path, subfolder="transformer", **lact_config(config))
    if kind == "transformer":
        return LaCTWanTransformer3DModel.from_pretrained(path)
    return load_training_checkpoint(path)


def load_training_checkpoint(path: pathlib.Path) -> LaCTWanTransformer3DModel:
    """The raw weights of a `save_state` checkpoint, in the model its run's config describes."""
    run_config_path = path.parent / RUN_CONFIG
    if not run_config_path.is_file():
        raise ValueError(
            f"{path} is a training checkpoint but {run_config_path} is missing; it says how to build the model."
        )
    run_config = load_config(["--config", str(run_config_path)])
    model = LaCTWanTransformer3DModel.from_wan(
        run_config.model.pretrained_model_name_or_path, subfolder="transformer", **lact_config(run_config)
    )
    if (path / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state_dict = load_file(path / "model.safetensors")
    elif (path / "pytorch_model").is_dir():
        # ZeRO-3 shards: DeepSpeed's own tool merges them into one fp32 state dict.
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state_dict = get_fp32_state_dict_from_zero_checkpoint(str(path), tag="pytorch_model")
    else:
        raise ValueError(f"{path} holds neither model.safetensors nor DeepSpeed shards (pytorch_model/).")
    model.load_state_dict(state_dict, strict=True)
    convert_weights(model, saved_format(read_marker(path), CHECKPOINT_FORMAT_KEY, str(path / MARKER)), str(path))
    return model


def cli() -> None:
    """The `lact-video-validate` console script: `main` with its return value dropped (a console script's return
    value is its exit status, so a returned report dict would read as a failure). A `ConfigError` exits with
    status 2 and one line on stderr."""
    with exit_on_config_error():
        main()


if __name__ == "__main__":
    cli()
