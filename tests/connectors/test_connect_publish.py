"""The connectors' Kafka side (a real Tansu): node topics made as readings come keep every topic's metadata."""

from __future__ import annotations

from kafka import TopicPartition

from streamlearn.connectors.publish import Publisher
from streamlearn.connectors.schema import Reading
from streamlearn.kafka.topics import deadletter_topic, schema_topic

from waiting import wait_until


def test_topics_made_as_readings_come_leave_the_layout_and_dead_letter_topics_known(kafka):
    # kafka-python forgets a topic it knew from its first metadata answer once another topic is added, and its
    # sender then asks for metadata in a loop without pause (streamlearn.kafka.broker.track_topics). The layout
    # is announced first, then node topics are made one by one as readings for them come, as a connector numbering
    # stations by first appearance does.
    pub = Publisher("test", **kafka)
    try:
        pub.declare((["temp"], ["ok", "fault"]))
        pub.deadletter(b"{", "not JSON", source="test", offset=0)
        for i in range(30):
            pub.reading(i % 3, Reading(x={"temp": float(i)}, y="ok"))
        pub.flush(timeout=30)
        assert pub.stats.delivered == 30 and pub.stats.send_errors == 0
        metadata = pub._producer._metadata  # what the sender thread loops on when a leader is unknown
        for topic in (schema_topic(kafka["prefix"]), deadletter_topic(kafka["prefix"])):
            wait_until(lambda: metadata.leader_for_partition(TopicPartition(topic, 0)) not in (None, -1),
                       f"the producer to know the leader of {topic} again")
    finally:
        pub.close("done")
