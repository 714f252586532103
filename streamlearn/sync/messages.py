"""What flows in and out of a protocol: node reports, coordinator actions, communication counts."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

__all__ = ["Report", "RequestModels", "SendModel", "PullToward", "Action", "CommStats", "Compressed", "add_stats"]


@dataclass(frozen=True, eq=False)
class Report:
    """A node's report after local step ``step`` (1-based count of mini-batch updates).

    ``n_samples`` counts the samples the node has learned since it last received a model
    (its last sync), so a lost report loses nothing. ``model`` is the node's flat model
    when the node rule said "model", else None.
    """

    node: int
    step: int
    loss: float = float("nan")
    n_samples: int = 0
    model: torch.Tensor | None = None


@dataclass(frozen=True, eq=False)
class RequestModels:
    """Ask ``nodes`` to send their current models (answered through ``Protocol.on_models``)."""

    nodes: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class Compressed:
    """How a model travels compressed: the quantised ``parts`` of ``model - base`` under ``codec``
    (:mod:`streamlearn.sync.codec`); ``base`` is the reference the delta was taken from."""

    codec: object
    parts: dict
    base: torch.Tensor


@dataclass(frozen=True, eq=False)
class SendModel:
    """Every node in ``nodes`` replaces its model with ``model``; if ``reference``, also its reference.

    ``compressed`` (None: sent whole) says how ``model`` crosses the wire; ``model`` is then
    exactly what a node reconstructs from the message. ``keep``: the nodes take the reference and
    keep their own models (the full sync of a group of one node: ``model`` is that node's own, come
    back; a node that learned on while it travelled would lose those steps).
    """

    nodes: tuple[int, ...]
    model: torch.Tensor
    reference: bool
    compressed: Compressed | None = None
    keep: bool = False


@dataclass(frozen=True, eq=False)
class PullToward:
    """Every node in ``nodes`` moves toward ``model``: ``w <- w - strength * (w - model)`` (LSGD)."""

    nodes: tuple[int, ...]
    model: torch.Tensor
    strength: float


Action = RequestModels | SendModel | PullToward


@dataclass
class CommStats:
    """Communication and sync counts of a protocol.

    Each model the coordinator receives is one transfer up; each model it sends is one
    transfer down per target node (every addressee reads the message); bytes are what each
    model message takes on the wire (:func:`streamlearn.sync.codec.message_bytes`: header and
    payload, compressed or whole). Reports are small and counted apart.
    """

    models_up: int = 0
    models_down: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    reports: int = 0
    violations: int = 0
    full_syncs: int = 0
    partial_syncs: int = 0
    pulls: int = 0
    timeouts: int = 0
    declines: int = 0  # models a guarded node did not take (streamlearn.sync.guard)

    @property
    def models(self) -> int:
        """Model transfers, up and down."""
        return self.models_up + self.models_down

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def add_stats(*stats: CommStats) -> CommStats:
    """The field-wise sum of communication counts, as a new CommStats (of the copies a wrapper runs).

    >>> add_stats(CommStats(models_up=2), CommStats(models_up=1, full_syncs=1)).as_dict()["models_up"]
    3
    """
    total = CommStats()
    for s in stats:
        for key, value in s.as_dict().items():
            setattr(total, key, getattr(total, key) + value)
    return total
