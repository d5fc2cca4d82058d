"""Ulysses sequence parallelism for teacher-forcing training, exact for the fast-weight memory.

docs/design.md, Sec. 2.5. The tokens of every segment are split across the `P` ranks of a process group, and
the single-device model is made to compute the same thing from outside, with diffusers' own mechanisms:

- a `ModelHook` on every block gives each block its rank's tokens (rank `r` holds tokens `r*T/P .. (r+1)*T/P - 1`
  of every segment) and the matching rows of the rotary table; one on `proj_out` gathers the output tokens;
- each `attn1.processor` is wrapped in `UlyssesAttnProcessor`: DeepSpeed's all-to-all (`_SeqAllToAll`) regroups
  queries, keys and values by head, the layer's own window attention runs on the rank's heads over whole
  segments, and a second all-to-all gives every rank its tokens back;
- each memory's `token_reduction` becomes `GroupTokenReduction`: an autograd-aware all-reduce completes every
  chunk's gradient sums (before momentum, Muon and weight norm) and the momentum gate's chunk mean, so every rank
  holds the same fast weights and applies them to its own tokens.

Shapes: `B` batch, `S` segments, `T` tokens per chunk, `H`/`D` attention heads/head dim, `P` ranks of the group.
"""

import inspect

import torch
import torch.distributed as dist
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.context_parallel import AllGatherFunction

from ..models.transformer_lact_wan import LaCTWanTransformer3DModel
from ..ops.fast_weight import LOCAL_TOKENS, TokenReduction
from ..state import ForwardMode

_SPLIT_HOOK = "lact_sequence_parallel_split"
_GATHER_HOOK = "lact_sequence_parallel_gather"


def _refuse_mode(mode: ForwardMode) -> ValueError:
    return ValueError(
        f"Sequence parallelism runs teacher-forcing training only; got mode={mode.value!r}. Inference "
        "(denoise/commit) holds one chunk per call: run it on a model without sequence parallelism "
        "(`lact_video.parallel.disable_sequence_parallel(model)`)."
    )


class UlyssesAttnProcessor:
    """A LaCT attention processor (`WindowAttnProcessor` or `FullCausalAttnProcessor`) run head-parallel.

    Each rank enters with its `T/P` tokens of every segment and all `H` heads; DeepSpeed's all-to-all hands it
    every token of its share of the heads (DeepSpeed's split: `H // P`, one more on the first `H % P` ranks),
    the wrapped processor attends over whole segments exactly as on one device, and the inverse all-to-all
    returns each rank's tokens with all heads. The backward of each all-to-all is the inverse all-to-all.
    """

    def __init__(self, processor, group: dist.ProcessGroup, num_heads: int):
        self.processor = processor
        self.group = group
        self.num_heads = num_heads

    @property
    def _attention_backend(self):
        """The wrapped processor's diffusers attention backend (`LaCTWanTransformer3DModel.set_attention_backend`)."""
        return self.processor._attention_backend

    @_attention_backend.setter
    def _attention_backend(self, backend) -> None:
        self.processor._attention_backend = backend

    def _all_to_all(self, x: torch.Tensor, scatter_dim: int, gather_dim: int) -> torch.Tensor:
        """DeepSpeed's Ulysses all-to-all on (pieces, tokens, heads, D), batch dim 0."""
        from deepspeed.sequence.layer import _SeqAllToAll

        return _SeqAllToAll.apply(self.group, x, scatter_dim, gather_dim, 0, None, None, None, True, self.num_heads)

    def _exchange(self, tensors, scatter_dim: int, gather_dim: int) -> list[torch.Tensor]:
        """One all-to-all for several (..., tokens, heads, D) tensors: their leading dims become one batch dim."""
        pieces = [x.flatten(0, -4) for x in tensors]  # each (pieces, tokens, heads, D)
        exchanged = self._all_to_all(torch.cat(pieces), scatter_dim, gather_dim)
        parts = exchanged.split([p.shape[0] for p in pieces])
        return [part.view(*x.shape[:-3], *part.shape[1:]) for part, x in zip(parts, tensors)]

    def teacher_forcing(self, noisy, clean) -> tuple[torch.Tensor, torch.Tensor]:
        """As `WindowAttnProcessor.teacher_forcing`, on this rank's tokens: noisy (q, k, v) each (B, N, R, T/P, H, D),
        clean (q, k, v) each (B, N-1, T/P, H, D); the outputs are shaped like the queries."""
        by_head = self._exchange((*noisy, *clean), scatter_dim=2, gather_dim=1)  # (..., T, H_rank, D)
        noisy_out, clean_out = self.processor.teacher_forcing(tuple(by_head[:3]), tuple(by_head[3:]))
        noisy_out, clean_out = self._exchange((noisy_out, clean_out), scatter_dim=1, gather_dim=2)
        return noisy_out, clean_out

    def denoise(self, query, key, value, state):
        raise _refuse_mode(ForwardMode.DENOISE)

    def commit(self, query, key, value, state):
        raise _refuse_mode(ForwardMode.COMMIT)


class GroupTokenReduction(TokenReduction):
    """Completes per-chunk sums and means over the ranks of `group`, each holding `T/P` of the chunk's tokens.

    One autograd-aware all-reduce per call: torch's functional collective (`_functional_collectives.all_reduce`,
    the replacement torch names for the deprecated `torch.distributed.nn.functional.all_reduce`), whose backward
    all-reduces the gradient, so every rank's partial sum receives the whole group's gradient of the result.
    """

    def __init__(self, group: dist.ProcessGroup):
        self.group = group
        self.size = dist.get_world_size(group)

    def sum(self, partial: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        from torch.distributed import _functional_collectives as funcol

        total = funcol.all_reduce(torch.cat([x.flatten() for x in partial]), "sum", self.group)
        return tuple(t.view_as(x) for t, x in zip(total.split([x.numel() for x in partial]), partial))

    def mean(self, partial: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        # Every rank holds the same number of tokens, so the mean is the mean of the ranks' means.
        return tuple(x / self.size for x in self.sum(partial))


class _SplitTokensHook(ModelHook):
    """Before a block: this rank's rows of the rotary table, and on the first block its tokens of every segment."""

    def __init__(self, group: dist.ProcessGroup, split_hidden_states: bool):
        super().__init__()
        self.size, self.rank = dist.get_world_size(group), dist.get_rank(group)
        self.split_hidden_states = split_hidden_states

    def initialize_hook(self, module):
        self.signature = inspect.signature(module.forward)
        return module

    def pre_forward(self, module, *args, **kwargs):
        bound = self.signature.bind(*args, **kwargs)
        arguments = bound.arguments
        mode = ForwardMode(arguments["mode"])
        if mode is not ForwardMode.TEACHER_FORCING:
            raise _refuse_mode(mode)
        rotary = arguments["rotary_emb"]  # RotaryTables of (S, T, 1, D/2, 2) tables
        tokens = rotary.attention.shape[1]
        if tokens % self.size:
            divisors = [p for p in range(2, tokens + 1) if tokens % p == 0][:6]
            raise ValueError(
                f"Sequence parallelism splits the T={tokens} tokens of every chunk (chunk_frames x latent height/2 x "
                f"latent width/2) across the {self.size} ranks of its group, but {self.size} does not divide {tokens}. "
                f"Use a sequence_parallel_size that divides T (e.g. {divisors}), or a resolution or chunk_frames "
                f"whose T the size divides."
            )
        arguments["rotary_emb"] = type(rotary)(*(table.chunk(self.size, dim=1)[self.rank] for table in rotary))
        if self.split_hidden_states:
            arguments["hidden_states"] = arguments["hidden_states"].chunk(self.size, dim=2)[
                self.rank
            ]  # (B, S, T/P, C)
        return bound.args, bound.kwargs


class _GatherTokensHook(ModelHook):
    """After `proj_out`: every rank's tokens, (B, S', T/P, C') -> (B, S', T, C'), the same on every rank.

    diffusers' `AllGatherFunction`: its backward keeps this rank's slice of the gradient, which is right because
    every rank computes the same loss from the same full output.
    """

    def __init__(self, group: dist.ProcessGroup):
        super().__init__()
        self.group = group

    def post_forward(self, module, output):
        return AllGatherFunction.apply(output.contiguous(), 2, self.group)


def _check_heads(num_heads: int, group: dist.ProcessGroup) -> None:
    """Refuse a head count DeepSpeed's all-to-all cannot split exactly over `group`."""
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    divisors = [p for p in range(1, num_heads + 1) if num_heads % p == 0]
    if num_heads < size:
        raise ValueError(
            f"The model has {num_heads} attention heads, fewer than the {size} ranks of the sequence-parallel "
            f"group; every rank needs at least one head. Use a sequence_parallel_size of at most {num_heads}."
        )
    if num_heads % size:
        from deepspeed.utils import groups

        # DeepSpeed's uneven-head all-to-all takes this rank's share from its own sequence-parallel group (the mpu
        # given to deepspeed.initialize), not from the group it is called with; it is exact only when they agree.
        deepspeed_group = (groups._get_sequence_parallel_world_size(), groups._get_sequence_parallel_rank())
        if deepspeed_group != (size, rank):
            raise ValueError(
                f"{num_heads} attention heads do not split evenly over {size} ranks. DeepSpeed's all-to-all handles "
                "that only when its own sequence-parallel group (the `mpu` given to `deepspeed.initialize`) is this "
                f"group; here it reports (size, rank) = {deepspeed_group} instead of {(size, rank)}. Register the "
                f"group with DeepSpeed, or use a sequence_parallel_size that divides {num_heads} (one of {divisors})."
            )


def _init_deepspeed_comm() -> None:
    """DeepSpeed's all-to-all runs on `deepspeed.comm`: wrap the already initialised torch process group."""
    import deepspeed
    import deepspeed.comm

    if not deepspeed.comm.is_initialized():
        from ..training.distributed import skip_deepspeed_shm_build

        skip_deepspeed_shm_build()
        deepspeed.init_distributed(dist_backend=dist.get_backend(), dist_init_required=False)


def enable_sequence_parallel(model: LaCTWanTransformer3DModel, group: dist.ProcessGroup) -> None:
    """Split every teacher-forcing sequence of `model` across the `P` ranks of `group`, in place.

    The contract (docs/design.md, Sec. 2.5):
    - every rank of `group` calls `model(...)` in `TEACHER_FORCING` mode with the same full inputs (the same clip,
      noise, timesteps and prompt); the model returns the full output, identical on every rank;
    - each rank computes with `T/P` tokens of every segment (`T` tokens per chunk must be divisible by `P`);
    - the backward of the same loss on every rank gives each rank its tokens' share of every gradient: summed over
      `group`, a parameter's gradient equals the single-process gradient. A data-parallel trainer that averages
      gradients over data x sequence ranks (ZeRO does) must therefore multiply the loss by `P` before backward.

    Inference modes (denoise, commit) raise ValueError while it is enabled.

    When `P` does not divide the attention heads (12 heads of the 1.3B model over 8 ranks), call it after
    `deepspeed.initialize` (accelerate's `prepare`) with the `mpu` that describes `group`: DeepSpeed's uneven-head
    all-to-all reads the rank from there.

    Args:
        model: the LaCT transformer, not wrapped (DeepSpeed's engine may wrap it afterwards; the hooks stay).
        group: a `torch.distributed` process group of `P >= 1` ranks; `torch.distributed` must be initialised.

    Raises:
        TypeError: `model` is not a `LaCTWanTransformer3DModel` (a wrapper, say).
        ValueError: already enabled; or `P` exceeds the attention heads; or it does not divide them and DeepSpeed's
            own sequence-parallel group is not `group` (its uneven-head all-to-all reads its rank from there).
    """
    # 1. Checks
    if not isinstance(model, LaCTWanTransformer3DModel):
        raise TypeError(
            f"enable_sequence_parallel takes the LaCTWanTransformer3DModel itself; got a {type(model).__name__} "
            "(unwrap it first, e.g. `accelerator.unwrap_model(model)`)."
        )
    if isinstance(model.blocks[0].attn1.processor, UlyssesAttnProcessor):
        raise ValueError(
            "Sequence parallelism is already enabled on this model; call disable_sequence_parallel first."
        )
    num_heads = model.config.num_attention_heads
    _check_heads(num_heads, group)
    _init_deepspeed_comm()

    # 2. Head-parallel window attention and token-parallel memory
    for index, block in enumerate(model.blocks):
        block.attn1.processor = UlyssesAttnProcessor(block.attn1.processor, group, num_heads)
        if block.attn1.memory is not None:
            block.attn1.memory.token_reduction = GroupTokenReduction(group)
        registry = HookRegistry.check_if_exists_or_initialize(block)
        registry.register_hook(_SplitTokensHook(group, split_hidden_states=index == 0), _SPLIT_HOOK)

    # 3. The full output on every rank
    HookRegistry.check_if_exists_or_initialize(model.proj_out).register_hook(_GatherTokensHook(group), _GATHER_HOOK)


def disable_sequence_parallel(model: LaCTWanTransformer3DModel) -> None:
    """Undo `enable_sequence_parallel`: the model computes on one device again, with the same parameters.

    Raises:
        ValueError: sequence parallelism is not enabled on `model`.
    """
    if not isinstance(model.blocks[0].attn1.processor, UlyssesAttnProcessor):
        raise ValueError("Sequence parallelism is not enabled on this model.")
    for block in model.blocks:
        block.attn1.processor = block.attn1.processor.processor
        if block.attn1.memory is not None:
            block.attn1.memory.token_reduction = LOCAL_TOKENS
        block._diffusers_hook.remove_hook(_SPLIT_HOOK, recurse=False)
    model.proj_out._diffusers_hook.remove_hook(_GATHER_HOOK, recurse=False)


def all_to_all_bytes_per_step(
    model: LaCTWanTransformer3DModel,
    sample_shape: tuple[int, ...],
    sp_size: int,
    dtype: torch.dtype | None = None,
    gradient_checkpointing: bool | None = None,
) -> int:
    """Bytes one rank sends in the Ulysses all-to-alls of one teacher-forcing training step, forward and backward.

    Per block, the forward exchanges q, k, v (each rank sends its `T/P` tokens of the heads other ranks hold) and
    the attention output (it sends the other ranks' tokens of its own heads); the backward exchanges their
    gradients the other way; gradient checkpointing repeats the forward's exchanges. The memory's all-reduces are
    not counted. With heads that `P` does not divide, the ranks differ and the largest is returned.

    Args:
        model: the LaCT transformer (its config gives the blocks, heads, head dim and patch size).
        sample_shape: (B, C, S*k, H, W) of the interleaved latents the model is called with.
        sp_size: `P`, the ranks of the sequence-parallel group.
        dtype: the element type of q, k, v; default the model's.
        gradient_checkpointing: default the model's setting.
    """
    b, _, frames, height, width = sample_shape
    config = model.config
    _, p_h, p_w = config.patch_size
    tokens = config.chunk_frames * (height // p_h) * (width // p_w)  # T
    segments = frames // config.chunk_frames  # S
    heads, head_dim = config.num_attention_heads, config.attention_head_dim
    recompute = model.gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing
    element_size = (dtype or model.dtype).itemsize
    local = b * segments * (tokens // sp_size) * head_dim  # elements of one head of this rank's tokens

    def rank_bytes(rank: int) -> int:
        own_heads = heads // sp_size + (rank < heads % sp_size)  # DeepSpeed's split
        to_heads = local * (heads - own_heads)  # q, k or v (or an output gradient): tokens -> heads
        to_tokens = local * (sp_size - 1) * own_heads  # the output (or a q, k, v gradient): heads -> tokens
        forward = 3 * to_heads + to_tokens
        per_block = forward + (3 * to_tokens + to_heads) + (forward if recompute else 0)
        return per_block * len(model.blocks) * element_size

    return max(rank_bytes(rank) for rank in range(sp_size))


def all_reduce_bytes_per_step(
    model: LaCTWanTransformer3DModel,
    sample_shape: tuple[int, ...],
    dtype: torch.dtype | None = None,
    gradient_checkpointing: bool | None = None,
) -> int:
    """Bytes the fast-weight memory all-reduces in one teacher-forcing training step, forward and backward.

    Per memory block, the forward all-reduces every clean chunk's three update directions, `B * Hf * 3 * d * dh`
    elements each time (`Hf * d` is the model dim), and with momentum the gates' chunk means once,
    `B * (N-1) * Hf`; the backward all-reduces their gradients, the same sizes; gradient checkpointing repeats
    the forward's. This is the size of the buffers; a ring all-reduce sends `2 (P-1) / P` times it per rank.
    Independent of `P` and of the tokens per chunk.

    Args: as `all_to_all_bytes_per_step`.
    """
    b, _, frames, _, _ = sample_shape
    config = model.config
    num_repeat = config.num_repeat
    chunks = (frames // config.chunk_frames + 1) // (num_repeat + 1)  # N
    recompute = model.gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing
    total = 0
    for block in model.blocks:
        memory = block.attn1.memory
        if memory is None:
            continue
        forward = (chunks - 1) * b * memory.num_heads * 3 * memory.head_dim * memory.hidden_dim
        if memory.momentum_proj is not None:
            forward += b * (chunks - 1) * memory.num_heads
        total += forward * (3 if recompute else 2)
    return total * (dtype or model.dtype).itemsize
