"""The LaCT config is declared once (`LaCTConfig`), and renamed keys keep loading through their deprecated
aliases, with a FutureWarning, in every format (docs/design.md, Sec. 6.2 and 6.5): saved folders, keyword
arguments, `--lact`, `convert --inter_multi`, finetune recipes, overrides and a run's finetune_config.yaml."""

import argparse
import dataclasses
import inspect
import json
import pathlib
import shutil
from contextlib import contextmanager

import pytest
import torch
from diffusers import WanTransformer3DModel
from utils import minvid_convert_argv

from lact_video import LaCTWanTransformer3DModel, interleave_teacher_forcing, interleave_timesteps
from lact_video.convert import main as convert_main
from lact_video.convert import to_minvid_state_dict
from lact_video.models import LaCTConfig, lact_config
from lact_video.testing import open_memory
from lact_video.training.config import ConfigError, load_config, to_yaml
from pipelines import LaCTVideoPipeline
from pipelines.generate import parse_lact_options

K = 2  # chunk_frames
OLD_NEW = {"base_lr": ("fw_base_lr", 0.05), "inter_multi": ("fw_mlp_ratio", 3)}  # old -> (new, a non-default value)


FINETUNE = {"model.mode": "model.variant", "model.lact.base_lr": "model.lact.fw_base_lr",
            "model.lact.inter_multi": "model.lact.fw_mlp_ratio"}  # fmt: skip
TINY = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")
SOURCES = ["model.pretrained_model_name_or_path=/m", "data.train_data_dir=/videos"]  # required, checked cheaply


@contextmanager
def warns_renamed(*old: str):
    """Expect one FutureWarning naming each old key and its new name."""
    with pytest.warns(FutureWarning) as record:
        yield
    messages = [str(w.message) for w in record if issubclass(w.category, FutureWarning)]
    for key in old:
        new = OLD_NEW[key][0] if key in OLD_NEW else FINETUNE[key]
        assert sum(f"'{key}' is the deprecated name of '{new}'" in m for m in messages) == 1, (key, messages)


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    """The aliases warn once per process and key: start every test as a fresh process would."""
    monkeypatch.setattr(lact_config, "_warned", set())


@pytest.fixture(scope="module")
def wan(tiny_wan_dir):
    return WanTransformer3DModel.from_pretrained(tiny_wan_dir, subfolder="transformer").eval()


def new_keys():
    return {new: value for new, value in OLD_NEW.values()}


def test_model_signature_lists_the_lact_config_with_its_defaults():
    parameters = inspect.signature(LaCTWanTransformer3DModel.__init__).parameters
    fields = dataclasses.fields(LaCTConfig)
    assert {f.name: f.default for f in fields} == {f.name: parameters[f.name].default for f in fields}
    assert set(lact_config.LACT_CONFIG_KEYS) == {f.name for f in fields} | {"chunk_frames"}
    assert set(lact_config.LACT_CONFIG_KEYS) <= set(parameters)


def test_folder_saved_with_the_old_keys_loads_the_same_model(wan, tmp_path):
    torch.manual_seed(0)
    model = LaCTWanTransformer3DModel.from_wan(wan, chunk_frames=K, fw_head_dim=8, **new_keys()).eval()
    open_memory(model, generator=torch.Generator().manual_seed(0), noise={"gate_proj.weight": 0.3}, rate=0.3)
    model.save_pretrained(tmp_path / "new")
    # The folder as the code before the renames wrote it: the same file, with the old key names.
    shutil.copytree(tmp_path / "new", tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    for old, (new, _) in OLD_NEW.items():
        config[old] = config.pop(new)
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))

    with warns_renamed("base_lr", "inter_multi"):
        loaded = LaCTWanTransformer3DModel.from_pretrained(tmp_path / "old").eval()
    for new, value in new_keys().items():
        assert loaded.config[new] == value
        assert new not in loaded.config.get("_use_default_values", [])  # given, not defaulted
    g = torch.Generator().manual_seed(1)
    clean, noisy = torch.randn(1, 16, 2 * K, 4, 4, generator=g), torch.randn(1, 1, 16, 2 * K, 4, 4, generator=g)
    args = (interleave_teacher_forcing(noisy, clean, K), interleave_timesteps(torch.rand(1, 1, 2, generator=g) * 1000))
    text = torch.randn(1, 7, 32, generator=g)
    torch.testing.assert_close(loaded(*args, text).sample, model(*args, text).sample, rtol=0, atol=0)

    loaded.save_pretrained(tmp_path / "resaved")
    resaved = json.loads((tmp_path / "resaved" / "config.json").read_text())
    assert not set(OLD_NEW) & set(resaved) and {k: resaved[k] for k in new_keys()} == new_keys()


def test_old_keywords_of_from_wan_warn_and_mean_the_new_keys(wan):
    with warns_renamed("base_lr", "inter_multi"):
        model = LaCTWanTransformer3DModel.from_wan(wan, chunk_frames=K, fw_head_dim=8, base_lr=0.05, inter_multi=3)
    assert {k: model.config[k] for k in new_keys()} == new_keys()
    assert model.blocks[0].attn1.memory.hidden_dim == 3 * 8
    with pytest.raises(ValueError, match="'base_lr' is the deprecated name of 'fw_base_lr'; both are given"):
        LaCTWanTransformer3DModel.from_wan(wan, fw_head_dim=8, base_lr=0.05, fw_base_lr=0.1)
    with pytest.raises(ValueError, match=r"Unknown LaCT config keys \['inter_mult'\]"):
        LaCTWanTransformer3DModel.from_wan(wan, fw_head_dim=8, inter_mult=3)


def test_old_keywords_of_the_pipeline_and_generate_lact(tiny_wan_dir, tmp_path):
    lact = ["chunk_frames=2", "fw_head_dim=12", "base_lr=0.05", "inter_multi=3"]
    items = parse_lact_options(lact, argparse.ArgumentParser())  # `--lact KEY=VALUE`; an unknown key exits
    with warns_renamed("base_lr", "inter_multi"):
        pipe = LaCTVideoPipeline.from_pretrained(tiny_wan_dir, **items)  # a plain Wan folder: patched as from_wan
    assert {k: pipe.transformer.config[k] for k in new_keys()} == new_keys()
    pipe.save_pretrained(tmp_path / "lact")
    with pytest.raises(ValueError, match=r"\['base_lr'\].*already holds a LaCT transformer"):
        LaCTVideoPipeline.from_pretrained(tmp_path / "lact", base_lr=0.05)


def test_convert_reads_the_old_flag(wan, tiny_wan_dir, tmp_path):
    from safetensors.torch import save_file

    save_file(to_minvid_state_dict(wan), tmp_path / "wan.safetensors")
    with warns_renamed("inter_multi"):
        argv = minvid_convert_argv(tmp_path / "wan.safetensors", tiny_wan_dir, tmp_path / "out")
        out = convert_main([*argv, "--fw_head_dim", "8", "--inter_multi", "3"])
    assert LaCTWanTransformer3DModel.from_pretrained(out / "transformer").config.fw_mlp_ratio == 3


def recipe(tmp_path, text: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


def test_old_recipe_keys_load_the_same_config(tmp_path):
    new = "model:\n  variant: swa\n  lact:\n    fw_base_lr: 0.05\n    fw_mlp_ratio: 3\n"
    old = "model:\n  mode: swa\n  lact:\n    base_lr: 0.05\n    inter_multi: 3\n"
    expected = load_config(["--config", recipe(tmp_path, new), *SOURCES])
    with warns_renamed("model.mode", "model.lact.base_lr", "model.lact.inter_multi"):
        assert load_config(["--config", recipe(tmp_path, old), *SOURCES]) == expected
    assert expected.model.variant.value == "swa" and expected.model.lact.fw_mlp_ratio == 3

    # a run's saved finetune_config.yaml, written before the renames, read back (validate.py, resume)
    saved = to_yaml(expected).replace("variant:", "mode:").replace("fw_base_lr:", "base_lr:")
    lact_config._warned.clear()  # once per process: as in validate.py's own process
    with warns_renamed("model.mode", "model.lact.base_lr"):
        assert load_config(["--config", recipe(tmp_path, saved), *SOURCES]) == expected

    with pytest.raises(ValueError, match="'model.lact.base_lr' is the deprecated name of 'model.lact.fw_base_lr'"):
        load_config(["--config", recipe(tmp_path, "model:\n  lact:\n    base_lr: 0.05\n    fw_base_lr: 0.1\n")])
    with pytest.raises(ConfigError, match="unknown config key model.lact.inter_mult"):
        load_config(["--config", recipe(tmp_path, "model:\n  lact:\n    inter_mult: 3\n")])


def test_old_override_keys_load_the_same_config():
    new = ["model.variant=full_causal", "model.lact.fw_base_lr=0.05", "--fw_mlp_ratio", "3"]
    old = ["--mode", "full_causal", "model.lact.base_lr=0.05", "--inter_multi=3"]  # short forms as today
    expected = load_config(["--config", TINY, *new, *SOURCES])
    with warns_renamed("model.mode", "model.lact.base_lr", "model.lact.inter_multi"):
        assert load_config(["--config", TINY, *old, *SOURCES]) == expected
    with pytest.raises(ConfigError, match="unknown flag --modee"):
        load_config(["--config", TINY, "--modee", "swa"])
