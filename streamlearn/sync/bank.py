"""The coordinator's model bank: node models, reference and per-node metadata as tensors."""

from __future__ import annotations

from typing import Iterable

import torch

from streamlearn.errors import BadRecordError, ConfigError
from streamlearn.sync.aggregate import sq_dist, weighted_mean

__all__ = ["ModelBank", "default_device"]


def default_device(device=None) -> torch.device:
    """``device`` as a torch.device; ``None`` means cuda when available, else cpu."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


class ModelBank:
    """Models received from ``m`` nodes (an m x d tensor), the reference model and node metadata.

    Parameters
    ----------
    m
        Number of node slots (rows).
    d
        Length of a flat model.
    device
        Where the tensors live; ``None`` means cuda when available, else cpu.
    dtype
        Floating dtype of the models.

    Attributes
    ----------
    W : Tensor (m, d)
        The latest model received from each node.
    have : Tensor (m,) bool
        Which rows hold a current model (received for the sync in progress).
    r : Tensor (d,)
        The reference model.
    samples : Tensor (m,) int64
        Samples each node reported having learned since its last sync.
    loss : Tensor (m,)
        Last loss each node reported (nan: none yet).
    step : Tensor (m,) int64
        Last local step each node reported.
    alive : Tensor (m,) bool
        Which nodes are part of the system now.
    version : Tensor (m,) int64
        How many models the coordinator has sent each node.

    Examples
    --------
    >>> import torch
    >>> bank = ModelBank(3, 2, device="cpu")
    >>> bank.put_many([0, 2], torch.tensor([[1.0, 0.0], [3.0, 0.0]]))
    >>> bank.divergence([0, 2]).tolist()
    [1.0, 9.0]
    >>> bank.mean([0, 2]).tolist()
    [2.0, 0.0]
    >>> bank.have.tolist()
    [True, False, True]
    """

    def __init__(self, m: int, d: int, device=None, dtype=torch.float32, n_params: int | None = None):
        self.m = int(m)
        self.d = int(d)
        self.n_params = self.d if n_params is None else int(n_params)  # divergences span these leading entries
        self.device = default_device(device)
        self.dtype = dtype
        kw = dict(device=self.device)
        self.W = torch.zeros(self.m, self.d, dtype=dtype, **kw)
        self.have = torch.zeros(self.m, dtype=torch.bool, **kw)
        self.r = torch.zeros(self.d, dtype=dtype, **kw)
        self.samples = torch.zeros(self.m, dtype=torch.int64, **kw)
        self.loss = torch.full((self.m,), float("nan"), dtype=dtype, **kw)
        self.step = torch.zeros(self.m, dtype=torch.int64, **kw)
        self.alive = torch.ones(self.m, dtype=torch.bool, **kw)
        self.version = torch.zeros(self.m, dtype=torch.int64, **kw)
        # ``alive`` and ``have`` as Python sets, kept in step incrementally by the methods below so that a
        # message costs O(1), not O(m). A write to the tensors from outside (a checkpoint load, a test)
        # bumps their version counter, and the sets are rebuilt from the tensors on the next read.
        self._alive_set: set[int] = set()
        self._have_set: set[int] = set()
        self._both: set[int] = set()  # have & alive
        self._alive_frozen: frozenset | None = None
        self._seen: tuple = (None, None, None, None)  # (alive, its version, have, its version) the sets match

    @property
    def itemsize(self) -> int:
        """Bytes per model entry."""
        return self.W.element_size()

    def _index(self, nodes) -> torch.Tensor:
        if nodes is None:
            return torch.arange(self.m, device=self.device)
        if isinstance(nodes, torch.Tensor):
            return nodes.to(self.device, torch.long)
        return torch.as_tensor(list(nodes), dtype=torch.long, device=self.device)

    def as_model(self, w) -> torch.Tensor:
        """``w`` on the bank's device and dtype, or BadRecordError when its last dimension is not d."""
        w = torch.as_tensor(w).to(self.device, self.dtype)
        if w.shape[-1:] != (self.d,):
            raise BadRecordError(f"model must have {self.d} entries", column="model", value=tuple(w.shape))
        return w

    def check_node(self, node: int) -> int:
        """``node`` as an int, or BadRecordError when it is not a slot of this bank."""
        node = int(node)
        if not 0 <= node < self.m:
            raise BadRecordError(f"node must be in [0, {self.m})", column="node", value=node)
        return node

    # ---- the masks as sets, kept incrementally ---------------------------------------------------

    def _sync_sets(self) -> None:
        """Rebuild the sets from the tensors if something else wrote to them since they were last in step."""
        a, av, h, hv = self._seen
        alive_ok = a is self.alive and av is not None and av == _version(self.alive)
        have_ok = h is self.have and hv is not None and hv == _version(self.have)
        if not alive_ok:
            self._alive_set = set(self.alive.nonzero().flatten().tolist())
            self._alive_frozen = None
        if not have_ok:
            self._have_set = set(self.have.nonzero().flatten().tolist())
        if not (alive_ok and have_ok):
            self._both = self._have_set & self._alive_set
        self._mark()

    def _mark(self) -> None:
        self._seen = (self.alive, _version(self.alive), self.have, _version(self.have))

    def alive_nodes(self) -> frozenset:
        """The alive nodes (O(1) while nobody joins or leaves: the same frozenset is handed out again).

        >>> bank = ModelBank(4, 1, device="cpu")
        >>> bank.set_alive([1, 3], False)
        >>> sorted(bank.alive_nodes()), bank.alive.tolist()
        ([0, 2], [True, False, True, False])
        """
        self._sync_sets()
        if self._alive_frozen is None:
            self._alive_frozen = frozenset(self._alive_set)
        return self._alive_frozen

    def alive_set(self) -> set[int]:
        """The alive nodes as the bank's own set (read it, never change it; O(1))."""
        self._sync_sets()
        return self._alive_set

    def have_alive(self) -> set[int]:
        """The alive nodes that hold a current model (``have & alive``), the bank's own set (read only; O(1)).

        >>> bank = ModelBank(3, 1, device="cpu")
        >>> bank.put(0, [1.0]); bank.put(2, [2.0]); bank.set_alive([2], False)
        >>> sorted(bank.have_alive())
        [0]
        """
        self._sync_sets()
        return self._both

    def set_alive(self, nodes: Iterable[int], flag: bool) -> None:
        """Mark ``nodes`` alive (``flag`` True) or gone."""
        nodes = [self.check_node(n) for n in nodes]
        if not nodes:
            return
        self._sync_sets()
        self.alive[nodes] = bool(flag)
        if flag:
            self._alive_set.update(nodes)
            self._both.update(n for n in nodes if n in self._have_set)
        else:
            self._alive_set.difference_update(nodes)
            self._both.difference_update(nodes)
        self._alive_frozen = None
        self._mark()

    def _have_added(self, nodes) -> None:
        self._have_set.update(nodes)
        self._both.update(n for n in nodes if n in self._alive_set)
        self._mark()

    def put(self, node: int, w) -> None:
        """Store node ``node``'s model ``w`` (d,)."""
        node = self.check_node(node)
        self._sync_sets()
        self.W[node] = self.as_model(w)
        self.have[node] = True
        self._have_added((node,))

    def put_many(self, nodes: Iterable[int], W) -> None:
        """Store one model per node: row ``k`` of ``W`` belongs to ``nodes[k]`` (one tensor op)."""
        idx = self._index([self.check_node(n) for n in nodes])
        W = self.as_model(W)
        if W.shape != (len(idx), self.d):
            raise BadRecordError(f"need one model row per node ({len(idx)} x {self.d})", column="W",
                                 value=tuple(W.shape))
        self._sync_sets()
        self.W[idx] = W
        self.have[idx] = True
        self._have_added(idx.tolist())

    def set_reference(self, r) -> None:
        """Replace the reference model (copied in place)."""
        self.r.copy_(self.as_model(r))

    def divergence(self, nodes=None) -> torch.Tensor:
        """Squared distance ``||w_i - r||^2`` of the given rows (all rows when ``nodes`` is None),
        over the parameters (the first ``n_params`` entries)."""
        p = self.n_params
        return sq_dist(self.W[self._index(nodes), :p], self.r[:p])

    def mean(self, nodes, weights=None) -> torch.Tensor:
        """(Weighted) mean of the models of ``nodes``.

        One (m,) x (m, d) product with zero weight outside ``nodes``: indexing the rows out first
        would copy them (256 MB for 64 models of 1M parameters) before averaging.
        """
        idx = self._index(nodes)
        if idx.numel() == 0:
            raise ConfigError("mean: no nodes given")
        if weights is None:  # ones: valid by construction, so weighted_mean's arithmetic without its checks
            full = torch.zeros(self.m, dtype=self.dtype, device=self.device).index_fill_(0, idx, 1.0)
            return (full @ self.W) / full.sum()
        w = torch.as_tensor(weights, dtype=self.dtype, device=self.device)
        if w.shape != idx.shape:
            raise ConfigError(f"weights: need shape ({idx.numel()},), got {tuple(w.shape)}")
        full = torch.zeros(self.m, dtype=self.dtype, device=self.device).index_add_(0, idx, w)
        return weighted_mean(self.W, full)

    def clear(self, nodes=None) -> None:
        """Forget the current models of ``nodes`` (all when None): they are stale once a sync is done."""
        self._sync_sets()
        if nodes is None:
            self.have[:] = False
            self._have_set.clear()
            self._both.clear()
        else:
            idx = self._index(nodes)
            self.have[idx] = False
            gone = idx.tolist()
            self._have_set.difference_update(gone)
            self._both.difference_update(gone)
        self._mark()


def _version(t: torch.Tensor) -> int | None:
    """The in-place write counter of ``t`` (None for an inference tensor, which keeps none: never trusted)."""
    try:
        return t._version
    except RuntimeError:
        return None
