"""The shapes each section runs at: the real Wan2.1 sizes on a GPU, toy ones for `--tiny` (the same code paths).

Real sizes are the released configs (`lact_video.wan_configs`) with the recipes' LaCT keys
(configs/wan2.1-t2v-*-lact.yaml): 480x832, 81 frames = 21 latent frames = 7 chunks of 3, 4680 tokens
per chunk, 512 prompt tokens.
"""

from __future__ import annotations

import dataclasses
import pathlib
from dataclasses import dataclass

import yaml

from lact_video.geometry import latent_size
from lact_video.tiny import TRANSFORMER_CONFIGS, VAE_CONFIG
from lact_video.wan_configs import WAN21_T2V_1_3B, WAN21_T2V_14B


@dataclass(frozen=True)
class Sizes:
    name: str
    model: dict  # the "1.3B" Wan config
    fw_head_dim: int
    big_model: dict  # the "14B" Wan config
    big_fw_head_dim: int
    vae: dict | None  # AutoencoderKLWan kwargs; None: the real Wan VAE (the class defaults)
    height: int  # pixels
    width: int
    chunk_frames: int = 3
    text_tokens: int = 512
    # 1. Numerics: a real-width model with 2 blocks, at a smaller frame size.
    numerics_height: int = 240
    numerics_width: int = 416
    numerics_chunks: int = 4
    # 2. Training: the recipe's 81-frame clip; warm-up steps, then timed steps.
    train_chunks: int = 7
    train_warmup: int = 1
    train_steps: int = 3
    # 3. Generation: chunks and steps of the per-chunk timing, the WanPipeline comparison's clip.
    gen_chunks: int = 12
    gen_steps: int = 10
    wan_chunks: int = 7  # 81 frames
    guidance_scale: float = 5.0
    compile_repeats: int = 5  # timed denoising forwards per variant
    compile_whole_model: bool = True  # also `transformer.compile(fullgraph=True)` beside regional compilation
    compile_backend: str = "inductor"  # the tiny mode traces with "eager" (inductor's C++ build takes a minute)

    @property
    def latent(self) -> tuple[int, int]:
        return latent_size(self.height, self.width)

    def tokens_per_chunk(self, height: int | None = None, width: int | None = None) -> int:
        h, w = latent_size(height or self.height, width or self.width)
        p = self.model["patch_size"]
        return self.chunk_frames * (h // p[1]) * (w // p[2])


RECIPES = pathlib.Path(__file__).resolve().parents[2] / "configs"


def recipe_fw_head_dim(size: str) -> int:
    """The recipe's fast-weight head size (configs/wan2.1-t2v-<size>-lact.yaml), so the kit times what users train."""
    recipe = yaml.safe_load((RECIPES / f"wan2.1-t2v-{size}-lact.yaml").read_text())
    return recipe["model"]["lact"]["fw_head_dim"]


FULL = Sizes(
    name="full",
    model=dict(WAN21_T2V_1_3B),
    fw_head_dim=recipe_fw_head_dim("1.3b"),
    big_model=dict(WAN21_T2V_14B),
    big_fw_head_dim=recipe_fw_head_dim("14b"),
    vae=None,
    height=480,
    width=832,
)

# Under 5 minutes on one H100/H200 (bench_gpu.py's docstring gives the estimate): fewer timed steps and
# repeats, regional compilation only; every shape stays real.
QUICK = dataclasses.replace(FULL, name="quick", train_steps=2, compile_repeats=3, compile_whole_model=False)

_TINY_MODEL = dict(TRANSFORMER_CONFIGS["tiny"])
TINY = Sizes(
    name="tiny",
    model=_TINY_MODEL,
    fw_head_dim=12,
    big_model=dict(_TINY_MODEL, num_layers=3, num_attention_heads=4),
    big_fw_head_dim=24,
    vae=dict(VAE_CONFIG),
    height=32,
    width=32,
    text_tokens=16,
    numerics_height=32,
    numerics_width=48,
    numerics_chunks=3,
    train_chunks=3,
    train_steps=1,
    gen_chunks=4,
    gen_steps=2,
    wan_chunks=2,
    compile_repeats=2,
    compile_whole_model=False,
    compile_backend="eager",
)

SIZES = {s.name: s for s in (FULL, QUICK, TINY)}
