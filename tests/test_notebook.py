"""notebooks/generate_long_video.ipynb runs headless, end to end, and writes its videos."""

import json
import os
import pathlib
import sys

import imageio_ffmpeg
import nbclient
import nbformat

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "generate_long_video.ipynb"


def test_generate_long_video_notebook(tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # Which interpreter the kernel runs: jupyter_client starts the "python3" kernel spec (argv "python")
    # with this process's sys.executable; the extra cell proves it is this venv's.
    nb.cells.append(nbformat.v4.new_code_cell("import json, sys; print(json.dumps([sys.prefix]))"))
    # The kernel inherits the environment: the repository root makes `pipelines` importable from tmp_path.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))

    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError on any failing cell

    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert json.loads(text.strip().splitlines()[-1]) == [sys.prefix]
    assert "237 frames of 64x64" in text
    assert "same first frames as the long video: True" in text
    assert "93 frames, the prompt switched at frame 45" in text
    assert "chunks before the switch as in the long video: True" in text
    # Big Buck Bunny: 5.28 s at 16 fps is 85 frames, whole chunks hold 81 (7 chunks), then 4 new chunks.
    assert "129 frames: the clip's 81, then 48 new ones" in text
    videos = [o for o in outputs if "<video" in o.get("data", {}).get("text/html", "")]
    assert len(videos) == 4

    out = tmp_path / "outputs" / "generate_long_video"
    assert imageio_ffmpeg.count_frames_and_secs(str(out / "long_video.mp4"))[0] == 237
    assert imageio_ffmpeg.count_frames_and_secs(str(out / "streamed.mp4"))[0] == 4 * 3 * 6 - 3
    assert imageio_ffmpeg.count_frames_and_secs(str(out / "prompt_switch.mp4"))[0] == 4 * 3 * 8 - 3
    assert imageio_ffmpeg.count_frames_and_secs(str(out / "continued.mp4"))[0] == 81 + 4 * 3 * 4
