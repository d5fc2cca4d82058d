"""Every command-line tool reports the package version."""

import importlib.util
import pathlib
import sys

import pytest

import lact_video

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load(path: str):
    spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem + "_cli", ROOT / path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "main",
    [
        lambda argv: __import__("lact_video.tiny", fromlist=["main"]).main(argv),
        lambda argv: __import__("lact_video.convert", fromlist=["main"]).main(argv),
        lambda argv: __import__("lact_video.data.demo_dataset", fromlist=["main"]).main(argv),
        lambda argv: load("finetune/precompute.py").main(argv),
        lambda argv: load("finetune/validate.py").main(argv),
        lambda argv: load("finetune/config.py").load_config(argv),
        lambda argv: load("scripts/generate.py").main(argv),
    ],
    ids=["tiny", "convert", "demo_dataset", "precompute", "validate", "finetune", "generate"],
)
def test_version(main, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code in (0, None)
    assert lact_video.__version__ in capsys.readouterr().out
