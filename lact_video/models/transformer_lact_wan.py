"""Wan2.1 text-to-video DiT with LaCT attention: an autoregressive, chunk-by-chunk video model.

Paper: "Test-Time Training Done Right" (LaCT, arXiv 2505.23884), Sec. 5.3 (AR video diffusion);
semantics in docs/design.md. Every block's self-attention becomes `LaCTAttention`:
block-sparse window attention plus, in the blocks listed by `lact_blocks`, a fast-weight memory
updated on whole clean chunks.

Two explicit modes (`ForwardMode`):
- `TEACHER_FORCING`: the interleaved noisy/clean sequence of a whole clip; returns the velocity for
  every noisy copy.
- `DENOISE` / `COMMIT`: one chunk against an explicit `LaCTState`; `COMMIT` hands back a new state.

Shapes: `B` batch, `C` channels, `F` latent frames, `k` frames per chunk, `N` chunks, `R` noisy
copies, `S` segments, `T` tokens per chunk, `D` model dim.
"""

import inspect
import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
from accelerate import init_empty_weights
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention_dispatch import (
    AttentionBackendName,
    _check_attention_backend_requirements,
    _maybe_download_kernel_for_backend,
)
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import FP32LayerNorm
from diffusers.models.transformers.transformer_wan import (
    WanRotaryPosEmbed,
    WanTimeTextImageEmbedding,
    WanTransformer3DModel,
    WanTransformerBlock,
)
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import get_module_execution_device

from ..geometry import DEFAULT_CHUNK_FRAMES, check_chunking
from ..layers.fast_weight_memory import FastWeightMemory
from ..layers.lact_attention import LaCTAttention
from ..layers.rotary import RotaryTables, chunk_rotary_emb, segment_positions
from ..layers.text_attention import text_cross_attention, text_keys_values
from ..ops.fast_weight import UpdateRule
from ..sequence import TeacherForcingLayout
from ..state import ForwardMode, LaCTState, TextContext
from .formats import FORMAT_KEY, convert_weights, format_marker, saved_format
from .lact_config import (
    DEPRECATED_LACT_KEYS,
    LACT_CONFIG_KEYS,
    AttentionMode,
    LaCTConfig,
    MuonDtype,
    PositionPolicy,
    Variant,
    rename_deprecated,
)

# The model's variants for comparisons, as LaCT config overrides: LaCT itself, window attention only
# (sliding-window attention, SWA), and full block-causal attention (CausVid-style teacher forcing).
VARIANTS = {
    Variant.lact: {},
    Variant.swa: {"lact_blocks": []},
    Variant.full_causal: {"attention_mode": AttentionMode.full_causal, "lact_blocks": []},
}


@dataclass
class LaCTTransformerOutput(BaseOutput):
    """
    Args:
        sample: velocity. `TEACHER_FORCING`: (B, R, C, F, H, W) for every noisy copy; `DENOISE`:
            (B, C, k, H, W); `COMMIT`: None (the clean pass only updates the state).
        state: the state to pass to the next call (`DENOISE`: the input state; `COMMIT`: updated).
        text_context: the projected prompt this call used, to pass to the next calls of the same video
            instead of the embeddings (like `past_key_values`, it saves recomputing them).
    """

    sample: torch.Tensor | None
    state: LaCTState | None = None
    text_context: TextContext | None = None

    def to_tuple(self) -> tuple:
        """`(sample, state, text_context)`, `None`s included, as `return_dict=False` returns them: the same
        positions in every mode. (`BaseOutput.to_tuple` drops `None` fields, which would shift `state` to
        position 0 in `COMMIT`; integer indexing, `output[i]`, goes through this method too.)"""
        return (self.sample, self.state, self.text_context)


class LaCTWanTransformerBlock(WanTransformerBlock):
    """A Wan block whose `attn1` is `LaCTAttention`, over segment-shaped tokens (B, S, T, D).

    Modulation comes per segment (each segment has its own timestep) and broadcasts over its tokens.
    """

    def __init__(self, dim, ffn_dim, num_heads, qk_norm, cross_attn_norm, eps, attn1: LaCTAttention):
        super().__init__(dim, ffn_dim, num_heads, qk_norm, cross_attn_norm, eps)
        self.attn1 = attn1

    def forward(self, hidden_states, text_kv, temb, rotary_emb, mode, layout=None, state=None):
        """hidden_states (B, S, T, D); text_kv: this block's prompt key and value (`TextContext`);
        temb (B, S, 6, D)."""
        modulation = (self.scale_shift_table.unsqueeze(0) + temb.float()).chunk(6, dim=2)  # 6 x (B, S, 1, D)
        shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = modulation

        # 1. LaCT self-attention
        norm_hidden_states = (self.norm1(hidden_states.float()) * (1 + scale_msa) + shift_msa).type_as(hidden_states)
        attn_output, state = self.attn1(norm_hidden_states, rotary_emb, mode, layout, state)
        hidden_states = (hidden_states.float() + attn_output * gate_msa).type_as(hidden_states)

        # 2. Cross-attention: per token, so the segments can share one flat sequence.
        norm_hidden_states = self.norm2(hidden_states.float()).type_as(hidden_states)
        attn_output = text_cross_attention(self.attn2, norm_hidden_states.flatten(1, 2), *text_kv)
        hidden_states = hidden_states + attn_output.view_as(hidden_states)

        # 3. Feed-forward
        norm_hidden_states = (self.norm3(hidden_states.float()) * (1 + c_scale_msa) + c_shift_msa).type_as(
            hidden_states
        )
        ff_output = self.ffn(norm_hidden_states)
        hidden_states = (hidden_states.float() + ff_output.float() * c_gate_msa).type_as(hidden_states)
        return hidden_states, state


class LaCTWanTransformer3DModel(ModelMixin, ConfigMixin, PeftAdapterMixin):
    r"""Wan2.1 T2V transformer with LaCT layers. Build it from pretrained Wan with `from_wan`.

    Args (Wan's own): see `diffusers.WanTransformer3DModel`; the names and meanings are identical,
        so a Wan `config.json` plus the LaCT keys below is a valid config.
    Args (LaCT):
        chunk_frames (`int`): latent frames per autoregressive chunk (`k`); clips must have a multiple of it.
        The others are the fields of `lact_video.models.LaCTConfig` (its comments say what each does),
        with its defaults; enum values may be given as their strings. Configs and keywords with the
        deprecated names `base_lr` and `inter_multi` still load (`from_config`, `from_wan`), with a
        FutureWarning.
        Folders saved before the fast-weight rate took its current form (no `_lact_format_version` in
        config.json) convert on `from_pretrained` (`lact_video.models.formats`, docs/design.md Sec. 6.3).

    LoRA: diffusers' `PeftAdapterMixin` (`load_lora_adapter`, `set_adapters`, `fuse_lora`, `disable_lora`, ...).
    The Wan modules keep Wan's names, so a Wan2.1 T2V LoRA lands on the same linears (docs/design.md Sec. 1.2).
    """

    _supports_gradient_checkpointing = True
    _skip_layerwise_casting_patterns = ["patch_embedding", "condition_embedder", "norm"]
    _no_split_modules = ["LaCTWanTransformerBlock"]
    _keep_in_fp32_modules = ["rope", "time_embedder", "scale_shift_table", "norm1", "norm2", "norm3"]
    _repeated_blocks = ["LaCTWanTransformerBlock"]

    @register_to_config
    def __init__(
        self,
        patch_size: tuple[int, ...] = (1, 2, 2),
        num_attention_heads: int = 12,
        attention_head_dim: int = 128,
        in_channels: int = 16,
        out_channels: int = 16,
        text_dim: int = 4096,
        freq_dim: int = 256,
        ffn_dim: int = 8960,
        num_layers: int = 30,
        cross_attn_norm: bool = True,
        qk_norm: str | None = "rms_norm_across_heads",
        eps: float = 1e-6,
        image_dim: int | None = None,
        added_kv_proj_dim: int | None = None,
        rope_max_seq_len: int = 1024,
        pos_embed_seq_len: int | None = None,
        # LaCT: diffusers' `register_to_config` reads the keys from this signature; the defaults are LaCTConfig's.
        lact_blocks: list[int] | None = LaCTConfig.lact_blocks,
        chunk_frames: int = DEFAULT_CHUNK_FRAMES,
        window_size: int | None = LaCTConfig.window_size,
        fw_head_dim: int = LaCTConfig.fw_head_dim,
        fw_mlp_ratio: int = LaCTConfig.fw_mlp_ratio,
        use_muon: bool = LaCTConfig.use_muon,
        use_momentum: bool = LaCTConfig.use_momentum,
        weight_norm: bool = LaCTConfig.weight_norm,
        muon_dtype: MuonDtype | str = LaCTConfig.muon_dtype,
        fw_base_lr: float = LaCTConfig.fw_base_lr,
        fw_retention_decay: float = LaCTConfig.fw_retention_decay,
        num_repeat: int = LaCTConfig.num_repeat,
        attention_mode: AttentionMode | str = LaCTConfig.attention_mode,
        position_policy: PositionPolicy | str = LaCTConfig.position_policy,
        trained_chunks: int | None = LaCTConfig.trained_chunks,
    ):
        super().__init__()
        dim = num_attention_heads * attention_head_dim
        _check_config(dim, num_layers, patch_size, image_dim, added_kv_proj_dim, qk_norm, self.config)
        rule = UpdateRule(use_momentum, use_muon, weight_norm, getattr(torch, muon_dtype), fw_retention_decay)
        memory_blocks = set(range(num_layers) if lact_blocks is None else lact_blocks)

        # 1. Patch and position embedding (as in Wan)
        self.rope = WanRotaryPosEmbed(attention_head_dim, patch_size, rope_max_seq_len)
        self.patch_embedding = nn.Conv3d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

        # 2. Condition embeddings (as in Wan, text only)
        self.condition_embedder = WanTimeTextImageEmbedding(
            dim=dim, time_freq_dim=freq_dim, time_proj_dim=dim * 6, text_embed_dim=text_dim
        )

        # 3. Transformer blocks with LaCT attention
        self.blocks = nn.ModuleList(
            LaCTWanTransformerBlock(
                dim,
                ffn_dim,
                num_attention_heads,
                qk_norm,
                cross_attn_norm,
                eps,
                LaCTAttention(
                    dim,
                    num_attention_heads,
                    eps,
                    window_size,
                    FastWeightMemory(dim, attention_head_dim, fw_head_dim, fw_mlp_ratio, rule, fw_base_lr)
                    if i in memory_blocks
                    else None,
                    full_causal=attention_mode == AttentionMode.full_causal,
                ),
            )
            for i in range(num_layers)
        )

        # 4. Output norm and projection (as in Wan)
        self.norm_out = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.proj_out = nn.Linear(dim, (out_channels or in_channels) * math.prod(patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)
        self.gradient_checkpointing = False
        # The weights' format (docs/design.md Sec. 6.3): save_pretrained writes it into config.json.
        self.register_to_config(**format_marker())

    @classmethod
    def from_wan(
        cls,
        wan: "WanTransformer3DModel | str | os.PathLike",
        subfolder: str | None = None,
        torch_dtype: torch.dtype | None = None,
        **lact_config,
    ) -> "LaCTWanTransformer3DModel":
        """Patch a pretrained Wan transformer, keeping all its weights. Returns it in eval mode.

        Args:
            wan: a `WanTransformer3DModel`, or a path/hub id of one (`subfolder="transformer"` for a
                pipeline folder).
            lact_config: LaCT config keys (see the class docstring; the deprecated names warn).
        """
        lact_config = cls.lact_init_kwargs({}, lact_config)  # checks the keys before any weight loads
        if not isinstance(wan, WanTransformer3DModel):
            wan = WanTransformer3DModel.from_pretrained(wan, subfolder=subfolder, torch_dtype=torch_dtype)
        # Build without allocating the pretrained-size weights twice; the new memory is
        # materialised and initialised afterwards.
        with init_empty_weights():
            model = cls(**cls.lact_init_kwargs(wan.config, lact_config))
        missing, unexpected = model.load_state_dict(wan.state_dict(), strict=False, assign=True)
        memories = {name: m for name, m in model.named_modules() if isinstance(m, FastWeightMemory)}
        new = {f"{name}.{p}" for name, m in memories.items() for p, _ in m.named_parameters()}
        if unexpected or set(missing) != new:
            raise ValueError(
                f"The Wan checkpoint does not match the LaCT model: unexpected keys {sorted(unexpected)}, "
                f"missing pretrained keys {sorted(set(missing) - new)}."
            )
        reference = next(wan.blocks[0].attn1.parameters())
        for memory in memories.values():
            memory.to_empty(device=reference.device)
            memory.reset_parameters()
            memory.to(reference.dtype)
        return model.eval()  # as diffusers' `from_pretrained` hands models back; training calls `.train()`

    @classmethod
    def lact_init_kwargs(cls, wan_config: dict, lact_config: dict) -> dict:
        """The `__init__` keywords of the LaCT model patched onto a Wan transformer of `wan_config` (its
        config.json; diffusers' `_` keys dropped), with the LaCT keys `lact_config` (deprecated names warn).

        Raises:
            ValueError: a key of `lact_config` is not a LaCT config key.
        """
        lact_config = rename_deprecated(lact_config, DEPRECATED_LACT_KEYS, f"{cls.__name__}.from_wan")
        unknown = set(lact_config) - set(LACT_CONFIG_KEYS)
        if unknown:
            raise ValueError(f"Unknown LaCT config keys {sorted(unknown)}; valid keys are {list(LACT_CONFIG_KEYS)}.")
        return {**{k: v for k, v in wan_config.items() if not k.startswith("_")}, **lact_config}

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """diffusers' `ConfigMixin.from_config` (`from_pretrained` goes through it too), reading the
        deprecated LaCT key names of folders saved before the renames, with a FutureWarning.

        The renames happen before diffusers matches the config to the signature, so the new key holds the
        old value in `model.config` (not in `_use_default_values`), and saving writes the new names only.
        (diffusers' `_deprecated_kwargs` would also hand the old key to `register_to_config` as a "hidden"
        key for compatible classes, so a re-saved folder would keep it.)

        The model's config records the current format (`lact_video.models.formats`) whatever `config` says:
        its weights are new, in the current meaning. A config of a newer format is refused. A config without
        `position_policy` (saved before it existed) loads as "absolute", its behaviour then, whatever the default.
        """
        if isinstance(config, dict):  # else diffusers' deprecated config-as-a-path, which it loads itself
            saved_format(config, FORMAT_KEY, f"{cls.__name__} config.json")
            config = rename_deprecated(config, DEPRECATED_LACT_KEYS, f"{cls.__name__} config.json")
            # Saved before position policies existed: every chunk at its absolute position (docs/design.md Sec. 1.7).
            config.setdefault("position_policy", PositionPolicy.absolute.value)
        kwargs = rename_deprecated(kwargs, DEPRECATED_LACT_KEYS, f"{cls.__name__}.from_pretrained")
        loaded = super().from_config(config, return_unused_kwargs, **kwargs)
        (loaded[0] if return_unused_kwargs else loaded).register_to_config(**format_marker())
        return loaded

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """diffusers' `ModelMixin.from_pretrained`; weights saved in an older format (docs/design.md Sec. 6.3)
        are converted once loaded, before any use, with one log line that says what was converted.

        Raises:
            ValueError: the folder is of a newer format than this package; or it needs a conversion and
                `device_map` offloaded the converted weights (load without offloading and save it again).
        """
        config = cls.load_config(pretrained_model_name_or_path, return_unused_kwargs=True, **kwargs)[0]
        where = os.path.join(str(pretrained_model_name_or_path), *filter(None, [kwargs.get("subfolder")]))
        version = saved_format(config, FORMAT_KEY, os.path.join(where, cls.config_name))
        loaded = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        convert_weights(loaded[0] if kwargs.get("output_loading_info") else loaded, version, where)
        return loaded

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """diffusers' `ModelMixin.save_pretrained` (same arguments), refusing a model that holds LoRA layers.

        Raises:
            ValueError: LoRA adapters are loaded (not unloaded). Their layers would be saved under peft's names
                (`to_q.base_layer.weight`, `to_q.lora_A.default.weight`), which `from_pretrained` does not read: it
                would initialise those linears at random with a warning only.
        """
        from diffusers.utils import is_peft_available

        if is_peft_available():
            from peft.tuners.tuners_utils import BaseTunerLayer

            adapted = [name for name, module in self.named_modules() if isinstance(module, BaseTunerLayer)]
            if adapted:
                raise ValueError(
                    f"{type(self).__name__} holds LoRA layers ({', '.join(adapted[:3])}, ... {len(adapted)} in all), "
                    "which from_pretrained cannot read back. Save the adapters with `save_lora_adapter` (or the "
                    "pipeline's `save_lora_weights`), or merge them first: `fuse_lora()` then `unload_lora()` "
                    "(`unload_lora_weights()` on the pipeline)."
                )
        super().save_pretrained(save_directory, *args, **kwargs)

    # diffusers' pipeline `save_pretrained` passes `safe_serialization`, `variant`, ... only to save methods whose
    # signature names them.
    save_pretrained.__signature__ = inspect.signature(ModelMixin.save_pretrained)

    def set_attention_backend(self, backend: str) -> None:
        """Run every attention of this model (window or full-causal self-attention, and the text
        cross-attention) on `backend`, a diffusers `AttentionBackendName` value ("native", "flash", ...).

        Unlike diffusers' `ModelMixin.set_attention_backend`, this leaves diffusers' process-wide active
        backend alone: every model whose attentions have no backend of their own follows that one (a
        `WanPipeline` beside this model, say), so setting it would switch them too.

        Raises:
            ValueError: `backend` is not a diffusers attention backend.
            RuntimeError: the backend's package is missing (diffusers' own check).
        """
        names = [name.value for name in AttentionBackendName]
        if backend.lower() not in names:
            raise ValueError(f"backend={backend!r} is not a diffusers attention backend; choose one of {names}.")
        backend = AttentionBackendName(backend.lower())
        _check_attention_backend_requirements(backend)
        _maybe_download_kernel_for_backend(backend)
        for processor in self._attention_processors():
            processor._attention_backend = backend

    def reset_attention_backend(self) -> None:
        """Every attention of this model follows diffusers' active backend again (`DIFFUSERS_ATTN_BACKEND`,
        the `attention_backend` context manager, or native SDPA)."""
        for processor in self._attention_processors():
            processor._attention_backend = None

    def _attention_processors(self) -> list:
        """Where each attention keeps its backend: `attn1.processor` (LaCT) and `attn2.processor` (Wan's)."""
        return [attn.processor for block in self.blocks for attn in (block.attn1, block.attn2)]

    def rotary_latent_frames(self, num_latent_frames: int) -> int:
        """The rotary table length (`rope_max_seq_len`, latent frames) a video of `num_latent_frames` needs under
        this model's `position_policy`: the video's length if "absolute" or `trained_chunks` is unknown, at most
        `trained_chunks + 1` chunks if bounded (docs/design.md Sec. 1.7)."""
        config = self.config
        chunks = tuple(range(max(1, num_latent_frames // config.chunk_frames)))
        noisy = (True,) * len(chunks)  # a clean chunk sits one below the next noisy one
        attention, memory = segment_positions(config.position_policy, config.trained_chunks, chunks, noisy)
        return (max(*attention, *memory) + 1) * config.chunk_frames

    def init_state(self) -> LaCTState:
        """An empty inference state: nothing committed, chunk 0 comes next."""
        return LaCTState.empty(len(self.blocks))

    def encode_text(self, encoder_hidden_states: torch.Tensor) -> TextContext:
        """Project the prompt once: Wan's text embedding, then every block's cross-attention keys and
        values. Pass the result as `text_context` to every call of a chunk-by-chunk video.

        Args:
            encoder_hidden_states: (B, L, text_dim) prompt embeddings.
        """
        text = self.condition_embedder.text_embedder(encoder_hidden_states)  # (B, L, D)
        # Each block projects where it runs: an accelerate `device_map` may put blocks on different devices
        # (the execution device of an offloaded projection is its hook's, not its meta weights').
        keys_values = tuple(
            text_keys_values(block.attn2, text.to(get_module_execution_device(block.attn2.to_k)))
            for block in self.blocks
        )
        return TextContext(keys_values, encoder_hidden_states.dtype)

    def _embed_time(self, timestep: torch.Tensor, num_segments: int, dtype: torch.dtype):
        """The time half of Wan's `condition_embedder` (its text half is `encode_text`).

        timestep (B*S,) -> temb (B, S, D), timestep_proj (B, S, 6*D).
        """
        embedder = self.condition_embedder
        timestep = embedder.timesteps_proj(timestep).unflatten(0, (-1, num_segments))
        embedder_dtype = next(iter(embedder.time_embedder.parameters())).dtype
        if timestep.dtype != embedder_dtype and embedder_dtype != torch.int8:
            timestep = timestep.to(embedder_dtype)
        temb = embedder.time_embedder(timestep).to(dtype)
        return temb, embedder.time_proj(embedder.act_fn(temb))

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        mode: ForwardMode | str = ForwardMode.TEACHER_FORCING,
        state: LaCTState | None = None,
        return_dict: bool = True,
        text_context: TextContext | None = None,
        position_offset: int = 0,
    ) -> LaCTTransformerOutput | tuple:
        """
        Args:
            hidden_states: `TEACHER_FORCING`: (B, C, S*k, H, W), the interleaved sequence (see
                `lact_video.interleave_teacher_forcing`). `DENOISE`/`COMMIT`: (B, C, k, H, W), one chunk.
            timestep: `TEACHER_FORCING`: (B, S), one per segment, 0 for clean segments
                (`lact_video.interleave_timesteps`). Otherwise (B,).
            encoder_hidden_states: (B, L_text, text_dim) prompt embeddings; or instead
            text_context: the same prompts projected once, by `encode_text` or as handed back by an
                earlier call (chunk-by-chunk generation passes it to every call of a video).
            mode: a `ForwardMode` or its value.
            state: required for `DENOISE` and `COMMIT` (start from `init_state()`).
            position_offset: `TEACHER_FORCING` only: the clip's first chunk takes the rotary positions of chunk
                `position_offset` (training's random offsets, `train.position_offset_max`); inference takes them
                from `state.num_chunks`.
        """
        # 1. Check inputs and lay out the segments
        mode = ForwardMode(mode)
        b, _, num_frames, height, width = hidden_states.shape
        k = self.config.chunk_frames
        p_t, p_h, p_w = self.config.patch_size
        if height % p_h or width % p_w:
            raise ValueError(f"Latent height/width {height}x{width} must be multiples of the patch size {p_h}x{p_w}.")
        if (encoder_hidden_states is None) == (text_context is None):
            raise ValueError(
                "Pass the prompt either as `encoder_hidden_states` (embeddings) or as `text_context` (from "
                "`model.encode_text(encoder_hidden_states)`), not both or neither."
            )
        if text_context is None:
            text_context = self.encode_text(encoder_hidden_states)
        if text_context.batch_size != b:
            raise ValueError(
                f"The prompt has {text_context.batch_size} rows but the latents have {b}; they must match."
            )
        layout = None
        if mode is ForwardMode.TEACHER_FORCING:
            if state is not None:
                raise ValueError("Teacher forcing sees the whole clip; it takes no inference state.")
            layout = TeacherForcingLayout.from_num_segments(check_chunking(num_frames, k), self.config.num_repeat)
            num_segments = layout.num_segments
            if timestep.shape != (b, num_segments):
                raise ValueError(
                    f"Teacher forcing needs one timestep per segment, shape ({b}, {num_segments}); got "
                    f"{tuple(timestep.shape)}. Build it with `lact_video.interleave_timesteps`."
                )
            order = torch.tensor(layout.grouped_order, device=hidden_states.device)
            hidden_states = hidden_states.unflatten(2, (num_segments, k)).index_select(2, order).flatten(2, 3)
            timestep = timestep.index_select(1, order)
            chunk_indices = tuple(i + position_offset for i in layout.grouped_chunks)
            noisy = tuple(j < layout.num_noisy for j in range(num_segments))  # grouped: noisy segments first
        else:
            if state is None:
                raise ValueError(f"{mode.value} needs an inference state; start from `model.init_state()`.")
            if num_frames != k:
                raise ValueError(f"{mode.value} takes one chunk of chunk_frames={k} latent frames; got {num_frames}.")
            num_segments = 1
            if position_offset:
                raise ValueError(
                    "position_offset is for teacher forcing; inference positions follow state.num_chunks."
                )
            timestep = timestep.expand(b).reshape(b, 1)
            chunk_indices, noisy = (state.num_chunks,), (mode is ForwardMode.DENOISE,)
        # float64 runs (equivalence checks) get float64 tables; everything else rotates in float32.
        table_dtype = torch.float64 if hidden_states.dtype == torch.float64 else torch.float32
        config = self.config
        attention_positions, memory_positions = segment_positions(
            config.position_policy, config.trained_chunks, chunk_indices, noisy
        )
        grid = (k, height // p_h, width // p_w, table_dtype)
        attention = chunk_rotary_emb(self.rope, attention_positions, *grid)
        memory = (
            attention
            if memory_positions == attention_positions
            else chunk_rotary_emb(self.rope, memory_positions, *grid)
        )
        rotary_emb = RotaryTables(attention, memory)

        # 2. Patch embedding and per-segment conditioning
        hidden_states = self.patch_embedding(hidden_states).flatten(2).transpose(1, 2)  # (B, S*T, D)
        hidden_states = hidden_states.unflatten(1, (num_segments, -1)).contiguous()  # (B, S, T, D)
        # temb (B, S, D): one time embedding per segment, broadcast over its tokens later
        temb, timestep_proj = self._embed_time(timestep.flatten(), num_segments, text_context.dtype)
        timestep_proj = timestep_proj.unflatten(2, (6, -1))  # (B, S, 6, D)

        # 3. Transformer blocks
        layer_states = state.layers if state is not None else (None,) * len(self.blocks)
        new_layer_states = []
        for block, text_kv, layer_state in zip(self.blocks, text_context.keys_values, layer_states):
            args = (hidden_states, text_kv, timestep_proj, rotary_emb, mode, layout, layer_state)
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden_states, layer_state = self._gradient_checkpointing_func(block, *args)
            else:
                hidden_states, layer_state = block(*args)
            new_layer_states.append(layer_state)
        if mode is ForwardMode.COMMIT:
            new_state = LaCTState(tuple(new_layer_states), state.num_chunks + 1)
            output = LaCTTransformerOutput(None, new_state, text_context)
            return output if return_dict else output.to_tuple()

        # 4. Output norm and projection, for the noisy segments only
        if layout is not None:
            hidden_states, temb = hidden_states[:, : layout.num_noisy], temb[:, : layout.num_noisy]
        shift, scale = (self.scale_shift_table.unsqueeze(0) + temb.unsqueeze(2)).chunk(2, dim=2)  # (B, S', 1, D)
        hidden_states = (self.norm_out(hidden_states.float()) * (1 + scale) + shift).type_as(hidden_states)
        hidden_states = self.proj_out(hidden_states)  # (B, S', T, C*p_t*p_h*p_w)

        # 5. Unpatchify
        s = hidden_states.shape[1]
        hidden_states = hidden_states.reshape(b * s, k // p_t, height // p_h, width // p_w, p_t, p_h, p_w, -1)
        output = hidden_states.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)
        output = output.unflatten(0, (b, s))  # (B, S', C, k, H, W)
        if layout is not None:
            output = output.unflatten(1, (layout.num_chunks, layout.num_repeat))  # (B, N, R, C, k, H, W)
            output = output.permute(0, 2, 3, 1, 4, 5, 6).flatten(3, 4)  # (B, R, C, F, H, W)
        else:
            output = output[:, 0]  # (B, C, k, H, W)
        output = LaCTTransformerOutput(output, state, text_context)
        return output if return_dict else output.to_tuple()


def _check_config(dim, num_layers, patch_size, image_dim, added_kv_proj_dim, qk_norm, config) -> None:
    """Clear errors for LaCT configs that do not add up."""
    if image_dim is not None or added_kv_proj_dim is not None:
        raise ValueError("LaCT patches Wan text-to-video models; image conditioning (I2V) is not supported.")
    if qk_norm != "rms_norm_across_heads":
        raise ValueError(f"qk_norm={qk_norm!r} is not supported; Wan2.1 uses 'rms_norm_across_heads'.")
    if patch_size[0] != 1:
        raise ValueError(f"LaCT chunks latent frames, so the temporal patch size must be 1; got {patch_size}.")
    if config.fw_head_dim <= 0 or dim % config.fw_head_dim:
        choices = [d for d in range(64, dim + 1, 64) if dim % d == 0] or [dim]
        raise ValueError(f"fw_head_dim={config.fw_head_dim} must divide the model dim {dim}; e.g. one of {choices}.")
    if not 0 <= config.fw_retention_decay <= 1:
        raise ValueError(
            f"fw_retention_decay must be in [0, 1] (0: off, 1: back to the initial state after every update); "
            f"got {config.fw_retention_decay}."
        )
    if config.fw_mlp_ratio < 1:
        raise ValueError(f"fw_mlp_ratio must be >= 1; got {config.fw_mlp_ratio}.")
    if config.chunk_frames < 1 or config.num_repeat < 1:
        raise ValueError(f"chunk_frames and num_repeat must be >= 1; got {config.chunk_frames}, {config.num_repeat}.")
    if config.window_size is not None and config.window_size < 1:
        raise ValueError(
            f"window_size must be >= 1 token, or None for the whole previous chunk; got {config.window_size}."
        )
    if config.lact_blocks is not None and not all(0 <= i < num_layers for i in config.lact_blocks):
        raise ValueError(f"lact_blocks={config.lact_blocks} must be block indices in [0, {num_layers}).")
    policies = tuple(p.value for p in PositionPolicy)
    if config.position_policy not in policies:
        raise ValueError(f"position_policy must be one of {policies}; got {config.position_policy!r}.")
    if config.trained_chunks is not None and config.trained_chunks < 1:
        raise ValueError(f"trained_chunks must be >= 1 chunk, or None; got {config.trained_chunks}.")
    modes, dtypes = tuple(m.value for m in AttentionMode), tuple(d.value for d in MuonDtype)
    if config.attention_mode not in modes:
        raise ValueError(f"attention_mode must be one of {modes}; got {config.attention_mode!r}.")
    if config.muon_dtype not in dtypes:
        raise ValueError(f"muon_dtype must be one of {dtypes}; got {config.muon_dtype!r}.")
