"""Tiny, randomly initialised Wan2.1 text-to-video base models, built offline.

`build_tiny_wan` writes a complete `diffusers.WanPipeline` folder (transformer, VAE, UMT5
text encoder, tokenizer, scheduler and `model_index.json`) with seeded random weights, in
about a second on a CPU. It loads with `WanPipeline.from_pretrained`, also under
`HF_HUB_OFFLINE=1`, exactly like the real 1.3B checkpoint.

It is for tests, benchmarks, the demo and smoke-testing a set-up (training, generation,
multi-process launches) without downloading 1.3B weights. Its videos are noise: the
weights are random. The same seed gives byte-identical weight files.

    python -m lact_video.tiny --output_dir outputs/tiny [--seed 0] [--size tiny|small]
"""

from __future__ import annotations

import argparse
import pathlib

import torch

# The VAE: spatial compression 2**(len(dim_mult)-1) = 8 and temporal 4, as in the real Wan VAE.
VAE_CONFIG = dict(
    base_dim=4,
    z_dim=16,
    dim_mult=[1, 1, 1, 1],
    num_res_blocks=1,
    attn_scales=[],
    temperal_downsample=[False, True, True],
    latents_mean=[0.0] * 16,
    latents_std=[1.0] * 16,
    scale_factor_spatial=8,
    scale_factor_temporal=4,
)

# The UMT5 text encoder; its d_model is the transformer's text_dim. vocab_size is set from
# the tokenizer.
TEXT_ENCODER_CONFIG = dict(
    d_model=32,
    d_kv=8,
    d_ff=64,
    num_layers=2,
    num_heads=4,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=32,
    dropout_rate=0.0,
    feed_forward_proj="gated-gelu",
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)

# rope_max_seq_len bounds the post-patch frames, height and width: LaCT generates videos far
# longer than its training clips, up to this many latent frames.
_TRANSFORMER_COMMON = dict(
    patch_size=(1, 2, 2),
    in_channels=VAE_CONFIG["z_dim"],
    out_channels=VAE_CONFIG["z_dim"],
    text_dim=TEXT_ENCODER_CONFIG["d_model"],
    freq_dim=32,
    rope_max_seq_len=256,
)
TRANSFORMER_CONFIGS = {
    # Wan rope splits the head dim into t/h/w parts, h = w = 2*(head_dim//6): 12 works.
    "tiny": dict(_TRANSFORMER_COMMON, num_layers=2, num_attention_heads=2, attention_head_dim=12, ffn_dim=32),
    "small": dict(_TRANSFORMER_COMMON, num_layers=4, num_attention_heads=2, attention_head_dim=128, ffn_dim=512),
}

# The tokenizer's training text: a Unigram model learns its pieces from these.
SENTENCES = [
    "a cat walks across a sunny kitchen floor",
    "a dog runs along the beach at sunset",
    "waves crash on the rocks under a cloudy sky",
    "a red car drives down a winding mountain road",
    "a person rides a bicycle through a busy city street",
    "time lapse of clouds moving over green hills",
    "a bird flies over a calm blue lake",
    "children play football in a park in the afternoon",
    "a chef chops vegetables on a wooden board",
    "rain falls on a window at night",
    "a train passes through a snowy forest",
    "a close up of a flower opening in the morning light",
    "fireworks explode over the river in the dark sky",
    "a man plays the guitar on a small stage",
    "a woman dances in a bright studio",
    "the camera pans slowly across an old stone bridge",
    "drone footage of a city skyline at dusk",
    "a boat sails on the open sea with white sails",
    "leaves fall from a tree in autumn wind",
    "a horse gallops across a wide field",
    "smoke rises from a campfire in the woods",
    "a robot walks through a futuristic laboratory",
    "cars drive on a highway seen from above",
    "a kitten plays with a ball of yarn",
    "snow covers the roofs of a quiet village",
    "a waterfall pours into a deep green pool",
    "people walk through a crowded market",
    "the sun rises over the desert dunes",
    "a plane takes off from the runway",
    "fish swim around a colorful coral reef",
    "a candle flame flickers in a dark room",
    "an astronaut floats inside a space station",
    "low quality, blurry, static, worst quality, distorted",
    "the video shows a slow zoom into a painting",
]


def build_tokenizer(vocab_size: int = 200):
    """A T5 tokenizer with a Unigram model trained on `SENTENCES`: <pad>=0, </s>=1, <unk>=2."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import T5Tokenizer

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator(SENTENCES, trainer=trainer)
    # Training runs in parallel: scores vary in their last bits and ties come in any order.
    # Round and sort them so that every build writes a byte-identical tokenizer.json.
    trained = json.loads(tok.to_str())["model"]["vocab"]
    specials, pieces = trained[:3], sorted((p, round(s, 6)) for p, s in trained[3:])
    pieces.sort(key=lambda ps: -ps[1])
    tok.model = models.Unigram([tuple(ps) for ps in specials] + pieces, unk_id=2, byte_fallback=False)
    tokenizer = T5Tokenizer(tokenizer_object=tok, extra_ids=0)
    ids = tokenizer.convert_tokens_to_ids(["<pad>", "</s>", "<unk>"])
    assert ids == [0, 1, 2], ids
    return tokenizer


def build_tiny_pipeline(*, seed: int = 0, size: str = "tiny"):
    """The tiny `WanPipeline` in memory, with weights drawn from `seed`."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    if size not in TRANSFORMER_CONFIGS:
        raise ValueError(f"size must be one of {sorted(TRANSFORMER_CONFIGS)}, got {size!r}")
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(**TRANSFORMER_CONFIGS[size])
    vae = AutoencoderKLWan(**VAE_CONFIG)
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), **TEXT_ENCODER_CONFIG))
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer
    )
    assert pipe.vae_scale_factor_spatial == 2 ** (len(VAE_CONFIG["dim_mult"]) - 1)
    return pipe


def build_tiny_wan(output_dir, *, seed: int = 0, size: str = "tiny") -> pathlib.Path:
    """Build the tiny Wan2.1 T2V base model and save it in the diffusers layout under `output_dir`."""
    output_dir = pathlib.Path(output_dir)
    build_tiny_pipeline(seed=seed, size=size).save_pretrained(output_dir)
    return output_dir


def main(argv=None) -> None:
    import lact_video

    parser = argparse.ArgumentParser(prog="python -m lact_video.tiny", description=__doc__.split("\n")[0])
    parser.add_argument("--output_dir", required=True, help="folder to write the diffusers pipeline into")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    parser.add_argument("--size", choices=sorted(TRANSFORMER_CONFIGS), default="tiny", help="transformer size")
    parser.add_argument("--version", action="version", version=f"%(prog)s {lact_video.__version__}")
    args = parser.parse_args(argv)
    path = build_tiny_wan(args.output_dir, seed=args.seed, size=args.size)
    print(f"Wrote a {args.size} Wan2.1 T2V model (seed {args.seed}) to {path}")


if __name__ == "__main__":
    main()
