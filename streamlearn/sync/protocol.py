"""The protocol base class: a pure, transport-agnostic state machine driven by node events.

A protocol never sleeps and never does I/O. It receives events (reports, models that
arrived, joins, leaves, timeouts) and answers with actions (request models, send a model,
pull toward a model). The vectorized simulator and the Kafka sync service drive the same
objects, in lockstep rounds or one message at a time.

Shared rules, whatever the protocol:

- Only alive nodes are ever targeted or waited on; a node that leaves is dropped from
  the sync in progress, which then finishes without it.
- ``on_timeout(node)`` gives up on an awaited model (or, for round-based protocols, an
  awaited report): the sync in progress finishes without that node. A late model from it
  is counted as a transfer but not used.
- A full sync (one that sets the reference) is sent to every alive node, also to nodes
  given up on, so that all nodes share one reference afterwards.
- ``Report.n_samples`` is the count since the node's last sync; the bank keeps the latest.
"""

from __future__ import annotations

import inspect
from typing import Iterable

import numpy as np
import torch

from streamlearn.errors import ConfigError
from streamlearn.sync.aggregate import server_step
from streamlearn.sync.bank import ModelBank
from streamlearn.sync.codec import FP32_HEADER_BYTES, Downlink, make_codec, message_bytes
from streamlearn.sync.messages import Action, CommStats, Compressed, PullToward, Report, RequestModels, SendModel

__all__ = ["Protocol", "RoundProtocol", "NONE", "REPORT", "MODEL", "KINDS", "SYNC_PARAMS", "drop_none", "every",
           "int_param", "float_param"]

# Codes of the node rule, for the batched node_rule_many.
NONE, REPORT, MODEL = 0, 1, 2
KINDS = (None, "report", "model")

#: Settings of every protocol that averages (spec keys): the server step at full syncs and the codec
#: models travel in (see :class:`Protocol`).
SYNC_PARAMS: dict[str, type] = {"server_lr": float, "server_momentum": float, "codec": str, "buffers_every": int}


class Protocol:
    """Base class of every sync protocol (see the module docstring for the shared rules).

    Parameters
    ----------
    m
        Number of node slots.
    d
        Length of a flat model.
    w0
        The common initial model, the first reference (zeros when None).
    seed
        Seed of the protocol's random choices.
    initial_nodes
        Nodes present from the start (all ``m`` when None); the others join later.
    device
        Where the model bank lives; ``None`` means cuda when available, else cpu.
    dtype
        Floating dtype of the models.
    n_params
        How many leading entries of a model are trainable parameters (None: all ``d``).
        Divergences ``||w - r||^2`` span them only; the entries after them are buffers (an
        online scaler's statistics) that every sync averages along with the parameters.
    server_lr, server_momentum
        The server step of a full sync (:func:`~streamlearn.sync.aggregate.server_step`): the new
        reference is ``r + server_lr * v`` with ``v = server_momentum * v + mean(w_i - r)``.
        ``server_lr = 1`` without momentum is plain averaging. Partial syncs (dynamic
        averaging's balancing of a subset) stay plain means, so they keep the global mean.
    codec
        How models cross the wire (:mod:`streamlearn.sync.codec`): ``fp32`` sends whole models;
        ``fp16``, ``int8``, ``sign`` and ``top<percent>`` send the delta to the reference,
        with error feedback at both ends (the nodes' memories are theirs; the coordinator keeps
        one for the full syncs it broadcasts). A joining node gets the reference whole.
    buffers_every
        With a compressed codec: the buffers after the parameters (an online scaler's statistics,
        float32, often larger than a compressed delta) travel with every ``buffers_every``-th model
        a node sends and every ``buffers_every``-th full sync only (default 1: always). A model
        without them is ``n_params`` long: the coordinator takes its reference's buffers for it, a
        node keeps its own; a full sync without them leaves the reference's buffers as they were.
    """

    name = "protocol"
    #: Hyperparameters a spec string may set, with their types.
    params: dict[str, type] = {}

    def __init__(self, m: int, d: int, *, w0=None, seed: int | None = None,
                 initial_nodes: Iterable[int] | None = None, device=None, dtype=torch.float32,
                 n_params: int | None = None, server_lr: float = 1.0, server_momentum: float = 0.0,
                 codec="fp32", buffers_every: int = 1):
        if int(m) < 1 or int(d) < 1:
            raise ConfigError(f"m and d must be >= 1, got m={m!r}, d={d!r}")
        self.m = int(m)
        self.d = int(d)
        self.n_params = self.d if n_params is None else int_param("n_params", n_params)
        if self.n_params > self.d:
            raise ConfigError(f"n_params must be <= d={self.d}, got {n_params!r}")
        self.w0 = w0
        self.seed = seed
        self.initial_nodes = initial_nodes
        self.device = device
        self.dtype = dtype
        self.bank = ModelBank(self.m, self.d, device=device, dtype=dtype, n_params=self.n_params)
        if w0 is not None:
            self.bank.set_reference(w0)
        if initial_nodes is not None:
            self.bank.alive[:] = False
            self.bank.alive[[self.bank.check_node(n) for n in initial_nodes]] = True
        self.stats = CommStats()
        self._rng = np.random.default_rng(seed)
        self._pending: set[int] = set()   # models requested and not yet arrived
        self._excluded: set[int] = set()  # nodes given up on in the sync in progress
        self.server_lr = float_param("server_lr", server_lr, 0.0, 100.0, low_open=True)
        self.server_momentum = float_param("server_momentum", server_momentum, 0.0, 0.999)
        self.codec = make_codec(codec)
        self.buffers_every = int_param("buffers_every", buffers_every)
        if self.buffers_every > 1 and self.codec.dense:
            raise ConfigError(f"buffers_every={buffers_every} needs a compressed codec (codec=sign, int8, ...): "
                              f"fp32 sends whole models")
        self._full_sends = 0  # full syncs sent (every buffers_every-th carries the buffers)
        self._velocity: torch.Tensor | None = None  # server momentum
        self._downlink = None if self.codec.dense else Downlink(self.codec, self.d, self.n_params,
                                                                device=self.bank.device)
        self._dense_bytes = FP32_HEADER_BYTES + self.d * self.bank.itemsize
        self._msg_bytes = self._dense_bytes if self.codec.dense else message_bytes(self.codec, self.d, self.n_params)
        #: models each node declined (guarded averaging)
        self.declined = torch.zeros(self.m, dtype=torch.int64)
        self._lean_bytes = message_bytes(self.codec, self.d, self.n_params, buffers=False)

    # ---- node side -------------------------------------------------------------------------

    def node_rule_many(self, step, divergence) -> torch.Tensor:
        """Batched node rule: a code per node (NONE, REPORT or MODEL) from steps and divergences."""
        return torch.zeros_like(torch.as_tensor(divergence), dtype=torch.int8)

    def node_rule(self, node: int, step: int, divergence: float) -> str | None:
        """What node ``node`` sends after local update ``step`` (1-based): None, "report" or "model".

        The scalar form of :meth:`node_rule_many`, which defines the rule. A node calls this after
        every mini-batch, so subclasses override it with the same rule on plain Python numbers
        (tensors for one scalar cost tens of microseconds); a test checks both agree.
        """
        code = self.node_rule_many(torch.tensor([int(step)]), torch.tensor([float(divergence)]))
        return KINDS[int(code[0])]

    @property
    def check_every(self) -> int:
        """Local steps between two checks of the node rule: at steps that are not a multiple of it the
        rule answers None whatever the divergence, so a node computes ``||w - r||^2`` only then."""
        return 1

    @property
    def divergence_threshold(self) -> float | None:
        """A bound t: at any step, the node rule answers None for a node whose divergence ``||w - r||^2`` is
        <= t (None: no such bound, the rule may answer whatever the divergence). A driver that holds many
        nodes (the simulator's grid) consults the protocol only when some divergence exceeds it."""
        return None

    # ---- coordinator side: state -----------------------------------------------------------

    @property
    def alive(self) -> frozenset[int]:
        """Nodes currently part of the system (kept by the bank as nodes join and leave: O(1) per call)."""
        return self.bank.alive_nodes()

    @property
    def pending(self) -> set[int]:
        """Nodes whose model is awaited."""
        return set(self._pending)

    @property
    def waiting_reports(self) -> set[int]:
        """Nodes whose report is awaited (round-based protocols); ``on_timeout`` gives up on them too."""
        return set()

    @property
    def reference(self) -> torch.Tensor:
        """The current reference model r (do not modify it)."""
        return self.bank.r

    @property
    def node_groups(self) -> dict[int, int]:
        """The group of every alive node: all in group 0 (see :mod:`streamlearn.sync.groups`)."""
        return {n: 0 for n in sorted(self.alive)}

    @property
    def group_changes(self) -> dict[str, int]:
        """Group changes by kind (split, join, merge): none here."""
        return {"split": 0, "join": 0, "merge": 0}

    @property
    def references(self) -> dict[int, torch.Tensor]:
        """The reference of every group: here only the whole's."""
        return {0: self.bank.r}

    def get_state(self) -> dict:
        """What the coordinator keeps besides the model bank and ``stats``, as plain JSON (its random
        generator, full syncs sent; dynamic averaging adds its violation counter). See :meth:`set_state`."""
        return {"rng": self._rng.bit_generator.state, "full_sends": self._full_sends}

    def set_state(self, state: dict) -> None:
        """Load what :meth:`get_state` returned (keys it does not know are ignored)."""
        if state.get("rng") is not None:
            self._rng.bit_generator.state = state["rng"]
        if isinstance(state.get("full_sends"), int):
            self._full_sends = int(state["full_sends"])

    def get_arrays(self) -> dict[str, torch.Tensor]:
        """State tensors besides the bank: the server momentum and the downlink's error-feedback memory."""
        out = {}
        if self._velocity is not None:
            out["server_velocity"] = self._velocity.detach().cpu()
        if self._downlink is not None and self._downlink.memory is not None:
            out["downlink_memory"] = self._downlink.memory[0].detach().cpu()
        return out

    def set_arrays(self, arrays) -> None:
        """Load what :meth:`get_arrays` returned (missing keys keep their fresh state)."""
        dev = self.bank.device
        if arrays.get("server_velocity") is not None and self.server_momentum:
            self._velocity = self._state_vector(arrays["server_velocity"], "server_velocity").to(dev)
        if arrays.get("downlink_memory") is not None and self._downlink is not None:
            self._downlink.memory[0] = self._state_vector(arrays["downlink_memory"], "downlink_memory").to(dev)

    def _state_vector(self, v, name: str) -> torch.Tensor:
        v = torch.as_tensor(np.asarray(v, dtype=np.float32))
        if v.shape != (self.n_params,) or not bool(torch.isfinite(v).all()):
            raise ConfigError(f"{name}: need a finite vector of {self.n_params} entries, got shape {tuple(v.shape)}")
        return v

    # ---- coordinator side: events ----------------------------------------------------------

    def on_join(self, node: int) -> list[Action]:
        """Node ``node`` joins (or rejoins): it gets the current reference as model and reference.

        A rejoining node is dropped from the sync in progress (it restarted and will not answer).
        """
        node = self.bank.check_node(node)
        self.bank.set_alive((node,), True)
        self.bank.clear((node,))
        self.bank.samples[node] = 0
        self.bank.loss[node] = float("nan")
        self._excluded.discard(node)
        # A rejoining node restarted: it will not answer an earlier request.
        self._pending.discard(node)
        self._forget(node)
        return drop_none([self._send((node,), self.bank.r.clone(), reference=True, exact=True)] + self._advance())

    def on_leave(self, node: int) -> list[Action]:
        """Node ``node`` left: never wait on it again; a sync in progress finishes without it."""
        node = self.bank.check_node(node)
        if not bool(self.bank.alive[node]):
            return []
        self.bank.set_alive((node,), False)
        self.bank.clear((node,))
        self._pending.discard(node)
        self._excluded.discard(node)
        self._forget(node)
        return self._advance()

    def on_timeout(self, node: int) -> list[Action]:
        """An awaited model (or report) of ``node`` did not come: finish the sync without it."""
        node = self.bank.check_node(node)
        if node not in self.pending and node not in self.waiting_reports:
            return []
        self.stats.timeouts += 1
        self._pending.discard(node)
        self._excluded.add(node)
        self._forget(node)
        return self._advance()

    def on_reports(self, reports: Iterable[Report]) -> list[Action]:
        """A batch of reports delivered together; models in them go to the bank (1 transfer up each).

        Reports of nodes that are not alive are ignored (their models are still counted); of
        several reports of one node in a batch, the last one counts.
        """
        reports = list(reports)
        # Check every report first, so a bad one changes nothing.
        senders = [rep for rep in reports if rep.model is not None]
        models, whole = self._upload_many([rep.model for rep in senders])
        row_of = {id(rep): k for k, rep in enumerate(senders)}
        for rep in reports:
            self.bank.check_node(rep.node)
        self.stats.reports += len(reports)
        self._count_up(whole)
        alive = self.bank.alive_set()  # a set lookup, not a tensor read per report
        latest = {int(rep.node): rep for rep in reports if int(rep.node) in alive}
        accepted = list(latest.values())  # one report per node: its last in the batch
        if not accepted:
            return []
        dev = self.bank.device
        nodes = torch.tensor(list(latest), device=dev)  # one index for the three writes
        self.bank.step[nodes] = torch.tensor([int(rep.step) for rep in accepted], device=dev)
        self.bank.samples[nodes] = torch.tensor([int(rep.n_samples) for rep in accepted], device=dev)
        self.bank.loss[nodes] = torch.tensor([float(rep.loss) for rep in accepted], dtype=self.bank.dtype, device=dev)
        got = [node for node, rep in latest.items() if rep.model is not None]
        if got:
            self.bank.put_many(got, models[[row_of[id(latest[n])] for n in got]])
            self._pending.difference_update(got)
            self._excluded.difference_update(got)  # a node that sends its model is back in the sync
        return self._on_reports(accepted)

    def on_models(self, models: dict[int, torch.Tensor]) -> list[Action]:
        """Requested models arrived (1 transfer up each); models nobody awaits are counted, not used."""
        models = {int(n): w for n, w in models.items()}
        uploads, whole = self._upload_many(list(models.values()))
        self._count_up(whole)
        awaited = self.pending
        at = {n: k for k, n in enumerate(models)}  # node -> its row of uploads
        used = sorted(n for n in at if n in awaited)
        if not used:
            return []
        self.bank.put_many(used, uploads[[at[n] for n in used]])
        self._pending.difference_update(used)
        return self._advance()

    def on_declined(self, nodes: Iterable[int]) -> list[Action]:
        """Guarded nodes did not take the model they were sent (:mod:`streamlearn.sync.guard`): counted.

        They took its reference all the same, so the protocol's state stays as it is.
        """
        nodes = [self.bank.check_node(n) for n in nodes]
        self.stats.declines += len(nodes)
        self.declined[nodes] += 1
        return []

    # ---- hooks for subclasses --------------------------------------------------------------

    def _on_reports(self, reports: list[Report]) -> list[Action]:
        return self._advance()

    def _advance(self) -> list[Action]:
        """Move the sync in progress on as far as the received models allow."""
        return []

    def _forget(self, node: int) -> None:
        """Drop ``node`` (left or given up on) from the sync in progress."""

    # ---- helpers ---------------------------------------------------------------------------

    def _alive_list(self) -> list[int]:
        return self.bank.alive.nonzero().flatten().tolist()

    def _upload(self, w) -> tuple[torch.Tensor, bool]:
        """A model that arrived, as a whole model, and whether it came whole: one of ``n_params`` entries
        (sent without its buffers, ``buffers_every``) takes the reference's buffers."""
        w = torch.as_tensor(w)
        p = self.n_params
        if p < self.d and w.shape == (p,):
            return torch.cat([w.to(self.bank.device, self.bank.dtype), self.bank.r[p:]]), False
        return self.bank.as_model(w), True

    def _upload_many(self, ws: list) -> tuple[torch.Tensor | None, list[bool]]:
        """The models that arrived, as :meth:`_upload` takes each, stacked (k x d), and whether each came whole.

        Whole models that are tensors of one shape, dtype and device (a simulator's round, a poll of reports)
        take one stack and one conversion; others go one by one, so a bad one raises as it would alone.
        """
        if not ws:
            return None, []
        if all(isinstance(w, torch.Tensor) for w in ws) and len({(w.shape, w.dtype, w.device) for w in ws}) == 1 \
                and ws[0].shape == (self.d,):
            return self.bank.as_model(torch.stack(ws)), [True] * len(ws)
        ups = [self._upload(w) for w in ws]
        return torch.stack([w for w, _ in ups]), [whole for _, whole in ups]

    def _count_up(self, whole: list[bool]) -> None:
        self.stats.models_up += len(whole)
        self.stats.bytes_up += sum(self._msg_bytes if w else self._lean_bytes for w in whole)

    def _count_down(self, n: int, dense: bool = False, buffers: bool = True) -> None:
        self.stats.models_down += n
        self.stats.bytes_down += n * (self._dense_bytes if dense else (self._msg_bytes if buffers else self._lean_bytes))

    def _targets(self, nodes) -> tuple[int, ...]:
        alive = self.bank.alive_set()  # a set lookup per node: a full sync costs O(m), not m tensor reads
        return tuple(sorted(n for n in {int(n) for n in nodes} if n in alive))

    def _send(self, nodes, model: torch.Tensor, reference: bool, exact: bool = False) -> SendModel | None:
        """Send ``model`` to ``nodes``; a full sync (``reference``) takes the server step first, and
        unless ``exact`` (a joining node's reference) the model travels under the codec."""
        nodes = self._targets(nodes)
        if not nodes:
            return None
        compressed = None
        buffers = True
        if not exact:
            if reference:
                model, self._velocity = server_step(self.bank.r, model, self.server_lr, self.server_momentum,
                                                    self._velocity, self.n_params)
            if self._downlink is not None:
                base = self.bank.r.clone()
                model, parts = self._downlink.send(model, base, memory=reference)
                compressed = Compressed(self.codec, parts, base)
            if self.buffers_every > 1:
                buffers = reference and self._full_sends % self.buffers_every == 0
                if not buffers:
                    model = model[: self.n_params]  # nodes keep their own buffers
            self._full_sends += reference
        self._count_down(len(nodes), dense=exact or self._downlink is None, buffers=buffers)
        idx = self.bank._index(nodes)
        self.bank.version[idx] += 1
        self.bank.samples[idx] = 0
        if reference:
            if buffers:
                self.bank.set_reference(model)
            else:
                self.bank.r[: self.n_params].copy_(model)
        return SendModel(nodes, model, reference, compressed)

    def _pull(self, nodes, model: torch.Tensor, strength: float) -> PullToward | None:
        nodes = self._targets(nodes)
        if not nodes:
            return None
        self._count_down(len(nodes), dense=True)
        self.bank.version[list(nodes)] += 1
        return PullToward(nodes, model, float(strength))

    def _request(self, nodes) -> RequestModels | None:
        nodes = tuple(n for n in self._targets(nodes) if n not in self._pending)
        if not nodes:
            return None
        self._pending.update(nodes)
        return RequestModels(nodes)

    def _end_sync(self) -> None:
        self._excluded.clear()
        self.bank.clear()

    # ---- river-style conveniences ----------------------------------------------------------

    def clone(self, **changes) -> "Protocol":
        """A fresh protocol with the same hyperparameters (no state), but for the constructor arguments
        in ``changes`` (``seed``, ``w0``, ``initial_nodes``, ...)."""
        names = list(inspect.signature(type(self).__init__).parameters)[1:]
        return type(self)(**{**{name: getattr(self, name) for name in names}, **changes})

    def __repr__(self) -> str:
        hyper = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.params)
        return f"{type(self).__name__}(m={self.m}, d={self.d}{', ' if hyper else ''}{hyper})"


class RoundProtocol(Protocol):
    """A protocol that works in report rounds (FedAvg, LSGD): a round acts once every alive node
    reported; reports that arrive while the round's models are awaited count for the next round.

    Subclasses set ``_round_busy`` (models of the round are awaited) and start the next round
    with ``self._reported, self._next = self._next, set()``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._reported: set[int] = set()
        self._next: set[int] = set()  # reports for the next round, while the round's models are awaited

    @property
    def _round_busy(self) -> bool:
        raise NotImplementedError

    @property
    def waiting_reports(self) -> set[int]:
        if self._round_busy or not (self._reported & self.alive):
            return set()
        return set(self.alive) - self._reported - self._excluded

    def _on_reports(self, reports: list[Report]) -> list[Action]:
        nodes = {rep.node for rep in reports}
        if self._round_busy:
            self._next |= nodes
        else:
            self._reported |= nodes
        return self._advance()

    def _forget(self, node: int) -> None:
        self._reported.discard(node)
        self._next.discard(node)


def every(step, period: int, like: torch.Tensor, code: int) -> torch.Tensor:
    """Node-rule codes: ``code`` where ``step % period == 0``, NONE elsewhere, shaped like ``like``."""
    like = torch.as_tensor(like)
    due = torch.as_tensor(step, device=like.device) % period == 0
    return torch.where(torch.broadcast_to(due, like.shape), code, NONE).to(torch.int8)


def drop_none(actions: Iterable[Action | None]) -> list[Action]:
    """The actions that are not None (helpers return None when a send has no target)."""
    return [a for a in actions if a is not None]


def int_param(name: str, value, low: int = 1) -> int:
    """``value`` as an int >= ``low``, or ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def float_param(name: str, value, low: float, high: float = float("inf"), low_open: bool = False) -> float:
    """``value`` as a finite float in [low, high] ((low, high] when ``low_open``), or ConfigError."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not np.isfinite(v) or v > high or v < low or (low_open and v == low):
        interval = f"{'(' if low_open else '['}{low}, {high}]"
        raise ConfigError(f"{name} must be in {interval}, got {value!r}")
    return v
