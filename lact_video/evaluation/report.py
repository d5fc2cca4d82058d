"""Per-chunk loss reports: JSON, CSV, a PNG plot and a markdown table, in the same numbers.

One line per checkpoint: loss against chunk index, averaged over the fixed noise levels. Given the training
length in chunks (`LaCTConfig.trained_chunks`), the plot marks where extrapolation begins.
"""

from __future__ import annotations

import csv
import json
import pathlib

from .per_chunk_loss import PerChunkLoss


def write_report(
    results: dict[str, PerChunkLoss],
    output_dir,
    title: str = "Validation loss per frame chunk",
    trained_chunks: int | None = None,
) -> dict:
    """Write `per_chunk_loss.{json,csv,png}` and `report.md`; returns their paths by kind.

    `trained_chunks`: the chunks per training clip; the plot and the table mark the chunks past it (None: no mark).
    """
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": output_dir / "per_chunk_loss.json",
        "csv": output_dir / "per_chunk_loss.csv",
        "png": output_dir / "per_chunk_loss.png",
        "markdown": output_dir / "report.md",
    }
    paths["json"].write_text(json.dumps({name: r.to_dict() for name, r in results.items()}, indent=1) + "\n")
    _write_csv(results, paths["csv"])
    plot_per_chunk(results, title, trained_chunks).savefig(paths["png"])
    paths["markdown"].write_text(_markdown(results, title, trained_chunks))
    return paths


def _write_csv(results: dict[str, PerChunkLoss], path: pathlib.Path) -> None:
    """Long format: one row per checkpoint, noise level (or "mean") and chunk."""
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["checkpoint", "noise_level", "chunk", "loss"])
        for name, result in results.items():
            for level, row in zip(result.noise_levels, result.matrix):
                writer.writerows([name, level, chunk, float(loss)] for chunk, loss in enumerate(row))
            writer.writerows([name, "mean", chunk, float(loss)] for chunk, loss in enumerate(result.mean_per_chunk))


def plot_per_chunk(
    results: dict[str, PerChunkLoss], title: str = "Validation loss per frame chunk", trained_chunks: int | None = None
):
    """A matplotlib figure: mean loss against chunk index, one line per checkpoint; with `trained_chunks`, a
    labelled vertical line between the last trained chunk and the first one past the training length."""
    from matplotlib.figure import Figure

    # A bare Figure (no pyplot): no global state, no display needed.
    fig = Figure(figsize=(7, 4.2), dpi=120)
    ax = fig.subplots()
    for name, result in results.items():
        chunks = range(len(result.mean_per_chunk))
        ax.plot(chunks, result.mean_per_chunk, marker="o", label=name)
    num_chunks = max(len(r.mean_per_chunk) for r in results.values())
    if trained_chunks is not None and trained_chunks < num_chunks:
        ax.axvline(trained_chunks - 0.5, color="0.4", linestyle="--", linewidth=1)
        ax.annotate(
            f"training length ({trained_chunks} chunks): extrapolation \u2192",
            (trained_chunks - 0.5, 1),
            xycoords=("data", "axes fraction"),
            xytext=(4, -12),
            textcoords="offset points",
            fontsize=8,
            color="0.3",
        )
    ax.set_xticks(range(0, num_chunks, max(1, num_chunks // 24)))
    ax.set_xlabel("chunk index (0 = first chunk of the clip)")
    ax.set_ylabel("flow-matching loss (mean over noise levels)")
    levels = next(iter(results.values())).noise_levels
    ax.set_title(
        f"{title}\n{len(levels)} noise levels {levels[0]:g}..{levels[-1]:g}, same noise for every checkpoint",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(title="checkpoint", fontsize=8)
    fig.tight_layout()
    return fig


def _markdown(results: dict[str, PerChunkLoss], title: str, trained_chunks: int | None) -> str:
    num_chunks = max(len(r.mean_per_chunk) for r in results.values())
    header = "| checkpoint | clips | " + " | ".join(f"chunk {i}" for i in range(num_chunks)) + " | mean |"
    rule = "|---|---|" + "---|" * (num_chunks + 1)
    rows = [
        f"| {name} | {r.num_clips} | "
        + " | ".join(f"{x:.4f}" for x in r.mean_per_chunk)
        + f" | {r.mean_per_chunk.mean():.4f} |"
        for name, r in results.items()
    ]
    levels = next(iter(results.values())).noise_levels
    return "\n".join(
        [
            f"# {title}",
            "",
            f"Teacher-forcing flow-matching loss per chunk index, averaged over {len(levels)} fixed noise levels "
            f"({', '.join(f'{x:g}' for x in levels)}); every chunk of a clip gets the same level, and the noise is "
            "seeded per clip, so all checkpoints see identical inputs. Lower is better. A memory that works shows "
            "as lower loss on the chunks beyond the attention window.",
            *(
                ["", f"Training clips had {trained_chunks} chunks: chunks {trained_chunks} and later extrapolate."]
                if trained_chunks is not None and trained_chunks < num_chunks
                else []
            ),
            "",
            header,
            rule,
            *rows,
            "",
            "Per noise level: `per_chunk_loss.json` (`matrix`, levels x chunks) and `per_chunk_loss.csv`.",
            "",
        ]
    )
