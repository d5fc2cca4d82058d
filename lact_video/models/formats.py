"""Format versions of the LaCT transformer's saved weights, and the conversion of older ones on load.

docs/design.md, Sec. 6.3. A transformer `config.json` records `_lact_format_version` (the meaning of the
weights) and `_lact_video_version` (the package that wrote it, for diagnosis); diffusers keeps keys that start
with `_` in the file and does not pass them to `__init__`. A file without the marker is format 1.

- Format 1 (lact-video <= 0.2.0, up to commit c34a0ce): the per-token fast-weight rate is
  `softplus(lr_proj(x))`, with the constant `softplus^-1(fw_base_lr)` folded into `lr_proj.bias`.
- Format 2 (issue 12): `softplus(lr_proj(x) + c)`, `c = softplus^-1(fw_base_lr)` a constant outside the state
  dict, as the authors' layer (lact-video-spec Sec. 3(b)). From format 1: `lr_proj.bias -= c`.

Training checkpoints (`checkpoint-<step>/checkpoint.json`) record the same number as `model_format_version`.
"""

import logging

import torch

from ..layers.fast_weight_memory import FastWeightMemory

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
FORMAT_KEY = "_lact_format_version"  # in config.json
PACKAGE_VERSION_KEY = "_lact_video_version"  # in config.json
CHECKPOINT_FORMAT_KEY = "model_format_version"  # in a training checkpoint's checkpoint.json


def format_marker() -> dict:
    """The keys a writer of this package records in a transformer `config.json`."""
    from .. import __version__

    return {FORMAT_KEY: FORMAT_VERSION, PACKAGE_VERSION_KEY: __version__}


def saved_format(values: dict, key: str, where: str) -> int:
    """The format version that `values` (a `config.json` or `checkpoint.json` dict) records under `key`; 1 without.

    Raises:
        ValueError: the file is newer than this package.
    """
    version = values.get(key, 1)
    if not isinstance(version, int) or version < 1 or version > FORMAT_VERSION:
        writer = values.get(PACKAGE_VERSION_KEY, "an unknown version")
        raise ValueError(
            f"{where} records {key}={version!r} (written by lact-video {writer}); this lact-video reads formats "
            f"1 to {FORMAT_VERSION}. Upgrade lact-video to load it."
        )
    return version


@torch.no_grad()
def convert_weights(model: torch.nn.Module, version: int, where: str) -> None:
    """Convert, in place, the weights of a LaCT model loaded from format `version` to `FORMAT_VERSION`,
    and log once what was converted. Format 1 -> 2: every `FastWeightMemory`'s `lr_proj.bias -= lr_offset`
    (computed in float64, then rounded to the bias's dtype).

    Args:
        model: a `LaCTWanTransformer3DModel` (or any module holding `FastWeightMemory` layers) whose weights were
            just loaded, before any use.
        where: the source, for the log line (a path).

    Raises:
        ValueError: a bias is not materialised (accelerate offloaded it to the CPU or disk, `device_map`).
    """
    if version >= FORMAT_VERSION:
        return
    memories = [(name, m) for name, m in model.named_modules() if isinstance(m, FastWeightMemory)]
    for name, memory in memories:
        bias = memory.lr_proj.bias
        if bias.device.type == "meta":
            raise ValueError(
                f"{where} holds format-{version} weights, which must be converted on load, but {name}.lr_proj.bias "
                "was offloaded (device_map). Load it once without offloading and save it again with "
                "save_pretrained: the new folder needs no conversion."
            )
        bias.copy_((bias.double() - memory.lr_offset).to(bias.dtype))
    offsets = sorted({m.lr_offset for _, m in memories})
    logger.warning(
        "%s: format-%d weights (written before lact-video stored the fast-weight rate as softplus(lr_proj(x) + c)); "
        "converted to format %d on load: subtracted c = softplus^-1(fw_base_lr) = %s from lr_proj.bias of %d "
        "fast-weight memories. Same outputs; the files are unchanged, and save_pretrained writes format %d.",
        where,
        version,
        FORMAT_VERSION,
        ", ".join(f"{c:.6g}" for c in offsets),
        len(memories),
        FORMAT_VERSION,
    )
