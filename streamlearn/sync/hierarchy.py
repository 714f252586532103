"""Shards: one copy of a protocol per shard of the nodes, and a root that averages the shards (hierarchical averaging).

Many sync services can share the nodes: each owns a shard and runs the protocol over its nodes only,
and a root averages the shards' references now and then. :class:`Hierarchy` is that layout as one
transport-free protocol, so the simulator runs it and a sharded service can run the same code (the
aggregation math is in the pure functions :func:`shard_of` and :func:`root_average`).

- **Shards** (fixed): node n belongs to shard ``shard_of(n, shards) = n % shards``, for its whole life
  (also after a leave and a rejoin). A shard holds its nodes only: it waits on, averages over and sends
  to them, and it never sees another shard's models.
- **Exact per shard**: shard s runs its own copy of the wrapped protocol (its own reference, random
  generator seeded ``seed + 7919 * s``, violation counter, server momentum, codec memory, clocks) over
  the alive nodes of shard s, as if they were the whole system: dynamic averaging's Δ rule, balancing
  and forced full syncs (``v >= `` the shard's alive nodes), periodic, FedAvg and LSGD rounds act within
  the shard. Between two root averages, shard s does exactly what the plain protocol does on the
  shard's nodes alone; with ``shards=1, root=0`` the wrapper is the protocol itself (same models, same
  counts).
- **Root** (``root = R >= 1``): the root keeps every shard's latest reference ``r_s`` and its alive
  nodes ``n_s``. Once the shards together made ``R * shards`` full syncs since the last root average
  (R per shard on average, counted from the shards' own full syncs, not the root's), and as soon as no
  shard awaits a model (a sync in progress finishes first: the average never mixes models sent before
  and after it), the root computes ``r = sum_s n_s r_s / sum_s n_s`` (:func:`root_average`, shards
  without alive nodes weigh 0), makes it every shard's reference and sends it as a full sync (a
  ``SendModel`` with ``reference=True``) to every alive node: model and reference. That message
  travels whole (fp32, as a joining node's reference) and counts as one model down per node, with its
  bytes, in ``stats``; ``root_syncs`` counts the root averages (they are not in ``stats.full_syncs``,
  which counts the shards' own). A shard's other state (server momentum, codec memory, Δ counter,
  rounds) goes on as it was. ``root=0``: no root, the shards are independent.

  With periodic averaging at ``b`` and ``root=R``, nodes in lockstep take their shard's mean at every
  multiple of ``b`` and the mean of all nodes' models at every multiple of ``R * b`` (the shards just
  synced, so the node-weighted mean of their references is the mean of all models). That is the
  two-level schedule of hierarchical local SGD (Lin, Stich, Patel, Jaggi 2020, "Don't use large
  mini-batches, use local SGD": block averaging every H steps, global every H_b blocks) and of HierFAVG
  (Liu, Zhang, Song, Letaief 2020, "Client-edge-cloud hierarchical federated learning": edge
  aggregation every k1 local steps, cloud every k2 edge aggregations; it weighs by samples, here by
  nodes as the protocols' own means do). Counting full syncs rather than steps extends it to dynamic
  averaging and FedAvg, whose shards sync when they need to. With ``root=1, b=1`` every step ends with
  the mean of all models, as plain continuous averaging, plus one message per node for the root.

Not supported: a root with ``extrapolate=1`` (the nodes would extrapolate across a root average the
shards' coordinators do not follow) or with LSGD (it pulls, it makes no full syncs to count), and
``split=`` together with ``shards=``. Nosync has no shards. LSGD runs per shard without a root.

Not kept across a restart of the sync service in :meth:`Hierarchy.get_state` and
:meth:`Hierarchy.get_arrays`: the shards' model banks (models sent in a sync in progress, versions),
as for a single protocol; the shards' references are kept in the arrays.

Examples
--------
>>> import torch
>>> from streamlearn.sync.periodic import Periodic
>>> from streamlearn.sync.messages import Report
>>> p = Hierarchy(Periodic(m=4, d=1, b=1, seed=0, device="cpu"), shards=2, root=1)
>>> p.node_groups                                        # node n in shard n % 2
{0: 0, 1: 1, 2: 0, 3: 1}
>>> acts = p.on_reports([Report(n, 1, model=torch.tensor([float(n)])) for n in range(4)])
>>> [(a.nodes, a.model.tolist()) for a in acts]          # each shard averages, then the root
[((0, 2), [1.0]), ((1, 3), [2.0]), ((0, 1, 2, 3), [1.5])]
>>> p.stats.models_up, p.stats.models_down, p.stats.full_syncs, p.root_syncs
(4, 8, 2, 1)
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from streamlearn.errors import ConfigError
from streamlearn.sync.aggregate import weighted_mean
from streamlearn.sync.codec import FP32_HEADER_BYTES
from streamlearn.sync.messages import Action, CommStats, Report, SendModel, add_stats
from streamlearn.sync.protocol import Protocol, int_param

__all__ = ["SEED_STRIDE", "Hierarchy", "root_average", "shard_of"]

#: Shard s draws its random choices from ``seed + SEED_STRIDE * s`` (shard 0: the protocol's own seed).
SEED_STRIDE = 7919


def shard_of(node: int, shards: int) -> int:
    """The shard of ``node`` among ``shards``: ``node % shards`` (fixed for the node's life).

    >>> [shard_of(n, 3) for n in range(7)]
    [0, 1, 2, 0, 1, 2, 0]
    """
    return int(node) % int(shards)


def root_average(refs, weights) -> torch.Tensor:
    """The root's model: the mean of the shards' references ``refs`` (one per row, or a list) weighted
    by ``weights`` (the shards' alive nodes), so that it is the mean of all nodes' references.

    >>> root_average([torch.tensor([0.0, 2.0]), torch.tensor([3.0, 2.0])], [2, 1]).tolist()
    [1.0, 2.0]
    """
    R = torch.stack(list(refs)) if not isinstance(refs, torch.Tensor) else refs
    return weighted_mean(R, torch.as_tensor(weights, dtype=R.dtype, device=R.device))


class Hierarchy:
    """Any protocol, run once per shard of the nodes, with a root average (see the module docstring).

    Parameters
    ----------
    base
        The protocol for all ``m`` nodes, fresh (no events yet); every shard runs a copy of it over its nodes.
    shards
        Number of shards (1 to ``m``); node n is in shard ``n % shards``.
    root
        The root averages the shards after ``root * shards`` of their full syncs; 0: never.
    """

    def __init__(self, base: Protocol, shards: int = 1, root: int = 0):
        if not isinstance(base, Protocol):
            raise ConfigError(f"shards wrap a protocol, got {type(base).__name__}")
        if base.name == "nosync":
            raise ConfigError("shards: nosync does not average, so it has no shards")
        self.shards = int_param("shards", shards)
        self.root = int_param("root", root, low=0)
        if self.shards > base.m:
            raise ConfigError(f"shards={self.shards} is more than the m={base.m} nodes: every shard needs a node")
        if self.root and base.name == "lsgd":
            raise ConfigError(f"root={self.root}: lsgd pulls toward leaders and makes no full syncs, so a root "
                              f"would never average; use root=0")
        if self.root and getattr(base, "extrapolate", 0):
            raise ConfigError(f"root={self.root}: extrapolate=1 does not follow the root's averages; "
                              f"use root=0 or extrapolate=0")
        self._initial = base.initial_nodes  # for clone(); the base itself is not kept (a bank of m models)
        initial = range(base.m) if base.initial_nodes is None else [int(n) for n in base.initial_nodes]
        self.parts: list[Protocol] = []
        for s in range(self.shards):
            seed = base.seed if base.seed is None or s == 0 else int(base.seed) + SEED_STRIDE * s
            nodes = None if self.shards == 1 and base.initial_nodes is None else \
                [n for n in initial if shard_of(n, self.shards) == s]
            self.parts.append(base.clone(seed=seed, initial_nodes=nodes))
        self.base = self.parts[0]
        self.root_syncs = 0
        self._since_root = 0  # full syncs of the shards since the last root average
        self._root_stats = CommStats()  # the root's messages (and a restored service's earlier counts)
        self._root_bytes = FP32_HEADER_BYTES + base.d * self.base.bank.itemsize

    # ---- what the services and the simulator read ------------------------------------------------

    def __getattr__(self, name):
        # hyperparameters, codec, node rule: those of the protocol (every shard shares them)
        if name in ("base", "parts", "_initial") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.base, name)

    @property
    def params(self) -> dict[str, type]:
        return {**self.base.params, "shards": int, "root": int}

    @property
    def alive(self) -> frozenset[int]:
        return frozenset().union(*(p.alive for p in self.parts))

    @property
    def pending(self) -> set[int]:
        return set().union(*(p.pending for p in self.parts))

    @property
    def waiting_reports(self) -> set[int]:
        return set().union(*(p.waiting_reports for p in self.parts))

    @property
    def node_groups(self) -> dict[int, int]:
        """The shard of every alive node."""
        return {n: shard_of(n, self.shards) for n in sorted(self.alive)}

    @property
    def group_changes(self) -> dict[str, int]:
        """Shards are fixed: no group changes."""
        return {"split": 0, "join": 0, "merge": 0}

    @property
    def references(self) -> dict[int, torch.Tensor]:
        """The reference of every shard."""
        return {s: p.reference for s, p in enumerate(self.parts)}

    @property
    def declined(self) -> torch.Tensor:
        return sum(p.declined for p in self.parts)

    @property
    def stats(self) -> CommStats:
        return add_stats(self._root_stats, *(p.stats for p in self.parts))

    @stats.setter
    def stats(self, value: CommStats) -> None:  # a restored service: its counts so far
        self._root_stats = add_stats(value)
        for p in self.parts:
            p.stats = CommStats()

    def clone(self) -> Hierarchy:
        return Hierarchy(self.base.clone(initial_nodes=self._initial), shards=self.shards, root=self.root)

    def __repr__(self) -> str:
        return f"Hierarchy({self.base!r}, shards={self.shards}, root={self.root})"

    # ---- state -------------------------------------------------------------------------------------

    def get_state(self) -> dict:
        """Every shard's state (plain JSON), the root's counters and the layout (checked on load)."""
        return {"shards": self.shards, "root": self.root, "root_syncs": self.root_syncs,
                "since_root": self._since_root, "parts": [p.get_state() for p in self.parts]}

    def set_state(self, state: dict) -> None:
        """Load what :meth:`get_state` returned; a state of another layout is a ConfigError."""
        for key in ("shards", "root"):
            if key in state and state[key] != getattr(self, key):
                raise ConfigError(f"{key}: the saved state has {key}={state[key]!r}, this protocol {key}="
                                  f"{getattr(self, key)!r}")
        self.root_syncs = int(state.get("root_syncs", self.root_syncs))
        self._since_root = int(state.get("since_root", self._since_root))
        for p, part_state in zip(self.parts, state.get("parts", [])):
            p.set_state(part_state)

    def get_arrays(self) -> dict[str, torch.Tensor]:
        """Every shard's state tensors and reference, keys prefixed ``shard<s>.``."""
        out = {}
        for s, p in enumerate(self.parts):
            out.update({f"shard{s}.{k}": v for k, v in p.get_arrays().items()})
            out[f"shard{s}.reference"] = p.reference.detach().cpu().clone()
        return out

    def set_arrays(self, arrays) -> None:
        """Load what :meth:`get_arrays` returned (missing keys keep their fresh state)."""
        for s, p in enumerate(self.parts):
            prefix = f"shard{s}."
            p.set_arrays({k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)})
            if arrays.get(prefix + "reference") is not None:
                p.bank.set_reference(torch.as_tensor(arrays[prefix + "reference"]))

    # ---- events ----------------------------------------------------------------------------------

    def shard(self, node: int) -> int:
        """The shard of ``node`` (checked against ``m``)."""
        return shard_of(self.base.bank.check_node(node), self.shards)

    def on_join(self, node: int) -> list[Action]:
        return self._root_if_due(self._call(self.shard(node), "on_join", node))

    def on_leave(self, node: int) -> list[Action]:
        return self._root_if_due(self._call(self.shard(node), "on_leave", node))

    def on_timeout(self, node: int) -> list[Action]:
        return self._root_if_due(self._call(self.shard(node), "on_timeout", node))

    def on_reports(self, reports: Iterable[Report]) -> list[Action]:
        reports = list(reports)
        by = self._split(reports, lambda rep: rep.node)  # checks every node first: a bad one changes nothing
        out: list[Action] = []
        for s, reps in by:
            out += self._call(s, "on_reports", reps)
        return self._root_if_due(out)

    def on_models(self, models: dict[int, torch.Tensor]) -> list[Action]:
        out: list[Action] = []
        for s, nodes in self._split(list(models), int):
            out += self._call(s, "on_models", {n: models[n] for n in nodes})
        return self._root_if_due(out)

    def on_declined(self, nodes: Iterable[int]) -> list[Action]:
        out: list[Action] = []
        for s, part in self._split(list(nodes), int):
            out += self._call(s, "on_declined", part)
        return self._root_if_due(out)

    # ---- the root ----------------------------------------------------------------------------------

    def _split(self, items: list, node_of) -> list[tuple[int, list]]:
        """``(shard, items of its nodes)`` for the shards that have items, in shard order."""
        by: dict[int, list] = {}
        for item in items:
            by.setdefault(self.shard(int(node_of(item))), []).append(item)
        return sorted(by.items(), key=lambda kv: kv[0])

    def _call(self, s: int, method: str, *args) -> list[Action]:
        part = self.parts[s]
        before = part.stats.full_syncs
        out = getattr(part, method)(*args)
        self._since_root += part.stats.full_syncs - before
        return out

    def _root_if_due(self, actions: list[Action]) -> list[Action]:
        """After an event: the root average, if due and no shard awaits a model."""
        if not self.root or self._since_root < self.root * self.shards or any(p.pending for p in self.parts):
            return actions
        weights = [len(p.alive) for p in self.parts]
        if not sum(weights):
            return actions
        r = root_average([p.reference for p in self.parts], weights)
        self._since_root = 0
        self.root_syncs += 1
        nodes: list[int] = []
        for p in self.parts:
            sent = adopt_root(p, r, count=False)  # counted below, as the root's
            nodes += [] if sent is None else list(sent.nodes)
        self._root_stats.models_down += len(nodes)
        self._root_stats.bytes_down += len(nodes) * self._root_bytes
        return list(actions) + [SendModel(tuple(sorted(nodes)), r.clone(), reference=True)]


def adopt_root(protocol, model: torch.Tensor, count: bool = True) -> SendModel | None:
    """Make the root's ``model`` ``protocol``'s reference (one shard's) and send it to every alive node as a
    full sync: model and reference, whole.

    Returns the action to send (None: no node alive); with ``count``, one model down per node in
    ``protocol.stats`` (:class:`Hierarchy` counts the root's messages apart).

    >>> import torch
    >>> from streamlearn.sync.periodic import Periodic
    >>> p = Periodic(m=3, d=2, b=4, seed=0, device="cpu")
    >>> a = adopt_root(p, torch.tensor([1.0, 2.0]))
    >>> a.nodes, a.reference, p.reference.tolist(), p.stats.models_down
    ((0, 1, 2), True, [1.0, 2.0], 3)
    """
    alive = sorted(protocol.alive)
    protocol.bank.set_reference(model.to(protocol.bank.device, protocol.bank.dtype))
    if not alive:
        return None
    protocol.bank.version[alive] += 1  # as any model sent (Protocol._send)
    protocol.bank.samples[alive] = 0
    if count:
        protocol._count_down(len(alive), dense=True)
    return SendModel(tuple(alive), model.clone(), reference=True)
