"""A cache of precomputed Wan latents and prompt embeddings: safetensors shards plus index.json.

Layout of a cache folder, written by `finetune/precompute.py`:

- `shard-00000.safetensors`, ...: `latents` (N, C, F, h, w) float32 and `prompt_embeds` (N, L, D);
- `index.json`: the clip geometry the cache was built with, the encoders, the shards, and one
  record per sample (`file_name`, `text`, `shard`, `row`).

The index is written last, so a folder without one is an unfinished build. A cache built with
other data settings (size, frames, frame rate, text length, and the start frames: `random_start`,
`seed`) is refused with the keys that differ and the command that rebuilds it, instead of training
silently on the wrong clips. Format 2 (issue 13) reads frames by presentation time, upright, at the
display aspect ratio; format 1 caches may hold clips sampled by the container's average frame rate.
"""

from __future__ import annotations

import json
import math
import pathlib

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lact_video.data.config import DataConfig
from lact_video.errors import ConfigError

INDEX_FILE = "index.json"
# 2: frames picked by presentation time, rotation and sample aspect ratio applied (video_reader.py).
FORMAT_VERSION = 2
# The settings that change the cached tensors; a cache must match the training config on all.
GEOMETRY_KEYS = ("height", "width", "num_frames", "fps", "max_sequence_length")
# The settings that choose each clip's start frame (the seed only matters with random_start).
SAMPLING_KEYS = ("random_start", "seed")


def cache_geometry(config: DataConfig) -> dict:
    """The settings of `config` that a cache is built for."""
    return {key: getattr(config, key) for key in GEOMETRY_KEYS}


def cache_sampling(config: DataConfig) -> dict:
    """The start-frame settings of `config` that a cache is built with."""
    return {key: getattr(config, key) for key in SAMPLING_KEYS}


def _precompute_flag(key: str, value) -> str:
    if isinstance(value, bool):
        return f"--{key}" if value else f"(no --{key})"
    return f"--{key} {value}"


def _differ(built: dict, expected: dict) -> list[str]:
    def same(key: str) -> bool:
        if key == "fps":
            return math.isclose(built[key], expected[key])
        if key == "seed":  # the seed draws starts only when both are random (else random_start differs)
            return built[key] == expected[key] or not (built["random_start"] and expected["random_start"])
        return built[key] == expected[key]

    return [key for key in expected if not same(key)]


def check_cache_settings(cache_dir: str | pathlib.Path, built: dict, expected: dict) -> None:
    """Raise ConfigError naming each data setting (`data.KEY`) where the cache differs from `expected`.

    `built` and `expected` map GEOMETRY_KEYS (and optionally SAMPLING_KEYS) to values.
    """
    differ = _differ(built, expected)
    if differ:
        have = ", ".join(f"data.{key}={built[key]}" for key in differ)
        want = ", ".join(f"data.{key}={expected[key]}" for key in differ)
        flags = " ".join(_precompute_flag(key, expected[key]) for key in differ)
        raise ConfigError(
            f"the latent cache {cache_dir} was built with {have}, but the config asks for {want}. "
            f"Rebuild it with finetune/precompute.py --output_dir {cache_dir} --overwrite {flags} (and the "
            f"other settings of this config), or set these keys in the config back to the cache's values."
        )


class LatentCacheWriter:
    """Writes a cache: `add` batches of encoded samples, then `close` writes the index.

    Use it as a context manager; an exception inside leaves no index, so the folder reads as an
    unfinished build.
    """

    def __init__(
        self,
        output_dir: str | pathlib.Path,
        geometry: dict,
        shard_size: int = 256,
        sampling: dict | None = None,
        **info,
    ):
        if shard_size < 1:
            raise ConfigError(f"shard_size must be >= 1, got {shard_size}")
        self.output_dir = pathlib.Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        # `sampling` (cache_sampling) is checked on load when recorded; precompute always records it.
        settings = {"geometry": geometry, **({"sampling": sampling} if sampling is not None else {})}
        self.index = {"format_version": FORMAT_VERSION, **settings, **info, "shards": [], "samples": []}
        self.shard_size = shard_size
        self._pending: list[tuple[torch.Tensor, torch.Tensor, str, str]] = []

    def add(self, latents: torch.Tensor, prompt_embeds: torch.Tensor, file_names: list[str], texts: list[str]) -> None:
        """Queue a batch: latents (B, C, F, h, w), prompt_embeds (B, L, D), and B names and captions."""
        for sample in zip(latents.cpu(), prompt_embeds.cpu(), file_names, texts):
            self._pending.append(sample)
            if len(self._pending) == self.shard_size:
                self._write_shard()

    def _write_shard(self) -> None:
        shard = len(self.index["shards"])
        name = f"shard-{shard:05d}.safetensors"
        latents, prompt_embeds, file_names, texts = zip(*self._pending)
        save_file(
            {"latents": torch.stack(latents).contiguous(), "prompt_embeds": torch.stack(prompt_embeds).contiguous()},
            self.output_dir / name,
        )
        self.index["shards"].append({"file": name, "num_samples": len(latents)})
        self.index["samples"] += [
            {"file_name": file_name, "text": text, "shard": shard, "row": row}
            for row, (file_name, text) in enumerate(zip(file_names, texts))
        ]
        self._pending = []

    def close(self) -> None:
        if self._pending:
            self._write_shard()
        self.index["num_samples"] = len(self.index["samples"])
        (self.output_dir / INDEX_FILE).write_text(json.dumps(self.index, indent=1), encoding="utf-8")

    def __enter__(self) -> LatentCacheWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()


class LatentCacheDataset(torch.utils.data.Dataset):
    """Items `{"latents": (C, F, h, w), "prompt_embeds": (L, D), "text", "file_name"}` from a cache.

    With `expected` (a DataConfig, or a geometry dict), a cache built with other settings raises
    ConfigError naming them; a DataConfig's start-frame settings are checked too when the cache records them.
    """

    def __init__(self, cache_dir: str | pathlib.Path, expected: DataConfig | dict | None = None):
        self.cache_dir = pathlib.Path(cache_dir)
        index_path = self.cache_dir / INDEX_FILE
        if not index_path.is_file():
            raise ConfigError(
                f"{self.cache_dir} has no {INDEX_FILE}: build the cache with finetune/precompute.py "
                f"(a folder without an index is an unfinished build)"
            )
        self.index = json.loads(index_path.read_text(encoding="utf-8"))
        if self.index.get("format_version") != FORMAT_VERSION:
            raise ConfigError(
                f"{index_path} has format version {self.index.get('format_version')}, this code reads "
                f"{FORMAT_VERSION} (format 1 sampled frames by the container's average frame rate, ignoring "
                f"edit lists, rotation and pixel aspect ratio): rebuild the cache with finetune/precompute.py"
            )
        if isinstance(expected, DataConfig):
            built = {**self.index["geometry"], **self.index.get("sampling", {})}
            wanted = {**cache_geometry(expected), **cache_sampling(expected)}
            check_cache_settings(self.cache_dir, built, {key: wanted[key] for key in built})
        elif expected is not None:
            check_cache_settings(self.cache_dir, self.index["geometry"], expected)
        self.samples = self.index["samples"]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        row = sample["row"]
        # One memory-mapped open per read: cheap next to a training step, and no open file handle
        # lives on the dataset when DataLoader workers pickle it.
        shard = self.cache_dir / self.index["shards"][sample["shard"]]["file"]
        with safe_open(shard, framework="pt") as tensors:
            latents = tensors.get_slice("latents")[row : row + 1][0]
            prompt_embeds = tensors.get_slice("prompt_embeds")[row : row + 1][0]
        return {
            "latents": latents,
            "prompt_embeds": prompt_embeds,
            "text": sample["text"],
            "file_name": sample["file_name"],
        }
