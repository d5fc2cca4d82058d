"""Generate a video of any length with LaCTVideoPipeline, streamed to a video file chunk by chunk.

    python scripts/generate.py --model DIR --prompt "a red car drives down a mountain road" \\
        --num_frames 241 --height 480 --width 832 --output video.mp4

`DIR` is a LaCT pipeline folder (exported by finetune/finetune.py, or `save_pretrained`), or a plain
Wan2.1 diffusers folder with `--from_wan` (patched, untrained: window attention only; `--lact KEY=VALUE`
sets the LaCT config, e.g. `--lact fw_head_dim=128 --lact chunk_frames=2`).

Switch prompts inside the video with `--prompt_at FRAME TEXT` (repeatable): `--prompt` holds from frame 0, each
TEXT from its video FRAME on, rounded to the nearest chunk start (`--negative_prompt_at` likewise):

    python scripts/generate.py --model DIR --prompt "a cat walks on the grass" \\
        --prompt_at 97 "the cat jumps onto a wall" --num_frames 189 --output cat.mp4

Pause and go on later (docs/design.md, Sec. 3.6): `--save_state state.safetensors` saves the generation state
after the last chunk; `--resume_state state.safetensors --num_frames 48 --output more.mp4` makes the next 48
frames (a multiple of 4 * chunk_frames), exactly those one longer run would have made, into their own file.
`--position_policy` and `--trained_chunks` set where extrapolation past the training length begins and how
(docs/design.md, Sec. 1.7), overriding the model's config.

Continue a real clip (docs/design.md, Sec. 3.8): `--video clip.mp4` reads the clip at `--fps`, resized and
center-cropped to `--height` x `--width`, commits its whole chunks to the memory, and generates `--num_frames` new
frames after it (a multiple of 4 * chunk_frames); `--return_input_video` writes the clip's frames first:

    python scripts/generate.py --model DIR --prompt "the car turns into a tunnel" --video drive.mp4 \\
        --num_frames 96 --return_input_video --output longer.mp4
"""

import argparse
import pathlib
import tempfile
import time

import torch
import yaml

import lact_video
from lact_video.errors import ConfigError, exit_on_config_error
from lact_video.models import LaCTWanTransformer3DModel
from lact_video.models.lact_config import DEPRECATED_LACT_KEYS, LACT_CONFIG_KEYS, PositionPolicy

from .generation_state import LaCTGenerationState, StateMismatchError
from .pipeline_lact_video import LaCTVideoPipeline
from .prompt_schedule import schedule_entries
from .state_io import StateFileError
from .streaming import CONTAINER_CODECS, container_codec


def parse_lact_options(items: list[str], parser: argparse.ArgumentParser) -> dict:
    """`--lact KEY=VALUE` items -> LaCT config keys for `from_wan` (which renames the deprecated ones, with a
    warning); values are YAML (768, null, [0, 1], true)."""
    config = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in (*LACT_CONFIG_KEYS, *DEPRECATED_LACT_KEYS):
            parser.error(f"--lact {item!r}: expected KEY=VALUE with KEY one of {', '.join(LACT_CONFIG_KEYS)}")
        try:
            config[key] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            parser.error(f"--lact {item!r}: the value is not valid YAML ({error.problem}), e.g. lact_blocks=[0, 1]")
    return config


def prompt_schedule(text: str | None, switches: list[list[str]], flag: str, parser: argparse.ArgumentParser):
    """`--prompt TEXT` and its `--prompt_at FRAME TEXT` switches (`flag` names them) -> the pipeline's prompt: the
    text alone, or a schedule {0: TEXT, FRAME: TEXT, ...} by increasing frame, checked before any model loads
    (`pipelines.prompt_schedule`). Frames round to chunk starts later, in the pipeline, which knows the chunks.

    Raises:
        ConfigError: for an empty text or a frame given twice (the command prints it as one line).
    """
    if not switches:
        return text
    base = flag.removesuffix("_at")
    if text is None and base == "--prompt":
        parser.error(f"{flag} FRAME TEXT switches from the {base} text: give {base} (the text from frame 0) too")
    schedule = {0: "" if text is None else text}  # no --negative_prompt: Wan's empty negative prompt
    for frame, switch in switches:
        if not frame.isdigit():
            parser.error(f"{flag} {frame!r} {switch!r}: FRAME must be a video frame index (an integer >= 0)")
        if int(frame) in schedule:
            parser.error(
                f"{flag} {frame}: frame {frame} already has a text"
                + (f" ({base} holds from frame 0)" if frame == "0" else "")
            )
        schedule[int(frame)] = switch
    schedule = dict(sorted(schedule.items()))
    schedule_entries(schedule, flag, negative=base == "--negative_prompt")
    return schedule


def check_output(output: str, parser: argparse.ArgumentParser) -> None:
    """Refuse, before any model loads, an --output the writer cannot encode or write: its container
    (`container_codec`), a folder that cannot be created, or one where no file can be made (probed with a
    temporary file, removed at once). The folder is created as the writer would create it."""
    path = pathlib.Path(output)
    if path.suffix.lower() == ".gif":
        parser.error(
            f"--output {output}: a GIF is not written directly; write a video (--output {path.with_suffix('.mp4')}) "
            f"and convert it, e.g. ffmpeg -i {path.with_suffix('.mp4')} {output}"
        )
    try:
        container_codec(path)
    except ValueError as error:
        parser.error(f"--output: {error}")
    check_writable_folder("--output", path, parser, example="video.mp4")


def check_writable_folder(flag: str, path: pathlib.Path, parser: argparse.ArgumentParser, example: str) -> None:
    """Refuse a file `path` that is a folder (the message suggests `example` in it), whose folder cannot be created,
    or where no file can be made (probed with a temporary file, removed at once). The folder is created as the
    writer would create it."""
    if path.is_dir():
        parser.error(f"{flag} {path} is a folder: give a file name, e.g. {path / example}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path.parent).close()
    except OSError as error:
        parser.error(f"{flag} {path}: cannot write in {path.parent} ({error.strerror}); choose another folder")


def check_distinct_files(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Refuse one file named by two of --output, --save_state, --video and --resume_state (symlinks and relative
    paths resolved): writing one would destroy the other, a clip before it is read or a video once generated."""
    named = {}
    for flag in ("--video", "--resume_state", "--output", "--save_state"):
        path = getattr(args, flag.removeprefix("--"))
        if path is None:
            continue
        resolved = pathlib.Path(path).resolve()
        if resolved in named:
            parser.error(
                f"{named[resolved]} and {flag} name the same file {path}: writing {flag} would destroy it; "
                f"give {flag} another path"
            )
        named[resolved] = flag


def load_resume_state(path: str) -> LaCTGenerationState:
    """The state file of `--resume_state`, read before any model loads.

    Raises:
        ConfigError: the file is missing, not a state file, or of a newer format.
    """
    if not pathlib.Path(path).is_file():
        raise ConfigError(f"--resume_state {path}: no such file (write one with --save_state)")
    try:
        return LaCTGenerationState.load(path)
    except StateFileError as error:
        raise ConfigError(f"--resume_state: {error}") from error


def main(argv=None) -> None:
    """Parse `argv` (see the module docstring), generate and write the video."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--from_wan", action="store_true", help="DIR is a plain Wan2.1 folder: patch it")
    parser.add_argument(
        "--lact",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --from_wan, a LaCT config key (repeatable; the model's defaults otherwise)",
    )
    parser.add_argument("--prompt", help="the prompt (from frame 0 when --prompt_at switches later)")
    parser.add_argument("--negative_prompt", default=None)
    for name in ("prompt", "negative_prompt"):
        parser.add_argument(
            f"--{name}_at",
            nargs=2,
            action="append",
            default=[],
            metavar=("FRAME", "TEXT"),
            help=f"switch the {name.replace('_', ' ')} to TEXT from video frame FRAME on, rounded to the nearest "
            "chunk start (repeatable)",
        )
    parser.add_argument("--num_frames", type=int, default=81)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument(
        "--steps", "--num_inference_steps", dest="steps", type=int, default=50, help="denoising steps per chunk"
    )
    parser.add_argument("--guidance_scale", type=float, default=5.0)
    parser.add_argument("--max_sequence_length", type=int, default=512)
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="noise seed (default: 0; with --resume_state, the saved generator goes on unless a seed is given)",
    )
    parser.add_argument("--fps", type=int, default=16)
    parser.add_argument(
        "--output", default="video.mp4", help=f"the video file: {', '.join(CONTAINER_CODECS)} (default: video.mp4)"
    )
    parser.add_argument(
        "--save_state",
        metavar="PATH",
        help="save the generation state after the last chunk to PATH (safetensors), to go on with --resume_state",
    )
    parser.add_argument(
        "--resume_state",
        metavar="PATH",
        help="go on from a state saved with --save_state, with the same model, size and guidance: --num_frames "
        "counts the new frames (a multiple of 4 * chunk_frames), and --output gets them alone",
    )
    parser.add_argument(
        "--video",
        metavar="PATH",
        help="a video file to continue: its whole chunks are read at --fps and resized to --height x --width, and "
        "--num_frames counts the new frames after it (a multiple of 4 * chunk_frames)",
    )
    parser.add_argument(
        "--return_input_video",
        action="store_true",
        help="with --video, write the clip's frames (as the VAE decodes them) before the new ones",
    )
    parser.add_argument(
        "--position_policy",
        choices=[policy.value for policy in PositionPolicy],
        help="rotary positions of the chunks past the training length (the model's config otherwise; see the "
        "README's 'Long videos')",
    )
    parser.add_argument(
        "--trained_chunks",
        type=int,
        help="chunk positions the model was trained on, where --position_policy begins (the model's config otherwise)",
    )
    parser.add_argument(
        "--compile",
        nargs="?",
        const="full",
        choices=["full", "regional"],
        help="torch.compile the transformer (fullgraph), compiling during the first two chunks: 'full' (the default) "
        "builds 5 graphs of the whole model; 'regional' builds 4 of one block, shared by all blocks, so the "
        "warm-up does not grow with the number of blocks",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {lact_video.__version__}")
    args = parser.parse_args(argv)
    if args.lact and not args.from_wan:
        parser.error("--lact applies to --from_wan only: a LaCT folder carries its own config")
    if args.prompt is None and not args.prompt_at:
        parser.error("the following arguments are required: --prompt")
    if args.video is not None:
        if args.resume_state:
            parser.error(
                "--video starts a video from a clip and --resume_state goes on with a saved one: give one of them "
                "(to go on after a clip later, pass --video with --save_state, then --resume_state)"
            )
        if not pathlib.Path(args.video).is_file():
            parser.error(f"--video {args.video}: no such file")
    elif args.return_input_video:
        parser.error("--return_input_video writes the clip of --video first: give --video too")
    if args.trained_chunks is not None and args.trained_chunks < 1:
        parser.error(f"--trained_chunks {args.trained_chunks}: give the number of chunks, at least 1")
    check_distinct_files(args, parser)
    check_output(args.output, parser)
    if args.save_state:
        state_path = pathlib.Path(args.save_state)
        if state_path.suffix != ".safetensors":
            parser.error(
                f"--save_state {args.save_state}: a state file is safetensors; name it "
                f"{state_path.with_suffix('.safetensors')}"
            )
        check_writable_folder("--save_state", state_path, parser, example="state.safetensors")
    with exit_on_config_error():  # a bad schedule or state file, also one found by the pipeline, is one line
        generate(args, parser)


def generate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Load the model, check a state to go on from against it, generate, write the video and save the state.

    Raises:
        ConfigError: the `--resume_state` file cannot be read, or was made with another model, size or guidance;
            a prompt schedule is invalid.
    """
    prompt = prompt_schedule(args.prompt, args.prompt_at, "--prompt_at", parser)
    negative_prompt = prompt_schedule(args.negative_prompt, args.negative_prompt_at, "--negative_prompt_at", parser)
    state = load_resume_state(args.resume_state) if args.resume_state else None

    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = load_pipeline(args, parser, torch.bfloat16 if device == "cuda" else torch.float32)
    pipe.to(device)
    if args.compile == "full":
        pipe.transformer.compile(fullgraph=True)
    elif args.compile == "regional":
        pipe.transformer.compile_repeated_blocks(fullgraph=True)
    if state is not None:
        try:
            guidance = args.guidance_scale > 1
            state.check_matches(
                pipe, height=args.height, width=args.width, num_videos=1, guidance=guidance, decoding=True
            )
        except StateMismatchError as error:
            raise ConfigError(f"--resume_state {args.resume_state}: {error}") from error
    seed = 0 if args.seed is None and state is None else args.seed
    start = time.perf_counter()
    out = pipe(
        prompt,
        negative_prompt=negative_prompt,
        num_frames=args.num_frames,
        height=args.height,
        width=args.width,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        max_sequence_length=args.max_sequence_length,
        generator=None if seed is None else torch.Generator().manual_seed(seed),
        output_path=args.output,
        fps=args.fps,
        state=state,
        return_state=bool(args.save_state),
        video=args.video,
        return_input_video=args.return_input_video,
    )
    # What the file holds, read back from it (num_frames may have been rounded to whole chunks).
    print(f"Wrote {out.written_videos[0]} in {time.perf_counter() - start:.1f} s")
    if args.save_state:
        out.state.save(args.save_state)
        print(f"Saved the state after chunk {out.state.next_chunk} to {args.save_state}: go on with --resume_state")


def load_pipeline(args: argparse.Namespace, parser: argparse.ArgumentParser, dtype: torch.dtype) -> LaCTVideoPipeline:
    """The pipeline of --model, with --lact (for --from_wan), --position_policy and --trained_chunks applied.

    Raises:
        ConfigError: a LaCT config value the model refuses (the message names it).
    """
    positions = {
        key: value
        for key, value in (("position_policy", args.position_policy), ("trained_chunks", args.trained_chunks))
        if value is not None
    }
    try:
        if args.from_wan:
            lact = {**parse_lact_options(args.lact, parser), **positions}
            return LaCTVideoPipeline.from_wan(args.model, torch_dtype=dtype, **lact)
        components = {}
        if positions:  # config overrides of a saved LaCT transformer
            components["transformer"] = LaCTWanTransformer3DModel.from_pretrained(
                args.model, subfolder="transformer", dtype=dtype, **positions
            )
        return LaCTVideoPipeline.from_pretrained(args.model, dtype=dtype, **components)
    except ValueError as error:  # the model's own checks of a config value, or of the folder
        flags = [flag for flag, given in (("--lact", args.lact), ("--position_policy", args.position_policy),
                                          ("--trained_chunks", args.trained_chunks)) if given]  # fmt: skip
        raise ConfigError(f"--model {args.model}{' with ' + ', '.join(flags) if flags else ''}: {error}") from error


def cli() -> None:
    """The `lact-video-generate` console script (every console script runs a `cli` that returns None: a
    console script's return value is its exit status)."""
    main()
