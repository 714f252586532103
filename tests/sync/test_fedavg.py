"""FedAvg: client fraction, weighting by samples, rounds."""

from __future__ import annotations

import pytest
import torch

from streamlearn.errors import ConfigError
from streamlearn.sync import FedAvg, Report


def test_chooses_ceil_C_m_nodes_without_float_surprises():
    p = FedAvg(30, 2, b=1, C=0.1, seed=0, device="cpu")  # 0.1 * 30 = 3.0000000000000004
    [req] = p.on_reports([Report(i, 1, n_samples=1) for i in range(30)])
    assert len(req.nodes) == 3
    p = FedAvg(5, 2, b=1, C=0.5, seed=0, device="cpu")
    [req] = p.on_reports([Report(i, 1, n_samples=1) for i in range(5)])
    assert len(req.nodes) == 3


def test_mean_is_weighted_by_samples_since_last_sync_and_plain_when_all_zero():
    p = FedAvg(2, 1, b=1, C=1.0, seed=0, device="cpu")
    [req] = p.on_reports([Report(0, 1, n_samples=3), Report(1, 1, n_samples=1)])
    assert req.nodes == (0, 1) and p.pending == {0, 1}
    [a] = p.on_models({0: torch.tensor([0.0]), 1: torch.tensor([4.0])})
    assert a.model.tolist() == [1.0] and a.reference and a.nodes == (0, 1)
    [req] = p.on_reports([Report(0, 2, n_samples=0), Report(1, 2, n_samples=0)])
    [a] = p.on_models({0: torch.tensor([0.0]), 1: torch.tensor([4.0])})
    assert a.model.tolist() == [2.0]


def test_waits_for_all_reports_and_reports_during_models_count_for_next_round():
    p = FedAvg(3, 1, b=1, C=1.0, seed=0, device="cpu")
    assert p.on_reports([Report(0, 1, n_samples=1)]) == []
    assert p.waiting_reports == {1, 2}
    [req] = p.on_reports([Report(1, 1, n_samples=1), Report(2, 1, n_samples=1)])
    assert p.waiting_reports == set()
    assert p.on_reports([Report(0, 2, n_samples=1)]) == []  # next round
    [a] = p.on_models({n: torch.tensor([1.0]) for n in req.nodes})
    assert a.reference and p.waiting_reports == {1, 2}


def test_timeout_on_a_report_lets_the_round_go_on():
    p = FedAvg(3, 1, b=1, C=1.0, seed=0, device="cpu")
    p.on_reports([Report(0, 1, n_samples=1), Report(1, 1, n_samples=1)])
    [req] = p.on_timeout(2)
    assert req.nodes == (0, 1)
    [a] = p.on_models({0: torch.tensor([1.0]), 1: torch.tensor([3.0])})
    assert a.nodes == (0, 1, 2) and a.model.tolist() == [2.0]  # the full sync reaches node 2 too


@pytest.mark.parametrize("bad", [0.0, 1.5, -0.1, float("nan")])
def test_bad_fraction(bad):
    with pytest.raises(ConfigError, match="C"):
        FedAvg(3, 1, C=bad)
