"""Generate a video of any length with LaCTVideoPipeline, streamed to an mp4 chunk by chunk.

    python scripts/generate.py --model DIR --prompt "a red car drives down a mountain road" \\
        --num_frames 241 --height 480 --width 832 --output video.mp4

`DIR` is a LaCT pipeline folder (exported by finetune/finetune.py, or `save_pretrained`), or a plain
Wan2.1 diffusers folder with `--from_wan` (patched, untrained: window attention only).
"""

import argparse
import time

import torch

import lact_video
from pipelines import LaCTVideoPipeline


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--from_wan", action="store_true", help="DIR is a plain Wan2.1 folder: patch it (chunk_frames 3)")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative_prompt", default=None)
    parser.add_argument("--num_frames", type=int, default=81)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--steps", type=int, default=50, help="denoising steps per chunk")
    parser.add_argument("--guidance_scale", type=float, default=5.0)
    parser.add_argument("--max_sequence_length", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fps", type=int, default=16)
    parser.add_argument("--output", default="video.mp4")
    parser.add_argument(
        "--compile", action="store_true",
        help="torch.compile the transformer (fullgraph): 5 graphs, compiled during the first two chunks, then reused",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {lact_video.__version__}")
    args = parser.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if args.from_wan:
        pipe = LaCTVideoPipeline.from_wan(args.model, torch_dtype=dtype, chunk_frames=3)
    else:
        pipe = LaCTVideoPipeline.from_pretrained(args.model, torch_dtype=dtype)
    pipe.to(device)
    if args.compile:
        pipe.transformer.compile(fullgraph=True)
    start = time.perf_counter()
    out = pipe(
        args.prompt,
        negative_prompt=args.negative_prompt,
        num_frames=args.num_frames,
        height=args.height,
        width=args.width,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        max_sequence_length=args.max_sequence_length,
        generator=torch.Generator().manual_seed(args.seed),
        output_path=args.output,
        fps=args.fps,
    )
    print(f"Wrote {out.video_paths[0]} ({args.num_frames} frames) in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
