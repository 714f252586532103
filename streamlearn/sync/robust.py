"""Robust aggregation: centered clipping of models far from the group, and a per-node rate limit.

A node's model ``w`` arrives with its move since the reference, ``w - r``. An honest move is about
as long as the other nodes' recent ones; a poisoned model (``-9e5 * r / |r|``, far below any
``--max-norm``) is not. Centered clipping (Karimireddy, He and Jaggi, "Learning from History for
Byzantine Robust Optimization", ICML 2021) keeps the direction of every move and bounds its length:

    w' = r + (w - r) * min(1, tau / ||w - r||)

so one model shifts an average of k by at most ``tau / k``. :class:`NormBound` sets ``tau`` from
history: ``factor`` times the median, over nodes, of each node's longest move among its last
``window`` models (each length capped at ``factor * tau``). One node cannot raise it (the median over
nodes drops the highest when there are 3 or more, and takes the lower of 2); all nodes moving further
at once (a drift) raise it by up to ``factor`` per model each, so a sudden honest drift is clipped
for a sync or two. Before ``warmup`` lengths are known there is no bound.

:class:`TokenBucket` limits the records a node id may send per second (a small burst allowed);
the excess is dropped before anything is decoded further or averaged. A node whose move was more
than :data:`SILENCE_BEYOND` times the bound is silenced for :data:`CLIP_COOLDOWN` seconds
(:meth:`TokenBucket.penalize`): one clipped model shifts one average by ``tau / k``, and a flood of
them must not do so again at every poll.

Limits: this bounds what a model from a node id can do, it does not tell who sent it. An attacker
writing as one of two nodes can lower the bound (syncs then move less, never the wrong way), and
one that keeps sending moves just under ``SILENCE_BEYOND * tau`` pushes every sync by up to
``tau / k``; signed sync records (:mod:`streamlearn.kafka.signing`) keep such writers out.

Everything here is pure (no I/O, no clock of its own): the Kafka sync service drives it now, and
the simulator can use the same objects.

Examples
--------
>>> import torch
>>> r = torch.tensor([3.0, 4.0])
>>> W = torch.stack([r + torch.tensor([0.3, 0.4]), -9e5 * r / r.norm()])   # an honest move, an attack
>>> Wc, scale = centered_clip(W, r, tau=1.0)
>>> Wc.tolist(), [round(s, 6) for s in scale.tolist()]
([[3.299999952316284, 4.400000095367432], [2.4000000953674316, 3.200000047683716]], [1.0, 1e-06])
"""

from __future__ import annotations

import math

import numpy as np
import torch

from streamlearn.errors import ConfigError

__all__ = [
    "CLIP_COOLDOWN",
    "CLIP_FACTOR",
    "CLIP_WARMUP",
    "CLIP_WINDOW",
    "REPORT_BURST",
    "REPORT_RATE",
    "SILENCE_BEYOND",
    "NormBound",
    "TokenBucket",
    "centered_clip",
    "check_clip",
    "check_rate",
    "clip_rows",
    "clip_to_references",
    "median_bound",
    "move_lengths",
]

#: Default bound: this many times the typical honest move. Honest moves vary by a few times (a sudden
#: drift, a burst of large readings; clipped, they keep their direction and the bound grows with them), a
#: poisoned one by orders of magnitude. Much larger factors let one clipped model flip a small model:
#: on the test stream ||r|| is about 4.5 violations long (delta=1).
CLIP_FACTOR = 4.0
#: Move lengths kept per node.
CLIP_WINDOW = 8
#: Lengths known (over all nodes) before the bound applies.
CLIP_WARMUP = 8
#: Default records per second and burst per node id on ``sync.up``: honest nodes at b=1 on the test
#: streams send at most 17 a second (periodic:b=1; dynamic:delta=1,b=1: 8), one per sync round trip.
REPORT_RATE = 100.0
REPORT_BURST = 100
#: Seconds a node id whose move was more than SILENCE_BEYOND times the bound may send nothing (with a rate
#: limit on): a clipped model moves an average by ``tau / k`` at most, and a flood of them would do so at
#: every poll. Honest moves clipped by less (a drift) never silence their node.
CLIP_COOLDOWN = 1.0
SILENCE_BEYOND = 10.0


def move_lengths(W: torch.Tensor, R: torch.Tensor, n_params: int | None = None) -> torch.Tensor:
    """``||w - r||`` of each row of ``W`` (k x d) from its reference (a row of ``R``, or one ``r`` for all).

    Only the first ``n_params`` entries count: the buffers after them (an online scaler's statistics)
    are in the data's units.

    Examples
    --------
    >>> import torch
    >>> move_lengths(torch.tensor([[3.0, 4.0, 100.0], [0.0, 0.0, 0.0]]), torch.zeros(3), n_params=2).tolist()
    [5.0, 0.0]
    """
    p = W.shape[-1] if n_params is None else int(n_params)
    return torch.linalg.vector_norm(W[..., :p] - R[..., :p], dim=-1)


def centered_clip(W: torch.Tensor, R: torch.Tensor, tau: float | None,
                  n_params: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Centered clipping: ``r + (w - r) * min(1, tau / ||w - r||)`` for each row of ``W`` (k x d).

    Parameters
    ----------
    W
        One model per row.
    R
        The reference of each row (k x d), or one reference (d,) for all.
    tau
        The longest move kept; None (no bound yet) or inf leaves ``W`` as it is.
    n_params
        Entries that are parameters (None: all); the buffers after them are not clipped.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        The clipped models (a new tensor) and the scale each move was multiplied by (1: unclipped).

    Examples
    --------
    >>> import torch
    >>> gen = torch.Generator().manual_seed(0)
    >>> r = torch.randn(4, generator=gen)
    >>> W = r + torch.tensor([[0.1, 0.0, 0.0, 0.0], [0.0, 0.0, 30.0, 40.0]])
    >>> Wc, scale = centered_clip(W, r, tau=5.0)
    >>> [round(s, 4) for s in scale.tolist()], round(move_lengths(Wc, r)[1].item(), 4)
    ([1.0, 0.1], 5.0)
    >>> torch.equal(Wc[0], W[0])
    True
    """
    p = W.shape[-1] if n_params is None else int(n_params)
    out = W.clone()
    if tau is None or math.isinf(tau):
        return out, torch.ones(W.shape[:-1], dtype=W.dtype, device=W.device)
    R = R.to(W.device, W.dtype)
    move = W[..., :p] - R[..., :p]
    # tau / 0 is inf: min(1, inf) = 1, a model at its reference stays
    scale = torch.clamp(tau / torch.linalg.vector_norm(move, dim=-1), max=1.0)
    far = scale < 1.0  # the others stay as they are (r + (w - r) need not round back to w)
    out[far, :p] = R.expand_as(W)[far, :p] + move[far] * scale[far].unsqueeze(-1)
    return out, scale


def median_bound(lengths, factor: float) -> float:
    """``factor`` times the median over nodes of each node's longest recent move (NaN: not known).

    ``lengths`` (a tensor or array) is nodes x window, NaN where nothing is known. A node's longest move
    is its typical large one (under dynamic averaging a violation, ``>= sqrt(delta)``; the models a sync
    requests move less). The median over nodes is the lower median (as :func:`torch.median`), so of two nodes the smaller
    counts, and one node out of three or more cannot raise the bound. NaN when nothing is known.

    Examples
    --------
    >>> import torch
    >>> nan = float("nan")
    >>> L = torch.tensor([[1.0, 2.0, 3.0], [9e5, 9e5, 9e5], [2.0, 2.5, nan], [nan, nan, nan]])
    >>> median_bound(L, 4.0)          # nodes' longest 3, 9e5 and 2.5: the median over nodes is 3
    12.0
    >>> median_bound(L[1:2], 4.0), math.isnan(median_bound(L[3:], 4.0))
    (3600000.0, True)
    """
    return _lower_median_bound(np.fmax.reduce(np.asarray(lengths, dtype=np.float32), axis=-1), factor)


def _lower_median_bound(longest: np.ndarray, factor: float) -> float:
    """``factor`` times the lower median of the known (not NaN) ``longest`` moves, in float32 as the lengths."""
    known = longest[~np.isnan(longest)]
    if known.size == 0:
        return float("nan")
    k = (known.size - 1) // 2
    return float(np.float32(factor) * np.partition(known, k)[k])


class NormBound:
    """The bound ``tau`` of centered clipping, from the recent move lengths of each node.

    Parameters
    ----------
    m
        Node slots (node ids ``0..m-1``).
    factor
        ``tau`` is ``factor`` times the nodes' typical long move (see :func:`median_bound`); None: no clipping.
    window
        Move lengths kept per node (the last ones, capped at ``factor * tau``).
    warmup
        Lengths known over all nodes before ``tau`` applies.

    Examples
    --------
    >>> import torch
    >>> gen = torch.Generator().manual_seed(1)
    >>> bound = NormBound(m=2, factor=10.0, warmup=4)
    >>> r = torch.zeros(3)
    >>> for _ in range(2):                    # honest moves of length ~1 from both nodes
    ...     W = r + torch.nn.functional.normalize(torch.randn(2, 3, generator=gen), dim=-1)
    ...     _ = bound.clip([0, 1], W, r)
    >>> round(bound.tau, 3)
    10.0
    >>> Wc, scale = bound.clip([0], torch.tensor([[-9e5, 0.0, 0.0]]), r)
    >>> [round(v, 3) for v in Wc[0].tolist()], scale.tolist() < [1.0 / SILENCE_BEYOND], bound.clipped
    ([-10.0, 0.0, 0.0], True, 1)
    """

    def __init__(self, m: int, factor: float | None = CLIP_FACTOR, window: int = CLIP_WINDOW,
                 warmup: int = CLIP_WARMUP):
        self.m = int(m)
        self.factor = check_clip(factor)
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ConfigError(f"clip window must be an integer >= 1, got {window!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ConfigError(f"clip warmup must be an integer >= 0, got {warmup!r}")
        self.window, self.warmup = window, warmup
        # numpy, not torch: a few nodes' lengths per sync, where a torch op's overhead is the whole cost
        self.lengths = np.full((self.m, window), np.nan, dtype=np.float32)  # node x ring of lengths
        self._longest = np.full(self.m, np.nan, dtype=np.float32)  # each node's longest in its ring
        self._at = [0] * self.m  # next slot of each node's ring
        self.seen = 0      # lengths noted
        self.clipped = 0   # models clipped
        self.tau: float | None = None

    def _update_tau(self) -> None:
        if self.factor is None or self.seen < self.warmup:
            self.tau = None
            return
        tau = _lower_median_bound(self._longest, self.factor)
        self.tau = None if math.isnan(tau) else tau

    def clip(self, nodes, W: torch.Tensor, R: torch.Tensor,
             n_params: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip the models ``W`` (k x d) of ``nodes`` around their references ``R`` with the current ``tau``,
        then note their lengths, capped at ``factor * tau`` (one batch: all take the bound from before it).

        Returns the clipped models and the scale of each row's move (1: not clipped; see :func:`centered_clip`).
        """
        p = W.shape[-1] if n_params is None else int(n_params)
        R = R.to(W.device, W.dtype)
        move = W[..., :p] - R[..., :p]
        scale = self._scales(nodes, torch.linalg.vector_norm(move, dim=-1))
        out = W.clone()
        if scale is None:
            return out, torch.ones(W.shape[:-1], dtype=W.dtype, device=W.device)
        far = scale < 1.0
        out[far, :p] = R.expand_as(W)[far, :p] + move[far] * scale[far].unsqueeze(-1)
        return out, scale

    def _scales(self, nodes, length: torch.Tensor) -> torch.Tensor | None:
        """The scale of each move of ``length`` under the bound from before this batch (None: every one is
        within it, the usual case, told from the lengths as floats without another tensor op), then the
        lengths noted, capped at ``factor * tau``."""
        tau, lengths = self.tau, length.reshape(-1).tolist()
        scale = None
        if tau is not None and not math.isinf(tau):
            # Below this, tau / length rounds to more than 1 in float32 too: scale 1. Else (and for NaN) torch decides.
            near = tau * (1.0 - 1e-6)
            if not all(x < near for x in lengths):
                scale = torch.clamp(tau / length, max=1.0)
                k = int((scale < 1.0).sum())
                self.clipped += k
                scale = scale if k else None
            cap = self.factor * tau  # a drift raises the bound fast; one node's 9e5 does not own its ring either
            lengths = [min(x, cap) for x in lengths]
        self._note(nodes, lengths)
        return scale

    def note(self, nodes, lengths: torch.Tensor) -> None:
        """Remember the move ``lengths`` of ``nodes`` (one per node). Ids outside ``0..m-1`` are ignored, and so
        are models at their reference (length 0: a node that has not learned since says nothing of the scale)."""
        self._note(nodes, torch.as_tensor(lengths, dtype=torch.float32).detach().cpu().reshape(-1).tolist())

    def _note(self, nodes, lengths: list) -> None:
        touched = set()
        for node, length in zip(nodes, lengths):
            if 0 <= node < self.m and math.isfinite(length) and length > 0:
                at = self._at[node]
                self.lengths[node, at] = length
                self._at[node] = (at + 1) % self.window
                self.seen += 1
                touched.add(node)
        if touched:
            rows = list(touched)
            self._longest[rows] = np.fmax.reduce(self.lengths[rows], axis=-1)
        self._update_tau()

    def forget(self, node: int) -> None:
        """Drop what is known of ``node`` (it left: its id may come back as another node)."""
        if 0 <= node < self.m:
            self.lengths[node] = np.nan
            self._longest[node] = np.nan
            self._at[node] = 0
            self._update_tau()


def clip_to_references(bound: NormBound, protocol, items: list) -> tuple[list, list, torch.Tensor]:
    """The models of ``items`` (``(node, model or None)``, as they arrived) clipped around their nodes'
    references in ``protocol`` (each node's group's, under groups or shards), one batch of ``bound``.

    What the sync service and the simulator both do to the models that come up. Returns the models (a
    clipped one is a copy; a lean one, without buffers, stays lean, and buffers are never clipped), the
    nodes that sent one, and the scale of each of their moves (1: not clipped).
    """
    out = [w for _, w in items]
    at = [i for i, w in enumerate(out) if w is not None]
    if bound.factor is None or not at:
        return out, [], torch.ones(0)
    n = protocol.n_params
    nodes = [items[i][0] for i in at]
    R, move, scale = _moves(bound, protocol, nodes, torch.stack([out[i][:n] for i in at]))
    if scale is None:  # nothing clipped: no copies
        return out, nodes, torch.ones(len(nodes))
    for j in torch.nonzero(scale < 1.0).flatten().tolist():
        i = at[j]
        out[i] = out[i].clone()
        out[i][:n] = (R[j] + move[j] * scale[j]).to(out[i].device, out[i].dtype)
    return out, nodes, scale


def clip_rows(bound: NormBound, protocol, nodes: list, rows: torch.Tensor) -> torch.Tensor:
    """:func:`clip_to_references` for whole models stacked as ``rows`` (one per node of ``nodes``): the same
    batch of ``bound`` and the same arithmetic per row, without a tensor per model (the simulator's rounds).
    Returns ``rows`` itself when nothing is clipped, else a copy with the clipped rows replaced."""
    if bound.factor is None or not nodes:
        return rows
    n = protocol.n_params
    R, move, scale = _moves(bound, protocol, nodes, rows[:, :n])
    if scale is None:
        return rows
    far = torch.nonzero(scale < 1.0).flatten()
    rows = rows.clone()
    rows[far, :n] = (R[far] + move[far] * scale[far].unsqueeze(-1)).to(rows.device, rows.dtype)
    return rows


def _moves(bound: NormBound, protocol, nodes: list, params: torch.Tensor) -> tuple:
    """``(R, move, scale)``: each node's reference, the move of its ``params`` (k x n_params) from it, and the
    moves' scales under ``bound`` (None: none clipped), the batch's lengths noted in the bound."""
    R = _node_references(protocol, nodes)
    move = params.to(R.device, R.dtype) - R
    return R, move, bound._scales(nodes, torch.linalg.vector_norm(move, dim=-1))


def _node_references(protocol, nodes: list) -> torch.Tensor:
    """The parameters of each node's reference (its group's under groups or shards), one row per node."""
    n, refs = protocol.n_params, protocol.references
    if len(refs) <= 1:  # one group: no O(m) table of groups per batch
        return protocol.reference[:n].expand(len(nodes), n)
    groups = protocol.node_groups
    return torch.stack([refs.get(groups.get(node, 0), protocol.reference)[:n] for node in nodes])


class TokenBucket:
    """A token bucket per key: ``rate`` tokens a second, at most ``burst`` kept; a record takes one.

    The caller gives the clock (``now``, seconds, monotonic), so it is deterministic to test.

    Examples
    --------
    >>> tb = TokenBucket(rate=2.0, burst=3)
    >>> [tb.allow(0, now=0.0) for _ in range(5)]        # the burst, then refused
    [True, True, True, False, False]
    >>> tb.allow(0, now=0.5), tb.allow(0, now=0.5), tb.allow(1, now=0.5)   # one token back; node 1 is apart
    (True, False, True)
    >>> tb.refused
    3
    >>> tb.penalize(1, seconds=1.0, now=0.5)           # node 1 silenced for a second
    >>> tb.allow(1, now=1.4), tb.allow(1, now=2.0)
    (False, True)
    """

    def __init__(self, rate: float | None = REPORT_RATE, burst: int = REPORT_BURST):
        self.rate, self.burst = check_rate(rate, burst)
        self._tokens: dict = {}  # key -> (tokens, time of the last refill)
        self.refused = 0

    def allow(self, key, now: float) -> bool:
        """Whether a record of ``key`` may pass at ``now`` (it takes a token), else counted in ``refused``."""
        if self.rate is None:
            return True
        tokens, last = self._tokens.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0.0, now - last) * self.rate)
        ok = tokens >= 1.0
        self._tokens[key] = (tokens - 1.0 if ok else tokens, now)
        self.refused += not ok
        return ok

    def penalize(self, key, seconds: float, now: float) -> None:
        """No record of ``key`` passes for ``seconds`` from ``now`` (a debt of ``rate * seconds`` tokens); then
        the bucket refills as usual. No effect without a rate."""
        if self.rate is not None:
            self._tokens[key] = (min(0.0, self._tokens.get(key, (0.0, now))[0]) - self.rate * seconds + 1.0, now)


def _none(value) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in ("none", "off"))


def check_clip(factor) -> float | None:
    """The clip factor validated: None (or ``"none"``/``"off"``: no clipping) or a finite number >= 1.

    >>> check_clip("10"), check_clip("none")
    (10.0, None)
    >>> check_clip(0.5)
    Traceback (most recent call last):
    ...
    streamlearn.errors.ConfigError: clip must be a number >= 1 (times the nodes' typical long move) or none, got 0.5
    """
    if _none(factor):
        return None
    try:
        value = float(factor) if not isinstance(factor, bool) else math.nan
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value < 1.0:
        raise ConfigError(f"clip must be a number >= 1 (times the nodes' typical long move) or none, got {factor!r}")
    return value


def check_rate(rate, burst) -> tuple[float | None, int]:
    """``(rate, burst)`` validated: rate None (``"none"``: no limit) or a finite number > 0; burst an int >= 1.

    >>> check_rate("50", "20"), check_rate("none", 1)
    ((50.0, 20), (None, 1))
    >>> check_rate(-1, 5)
    Traceback (most recent call last):
    ...
    streamlearn.errors.ConfigError: max_reports_per_second must be a number > 0 or none, got -1
    """
    if _none(rate):
        rate = None
    else:
        try:
            value = float(rate) if not isinstance(rate, bool) else math.nan
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"max_reports_per_second must be a number > 0 or none, got {rate!r}")
        rate = value
    try:
        b = int(burst) if not isinstance(burst, bool) and float(burst) == int(float(burst)) else 0
    except (TypeError, ValueError, OverflowError):
        b = 0
    if b < 1:
        raise ConfigError(f"report_burst must be an integer >= 1, got {burst!r}")
    return rate, b
