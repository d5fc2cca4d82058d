"""The kit's JSON report, rewritten after every section, and the measuring helpers every section shares.

Layout of the JSON (`Report.data`):
    {"kit": ..., "mode": "tiny" | "quick" | "full", "started": ISO time,
     "environment": {"gpu": name or null, "torch": ..., "cuda": ..., "diffusers": ..., ...},
     "sections": {name: {"ran": bool, "wall_s": float, "shapes": {...}, "figures": {name: number},
                         "series": {name: [numbers]}, "errors": {sub-measurement: message}, "error": message or null}}}

A section that raises (out of memory, a missing package or kernel) is recorded with `ran: false` and its
error, and the next one runs. A sub-measurement that can fail on its own (a flash kernel, CUDA graphs,
CUDA memory statistics) records its error under `errors` and leaves the section's other figures.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import importlib.metadata
import json
import os
import platform
import time
import traceback
from pathlib import Path

import torch

GIB = 1024**3


def environment() -> dict:
    """The hardware and the versions the figures were measured with."""
    versions = {}
    for package in ("diffusers", "transformers", "accelerate", "deepspeed", "triton", "flash-attn"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    cuda = torch.cuda.is_available()
    return {
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / GIB, 1) if cuda else None,
        "gpu_count": torch.cuda.device_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        **versions,
    }


def error_message(error: BaseException) -> str:
    """`Type: message` and where it was raised, short enough for the JSON."""
    where = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
    at = f" (at {Path(where.filename).name}:{where.lineno})" if where else ""
    return f"{type(error).__name__}: {str(error)[:600]}{at}"


def free_memory() -> None:
    """Drop what a section left behind, so that the next one starts from an empty GPU."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Section:
    """One section's record; `figures` must hold finite numbers only (the tests check it)."""

    def __init__(self, record: dict):
        self.record = record

    def shapes(self, **shapes) -> None:
        self.record["shapes"].update(shapes)

    def figure(self, name: str, value) -> None:
        self.record["figures"][name] = float(value)

    def figures(self, **values) -> None:
        for name, value in values.items():
            self.figure(name, value)

    def series(self, name: str, values) -> None:
        """A list of measurements (per chunk, say), beside the figures."""
        self.record["series"][name] = [float(v) for v in values]

    @contextlib.contextmanager
    def optional(self, name: str):
        """A sub-measurement whose failure (a CUDA-only feature, out of memory) is recorded, not fatal."""
        try:
            yield
        except Exception as error:  # noqa: BLE001 -- recorded in the JSON, the section goes on
            self.record["errors"][name] = error_message(error)
            free_memory()


class Report:
    """The JSON file, rewritten whole after every section (a later crash never loses earlier figures)."""

    def __init__(self, path: str | os.PathLike | None, mode: str, argv: list[str]):
        self.path = Path(path) if path else None
        self.data = {
            "kit": "benchmarks/bench_gpu.py",
            "mode": mode,
            "argv": argv,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "environment": environment(),
            "sections": {},
        }
        self.write()

    def write(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        os.replace(tmp, self.path)  # atomic: a reader never sees half a file

    def skip(self, name: str, reason: str) -> None:
        self.data["sections"][name] = _empty_record() | {"error": f"skipped: {reason}"}
        self.write()

    def run(self, name: str, function, *args) -> dict:
        """Run `function(section, *args)`, record its figures or its error, rewrite the JSON."""
        record = _empty_record()
        self.data["sections"][name] = record
        start = time.perf_counter()
        print(f"[bench_gpu] {name} ...", flush=True)
        try:
            function(Section(record), *args)
            record["ran"] = True
        except Exception as error:  # noqa: BLE001 -- one section's failure never loses the others
            record["error"] = error_message(error)
            traceback.print_exc()
        finally:
            free_memory()
            record["wall_s"] = round(time.perf_counter() - start, 2)
            self.write()
        status = "ok" if record["ran"] else record["error"]
        print(f"[bench_gpu] {name}: {status} ({record['wall_s']} s)", flush=True)
        return record


def _empty_record() -> dict:
    return {"ran": False, "wall_s": 0.0, "shapes": {}, "figures": {}, "series": {}, "errors": {}, "error": None}


class Budget:
    """A wall-clock budget for the whole run (`--budget_s`); `None` never runs out."""

    def __init__(self, seconds: float | None):
        self.deadline = None if seconds is None else time.perf_counter() + seconds

    def remaining(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.perf_counter()

    def exhausted(self) -> bool:
        return self.remaining() <= 0


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[float, object]:
    """(seconds, result) of `fn()`, with the device's queue drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


class PeakMemory:
    """Peak CUDA memory allocated inside a `with` block, in GiB (`None` on the CPU: no allocator statistics)."""

    def __init__(self, device: torch.device):
        self.device, self.gib = device, None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda" and exc[0] is None:
            torch.cuda.synchronize(self.device)
            self.gib = torch.cuda.max_memory_allocated(self.device) / GIB
        return False

    def record(self, section: Section, name: str) -> None:
        """The peak as a figure on CUDA; on the CPU, say why there is none."""
        if self.gib is None:
            section.record["errors"][name] = "not measured: CUDA memory statistics need a CUDA device"
        else:
            section.figure(name, self.gib)
