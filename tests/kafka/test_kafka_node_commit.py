"""The node's commit: the predictions of what it learned are sent and acknowledged before the position moves past
them (a crash after the commit loses none); a flush that times out leaves the position where it was.

Pure ordering logic of ``_Progress.commit``, with recording fakes for the Kafka clients (the pipeline tests run the
real ones)."""

from types import SimpleNamespace

from kafka.errors import KafkaTimeoutError

from streamlearn.kafka.node import _Progress


class _Rec:
    def __init__(self, calls, name, fail=False):
        self.calls, self.name, self.fail = calls, name, fail

    def flush(self, timeout=None):
        self.calls.append(f"{self.name}.flush")
        if self.fail:
            raise KafkaTimeoutError("no acknowledgement")

    def commit(self, offsets, timeout_ms=None):
        self.calls.append(f"{self.name}.commit")


def _progress(calls, predictions=True, ack_fails=False):
    intake = SimpleNamespace(consumed_next=50, labels_matched=0, labels_unmatched=0, labels_replayed=0, deadletters=0,
                             oldest_held=lambda: None)
    svc = SimpleNamespace(core=None, _buf=SimpleNamespace(learned_offset=lambda default: 40), _intake=intake,
                          config=SimpleNamespace(node=0), _samples_tp=("samples", 0), _producer=_Rec(calls, "producer"),
                          _consumer=_Rec(calls, "consumer"), _seen=_Rec(calls, "seen"),
                          _predictions=_Rec(calls, "publisher") if predictions else None,
                          _pred_producer=_Rec(calls, "pred_producer", fail=ack_fails))
    return _Progress(svc)


def test_predictions_are_acknowledged_before_the_position_is_committed():
    calls: list = []
    p = _progress(calls)
    p.commit()
    assert calls == ["publisher.flush", "pred_producer.flush", "consumer.commit"] and p.committed == 40
    calls.clear()
    p.commit()  # nothing new learned: nothing to flush nor commit
    assert calls == []


def test_a_flush_that_times_out_leaves_the_position_where_it_was():
    calls: list = []
    p = _progress(calls, ack_fails=True)
    p.commit()
    assert calls == ["publisher.flush", "pred_producer.flush"] and p.committed == 0


def test_without_predictions_it_only_commits():
    calls: list = []
    _progress(calls, predictions=False).commit()
    assert calls == ["consumer.commit"]
