"""Generate a video of any length with LaCTVideoPipeline, streamed to an mp4 chunk by chunk (`pipelines.generate`).

    python scripts/generate.py --model DIR --prompt "a red car drives down a mountain road" \\
        --num_frames 241 --height 480 --width 832 --output video.mp4

    python scripts/generate.py --model DIR --prompt "a cat walks on the grass" \\
        --prompt_at 97 "the cat jumps onto a wall" --num_frames 189 --output cat.mp4    # switch prompts

    python scripts/generate.py --model DIR --prompt "the car turns into a tunnel" --video drive.mp4 \\
        --num_frames 96 --output longer.mp4                                              # continue a clip

    python scripts/generate.py --help    # every option
"""

from pipelines.generate import main

if __name__ == "__main__":
    main()
