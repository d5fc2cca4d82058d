"""Precompute Wan VAE latents and UMT5 prompt embeddings for a video folder (`lact_video.data.precompute`).

    python finetune/precompute.py --pretrained_model_name_or_path WAN_DIR \\
        --train_data_dir DIR --output_dir CACHE [--height 480 --width 832 --num_frames 81 \\
        --fps 16 --max_sequence_length 512 --batch_size 1 --shard_size 256]
"""

from lact_video.data.precompute import cli

if __name__ == "__main__":
    cli()
