"""The patched Wan model: parity between teacher forcing and chunk-by-chunk inference, function
preservation at initialisation, causality, save/load, gradient checkpointing, errors, real sizes."""

from types import SimpleNamespace

import pytest
import torch
from diffusers import WanTransformer3DModel
from utils import assert_bitwise_equal, assert_rel_close, rel_err

from lact_video import LaCTState, LaCTWanTransformer3DModel, interleave_teacher_forcing, interleave_timesteps
from lact_video.layers import FastWeightMemory
from lact_video.layers.text_attention import text_cross_attention, text_keys_values
from lact_video.testing import open_memory
from lact_video.wan_configs import WAN21_T2V_CONFIGS

C, K, H, W = 16, 2, 4, 4  # latent channels, frames per chunk, latent height/width: T = 2*2*2 = 8 tokens
T = K * (H // 2) * (W // 2)


@pytest.fixture(scope="module")
def wan(tiny_wan_dir):
    return WanTransformer3DModel.from_pretrained(tiny_wan_dir, subfolder="transformer").eval()


def lact_model(wan, seed=0, **config):
    """A patched model whose memory actually contributes (at initialisation its gate is zero)."""
    config = {"chunk_frames": K, "fw_head_dim": 8, **config}
    torch.manual_seed(seed)  # the new fast weights are drawn from the global generator
    model = LaCTWanTransformer3DModel.from_wan(wan, **config).eval()
    noise = dict.fromkeys(["lr_proj.weight", "gate_proj.weight", "qk_scale", "qk_offset"], 0.3)
    open_memory(model, generator=torch.Generator().manual_seed(seed), noise=noise, rate=0.3, momentum_bias=1.0)
    return model


def clip(b=2, n=4, r=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randn(b, C, n * K, H, W, generator=g)
    noise = torch.randn(b, r, C, n * K, H, W, generator=g)
    t = torch.rand(b, r, n, generator=g)
    level = t.repeat_interleave(K, dim=2)[:, :, None, :, None, None]  # (B, R, 1, F, 1, 1)
    noisy = (1 - level) * clean[:, None] + level * noise
    text = torch.randn(b, 7, 32, generator=g)
    return clean, noisy, 1000 * t, text


def teacher_forcing(model, clean, noisy, t, text):
    seq = interleave_teacher_forcing(noisy, clean, K)
    return model(seq, interleave_timesteps(t), text).sample  # (B, R, C, F, H, W)


def chunk_by_chunk(model, clean, noisy, t, text):
    """Inference: for each chunk, denoise every noisy copy against the state, then commit the clean chunk."""
    b, r, _, f = noisy.shape[:4]
    out = torch.empty_like(noisy)
    state = model.init_state()
    for i in range(f // K):
        frames = slice(i * K, (i + 1) * K)
        for j in range(r):
            out[:, j, :, frames] = model(noisy[:, j, :, frames], t[:, j, i], text, mode="denoise", state=state).sample
        state = model(clean[:, :, frames], torch.zeros(b), text, mode="commit", state=state).state
    return out


PARITY = {
    "B2-N4": {},
    "R2": {"num_repeat": 2},
    "window-lt-chunk": {"window_size": 3},
    "momentum": {"use_momentum": True},
    "no-weight-norm": {"weight_norm": False},
    "memory-in-block-1-only": {"lact_blocks": [1]},
    "swa-only": {"lact_blocks": []},
    "full-causal-baseline": {"attention_mode": "full_causal", "lact_blocks": []},
    "full-causal-with-memory-R2": {"attention_mode": "full_causal", "num_repeat": 2},
    # Newton-Schulz amplifies the fp32 rounding differences of differently batched projections by
    # ~100x (it inflates small singular values), so Muon parity is shown in fp64, where it is exact
    # up to Wan's fp32 layer norms, and checked in fp32 at a looser bound.
    "muon-fp64": {"use_muon": True, "muon_dtype": "float64"},
    "muon-momentum-R2-window3-fp64": {
        "use_muon": True,
        "use_momentum": True,
        "num_repeat": 2,
        "window_size": 3,
        "muon_dtype": "float64",
    },
    "muon-fp32": {"use_muon": True},
    # Position policies (docs/design.md Sec. 1.7): 5 chunks, past a training length of 1 to 4.
    "clamp-past-1-trained": {"position_policy": "clamp", "trained_chunks": 1},
    "cyclic-past-2-trained": {"position_policy": "cyclic", "trained_chunks": 2},
    "cyclic-past-3-trained-R2-momentum": {
        "position_policy": "cyclic",
        "trained_chunks": 3,
        "num_repeat": 2,
        "use_momentum": True,
    },
    "cyclic-past-4-trained-window3": {"position_policy": "cyclic", "trained_chunks": 4, "window_size": 3},
    "cyclic-full-causal-with-memory": {
        "position_policy": "cyclic",
        "trained_chunks": 3,
        "attention_mode": "full_causal",
    },
    # Retention towards the initial fast weights (docs/design.md Sec. 1.4).
    "retention": {"fw_retention_decay": 0.3},
    "retention-momentum-R2-clamp": {
        "fw_retention_decay": 0.5,
        "use_momentum": True,
        "num_repeat": 2,
        "position_policy": "clamp",
        "trained_chunks": 2,
    },
}


@pytest.mark.parametrize("config", PARITY.values(), ids=PARITY.keys())
def test_teacher_forcing_equals_chunk_by_chunk_inference(wan, config):
    fp64 = config.get("muon_dtype") == "float64"
    model = lact_model(wan, **config).to(torch.float64 if fp64 else torch.float32)
    clean, noisy, t, text = (
        x.to(torch.float64 if fp64 else torch.float32) for x in clip(b=2, n=5, r=config.get("num_repeat", 1))
    )
    tol = 1e-4 if config.get("use_muon") and not fp64 else 1e-5
    with torch.no_grad():
        expected = teacher_forcing(model, clean, noisy, t, text)
        actual = chunk_by_chunk(model, clean, noisy, t, text)
    for i in range(5):
        frames = slice(i * K, (i + 1) * K)
        assert_rel_close(actual[:, :, :, frames], expected[:, :, :, frames], tol, f"chunk {i}")


def test_memory_matters_in_parity_setup(wan):
    """Guard for the parity tests: with the memory switched on, later chunks really differ from SWA."""
    clean, noisy, t, text = clip()
    with torch.no_grad():
        lact = teacher_forcing(lact_model(wan), clean, noisy, t, text)
        swa = teacher_forcing(lact_model(wan, lact_blocks=[]), clean, noisy, t, text)
    assert rel_err(lact[:, :, :, :K], swa[:, :, :, :K]) > 1e-3  # n_0 reads the initial memory
    assert rel_err(lact[:, :, :, K:], swa[:, :, :, K:]) > 1e-2


def test_initial_model_equals_pretrained_wan_on_one_chunk(wan):
    model = LaCTWanTransformer3DModel.from_wan(wan, chunk_frames=K, fw_head_dim=8).eval()
    clean, noisy, t, text = clip(b=2, n=1)
    with torch.no_grad():
        expected = wan(noisy[:, 0], t[:, 0, 0], text).sample
        trained_form = teacher_forcing(model, clean, noisy, t, text)[:, 0]
        inference_form = model(noisy[:, 0], t[:, 0, 0], text, mode="denoise", state=model.init_state()).sample
    assert_rel_close(trained_form, expected, 1e-6, "teacher forcing vs Wan")
    assert_rel_close(inference_form, expected, 1e-6, "denoise vs Wan")


def test_from_wan_keeps_pretrained_weights(wan, tiny_wan_dir):
    model = LaCTWanTransformer3DModel.from_wan(tiny_wan_dir, subfolder="transformer", chunk_frames=K, fw_head_dim=8)
    lact_state = model.state_dict()
    for name, value in wan.state_dict().items():
        torch.testing.assert_close(lact_state[name], value, rtol=0, atol=0)
    new = [n for n in lact_state if n not in wan.state_dict()]
    assert new and all(".attn1.memory." in n for n in new)
    assert model.blocks[0].attn1.memory.gate_proj.weight.eq(0).all()
    assert not any(m.training for m in model.modules())  # eval mode, as from_pretrained


@pytest.mark.parametrize("target", ["clean", "noisy"])
def test_causality(wan, target):
    """Changing segment j's chunk leaves every earlier noisy segment's output unchanged."""
    model = lact_model(wan, num_repeat=2, use_momentum=True)
    clean, noisy, t, text = clip(b=1, n=4, r=2)
    j = 2
    frames = slice(j * K, (j + 1) * K)
    changed_clean, changed_noisy = clean.clone(), noisy.clone()
    if target == "clean":
        changed_clean[:, :, frames] += 1.0
    else:
        changed_noisy[:, 1, :, frames] += 1.0
    with torch.no_grad():
        before = teacher_forcing(model, clean, noisy, t, text)
        after = teacher_forcing(model, changed_clean, changed_noisy, t, text)
    unchanged_until = (j + 1) * K if target == "clean" else j * K
    torch.testing.assert_close(after[:, :, :, :unchanged_until], before[:, :, :, :unchanged_until], rtol=0, atol=0)
    if target == "clean":  # c_j feeds chunk j+1 through both window attention and memory
        assert (
            rel_err(
                after[:, :, :, unchanged_until : unchanged_until + K],
                before[:, :, :, unchanged_until : unchanged_until + K],
            )
            > 1e-3
        )
    else:  # a noisy copy feeds nothing but itself; the other copy of chunk j is unchanged
        torch.testing.assert_close(after[:, 0], before[:, 0], rtol=0, atol=0)
        torch.testing.assert_close(after[:, 1, :, frames.stop :], before[:, 1, :, frames.stop :], rtol=0, atol=0)
        assert rel_err(after[:, 1, :, frames], before[:, 1, :, frames]) > 1e-3


def test_save_and_load_round_trip(wan, tmp_path):
    model = lact_model(wan, use_muon=True, use_momentum=True, num_repeat=2, window_size=5, lact_blocks=[0])
    model.save_pretrained(tmp_path)
    loaded = LaCTWanTransformer3DModel.from_pretrained(tmp_path).eval()
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(model.config)
    clean, noisy, t, text = clip(r=2)
    with torch.no_grad():
        assert_bitwise_equal(
            teacher_forcing(loaded, clean, noisy, t, text), teacher_forcing(model, clean, noisy, t, text)
        )


def test_gradient_checkpointing_gives_same_gradients(wan):
    grads = []
    for checkpointing in (False, True):
        model = lact_model(wan, use_momentum=True).train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        clean, noisy, t, text = clip()
        teacher_forcing(model, clean, noisy, t, text).square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert grads[0]["blocks.0.attn1.memory.w0"].abs().max() > 0
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize(
    "config,match",
    [
        ({"fw_head_dim": 7}, "fw_head_dim=7 must divide the model dim 24"),
        ({"lact_blocks": [5]}, r"lact_blocks=\[5\] must be block indices"),
        ({"chunk_frames": 0}, "chunk_frames and num_repeat must be >= 1; got 0"),
        ({"window_size": 0}, "window_size must be >= 1 token"),
        ({"muon_dtype": "float8"}, "muon_dtype must be .*; got 'float8'"),
        ({"fast_weights": 3}, r"Unknown LaCT config keys \['fast_weights'\]"),
        ({"attention_mode": "dense"}, "attention_mode must be one of .*; got 'dense'"),
        ({"position_policy": "wrap"}, "position_policy must be one of .*; got 'wrap'"),
        ({"trained_chunks": 0}, "trained_chunks must be >= 1 chunk"),
        ({"fw_retention_decay": 1.5}, r"fw_retention_decay must be in \[0, 1\].*; got 1.5"),
    ],
    ids=[
        "fw_head_dim",
        "lact_blocks",
        "chunk_frames",
        "window",
        "muon_dtype",
        "unknown-key",
        "attention-mode",
        "position-policy",
        "trained-chunks",
        "retention",
    ],
)
def test_bad_configs_raise(wan, config, match):
    with pytest.raises(ValueError, match=match):
        LaCTWanTransformer3DModel.from_wan(wan, **{"fw_head_dim": 8, **config})


BAD_INPUTS = [
    # (call on the model and the clip `x`, the part of the ValueError's message that names the problem)
    pytest.param(
        lambda model, x: model(x.seq[:, :, :-1], x.ts, x.text),
        "do not split into chunks of chunk_frames=2",
        id="frames-not-whole-chunks",
    ),
    pytest.param(
        lambda model, x: model(x.seq, x.ts[:, :2], x.text),
        "needs one timestep per segment",
        id="timesteps-per-segment",
    ),
    pytest.param(
        lambda model, x: model(x.clean[:, :, :K], x.t[:, 0, 0], x.text, mode="denoise"),
        "denoise needs an inference state",
        id="denoise-without-state",
    ),
    pytest.param(
        lambda model, x: model(x.clean, x.t[:, 0, 0], x.text, mode="denoise", state=model.init_state()),
        "denoise takes one chunk of chunk_frames=2 latent frames; got 4",
        id="denoise-several-chunks",
    ),
    pytest.param(  # frames 256, 257 are past the rotary table
        lambda model, x: model(
            x.clean[:, :, :K], x.t[:, 0, 0], x.text, mode="denoise", state=LaCTState(model.init_state().layers, 128)
        ),
        "exceed the rotary table of rope_max_seq_len=256",
        id="past-rope-table",
    ),
    pytest.param(
        lambda model, x: lact_model(x.wan, window_size=9)(x.seq, x.ts, x.text),
        "window_size=9 tokens is larger than one chunk",
        id="window-beyond-chunk",
    ),
    pytest.param(
        lambda model, x: model(x.seq, x.ts, x.text, mode="bogus"), "'bogus' is not a valid ForwardMode", id="mode"
    ),
    pytest.param(
        lambda model, x: model(x.seq, x.ts, x.text, text_context=model.encode_text(x.text)),
        "not both or neither",
        id="prompt-twice",
    ),
    pytest.param(lambda model, x: model(x.seq, x.ts), "not both or neither", id="no-prompt"),
    pytest.param(
        lambda model, x: model(x.seq, x.ts, text_context=model.encode_text(x.text[:1])),
        "The prompt has 1 rows but the latents have 2",
        id="prompt-batch",
    ),
]


@pytest.mark.parametrize("call,match", BAD_INPUTS)
def test_bad_inputs_raise(wan, call, match):
    model = lact_model(wan)
    clean, noisy, t, text = clip(n=2)
    seq, ts = interleave_teacher_forcing(noisy, clean, K), interleave_timesteps(t)
    x = SimpleNamespace(wan=wan, clean=clean, t=t, text=text, seq=seq, ts=ts)
    with pytest.raises(ValueError, match=match):
        call(model, x)


def test_text_context_equals_prompt_embeddings(wan):
    """The prompt projected once (`encode_text`) gives what projecting it in every call gives, in
    every mode, and the cross-attention split equals Wan's own cross-attention module."""
    model = lact_model(wan)
    clean, noisy, t, text = clip(n=2)
    context = model.encode_text(text)
    seq, ts = interleave_teacher_forcing(noisy, clean, K), interleave_timesteps(t)
    with torch.no_grad():
        torch.testing.assert_close(
            model(seq, ts, text_context=context).sample, model(seq, ts, text).sample, rtol=0, atol=0
        )
        state = model(clean[:, :, :K], torch.zeros(2), text, mode="commit", state=model.init_state()).state
        cached = model(noisy[:, 0, :, K:], t[:, 0, 1], mode="denoise", state=state, text_context=context).sample
        torch.testing.assert_close(
            cached, model(noisy[:, 0, :, K:], t[:, 0, 1], text, mode="denoise", state=state).sample, rtol=0, atol=0
        )
        block = model.blocks[1]
        tokens, projected = (
            torch.randn(2, 5, block.attn2.to_q.in_features),
            model.condition_embedder.text_embedder(text),
        )
        assert_bitwise_equal(
            text_cross_attention(block.attn2, tokens, *text_keys_values(block.attn2, projected)),
            block.attn2(tokens, projected),
        )


def test_per_block_device_map_with_offloaded_blocks(wan, tmp_path):
    """An accelerate `device_map` that offloads one block to disk: its weights stay on the meta device until
    its hooks load them, including for the prompt projection, which runs outside the block's forward."""
    from accelerate import dispatch_model

    reference = lact_model(wan)
    model = lact_model(wan)  # the same seed: the same weights
    device_map = {name: "cpu" for name, _ in model.named_children() if name != "blocks"}
    device_map["scale_shift_table"] = "cpu"  # a parameter of the model itself, not of a child
    device_map.update({f"blocks.{i}": "disk" if i == 1 else "cpu" for i in range(len(model.blocks))})
    model = dispatch_model(model, device_map=device_map, offload_dir=str(tmp_path))
    assert model.blocks[1].attn2.to_k.weight.device.type == "meta"
    clean, noisy, t, text = clip()
    with torch.no_grad():
        assert_bitwise_equal(
            teacher_forcing(model, clean, noisy, t, text), teacher_forcing(reference, clean, noisy, t, text)
        )
        assert_bitwise_equal(
            chunk_by_chunk(model, clean, noisy, t, text), chunk_by_chunk(reference, clean, noisy, t, text)
        )


@pytest.mark.parametrize("name", WAN21_T2V_CONFIGS)
def test_real_configs_on_meta_device(name):
    """The released sizes patch and run a teacher-forcing forward (81 frames at 480x832) on `meta`."""
    config = WAN21_T2V_CONFIGS[name]
    fw_head_dim = 768 if "1.3B" in name else 1280  # as in the recipes; must divide the model dim (1536 / 5120)
    with torch.device("meta"):
        base = WanTransformer3DModel(**config)
        model = LaCTWanTransformer3DModel(**config, fw_head_dim=fw_head_dim, fw_mlp_ratio=2)
        clean = torch.empty(1, 16, 21, 60, 104)
        noisy = torch.empty(1, 1, 16, 21, 60, 104)
        out = model(interleave_teacher_forcing(noisy, clean, 3), torch.zeros(1, 13), torch.empty(1, 512, 4096))
    assert out.sample.shape == (1, 1, 16, 21, 60, 104)
    total = sum(p.numel() for p in model.parameters())
    new = sum(p.numel() for m in model.modules() if isinstance(m, FastWeightMemory) for p in m.parameters())
    assert total - new == sum(p.numel() for p in base.parameters())
    print(f"{name}: {total / 1e9:.3f}B parameters, {new / 1e6:.1f}M new ({100 * new / total:.1f}%)")


@pytest.mark.big_hardware
@pytest.mark.parametrize("name", WAN21_T2V_CONFIGS)
def test_real_configs_instantiate_and_run(name):
    """Real-size weights (random): one teacher-forcing step on the GPU in bf16."""
    config = WAN21_T2V_CONFIGS[name]
    model = LaCTWanTransformer3DModel(**config, fw_head_dim=768 if "1.3B" in name else 1280).to("cuda", torch.bfloat16)
    clean = torch.randn(1, 16, 21, 60, 104, device="cuda", dtype=torch.bfloat16)
    noisy = torch.randn(1, 1, 16, 21, 60, 104, device="cuda", dtype=torch.bfloat16)
    seq = interleave_teacher_forcing(noisy, clean, 3)
    out = model(
        seq, torch.rand(1, 13, device="cuda") * 1000, torch.randn(1, 512, 4096, device="cuda", dtype=torch.bfloat16)
    )
    assert out.sample.shape == noisy.shape and torch.isfinite(out.sample).all()


def test_full_causal_baseline_sees_further_than_the_window(wan):
    """With two chunks, the whole-chunk window and full attention coincide; from chunk 2 on they differ."""
    window = lact_model(wan, lact_blocks=[])
    full = lact_model(wan, lact_blocks=[], attention_mode="full_causal")
    clean, noisy, t, text = clip(n=3)
    with torch.no_grad():
        a, b = teacher_forcing(window, clean, noisy, t, text), teacher_forcing(full, clean, noisy, t, text)
    torch.testing.assert_close(a[:, :, :, : 2 * K], b[:, :, :, : 2 * K], rtol=1e-6, atol=1e-6)
    assert rel_err(a[:, :, :, 2 * K :], b[:, :, :, 2 * K :]) > 1e-3


def test_swa_equals_lact_with_memory_removed(wan):
    lact = lact_model(wan)
    with torch.no_grad():
        for memory in lact.modules():
            if isinstance(memory, FastWeightMemory):
                memory.gate_proj.weight.zero_()
                memory.gate_proj.bias.zero_()
    swa = LaCTWanTransformer3DModel.from_wan(wan, chunk_frames=K, fw_head_dim=8, lact_blocks=[]).eval()
    clean, noisy, t, text = clip()
    with torch.no_grad():
        torch.testing.assert_close(
            teacher_forcing(swa, clean, noisy, t, text), teacher_forcing(lact, clean, noisy, t, text), rtol=0, atol=0
        )
