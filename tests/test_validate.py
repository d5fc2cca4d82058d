"""Per-chunk validation reports: deterministic, equal to the training loss per chunk, files that parse."""

import csv
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from lact_video import LaCTWanTransformer3DModel
from lact_video.data.demo_dataset import write_video_folder
from lact_video.evaluation import DEFAULT_NOISE_LEVELS, per_chunk_loss, plot_per_chunk
from lact_video.testing import open_memory
from lact_video.training import trainer as finetune_trainer
from lact_video.training import validate as validate_module
from lact_video.training.flow_matching import sample_seed, teacher_forcing_loss

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY_RECIPE = ["--config", str(ROOT / "configs" / "tiny.yaml")]
# The tiny recipe's clip geometry, as overrides: 32x32, 13 frames, chunks of 2 latent frames.
GEOMETRY = ["data.height=32", "data.width=32", "data.num_frames=13", "data.chunk_frames=2", "data.max_sequence_length=16",
            "model.lact.fw_head_dim=12"]  # fmt: skip


def load_validate():
    return validate_module


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return write_video_folder(tmp_path_factory.mktemp("videos"), num_synthetic=2, real=False)


@pytest.fixture(scope="module")
def trained(tiny_wan_dir, tmp_path_factory):
    """A LaCT transformer whose memory is switched on (a stand-in for a finetuned one)."""
    torch.manual_seed(0)
    model = LaCTWanTransformer3DModel.from_wan(tiny_wan_dir, subfolder="transformer", chunk_frames=2, fw_head_dim=12)
    open_memory(model)
    path = tmp_path_factory.mktemp("trained") / "transformer"
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def report(tiny_wan_dir, trained, videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    args = ["--data_dir", str(videos), "--checkpoints", str(tiny_wan_dir), str(trained), "--names", "base", "memory"]
    load_validate().main(
        [*args, "--output_dir", str(out), *GEOMETRY, f"model.pretrained_model_name_or_path={tiny_wan_dir}"]
    )
    return out, args


def test_report_files_exist_and_parse(report):
    out, _ = report
    data = json.loads((out / "per_chunk_loss.json").read_text())
    assert list(data) == ["base", "memory"]
    for result in data.values():
        assert result["num_clips"] == 2 and result["noise_levels"] == list(DEFAULT_NOISE_LEVELS)
        assert len(result["matrix"]) == 10 and all(len(row) == 2 for row in result["matrix"])  # 13 frames: 2 chunks
        assert result["mean_per_chunk"] == pytest.approx([sum(c) / 10 for c in zip(*result["matrix"])])
    rows = list(csv.DictReader(open(out / "per_chunk_loss.csv")))
    assert len(rows) == 2 * (10 + 1) * 2
    assert float(rows[0]["loss"]) == pytest.approx(data["base"]["matrix"][0][0])
    markdown = (out / "report.md").read_text()
    assert "| base | 2 |" in markdown and f"{data['memory']['mean_per_chunk'][1]:.4f}" in markdown
    assert (out / "per_chunk_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The memory changes the loss of chunk 1 (it reads c_0), not of chunk 0 beyond its initial state.
    assert data["base"]["mean_per_chunk"] != data["memory"]["mean_per_chunk"]


def test_report_is_deterministic(report, tmp_path):
    out, args = report
    load_validate().main([*args, "--output_dir", str(tmp_path), *GEOMETRY])  # base taken from the first checkpoint
    assert json.loads((tmp_path / "per_chunk_loss.json").read_text()) == json.loads(
        (out / "per_chunk_loss.json").read_text()
    )


def test_chunk_losses_equal_the_training_loss(trained):
    model = LaCTWanTransformer3DModel.from_pretrained(trained).eval()
    g = torch.Generator().manual_seed(1)
    clips = [(torch.randn(1, 16, 4, 4, 4, generator=g), torch.randn(1, 16, 32, generator=g)) for _ in range(2)]
    levels = (0.3, 0.8)
    result = per_chunk_loss(model, clips.__getitem__, 2, levels, seed=5)
    for row, level in zip(result.matrix, levels):
        expected = 0
        for index, (latents, embeds) in enumerate(clips):
            noise = torch.randn(
                (1, 1, *latents.shape[1:]), generator=torch.Generator().manual_seed(sample_seed(5, index))
            )
            with torch.no_grad():
                _, chunks = teacher_forcing_loss(model, latents, embeds, torch.full((1, 1, 2), level), noise, 2)
            expected = expected + chunks.double() / 2
        torch.testing.assert_close(torch.from_numpy(row), expected, rtol=1e-12, atol=0)


def test_plot_has_one_line_per_checkpoint(report):
    from lact_video.evaluation.per_chunk_loss import PerChunkLoss

    data = json.loads((report[0] / "per_chunk_loss.json").read_text())
    results = {
        name: PerChunkLoss(tuple(r["noise_levels"]), torch.tensor(r["matrix"]).numpy(), r["num_clips"])
        for name, r in data.items()
    }
    axes = plot_per_chunk(results).axes[0]
    assert [line.get_label() for line in axes.lines] == ["base", "memory"]
    assert axes.get_legend() is not None and "chunk index" in axes.get_xlabel()


def test_bad_arguments_fail_clearly(videos, trained, tmp_path):
    validate = load_validate()
    with pytest.raises(ValueError, match="--names has 1 labels for 2 checkpoints"):
        validate.main(
            [
                "--data_dir",
                str(videos),
                "--checkpoints",
                str(trained),
                str(trained),
                "--names",
                "a",
                "--output_dir",
                str(tmp_path),
            ]
        )
    with pytest.raises(ValueError, match="holds a VAE and text encoder"):
        validate.main(["--data_dir", str(videos), "--checkpoints", str(trained), "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="is not a checkpoint"):
        validate.main(["--data_dir", str(videos), "--checkpoints", str(tmp_path), "--output_dir", str(tmp_path)])


def test_training_checkpoint_equals_its_export(tiny_wan_dir, videos, tmp_path):
    """A `save_state` checkpoint-<step> folder evaluates like the diffusers folder exported from it."""
    from accelerate.state import AcceleratorState, GradientState

    trainer = finetune_trainer
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    run = tmp_path / "run"
    trainer.main(
        [*TINY_RECIPE, f"model.pretrained_model_name_or_path={tiny_wan_dir}", f"data.train_data_dir={videos}",
         f"train.output_dir={run}", "train.max_train_steps=2", "train.checkpointing_steps=2", "train.report_to=none",
         "ema.export_ema=false"]
    )  # fmt: skip
    out = tmp_path / "report"
    checkpoints = [str(run / "checkpoint-2"), str(run), str(tiny_wan_dir)]
    args = ["--data_dir", str(videos), "--checkpoints", *checkpoints, "--names", "state", "export", "base"]
    load_validate().main([*args, "--output_dir", str(out), *GEOMETRY, "--noise_levels", "0.5", "--max_clips", "1"])
    data = json.loads((out / "per_chunk_loss.json").read_text())
    assert data["state"]["mean_per_chunk"] == pytest.approx(data["export"]["mean_per_chunk"], rel=1e-6)
    assert data["state"]["mean_per_chunk"] != pytest.approx(data["base"]["mean_per_chunk"], rel=1e-6)  # it trained


def test_complete_pipeline_folder_uses_its_own_encoders_offline(tiny_wan_dir, trained, videos, tmp_path):
    """configs/tiny.yaml names outputs/demo/base, absent here. A complete pipeline folder under evaluation encodes
    with its own VAE and text encoder and never tries the Hub (HF_HUB_OFFLINE=1), with the numbers of naming it
    as the base; a transformer-only folder says where it looked."""
    pythonpath = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"}
    common = ["--data_dir", str(videos), *TINY_RECIPE, "--noise_levels", "0.5", "--max_clips", "1"]

    def validate(checkpoint, out):
        command = [sys.executable, str(ROOT / "finetune" / "validate.py"), *common, "--checkpoints", str(checkpoint)]
        command += ["--names", "x", "--output_dir", str(out)]
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)

    own = validate(tiny_wan_dir, tmp_path / "own")
    assert own.returncode == 0, own.stderr[-3000:]
    assert f"{tiny_wan_dir}: encoding the clips with its own VAE and text encoder" in own.stderr
    load_validate().main(
        [*common, "--checkpoints", str(tiny_wan_dir), "--names", "x", "--output_dir", str(tmp_path / "named"),
         f"model.pretrained_model_name_or_path={tiny_wan_dir}"]
    )  # fmt: skip
    result = json.loads((tmp_path / "own" / "per_chunk_loss.json").read_text())
    assert result == json.loads((tmp_path / "named" / "per_chunk_loss.json").read_text())

    none = validate(trained, tmp_path / "none")
    assert none.returncode != 0
    looked = f"{trained} has no vae/, text_encoder/, tokenizer/ of its own: encoding with those of "
    assert looked + "model.pretrained_model_name_or_path, outputs/demo/base (not a local folder" in none.stderr
