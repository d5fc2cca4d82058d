"""The GPU validation kit (benchmarks/bench_gpu.py) on the CPU: its FLOP count against torch's FLOP counter,
a tiny run of every section, its JSON report, and the GPU machine's wheels (scripts/prepare_gpu_wheels.py)."""

import json
import math
import pathlib

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.gpukit import kit
from benchmarks.gpukit.flops import train_step_flops, transformer_flops
from benchmarks.gpukit.report import Report
from lact_video import LaCTWanTransformer3DModel, interleave_teacher_forcing, interleave_timesteps
from lact_video.tiny import TRANSFORMER_CONFIGS
from scripts import prepare_gpu_wheels

REPO = pathlib.Path(__file__).resolve().parents[1]

FLOP_TOL = 0.01  # the count is exact on these configs; 1% leaves room for a rounding of the convention
K, H, W, N, TEXT = 2, 4, 6, 3, 7
T = K * (H // 2) * (W // 2)
CONFIGS = {
    "window": {},
    "full-causal": {"attention_mode": "full_causal"},
    "window-lt-chunk-R2-momentum-muon": {"window_size": 5, "num_repeat": 2, "use_momentum": True, "use_muon": True},
    "memory-in-block-1-only": {"lact_blocks": [1]},
}


def small_model(**lact):
    torch.manual_seed(0)
    return LaCTWanTransformer3DModel(**TRANSFORMER_CONFIGS["tiny"], chunk_frames=K, fw_head_dim=12, **lact)


def counted(fn) -> int:
    """FLOPs torch's counter sees; the math SDPA kernel, because the CPU's fused kernel is not counted."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def teacher_forcing_inputs(model):
    r = model.config.num_repeat
    g = torch.Generator().manual_seed(0)
    clean, noisy = torch.randn(1, 16, N * K, H, W, generator=g), torch.randn(1, r, 16, N * K, H, W, generator=g)
    t = interleave_timesteps(1000 * torch.rand(1, r, N, generator=g))
    return interleave_teacher_forcing(noisy, clean, K), t, torch.randn(1, TEXT, 32, generator=g), clean


def assert_count_matches(expected: dict, actual: int):
    assert abs(expected["total"] - actual) <= FLOP_TOL * actual, (expected, actual)
    # The check has teeth: a count that left attention out would fail it.
    assert abs(expected["total"] - expected["attention"] - actual) > FLOP_TOL * actual


@pytest.mark.parametrize("lact", CONFIGS.values(), ids=CONFIGS.keys())
def test_flop_count_equals_torch_flop_counter(lact):
    model = small_model(**lact)
    sequence, t, text, clean = teacher_forcing_inputs(model)
    with torch.no_grad():
        actual = counted(lambda: model(sequence, t, text))
    expected = transformer_flops(
        model.config, mode="teacher_forcing", num_chunks=N, tokens_per_chunk=T, text_tokens=TEXT
    )
    assert_count_matches(expected, actual)
    # Chunk by chunk: each denoising pass and commit, whose attention grows with full_causal only.
    state = model.init_state()
    for i in range(N):
        chunk = clean[:, :, i * K : (i + 1) * K]
        for mode in ("denoise", "commit"):
            with torch.no_grad():
                actual = counted(lambda: model(chunk, torch.ones(1), text, mode=mode, state=state))
                if mode == "commit":
                    state = model(chunk, torch.zeros(1), text, mode=mode, state=state).state
            expected = transformer_flops(
                model.config, mode=mode, num_chunks=i + 1, tokens_per_chunk=T, text_tokens=TEXT
            )
            assert_count_matches(expected, actual)


def test_train_step_flops_equal_forward_and_backward():
    """A step's model FLOPs, 3x the forward's, against the counter over forward and backward (no recompute)."""
    model = small_model().train()
    sequence, t, text, _ = teacher_forcing_inputs(model)
    actual = counted(lambda: model(sequence, t, text).sample.square().mean().backward())
    expected = train_step_flops(model.config, num_chunks=N, tokens_per_chunk=T, text_tokens=TEXT)
    # The patch embedding's and the text projection's inputs need no gradient: the backward is a bit under 2x.
    assert 0.95 * expected <= actual <= expected


def test_real_size_flops_are_the_stated_figures():
    """The 1.3B step the kit times (61K tokens): about 6 x 1.4B params x 61K tokens plus attention."""
    from lact_video.wan_configs import WAN21_T2V_1_3B

    config = dict(WAN21_T2V_1_3B, fw_head_dim=768, chunk_frames=3)
    step = train_step_flops(config, num_chunks=7, tokens_per_chunk=4680, text_tokens=512)
    forward = transformer_flops(config, mode="teacher_forcing", num_chunks=7, tokens_per_chunk=4680, text_tokens=512)
    assert 0.7e15 < step < 1.2e15 and step == 3 * forward["total"]
    assert 0.1 < forward["attention"] / forward["total"] < 0.3


def check_report(data: dict, expected_sections, skipped=()) -> None:
    assert data["environment"]["torch"] == torch.__version__ and data["environment"]["diffusers"]
    assert math.isfinite(data["environment"]["matmul_tflops_measured"])
    assert set(data["sections"]) == set(expected_sections)
    for name, section in data["sections"].items():
        if name in skipped:
            assert not section["ran"] and section["error"].startswith("skipped"), (name, section)
            continue
        assert section["ran"] and section["error"] is None, (name, section["error"])
        assert section["figures"] and section["shapes"], name
        for figure, value in section["figures"].items():
            assert isinstance(value, float) and math.isfinite(value), (name, figure, value)
        for series in section["series"].values():
            assert all(math.isfinite(v) for v in series), name
        # On the CPU only the CUDA-only measurements may be missing, and they say so.
        for what, message in section["errors"].items():
            assert message.startswith("not measured") or "need a CUDA device" in message, (name, what, message)


def test_tiny_run_measures_every_section(tmp_path):
    """`--tiny` runs every section's code path (the ZeRO-3 launch is in the slow test below)."""
    bench = kit
    out = tmp_path / "tiny.json"
    data = bench.main(["--tiny", "--json", str(out), "--skip", "train_1.3b_zero3"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(data, default=str))
    check_report(data, bench.SECTIONS, skipped=("train_1.3b_zero3",))
    figures = {name: s["figures"] for name, s in data["sections"].items()}
    numerics = figures["numerics"]
    assert numerics["fp32_tf_vs_chunks"] < 1e-4 and numerics["lact_vs_swa"] > 1e-2  # the memory matters there
    assert numerics["bf16_default_parity_within_tolerance"] == 1.0
    assert 0 < numerics["bf16_default_tf_vs_fp32"] < 0.05
    assert 0.5 < numerics["newton_schulz_bf16_sv_min"] <= numerics["newton_schulz_bf16_sv_max"] < 1.5
    assert figures["train_1.3b"]["full_causal_over_lact_step_time"] > 0
    assert len(data["sections"]["generation_1.3b"]["series"]["chunk_seconds"]) == 4
    assert figures["compile_1.3b"]["regional_vs_eager"] < 1e-5  # the compiled graphs compute the same output


@pytest.mark.slow
def test_zero3_launch_measures_a_step(tmp_path):
    """The training step under `accelerate launch --use_deepspeed` (ZeRO-3, one process, gloo on the CPU)."""
    bench = kit
    data = bench.main(["--tiny", "--json", str(tmp_path / "zero3.json"), "--only", "train_1.3b_zero3"])
    check_report(data, bench.SECTIONS, skipped=set(bench.SECTIONS) - {"train_1.3b_zero3"})
    section = data["sections"]["train_1.3b_zero3"]
    assert "DEEPSPEED" in section["shapes"]["distributed_type"] and section["shapes"]["parameters"] > 0


def test_a_failing_section_is_recorded_and_the_next_one_runs(tmp_path):
    path = tmp_path / "report.json"
    report = Report(path, "tiny", [])

    def out_of_memory(section):
        section.figure("before", 1.0)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

    def fine(section):
        section.shapes(n=1)
        section.figure("value", 2)
        with section.optional("flash"):
            raise RuntimeError("flash_attn is not installed")

    report.run("first", out_of_memory)
    on_disk = json.loads(path.read_text())["sections"]["first"]  # rewritten right after the section
    assert not on_disk["ran"] and on_disk["error"].startswith("OutOfMemoryError: CUDA out of memory")
    assert on_disk["figures"] == {"before": 1.0}  # what it measured before failing is kept
    report.run("second", fine)
    second = json.loads(path.read_text())["sections"]["second"]
    assert second["ran"] and second["figures"] == {"value": 2.0}
    assert second["errors"]["flash"].startswith("RuntimeError: flash_attn is not installed")


@pytest.mark.parametrize(
    "filename, ok",
    [
        ("diffusers-0.42.1-py3-none-any.whl", True),
        ("pydantic_core-2.50.5-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", True),
        ("pydantic_core-2.50.5-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", False),
        ("pydantic_core-2.50.5-cp312-cp312-manylinux_2_17_aarch64.whl", False),
        ("pydantic_core-2.50.5-cp312-cp312-macosx_11_0_arm64.whl", False),
        ("decord-0.6.0-py2-none-any.whl", False),
    ],
)
def test_wheel_tag_check(filename, ok):
    assert (prepare_gpu_wheels.wheel_problem(filename) is None) == ok


def test_wheel_pins_cover_what_the_gpu_machine_lacks():
    """Every package the kit imports is pinned in the wheel script or on the GPU machine (the cheap check)."""
    wheels = prepare_gpu_wheels
    pinned = {wheels.normalise(p.split("==")[0]) for p in [*wheels.DOWNLOAD, wheels.BUILD]}
    for needed in ("diffusers", "deepspeed", "omegaconf", "pydantic", "pydantic-core", "hjson"):
        assert needed in pinned
    assert not pinned & {"torch", "accelerate", "transformers"}  # the GPU machine's own builds stay
    pins = dict(
        line.split("==") for line in (REPO / "scripts" / "constraints.txt").read_text().split() if "==" in line
    )
    for spec in [*wheels.DOWNLOAD, wheels.BUILD]:
        name, version = spec.split("==")
        assert pins.get(name, version) == version, f"{spec} differs from scripts/constraints.txt"


@pytest.mark.slow
def test_prepared_wheels_are_installable_on_the_gpu_machine(tmp_path):
    """Downloads and builds the wheels (about 2 minutes, network), then the script's own checks: tags, one
    version each, requirements met, an offline install into an empty folder."""
    assert prepare_gpu_wheels.main(["--dest", str(tmp_path / "whl")]) == 0
