"""LoRA finetuning (`model.trainable=lora`, issue 18): what trains, the flags, a run that learns, exact resume, and
the export (base folder plus diffusers' LoRA file, or one fused folder) generating the run's final model.

Fast tests run the trainer in this process on the tiny recipe; the slow ones launch 2 processes under DeepSpeed
ZeRO-3 with `accelerate launch`, as tests/test_finetune.py does for full finetunes.
"""

import json
import pathlib

import pytest
import test_finetune as finetune
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from test_finetune import cache as cache  # noqa: F401  (pytest fixtures, shared)
from test_finetune import trainer as trainer  # noqa: F401
from test_finetune import videos as videos  # noqa: F401

from lact_video import LaCTWanTransformer3DModel
from lact_video.training import trainable
from lact_video.training.config import ConfigError, load_config
from lact_video.training.trainable import LoraSettings, lora_parameters, new_parameters, set_trainable

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_LORA = str(REPO / "configs" / "tiny-lora.yaml")
RANK = 4
ATTENTION_LINEARS = ("to_q", "to_k", "to_v", "to_out.0")


def tiny_lact(base) -> LaCTWanTransformer3DModel:
    return LaCTWanTransformer3DModel.from_wan(base, subfolder="transformer", chunk_frames=2, fw_head_dim=12)


def lora_run(trainer, output_dir, base, *overrides):
    """A single-process run of the tiny LoRA recipe (configs/tiny-lora.yaml)."""
    return finetune.run(trainer, output_dir, base, "--config", TINY_LORA, *overrides)


# What trains


@pytest.mark.parametrize("rank", [1, RANK])
def test_lora_trains_the_lact_parameters_and_exactly_the_lora_matrices(tiny_wan_dir, rank):
    """Counted from the shapes: the LaCT parameters (the patched model's weights beyond plain Wan's) plus
    r x (in + out) for every attention projection of self- and cross-attention; the base weights stay frozen."""
    from diffusers import WanTransformer3DModel

    wan = WanTransformer3DModel.from_pretrained(tiny_wan_dir, subfolder="transformer")
    model = tiny_lact(tiny_wan_dir)
    lact_count = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in wan.parameters())
    dim = wan.config.num_attention_heads * wan.config.attention_head_dim
    lora_count = wan.config.num_layers * 2 * len(ATTENTION_LINEARS) * rank * (dim + dim)

    trained = set_trainable(model, "lora", LoraSettings(rank=rank))
    assert sum(p.numel() for p in trained) == lact_count + lora_count
    assert {id(p) for p in trained} == {id(p) for p in new_parameters(model) + lora_parameters(model)}
    for name, param in model.named_parameters():  # every pretrained weight is frozen, the LoRA B starts at 0
        assert param.requires_grad == (".lora_" in name or ".memory." in name), name
        if ".lora_B." in name:
            assert not param.any(), name

    groups = {g["name"]: g for g in trainable.parameter_groups(model, 1e-4, 10.0)}
    assert {id(p) for p in groups["lora"]["params"]} == {id(p) for p in lora_parameters(model)}
    assert groups["lora"]["lr"] == 1e-4 and groups["new"]["lr"] == pytest.approx(1e-3)


def test_lora_target_modules_as_names_or_a_pattern_never_in_the_memory(tiny_wan_dir):
    """A pattern is matched against full names (self-attention only here); the memory's own linears get no adapter
    even when named, and a name that matches nothing is refused with the names there are."""
    dim, layers = 24, 2
    model = tiny_lact(tiny_wan_dir)
    pattern = r"blocks\.\d+\.attn1\.(to_q|to_k|to_v|to_out\.0)"
    trained = set_trainable(model, "lora", LoraSettings(rank=RANK, target_modules=[pattern]))
    assert sum(p.numel() for p in lora_parameters(model)) == layers * 4 * RANK * 2 * dim
    assert sum(p.numel() for p in trained) == sum(p.numel() for p in lora_parameters(model) + new_parameters(model))

    model = tiny_lact(tiny_wan_dir)
    set_trainable(model, "lora", LoraSettings(rank=RANK, target_modules=["to_q", "lr_proj", "gate_proj"]))
    adapted = {name.partition(".lora_A")[0] for name, _ in model.named_parameters() if ".lora_A." in name}
    assert adapted == {f"blocks.{i}.attn{a}.to_q" for i in range(layers) for a in (1, 2)}

    with pytest.raises(ValueError, match=r"target_modules=\['to_qq'\] found no module.*to_q"):
        set_trainable(tiny_lact(tiny_wan_dir), "lora", LoraSettings(target_modules=["to_qq"]))


def test_lora_flags_as_diffusers_and_finetrainers_spell_them():
    base = ["--config", TINY_LORA, "model.pretrained_model_name_or_path=/m", "data.cache_dir=/c"]
    config = load_config(
        base + ["--rank", "8", "--lora_alpha", "4", "--lora_dropout", "0.1", "--lora_target_modules", "to_q,to_out.0",
                "--init_lora_weights", "gaussian", "--fuse"]
    )  # fmt: skip
    lora = config.model.lora
    assert (lora.rank, lora.lora_alpha, lora.lora_dropout) == (8, 4.0, 0.1)
    assert lora.target_modules == ["to_q", "to_out.0"] and lora.init_lora_weights.value == "gaussian"
    assert config.model.trainable.value == "lora" and config.train.export_fuse_lora
    pattern = r"blocks\.\d+\.attn1\.(to_q|to_k)"
    assert load_config(base + ["--target_modules", pattern]).model.lora.target_modules == [pattern]
    assert load_config(base + ["model.lora.target_modules=[to_k,to_v]"]).model.lora.target_modules == ["to_k", "to_v"]
    with pytest.raises(ConfigError, match=r"model.lora.rank=0 must be 1 or more \(--rank R\)"):
        load_config(base + ["--rank", "0"])
    with pytest.raises(ConfigError, match="mixes module names with the pattern"):
        load_config(base + ["model.lora.target_modules=[to_q,'attn1\\.(to_k|to_v)']"])
    with pytest.raises(ConfigError, match="export_fuse_lora=true fuses LoRA adapters, and model.trainable=all"):
        load_config(base + ["--trainable", "all", "--fuse"])


# A run: it learns, resumes exactly, and exports


def lora_file(folder) -> dict[str, torch.Tensor]:
    return load_file(pathlib.Path(folder) / "pytorch_lora_weights.safetensors")


def final_model(tiny_wan_dir, state_dict) -> LaCTWanTransformer3DModel:
    """The run's model (configs/tiny-lora.yaml: rank 4, alpha 4), rebuilt as the trainer builds it, holding
    `state_dict` (its raw trained weights, with peft's names)."""
    model = tiny_lact(tiny_wan_dir)
    set_trainable(model, "lora", LoraSettings(rank=RANK, lora_alpha=RANK))
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def generate(pipe) -> torch.Tensor:
    return pipe(
        "a cat walks", num_frames=13, height=32, width=32, num_inference_steps=2, max_sequence_length=16,
        output_type="pt", generator=torch.Generator().manual_seed(0),
    ).frames  # fmt: skip


def with_lora_file(folder, fuse: bool = False):
    """The exported pipeline with its LoRA file loaded by `load_lora_weights` (and fused by `fuse_lora`)."""
    from pipelines import LaCTVideoPipeline

    pipe = LaCTVideoPipeline.from_pretrained(folder)
    pipe.load_lora_weights(folder)
    if fuse:
        pipe.fuse_lora()
    return pipe


def check_export(tiny_wan_dir, export_dir, fused_dir, model):
    """The export of a LoRA run: base weights + trained LaCT parameters + diffusers' LoRA file; the fused folder
    holds W + alpha / r B A. The run's final model, the folder with its LoRA file loaded (`load_lora_weights`, also
    then `fuse_lora`) and the fused folder generate the same video."""
    from diffusers import WanTransformer3DModel
    from peft import get_peft_model_state_dict

    from pipelines import LaCTVideoPipeline

    trained = model.state_dict()
    wan = WanTransformer3DModel.from_pretrained(tiny_wan_dir, subfolder="transformer").state_dict()
    exported, fused = finetune.weights(export_dir), finetune.weights(fused_dir)
    assert exported.keys() == fused.keys() == {k.replace(".base_layer", "") for k in trained if ".lora_" not in k}
    for key, value in exported.items():
        if key in wan:  # every pretrained weight as it was; the LaCT parameters as trained
            torch.testing.assert_close(value, wan[key], rtol=0, atol=0)
        else:
            torch.testing.assert_close(value, trained[key], rtol=0, atol=0)

    lora = lora_file(export_dir)
    expected = {f"transformer.{k}": v for k, v in get_peft_model_state_dict(model).items()}
    assert lora.keys() == expected.keys() and len(lora) == 2 * 2 * 2 * len(ATTENTION_LINEARS)  # A, B; 2 blocks x 2
    for key, value in expected.items():
        torch.testing.assert_close(lora[key], value, rtol=0, atol=0)
    with safe_open(pathlib.Path(export_dir) / "pytorch_lora_weights.safetensors", "pt") as stream:
        metadata = json.loads(stream.metadata()["lora_adapter_metadata"])
    assert metadata["transformer.r"] == RANK and metadata["transformer.lora_alpha"] == RANK  # peft's LoraConfig
    assert not (pathlib.Path(fused_dir) / "pytorch_lora_weights.safetensors").exists()

    scale = metadata["transformer.lora_alpha"] / metadata["transformer.r"]
    for key in (k for k in lora if k.endswith(".lora_A.weight")):
        module = key.removeprefix("transformer.").removesuffix(".lora_A.weight")
        delta = lora[key.replace("lora_A", "lora_B")] @ lora[key]
        torch.testing.assert_close(fused[f"{module}.weight"], wan[f"{module}.weight"] + scale * delta)

    reference = generate(LaCTVideoPipeline.from_pretrained(export_dir, transformer=model))
    torch.testing.assert_close(generate(with_lora_file(export_dir)), reference, rtol=0, atol=1e-5)
    torch.testing.assert_close(generate(with_lora_file(export_dir, fuse=True)), reference, rtol=0, atol=1e-5)
    torch.testing.assert_close(generate(LaCTVideoPipeline.from_pretrained(fused_dir)), reference, rtol=0, atol=1e-5)
    assert (generate(LaCTVideoPipeline.from_pretrained(export_dir)) - reference).abs().max() > 1e-3  # LoRA matters


def test_lora_run_lowers_the_validation_loss_and_exports(trainer, tiny_wan_dir, videos, cache, tmp_path):
    """The per-chunk validation loss at the end is below the untrained model's (step 0: LoRA B = 0 and the memory
    gate 0, so the patched base) on the same fixed noise; the export and its fused variant (an export-only run of
    the final checkpoint with --fuse) generate the final model's video."""
    out = lora_run(
        trainer, tmp_path / "run", tiny_wan_dir, f"data.cache_dir={cache}", f"data.validation_data_dir={videos}",
        "train.validation_steps=30", "train.validation_noise_levels=[0.5]", "ema.export_ema=false",
    )  # fmt: skip
    val = {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "val/loss" in r}
    assert sorted(val) == [0, 30]
    assert val[30]["val/loss"] < 0.9 * val[0]["val/loss"]
    assert all(val[30][f"val/loss_chunk/{i}"] < val[0][f"val/loss_chunk/{i}"] for i in range(2))
    info = json.loads((out / "train_info.json").read_text())
    counts = info["parameters"]
    assert info["trainable"] == "lora" and counts["trainable"] == counts["new"] + counts["lora"]
    assert counts["optimizer_state_bytes"] == counts["optimizer_state_bytes_per_process"] == 8 * counts["trainable"]
    assert counts["lora"] == 2 * 2 * len(ATTENTION_LINEARS) * RANK * 48
    records = finetune.metrics(out)
    assert set(records[30]["lr"]) == {"lora", "new"}
    assert records[30]["lr"]["new"] == pytest.approx(3 * records[30]["lr"]["lora"])

    fused = lora_run(
        trainer, out, tiny_wan_dir, f"data.cache_dir={cache}", "train.resume_from_checkpoint=latest",
        "train.export_only=true", f"train.export_dir={tmp_path / 'fused'}", "--fuse", "ema.export_ema=false",
    )  # fmt: skip
    model = final_model(tiny_wan_dir, load_file(out / "checkpoint-30" / "model.safetensors"))
    check_export(tiny_wan_dir, out, tmp_path / "fused", model)
    assert fused == out


def test_lora_resume_continues_exactly(trainer, tiny_wan_dir, cache, tmp_path):
    """Stop after checkpoint 3, resume `latest`: the same losses, weights, EMA export and LoRA file as a straight run."""
    straight, resumed = finetune.straight_and_resumed(trainer, tiny_wan_dir, tmp_path, "--config", TINY_LORA,
                                             f"data.cache_dir={cache}")  # fmt: skip
    finetune.assert_weights_match(lora_file(straight), lora_file(resumed), atol=1e-7)  # the EMA of the LoRA matrices


def test_lora_gradient_checkpointing_trains_the_same(trainer, tiny_wan_dir, cache, tmp_path):
    """Recomputing the blocks in the backward pass gives the LoRA matrices inside them the same gradients (a
    reentrant checkpoint would give them none: the frozen blocks' inputs need no gradient)."""
    common = [f"data.cache_dir={cache}", "train.max_train_steps=3", "ema.use_ema=false"]
    plain = lora_run(trainer, tmp_path / "plain", tiny_wan_dir, *common)
    recomputed = lora_run(trainer, tmp_path / "recomputed", tiny_wan_dir, "--gradient_checkpointing", *common)
    finetune.assert_losses_match(finetune.metrics(plain), finetune.metrics(recomputed), [1, 2, 3], rtol=1e-6)
    finetune.assert_weights_match(lora_file(plain), lora_file(recomputed), atol=1e-6)
    assert lora_file(plain)["transformer.blocks.1.attn1.to_q.lora_B.weight"].abs().max() > 1e-3  # B has moved


# Slow: 2 processes under DeepSpeed ZeRO-3


ZERO3_LORA = ["--config", TINY_LORA, *finetune.ZERO3_ARGS, "ema.export_ema=false"]


@pytest.fixture(scope="module")
def zero3_lora_run(tiny_wan_dir, videos, tmp_path_factory):  # noqa: F811
    """An uninterrupted 2-process ZeRO-3 LoRA run with validation, clips decoded on the fly."""
    out = tmp_path_factory.mktemp("zero3-lora") / "run"
    log = out.parent / "log.txt"
    args = finetune.base_args(tiny_wan_dir, videos, out)
    rc = finetune.launch(
        REPO, log, *args, *ZERO3_LORA, f"data.validation_data_dir={videos}", f"train.validation_steps={finetune.STEPS}"
    )
    finetune.assert_finished(out, rc, log, finetune.STEPS)
    return out


@pytest.mark.slow
def test_zero3_lora_learns_and_exports(zero3_lora_run, tiny_wan_dir, videos, tmp_path):  # noqa: F811
    info = json.loads((zero3_lora_run / "train_info.json").read_text())
    assert info["zero_stage"] == 3 and info["num_processes"] == 2
    counts = info["parameters"]
    assert counts["trainable"] == counts["new"] + counts["lora"]
    assert counts["optimizer_state_bytes_per_process"] == counts["optimizer_state_bytes"] // 2
    lines = map(json.loads, (zero3_lora_run / "metrics.jsonl").read_text().splitlines())
    val = {r["step"]: r["val/loss"] for r in lines if "val/loss" in r}
    assert val[finetune.STEPS] < val[0]

    fused = tmp_path / "fused"  # the ZeRO-3 checkpoint exported again, fused, by the same launch
    log = tmp_path / "fused.txt"
    args = finetune.base_args(tiny_wan_dir, videos, zero3_lora_run)
    rc = finetune.launch(REPO, log, *args, *ZERO3_LORA, "train.resume_from_checkpoint=latest", "train.export_only=true",
                f"train.export_dir={fused}", "--fuse")  # fmt: skip
    assert (fused / "model_index.json").is_file(), f"exit code {rc}: {log.read_text()[-4000:]}"
    # The run's final model: its raw weights gathered from the checkpoint's ZeRO-3 shards by DeepSpeed's own tool
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state_dict = get_fp32_state_dict_from_zero_checkpoint(
        zero3_lora_run / f"checkpoint-{finetune.STEPS}", tag="pytorch_model"
    )
    check_export(tiny_wan_dir, zero3_lora_run, fused, final_model(tiny_wan_dir, state_dict))


@pytest.mark.slow
def test_zero3_lora_sigkill_then_resume_latest_matches(zero3_lora_run, tiny_wan_dir, videos, tmp_path):  # noqa: F811
    """SIGKILL the LoRA launch after its first checkpoint, resume `latest`: same losses, weights and LoRA file."""
    out = finetune.kill_then_resume(tmp_path, finetune.base_args(tiny_wan_dir, videos, tmp_path / "run"), ZERO3_LORA)
    finetune.assert_losses_match(
        finetune.metrics(zero3_lora_run), finetune.metrics(out), range(1, finetune.STEPS + 1), rtol=1e-6
    )
    finetune.assert_weights_match(finetune.weights(zero3_lora_run), finetune.weights(out), atol=1e-7)
    finetune.assert_weights_match(lora_file(zero3_lora_run), lora_file(out), atol=1e-7)
