"""Golden outputs of the LaCT authors' fast-weight update-and-apply function, for `tests/test_authors_golden.py`.

Given a checkout of a1600012888/LaCT, this imports their training-time function
`ar_fast_weight_swish_glu_weight_norm_mini_batch_with_momentum` (lact_ar_video/minVid/models/blocks/
ar_lact_swa_repeat_sp.py, plain torch) and `inv_softplus` (.../blocks/functions.py), runs them on a small fixed
input with fixed weights, and writes inputs and outputs to one safetensors file (a few KB). CI never needs their
checkout; nothing of their code is copied here.

    python scripts/authors_golden_fixture.py --lact_repo /path/to/LaCT --lact_commit SHA [--output FILE]

What runs as in their layer (`ARLaCTSWA...` forward in the same file): the per-token rates
`softplus(lr_proj(x).float() + inv_softplus(1e-3))`, head-major with the (w0, w1, w2) rates of each head
contiguous; the momentum gate `momentum_proj = Sequential(Linear(dim, Hf), Sigmoid())`, stored as
`momentum_proj.0.*`; their sequence layout `[n_0 | c_0 n_1 | ... | c_{N-2} n_{N-1}]`
(`update_every = 2 * mini_batch_size`, one noisy copy). Queries and keys are given L2-normalised, as their
`qk_l2_norm` leaves them; the rotary embedding, the q/k scale and offset and the output norm and gate lie outside
the function and are not part of this comparison.

Four cases: momentum off/on x Muon off/on. Their Newton-Schulz casts to bf16 (`G.bfloat16()` in functions.py);
here it runs in fp32 (`Tensor.bfloat16` is the identity during the call), with the 5 steps their layer passes
(`num_moun_iters=5`; the function's own default is 3). Their modules' imports of the Wan model, flash attention
and sequence parallelism are stubbed: the function uses none of them. `TORCHDYNAMO_DISABLE=1` runs their
`@torch.compile` functions eagerly.
"""

import argparse
import contextlib
import importlib.util
import os
import pathlib
import sys
import types

os.environ["TORCHDYNAMO_DISABLE"] = "1"  # before torch is imported: their functions are @torch.compile'd

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
BLOCKS = pathlib.Path("lact_ar_video/minVid/models/blocks")
NUM_HEADS, HEAD_DIM, HIDDEN_DIM, TOKENS, NUM_CHUNKS = 2, 8, 16, 12, 3  # Hf, d, dh, T per chunk, N
# T > d, as in their model (T = 1560 tokens per chunk): with T < d each update has rank T, and Newton-Schulz
# blows the rounding noise of its null space up ~500-fold (slope 3.4 per step), beyond any fp32 comparison.
DIM = NUM_HEADS * HEAD_DIM  # the model dim that x, lr_proj and momentum_proj see
BASE_LR = 1e-3  # hard-coded in their layer's __init__
CASES = {"plain": (False, False), "momentum": (True, False), "muon": (False, True), "momentum_muon": (True, True)}


def _load(name: str, path: pathlib.Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def import_authors(repo: pathlib.Path) -> tuple[types.ModuleType, types.ModuleType]:
    """(their functions module, their sequence-parallel LaCT module), the Wan / attention / SP imports stubbed."""
    stubs = {
        "minVid.models.wan.wan_base.modules.model": (
            "WanRMSNorm rope_apply rope_apply_ar rope_apply_ar_inference rope_apply_ar_with_repeat "
            "precompute_freqs_time_for_repeat"
        ),
        "minVid.models.wan.wan_base.modules.attention": "flash_attention",
        "minVid.models.wan.wan_base.distributed": "sp_support",
    }
    for name in ("minVid", "minVid.models", "minVid.models.wan", "minVid.models.wan.wan_base", "minVid.models.blocks"):
        sys.modules.setdefault(name, types.ModuleType(name))
    for name, attributes in stubs.items():
        module = sys.modules.setdefault(name, types.ModuleType(name))
        for attribute in attributes.split():
            setattr(module, attribute, None)
    functions = _load("minVid.models.blocks.functions", repo / BLOCKS / "functions.py")
    layer = _load("minVid.models.blocks.ar_lact_swa_repeat_sp", repo / BLOCKS / "ar_lact_swa_repeat_sp.py")
    return functions, layer


@contextlib.contextmanager
def fp32_newton_schulz():
    """Their Newton-Schulz starts with `X = G.bfloat16()`; make that the identity, so it runs in fp32."""
    original = torch.Tensor.bfloat16
    torch.Tensor.bfloat16 = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.bfloat16 = original


def inputs() -> dict[str, torch.Tensor]:
    """Fixed weights and inputs. Sequence length `T + 2T(N-1)`; q, k L2-normalised per head."""
    g = torch.Generator().manual_seed(0)
    length = TOKENS * (2 * NUM_CHUNKS - 1)

    def randn(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=g, dtype=torch.float64).float()

    return {
        "w0": randn(NUM_HEADS, HIDDEN_DIM, HEAD_DIM, scale=HEAD_DIM**-0.5),
        "w1": randn(NUM_HEADS, HEAD_DIM, HIDDEN_DIM, scale=HIDDEN_DIM**-0.5),
        "w2": randn(NUM_HEADS, HIDDEN_DIM, HEAD_DIM, scale=HEAD_DIM**-0.5),
        "q": F.normalize(randn(NUM_HEADS, length, HEAD_DIM), dim=-1),
        "k": F.normalize(randn(NUM_HEADS, length, HEAD_DIM), dim=-1),
        "v": randn(NUM_HEADS, length, HEAD_DIM),
        "x": randn(1, length, DIM),
        # Rates around softplus(4 - 6.9) ~ 0.05, spread by x: large enough that every update shows.
        "lr_proj.weight": randn(3 * NUM_HEADS, DIM, scale=0.3),
        "lr_proj.bias": 4.0 + randn(3 * NUM_HEADS, scale=0.5),
        "momentum_proj.0.weight": randn(NUM_HEADS, DIM, scale=0.3),
        "momentum_proj.0.bias": randn(NUM_HEADS, scale=0.5),
    }


def heads(t: torch.Tensor, per_head: int) -> torch.Tensor:
    """Their `rearrange(t, 'b s (n_h c) -> (b n_h) s c')`: (1, L, Hf*c) -> (Hf, L, c)."""
    return t.view(t.shape[1], NUM_HEADS, per_head).transpose(0, 1).contiguous()


@torch.no_grad()
def golden(repo: pathlib.Path) -> dict[str, torch.Tensor]:
    functions, layer = import_authors(repo)
    tensors = inputs()
    lr_logits = F.linear(tensors["x"], tensors["lr_proj.weight"], tensors["lr_proj.bias"])
    rates = heads(F.softplus(lr_logits.float() + functions.inv_softplus(BASE_LR)), 3)  # (Hf, L, 3)
    momentum_gate = torch.nn.Sequential(torch.nn.Linear(DIM, NUM_HEADS), torch.nn.Sigmoid())
    momentum_gate.load_state_dict({k.removeprefix("momentum_proj."): tensors[k] for k in tensors if "momentum" in k})
    momentum = heads(momentum_gate(tensors["x"]), 1)  # (Hf, L, 1)
    out = {**tensors, "rates": rates, "momentum": momentum}
    for case, (use_momentum, use_muon) in CASES.items():
        with fp32_newton_schulz():
            output, w0, w1, w2 = layer.ar_fast_weight_swish_glu_weight_norm_mini_batch_with_momentum(
                tensors["w0"].clone(), tensors["w1"].clone(), tensors["w2"].clone(),
                tensors["q"], tensors["k"], tensors["v"],
                *rates.split(1, dim=-1),
                w_scale=1.0, mini_batch_size=TOKENS, update_every=2 * TOKENS,
                use_moun=use_muon, num_moun_iters=5, weight_norm=True,
                fw_momentum=momentum, use_momentum=use_momentum,
            )  # fmt: skip
        out.update({f"{case}.output": output, f"{case}.w0": w0, f"{case}.w1": w1, f"{case}.w2": w2})
    return {k: v.contiguous() for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lact_repo", type=pathlib.Path, required=True, help="a checkout of a1600012888/LaCT")
    parser.add_argument("--lact_commit", default="unknown", help="the checkout's commit, recorded in the file")
    parser.add_argument(
        "--output", type=pathlib.Path, default=ROOT / "tests" / "fixtures" / "authors_golden.safetensors"
    )
    args = parser.parse_args()
    tensors = golden(args.lact_repo)
    save_file(tensors, args.output, metadata={"source": f"a1600012888/LaCT@{args.lact_commit} {BLOCKS.as_posix()}"})
    print(f"wrote {args.output}: {sum(t.numel() for t in tensors.values()) * 4 / 1024:.1f} KiB of tensors")


if __name__ == "__main__":
    main()
