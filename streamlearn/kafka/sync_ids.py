"""Node ids the sync service gives out (``streamlearn node --id auto``): leases, renewals, expiry.

The rules are those of "node ids" in :mod:`streamlearn.kafka.sync_service`. :class:`IdLeases`
keeps the book of assigned ids apart from the averaging: it answers claims (through the
``send`` it is given) and tells the service which ids expired; what an expiry means for the
protocol (a registered holder has left) stays with the service.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection

from streamlearn.kafka.wire import SyncMessage

__all__ = ["IdLeases"]

log = logging.getLogger("streamlearn.kafka.sync_service")  # the service's log: one place to read

#: Fraction of the lease between two scans for expired ids.
_SCAN = 0.02


class IdLeases:
    """Assigned node ids and their leases.

    Parameters
    ----------
    max_nodes, lease, grace
        Ids are ``0..max_nodes-1``; an assigned id not renewed within ``lease`` seconds expires;
        claims for new ids wait ``grace`` seconds after :meth:`start_grace`.
    epoch
        The service's epoch, carried by every ``assign``.
    send
        Sends one :class:`~streamlearn.kafka.wire.SyncMessage` down.
    counts
        The service's counters (``ids_assigned``, ``ids_expired``, ``id_conflicts``,
        ``bad_records``), updated in place.
    """

    def __init__(self, max_nodes: int, lease: float, grace: float, epoch: str, send: Callable[[SyncMessage], None],
                 counts: dict):
        self.max_nodes, self.lease, self.grace, self.epoch = max_nodes, lease, grace, epoch
        self._send, self._counts = send, counts
        self.leases: dict[int, list] = {}  # assigned node id -> [token, monotonic time of the last renewal]
        self.early_claims: dict[str, None] = {}  # tokens that claimed during the grace period, in order
        self.grace_t0 = time.monotonic()
        self._next_scan = 0.0  # the leases are scanned for expiry at most every _SCAN of a lease

    def start_grace(self) -> None:
        """Start the grace period now (once connected: connecting can be slow on a busy machine)."""
        self.grace_t0 = time.monotonic()

    def on_claim(self, msg: SyncMessage, alive: Collection[int]) -> None:
        """A ``claim``: a renewal (with its id) or a request for an id; ``alive``: the registered nodes."""
        if msg.node is not None:  # a renewal of an id this service or an earlier one gave out
            if msg.node >= self.max_nodes:
                self._counts["bad_records"] += 1
                return
            held = self.leases.get(msg.node)
            if held is None or held[0] == msg.token:
                self.leases[msg.node] = [msg.token, time.monotonic()]
            else:
                self._counts["id_conflicts"] += 1
                log.warning("sync %s: node id %d is renewed by two nodes; the later one is told", self.epoch, msg.node)
                self._send(SyncMessage("assign", token=msg.token, epoch=self.epoch,
                                       reason=f"node id {msg.node} is held by another node (its hold expired)"))
            return
        if time.monotonic() - self.grace_t0 < self.grace:
            self.early_claims[msg.token] = None  # answered once running nodes had time to re-register
            return
        self.assign(msg.token, alive)

    def assign(self, token: str, alive: Collection[int]) -> None:
        """Answer a claim: the id this token already holds, else the lowest id no live node holds."""
        now = time.monotonic()
        node = next((n for n, (t, _) in self.leases.items() if t == token), None)
        if node is None:
            held = set(self.leases) | set(alive)
            node = next((n for n in range(self.max_nodes) if n not in held), None)
            if node is None:
                log.warning("sync %s: a node asks for an id, but all %d are held", self.epoch, self.max_nodes)
                self._send(SyncMessage("assign", token=token, epoch=self.epoch,
                                       reason=f"all {self.max_nodes} node ids are held (--max-nodes)"))
                return
            self._counts["ids_assigned"] += 1
            log.info("sync %s: node id %d assigned", self.epoch, node)
        self.leases[node] = [token, now]
        self._send(SyncMessage("assign", token=token, node=node, epoch=self.epoch))

    def release(self, node: int, token: str | None) -> bool | None:
        """A ``leave`` of ``node``: True if it freed a lease, False if none was held, None if the
        leave is from an earlier holder of an id that expired and was given out again (ignore it)."""
        held = self.leases.get(node)
        if held is None:
            return False
        if token is not None and held[0] != token:
            return None
        del self.leases[node]
        return True

    def check(self, alive: Collection[int]) -> list[int]:
        """Answer the claims of the grace period once it is over; expire ids not renewed in time.

        Returns the expired ids, in the order they expired."""
        now = time.monotonic()
        if self.early_claims and now - self.grace_t0 >= self.grace:
            for token in self.early_claims:
                self.assign(token, alive)
            self.early_claims.clear()
        if now < self._next_scan:
            return []  # a scan is O(ids held): not after every poll; an expiry is noticed that much later
        self._next_scan = now + _SCAN * self.lease
        expired = [n for n, (_, t) in self.leases.items() if now - t > self.lease]
        for node in expired:
            del self.leases[node]
            self._counts["ids_expired"] += 1
            log.warning("sync %s: node %d did not renew its id within %.3g s; the id is free", self.epoch, node,
                        self.lease)
        return expired
