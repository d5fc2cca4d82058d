"""Saved formats (docs/design.md Sec. 6.3): folders written by older code load with unchanged outputs.

`fixtures/formats/v1` was written by the code before the fast-weight rate took the authors' form (format 1:
`lr_proj.bias` held `softplus^-1(fw_base_lr)`); see its README.
"""

import json
import logging
import math
import pathlib
import shutil

import pytest
import torch
from safetensors.torch import load_file

from lact_video import ForwardMode, LaCTWanTransformer3DModel
from lact_video.layers import FastWeightMemory
from lact_video.models.formats import FORMAT_KEY, FORMAT_VERSION, PACKAGE_VERSION_KEY
from lact_video.training import checkpointing
from lact_video.training.export import model_index
from pipelines import LaCTVideoPipeline

V1 = pathlib.Path(__file__).parent / "fixtures" / "formats" / "v1"
EXPECTED = load_file(V1 / "expected.safetensors")


def velocity(model: LaCTWanTransformer3DModel) -> torch.Tensor:
    inputs = (EXPECTED["hidden_states"], EXPECTED["timestep"], EXPECTED["encoder_hidden_states"])
    with torch.no_grad():
        return model(*inputs, mode=ForwardMode.TEACHER_FORCING).sample


def relative_error(model: LaCTWanTransformer3DModel) -> float:
    return ((velocity(model) - EXPECTED["velocity"]).norm() / EXPECTED["velocity"].norm()).item()


def raw_v1_model() -> LaCTWanTransformer3DModel:
    """The fixture's tensors as they are on disk, unconverted, in a model of the current code."""
    model = LaCTWanTransformer3DModel.from_config(LaCTWanTransformer3DModel.load_config(V1 / "transformer"))
    model.load_state_dict(load_file(V1 / "transformer" / "diffusion_pytorch_model.safetensors"))
    return model.eval()


def drop_marker(folder: pathlib.Path) -> None:
    """Make a folder saved by the current code look as format-1 code wrote it: no marker in config.json."""
    config = json.loads((folder / "config.json").read_text())
    del config[FORMAT_KEY], config[PACKAGE_VERSION_KEY]
    (folder / "config.json").write_text(json.dumps(config))


def test_the_fixture_needs_the_conversion():
    """Read with today's meaning and no conversion, the old weights give another model: the memory matters."""
    assert relative_error(raw_v1_model()) > 1e-2


@pytest.mark.parametrize("kwargs", [{}, {"device_map": "cpu"}], ids=["default", "device_map"])
def test_v1_folder_loads_with_unchanged_outputs(kwargs, caplog):
    """low_cpu_mem_usage is always on here: `_keep_in_fp32_modules` makes diffusers refuse it off."""
    with caplog.at_level(logging.WARNING, logger="lact_video.models.formats"):
        model = LaCTWanTransformer3DModel.from_pretrained(V1 / "transformer", **kwargs)
    assert relative_error(model) <= 1e-6
    (line,) = caplog.messages
    assert "format-1 weights" in line and "converted to format 2" in line and "of 2 fast-weight memories" in line
    # The new parametrisation: lr_proj.bias + c is the old bias (-1), c from the folder's fw_base_lr = 0.02.
    memory = model.blocks[0].attn1.memory
    assert memory.lr_offset == pytest.approx(math.log(math.expm1(0.02)), rel=1e-12)
    torch.testing.assert_close(memory.lr_proj.bias + memory.lr_offset, torch.full((9,), -1.0))


def test_sharded_v1_folder_loads_with_unchanged_outputs(tmp_path):
    raw_v1_model().save_pretrained(tmp_path, max_shard_size="20KB")
    drop_marker(tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    assert relative_error(LaCTWanTransformer3DModel.from_pretrained(tmp_path)) <= 1e-6


def test_a_converted_folder_saves_as_the_current_format_and_is_not_converted_twice(tmp_path, caplog):
    LaCTWanTransformer3DModel.from_pretrained(V1 / "transformer").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config[FORMAT_KEY] == FORMAT_VERSION == 2
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lact_video.models.formats"):
        model = LaCTWanTransformer3DModel.from_pretrained(tmp_path)
    assert caplog.messages == []
    assert model.config[FORMAT_KEY] == 2
    assert relative_error(model) <= 1e-6


def test_v1_pipeline_folder_loads_with_unchanged_outputs(tiny_wan_dir, tmp_path):
    """`LaCTVideoPipeline.from_pretrained` of a whole exported folder whose transformer is format 1."""
    shutil.copytree(V1 / "transformer", tmp_path / "transformer")
    for component in ("scheduler", "text_encoder", "tokenizer", "vae"):
        shutil.copytree(tiny_wan_dir / component, tmp_path / component)
    (tmp_path / "model_index.json").write_text(json.dumps(model_index(tiny_wan_dir)))
    pipe = LaCTVideoPipeline.from_pretrained(tmp_path)
    assert relative_error(pipe.transformer) <= 1e-6


def test_a_new_model_records_the_current_format():
    config = LaCTWanTransformer3DModel.load_config(V1 / "transformer")
    model = LaCTWanTransformer3DModel.from_config(config)  # new weights, whatever the config's format
    assert model.config[FORMAT_KEY] == 2
    memory = next(m for m in model.modules() if isinstance(m, FastWeightMemory))
    assert (memory.lr_proj.bias == 0).all() and "lr_offset" not in str(memory.state_dict().keys())


def test_a_newer_format_is_refused(tmp_path):
    shutil.copytree(V1 / "transformer", tmp_path, dirs_exist_ok=True)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, FORMAT_KEY: 3, PACKAGE_VERSION_KEY: "9.0.0"}))
    with pytest.raises(ValueError, match=r"_lact_format_version=3 \(written by lact-video 9.0.0\).*Upgrade"):
        LaCTWanTransformer3DModel.from_pretrained(tmp_path)


class _Accelerator:
    """The accelerate calls of `save_checkpoint` / `load_checkpoint`, for one process."""

    is_main_process, process_index, num_processes = True, 0, 1

    def __init__(self):
        self.loaded = []

    def wait_for_everyone(self):
        pass

    def save_state(self, path):
        (pathlib.Path(path) / "model.safetensors").write_text("weights")

    def load_state(self, path):
        self.loaded.append(path)


def test_a_training_checkpoint_of_an_older_format_is_not_resumed(tmp_path):
    path = checkpointing.save_checkpoint(_Accelerator(), tmp_path, 2)
    assert checkpointing.read_marker(path)["model_format_version"] == 2
    checkpointing.load_checkpoint(accelerator := _Accelerator(), path)
    assert accelerator.loaded == [str(path)]

    marker = checkpointing.read_marker(path)
    del marker["model_format_version"]  # as written before the format was recorded
    (path / checkpointing.MARKER).write_text(json.dumps(marker))
    with pytest.raises(ValueError, match="holds weights of format 1.*resuming would give the weights another meaning"):
        checkpointing.load_checkpoint(accelerator := _Accelerator(), path)
    assert accelerator.loaded == []
