"""Write a tiny saved-format fixture: a LaCT transformer folder and its outputs, as the installed lact-video writes them.

docs/design.md Sec. 6.3: a change of meaning is tested by loading a folder written by the OLD code. Run this once
with the release before the change on the path, e.g. for format 1 (before issue 12's rate parametrisation):

    git -C . archive c34a0ce lact_video | tar -x -C /tmp/lact_c34a0ce
    PYTHONPATH=/tmp/lact_c34a0ce python scripts/format_fixture.py tests/fixtures/formats/v1

It writes `<output>/transformer/` (`save_pretrained`: config.json and safetensors) and `<output>/expected.safetensors`
(the teacher-forcing inputs and velocity, fp32). The memory is opened by setting parameters directly (not through
the tests' helpers, which change with the format): gate bias 1, random gate and rate weights, `lr_proj.bias = -1`,
so that later chunks depend on what the memory wrote. Uses only the API that every format's code has.
"""

import argparse
import pathlib

import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import save_file

import lact_video
from lact_video import ForwardMode, LaCTWanTransformer3DModel, interleave_teacher_forcing, interleave_timesteps
from lact_video.tiny import TRANSFORMER_CONFIGS

NUM_CHUNKS, HEIGHT, WIDTH, TEXT_LEN = 3, 4, 4, 8
LACT = {"chunk_frames": 1, "fw_head_dim": 8, "use_momentum": True, "fw_base_lr": 0.02}


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=pathlib.Path)
    output = parser.parse_args().output

    torch.manual_seed(0)
    model = LaCTWanTransformer3DModel.from_wan(WanTransformer3DModel(**TRANSFORMER_CONFIGS["tiny"]), **LACT).eval()
    g = torch.Generator().manual_seed(1)
    for name, p in model.named_parameters():
        if name.endswith(("memory.lr_proj.weight", "memory.gate_proj.weight", "memory.momentum_proj.weight")):
            p.add_(0.3 * torch.randn(p.shape, generator=g))
        elif name.endswith("memory.gate_proj.bias"):
            p.fill_(1.0)
        elif name.endswith("memory.lr_proj.bias"):
            p.fill_(-1.0)

    clean = torch.randn(1, model.config.in_channels, NUM_CHUNKS, HEIGHT, WIDTH, generator=g)
    noisy = torch.randn(1, 1, *clean.shape[1:], generator=g)  # (B, R, C, F, H, W), one noisy copy
    t = torch.rand(1, 1, NUM_CHUNKS, generator=g) * 1000
    text = torch.randn(1, TEXT_LEN, model.config.text_dim, generator=g)
    hidden_states = interleave_teacher_forcing(noisy, clean, chunk_frames=1)
    timestep = interleave_timesteps(t)
    velocity = model(hidden_states, timestep, text, mode=ForwardMode.TEACHER_FORCING).sample

    model.save_pretrained(output / "transformer")
    tensors = {"hidden_states": hidden_states, "timestep": timestep, "encoder_hidden_states": text}
    save_file(
        {k: v.contiguous() for k, v in {**tensors, "velocity": velocity}.items()}, output / "expected.safetensors"
    )
    print(f"wrote {output} with lact-video {lact_video.__version__} from {lact_video.__file__}")


if __name__ == "__main__":
    main()
