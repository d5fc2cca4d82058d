"""Precompute Wan VAE latents and UMT5 prompt embeddings for a video folder (a latent cache).

The logic behind `finetune/precompute.py` and `lact-video-precompute`:

    python finetune/precompute.py --pretrained_model_name_or_path WAN_DIR \\
        --train_data_dir DIR --output_dir CACHE [--height 480 --width 832 --num_frames 81 \\
        --fps 16 --max_sequence_length 512 --batch_size 1 --shard_size 256]

Training on the cache (`DataConfig.cache_dir`) skips decoding and both encoders. The encoding
is `lact_video.data.encode`, the same functions on-the-fly training calls, so both give the
same tensors. Bad videos are skipped with a warning each, as in training.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import pathlib

import torch
from tqdm.auto import tqdm

from .. import __version__
from ..errors import ConfigError, exit_on_config_error
from .config import DataConfig
from .encode import encode_prompts, encode_videos, load_frozen_encoders
from .latent_cache import INDEX_FILE, LatentCacheWriter, cache_geometry, cache_sampling
from .video_dataset import VideoFolderDataset
from .video_reader import VideoDecodeError

logger = logging.getLogger("precompute")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def make_parser() -> argparse.ArgumentParser:
    defaults = DataConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pretrained_model_name_or_path", required=True, help="Wan2.1 diffusers folder or hub id")
    parser.add_argument("--train_data_dir", required=True, help="videos plus metadata.jsonl or metadata.csv")
    parser.add_argument("--output_dir", required=True, help="the cache folder to write")
    parser.add_argument("--height", type=int, default=defaults.height)
    parser.add_argument("--width", type=int, default=defaults.width)
    parser.add_argument("--num_frames", type=int, default=defaults.num_frames)
    parser.add_argument("--fps", type=float, default=defaults.fps, help="target frame rate of the clips")
    parser.add_argument(
        "--chunk_frames", type=int, default=defaults.chunk_frames, help="only checked against num_frames"
    )
    parser.add_argument("--max_sequence_length", type=int, default=defaults.max_sequence_length)
    parser.add_argument(
        "--random_start",
        action="store_true",
        help="seeded random start frames (default: frame 0); training checks it against data.random_start",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--batch_size", type=int, default=1, help="videos per encoder call")
    parser.add_argument("--shard_size", type=int, default=256, help="samples per safetensors shard")
    parser.add_argument("--dataloader_num_workers", type=int, default=0)
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default="float32", help="encoder weights; latents are saved as float32"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing cache in output_dir")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


class _Decoded(torch.utils.data.Dataset):
    """The folder's clips, with a corrupt one coming back as None: a cache skips it, never substitutes."""

    def __init__(self, videos: VideoFolderDataset):
        self.videos = videos

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> dict | None:
        try:
            return self.videos.load(index)
        except VideoDecodeError as error:
            logger.warning("Skipping video %s: frames do not decode (%s)", self.videos.entries[index].file_name, error)
            return None


def main(argv=None) -> pathlib.Path:
    """Write the latent cache that `argv` describes (see the module docstring); returns its folder."""
    args = make_parser().parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)

    # 1. Check the settings and the output folder before loading anything
    fields = {field.name for field in dataclasses.fields(DataConfig)}
    config = DataConfig(**{key: value for key, value in vars(args).items() if key in fields})
    try:
        config.validate()
    except ValueError as error:  # cli() prints it as one line, exit status 2, as argparse does
        raise ConfigError(str(error)) from None
    output_dir = pathlib.Path(args.output_dir)
    if (output_dir / INDEX_FILE).exists():
        if not args.overwrite:
            raise SystemExit(f"{output_dir} already holds a latent cache; pass --overwrite to replace it")
        # Drop the old shards too: fewer new ones would leave stale files behind.
        (output_dir / INDEX_FILE).unlink()
        for shard in output_dir.glob("shard-*.safetensors"):
            shard.unlink()

    # 2. Scan the videos
    videos = VideoFolderDataset(args.train_data_dir, config, key=lambda name: f"--{name}")  # our flags
    loader = torch.utils.data.DataLoader(
        _Decoded(videos), batch_size=args.batch_size, num_workers=args.dataloader_num_workers, collate_fn=list
    )

    # 3. Load the frozen encoders
    dtype = DTYPES[args.dtype]
    path = args.pretrained_model_name_or_path
    encoders = load_frozen_encoders(path, text_dtype=dtype, vae_dtype=dtype, device=args.device)

    # 4. Encode and write the shards
    info = {
        "pretrained_model_name_or_path": str(path),
        "dtype": args.dtype,
        "lact_video_version": __version__,
    }
    geometry, sampling = cache_geometry(config), cache_sampling(config)
    with LatentCacheWriter(output_dir, geometry, args.shard_size, sampling, **info) as writer:
        written = 0
        with tqdm(total=len(videos), unit="video", desc="Encoding") as progress:
            for batch in loader:
                progress.update(len(batch))
                batch = [item for item in batch if item is not None]
                if not batch:
                    continue
                written += len(batch)
                pixel_values = torch.stack([item["pixel_values"] for item in batch])  # (B, 3, num_frames, H, W)
                texts = [item["text"] for item in batch]
                latents = encode_videos(encoders.vae, pixel_values)  # (B, C, F, h, w)
                prompt_embeds = encode_prompts(
                    encoders.tokenizer, encoders.text_encoder, texts, config.max_sequence_length
                )  # (B, L, D)
                writer.add(latents, prompt_embeds, [item["file_name"] for item in batch], texts)
        if not written:
            # Raised inside the writer's block, so no index is written: the folder is no cache.
            raise ValueError(f"no video in {args.train_data_dir} could be decoded; see the warnings above")
    logger.info("Wrote %d samples to %s", written, output_dir)
    return output_dir


def cli() -> None:
    """The `lact-video-precompute` console script: `main` with its return value dropped (a console script's return
    value is its exit status, so a returned folder would read as a failure). A setting that cannot work exits
    with status 2 and one line."""
    with exit_on_config_error():
        main()


if __name__ == "__main__":
    main()
