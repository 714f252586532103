"""streamlearn.metrics: values from statuses and observations, promtool-clean expositions, the /metrics server,
and the metrics of real node and sync services on a real (embedded) broker."""

from __future__ import annotations

import math
import socket
import subprocess
import threading
import time
import urllib.request

import numpy as np
import pytest
import torch
from prometheus_client import REGISTRY, CollectorRegistry
from servers import require

from streamlearn.errors import ConfigError
from streamlearn.metrics import (
    LATENCY_BUCKETS,
    NodeMetrics,
    ProducerMetrics,
    SyncMetrics,
    new_registry,
    serve_metrics,
)
from streamlearn.streams.drift_spec import DRIFT_KINDS
from streamlearn.sync.messages import PullToward, RequestModels, SendModel

# The keys of a node status (NodeService._snapshot), with values of a node that has run for a while.
NODE_STATUS = {
    "role": "node", "node": 3, "ts": 1.7e9, "state": "running", "uptime": 12.5, "learner": "logreg",
    "averageable": True, "protocol": "dynamic:delta=0.5,b=2", "epoch": "abc", "joined": True, "rejected": None,
    "samples": 1200, "steps": 120, "rate": 100.0, "unlabelled": 4, "deadletters": 2, "seq_gaps": 0,
    "last_seq": 1199, "offset": 120, "committed": 100, "buffered": 7, "accuracy": 0.81,
    "rolling_accuracy": 0.74, "loss": 0.52, "rolling_loss": 0.61, "drifts": [600], "n_drifts": 1,
    "divergence": 0.31, "delta": 0.5, "models_sent": 5, "models_received": 6, "bytes_sent": 5000,
    "bytes_received": 6100, "reports_sent": 5, "violations": 5, "suppressed": 1, "awaiting_sync": False,
    "syncs": 6, "sync_positions": [600, 700], "last_sync": 1.7e9 - 3, "last_sync_step": 110,
    "last_sync_kind": "partial", "send_errors": 0, "bad_sync_records": 1, "sync_skipped": 9, "lag": 42,
}
# The keys of a sync status (SyncService._snapshot) once the protocol exists.
SYNC_STATUS = {
    "role": "sync", "ts": 1.7e9, "state": "running", "epoch": "abc", "uptime": 10.0,
    "protocol": "dynamic:delta=0.5,b=1", "max_nodes": 64, "d": 4, "bad_records": 1, "joins": 3, "leaves": 0,
    "rejects": 0, "unknown_reports": 2, "send_errors": 0, "messages_down": 9, "bytes_down_wire": 900,
    "bytes_up_wire": 800, "models_up": 7, "models_down": 11, "bytes_up": 112, "bytes_down": 176, "reports": 7,
    "violations": 7, "full_syncs": 2, "partial_syncs": 3, "pulls": 0, "timeouts": 1, "models": 18, "bytes": 288,
    "nodes_alive": 3, "alive": [0, 1, 2], "pending": [2], "device": "cpu", "reference_hash": "00",
}


def promtool_check(exposition: bytes) -> None:
    """``promtool check metrics`` must accept the exposition (fails, never skips, without promtool)."""
    exe = require("prometheus", "promtool")
    r = subprocess.run([exe, "check", "metrics"], input=exposition, capture_output=True, timeout=60)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), \
        (r.returncode, r.stdout.decode(), r.stderr.decode())


def value(registry, name, **labels):
    return registry.get_sample_value(name, labels)


# ---- node -----------------------------------------------------------------------------------------

def test_node_metrics_mirror_the_status():
    reg = CollectorRegistry()
    NodeMetrics(reg, 3).update_from_status(NODE_STATUS)
    n = {"node": "3"}
    assert value(reg, "streamlearn_node_samples_total", **n) == 1200
    assert value(reg, "streamlearn_node_steps_total", **n) == 120
    assert value(reg, "streamlearn_node_rolling_accuracy", **n) == 0.74
    assert value(reg, "streamlearn_node_rolling_loss", **n) == 0.61
    assert value(reg, "streamlearn_node_drifts_detected_total", **n) == 1
    assert value(reg, "streamlearn_node_divergence", **n) == 0.31
    assert value(reg, "streamlearn_node_delta", **n) == 0.5
    assert value(reg, "streamlearn_node_violations_total", **n) == 5
    assert value(reg, "streamlearn_node_models_sent_total", **n) == 5
    assert value(reg, "streamlearn_node_models_received_total", **n) == 6
    assert value(reg, "streamlearn_node_sent_bytes_total", **n) == 5000
    assert value(reg, "streamlearn_node_received_bytes_total", **n) == 6100
    assert value(reg, "streamlearn_node_deadletters_total", **n) == 2
    assert value(reg, "streamlearn_node_consumer_lag_records", **n) == 42
    assert value(reg, "streamlearn_node_sync_skipped_total", **n) == 9
    assert value(reg, "streamlearn_node_joined", **n) == 1
    assert value(reg, "streamlearn_node_awaiting_sync", **n) == 0
    # periodic averaging with b=2: one sync (1 up, 1 down) every 2 of the 120 updates
    assert value(reg, "streamlearn_node_periodic_models_total", **n) == 120
    assert value(reg, "streamlearn_node_info", node="3", learner="logreg", protocol="dynamic:delta=0.5,b=2") == 1


def test_node_metrics_read_a_status_callable_at_scrape_time():
    status = dict(NODE_STATUS)
    reg = CollectorRegistry()
    NodeMetrics(reg, 3, status=lambda: status)
    assert value(reg, "streamlearn_node_samples_total", node="3") == 1200
    status["samples"] = 1300
    assert value(reg, "streamlearn_node_samples_total", node="3") == 1300


def test_node_metrics_leave_out_what_the_status_does_not_have():
    reg = CollectorRegistry()
    m = NodeMetrics(reg, 0)
    assert value(reg, "streamlearn_node_samples_total", node="0") is None  # not started: no status yet
    # a local river learner: no divergence, delta or protocol; NaN accuracy before any prediction
    m.update_from_status({"node": 0, "samples": 0, "averageable": False, "protocol": None, "divergence": None,
                          "delta": None, "rolling_accuracy": float("nan")})
    assert value(reg, "streamlearn_node_samples_total", node="0") == 0
    assert value(reg, "streamlearn_node_violations_total", node="0") == 0  # a missing counter reads 0
    assert math.isnan(value(reg, "streamlearn_node_rolling_accuracy", node="0"))
    for name in ("streamlearn_node_divergence", "streamlearn_node_delta", "streamlearn_node_consumer_lag_records",
                 "streamlearn_node_periodic_models_total"):
        assert value(reg, name, node="0") is None, name


@pytest.mark.parametrize("spec, steps, expected", [
    ("dynamic:delta=0.5,b=1", 7, 14), ("periodic:b=4", 7, 2), ("nosync", 5, 10), ("fedavg:C=0.5,b=3", 9, 6),
])
def test_periodic_models_count_two_transfers_every_b_updates(spec, steps, expected):
    reg = CollectorRegistry()
    NodeMetrics(reg, 1).update_from_status({"node": 1, "steps": steps, "averageable": True, "protocol": spec})
    assert value(reg, "streamlearn_node_periodic_models_total", node="1") == expected


def test_node_latency_histograms_count_observations():
    reg = CollectorRegistry()
    m = NodeMetrics(reg, 2)
    for s in (0.0004, 0.003, 0.003):
        m.observe_learn(s)
    m.observe_sync_wait(0.2)
    assert value(reg, "streamlearn_node_learn_seconds_count", node="2") == 3
    assert value(reg, "streamlearn_node_learn_seconds_sum", node="2") == pytest.approx(0.0064)
    assert value(reg, "streamlearn_node_learn_seconds_bucket", node="2", le="0.0005") == 1
    assert value(reg, "streamlearn_node_learn_seconds_bucket", node="2", le="0.005") == 3
    assert value(reg, "streamlearn_node_sync_wait_seconds_bucket", node="2", le="0.1") == 0
    assert value(reg, "streamlearn_node_sync_wait_seconds_bucket", node="2", le="0.25") == 1
    # every bucket of the histogram is there from the start
    assert value(reg, "streamlearn_node_sync_wait_seconds_bucket", node="2", le=str(LATENCY_BUCKETS[-1])) == 1


def test_one_registry_holds_one_node():
    reg = CollectorRegistry()
    NodeMetrics(reg, 0)
    with pytest.raises(ValueError, match="Duplicated"):
        NodeMetrics(reg, 1)


# ---- sync service ---------------------------------------------------------------------------------

def test_sync_metrics_mirror_the_status():
    reg = CollectorRegistry()
    SyncMetrics(reg).update_from_status(SYNC_STATUS)
    assert value(reg, "streamlearn_sync_syncs_total", kind="full") == 2
    assert value(reg, "streamlearn_sync_syncs_total", kind="partial") == 3
    assert value(reg, "streamlearn_sync_syncs_total", kind="pull") == 0
    assert value(reg, "streamlearn_sync_models_total", direction="up") == 7
    assert value(reg, "streamlearn_sync_models_total", direction="down") == 11
    assert value(reg, "streamlearn_sync_transferred_bytes_total", direction="down") == 176
    assert value(reg, "streamlearn_sync_wire_bytes_total", direction="up") == 800
    assert value(reg, "streamlearn_sync_nodes_alive") == 3
    assert value(reg, "streamlearn_sync_pending_models") == 1
    assert value(reg, "streamlearn_sync_timeouts_total") == 1
    assert value(reg, "streamlearn_sync_bad_records_total") == 1
    assert value(reg, "streamlearn_sync_info", protocol="dynamic:delta=0.5,b=1", device="cpu") == 1


def test_sync_counters_read_zero_before_the_first_join():
    # before any node joined the service has no protocol and its status no communication counts
    reg = CollectorRegistry()
    SyncMetrics(reg).update_from_status({"role": "sync", "state": "running", "protocol": "dynamic", "d": None,
                                         "max_nodes": 64, "joins": 0, "nodes_alive": 0, "alive": [], "pending": []})
    assert value(reg, "streamlearn_sync_syncs_total", kind="full") == 0
    assert value(reg, "streamlearn_sync_models_total", direction="up") == 0
    assert value(reg, "streamlearn_sync_nodes_alive") == 0
    assert value(reg, "streamlearn_sync_model_parameters") is None


def test_nodes_per_sync_by_kind_from_the_protocol_actions():
    reg = CollectorRegistry()
    m = SyncMetrics(reg)
    w = torch.zeros(3)
    # the answer to a joining node is not a sync; a full sync to the 3 nodes alive that came with it is
    m.observe_actions([SendModel((2,), w, True), SendModel((0, 1, 2), w, True)], joining=2)
    m.observe_actions([RequestModels((1, 2)), SendModel((0, 1), w, False), PullToward((0, 1, 2, 3), w, 0.5)])
    assert value(reg, "streamlearn_sync_nodes_per_sync_count", kind="full") == 1
    assert value(reg, "streamlearn_sync_nodes_per_sync_sum", kind="full") == 3
    assert value(reg, "streamlearn_sync_nodes_per_sync_sum", kind="partial") == 2
    assert value(reg, "streamlearn_sync_nodes_per_sync_sum", kind="pull") == 4
    m.observe_averaging(0.002)
    assert value(reg, "streamlearn_sync_averaging_seconds_count") == 1


# ---- producer -------------------------------------------------------------------------------------

def test_producer_metrics_count_per_node_and_start_every_drift_series_at_zero():
    reg = CollectorRegistry()
    m = ProducerMetrics(reg, nodes=3)
    for node in range(3):
        for kind in DRIFT_KINDS:
            assert value(reg, "streamlearn_producer_drift_events_total", node=str(node), kind=kind) == 0
        assert value(reg, "streamlearn_producer_samples_total", node=str(node)) == 0
    m.observe_sent(2, samples=50, records=1, nbytes=900)
    m.observe_sent(2, samples=3, records=3, nbytes=300)
    m.observe_drift(1, "label-permutation")
    m.observe_error()
    assert value(reg, "streamlearn_producer_samples_total", node="2") == 53
    assert value(reg, "streamlearn_producer_records_total", node="2") == 4
    assert value(reg, "streamlearn_producer_sent_bytes_total", node="2") == 1200
    assert value(reg, "streamlearn_producer_drift_events_total", node="1", kind="label-permutation") == 1
    assert value(reg, "streamlearn_producer_errors_total") == 1


# ---- promtool on every endpoint -------------------------------------------------------------------

def _node_endpoint(reg):
    m = NodeMetrics(reg, 3)
    m.update_from_status(NODE_STATUS)
    m.observe_learn(0.004)
    m.observe_sync_wait(0.3)


def _sync_endpoint(reg):
    m = SyncMetrics(reg)
    m.update_from_status(SYNC_STATUS)
    m.observe_actions([SendModel((0, 1, 2), torch.zeros(2), True), PullToward((1,), torch.zeros(2), 0.5)])
    m.observe_averaging(0.001)


def _producer_endpoint(reg):
    m = ProducerMetrics(reg, nodes=2)
    m.observe_sent(0, 100, 2, 1800)
    m.observe_drift(1, "sudden")
    m.observe_error()


@pytest.mark.parametrize("exercise", [_node_endpoint, _sync_endpoint, _producer_endpoint],
                         ids=["node", "sync", "producer"])
def test_every_endpoint_passes_promtool_over_http(exercise):
    reg = new_registry()  # with the process metrics, as the services serve them
    exercise(reg)
    with serve_metrics(reg, port=0) as server:
        assert server.host == "127.0.0.1"
        body = urllib.request.urlopen(server.url, timeout=10).read()
    assert b"streamlearn_" in body
    assert b"process_cpu_seconds_total" in body
    promtool_check(body)


def test_promtool_check_catches_a_bad_exposition():
    # the check is real: a counter without _total and an abbreviated unit are rejected
    with pytest.raises(AssertionError):
        promtool_check(b"# HELP x_ms Bad.\n# TYPE x_ms counter\nx_ms 1\n")


# ---- registry and server --------------------------------------------------------------------------

def test_new_registry_is_not_the_global_one():
    reg = new_registry()
    assert reg is not REGISTRY
    assert value(reg, "process_cpu_seconds_total") is not None
    assert value(new_registry(process=False), "process_cpu_seconds_total") is None
    NodeMetrics(new_registry(), 0)  # a second node registry: no clash with the first
    assert REGISTRY.get_sample_value("streamlearn_node_samples_total", {"node": "0"}) is None


def test_serve_metrics_frees_its_port_and_reports_a_busy_one():
    reg = new_registry(process=False)
    ProducerMetrics(reg, nodes=1)
    server = serve_metrics(reg, port=0)
    port = server.port
    try:
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}"):
            serve_metrics(reg, port=port)
    finally:
        server.stop()
    with socket.socket() as s:  # free again
        s.bind(("127.0.0.1", port))


@pytest.mark.parametrize("call", [
    lambda: NodeMetrics(object(), 0),
    lambda: NodeMetrics(CollectorRegistry(), -1),
    lambda: NodeMetrics(CollectorRegistry(), "3"),
    lambda: NodeMetrics(CollectorRegistry(), 0, status={"samples": 1}),
    lambda: NodeMetrics(CollectorRegistry(), 0).update_from_status([("samples", 1)]),
    lambda: NodeMetrics(CollectorRegistry(), 0).observe_learn(-0.1),
    lambda: NodeMetrics(CollectorRegistry(), 0).observe_sync_wait(float("nan")),
    lambda: SyncMetrics(CollectorRegistry()).observe_sync("fast", 2),
    lambda: SyncMetrics(CollectorRegistry()).observe_sync("full", 0),
    lambda: ProducerMetrics(CollectorRegistry(), nodes=0),
    lambda: ProducerMetrics(CollectorRegistry(), nodes=2).observe_sent(2, 10),
    lambda: ProducerMetrics(CollectorRegistry(), nodes=2).observe_sent(0, -1),
    lambda: ProducerMetrics(CollectorRegistry(), nodes=2).observe_drift(0, "earthquake"),
    lambda: serve_metrics(CollectorRegistry(), port=70000),
    lambda: serve_metrics(CollectorRegistry(), port=0, host=""),
])
def test_bad_arguments_are_config_errors(call):
    with pytest.raises(ConfigError):
        call()


# ---- real services --------------------------------------------------------------------------------

def _run(svc, errors):
    def target():
        try:
            svc.run()
        except BaseException as exc:  # reported by the test
            errors.append(exc)
    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t


def _wait(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_metrics_of_real_node_and_sync_services(tmp_path):
    """Two nodes and the sync service on an embedded broker: their status-based metrics, served over HTTP,
    pass promtool and equal the services' own counts."""
    from kafka import KafkaProducer

    from streamlearn.kafka.broker import EmbeddedBroker
    from streamlearn.kafka.codecs import encode_sample_batch
    from streamlearn.kafka.config import KafkaSettings
    from streamlearn.kafka.node import NodeConfig, NodeService
    from streamlearn.kafka.sync_service import SyncConfig, SyncService
    from streamlearn.kafka.topics import ensure_topics, samples_topic

    features, classes, n, flip, spec = ["a", "b", "c"], [0, 1], 600, 300, "dynamic:delta=1.0,b=1"
    with EmbeddedBroker() as broker:
        settings = KafkaSettings(bootstrap_servers=broker.bootstrap)
        common = dict(bootstrap=broker.bootstrap, prefix="m.sl", settings=settings, device="cpu")
        ensure_topics(broker.bootstrap, "m.sl", 2, settings=settings)
        sync = SyncService(SyncConfig(protocol=spec, max_nodes=4, timeout=2.0, status_interval=0.2, **common))
        nodes = [NodeService(NodeConfig(node=k, features=features, classes=classes, protocol=spec,
                                        learner_params={"lr": 0.5}, status_interval=0.2, **common))
                 for k in range(2)]
        regs = [new_registry() for _ in range(3)]
        SyncMetrics(regs[0], status=sync.status)
        for k, svc in enumerate(nodes):
            NodeMetrics(regs[k + 1], k, status=svc.status)
        servers = [serve_metrics(reg, port=0) for reg in regs]
        errors: list = []
        threads = [_run(svc, errors) for svc in [sync, *nodes]]
        try:
            _wait(lambda: sync.status().get("nodes_alive") == 2, 30, "2 joins")
            producer = KafkaProducer(**settings.producer_kwargs())
            for k in range(2):
                rng = np.random.default_rng(k)
                X = rng.normal(size=(n, 3)).astype(np.float32)
                y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
                y[flip:] = 1 - y[flip:]  # a drift: labels swapped
                for i in range(0, n, 50):
                    producer.send(samples_topic("m.sl", k), encode_sample_batch(X[i:i + 50], y[i:i + 50],
                                                                                first_seq=i, names=features))
            producer.flush()
            producer.close()
            _wait(lambda: all(s.status().get("samples") == n for s in nodes), 30, "every sample learned")
            _wait(lambda: not sync.status().get("pending") and
                  not any(s.status().get("awaiting_sync") for s in nodes), 15, "no sync in flight")
            bodies = [urllib.request.urlopen(s.url, timeout=10).read() for s in servers]
        finally:
            for svc in [*nodes, sync]:
                svc.stop()
            for t in threads:
                t.join(timeout=20)
            for s in servers:
                s.stop()
    assert not errors, errors
    for body in bodies:
        promtool_check(body)
    # the registries now read the final statuses of the stopped services
    st = sync.status()
    assert st["state"] == "stopped" and st["full_syncs"] >= 1
    assert value(regs[0], "streamlearn_sync_syncs_total", kind="full") == st["full_syncs"]
    assert value(regs[0], "streamlearn_sync_models_total", direction="up") == st["models_up"]
    assert value(regs[0], "streamlearn_sync_models_total", direction="down") == st["models_down"]
    assert b'streamlearn_sync_syncs_total{kind="full"}' in bodies[0]
    for k in range(2):
        reg, st = regs[k + 1], nodes[k].status()
        assert value(reg, "streamlearn_node_samples_total", node=str(k)) == n
        assert value(reg, "streamlearn_node_models_sent_total", node=str(k)) == st["models_sent"]
        assert value(reg, "streamlearn_node_periodic_models_total", node=str(k)) == 2 * st["steps"]
        assert 0 <= value(reg, "streamlearn_node_rolling_accuracy", node=str(k)) <= 1
        assert value(reg, "streamlearn_node_divergence", node=str(k)) >= 0
        assert f'streamlearn_node_samples_total{{node="{k}"}} {float(n)}'.encode() in bodies[k + 1]
