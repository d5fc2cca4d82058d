"""diffusers' LoRA API on the LaCT model and pipeline (issue 18, part 3).

A LoRA saved for a plain `WanTransformer3DModel` with diffusers' own API loads into the LaCT pipeline and changes
every base linear exactly as it changes Wan's; with the memory gate at zero (as `from_wan` leaves it) the whole
LaCT model with the LoRA equals Wan with the LoRA on one chunk. Then what diffusers' LoRA tests check for its
models: save/load round trips, `set_adapters` with weights, several adapters, `fuse_lora` / `unfuse_lora`,
`disable_lora`, `unload_lora_weights`, and the original-Wan key names other tools write.
"""

import pytest
import torch
from diffusers import WanPipeline, WanTransformer3DModel
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file
from utils import assert_bitwise_equal, assert_rel_close, rel_err

from lact_video import LaCTWanTransformer3DModel
from pipelines import LaCTVideoPipeline

C, K, H, W = 16, 2, 4, 4  # latent channels, frames per chunk, latent height/width
RANK, ALPHA = 4, 8  # alpha != rank, so that a lost alpha (scale 2) shows
# Every linear of Wan2.1 T2V: the blocks', the output projection, and the time and text embedders' (which the LaCT
# model calls piecewise, to embed a time per segment and to project the prompt once).
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2", "proj_out", "linear_1", "linear_2"]
TARGETS += ["time_proj"]
LORA_FILE = "pytorch_lora_weights.safetensors"


def tiny_wan(tiny_wan_dir) -> WanTransformer3DModel:
    """A fresh copy each time: `fuse_lora` writes into the base weights."""
    return WanTransformer3DModel.from_pretrained(tiny_wan_dir, subfolder="transformer").eval()


def wan_with_lora(tiny_wan_dir, seed: int) -> WanTransformer3DModel:
    """Wan with a peft LoRA whose A and B are both random (peft starts B at zero: the LoRA would do nothing)."""
    wan = tiny_wan(tiny_wan_dir)
    wan.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in wan.named_parameters():
            if "lora_" in name:
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    return wan


def saved_wan_lora(tiny_wan_dir, tmp_path_factory, seed: int):
    """(folder holding pytorch_lora_weights.safetensors, the Wan model it was saved from), saved as diffusers'
    training scripts save: `WanPipeline.save_lora_weights` with the adapter's config (its alpha)."""
    wan = wan_with_lora(tiny_wan_dir, seed)
    directory = tmp_path_factory.mktemp(f"wan_lora_{seed}")
    metadata = wan.peft_config["default"].to_dict()
    layers = get_peft_model_state_dict(wan)
    WanPipeline.save_lora_weights(
        directory, transformer_lora_layers=layers, transformer_lora_adapter_metadata=metadata
    )
    return directory, wan


@pytest.fixture(scope="module")
def wan_lora(tiny_wan_dir, tmp_path_factory):
    return saved_wan_lora(tiny_wan_dir, tmp_path_factory, seed=1)


@pytest.fixture(scope="module")
def second_lora(tiny_wan_dir, tmp_path_factory):
    return saved_wan_lora(tiny_wan_dir, tmp_path_factory, seed=2)


def lact_pipeline(tiny_wan_dir) -> LaCTVideoPipeline:
    return LaCTVideoPipeline.from_wan(tiny_wan_dir, chunk_frames=K, fw_head_dim=8)


def one_chunk(seed=0):
    """(noisy chunk (B, C, k, H, W), timestep (B,), prompt embeddings (B, L, text_dim))."""
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(2, C, K, H, W, generator=g),
        1000 * torch.rand(2, generator=g),
        torch.randn(2, 7, 32, generator=g),
    )


def lact_output(model: LaCTWanTransformer3DModel) -> torch.Tensor:
    latents, t, text = one_chunk()
    with torch.no_grad():
        return model(latents, t, text, mode="denoise", state=model.init_state()).sample


def adapted_layers(model: torch.nn.Module) -> dict[str, BaseTunerLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)}


def lora_deltas(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Each adapted linear's output minus its base linear's output, on the same fixed input (2, 5, in)."""
    deltas = {}
    for name, layer in adapted_layers(model).items():
        base = layer.get_base_layer()
        x = torch.randn(2, 5, base.in_features, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            deltas[name] = layer(x) - base(x)
    return deltas


def assert_same_deltas(actual: dict, expected: dict, tol: float = 1e-6) -> None:
    assert sorted(actual) == sorted(expected), "the LoRA adapts other layers than expected"
    for name in expected:
        assert expected[name].abs().max() > 1e-2, f"{name}: the reference LoRA does nothing"
        assert_rel_close(actual[name], expected[name], tol, name)


def test_model_speaks_diffusers_lora_api(tiny_wan_dir):
    """The adapted layers are Wan's names, and the memory's own linears are no target of a Wan LoRA."""
    model = LaCTWanTransformer3DModel.from_wan(tiny_wan_dir, subfolder="transformer", chunk_frames=K, fw_head_dim=8)
    model.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS))
    wan = tiny_wan(tiny_wan_dir)
    wan.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS))
    assert sorted(adapted_layers(model)) == sorted(adapted_layers(wan))
    # per block attn1, attn2 (4 each), ffn (2); proj_out; time and text embedders (2 each), time_proj
    assert len(adapted_layers(model)) == 2 * 10 + 1 + 5


def test_wan_lora_changes_each_base_linear_as_it_changes_wan(tiny_wan_dir, wan_lora):
    directory, wan = wan_lora
    pipe = lact_pipeline(tiny_wan_dir)
    pipe.load_lora_weights(directory)
    assert_same_deltas(lora_deltas(pipe.transformer), lora_deltas(wan))


def test_whole_model_with_wan_lora_equals_wan_with_lora(tiny_wan_dir, wan_lora):
    """At initialisation (memory gate zero) the LaCT model equals Wan on one chunk (tests/test_model.py); with
    the same LoRA on both, it still does, and the LoRA moves the output."""
    directory, wan = wan_lora
    pipe = lact_pipeline(tiny_wan_dir)
    without = lact_output(pipe.transformer)
    pipe.load_lora_weights(directory)
    latents, t, text = one_chunk()
    with torch.no_grad():
        expected = wan(latents, t, text).sample
    actual = lact_output(pipe.transformer)
    assert_rel_close(actual, expected, 1e-6, "LaCT + LoRA vs Wan + LoRA")
    assert rel_err(without, expected) > 1e-2


# The key layouts of other Wan LoRA tools: DiffSynth-Studio (original Wan names, peft's lora_A/lora_B, no alpha),
# kohya-style original Wan names (lora_down/lora_up and an alpha per layer), musubi-tuner (the same, flattened
# into `lora_unet_blocks_0_self_attn_q`).
KEY_STYLES = {
    "diffsynth": ("diffusion_model.", False),
    "kohya": ("diffusion_model.", True),
    "musubi": ("lora_unet_", True),
}


def to_original_wan_names(layers: dict[str, torch.Tensor], style: str) -> dict[str, torch.Tensor]:
    """diffusers' Wan LoRA keys (`blocks.0.attn1.to_q.lora_A.weight`) in one of the `KEY_STYLES`, e.g.
    `diffusion_model.blocks.0.self_attn.q.lora_A.weight`; with alphas, each `alpha` is the LoRA's `ALPHA`."""
    prefix, with_alpha = KEY_STYLES[style]
    renames = {"attn1.": "self_attn.", "attn2.": "cross_attn.", "to_out.0.": "o.", "ffn.net.0.proj.": "ffn.0."}
    renames |= {"ffn.net.2.": "ffn.2.", "proj_out.": "head.head.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v."}
    renames |= {"condition_embedder.time_proj.": "time_projection.1.", "condition_embedder.": ""}
    renames |= {"_embedder.linear_1.": "_embedding.0.", "_embedder.linear_2.": "_embedding.2."}
    converted = {}
    for key, value in layers.items():
        for ours, theirs in renames.items():
            key = key.replace(ours, theirs)
        layer, _, parameter = key.partition(".lora_")
        if style == "musubi":
            layer = layer.replace(".", "_")
        if with_alpha:
            converted[f"{prefix}{layer}.alpha"] = torch.tensor(float(ALPHA))
            parameter = parameter.replace("A.", "down.").replace("B.", "up.")
        converted[f"{prefix}{layer}.lora_{parameter}"] = value
    return converted


@pytest.mark.parametrize("style", KEY_STYLES)
def test_original_wan_key_names_load(tiny_wan_dir, wan_lora, tmp_path, style):
    """Without an alpha a LoRA is applied at scale 1, so the reference's scale alpha/rank goes into B there.
    (With alphas, the blocks only: diffusers' converters read no alpha outside the blocks.)"""
    _, wan = wan_lora
    layers = get_peft_model_state_dict(wan)
    expected = lora_deltas(wan)
    if KEY_STYLES[style][1]:
        layers = {k: v for k, v in layers.items() if k.startswith("blocks.")}
        expected = {k: v for k, v in expected.items() if k.startswith("blocks.")}
    else:
        layers = {k: v * ALPHA / RANK if "lora_B" in k else v for k, v in layers.items()}
    save_file(to_original_wan_names(layers, style), tmp_path / LORA_FILE)
    pipe = lact_pipeline(tiny_wan_dir)
    pipe.load_lora_weights(tmp_path, adapter_name="original")
    assert_same_deltas(lora_deltas(pipe.transformer), expected)


def test_pipeline_save_lora_weights_then_load_lora_weights(tiny_wan_dir, wan_lora, tmp_path):
    pipe = lact_pipeline(tiny_wan_dir)
    pipe.load_lora_weights(wan_lora[0], adapter_name="wan")
    metadata = pipe.transformer.peft_config["wan"].to_dict()
    LaCTVideoPipeline.save_lora_weights(
        tmp_path,
        transformer_lora_layers=get_peft_model_state_dict(pipe.transformer, adapter_name="wan"),
        transformer_lora_adapter_metadata=metadata,
    )
    reloaded = lact_pipeline(tiny_wan_dir)
    reloaded.load_lora_weights(tmp_path, adapter_name="wan")
    assert_bitwise_equal(lact_output(reloaded.transformer), lact_output(pipe.transformer))


def test_model_save_lora_adapter_then_load_lora_adapter(tiny_wan_dir, wan_lora, tmp_path):
    """The model's own round trip, and the pipeline loading the model's file (keys without `transformer.`)."""
    pipe = lact_pipeline(tiny_wan_dir)
    pipe.load_lora_weights(wan_lora[0], adapter_name="wan")
    pipe.transformer.save_lora_adapter(tmp_path, adapter_name="wan")
    expected = lact_output(pipe.transformer)

    model = lact_pipeline(tiny_wan_dir).transformer
    model.load_lora_adapter(tmp_path, prefix=None, weight_name=LORA_FILE, adapter_name="wan")
    assert_bitwise_equal(lact_output(model), expected)

    from_model_file = lact_pipeline(tiny_wan_dir)
    from_model_file.load_lora_weights(tmp_path)
    assert_bitwise_equal(lact_output(from_model_file.transformer), expected)


@pytest.mark.parametrize("weights", [[1.0, 1.0], [0.5, -1.5]], ids=["two-adapters", "weighted"])
def test_set_adapters_with_weights_and_several_adapters(tiny_wan_dir, wan_lora, second_lora, weights):
    """Several adapters at once add their deltas, each scaled by its weight."""
    pipe = lact_pipeline(tiny_wan_dir)
    pipe.load_lora_weights(wan_lora[0], adapter_name="a")
    pipe.load_lora_weights(second_lora[0], adapter_name="b")
    pipe.set_adapters(["a", "b"], weights)
    assert pipe.get_active_adapters() == ["a", "b"]
    combined = lora_deltas(pipe.transformer)
    expected_a, expected_b = lora_deltas(wan_lora[1]), lora_deltas(second_lora[1])
    assert_same_deltas(combined, {k: weights[0] * expected_a[k] + weights[1] * expected_b[k] for k in expected_a})
    pipe.set_adapters("b")
    assert_same_deltas(lora_deltas(pipe.transformer), expected_b)


def test_fuse_lora_then_unfuse_lora_gives_back_the_original_weights(tiny_wan_dir, wan_lora):
    pipe = lact_pipeline(tiny_wan_dir)
    original = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    pipe.load_lora_weights(wan_lora[0])
    with_lora = lact_output(pipe.transformer)
    pipe.fuse_lora()
    assert_rel_close(lact_output(pipe.transformer), with_lora, 1e-6, "fused vs unfused LoRA")
    fused = pipe.transformer.blocks[0].attn1.to_q.base_layer.weight
    assert rel_err(fused, original["blocks.0.attn1.to_q.weight"]) > 1e-2  # fusing wrote into the base weight
    pipe.unfuse_lora()
    for name, layer in adapted_layers(pipe.transformer).items():
        base = layer.get_base_layer()
        assert_rel_close(base.weight, original[f"{name}.weight"], 1e-6, f"{name} after unfuse")
    pipe.unload_lora_weights()
    assert_rel_close(lact_output(pipe.transformer), lact_output(lact_pipeline(tiny_wan_dir).transformer), 1e-6)


def test_fuse_lora_then_unload_keeps_the_lora_in_plain_linears(tiny_wan_dir, wan_lora):
    pipe = lact_pipeline(tiny_wan_dir)
    pipe.load_lora_weights(wan_lora[0])
    with_lora = lact_output(pipe.transformer)
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    assert not adapted_layers(pipe.transformer)
    assert_rel_close(lact_output(pipe.transformer), with_lora, 1e-6, "fused and unloaded vs LoRA")


def test_disable_lora_and_unload_lora_weights_give_the_base_model(tiny_wan_dir, wan_lora):
    pipe = lact_pipeline(tiny_wan_dir)
    base_output = lact_output(pipe.transformer)
    base_state = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    pipe.load_lora_weights(wan_lora[0])
    with_lora = lact_output(pipe.transformer)
    assert rel_err(with_lora, base_output) > 1e-2
    pipe.disable_lora()
    assert_bitwise_equal(lact_output(pipe.transformer), base_output)
    pipe.enable_lora()
    assert_bitwise_equal(lact_output(pipe.transformer), with_lora)
    pipe.unload_lora_weights()
    assert not adapted_layers(pipe.transformer)
    state = pipe.transformer.state_dict()
    assert sorted(state) == sorted(base_state)
    for key, value in base_state.items():
        assert_bitwise_equal(state[key], value)
    assert_bitwise_equal(lact_output(pipe.transformer), base_output)


def _wan_layers(wan_lora) -> dict[str, torch.Tensor]:
    return {f"transformer.{k}": v for k, v in get_peft_model_state_dict(wan_lora[1]).items()}


REFUSED = {
    # An image-to-video LoRA adapts the image keys and values, which a T2V model lacks.
    "i2v-layer": lambda layers: {
        **layers,
        "transformer.blocks.0.attn2.add_k_proj.lora_A.weight": torch.zeros(RANK, 24),
        "transformer.blocks.0.attn2.add_k_proj.lora_B.weight": torch.zeros(24, RANK),
    },
    "block-beyond-the-model": lambda layers: {
        **layers,
        "transformer.blocks.2.attn1.to_q.lora_A.weight": torch.zeros(RANK, 24),
        "transformer.blocks.2.attn1.to_q.lora_B.weight": torch.zeros(24, RANK),
    },
    "another-model-size": lambda layers: {
        **layers,
        "transformer.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(RANK, 48),
    },
    "text-encoder": lambda layers: {
        **layers,
        "text_encoder.encoder.block.0.layer.0.q.lora_A.weight": torch.zeros(4, 32),
    },
}
REFUSED_KEY = {
    "i2v-layer": "transformer.blocks.0.attn2.add_k_proj.lora_A.weight",
    "block-beyond-the-model": "transformer.blocks.2.attn1.to_q.lora_B.weight",
    "another-model-size": "transformer.blocks.0.attn1.to_q.lora_A.weight: shape (4, 48)",
    "text-encoder": "text_encoder.encoder.block.0.layer.0.q.lora_A.weight: not for the transformer",
}


@pytest.mark.parametrize("case", REFUSED, ids=REFUSED.keys())
def test_lora_keys_that_cannot_apply_are_refused_by_name(tiny_wan_dir, wan_lora, case):
    """diffusers only logs a warning for such keys and loads the rest; the LaCT pipeline refuses the whole file,
    naming each key, and leaves the transformer untouched."""
    pipe = lact_pipeline(tiny_wan_dir)
    with pytest.raises(ValueError, match="does not fit the LaCTWanTransformer3DModel") as info:
        pipe.load_lora_weights(REFUSED[case](_wan_layers(wan_lora)))
    assert REFUSED_KEY[case] in str(info.value)
    assert not adapted_layers(pipe.transformer)


def test_save_pretrained_refuses_lora_layers_and_keeps_a_fused_lora(tiny_wan_dir, wan_lora, tmp_path):
    """A model with LoRA layers would save them under peft's names, which `from_pretrained` does not read (it
    re-initialises those linears at random, warning only): refused. Fused then unloaded, the folder reloads with
    the LoRA in its weights."""
    pipe = lact_pipeline(tiny_wan_dir)
    pipe.load_lora_weights(wan_lora[0])
    with_lora = lact_output(pipe.transformer)
    with pytest.raises(ValueError, match=r"holds LoRA layers \(condition_embedder.* 26 in all.*fuse_lora"):
        pipe.save_pretrained(tmp_path / "refused")
    assert not (tmp_path / "refused" / "model_index.json").exists()  # an unfinished folder, as diffusers leaves it
    pipe.fuse_lora()
    with pytest.raises(ValueError, match="holds LoRA layers"):
        pipe.transformer.save_pretrained(tmp_path / "fused-not-unloaded")
    pipe.unload_lora_weights()
    pipe.save_pretrained(tmp_path / "merged", variant="fp32")
    assert (tmp_path / "merged" / "transformer" / "diffusion_pytorch_model.fp32.safetensors").is_file()
    reloaded = LaCTVideoPipeline.from_pretrained(tmp_path / "merged", variant="fp32")
    assert_rel_close(lact_output(reloaded.transformer), with_lora, 1e-6, "merged folder vs LoRA")
