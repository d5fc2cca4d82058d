"""Encode clips and captions for Wan: VAE latents and UMT5 prompt embeddings.

`load_frozen_encoders` loads the tokenizer, text encoder and VAE for the trainer, validation and
the latent cache alike. Both the latent cache (`lact_video.data.precompute`) and on-the-fly
training call these functions, so a cached run and an on-the-fly run see the same tensors. They mirror diffusers'
`WanPipeline` (diffusers/pipelines/wan/pipeline_wan.py): `_get_t5_prompt_embeds` for the text,
and for the latents the normalisation of `lact_video.geometry.normalize_latents`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKLWan
from diffusers.pipelines.wan.pipeline_wan import prompt_clean
from transformers import AutoTokenizer, UMT5EncoderModel

from lact_video.geometry import normalize_latents


@dataclass
class FrozenEncoders:
    tokenizer: object
    text_encoder: UMT5EncoderModel
    vae: AutoencoderKLWan | None  # None when not asked for


def load_frozen_encoders(
    pretrained_model_name_or_path: str,
    *,
    revision: str | None = None,
    text_dtype: torch.dtype | None = None,
    vae_dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    with_vae: bool = True,
) -> FrozenEncoders:
    """The tokenizer, UMT5 text encoder and Wan VAE of a Wan2.1 diffusers folder or hub id, frozen.

    Both models are in eval mode, without gradients, on `device`. `text_dtype=None` keeps the dtype
    that transformers picks by default (the checkpoint's own).
    """
    path = pretrained_model_name_or_path
    tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer", revision=revision)
    text_encoder = UMT5EncoderModel.from_pretrained(
        path, subfolder="text_encoder", revision=revision, dtype=text_dtype
    )
    text_encoder.requires_grad_(False).eval().to(device)
    vae = None
    if with_vae:
        vae = AutoencoderKLWan.from_pretrained(path, subfolder="vae", revision=revision, torch_dtype=vae_dtype)
        vae.requires_grad_(False).eval().to(device)
    return FrozenEncoders(tokenizer, text_encoder, vae)


@torch.no_grad()
def encode_videos(vae, pixel_values: torch.Tensor) -> torch.Tensor:
    """Normalised float32 latents (B, C, F, h, w) of clips (B, 3, 4F-3, 8h, 8w) in [-1, 1].

    Takes the mean of the VAE posterior (`latent_dist.mode()`), so the same clip always gives
    the same latents: a cache holds exactly what on-the-fly encoding would produce.
    """
    pixel_values = pixel_values.to(device=vae.device, dtype=vae.dtype)
    latents = vae.encode(pixel_values).latent_dist.mode()
    return normalize_latents(latents.float(), vae.config)


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, texts: list[str], max_sequence_length: int = 512) -> torch.Tensor:
    """UMT5 prompt embeddings (B, L = max_sequence_length, D), zero past each prompt's real length.

    Copied from diffusers.pipelines.wan.pipeline_wan.WanPipeline._get_t5_prompt_embeds, without
    the per-prompt repeat, returned in the text encoder's dtype.
    """
    texts = [prompt_clean(text) for text in texts]
    text_inputs = tokenizer(
        texts,
        padding="max_length",
        max_length=max_sequence_length,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    input_ids, mask = text_inputs.input_ids, text_inputs.attention_mask
    seq_lens = mask.gt(0).sum(dim=1).long()
    prompt_embeds = text_encoder(input_ids.to(text_encoder.device), mask.to(text_encoder.device)).last_hidden_state
    prompt_embeds = [embeds[:length] for embeds, length in zip(prompt_embeds, seq_lens)]
    return torch.stack(
        [torch.cat([u, u.new_zeros(max_sequence_length - u.size(0), u.size(1))]) for u in prompt_embeds], dim=0
    )
