"""Aggregation math."""

from __future__ import annotations

import pytest
import torch

from streamlearn.errors import ConfigError
from streamlearn.sync import sq_dist, weighted_mean


def test_weighted_mean_matches_a_by_hand_mean():
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    w = torch.tensor([1.0, 0.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    expected = sum(w[i] * W[i] for i in range(5)) / w.sum()
    assert torch.allclose(weighted_mean(W, w), expected)
    assert torch.allclose(weighted_mean(W), W.sum(0) / 5)


@pytest.mark.parametrize("W, w", [
    (torch.zeros(0, 3), None),
    (torch.zeros(3), None),
    (torch.zeros(2, 3), torch.tensor([1.0, 1.0, 1.0])),
    (torch.zeros(2, 3), torch.tensor([0.0, 0.0])),
    (torch.zeros(2, 3), torch.tensor([2.0, -1.0])),
])
def test_weighted_mean_rejects_bad_input(W, w):
    with pytest.raises(ConfigError):
        weighted_mean(W, w)


def test_sq_dist_rows_and_single_model():
    W = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    assert sq_dist(W, torch.zeros(2)).tolist() == [25.0, 0.0]
    assert float(sq_dist(W[0], torch.tensor([3.0, 0.0]))) == 16.0
