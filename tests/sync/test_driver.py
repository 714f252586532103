"""The pure lockstep driver."""

from __future__ import annotations

import torch

from streamlearn.sync import Dynamic, LSGD, PullToward, RequestModels, SendModel
from streamlearn.sync.driver import apply_action, collect_reports, lockstep, settle


def test_apply_actions():
    W, R = torch.zeros(3, 2), torch.zeros(3, 2)
    apply_action(SendModel((0, 2), torch.tensor([1.0, 2.0]), reference=False), W, R)
    assert W.tolist() == [[1.0, 2.0], [0.0, 0.0], [1.0, 2.0]] and not R.any()
    apply_action(SendModel((1,), torch.tensor([3.0, 3.0]), reference=True), W, R)
    assert R[1].tolist() == [3.0, 3.0]
    apply_action(PullToward((0, 1), torch.tensor([5.0, 2.0]), 0.5), W, R)
    assert W[:2].tolist() == [[3.0, 2.0], [4.0, 2.5]]
    apply_action(RequestModels((0,)), W, R)  # nothing to apply
    assert W[0].tolist() == [3.0, 2.0]


def test_collect_reports_uses_each_nodes_step_divergence_and_metadata():
    p = Dynamic(3, 2, delta=1.0, b=2, device="cpu")
    W = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.5, 0.0]])
    R = torch.zeros(3, 2)
    reps = collect_reports(p, torch.tensor([2, 3, 2]), W, R, loss=torch.tensor([0.1, 0.2, 0.3]),
                           n_samples=torch.tensor([5, 6, 7]))
    assert [r.node for r in reps] == [0]  # node 1 is off its check step, node 2 within delta
    assert (reps[0].step, reps[0].n_samples, round(reps[0].loss, 6)) == (2, 5, 0.1)
    assert torch.equal(reps[0].model, W[0]) and reps[0].model is not W[0]


def test_settle_answers_requests_from_the_node_tensor():
    p = LSGD(3, 1, tau=1, strength=1.0, device="cpu")
    W, R = torch.tensor([[1.0], [2.0], [3.0]]), torch.zeros(3, 1)
    actions = lockstep(p, 1, W, R, loss=torch.tensor([0.3, 0.1, 0.2]))
    assert [type(a) for a in actions] == [RequestModels, PullToward]
    assert W.flatten().tolist() == [2.0, 2.0, 2.0]
    assert settle(p, [], W, R) == []
