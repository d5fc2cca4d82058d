"""Shared test helpers."""

import importlib.util
import pathlib
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Max absolute error relative to the reference's max magnitude (FLA-style)."""
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-12)).item()


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str = "") -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = rel_err(actual, expected)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:.1g}"


def load_script(path: str):
    """A script outside the package (`finetune/finetune.py`, `scripts/generate.py`, ...) as a module, `path`
    relative to the repository root."""
    spec = importlib.util.spec_from_file_location("lact_" + pathlib.Path(path).stem, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module
