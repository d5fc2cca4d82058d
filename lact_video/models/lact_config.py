"""The LaCT config, declared once: the keys LaCT adds to a Wan transformer config, and their old names.

`LaCTConfig` is the finetune config's `model.lact` section (OmegaConf checks its types and enums),
and its fields, plus `chunk_frames`, are the LaCT arguments of `LaCTWanTransformer3DModel` (whose
signature takes its defaults from here). The comment above each field is its help: it feeds the
README's configuration reference (`scripts/config_reference.py`).

Renamed keys keep loading through the deprecated aliases below, in every format that holds them
(docs/design.md, Sec. 6.2 and the table of Sec. 6.5).
"""

import dataclasses
import warnings
from dataclasses import dataclass
from enum import Enum


class AttentionMode(str, Enum):
    window = "window"  # LaCT: a noisy chunk sees itself and the previous clean chunk
    full_causal = "full_causal"  # the full-attention baseline: every segment sees all earlier clean chunks


class MuonDtype(str, Enum):
    """Precision of the Newton-Schulz iteration (a `torch` dtype name)."""

    float32 = "float32"
    float64 = "float64"
    bfloat16 = "bfloat16"
    float16 = "float16"


class PositionPolicy(str, Enum):
    """Rotary positions of the chunks past the training length (docs/design.md Sec. 1.7)."""

    absolute = "absolute"  # chunk i at frames i*k .. i*k+k-1, however far the video goes
    clamp = "clamp"  # past the training length, every chunk at the last trained chunk's position
    cyclic = "cyclic"  # past the training length, positions cycle through the last trained chunks


class Variant(str, Enum):
    """The model's variants for comparisons; `VARIANTS` in the model module gives their LaCT config overrides."""

    lact = "lact"  # LaCT itself
    swa = "swa"  # window attention only (sliding-window attention): the memory is off
    full_causal = "full_causal"  # full block-causal attention (CausVid-style teacher forcing)


@dataclass
class LaCTConfig:
    """The LaCT keys of `LaCTWanTransformer3DModel.from_wan`. `chunk_frames` is `data.chunk_frames`."""

    # Blocks that get a fast-weight memory; null means all of them.
    lact_blocks: list[int] | None = None
    # Trailing tokens of the previous clean chunk a noisy chunk attends to; null = the whole chunk.
    window_size: int | None = None
    # Channels per fast-weight head (d); must divide the model dim.
    fw_head_dim: int = 768
    # Fast-weight MLP hidden size as a multiple of fw_head_dim.
    fw_mlp_ratio: int = 2
    # Newton-Schulz-orthogonalised fast-weight updates (Muon).
    use_muon: bool = False
    # Momentum across chunks, with a learned per-token gate.
    use_momentum: bool = False
    # Keep every fast-weight row at its initial norm after each update.
    weight_norm: bool = True
    # Precision of the Newton-Schulz iteration: float32, bfloat16 (the authors' GPU choice), float64 or float16.
    muon_dtype: MuonDtype = MuonDtype.float32
    # Base fast-weight learning rate: every token's rate is softplus(lr_proj(x) + softplus^-1(fw_base_lr)), so
    # fw_base_lr at initialisation (lr_proj = 0) and where weight decay on lr_proj pulls it. A constant, in no state dict.
    fw_base_lr: float = 1e-3
    # Retention of the fast weights, lambda in [0, 1]: after each chunk's update W <- W0 + (1 - lambda) (W - W0), W0
    # the initial state, which bounds how far the state drifts on long videos (about one step / lambda). 0: off (the spec).
    fw_retention_decay: float = 0.0
    # Noisy copies of each chunk in the teacher-forcing sequence (R).
    num_repeat: int = 1
    # "window" (LaCT), or "full_causal": the full-attention baseline (cost grows with the video).
    attention_mode: AttentionMode = AttentionMode.window
    # Rotary positions of chunks past trained_chunks: absolute (the position grows with the video), clamp or
    # cyclic (bounded: the memory writes and reads at trained positions; window attention keeps its offsets).
    # Folders saved without this key load as absolute.
    position_policy: PositionPolicy = PositionPolicy.clamp
    # Chunk positions training covered (clip chunks + train.position_offset_max); null: the trainer sets it. A
    # model without it (e.g. fresh from from_wan) uses absolute positions whatever position_policy says.
    trained_chunks: int | None = None


# Config keys that LaCT adds to a Wan transformer config: chunk_frames (clip geometry, shared with the
# data config) and the `LaCTConfig` fields.
LACT_CONFIG_KEYS = ("chunk_frames", *(f.name for f in dataclasses.fields(LaCTConfig)))

# Deprecated aliases, old name -> new name (docs/design.md, Sec. 6.5). LaCT keys: in config.json, the
# keywords of `from_wan` and of the pipeline, `--lact` and `python -m lact_video.convert`.
DEPRECATED_LACT_KEYS = {"base_lr": "fw_base_lr", "inter_multi": "fw_mlp_ratio"}
# Dotted paths of the finetune config: recipes, command-line overrides, a run's finetune_config.yaml.
DEPRECATED_FINETUNE_KEYS = {
    "model.mode": "model.variant",
    **{f"model.lact.{old}": f"model.lact.{new}" for old, new in DEPRECATED_LACT_KEYS.items()},
}
ALIASES_INTRODUCED, ALIASES_REMOVED = "0.2.0", "0.4.0"

_warned: set[str] = set()  # old names warned about in this process


def deprecated_key(key: str, aliases: dict[str, str], where: str) -> str:
    """`key`, or its new name if it is a deprecated alias, with a FutureWarning once per process and key.

    Args:
        aliases: old name -> new name (`DEPRECATED_LACT_KEYS` or `DEPRECATED_FINETUNE_KEYS`).
        where: the reader, for the message ("config.json", "the command line", ...).
    """
    new = aliases.get(key)
    if new is None:
        return key
    if key not in _warned:
        _warned.add(key)
        warnings.warn(
            f"{where}: {key!r} is the deprecated name of {new!r} (renamed in lact-video {ALIASES_INTRODUCED}); "
            f"lact-video {ALIASES_REMOVED} will not read it. Write {new!r} instead.",
            FutureWarning,
            stacklevel=3,
        )
    return new


def rename_deprecated(values: dict, aliases: dict[str, str], where: str) -> dict:
    """A copy of `values` with every deprecated key renamed (see `deprecated_key`), in the same order.

    Raises:
        ValueError: an old key and its new name are both given, with different values.
    """
    renamed = {}
    for key, value in values.items():
        new = deprecated_key(key, aliases, where)
        if new in renamed and renamed[new] != value:  # the old and the new name, in either order
            old = key if new != key else next(k for k in values if aliases.get(k) == new)
            raise ValueError(
                f"{where}: {old!r} is the deprecated name of {new!r}; both are given, with different values "
                f"({values[old]!r} and {values[new]!r}). Give {new!r} only."
            )
        renamed[new] = value
    return renamed
