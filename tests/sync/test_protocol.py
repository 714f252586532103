"""Behaviour shared by every protocol through the base class."""

from __future__ import annotations

import pytest
import torch

from streamlearn.errors import BadRecordError
from streamlearn.sync import Dynamic, Periodic, Report


def test_a_bad_report_is_rejected_and_changes_nothing():
    p = Periodic(3, 2, b=1, seed=0, device="cpu")
    good = Report(0, 1, model=torch.zeros(2))
    with pytest.raises(BadRecordError, match="model"):
        p.on_reports([good, Report(1, 1, model=torch.zeros(3))])
    with pytest.raises(BadRecordError, match="node"):
        p.on_reports([good, Report(7, 1)])
    assert p.stats.reports == 0 and p.stats.models_up == 0 and p.pending == set()


def test_the_last_report_of_a_node_in_a_batch_counts():
    p = Periodic(2, 1, b=1, seed=0, device="cpu")
    reps = [Report(0, 1, model=torch.tensor([9.0])), Report(0, 2, model=torch.tensor([1.0])),
            Report(1, 2, model=torch.tensor([3.0]))]
    [a] = p.on_reports(reps)
    assert a.model.tolist() == [2.0]
    assert p.stats.models_up == 3 and p.stats.reports == 3  # every transfer is counted


def test_timeout_or_leave_of_a_node_nobody_waits_on_is_a_no_op():
    p = Dynamic(4, 1, delta=1.0, seed=0, device="cpu")
    assert p.on_timeout(1) == [] and p.stats.timeouts == 0 and 1 in p.alive
    assert p.on_leave(1) == [] and p.on_leave(1) == [] and 1 not in p.alive


def test_metadata_lands_in_the_bank_and_sends_bump_versions():
    p = Periodic(2, 1, b=1, seed=0, device="cpu")
    p.on_reports([Report(0, 5, loss=0.25, n_samples=40, model=torch.tensor([1.0]))])
    assert (int(p.bank.step[0]), float(p.bank.loss[0]), int(p.bank.samples[0])) == (5, 0.25, 40)
    p.on_reports([Report(1, 5, loss=0.5, n_samples=10, model=torch.tensor([3.0]))])
    assert p.bank.version.tolist() == [1, 1] and p.bank.samples.tolist() == [0, 0]


def test_models_of_every_form_in_one_batch_land_as_each_would_alone():
    # Reports of one poll are uploaded together (one stack when the models are tensors of one shape and dtype);
    # lists, other dtypes and lean models (without the buffers) land and count as they would one at a time.
    forms = [torch.tensor([1.0, 2.0, 3.0]), [4.0, 5.0, 6.0], torch.tensor([7.0, 8.0, 9.0], dtype=torch.float64),
             torch.tensor([1.5, 2.5]), torch.tensor([0.5, 0.25, 0.125])]
    w0 = torch.tensor([0.0, 0.0, 10.0])
    together = Periodic(6, 3, b=1, seed=0, device="cpu", w0=w0, n_params=2)
    together.on_reports([Report(n, 1, model=w) for n, w in enumerate(forms)])
    bytes_alone = 0
    for n, w in enumerate(forms):
        alone = Periodic(6, 3, b=1, seed=0, device="cpu", w0=w0, n_params=2)
        alone.on_reports([Report(n, 1, model=w)])
        assert torch.equal(together.bank.W[n], alone.bank.W[n]), n
        bytes_alone += alone.stats.bytes_up
    assert together.bank.W[3].tolist() == [1.5, 2.5, 10.0]  # a lean model takes the reference's buffers
    assert together.bank.have[:5].all() and not together.bank.have[5]  # node 5 has not reported: no sync yet
    assert together.stats.models_up == 5 and together.stats.bytes_up == bytes_alone
