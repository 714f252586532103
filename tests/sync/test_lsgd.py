"""LSGD: leader choice, pulls, groups, a leader that fails."""

from __future__ import annotations

import pytest
import torch

from streamlearn.errors import ConfigError
from streamlearn.sync import LSGD, PullToward, Report


def reports(losses, step=1):
    return [Report(i, step, loss=l) for i, l in enumerate(losses)]


def test_lowest_loss_node_leads_and_nan_counts_as_worst():
    p = LSGD(4, 1, tau=1, strength=0.5, seed=0, device="cpu")
    [req] = p.on_reports(reports([float("nan"), 0.3, 0.2, 0.2]))
    assert req.nodes == (2,)  # ties go to the lower id
    [pull] = p.on_models({2: torch.tensor([8.0])})
    assert isinstance(pull, PullToward) and pull.nodes == (0, 1, 3) and pull.strength == 0.5
    assert p.reference.tolist() == [8.0]  # what a late joiner gets
    assert (p.stats.models_up, p.stats.models_down, p.stats.pulls) == (1, 3, 1)


def test_next_best_node_leads_when_the_leader_leaves_or_times_out():
    p = LSGD(4, 1, tau=1, seed=0, device="cpu")
    [req] = p.on_reports(reports([0.4, 0.1, 0.2, 0.3]))
    assert req.nodes == (1,)
    [req] = p.on_leave(1)
    assert req.nodes == (2,)
    [req] = p.on_timeout(2)
    assert req.nodes == (3,)
    [pull] = p.on_models({3: torch.tensor([1.0])})
    assert pull.nodes == (0, 2)  # node 1 left; node 2 (given up on) is still pulled


def test_groups_have_local_leaders_and_one_global_leader():
    p = LSGD(6, 1, tau=1, strength=0.5, groups=[[0, 1, 2], [3, 4, 5]], global_strength=0.25, seed=0,
             device="cpu")
    [req] = p.on_reports(reports([0.5, 0.4, 0.9, 0.1, 0.8, 0.7]))
    assert req.nodes == (1, 3)
    local1, local2, glob = p.on_models({1: torch.tensor([1.0]), 3: torch.tensor([3.0])})
    assert (local1.nodes, local1.model.tolist(), local1.strength) == ((0, 2), [1.0], 0.5)
    assert (local2.nodes, local2.model.tolist()) == ((4, 5), [3.0])
    assert (glob.nodes, glob.model.tolist(), glob.strength) == ((0, 1, 2, 4, 5), [3.0], 0.25)
    assert p.stats.models_down == 2 + 2 + 5


@pytest.mark.parametrize("groups", [[[0, 1], [1, 2]], [[0, 1]], [[0, 1, 2], []], 4, 0, "ab"])
def test_bad_groups(groups):
    with pytest.raises(ConfigError, match="groups"):
        LSGD(3, 1, groups=groups)


def test_int_groups_split_contiguously():
    p = LSGD(5, 1, groups=2, seed=0, device="cpu")  # groups 0..2 and 3..4
    [req] = p.on_reports(reports([0.5, 0.1, 0.6, 0.9, 0.2]))
    assert req.nodes == (1, 4)
