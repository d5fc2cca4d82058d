"""The tiny Wan2.1 base model: loads like the real one, generates, is deterministic."""

import json
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

import lact_video
from lact_video.tiny import VAE_CONFIG, build_tiny_wan, main

REPO = pathlib.Path(__file__).resolve().parents[1]
COMPONENTS = ["scheduler", "text_encoder", "tokenizer", "transformer", "vae"]


def _weights(folder):
    """Every saved weight file and the tokenizer, as bytes, keyed by relative path."""
    folder = pathlib.Path(folder)
    files = sorted(folder.rglob("*.safetensors")) + [folder / "tokenizer" / "tokenizer.json"]
    return {str(f.relative_to(folder)): f.read_bytes() for f in files}


@pytest.fixture
def offline(monkeypatch):
    """HF_HUB_OFFLINE=1, and any attempt to open a network connection fails the test."""
    import diffusers.utils.hub_utils
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(diffusers.utils.hub_utils, "HF_HUB_OFFLINE", True)

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access while offline: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)


def test_pipeline_loads_offline_and_generates(tiny_wan_dir, offline):
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(tiny_wan_dir)
    assert pipe.vae_scale_factor_spatial == 8 and pipe.vae_scale_factor_temporal == 4
    prompts = {"prompt": "a cat walks across a sunny kitchen floor", "negative_prompt": "blurry, static"}
    size = {"num_frames": 9, "height": 64, "width": 64}
    generator = torch.Generator().manual_seed(0)
    video = pipe(
        **prompts, **size, num_inference_steps=2, max_sequence_length=16, output_type="np", generator=generator
    ).frames
    assert video.shape == (1, 9, 64, 64, 3)
    assert np.isfinite(video).all()
    assert video.min() >= 0.0 and video.max() <= 1.0
    assert video.std() > 0


def test_components_fit_together(tiny_wan_dir):
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(tiny_wan_dir)
    t, vae, enc, tok = pipe.transformer.config, pipe.vae.config, pipe.text_encoder.config, pipe.tokenizer
    assert (t.num_layers, t.num_attention_heads, t.attention_head_dim, t.ffn_dim) == (2, 2, 12, 32)
    assert t.in_channels == t.out_channels == vae.z_dim
    assert len(vae.latents_mean) == len(vae.latents_std) == vae.z_dim
    assert t.text_dim == enc.d_model
    assert t.rope_max_seq_len >= 256
    assert pipe.vae_scale_factor_spatial == 2 ** (len(vae.dim_mult) - 1)
    assert type(pipe.scheduler).__name__ == "UniPCMultistepScheduler"
    assert pipe.scheduler.config.prediction_type == "flow_prediction"
    assert pipe.scheduler.config.use_flow_sigmas and pipe.scheduler.config.flow_shift == 3.0
    assert tok.convert_tokens_to_ids(["<pad>", "</s>", "<unk>"]) == [0, 1, 2]
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert len(tok) == enc.vocab_size
    ids = tok("a dog runs along the beach").input_ids
    assert ids[-1] == 1 and 2 not in ids
    assert tok.decode(ids, skip_special_tokens=True) == "a dog runs along the beach"


def test_same_seed_gives_identical_weights(tiny_wan_dir, tmp_path):
    reference = _weights(tiny_wan_dir)
    assert len(reference) == 4
    assert _weights(build_tiny_wan(tmp_path / "again", seed=0)) == reference
    other = _weights(build_tiny_wan(tmp_path / "seed1", seed=1))
    assert other["tokenizer/tokenizer.json"] == reference["tokenizer/tokenizer.json"]
    for name in ["transformer/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"]:
        assert other[name] != reference[name]


def test_small_size(tmp_path):
    from diffusers import WanTransformer3DModel

    path = build_tiny_wan(tmp_path / "small", size="small")
    transformer = WanTransformer3DModel.from_pretrained(path / "transformer")
    config = transformer.config
    assert config.num_layers == 4 and config.num_attention_heads * config.attention_head_dim == 256
    assert config.ffn_dim == 512 and config.in_channels == VAE_CONFIG["z_dim"]
    with pytest.raises(ValueError, match="size"):
        build_tiny_wan(tmp_path / "huge", size="huge")


def test_cli_writes_the_pipeline_folder(tiny_wan_dir, tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, "-m", "lact_video.tiny", "--output_dir", str(out), "--seed", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline"
    for name in COMPONENTS:
        assert (out / name).is_dir(), name
        assert index[name][0] is not None, name
    assert _weights(out) == _weights(tiny_wan_dir)


def test_cli_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert lact_video.__version__ in capsys.readouterr().out
