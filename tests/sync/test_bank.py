"""The model bank."""

from __future__ import annotations

import pytest
import torch

from streamlearn.errors import BadRecordError
from streamlearn.sync import ModelBank


def test_defaults_and_device():
    bank = ModelBank(4, 3)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert bank.device.type == expected and bank.W.shape == (4, 3) and bank.W.dtype == torch.float32
    assert bank.alive.all() and not bank.have.any() and bank.loss.isnan().all()
    assert ModelBank(2, 2, dtype=torch.float64).itemsize == 8


def test_put_divergence_mean():
    bank = ModelBank(4, 2, device="cpu")
    bank.set_reference(torch.tensor([1.0, 1.0]))
    bank.put(1, torch.tensor([1.0, 3.0]))
    bank.put_many([0, 3], torch.tensor([[4.0, 5.0], [1.0, 1.0]]))
    assert bank.have.tolist() == [True, True, False, True]
    assert bank.divergence([0, 1, 3]).tolist() == [25.0, 4.0, 0.0]
    assert bank.divergence().shape == (4,)
    assert bank.mean([0, 3]).tolist() == [2.5, 3.0]
    assert bank.mean([0, 3], torch.tensor([1.0, 3.0])).tolist() == [1.75, 2.0]
    bank.clear([0])
    assert bank.have.tolist() == [False, True, False, True]


def test_bad_node_and_shape():
    bank = ModelBank(2, 3, device="cpu")
    with pytest.raises(BadRecordError, match="node"):
        bank.put(2, torch.zeros(3))
    with pytest.raises(BadRecordError, match="model"):
        bank.put(0, torch.zeros(4))
    with pytest.raises(BadRecordError):
        bank.put_many([0, 1], torch.zeros(1, 3))
