"""Sync services that share the shards of a sharded layer through a Kafka consumer group.

``streamlearn sync --protocol "periodic:b=8,shards=4,root=2" --shard group --state-dir DIR``, started
on several machines (or several times), joins the consumer group ``<prefix>.sync-shards`` on
``<prefix>.sync.up``. Kafka assigns each member some of the topic's partitions, one per shard; for every
partition it owns a member runs that shard's :class:`~streamlearn.kafka.sync_service.SyncService` (a
thread; its state in ``DIR/shard-K``). When the group changes (a member starts, stops or stops
answering), Kafka moves partitions: a member stops the services of the shards it lost (each keeps its
state) and starts those it gained, which resume from the state the previous owner kept there (the
reference, the counts) and say ``hello``, so the shard's nodes register again, as after any restart of
the sync service. ``DIR`` must be shared by the members (a volume or network file system); without
``--state-dir`` a shard that moves starts from the first join again. The member that owns shard 0 hosts
the root (:mod:`streamlearn.kafka.sync_root`).

The group consumer only takes part in the assignment: its partitions stay paused and nothing is read
through it; each shard's service reads its partition itself. A member that is killed is noticed after
``session_timeout_ms`` (Tansu also waits for the rebalance timeout, ``max_poll_interval_ms``); its shards
are idle meanwhile and their nodes learn on alone, as with a sync service that is down.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from streamlearn.errors import ConfigError
from streamlearn.kafka.config import KafkaSettings

__all__ = ["ShardGroup", "GROUP_SESSION_MS", "GROUP_REBALANCE_MS"]

log = logging.getLogger(__name__)

#: A member that sends no heartbeat for this long is out of the group and its shards move.
GROUP_SESSION_MS = 6_000
#: Longest wait for the members to rejoin in a rebalance (Tansu waits for all of it).
GROUP_REBALANCE_MS = 8_000


class ShardGroup:
    """Run the shards Kafka assigns to this member (see the module docstring).

    Parameters
    ----------
    config_for
        ``shard -> SyncConfig`` of that shard's service (the same settings for every shard).
    shards
        Number of shards (the protocol's ``shards``).
    make_service
        ``(SyncConfig, metrics or None) -> service`` (default :class:`~streamlearn.kafka.sync_service.SyncService`).
    metrics
        A :class:`~streamlearn.metrics.ShardRegistries` on the served registry: each shard's service gets
        :class:`~streamlearn.metrics.SyncMetrics` there, labelled with its shard; None: no metrics.
    """

    def __init__(self, config_for: Callable[[int], object], shards: int, make_service=None, metrics=None):
        from streamlearn.kafka.sync_service import SyncService

        if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
            raise ConfigError(f"shards must be an integer >= 1, got {shards!r}")
        self.config_for, self.shards = config_for, shards
        self.make_service = make_service or (lambda config, metrics: SyncService(config, metrics=metrics))
        self.metrics = metrics
        self.first = config_for(0)  # checks the settings once, before joining a group
        self.services: dict[int, tuple] = {}  # shard -> (service, thread, errors)
        self._stop = threading.Event()
        self.rebalances = 0

    def stop(self) -> None:
        self._stop.set()

    def owned(self) -> list[int]:
        """The shards this member runs now."""
        return sorted(self.services)

    def run(self, stop_event: threading.Event | None = None, max_seconds: float | None = None) -> None:
        from kafka import KafkaConsumer
        from kafka.consumer.subscription_state import ConsumerRebalanceListener

        from streamlearn.kafka.service import StopSignals
        from streamlearn.kafka.topics import sync_up_topic
        from streamlearn.kafka.wire import connect

        cfg = self.first
        settings, bootstrap, prefix = connect(cfg.settings or KafkaSettings.from_env(), cfg.bootstrap, cfg.prefix,
                                              [], stop=self._stop, shards=self.shards)
        group = self

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                group._stop_shards([p.partition for p in revoked])

            def on_partitions_assigned(self, assigned):
                group.rebalances += 1
                group._start_shards([p.partition for p in assigned if p.partition < group.shards])

        consumer = KafkaConsumer(**settings.consumer_kwargs(
            bootstrap, group_id=f"{prefix}.sync-shards", enable_auto_commit=False,
            session_timeout_ms=GROUP_SESSION_MS, heartbeat_interval_ms=1_000,
            max_poll_interval_ms=GROUP_REBALANCE_MS))
        consumer.subscribe([sync_up_topic(prefix)], listener=Listener())
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        log.info("sync group %s.sync-shards: joining for %d shards", prefix, self.shards)
        try:
            with StopSignals(self._stop):
                while not self._stop.is_set() and not (stop_event is not None and stop_event.is_set()):
                    if deadline is not None and time.monotonic() >= deadline:
                        break
                    consumer.poll(timeout_ms=200, max_records=1)  # heartbeats and rebalances; nothing is read
                    consumer.pause(*consumer.assignment())
                    self._check_services()
        finally:
            self._stop_shards(list(self.services))
            consumer.close()  # leaves the group: the others take the shards at once

    def _start_shards(self, shards: list[int]) -> None:
        for k in shards:
            if k in self.services:
                continue
            metrics = None
            if self.metrics is not None:
                from streamlearn.metrics import SyncMetrics

                metrics = SyncMetrics(self.metrics.registry(k))
            svc = self.make_service(self.config_for(k), metrics)
            errors: list = []

            def target(svc=svc, errors=errors):
                try:
                    svc.run()
                except BaseException as exc:  # a shard that cannot start: logged, the others go on
                    errors.append(exc)
                    log.error("sync group: shard service stopped with an error: %s", exc)

            t = threading.Thread(target=target, name=f"sync-shard-{k}", daemon=True)
            t.start()
            self.services[k] = (svc, t, errors)
            log.info("sync group: running shard %d of %d", k, self.shards)

    def _stop_shards(self, shards: list[int]) -> None:
        for k in shards:
            entry = self.services.pop(k, None)
            if entry is None:
                continue
            svc, t, _ = entry
            svc.stop()
            t.join(timeout=30)  # its state is kept before the next owner starts
            if self.metrics is not None:
                self.metrics.drop(k)
            log.info("sync group: shard %d handed over", k)

    def _check_services(self) -> None:
        for k, (svc, t, errors) in list(self.services.items()):
            if not t.is_alive() and errors:
                raise errors[0]
