"""The README's Python examples, and its `scripts/generate.py` commands after them, run as written (in a scratch
directory)."""

import re
import shlex
from pathlib import Path

from lact_video.training.config import REFERENCE_BEGIN, REFERENCE_END, config_reference

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def generate_commands() -> list[list[str]]:
    """The arguments of every `python scripts/generate.py` command in the README's bash blocks."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return [shlex.split(line)[2:] for line in lines if line.startswith("python scripts/generate.py ")]


def test_readme_examples_run(tmp_path, monkeypatch):
    """The Python blocks in order, in one namespace; then the generation commands (the "Long videos" ones use the
    folder a Python example saved), each of which must write a video of its --num_frames frames (after the clip, with
    --return_input_video)."""
    import imageio_ffmpeg

    from pipelines import generate

    blocks, commands = python_blocks(), generate_commands()
    assert blocks, "README has no python examples"
    for flag in ("--prompt_at", "--save_state", "--resume_state", "--video"):
        assert any(flag in words for words in commands), f"README has no generate.py command with {flag}"
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - the README is ours
    for words in commands:
        generate.main(words)
        written = str(tmp_path / words[words.index("--output") + 1])
        expected = int(words[words.index("--num_frames") + 1])
        if "--return_input_video" in words:  # the clip first: the README's fills whole chunks, so all of it
            expected += imageio_ffmpeg.count_frames_and_secs(str(tmp_path / words[words.index("--video") + 1]))[0]
        assert imageio_ffmpeg.count_frames_and_secs(written)[0] == expected, shlex.join(words)


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
