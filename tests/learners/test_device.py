"""TorchLearner runs on cuda when torch sees a GPU, else on the CPU (device=None, the default)."""

import pytest
import torch

from streamlearn.learners.base import resolve_device
from streamlearn.learners.torch_learner import TorchLearner


@pytest.mark.parametrize("available,expected", [(True, "cuda"), (False, "cpu")])
def test_default_device_follows_cuda_availability(monkeypatch, available, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    assert resolve_device(None) == torch.device(expected)
    if not available:  # building on a GPU needs one; without, the learner itself must land on the CPU
        model = TorchLearner("logreg", features=["a", "b"], classes=[0, 1], seed=0)
        assert model.device_.type == "cpu" and model.get_flat().device.type == "cpu"


def test_explicit_device_wins(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("cpu") == torch.device("cpu")
    assert TorchLearner("logreg", features=["a"], classes=[0, 1], seed=0, device="cpu").device_.type == "cpu"


def test_default_learner_asks_resolve_device(monkeypatch):
    """The learner's default device is exactly what resolve_device(None) says (checked without a GPU)."""
    seen = []

    def fake(device):
        seen.append(device)
        return torch.device("cpu")

    monkeypatch.setattr("streamlearn.learners.torch_learner.resolve_device", fake)
    TorchLearner("logreg", features=["a"], classes=[0, 1], seed=0)
    assert seen == [None]
