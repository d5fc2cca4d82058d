"""The main job, end to end: `bash scripts/demo.sh` in a scratch output folder (slow: minutes)."""

import json
import pathlib
import subprocess

import pytest
from utils import warning_counts

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        ["bash", "scripts/demo.sh", "--output_dir", str(out), "--steps", "40"],
        cwd=ROOT, capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "generated video" in result.stdout
    counts = warning_counts(result.stdout + result.stderr)
    assert all(n < 40 for n in counts.values()), counts  # no warning repeated per training step (issue 13)

    # The exported pipeline and the per-chunk report
    assert json.loads((out / "finetune" / "model_index.json").read_text())["_class_name"] == "LaCTVideoPipeline"
    report = json.loads((out / "report" / "per_chunk_loss.json").read_text())
    assert set(report) == {"finetuned", "untrained-base"}
    assert all(len(r["mean_per_chunk"]) == 2 and r["num_clips"] == 3 for r in report.values())
    assert (out / "report" / "per_chunk_loss.png").read_bytes()[:4] == b"\x89PNG"

    # The video plays, with every frame: 61 frames = 16 latent frames = 8 chunks, 4x the training clips
    import decord

    video = decord.VideoReader(str(out / "video.mp4"))
    assert len(video) == 61 and video[0].shape == (32, 32, 3)
