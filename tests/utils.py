"""Shared test helpers."""

import torch


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Max absolute error relative to the reference's max magnitude (FLA-style)."""
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-12)).item()


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str = "") -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = rel_err(actual, expected)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:.1g}"


def assert_bitwise_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """The same values bit for bit, with torch.testing's report of where they differ."""
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def minvid_convert_argv(checkpoint, base, output_dir, *options: str) -> list[str]:
    """The argument list of `python -m lact_video.convert --from minvid CHECKPOINT --base BASE --output_dir OUT`."""
    return ["--from", "minvid", str(checkpoint), "--base", str(base), "--output_dir", str(output_dir), *options]


def warning_counts(log: str) -> dict[str, int]:
    """How often each warning of a training log was printed: Python's `file:line: SomeWarning: message` lines
    and loggers' `WARNING` lines, with timestamps dropped (tqdm's carriage returns split lines too)."""
    import re
    from collections import Counter

    counts = Counter()
    for line in re.split(r"[\r\n]", log):
        found = re.search(r"[\w./-]*\.py:\d+: \w*Warning: .*", line) or re.search(r"\bWARNING\b.*", line)
        if found:
            counts[re.sub(r"\d{4}-\d\d-\d\d[ T][\d:,.]+", "", found.group(0))] += 1
    return dict(counts)
