"""Groups: nodes that keep declining the average are averaged among themselves (clustered averaging).

Guarded averaging (:mod:`streamlearn.sync.guard`) keeps a node whose concept is its own from being
dragged by the others, but it still sends its model into their average, and it stops learning from
nodes that share its new concept. :class:`Grouped` wraps any protocol and runs one copy of it per
group of nodes: each group has its own reference, and the protocol's rules (dynamic averaging's Δ
rule, balancing and forced full syncs; periodic, FedAvg and LSGD rounds) act within a group, as if
the group were the whole system. Group 0 is the whole; it always exists.

Group changes are events of the coordinator (Sattler, Müller, Samek 2020 split clusters by the
cosine of the updates; here the nodes' own guards tell, and model distances decide where they go):

- **split**: a node that declined at least ``split`` of the last ``2 * split`` models sent to it
  leaves its group (a node alone in its group only for a nearer one). It joins the group whose
  reference is nearest to its latest model if that is nearer than the reference it left (and not
  the group it left before that); otherwise it starts a new group, a copy of the one it left (same
  reference, server momentum, codec memory, clocks), so its reference stays valid and no message
  is needed.
- **merge**: ``far[g]`` is the largest ``||r_g - r_0||^2`` group g ever had. Two groups whose
  references come within ``MERGE`` times the largest of their ``far`` and of the widest gap
  between any two groups now merge into the lower id (once each made ``MIN_AGE * split`` full
  syncs of its own): the nodes that move get the group's reference as model and reference (a
  guarded node checks it). So a group dissolves back into the whole once its models come back
  close, relative to how far it went, and a group of nodes that only disagree mildly merges back
  while a group with a concept of its own is far away.
- a node that joins again (a restart) joins the whole; a group left without alive nodes ends.

Not kept across a restart of the sync service (``get_state`` is the whole's): every node
rejoins the whole. With ``extrapolate=1`` a node that changes group follows the new reference's
motion from its next full sync on.

Examples
--------
>>> import torch
>>> from streamlearn.sync.periodic import Periodic
>>> from streamlearn.sync.messages import Report
>>> p = Grouped(Periodic(m=3, d=1, b=1, seed=0, device="cpu"), split=2)
>>> _ = p.on_reports([Report(n, 1, model=torch.tensor([float(n)])) for n in range(3)])
>>> _ = p.on_declined([2]), p.on_declined([2])           # node 2 declined 2 of its last 4 models
>>> p.node_groups
{0: 0, 1: 0, 2: 1}
>>> [a] = p.on_reports([Report(2, 2, model=torch.tensor([5.0]))])   # group 1 syncs alone
>>> a.nodes, a.model.tolist()
((2,), [5.0])
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace
from typing import Iterable

import numpy as np
import torch

from streamlearn.errors import ConfigError
from streamlearn.sync.aggregate import sq_dist
from streamlearn.sync.messages import Action, CommStats, PullToward, Report, SendModel, add_stats
from streamlearn.sync.protocol import Protocol, int_param

__all__ = ["Grouped", "MERGE", "MIN_AGE", "GROUP_EVENTS"]
#: A group merges only once it made this many full syncs per ``split`` on its own: a young group's reference is
#: still near where it came from, which says nothing yet (at b=1 younger merges made the nodes churn).
MIN_AGE = 10

#: Two groups merge when their references are within this fraction (of squared distances) of the farthest
#: either went from the whole, or of the widest gap between any two groups now.
MERGE = 0.1
#: Kinds of group events.
GROUP_EVENTS = ("split", "join", "merge")


class Grouped:
    """Any protocol, run once per group of nodes (see the module docstring).

    Parameters
    ----------
    base
        The protocol of the whole (group 0); every other group runs a copy of it.
    split
        A node that declined at least ``split`` of the last ``2 * split`` models sent to it
        leaves its group.

    Attributes
    ----------
    events : deque of (step, kind, node, from_group, to_group)
        The last 100,000 group changes, at the latest step reported.
    """

    def __init__(self, base: Protocol, split: int = 3):
        if not isinstance(base, Protocol):
            raise ConfigError(f"groups wrap a protocol, got {type(base).__name__}")
        if base.name == "nosync":
            raise ConfigError("split: nosync does not average, so it has no groups")
        self.split = int_param("split", split)
        self.base = base
        self.parts: dict[int, Protocol] = {0: base}
        m = base.m
        self.group = np.zeros(m, dtype=np.int64)
        self.declined = torch.zeros(m, dtype=torch.int64)
        self.events: deque = deque(maxlen=100_000)
        self._changes = dict.fromkeys(GROUP_EVENTS, 0)
        self._sent = np.zeros(m, dtype=np.int64)  # models sent to each node (down the wire)
        self._declines: dict[int, deque] = {}  # per node: _sent at its recent declines
        self._left = np.full(m, -1, dtype=np.int64)  # the group each node left last
        self._got = np.zeros(m, dtype=bool)  # a model of the node is in its group's bank
        self._far: dict[int, float] = {0: 0.0}
        self._retired = CommStats()  # counts of groups that ended
        self._next_id = 1
        self._t = 0

    # ---- what the services and the simulator read ------------------------------------------------

    def __getattr__(self, name):
        # hyperparameters, codec, node rule, bank: those of the whole (every group shares them)
        if name in ("base", "parts") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.base, name)

    @property
    def params(self) -> dict[str, type]:
        return {**self.base.params, "split": int}

    @property
    def alive(self) -> frozenset[int]:
        return frozenset().union(*(p.alive for p in self.parts.values()))

    @property
    def pending(self) -> set[int]:
        return set().union(*(p.pending for p in self.parts.values()))

    @property
    def waiting_reports(self) -> set[int]:
        return set().union(*(p.waiting_reports for p in self.parts.values()))

    @property
    def node_groups(self) -> dict[int, int]:
        """The group of every alive node."""
        return {n: g for g, p in self.parts.items() for n in sorted(p.alive)}

    @property
    def group_changes(self) -> dict[str, int]:
        """Group changes by kind (split, join, merge) since the start."""
        return dict(self._changes)

    @property
    def references(self) -> dict[int, torch.Tensor]:
        """The reference of every group."""
        return {g: p.reference for g, p in self.parts.items()}

    @property
    def stats(self) -> CommStats:
        return add_stats(self._retired, *(p.stats for p in self.parts.values()))

    @stats.setter
    def stats(self, value: CommStats) -> None:  # a restored service: the whole's counts
        self.base.stats = value
        self._retired = CommStats()

    def clone(self) -> "Grouped":
        return Grouped(self.base.clone(), split=self.split)

    def __repr__(self) -> str:
        return f"Grouped({self.base!r}, split={self.split})"

    # ---- events ----------------------------------------------------------------------------------

    def on_join(self, node: int) -> list[Action]:
        node = self.base.bank.check_node(node)
        out = self._leave_group(node) if self.group[node] != 0 else []
        self._declines.pop(node, None)
        self._got[node] = False
        return out + self._after(0, self.base.on_join(node), echo=False)

    def on_leave(self, node: int) -> list[Action]:
        node = self.base.bank.check_node(node)
        g = int(self.group[node])
        out = self._after(g, self.parts[g].on_leave(node))
        self._end_if_empty(g)
        return out

    def on_timeout(self, node: int) -> list[Action]:
        node = self.base.bank.check_node(node)
        g = int(self.group[node])
        return self._after(g, self.parts[g].on_timeout(node))

    def on_reports(self, reports: Iterable[Report]) -> list[Action]:
        reports = list(reports)
        for rep in reports:
            self.base.bank.check_node(rep.node)
        if reports:
            self._t = max([self._t] + [int(rep.step) for rep in reports])
        out: list[Action] = []
        for g, reps in self._by_group(reports, lambda rep: rep.node):
            self._got[[int(rep.node) for rep in reps if rep.model is not None]] = True
            out += self._after(g, self.parts[g].on_reports(reps))
        return out

    def on_models(self, models: dict[int, torch.Tensor]) -> list[Action]:
        out: list[Action] = []
        for g, nodes in self._by_group(list(models), int):
            awaited = self.parts[g].pending
            self._got[[n for n in nodes if n in awaited]] = True
            out += self._after(g, self.parts[g].on_models({n: models[n] for n in nodes}))
        return out

    def on_declined(self, nodes: Iterable[int]) -> list[Action]:
        nodes = [self.base.bank.check_node(n) for n in nodes]
        out: list[Action] = []
        for node in nodes:
            g = int(self.group[node])
            self.parts[g].on_declined([node])
            self.declined[node] += 1
            recent = self._declines.setdefault(node, deque())
            recent.append(int(self._sent[node]))
            while recent and recent[0] < self._sent[node] - 2 * self.split:
                recent.popleft()
            if len(recent) >= self.split and bool(self.parts[g].bank.alive[node]):
                out += self._move(node)
        return out

    # ---- group changes -----------------------------------------------------------------------------

    def _move(self, node: int) -> list[Action]:
        """``node`` kept declining: to the nearest other group, or a new one."""
        g = int(self.group[node])
        here = self.parts[g]
        p = self.base.n_params
        w = here.bank.W[node, :p] if self._got[node] else here.reference[:p]
        stay = float(sq_dist(w, here.reference[:p]))
        before = int(self._left[node])  # the group it left last: not back there at once
        alone = len(here.alive) == 1
        if alone and not any(float(sq_dist(w, part.reference[:p])) < stay for h, part in self.parts.items()
                             if h not in (g, before) and part.alive):
            # alone in its group and no group nearer: a new group would be the same (a node declines its
            # own model when it comes back after it learned on)
            self._declines.pop(node, None)
            return []
        out = self._leave_group(node)  # may end a sync, and so merge groups: look at the groups after it
        self._left[node] = g
        others = [(float(sq_dist(w, part.reference[:p])), h) for h, part in self.parts.items()
                  if h not in (g, before) and part.alive]
        if others and min(others)[0] < stay:
            to = min(others)[1]
            self.group[node] = to  # before the join: its full sync may merge groups
            self._note("join", node, g, to)
            out += self._after(to, self.parts[to].on_join(node), echo=False)
        else:
            to = self._fork(here, node)
            self.group[node] = to
            self._note("split", node, g, to)
        return out

    def _fork(self, part: Protocol, node: int) -> int:
        """A new group of ``node`` alone, a copy of ``part`` (its reference, momentum, memories, clocks)."""
        gid = self._next_id
        self._next_id += 1
        seed = None if part.seed is None else int(part.seed) + 7919 * gid
        new = part.clone(seed=seed, w0=part.reference.clone(), initial_nodes=[node])
        state = part.get_state()
        new.set_state({k: state[k] for k in ("full_sends", "t_now", "t_sync") if k in state})
        new.set_arrays(part.get_arrays())
        self.parts[gid] = new
        self._far[gid] = 0.0
        return gid

    def _leave_group(self, node: int) -> list[Action]:
        """Take ``node`` out of its group (whose sync in progress finishes without it)."""
        g = int(self.group[node])
        out = self._after(g, self.parts[g].on_leave(node))
        self._declines.pop(node, None)
        self._got[node] = False
        self.group[node] = 0
        self._end_if_empty(g)
        return out

    def _end_if_empty(self, g: int) -> None:
        if g != 0 and g in self.parts and not self.parts[g].alive:
            self._retire(g)

    def _retire(self, g: int) -> None:
        part = self.parts.pop(g)
        self._far.pop(g, None)
        self.group[self.group == g] = 0  # its nodes that left join the whole when they come back
        self._retired = add_stats(self._retired, part.stats)

    def _after(self, g: int, actions: list[Action], echo: bool = True) -> list[Action]:
        """Count the models sent; after a full sync, merge the groups that came close. The full sync of a
        group of one (``echo``: not an answer to a join) sends the node its own model back: it keeps the one
        it learned on meanwhile (``SendModel.keep``)."""
        if echo and g in self.parts and len(self.parts[g].alive) == 1:
            actions = [replace(a, keep=True) if isinstance(a, SendModel) and a.reference else a for a in actions]
        self._count_sent(actions)
        full = any(isinstance(a, SendModel) and a.reference for a in actions)
        if full and len(self.parts) > 1:
            actions = list(actions) + self._merges()
        return actions

    def _merges(self) -> list[Action]:
        p = self.base.n_params
        r0 = self.base.reference[:p]
        for g, part in self.parts.items():
            if g:
                self._far[g] = max(self._far[g], float(sq_dist(part.reference[:p], r0)))
        ids = sorted(g for g, part in self.parts.items() if g == 0 or part.stats.full_syncs >= MIN_AGE * self.split)
        gaps = {(g, h): float(sq_dist(self.parts[g].reference[:p], self.parts[h].reference[:p]))
                for i, g in enumerate(ids) for h in ids[i + 1:]}
        widest = max(gaps.values(), default=0.0)
        for i, g in enumerate(ids):
            for h in ids[i + 1:]:
                far = max(self._far[g], self._far[h], widest)
                gap = gaps[(g, h)]
                if far > 0 and gap <= MERGE * far:
                    return self._merge(h, into=g)  # one merge per full sync; the next one sees the rest
        return []

    def _merge(self, h: int, into: int) -> list[Action]:
        nodes = sorted(self.parts[h].alive)
        self._retire(h)
        out: list[Action] = []
        for node in nodes:
            self.group[node] = into
            self._declines.pop(node, None)
            self._got[node] = False
            self._note("merge", node, h, into)
            out += self.parts[into].on_join(node)
        self._count_sent(out)
        return out

    def _count_sent(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, (SendModel, PullToward)):
                self._sent[list(a.nodes)] += 1

    def _note(self, kind: str, node: int, frm: int, to: int) -> None:
        self.events.append((self._t, kind, int(node), int(frm), int(to)))
        self._changes[kind] += 1

    def _by_group(self, items: list, node_of):
        """``(group, items of its nodes)``, group by group; a group change while one is handled (a merge)
        takes effect for the items not handed out yet."""
        items = list(items)
        while items:
            g = min(int(self.group[int(node_of(item))]) for item in items)
            yield g, [item for item in items if self.group[int(node_of(item))] == g]
            items = [item for item in items if self.group[int(node_of(item))] != g]

