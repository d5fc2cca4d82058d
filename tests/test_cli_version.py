"""Every command-line tool reports the package version."""

import pytest
from utils import load_script as load

import lact_video


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
