"""Every command-line tool reports the package version."""

import pathlib
import subprocess
import sys

import pytest

import lact_video

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "main",
    [
        lambda argv: __import__("lact_video.tiny", fromlist=["main"]).main(argv),
        lambda argv: __import__("lact_video.convert", fromlist=["main"]).main(argv),
        lambda argv: __import__("lact_video.data.demo_dataset", fromlist=["main"]).main(argv),
        lambda argv: __import__("lact_video.data.precompute", fromlist=["main"]).main(argv),
        lambda argv: __import__("lact_video.training.validate", fromlist=["main"]).main(argv),
        lambda argv: __import__("lact_video.training.trainer", fromlist=["main"]).main(argv),
        lambda argv: __import__("pipelines.generate", fromlist=["main"]).main(argv),
    ],
    ids=["tiny", "convert", "demo_dataset", "precompute", "validate", "finetune", "generate"],
)
def test_version(main, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code in (0, None)
    assert lact_video.__version__ in capsys.readouterr().out


def test_finetune_script_runs_from_its_folder():
    """`cd finetune && python finetune.py`: the thin entry point finds the package from any folder."""
    command = [sys.executable, "finetune.py", "--version"]
    result = subprocess.run(command, cwd=REPO / "finetune", capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert lact_video.__version__ in result.stdout
