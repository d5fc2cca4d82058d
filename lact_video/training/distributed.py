"""accelerate + DeepSpeed set-up: CPU-only fixes, known-harmless warnings, a report of how ZeRO-3 split the weights,
and the layout of data x sequence parallelism (`ParallelLayout`).

See docs/design.md, Sec. 7 ("DeepSpeed ZeRO-3 without CUDA", and why DeepSpeed gets no sequence-parallel mpu).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import pathlib
import sys
import warnings
from dataclasses import dataclass

import torch

from ..errors import ConfigError


def skip_deepspeed_shm_build() -> None:
    """Without CUDA, stop DeepSpeed JIT-compiling its shared-memory comm op (a minute or more; training never uses it).

    The attribute is set on the module object from `sys.modules`: `import deepspeed.comm.torch as m`
    binds the real `torch` package (deepspeed.comm re-exports a `torch` name), so setting it through
    `m` would silently do nothing.
    """
    if torch.cuda.is_available():
        return
    try:
        importlib.import_module("deepspeed.comm.torch")
    except ImportError:
        return
    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None


# torch >= 2.10 deprecates the collectives that DeepSpeed 0.19's ZeRO-3 calls on every gather and every
# gradient partition (`deepspeed.comm.torch`); they still work, and the fix is DeepSpeed's to make.
# They printed on every step of every rank (measured: 2 per rank per step on the tiny ZeRO-3 run; Python's
# once-per-location registry is cleared whenever a filter changes). Matched by message and issuing module.
KNOWN_HARMLESS_WARNINGS = (
    (r"`torch\.distributed\.all_gather_into_tensor` is deprecated", FutureWarning, r"torch\.distributed\.c10d_logger"),
    (r"`torch\.distributed\.reduce_scatter_tensor` is deprecated", FutureWarning, r"torch\.distributed\.c10d_logger"),
)


def silence_known_harmless_warnings() -> None:
    """Ignore exactly the `KNOWN_HARMLESS_WARNINGS` (message, category, issuing module); every other warning
    keeps its filters."""
    for message, category, module in KNOWN_HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


def process_group_kwargs() -> list:
    """accelerate kwargs handlers: gloo when launched (LOCAL_RANK set) on a machine without CUDA.

    Without a GPU accelerate has no backend name, every rank believes it is rank 0 of 1, and the
    first gather fails with "ProcessGroupGloo::allgather: invalid output tensor list".
    """
    from accelerate.utils import InitProcessGroupKwargs

    if "LOCAL_RANK" in os.environ and not torch.cuda.is_available():
        return [InitProcessGroupKwargs(backend="gloo")]
    return []


def resolve_deepspeed_config_file(search_root: str | os.PathLike) -> None:
    """Let an accelerate config name its DeepSpeed JSON relative to the repository root.

    `accelerate launch` passes the path on as written, relative to wherever it was launched
    from; the recipes in configs/accelerate/ name theirs from the repository root. A relative
    path that does not exist from the working directory is looked up under `search_root`.
    """
    key = "ACCELERATE_DEEPSPEED_CONFIG_FILE"
    path = os.environ.get(key)
    if not path or path == "none" or os.path.isabs(path) or os.path.exists(path):
        return
    candidate = pathlib.Path(search_root) / path
    if candidate.exists():
        os.environ[key] = str(candidate)


@contextlib.contextmanager
def zero3_init_disabled():
    """Load models whole inside this block, never as ZeRO-3 shards (frozen encoders, the model before `prepare`).

    accelerate registers its DeepSpeed config with transformers whenever ZeRO-3 is on, whatever
    `zero3_init_flag` says (and its `zero3_init_context_manager(enable=False)` registers it again),
    so `from_pretrained` would build the text encoder under `deepspeed.zero.Init`: empty shards that
    cannot run outside a DeepSpeed engine. Unregister it for the block.
    """
    try:
        from transformers.integrations import deepspeed as hf_deepspeed
    except ImportError:
        yield
        return
    ref = hf_deepspeed._hf_deepspeed_config_weak_ref
    registered = ref() if ref is not None else None
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if registered is not None:
            hf_deepspeed.set_hf_deepspeed_config(registered)


def partition_report(model: torch.nn.Module) -> dict:
    """This rank's share of the weights: under ZeRO-3, `ds_tensor` numel against the full `ds_numel`."""
    params = list(model.parameters())
    sharded = [p for p in params if hasattr(p, "ds_tensor")]
    if not sharded:
        full = sum(p.numel() for p in params)
        return {"zero3": False, "local_numel": full, "full_numel": full, "num_params": len(params)}
    return {
        "zero3": True,
        "local_numel": sum(p.ds_tensor.numel() for p in sharded),
        "full_numel": sum(p.ds_numel for p in sharded),
        "num_params": len(params),
        "num_partitioned": len(sharded),
    }


@dataclass(frozen=True)
class ParallelLayout:
    """How the processes split into data-parallel replicas and sequence-parallel groups (docs/design.md, Sec. 7).

    Process `r` of `W` belongs to sequence-parallel group `r // S`, the consecutive ranks `[g*S, (g+1)*S)` as
    DeepSpeed's own `parallel_state_sp` lays them out (so one node's GPUs share the all-to-alls), and that group is
    data-parallel replica `r // S` of `W // S`: its processes read the same clip with the same noise.
    """

    sequence_parallel_size: int  # S
    data_parallel_size: int  # W // S: the processes that read different clips
    data_parallel_rank: int  # r // S: which clips this process (and its group) reads
    group: object | None = None  # this process's sequence-parallel torch ProcessGroup; None when S == 1

    @classmethod
    def of(cls, num_processes: int, process_index: int, sequence_parallel_size: int) -> ParallelLayout:
        """The layout of process `process_index` of `num_processes` (no group yet).

        Raises ConfigError when `sequence_parallel_size` does not divide `num_processes`.
        """
        if num_processes % sequence_parallel_size:
            divisors = [d for d in range(1, num_processes + 1) if num_processes % d == 0]
            raise ConfigError(
                f"train.sequence_parallel_size={sequence_parallel_size} does not divide the {num_processes} "
                f"process(es) of this launch (data parallelism is processes / sequence_parallel_size): use one of "
                f"{', '.join(map(str, divisors))}, or launch a multiple of {sequence_parallel_size} processes."
            )
        return cls(sequence_parallel_size, num_processes // sequence_parallel_size,
                   process_index // sequence_parallel_size)  # fmt: skip


def parallel_layout(accelerator, sequence_parallel_size: int) -> ParallelLayout:
    """This process's `ParallelLayout`, with its sequence-parallel process group when S > 1 (every process calls
    this: torch's `new_subgroups` is collective). Raises ConfigError as `ParallelLayout.of`."""
    layout = ParallelLayout.of(accelerator.num_processes, accelerator.process_index, sequence_parallel_size)
    if sequence_parallel_size == 1:
        return layout
    group, _ = torch.distributed.new_subgroups(group_size=sequence_parallel_size)
    return dataclasses.replace(layout, group=group)
