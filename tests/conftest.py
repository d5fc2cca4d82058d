"""Shared pytest set-up: one torch thread, and the tiny Wan model built once per session."""

import pytest
import torch

# With 2+ threads on a busy machine, the first call on a new tensor shape was sometimes
# 10-50x slower (docs: platform notes). One thread keeps the test times steady.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_wan_dir(tmp_path_factory):
    """A tiny random Wan2.1 T2V pipeline folder (seed 0), as written by `lact_video.tiny`."""
    from lact_video.tiny import build_tiny_wan

    return build_tiny_wan(tmp_path_factory.mktemp("tiny_wan") / "base", seed=0)
