"""Validation loss per frame chunk for one or more checkpoints, side by side (`lact_video.training.validate`).

    python finetune/validate.py --data_dir DIR --checkpoints A [B ...] --output_dir OUT \\
        [--names a b] [--noise_levels 0.25 0.5 0.75] [--max_clips N] [--config RECIPE.yaml] [key=value ...]

    python finetune/validate.py --help    # what a checkpoint may be, and every option
"""

from lact_video.training.validate import cli

if __name__ == "__main__":
    cli()
