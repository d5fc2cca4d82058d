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


def test_readme_says_where_several_videos_and_the_gpu_figures_go():
    """What the README says of `output_path` with several videos is what `video_paths` writes; the GPU table
    says where its keys are in the JSON (`sections.<name>.figures.<key>`, as benchmarks/gpukit/report.py writes)."""
    from pipelines.streaming import video_paths

    text = " ".join(README.read_text().split())
    assert video_paths("nb.mp4", 2) == ["nb_0.mp4", "nb_1.mp4"]
    assert '`output_path="nb.mp4"` writes `nb_0.mp4`, `nb_1.mp4`' in text
    assert "JSON key (`numerics.x` is `sections.numerics.figures.x` in the file" in text
