"""A sharded sync layer on real Tansu: one sync service per shard, nodes on their shard's partition, a root
averaging the shards (protocol ``shards=S,root=R``; streamlearn.sync.hierarchy, streamlearn.kafka.sync_root)."""

import os
import re
import signal
import subprocess
import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamlearn.errors import ConfigError
from streamlearn.kafka.sync_service import SyncConfig, SyncService
from streamlearn.kafka.topics import ensure_topics
from test_kafka_pipeline import Pipeline, encode, make_data, publish
from waiting import wait_until

SPEC = "periodic:b=4,shards=2,root=1"
N = 400  # samples per node: 40 steps of 10, 10 rounds per shard


def test_bad_shard_settings_are_config_errors():
    with pytest.raises(ConfigError, match=r"run one sync service per shard \(--shard K"):
        SyncConfig(protocol=SPEC)
    with pytest.raises(ConfigError, match=r"shard must be an integer in \[0, 1\] \(shards=2\), got 2"):
        SyncConfig(protocol=SPEC, shard=2)
    with pytest.raises(ConfigError, match="names no shards"):
        SyncConfig(protocol="periodic:b=4", shard=0)
    with pytest.raises(ConfigError, match="shards=4 is more than max_nodes=2"):
        SyncConfig(protocol="periodic:b=4,shards=4", shard=0, max_nodes=2)
    cfg = SyncConfig(protocol=SPEC, shard=1, state_dir="/tmp/state")
    assert (cfg.spec, cfg.shards, cfg.root, cfg.state_dir) == ("periodic:b=4", 2, 1, "/tmp/state/shard-1")


def test_two_shards_sync_apart_and_the_root_averages_them(broker, settings, prefix):
    ensure_topics(broker.bootstrap, prefix, 4, settings=settings, shards=2)
    data = {n: make_data(N, seed=n) for n in range(4)}
    with Pipeline(broker, settings, prefix, spec=SPEC, timeout=2.0) as p:
        for k in range(2):  # one sync service per shard
            p._start(SyncService(SyncConfig(protocol=SPEC, shard=k, max_nodes=8, timeout=2.0, device="cpu",
                                            status_interval=0.3, bootstrap=broker.bootstrap, prefix=prefix,
                                            settings=settings)))
        p.wait(lambda r: len(r.shards) == 2, what="both shards running")
        for n in data:
            p.start_node(n)
        p.wait(lambda r: all(r.shards.get(k, {}).get("nodes_alive") == 2 for k in range(2)), what="joins")
        publish(settings, prefix, {n: encode(X, y, 0, "binary", 10) for n, (X, y) in data.items()}, seconds=4.0)
        p.wait(lambda r: p.learned({n: N for n in data})(r), timeout=120, what="every sample learned")
        p.wait(lambda r: all(not r.shards[k]["pending"] for k in range(2))
               and r.shards[0].get("root_syncs", 0) >= 3
               and all(r.shards[k].get("root_adopted") == r.shards[0]["root_syncs"] for k in range(2))
               and all(r.nodes[n].get("reference_hash") == r.shards[n % 2]["reference_hash"] for n in data),
               timeout=60, what="every root average adopted by both shards, and every node holding its shard's "
                                "reference")
        st = {k: dict(p.status.shards[k]) for k in range(2)}
        nodes = {n: dict(p.status.nodes[n]) for n in data}
    print({k: {f: st[k].get(f) for f in ("full_syncs", "root_reports", "root_adopted", "root_syncs", "models")}
           for k in range(2)}, {n: (s["syncs"], round(s["accuracy"], 3)) for n, s in nodes.items()})
    # each shard holds its own nodes (n % 2) and synced them by its own rounds
    assert sorted(st[0]["alive"]) == [0, 2] and sorted(st[1]["alive"]) == [1, 3]
    assert all(st[k]["shard"] == k and st[k]["shards"] == 2 and st[k]["full_syncs"] >= 5 for k in range(2)), st
    assert all(st[k]["root_reports"] == st[k]["full_syncs"] for k in range(2))  # one report per own full sync
    assert st[0]["root_bad"] == st[1]["root_bad"] == 0 and st[0]["rejects"] == st[1]["rejects"] == 0
    # root=1: an average for every 2 full syncs of the shards (one each on average)
    assert st[0]["root_syncs"] == (st[0]["full_syncs"] + st[1]["full_syncs"]) // 2, st
    # every node got its shard's syncs and the root's; the nodes learned
    assert all(s["syncs"] >= st[n % 2]["full_syncs"] for n, s in nodes.items()), nodes
    assert all(s["accuracy"] > 0.8 for s in nodes.values()), {n: s["accuracy"] for n, s in nodes.items()}
    if (st[0]["full_syncs"] + st[1]["full_syncs"]) % 2 == 0:  # the last event was a root average: one model
        hashes = {s["reference_hash"] for s in nodes.values()} | {st[k]["reference_hash"] for k in range(2)}
        assert len(hashes) == 1, hashes


def _member(broker, prefix, state_dir, log_path, *extra):
    """``streamlearn sync --shard group`` as a user starts it: a process of its own."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "streamlearn.cli", "sync", "--protocol", SPEC, "--shard", "group", "--max-nodes", "8",
         "--timeout", "2", "--state-dir", str(state_dir), "--bootstrap", broker.bootstrap, "--prefix", prefix,
         *extra], stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=env)


def _scrape(log_path) -> dict:
    """The samples of the member's metrics endpoint (its URL is in its log): (name, labels) -> value."""
    url = re.search(r"metrics: (http://\S+)", log_path.read_text()).group(1)
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_a_group_member_that_dies_has_its_shard_taken_over_from_its_state(broker, settings, prefix, tmp_path):
    """Two members share the shards; kill -9 one, the other takes its shard over from the state it kept."""
    ensure_topics(broker.bootstrap, prefix, 4, settings=settings, shards=2)
    data = {n: make_data(2 * N, seed=n) for n in range(4)}
    state = tmp_path / "state"
    a = _member(broker, prefix, state, tmp_path / "a.log", "--metrics-port", "0")
    b = None
    try:
        with Pipeline(broker, settings, prefix, spec=SPEC, timeout=2.0) as p:
            p.wait(lambda r: {r.shards.get(k, {}).get("pid") for k in range(2)} == {a.pid}, timeout=90,
                   what="the first member running both shards")
            for n in data:
                p.start_node(n)
            p.wait(lambda r: all(r.shards[k].get("nodes_alive") == 2 for k in range(2)), what="joins")
            # one endpoint for the member's shards, each sample labelled with its shard
            wait_until(lambda: all(_scrape(tmp_path / "a.log").get(("streamlearn_sync_nodes_alive",
                                                                      (("shard", str(k)),))) == 2 for k in range(2)),
                       "the first member's metrics of both shards", timeout=30)
            b = _member(broker, prefix, state, tmp_path / "b.log")
            # the group gives the second member one shard; it resumes from the state the first one kept
            p.wait(lambda r: sorted(r.shards[k].get("pid") for k in range(2)) == sorted([a.pid, b.pid])
                   and all(r.shards[k].get("nodes_alive") == 2 for k in range(2)), timeout=120,
                   what="one shard moved to the second member, its nodes registered again")
            moved = next(k for k in range(2) if p.status.shards[k]["pid"] == b.pid)
            assert p.status.shards[moved]["resumed_from"] is not None
            first = {n: encode(X[:N], y[:N], 0, "binary", 10) for n, (X, y) in data.items()}
            publish(settings, prefix, first, seconds=4.0)
            p.wait(p.learned({n: N for n in data}), timeout=120, what="the first half learned")
            p.wait(lambda r: all(r.shards[k].get("full_syncs", 0) >= 3 for k in range(2)), what="syncs in both")
            before = {k: dict(p.status.shards[k]) for k in range(2)}
            b.kill()  # kill -9: no clean leave; the group notices the silence
            b.wait(30)
            p.wait(lambda r: all(r.shards[k].get("pid") == a.pid for k in range(2))
                   and r.shards[moved].get("nodes_alive") == 2, timeout=120,
                   what="the first member running the dead member's shard again")
            taken = dict(p.status.shards[moved])
            rest = {n: encode(X[N:], y[N:], N, "binary", 10) for n, (X, y) in data.items()}
            publish(settings, prefix, rest, seconds=4.0)
            p.wait(p.learned({n: 2 * N for n in data}), timeout=120, what="the second half learned")
            p.wait(lambda r: r.shards[moved].get("full_syncs", 0) >= taken["full_syncs"] + 3, timeout=60,
                   what="the taken-over shard syncing again")
            after = {k: dict(p.status.shards[k]) for k in range(2)}
            nodes = {n: dict(p.status.nodes[n]) for n in data}
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    print({k: (before[k]["full_syncs"], taken["full_syncs"] if k == moved else None, after[k]["full_syncs"])
           for k in range(2)})
    # the new owner went on from the kept state: the counts did not start again from 0
    assert taken["resumed_from"] is not None and taken["full_syncs"] >= before[moved]["full_syncs"] - 1
    assert all(s["samples"] == 2 * N and s["accuracy"] > 0.8 for s in nodes.values()), nodes
    assert all("Traceback" not in (tmp_path / f).read_text() for f in ("a.log",)), (tmp_path / "a.log").read_text()


def test_a_static_shard_service_labels_its_metrics_with_its_shard(broker, settings, prefix, tmp_path):
    # `streamlearn sync --shard K`: the same shard="K" label as the shards of a --shard group member, so one
    # dashboard query covers both ways of running shards
    ensure_topics(broker.bootstrap, prefix, 4, settings=settings, shards=2)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "s1.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlearn.cli", "sync", "--protocol", SPEC, "--shard", "1", "--max-nodes", "8",
         "--bootstrap", broker.bootstrap, "--prefix", prefix, "--metrics-port", "0"],
        stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=env)
    try:
        wait_until(lambda: "metrics: http" in log_path.read_text(), "the metrics endpoint", timeout=60)
        wait_until(lambda: ("streamlearn_sync_nodes_alive", (("shard", "1"),)) in _scrape(log_path),
                   "a sample labelled shard=1", timeout=30)
        assert not any(name == "streamlearn_sync_nodes_alive" and not labels for name, labels in _scrape(log_path))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
