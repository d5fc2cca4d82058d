"""Atomic training checkpoints in `output_dir/checkpoint-<step>`, found again by `latest`.

A checkpoint is written in full to `output_dir/.tmp-checkpoint-<step>`: accelerate's `save_state`
(model, optimizer, scheduler, RNG; DeepSpeed's per-rank shards under ZeRO-3), the EMA slices
(one file per rank when the weights are sharded) and last a `checkpoint.json` marker. Only then
does the main process `os.rename` the folder to its final name. A run killed at any moment leaves
either a complete `checkpoint-<step>` or a `.tmp-*` folder that nothing reads, and never touches
an existing checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import re
import shutil
import time

import torch

from ..models.formats import CHECKPOINT_FORMAT_KEY, FORMAT_VERSION, saved_format

logger = logging.getLogger(__name__)

PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-" + PREFIX
MARKER = "checkpoint.json"
EMA_DIR = "ema"


def checkpoint_path(output_dir: str | os.PathLike, step: int) -> pathlib.Path:
    return pathlib.Path(output_dir) / f"{PREFIX}{step}"


def is_complete(path: str | os.PathLike) -> bool:
    return (pathlib.Path(path) / MARKER).is_file()


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, pathlib.Path]]:
    """Complete checkpoints in `output_dir` as (step, path), oldest first."""
    output_dir = pathlib.Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for path in output_dir.iterdir():
        match = re.fullmatch(re.escape(PREFIX) + r"(\d+)", path.name)
        if match and path.is_dir() and is_complete(path):
            found.append((int(match.group(1)), path))
    return sorted(found)


def resolve_resume(output_dir: str | os.PathLike, resume_from_checkpoint: str | None) -> pathlib.Path | None:
    """The checkpoint to resume from: None, "latest" (the newest complete one, or None) or a path."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        found = list_checkpoints(output_dir)
        return found[-1][1] if found else None
    path = pathlib.Path(resume_from_checkpoint)
    if not path.is_dir() and (pathlib.Path(output_dir) / path).is_dir():
        path = pathlib.Path(output_dir) / path
    if not is_complete(path):
        raise ValueError(
            f"resume_from_checkpoint={resume_from_checkpoint!r} is not a complete checkpoint ({path} has no {MARKER})"
        )
    return path


def read_marker(path: str | os.PathLike) -> dict:
    return json.loads((pathlib.Path(path) / MARKER).read_text())


def _ema_file(directory: pathlib.Path, process_index: int) -> pathlib.Path:
    return directory / EMA_DIR / f"rank-{process_index:05d}.pt"


def save_checkpoint(accelerator, output_dir, step: int, ema=None, total_limit: int | None = None, info=None):
    """Write checkpoint `step` atomically (all processes call this) and prune old ones.

    An existing `checkpoint-<step>` is kept as it is, never overwritten.
    """
    final = checkpoint_path(output_dir, step)
    tmp = pathlib.Path(output_dir) / f"{TMP_PREFIX}{step}"
    if final.exists():
        logger.warning("%s already exists; keeping it and not saving step %d again", final, step)
        return final
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)  # the leftovers of a run killed while saving
    accelerator.wait_for_everyone()
    tmp.mkdir(parents=True, exist_ok=True)

    # 1. Model, optimizer, scheduler, RNG (DeepSpeed writes its shards from every rank)
    accelerator.save_state(str(tmp))
    # 2. EMA: every rank its own slice when sharded, else one copy
    if ema is not None and (ema.sharded or accelerator.is_main_process):
        index = accelerator.process_index if ema.sharded else 0
        _ema_file(tmp, index).parent.mkdir(exist_ok=True)
        torch.save(ema.state_dict(), _ema_file(tmp, index))
    accelerator.wait_for_everyone()

    # 3. Marker, then the atomic rename
    if accelerator.is_main_process:
        marker = {
            "step": step,
            "num_processes": accelerator.num_processes,
            "ema": None if ema is None else ("sharded" if ema.sharded else "full"),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            CHECKPOINT_FORMAT_KEY: FORMAT_VERSION,  # the meaning of the weights (lact_video.models.formats)
            **(info or {}),
        }
        with open(tmp / MARKER, "w") as stream:
            json.dump(marker, stream, indent=1)
            stream.flush()
            os.fsync(stream.fileno())
        os.rename(tmp, final)
        _fsync_dir(final.parent)
        prune_checkpoints(output_dir, total_limit)
    accelerator.wait_for_everyone()
    logger.info("Saved %s", final)
    return final


def load_checkpoint(accelerator, path, ema=None) -> dict:
    """Restore what `save_checkpoint` wrote (all processes call this); returns the marker.

    Raises:
        ValueError: the checkpoint's weights are of another format (`lact_video.models.formats`): resuming
            would train them with another meaning.
    """
    path = pathlib.Path(path)
    marker = read_marker(path)
    version = saved_format(marker, CHECKPOINT_FORMAT_KEY, str(path / MARKER))
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path} holds weights of format {version} (no {CHECKPOINT_FORMAT_KEY} in {MARKER}: written before "
            f"the fast-weight rate became softplus(lr_proj(x) + softplus^-1(fw_base_lr))); this lact-video trains "
            f"format {FORMAT_VERSION}, and resuming would give the weights another meaning. Finish or export the run "
            "with the lact-video that wrote it (an exported folder converts on load), or start a new run from that "
            "export; lact-video-validate converts it on load."
        )
    if marker["num_processes"] != accelerator.num_processes and marker.get("ema") == "sharded":
        raise ValueError(
            f"{path} was written by {marker['num_processes']} processes with ZeRO-3 shards; resume it with the "
            f"same number of processes (this run has {accelerator.num_processes})."
        )
    accelerator.load_state(str(path))
    if ema is not None:
        if marker.get("ema") is None:
            logger.warning("%s holds no EMA; the EMA restarts from the current weights", path)
        else:
            index = accelerator.process_index if marker["ema"] == "sharded" else 0
            ema.load_state_dict(torch.load(_ema_file(path, index), map_location="cpu", weights_only=True))
    return marker


def prune_checkpoints(output_dir, total_limit: int | None) -> list[pathlib.Path]:
    """Delete the oldest complete checkpoints beyond `total_limit` (main process only)."""
    if not total_limit:
        return []
    found = list_checkpoints(output_dir)
    removed = [path for _, path in found[: max(len(found) - total_limit, 0)]]
    for path in removed:
        # Rename first so that a kill halfway through never leaves a half-deleted "complete" checkpoint.
        doomed = path.with_name(".deleting-" + path.name)
        os.rename(path, doomed)
        shutil.rmtree(doomed)
        logger.info("Removed old checkpoint %s (checkpoints_total_limit=%d)", path, total_limit)
    return removed


def _fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
