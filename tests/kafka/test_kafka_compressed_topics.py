"""Topics compressed by outside producers: a node reads what any Kafka client may write.

Against the real Tansu broker of conftest.py: a kafka-python producer with each compression codec a node must
read (gzip is in the standard library; lz4 and zstd come with the ``lz4`` and ``zstandard`` dependencies) writes
JSON readings and binary batches to a node's topic; the node learns every sample once, in order.
"""

from __future__ import annotations

import pytest
from kafka import KafkaProducer
from kafka.codec import has_lz4, has_zstd

from streamlearn.kafka.topics import ensure_topics, samples_topic

from separable import make_data
from test_kafka_pipeline import Pipeline, encode

CODECS = ["gzip", "lz4", "zstd"]


def test_the_codecs_a_node_reads_are_installed():
    """Declared dependencies, not optional extras: without them kafka-python cannot decompress such a batch."""
    assert has_lz4() and has_zstd()


@pytest.mark.parametrize("codec", CODECS)
def test_a_node_learns_a_topic_an_outside_producer_compressed(broker, settings, prefix, codec):
    n = 600
    X, y = make_data(n, 31)
    records = encode(X[:300], y[:300], 0, "json", 1) + encode(X[300:], y[300:], 300, "binary", 50)
    ensure_topics(broker.bootstrap, prefix, 1, settings=settings)
    producer = KafkaProducer(**settings.producer_kwargs(compression_type=codec, linger_ms=50))
    try:
        for rec in records:
            producer.send(samples_topic(prefix, 0), rec)
        producer.flush()
    finally:
        producer.close()
    with Pipeline(broker, settings, prefix) as p:  # no sync service: a protocol without messages
        node = p.start_node(0, protocol="nosync", batch_size=20, detector=None)
        p.wait(p.learned({0: n}), what=f"the {codec} topic learned")
        p.stop(node)
    st = node.status()
    assert (st["samples"], st["last_seq"], st["seq_gaps"], st["deadletters"]) == (n, n - 1, 0, 0), st
