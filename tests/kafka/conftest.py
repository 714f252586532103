"""A real Tansu broker for the whole session; tests that need it never skip."""

from __future__ import annotations

import time

import pytest


# broker, settings and prefix: tests/conftest.py


@pytest.fixture
def admin(settings):
    from kafka import KafkaAdminClient

    client = KafkaAdminClient(**settings.admin_kwargs())
    yield client
    client.close()


@pytest.fixture
def consume(settings):
    """consume(topic, expected): the first ``expected`` records of partition 0 (assign, no group)."""
    return lambda topic, expected, **kw: _consume(settings, topic, expected, **kw)


def _consume(settings, topic, expected, timeout=20.0, **overrides):
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**settings.consumer_kwargs(**overrides))
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        records = []
        deadline = time.monotonic() + timeout
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()
