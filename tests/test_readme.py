"""The README's Python examples run as written (in a scratch directory)."""

import re
from pathlib import Path

from lact_video.training.config import REFERENCE_BEGIN, REFERENCE_END, config_reference

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_examples_run(tmp_path, monkeypatch):
    blocks = python_blocks()
    assert blocks, "README has no python examples"
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - the README is ours


def test_readme_commands_exist():
    root = README.parent
    for script in re.findall(r"bash (scripts/\w+\.sh|\.ci/run)", README.read_text()):
        assert (root / script).is_file(), script


def test_config_reference_matches_the_dataclasses():
    text = README.read_text()
    start, end = text.index(REFERENCE_BEGIN), text.index(REFERENCE_END) + len(REFERENCE_END)
    assert text[start:end] == config_reference(), "run: python scripts/config_reference.py --write"
