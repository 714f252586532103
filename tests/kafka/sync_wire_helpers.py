"""The test plays the nodes against a real sync service: it writes ``sync.up`` and reads ``sync.down``
from its start. Shared by the sync service, hostile-model and node-id tests. No tests here."""

from __future__ import annotations

import threading
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streamlearn.kafka.sync_service import SyncConfig, SyncService
from streamlearn.kafka.topics import ensure_topics, sync_down_topic, sync_up_topic
from streamlearn.kafka.wire import SyncMessage, decode_sync, encode_sync


class SyncWire:
    """Write sync.up, read sync.down (from the start) as the nodes would."""

    def __init__(self, settings, prefix):
        self.prefix = prefix
        self.producer = KafkaProducer(**settings.producer_kwargs())
        self.consumer = KafkaConsumer(**settings.consumer_kwargs(fetch_max_wait_ms=20))
        tp = TopicPartition(sync_down_topic(prefix), 0)
        self.consumer.assign([tp])
        self.consumer.seek_to_beginning(tp)
        self.down: list = []

    def send(self, msg: SyncMessage | None = None, raw: bytes | None = None) -> None:
        self.producer.send(sync_up_topic(self.prefix), raw if raw is not None else encode_sync(msg), partition=0)
        self.producer.flush()

    def expect(self, match, what: str = "matching message", timeout: float = 10.0) -> SyncMessage:
        """The first message on sync.down not taken before that ``match`` accepts."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, msg in enumerate(self.down):
                if msg is not None and match(msg):
                    self.down[i] = None  # taken
                    return msg
            for records in self.consumer.poll(timeout_ms=100).values():
                self.down.extend(decode_sync(r.value) for r in records)
        raise AssertionError(f"no {what} on sync.down; got {[m and m.kind for m in self.down]}")

    def close(self) -> None:
        self.producer.close()
        self.consumer.close()


class FakeNodes(SyncWire):
    """A :class:`SyncWire` and a sync service running in a thread on the same prefix."""

    def __init__(self, broker, settings, prefix, config: SyncConfig):
        ensure_topics(broker.bootstrap, prefix, [], settings=settings)
        super().__init__(settings, prefix)
        self.service = SyncService(config)
        self.thread = threading.Thread(target=self.service.run, daemon=True)
        self.thread.start()
        self.expect(lambda m: m.kind == "hello", "hello")  # the service is up and reading

    def close(self) -> None:
        self.service.stop()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()
        super().close()


def nodes_fixture(cls):
    """A pytest fixture ``nodes(**kw)`` that makes ``cls(broker, settings, prefix, **kw)`` and closes them all."""
    import pytest

    @pytest.fixture
    def nodes(broker, settings, prefix):
        made = []

        def make(**kw):
            made.append(cls(broker, settings, prefix, **kw))
            return made[-1]

        yield make
        for n in made:
            n.close()

    return nodes


def read_all(settings, topic) -> list:
    """Every record of partition 0 of ``topic`` up to its end now."""
    consumer = KafkaConsumer(**settings.consumer_kwargs(fetch_max_wait_ms=20))
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        records = []
        while consumer.position(tp) < end:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()
