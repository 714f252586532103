"""The alive and contributor sets the bank keeps incrementally (issue 18): after any sequence of joins,
leaves, reports, timeouts and outside writes to the masks they equal the old computations from the
tensors, and the protocols act as they did."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from streamlearn.sync import Periodic, Report
from streamlearn.sync.bank import ModelBank
from streamlearn.sync.dynamic import Dynamic

M = 6


def tensor_sets(bank: ModelBank) -> tuple[set, set]:
    """The old computation: alive and have & alive straight from the tensors."""
    alive = set(bank.alive.nonzero().flatten().tolist())
    both = set((bank.have & bank.alive).nonzero().flatten().tolist())
    return alive, both


def old_periodic(p: Periodic) -> tuple[set, set]:
    """Periodic's contributors and pending as they were computed before the sets were kept incrementally."""
    contributors = set((p.bank.have & p.bank.alive).nonzero().flatten().tolist()) - p._excluded
    if not contributors:
        return contributors, set()
    return contributors, set((p.bank.alive & ~p.bank.have).nonzero().flatten().tolist()) - p._excluded


node = st.integers(0, M - 1)
bank_ops = st.lists(st.one_of(
    st.tuples(st.just("put"), node),
    st.tuples(st.just("put_many"), st.lists(node, max_size=4, unique=True)),
    st.tuples(st.just("clear"), st.one_of(st.none(), st.lists(node, max_size=3))),
    st.tuples(st.just("alive"), st.lists(node, max_size=3), st.booleans()),
    st.tuples(st.just("raw_alive"), node, st.booleans()),   # a write from outside the bank's methods
    st.tuples(st.just("raw_have"), node, st.booleans()),
    st.tuples(st.just("replace_alive"), st.lists(st.booleans(), min_size=M, max_size=M)),
), max_size=40)


@hsettings(max_examples=150, deadline=None)
@given(bank_ops)
def test_bank_sets_equal_the_tensor_masks_after_any_sequence(ops):
    bank = ModelBank(M, 2, device="cpu")
    for op in ops:
        if op[0] == "put":
            bank.put(op[1], [1.0, 2.0])
        elif op[0] == "put_many":
            bank.put_many(op[1], torch.ones(len(op[1]), 2))
        elif op[0] == "clear":
            bank.clear(op[1])
        elif op[0] == "alive":
            bank.set_alive(op[1], op[2])
        elif op[0] == "raw_alive":
            bank.alive[op[1]] = op[2]
        elif op[0] == "raw_have":
            bank.have[op[1]] = op[2]
        else:
            bank.alive = torch.tensor(op[1])
        alive, both = tensor_sets(bank)
        assert bank.alive_nodes() == frozenset(alive) and bank.alive_set() == alive
        assert bank.have_alive() == both


protocol_ops = st.lists(st.one_of(
    st.tuples(st.just("join"), node),
    st.tuples(st.just("leave"), node),
    st.tuples(st.just("report"), st.lists(node, min_size=1, max_size=3), st.booleans()),
    st.tuples(st.just("timeout"), node),
), max_size=40)


@hsettings(max_examples=150, deadline=None)
@given(protocol_ops, st.integers(1, 3))
def test_periodic_rounds_equal_the_old_computation_after_joins_leaves_reports_and_timeouts(ops, b):
    p = Periodic(M, 2, b=b, seed=0, device="cpu", initial_nodes=[0, 1, 2])
    step = 0
    for op in ops:
        if op[0] == "join":
            actions = p.on_join(op[1])
        elif op[0] == "leave":
            actions = p.on_leave(op[1])
        elif op[0] == "timeout":
            actions = p.on_timeout(op[1])
        else:
            step += 1
            actions = p.on_reports([Report(n, step, model=torch.tensor([float(n), 1.0]) if op[2] else None)
                                    for n in op[1]])
        alive, _ = tensor_sets(p.bank)
        contributors, pending = old_periodic(p)
        assert p.alive == frozenset(alive)
        assert p._contributors() == contributors
        assert p.pending == pending
        assert p._round()[0] == len(contributors)
        if contributors:
            assert p._round()[1] == len(pending)
        for a in actions:  # every action goes to alive nodes only
            assert set(a.nodes) <= alive


@hsettings(max_examples=60, deadline=None)
@given(protocol_ops)
def test_dynamic_alive_follows_joins_and_leaves(ops):
    p = Dynamic(M, 2, delta=0.5, seed=0, device="cpu", initial_nodes=[0, 1])
    for op in ops:
        if op[0] == "join":
            p.on_join(op[1])
        elif op[0] == "leave":
            p.on_leave(op[1])
        elif op[0] == "timeout":
            p.on_timeout(op[1])
        else:
            p.on_reports([Report(n, 1, model=torch.tensor([float(n), 1.0]) if op[2] else None) for n in op[1]])
        assert p.alive == frozenset(tensor_sets(p.bank)[0])


def test_alive_is_the_same_object_until_someone_joins_or_leaves():
    p = Periodic(4, 2, b=1, device="cpu")
    first = p.alive
    p.on_reports([Report(0, 1, model=torch.zeros(2))])
    assert p.alive is first  # no rebuild per message
    p.on_leave(3)
    assert p.alive == {0, 1, 2} and p.alive is not first


def test_a_write_to_the_tensors_from_outside_is_seen():
    """A checkpoint load writes the masks directly: the sets are rebuilt from the tensors' version counter."""
    p = Periodic(4, 2, b=1, device="cpu")
    assert p.alive == {0, 1, 2, 3}
    p.bank.alive[1] = False
    assert p.alive == {0, 2, 3}
    p.bank.alive.copy_(torch.tensor([True, True, False, False]))
    assert p.alive == {0, 1}


def test_an_inference_tensor_mask_is_read_every_time():
    """Inference tensors keep no version counter: never cached, always right."""
    with torch.inference_mode():
        bank = ModelBank(3, 1, device="cpu")
        bank.set_alive([2], False)
        assert bank.alive_nodes() == {0, 1}
        bank.alive[0] = False
        assert bank.alive_nodes() == {1}
