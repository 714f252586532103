"""The protocol's actions as the sync service's ``sync.down`` messages (no I/O here).

``RequestModels`` becomes one ``request`` (numbered), ``SendModel`` one ``send`` (the model
whole, or the delta the protocol compressed) and ``PullToward`` one ``pull`` carrying the target
list; see :mod:`streamlearn.kafka.sync_service`. Kept apart from the service so that what goes
on the wire is written in one place; sending, counting and saving state stay with the service.
"""

from __future__ import annotations

from collections.abc import Iterator

from streamlearn.kafka.wire import SyncMessage
from streamlearn.sync.codec import pack_delta
from streamlearn.sync.messages import PullToward, RequestModels, SendModel

__all__ = ["ActionWriter", "answers_join", "is_full_sync"]


def join_targets(joining) -> tuple:
    """The nodes a join answer goes to: ``joining`` is one node id, several (the joins of one poll answered
    with one message), or None."""
    if joining is None:
        return ()
    return (int(joining),) if isinstance(joining, int) else tuple(joining)


def answers_join(i: int, action, joining) -> bool:
    """Whether ``action``, the ``i``-th of an ``on_join``'s answer, is the reference for the joining node(s)
    (on_join answers the joining node first, with the reference)."""
    return i == 0 and joining is not None and isinstance(action, SendModel) and \
        tuple(action.nodes) == join_targets(joining)


def is_full_sync(actions: list, joining) -> bool:
    """Whether ``actions`` send a new reference to the nodes (not only the current one to a joining node)."""
    return any(isinstance(a, SendModel) and a.reference and not answers_join(i, a, joining)
               for i, a in enumerate(actions))


class ActionWriter:
    """Writes protocol actions as ``sync.down`` messages of one service epoch, numbering the requests."""

    def __init__(self, epoch: str):
        self.epoch = epoch
        self.request_id = 0

    def messages(self, actions: list, n_params: int, joining=None) -> Iterator[SyncMessage]:
        """The messages for ``actions``, one at a time (``joining``: the node an ``on_join`` answers;
        ``n_params``: the protocol's parameter count, where a compressed model's buffers start)."""
        for i, action in enumerate(actions):
            if isinstance(action, RequestModels):
                self.request_id += 1
                yield SyncMessage("request", targets=tuple(action.nodes), epoch=self.epoch, request=self.request_id)
            elif isinstance(action, SendModel):
                # alone: the full sync of a group of one (split=N), the node keeps its model (SendModel.keep)
                reason = "join" if answers_join(i, action, joining) else ("alone" if action.keep else "sync")
                yield SyncMessage("send", targets=tuple(action.nodes), epoch=self.epoch,
                                  reference=action.reference, reason=reason, **_model_body(action, n_params))
            elif isinstance(action, PullToward):
                yield SyncMessage("pull", targets=tuple(action.nodes), epoch=self.epoch,
                                  strength=action.strength, model=action.model.cpu())


def _model_body(action: SendModel, n_params: int) -> dict:
    """What a ``send`` carries: the model whole, or the delta the protocol compressed (to ``base``,
    the reference every target holds), its buffers as float32 after the parameters."""
    c = action.compressed
    if c is None:
        return {"model": action.model.cpu()}
    return {"delta": pack_delta(c.codec, c.parts, tail=action.model[n_params:], reference=c.base,
                                n_params=n_params)}
