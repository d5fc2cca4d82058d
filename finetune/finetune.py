"""Finetune Wan2.1 text-to-video into an autoregressive LaCT video model (`lact_video.training.trainer`).

    accelerate launch --config_file configs/accelerate/zero3_8gpu.yaml finetune/finetune.py \\
        --config configs/wan2.1-t2v-1.3b-lact.yaml \\
        model.pretrained_model_name_or_path=Wan-AI/Wan2.1-T2V-1.3B-Diffusers data.cache_dir=CACHE

    python finetune/finetune.py --config configs/tiny.yaml ...   # one process, no launcher
    python finetune/finetune.py --help                            # every config field
"""

from lact_video.training.trainer import cli

if __name__ == "__main__":
    cli()
