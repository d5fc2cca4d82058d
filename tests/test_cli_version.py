"""Every command-line tool reports the package version; console scripts exit 0 when they succeed."""

import configparser
import importlib
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


def console_scripts() -> list[tuple[str, str, str]]:
    """(name, module, function) of every console script setup.cfg installs."""
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    entries = [line.split("=") for line in parser["options.entry_points"]["console_scripts"].split("\n") if line]
    return [(name.strip(), *target.strip().split(":")) for name, target in entries]


@pytest.mark.parametrize("name, module, function", console_scripts(), ids=lambda value: str(value))
def test_console_script_exits_zero_when_main_succeeds(name, module, function, monkeypatch):
    """setuptools' wrapper runs `sys.exit(target())`: a target that hands back main's folder or report
    would exit with status 1 after a successful run."""
    module = importlib.import_module(module)
    calls = []
    monkeypatch.setattr(module, "main", lambda argv=None: calls.append(argv) or REPO / "a-successful-result")
    if function == "main":
        pytest.fail(f"{name} runs `main` itself; point it at a wrapper that drops main's return value")
    assert getattr(module, function)() is None
    assert calls == [None]
