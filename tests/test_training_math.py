"""The training helpers as pure functions: flow matching, sampling, EMA, trainable groups, checkpoints."""

import math
import pathlib

import pytest
import torch

from lact_video.training import checkpointing
from lact_video.training.ema import ShardedEMA, ema_update_
from lact_video.training.flow_matching import (
    TimestepSampling,
    add_noise,
    chunk_mse,
    draw_sample_randomness,
    logit_normal_density,
    reduce_chunk_losses,
    sample_timesteps,
    shift_timesteps,
    teacher_forcing_loss,
    token_following_shift,
    tokens_per_chunk,
    velocity_target,
)
from lact_video.training.sampling import KeyedDataset, ResumableSampler, epoch_permutation

# Flow matching


def test_token_following_shift_matches_the_paper():
    # 480x832, 3 latent frames: 3 * 30 * 52 = 4680 tokens per chunk.
    assert tokens_per_chunk(3, 480 // 8, 832 // 8) == 4680
    assert token_following_shift(4680) == pytest.approx(2.11, abs=0.005)
    assert token_following_shift(32760) == pytest.approx(3.0)
    assert token_following_shift(73710) == pytest.approx(5.0)
    # log-linear, extrapolated on both sides
    mid = token_following_shift((32760 + 73710) / 2)
    assert mid == pytest.approx(math.sqrt(15.0))
    assert token_following_shift(100_000) > 5.0


@pytest.mark.parametrize("shift", [1.0, 2.11, 3.0, 5.0])
def test_shift_keeps_endpoints_and_is_monotone(shift):
    t = torch.linspace(0, 1, 101)
    shifted = shift_timesteps(t, shift)
    assert shifted[0] == 0 and shifted[-1] == pytest.approx(1.0)
    assert (shifted.diff() > 0).all()
    if shift == 1.0:
        torch.testing.assert_close(shifted, t)
    else:
        assert (shifted[1:-1] > t[1:-1]).all()  # towards noise
    assert shift_timesteps(torch.tensor(0.5), 3.0) == pytest.approx(0.75)


@pytest.mark.parametrize("sampling", list(TimestepSampling), ids=lambda s: s.value)
def test_sample_timesteps_in_unit_interval(sampling):
    t = sample_timesteps((10_000,), sampling, torch.Generator().manual_seed(0))
    assert t.shape == (10_000,) and (t > 0).all() and (t < 1).all()
    assert t.mean() == pytest.approx(0.5, abs=0.02)
    if sampling is TimestepSampling.logit_normal:
        assert t.std() < 0.25  # concentrated in the middle, unlike U(0, 1) (std 0.289)


def test_logit_normal_density_is_a_density():
    t = torch.linspace(1e-5, 1 - 1e-5, 200_001, dtype=torch.float64)
    for mean, std in [(0.0, 1.0), (0.5, 0.7)]:
        density = logit_normal_density(t, mean, std)
        assert torch.trapezoid(density, t).item() == pytest.approx(1.0, abs=1e-3)
    assert logit_normal_density(torch.tensor([0.5]), 0.0, 1.0).item() == pytest.approx(4 / math.sqrt(2 * math.pi))


def test_noising_is_per_chunk_and_the_target_is_its_velocity():
    b, r, c, k, n, h, w = 2, 2, 3, 2, 3, 4, 4
    x = torch.randn(b, c, n * k, h, w, dtype=torch.float64)
    e = torch.randn(b, r, c, n * k, h, w, dtype=torch.float64)
    t = torch.rand(b, r, n, dtype=torch.float64)
    noisy = add_noise(x, e, t, k)
    for i in range(n):
        frames = slice(i * k, (i + 1) * k)
        for bi in range(b):
            for ri in range(r):
                ti = t[bi, ri, i]
                expected = (1 - ti) * x[bi, :, frames] + ti * e[bi, ri, :, frames]
                torch.testing.assert_close(noisy[bi, ri, :, frames], expected)
    assert torch.equal(add_noise(x, e, torch.zeros_like(t), k), x.unsqueeze(1).expand_as(e))
    torch.testing.assert_close(add_noise(x, e, torch.ones_like(t), k), e)
    # u = d noisy / dt = e - x
    eps = 1e-6
    derivative = (add_noise(x, e, t + eps, k) - add_noise(x, e, t - eps, k)) / (2 * eps)
    torch.testing.assert_close(derivative, velocity_target(x, e), rtol=1e-6, atol=1e-6)


def test_per_chunk_loss_reduction():
    b, r, c, k, n, h, w = 2, 2, 3, 2, 3, 2, 2
    target = torch.zeros(b, r, c, n * k, h, w)
    pred = torch.zeros_like(target)
    for i in range(n):
        pred[:, :, :, i * k : (i + 1) * k] = i + 1  # squared error (i+1)^2 everywhere in chunk i
    mse = chunk_mse(pred, target, k)
    assert mse.shape == (b, r, n)
    torch.testing.assert_close(mse, torch.tensor([1.0, 4.0, 9.0]).expand(b, r, n))
    loss, per_chunk = reduce_chunk_losses(mse)
    assert loss.item() == pytest.approx(14 / 3)
    torch.testing.assert_close(per_chunk, torch.tensor([1.0, 4.0, 9.0]))
    weights = torch.tensor([0.0, 1.0, 0.0]).expand(b, r, n)
    loss, per_chunk = reduce_chunk_losses(mse, weights)
    assert loss.item() == pytest.approx(4 / 3)  # weighted mean over samples, copies and chunks
    torch.testing.assert_close(per_chunk, torch.tensor([1.0, 4.0, 9.0]))  # the report stays unweighted


class _Oracle(torch.nn.Module):
    """Answers the teacher-forcing call with a fixed velocity, recording what it was given."""

    def __init__(self, answer):
        super().__init__()
        self.answer = answer

    def forward(self, sequence, timesteps, prompt_embeds, position_offset=0):
        self.seen = (sequence, timesteps, prompt_embeds)
        self.position_offset = position_offset
        return type("Out", (), {"sample": self.answer})()


def test_teacher_forcing_loss_counts_noisy_chunks_only():
    from lact_video import interleave_teacher_forcing

    b, r, c, k, n, h, w = 1, 2, 4, 2, 3, 2, 2
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(b, c, n * k, h, w, generator=gen)
    e = torch.randn(b, r, c, n * k, h, w, generator=gen)
    t = torch.rand(b, r, n, generator=gen)
    prompt = torch.randn(b, 5, 8, generator=gen)
    oracle = _Oracle(velocity_target(x, e))
    loss, per_chunk = teacher_forcing_loss(oracle, x, prompt, t, e, k)
    assert loss.item() == 0 and per_chunk.shape == (n,)
    sequence, timesteps, _ = oracle.seen
    torch.testing.assert_close(sequence, interleave_teacher_forcing(add_noise(x, e, t, k), x, k))
    # segments: n0^1 n0^2 c0 n1^1 n1^2 c1 n2^1 n2^2; clean ones at timestep 0, noisy ones at 1000 t
    torch.testing.assert_close(timesteps[0, [2, 5]], torch.zeros(2))
    torch.testing.assert_close(timesteps[0, [0, 1, 3, 4, 6, 7]], 1000 * t[0].T.flatten())
    oracle.answer = torch.zeros_like(e)
    loss, per_chunk = teacher_forcing_loss(oracle, x, prompt, t, e, k)
    expected = (e - x.unsqueeze(1)).square().unflatten(3, (n, k)).mean(dim=(0, 1, 2, 4, 5, 6))
    torch.testing.assert_close(per_chunk, expected)
    assert loss.item() == pytest.approx(expected.mean().item(), rel=1e-6)


def test_sample_randomness_depends_only_on_the_position():
    kwargs = dict(seed=3, latent_shape=(4, 6, 2, 2), num_repeat=2, chunk_frames=2, sampling="uniform")
    kwargs["caption_dropout"] = 0.5
    t, noise, drop = draw_sample_randomness([10, 11], **kwargs)
    assert t.shape == (2, 2, 3) and noise.shape == (2, 2, 4, 6, 2, 2) and drop.shape == (2,)
    t1, noise1, drop1 = draw_sample_randomness([11], **kwargs)  # another batch layout, same sample
    torch.testing.assert_close(t1[0], t[1])
    torch.testing.assert_close(noise1[0], noise[1])
    assert drop1[0] == drop[1]
    assert not torch.equal(noise[0], noise[1])
    other_seed, _, _ = draw_sample_randomness([10], **{**kwargs, "seed": 4})
    assert not torch.equal(other_seed[0], t[0])
    _, _, drops = draw_sample_randomness(list(range(2000)), **{**kwargs, "caption_dropout": 0.1})
    assert drops.float().mean().item() == pytest.approx(0.1, abs=0.02)


# Data position


def _stream(num_samples, batch_size, processes, seed, micro_batches, start=0):
    """Per micro-batch, the set of (index, position) that all processes read together."""
    samplers = [ResumableSampler(num_samples, batch_size, processes, rank, seed, start) for rank in range(processes)]
    iters = [iter(s) for s in samplers]
    out = []
    for _ in range(micro_batches):
        keys = [next(it) for it in iters for _ in range(batch_size)]
        out.append(sorted((k.index, k.position) for k in keys))
    return out


def test_one_process_with_batch_2_reads_what_two_processes_read():
    assert _stream(5, 2, 1, seed=0, micro_batches=7) == _stream(5, 1, 2, seed=0, micro_batches=7)


def test_resumed_sampler_continues_the_stream():
    full = _stream(7, 1, 2, seed=1, micro_batches=10)
    assert _stream(7, 1, 2, seed=1, micro_batches=6, start=4) == full[4:]


def test_every_epoch_is_a_permutation():
    keys = [k for _, k in zip(range(30), ResumableSampler(10, 1, seed=5))]
    for epoch in range(3):
        indices = [k.index for k in keys if k.epoch == epoch]
        assert sorted(indices) == list(range(10))
        assert indices == epoch_permutation(10, 5, epoch).tolist()
    assert [k.position for k in keys] == list(range(30))


def test_keyed_dataset_sets_the_epoch_first():
    class Epochs(torch.utils.data.Dataset):
        epoch = None

        def __len__(self):
            return 3

        def set_epoch(self, epoch):
            self.epoch = epoch

        def __getitem__(self, index):
            return {"index": index, "epoch": self.epoch}

    keyed = KeyedDataset(Epochs())
    key = next(iter(ResumableSampler(3, 1, seed=0, start_micro_batch=7)))
    assert keyed[key] == {"index": key.index, "epoch": 2, "position": 7}


# EMA


def test_ema_update_math():
    ema, value = [torch.zeros(3)], [torch.full((3,), 2.0)]
    for _ in range(5):
        ema_update_(ema, value, decay=0.9)
    torch.testing.assert_close(ema[0], torch.full((3,), 2.0 * (1 - 0.9**5)))


def test_sharded_ema_without_zero3_tracks_swaps_and_restores():
    model = torch.nn.Linear(3, 2)
    ema = ShardedEMA(list(model.parameters()), decay=0.5)
    assert not ema.sharded
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.step()
    torch.testing.assert_close(ema.shadow[0], start + 0.5)
    raw = model.weight.detach().clone()
    with ema.swapped_in():
        torch.testing.assert_close(model.weight.detach(), start + 0.5)
    torch.testing.assert_close(model.weight.detach(), raw)

    state = ema.state_dict()
    other = ShardedEMA(list(model.parameters()), decay=0.5)
    other.load_state_dict(state)
    torch.testing.assert_close(other.shadow[0], ema.shadow[0])
    assert other.num_updates == 1
    with pytest.raises(ValueError, match="does not fit"):
        ShardedEMA([torch.nn.Parameter(torch.zeros(4))], 0.5).load_state_dict(state)


def test_sharded_ema_follows_the_local_shard():
    param = torch.nn.Parameter(torch.zeros(0))  # ZeRO-3 leaves an empty placeholder
    param.ds_tensor = torch.zeros(2)  # this rank's slice
    ema = ShardedEMA([param], decay=0.0)
    assert ema.sharded and ema.shadow[0].shape == (2,)
    param.ds_tensor.fill_(3.0)
    ema.step()
    torch.testing.assert_close(ema.shadow[0], torch.full((2,), 3.0))


# Trainable parameters


@pytest.fixture(scope="module")
def tiny_lact(tiny_wan_dir):
    from lact_video import LaCTWanTransformer3DModel

    return LaCTWanTransformer3DModel.from_wan(tiny_wan_dir, subfolder="transformer", chunk_frames=2, fw_head_dim=12)


@pytest.mark.parametrize("trainable", ["all", "lact_layers", "new_params"])
def test_trainable_modules_and_groups(tiny_lact, trainable):
    from lact_video.layers import FastWeightMemory, LaCTAttention
    from lact_video.training.trainable import new_parameters, parameter_groups, set_trainable

    params = set_trainable(tiny_lact, trainable)
    kind = {"all": torch.nn.Module, "lact_layers": LaCTAttention, "new_params": FastWeightMemory}[trainable]
    expected = {id(p) for m in tiny_lact.modules() if isinstance(m, kind) for p in m.parameters()}
    assert {id(p) for p in params} == expected
    groups = {g["name"]: g for g in parameter_groups(tiny_lact, 1e-4, 10.0)}
    new = {id(p) for p in new_parameters(tiny_lact)}
    assert {id(p) for p in groups["new"]["params"]} == new and groups["new"]["lr"] == pytest.approx(1e-3)
    if trainable == "new_params":
        assert "pretrained" not in groups
    else:
        assert groups["pretrained"]["lr"] == 1e-4
        assert not new & {id(p) for p in groups["pretrained"]["params"]}
    tiny_lact.requires_grad_(True)


# Checkpoints


class _Accelerator:
    """The few accelerate calls `save_checkpoint` makes, for one process."""

    is_main_process, process_index, num_processes = True, 0, 1

    def __init__(self, fail=False):
        self.fail = fail

    def wait_for_everyone(self):
        pass

    def save_state(self, path):
        (pathlib.Path(path) / "model.safetensors").write_text("weights")
        if self.fail:
            raise KeyboardInterrupt("killed while saving")


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    ema = ShardedEMA([torch.nn.Parameter(torch.ones(2))], 0.9)
    for step in (2, 4):
        checkpointing.save_checkpoint(_Accelerator(), tmp_path, step, ema, total_limit=2)
    with pytest.raises(KeyboardInterrupt):
        checkpointing.save_checkpoint(_Accelerator(fail=True), tmp_path, 6, ema, total_limit=2)
    assert (tmp_path / ".tmp-checkpoint-6").is_dir() and not (tmp_path / "checkpoint-6").exists()
    (tmp_path / "checkpoint-8").mkdir()  # a folder without a marker is not a checkpoint
    assert [s for s, _ in checkpointing.list_checkpoints(tmp_path)] == [2, 4]
    assert checkpointing.resolve_resume(tmp_path, "latest") == tmp_path / "checkpoint-4"
    assert checkpointing.resolve_resume(tmp_path, None) is None
    assert checkpointing.resolve_resume(tmp_path / "empty", "latest") is None
    assert checkpointing.resolve_resume(tmp_path, "checkpoint-2") == tmp_path / "checkpoint-2"
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        checkpointing.resolve_resume(tmp_path, str(tmp_path / "checkpoint-8"))

    # the next save clears the leftovers and prunes to the newest two
    checkpointing.save_checkpoint(_Accelerator(), tmp_path, 6, ema, total_limit=2)
    assert [s for s, _ in checkpointing.list_checkpoints(tmp_path)] == [4, 6]
    assert not (tmp_path / ".tmp-checkpoint-6").exists()
    marker = checkpointing.read_marker(tmp_path / "checkpoint-6")
    assert marker["step"] == 6 and marker["ema"] == "full"
    saved = torch.load(tmp_path / "checkpoint-6" / "ema" / "rank-00000.pt", weights_only=True)
    torch.testing.assert_close(saved["shadow"][0], torch.ones(2))

    # an existing checkpoint is never overwritten
    before = (tmp_path / "checkpoint-6" / "checkpoint.json").read_text()
    checkpointing.save_checkpoint(_Accelerator(), tmp_path, 6, None, total_limit=2)
    assert (tmp_path / "checkpoint-6" / "checkpoint.json").read_text() == before
