"""`streamlearn drift` against a real Tansu and a running producer: it reaches the producer's prefix and says
whether the producer applied the command."""

from __future__ import annotations

import threading
import time

import pytest

from streamlearn.cli import main
from streamlearn.kafka import codecs
from streamlearn.kafka.control import inject_drift
from streamlearn.kafka.producer import Producer, ProducerConfig
from streamlearn.kafka.topics import drift_topic


@pytest.fixture
def running_producer(settings, prefix):
    """A 2-node producer on ``prefix``, sending until the test ends."""
    producer = Producer(ProducerConfig(source="sea", nodes=2, rate=1000, n=None, format="binary", seed=2,
                                       settings=settings, prefix=prefix, progress=False))
    thread = threading.Thread(target=producer.run, daemon=True)
    thread.start()
    assert producer.ready.wait(20), "producer did not get ready"
    deadline = time.monotonic() + 20
    while min(producer.sent.values() or [0]) < 200:  # sending on both nodes
        assert time.monotonic() < deadline, "producer sends nothing"
        time.sleep(0.02)
    yield producer
    producer.stop()
    thread.join(20)


def _drift_cli(settings, prefix, *args) -> list[str]:
    return ["drift", "--bootstrap", settings.bootstrap_servers, "--prefix", prefix, *args]


def test_cli_reaches_the_producer_by_prefix_and_reports_it_applied(running_producer, settings, prefix, consume,
                                                                   capsys):
    code = main(_drift_cli(settings, prefix, "--node", "1", "--kind", "label-permutation"))
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert f"on {settings.bootstrap_servers}, topic {prefix}.control" in out
    assert "applied by the producer: node 1 from sample" in out and "warning" not in err
    # ... and that is the producer's ground truth on the drift topic, with the command's id
    [event] = [codecs.decode_message(r.value, expect="drift") for r in consume(drift_topic(prefix), 1)]
    command_id = out.split("(command ")[1].split(")")[0]
    assert (event.node, event.kind, event.params["command"], event.params["live"]) == (
        1, "label-permutation", command_id, True)
    assert f"node 1 from sample {event.seq}" in out


def test_every_node_answers_a_command_for_all(running_producer, settings, prefix):
    res = inject_drift(settings.bootstrap_servers, prefix, "all", "noise", {"sigma": "0.2"}, settings=settings,
                       wait=10)
    assert sorted(e.node for e in res.events) == [0, 1]
    assert all(e.params["command"] == res.command.id and e.kind == "noise" for e in res.events)
    assert res.prefix == prefix and res.bootstrap == settings.bootstrap_servers


def test_cli_warns_and_fails_when_no_producer_applies_it(settings, prefix, capsys):
    # nobody listens on this prefix
    code = main(_drift_cli(settings, prefix, "--node", "0", "--kind", "label-permutation", "--wait", "1.5"))
    out, err = capsys.readouterr()
    assert code == 1
    assert "sent label-permutation to node 0" in out
    assert "warning: no producer applied command drift-" in err and f"--prefix {prefix}" in err


def test_cli_fails_when_the_producer_rejects_the_command(running_producer, settings, prefix, capsys):
    # node 7 is not one of this producer's nodes: it refuses the command and publishes nothing
    code = main(_drift_cli(settings, prefix, "--node", "7", "--kind", "label-permutation", "--wait", "2"))
    assert code == 1
    assert "warning: no producer applied" in capsys.readouterr().err
    assert running_producer.sent[0] > 0


def test_cli_errors_name_the_bad_option(settings, capsys):
    assert main(["drift", "--prefix", "bad prefix!", "--kind", "noise"]) == 2
    assert "--prefix" in capsys.readouterr().err
    assert main(_drift_cli(settings, "ok", "--kind", "noise", "--wait", "-1")) == 2
    assert "--wait" in capsys.readouterr().err
