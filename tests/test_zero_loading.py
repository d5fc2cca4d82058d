"""Loading under ZeRO-3 without a whole copy per rank (lact_video.training.zero_loading, docs/design.md Sec. 7).

The fast tests run `load_zero3` in this process as a process group of one: its weights then go through
`zero.Init` partitioning, `GatheredParameters` and the lazy reads as on many ranks. The slow ones launch 2
processes (gloo, CPU), as `accelerate launch` with configs/accelerate/zero3_cpu_2proc.yaml does, and check the
same equality there, and the peak host memory per rank on a base of more than 1 GB.
"""

import json
import pathlib
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from lact_video import LaCTWanTransformer3DModel
from lact_video.models.formats import FORMAT_KEY, PACKAGE_VERSION_KEY

REPO = pathlib.Path(__file__).resolve().parents[1]
V1 = REPO / "tests" / "fixtures" / "formats" / "v1" / "transformer"
TINY_LACT = {"chunk_frames": 2, "fw_head_dim": 12, "fw_mlp_ratio": 2, "num_repeat": 1}  # configs/tiny.yaml
DS_CONFIG = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def group_of_one():
    """A gloo process group of one process, torn down after the module's tests."""
    import deepspeed.comm

    from lact_video.training.distributed import silence_known_harmless_warnings, skip_deepspeed_shm_build

    skip_deepspeed_shm_build()
    silence_known_harmless_warnings()
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LOCAL_RANK", "0")  # zero.Init places the shards on the local rank's device
        yield
    torch.distributed.destroy_process_group()
    deepspeed.comm.comm.cdb = None  # DeepSpeed's handle on the destroyed group


def full_parameters(model) -> dict[str, torch.Tensor]:
    """Every parameter whole, gathered from its ZeRO-3 partitions."""
    import deepspeed

    out = {}
    for name, param in model.named_parameters():
        with deepspeed.zero.GatheredParameters([param]):
            out[name] = param.detach().clone()
    return out


def assert_bitwise_equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    differ = [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
    assert not differ, differ


def load(path, **kwargs):
    from lact_video.training.zero_loading import load_zero3

    return load_zero3(path, ds_config=DS_CONFIG, **kwargs)


def test_wan_base_loads_as_from_wan_bit_for_bit(group_of_one, tiny_wan_dir, tmp_path):
    """Pretrained weights as read, the new LaCT parameters as `from_wan` draws them from the same seed (and the RNG
    left in the same state), the rotary buffers in float32; from a single file and from a sharded index."""
    torch.manual_seed(3)
    expected = LaCTWanTransformer3DModel.from_wan(tiny_wan_dir, subfolder="transformer", **TINY_LACT)
    after = torch.rand(4)
    sharded = tmp_path / "sharded"
    from diffusers import WanTransformer3DModel

    WanTransformer3DModel.from_pretrained(tiny_wan_dir, subfolder="transformer").save_pretrained(
        sharded, max_shard_size="20KB"
    )
    assert (sharded / "diffusion_pytorch_model.safetensors.index.json").is_file()
    for path, subfolder in [(tiny_wan_dir, "transformer"), (sharded, None)]:
        torch.manual_seed(3)
        model = load(path, subfolder=subfolder, lact_config=TINY_LACT)
        assert torch.equal(torch.rand(4), after)
        assert all(p.ds_tensor is not None for p in model.parameters())
        assert_bitwise_equal(full_parameters(model), dict(expected.named_parameters()))
        assert_bitwise_equal(dict(model.named_buffers()), dict(expected.named_buffers()))
        assert not model.training and model.config == expected.config


def test_lact_folder_loads_as_from_pretrained_with_format_conversion(group_of_one, caplog):
    """A format-1 LaCT folder: its lr_proj biases converted, as `from_pretrained` converts them."""
    expected = LaCTWanTransformer3DModel.from_pretrained(V1)
    model = load(V1)
    assert_bitwise_equal(full_parameters(model), dict(expected.named_parameters()))
    assert "converted to format 2" in caplog.text
    with pytest.raises(ValueError, match="applies to a Wan base only"):
        load(V1, lact_config=TINY_LACT)


def test_missing_and_unexpected_keys_are_named(group_of_one, tiny_wan_dir, tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "transformer"
    shutil.copytree(pathlib.Path(tiny_wan_dir) / "transformer", folder)
    weights = load_file(folder / "diffusion_pytorch_model.safetensors")
    weights["blocks.0.extra.weight"] = weights.pop("blocks.1.ffn.net.2.weight")
    weights["proj_out.bias"] = weights["proj_out.bias"][:-1]
    save_file(weights, folder / "diffusion_pytorch_model.safetensors")
    with pytest.raises(
        ValueError,
        match=r"missing keys \['blocks.1.ffn.net.2.weight'\], unexpected keys \['blocks.0.extra.weight'\], other "
        r"shapes \[\"proj_out.bias \(63,\) \(the model's: \(64,\)\)\"\]",
    ):
        load(folder, lact_config=TINY_LACT)
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ValueError, match="holds neither diffusion_pytorch_model.safetensors"):
        load(folder, lact_config=TINY_LACT)


def test_a_lact_folder_without_marker_is_format_1_but_a_wan_base_is_not(group_of_one, tiny_wan_dir, caplog):
    """A Wan base has no format marker either; its new parameters are drawn in the current format."""
    config = json.loads((pathlib.Path(tiny_wan_dir) / "transformer" / "config.json").read_text())
    assert FORMAT_KEY not in config and PACKAGE_VERSION_KEY not in config
    load(tiny_wan_dir, subfolder="transformer", lact_config=TINY_LACT)
    assert "converted" not in caplog.text


# Slow: 2 processes, launched as users launch training


WORKER = REPO / "benchmarks" / "load_worker.py"


def launch_worker(*args, timeout=600) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file",
        str(REPO / "configs" / "accelerate" / "zero3_cpu_2proc.yaml"), "--main_process_port", str(_free_port()),
        str(WORKER), *map(str, args),
    ]  # fmt: skip
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(command, cwd=REPO, env={**__import__("os").environ, **env}, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


@pytest.mark.slow
def test_two_ranks_load_the_same_weights_as_from_wan(tiny_wan_dir, tmp_path):
    out = tmp_path / "gathered.safetensors"
    done = launch_worker("--base", tiny_wan_dir, "--subfolder", "transformer", "--tiny", "--save", out)
    assert out.is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    torch.manual_seed(0)
    expected = LaCTWanTransformer3DModel.from_wan(tiny_wan_dir, subfolder="transformer", **TINY_LACT)
    assert_bitwise_equal(load_file(out), dict(expected.named_parameters()))


@pytest.mark.slow
def test_each_rank_holds_at_most_0_6_of_a_whole_load(tmp_path):
    """A 1.3B-shaped base cut to 8 blocks (1.7 GB in float32): each of 2 ranks grows its peak RSS by at most
    0.6 x what one process loading it whole (`from_wan`) grows."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_finetune import measure_load_rss

    figures = measure_load_rss(tmp_path)
    assert figures["base_bytes"] >= 1e9
    assert figures["load_rss_per_rank_over_full"] <= 0.6, figures
