"""``streamlearn tail predictions`` against the real Tansu broker: lines, JSON, node filter, limits."""

from __future__ import annotations

import json
import threading

import pytest
from kafka import KafkaProducer

from streamlearn.cli import main
from streamlearn.kafka.predictions import encode_predictions
from streamlearn.kafka.tail import parse_nodes
from streamlearn.kafka.topics import ensure_topics, predictions_topic

from waiting import wait_until


def _row(seq, pred, **kw):
    return {"seq": seq, "key": f"k{seq}", "ts": 1_700_000_000.0 + seq, "prediction": pred,
            "proba": [0.2, 0.8] if pred == "UP" else [0.9, 0.1], "epoch": "5f0c2a9e13d4", "syncs": 1, "step": seq,
            "late": False, **kw}


def _publish(settings, prefix, records):
    producer = KafkaProducer(**settings.producer_kwargs())
    try:
        for node, rows in records:
            producer.send(predictions_topic(prefix), encode_predictions(node, ["DOWN", "UP"], rows),
                          key=str(node).encode(), partition=0)
        producer.flush()
    finally:
        producer.close()


def test_tail_prints_predictions_from_the_beginning(broker, settings, prefix, capsys):
    ensure_topics(broker.bootstrap, prefix, [], settings=settings)
    _publish(settings, prefix, [(0, [_row(0, "UP"), _row(1, "DOWN")]), (1, [_row(0, "DOWN", late=True)]),
                                (0, [_row(2, "UP")])])
    common = ["tail", "predictions", "--bootstrap", broker.bootstrap, "--prefix", prefix, "--from-beginning"]
    assert main(common + ["--max", "4", "--max-seconds", "20"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "node 0  seq 0  key k0  ts 2023-11-14T22:13:20Z  -> UP (p 0.80)  step 0  syncs 1  epoch 5f0c2a9e13d4",
        "node 0  seq 1  key k1  ts 2023-11-14T22:13:21Z  -> DOWN (p 0.90)  step 1  syncs 1  epoch 5f0c2a9e13d4",
        "node 1  seq 0  key k0  ts 2023-11-14T22:13:20Z  -> DOWN (p 0.90)  step 0  syncs 1  epoch 5f0c2a9e13d4  late",
        "node 0  seq 2  key k2  ts 2023-11-14T22:13:22Z  -> UP (p 0.80)  step 2  syncs 1  epoch 5f0c2a9e13d4",
    ]
    # --node and --json; the same with the flag form --predictions
    assert main(["tail", "--predictions", "--bootstrap", broker.bootstrap, "--prefix", prefix, "--from-beginning",
                 "--node", "0", "--json", "--max", "3", "--max-seconds", "20"]) == 0
    got = [json.loads(t) for t in capsys.readouterr().out.splitlines()]
    assert [(p["node"], p["seq"], p["prediction"]) for p in got] == [(0, 0, "UP"), (0, 1, "DOWN"), (0, 2, "UP")]
    assert got[0]["classes"] == ["DOWN", "UP"] and got[0]["proba"] == [0.2, 0.8]
    # fewer than --max within --max-seconds: exit 1, and why on stderr
    assert main(common + ["--node", "1", "--max", "5", "--max-seconds", "1"]) == 1
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 1 and "1 of 5 predictions" in captured.err


def test_tail_follows_new_predictions_only_by_default(broker, settings, prefix, capsys):
    ensure_topics(broker.bootstrap, prefix, [], settings=settings)
    _publish(settings, prefix, [(0, [_row(0, "UP")])])  # before the tail started: not shown
    result = {}
    t = threading.Thread(target=lambda: result.update(rc=main(
        ["tail", "predictions", "--bootstrap", broker.bootstrap, "--prefix", prefix, "--json", "--max", "1",
         "--max-seconds", "60"])), daemon=True)
    t.start()
    # publish until the tail (which starts at the end of the topic) has seen one; it stops after one
    wait_until(lambda: (_publish(settings, prefix, [(2, [_row(7, "DOWN")])]), t.join(0.5), not t.is_alive())[-1],
               "the tail to show a new prediction", timeout=60)
    assert result["rc"] == 0
    out = [json.loads(t) for t in capsys.readouterr().out.splitlines()]
    assert [(p["node"], p["seq"]) for p in out] == [(2, 7)]


def test_tail_options_are_checked(capsys):
    assert main(["tail", "predictions", "--node", "a", "--bootstrap", "127.0.0.1:1"]) == 2
    assert "--node" in capsys.readouterr().err
    assert main(["tail", "--max", "0", "--bootstrap", "127.0.0.1:1"]) == 2
    assert "--max" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["tail", "models"])
    assert parse_nodes("1, 2") == [1, 2]
