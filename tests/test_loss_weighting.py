"""The authors' per-chunk loss weight: the logit-normal MASS of the 1/1000-wide bin holding t (times 1000),
checked against a numeric integral of the density, and shown to differ from the density itself."""

import pytest
import torch

from lact_video.training.flow_matching import (
    TIMESTEP_BINS,
    LossWeighting,
    chunk_loss_weights,
    logit_normal_bin_mass,
    logit_normal_density,
)


def numeric_mass(low: float, high: float, mean: float, std: float, points: int = 20001) -> float:
    """Trapezoid integral of the logit-normal density over [low, high], in float64 (density 0 at 0 and 1)."""
    t = torch.linspace(low, high, points, dtype=torch.float64)
    inside = (t > 0) & (t < 1)
    density = torch.zeros_like(t)
    logit = torch.logit(t[inside])
    density[inside] = torch.exp(-0.5 * ((logit - mean) / std) ** 2) / (
        std * (2 * torch.pi) ** 0.5 * t[inside] * (1 - t[inside])
    )
    return torch.trapezoid(density, t).item()


@pytest.mark.parametrize("mean,std", [(0.0, 1.0), (0.5, 0.7)])
@pytest.mark.parametrize("t", [0.0, 0.0004, 0.0013, 0.2999, 0.5, 0.7777, 0.9995])
def test_bin_mass_is_the_integral_of_the_density_over_the_bin(t, mean, std):
    low = int(t * TIMESTEP_BINS) / TIMESTEP_BINS
    expected = numeric_mass(low, low + 1 / TIMESTEP_BINS, mean, std)
    actual = logit_normal_bin_mass(torch.tensor([t]), mean, std).item()
    assert actual == pytest.approx(expected, rel=1e-4, abs=1e-12)


def test_bin_masses_sum_to_one_and_are_constant_within_a_bin():
    centres = (torch.arange(TIMESTEP_BINS) + 0.5) / TIMESTEP_BINS
    assert logit_normal_bin_mass(centres).double().sum().item() == pytest.approx(1.0, abs=1e-6)
    inside = torch.tensor([0.3001, 0.3005, 0.3009])
    assert logit_normal_bin_mass(inside).unique().numel() == 1
    assert logit_normal_density(inside).unique().numel() == 3


def test_the_authors_weight_is_not_the_density():
    """1000 x the mass is close to the density mid-range, but not equal, and far from it where the density
    changes fast within a bin (the ends)."""
    t = torch.tensor([0.0004, 0.3001, 0.5, 0.9996])
    theirs = chunk_loss_weights(t, LossWeighting.logit_normal_bin_mass)
    density = chunk_loss_weights(t, LossWeighting.logit_normal)
    assert not torch.allclose(theirs, density, rtol=1e-4)
    assert theirs[1].item() == pytest.approx(density[1].item(), rel=1e-2)  # mid-range: nearly the same
    assert (theirs[[0, 3]] / density[[0, 3]]).min() > 5  # the ends: the bin's mass is dominated by its far edge
    assert chunk_loss_weights(t, "none") is None
