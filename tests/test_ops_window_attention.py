"""Block window attention vs the dense-mask reference."""

import pytest
import torch
from utils import assert_rel_close

from lact_video.ops.window_attention import (
    full_causal_attention_teacher_forcing,
    window_attention_naive,
    window_attention_teacher_forcing,
)
from lact_video.ops.window_attention.naive import window_attention_mask
from lact_video.sequence import TeacherForcingLayout


@pytest.mark.parametrize(
    "n,r,window",
    [(1, 1, 6), (2, 1, 6), (4, 2, 6), (4, 2, 2), (3, 3, 1), (1, 1, None), (2, 2, None), (4, 2, None)],
    ids=["N1", "N2", "N4-R2", "N4-R2-w2", "N3-R3-w1", "full-N1", "full-N2-R2", "full-N4-R2"],
)
def test_block_matches_dense_mask(n, r, window):
    b, t, h, dd = 2, 6, 2, 4
    layout = TeacherForcingLayout(n, r)
    s = layout.num_segments
    q, k, v = (torch.randn(b, s * t, h, dd, dtype=torch.float64) for _ in range(3))
    chunks = [c for c, _ in layout.segments]
    clean = [cl for _, cl in layout.segments]
    expected = window_attention_naive(q, k, v, chunks, clean, window).unflatten(1, (s, t))  # (B, S, T, H, D)

    order = list(layout.grouped_order)
    grouped = [x.unflatten(1, (s, t))[:, order] for x in (q, k, v)]
    noisy = tuple(x[:, : layout.num_noisy].unflatten(1, (n, r)) for x in grouped)
    clean = tuple(x[:, layout.num_noisy :] for x in grouped)
    if window is None:
        noisy_out, clean_out = full_causal_attention_teacher_forcing(noisy, clean)
    else:
        noisy_out, clean_out = window_attention_teacher_forcing(noisy, clean, window)
    out = torch.cat([noisy_out.flatten(1, 2), clean_out], dim=1)
    assert_rel_close(out, expected[:, order], 1e-12, "window attention")


def test_mask_follows_the_spec():
    # N=3, R=2: n0 n0 c0 n1 n1 c1 n2 n2, T=2 tokens, window 1.
    layout = TeacherForcingLayout(3, 2)
    mask = window_attention_mask([c for c, _ in layout.segments], [cl for _, cl in layout.segments], 2, 1)
    seg = lambda i: slice(2 * i, 2 * i + 2)  # noqa: E731
    assert mask[seg(0), seg(0)].all() and not mask[seg(0), seg(1)].any()  # copies never see each other
    assert not mask[seg(2), :4].any()  # clean c0 sees only itself
    assert mask[seg(3), 5].all() and not mask[seg(3), 4].any()  # n1 sees the last token of c0 only
    assert not mask[seg(6), seg(2)].any()  # n2 does not see c0, only c1
    assert mask[seg(6), 11].all()
    full = window_attention_mask([c for c, _ in layout.segments], [cl for _, cl in layout.segments], 2, None)
    assert full[seg(6), seg(2)].all() and full[seg(6), seg(5)].all()  # n2 sees c0 and c1
    assert full[seg(5), seg(2)].all() and not full[seg(5), seg(3)].any()  # c1 sees c0, never noisy n1
    assert not full[seg(2), seg(5)].any()  # c0 does not see the later c1
