"""Signed sync records (streamlearn.kafka.signing): unit tests of signing and verifying, a fuzz of the
verifier, and the services against the real Tansu broker with a key: forged, replayed and wrongly
attributed records are refused and counted, genuine ones flow, the nodes learn as before."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from hypothesis import given, settings as hsettings
from hypothesis import strategies as st
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry

from streamlearn.errors import ConfigError
from streamlearn.kafka.signing import (
    AUTH_REASONS,
    HEADERS,
    KEY_ENV,
    Refusals,
    ReplayWindow,
    SyncSigner,
    SyncVerifier,
    load_key,
    up_sender,
)
from streamlearn.kafka.sync_service import SyncConfig
from streamlearn.kafka.topics import deadletter_topic, sync_down_topic, sync_up_topic
from streamlearn.kafka.wire import SyncMessage, decode_sync, encode_sync

from separable import make_data
from sync_wire_helpers import FakeNodes, nodes_fixture, read_all
from test_kafka_node_ids import Services
from test_kafka_pipeline import Pipeline, encode, publish
from waiting import wait_until

KEY = b"a shared secret of the tests, seed 0"
OTHER = b"another secret, not the pipeline's"


def signed(value=b"payload", key=b"0", sender="0", topic="up", epoch=100, secret=KEY, signer=None):
    signer = signer or SyncSigner(secret, topic, epoch=epoch)
    return signer.sign(value, key=key, sender=sender)


def replace_header(headers, name, raw):
    return [(n, raw if n == name else v) for n, v in headers]


# ---- keys ------------------------------------------------------------------------------------------

def test_the_key_comes_from_the_file_stripped_else_from_the_environment(tmp_path):
    path = tmp_path / "key"
    path.write_bytes(b"  file secret of sixteen+ bytes\n")
    env = {KEY_ENV: "environment secret, long enough"}
    assert load_key(str(path), environ=env) == b"file secret of sixteen+ bytes"  # the option wins
    assert load_key(None, environ=env) == b"environment secret, long enough"
    assert load_key(None, environ={}) is None
    assert load_key(None, environ={KEY_ENV: "  "}) is None  # empty: unset


def test_a_short_or_unreadable_key_is_a_config_error_naming_its_source(tmp_path):
    short = tmp_path / "short"
    short.write_bytes(b"fifteen bytes!!\n")
    with pytest.raises(ConfigError, match=f"--sync-key-file {short}: the sync key must be at least 16 bytes, got 15"):
        load_key(str(short))
    with pytest.raises(ConfigError, match=f"{KEY_ENV}: the sync key must be at least 16 bytes, got 3"):
        load_key(None, environ={KEY_ENV: "abc"})
    with pytest.raises(ConfigError, match="--sync-key-file .*missing: cannot read the sync key"):
        load_key(str(tmp_path / "missing"))


def test_service_configs_and_the_cli_check_the_key_file(tmp_path):
    from streamlearn.cli import build_parser
    from streamlearn.kafka.node import NodeConfig, node_config_from_options
    from streamlearn.kafka.sync_service import SyncConfig, sync_config_from_options

    short = tmp_path / "short"
    short.write_bytes(b"short")
    good = tmp_path / "good"
    good.write_bytes(KEY)
    with pytest.raises(ConfigError, match="--sync-key-file"):
        NodeConfig(node=0, source="sea", sync_key_file=str(short))
    with pytest.raises(ConfigError, match="--sync-key-file"):
        SyncConfig(sync_key_file=str(short))
    assert node_config_from_options({"id": 0, "source": "sea", "sync-key-file": str(good)}).sync_key_file == str(good)
    assert sync_config_from_options({"sync_key_file": str(good)}).sync_key_file == str(good)
    for command in (["node", "--id", "0"], ["sync"]):
        assert build_parser().parse_args(command + ["--sync-key-file", str(good)]).sync_key_file == str(good)


# ---- sign and verify ---------------------------------------------------------------------------

def test_a_signed_record_is_accepted_once_and_names_its_sender():
    headers = signed()
    assert [name for name, _ in headers] == list(HEADERS)
    verifier = SyncVerifier(KEY, "up")
    first = verifier.verify(headers, b"0", b"payload")
    assert first.ok and first.sender == "0"
    again = verifier.verify(headers, b"0", b"payload")
    assert again.reason == "replayed" and "counter 1" in again.detail


@pytest.mark.parametrize("case", ["wrong key", "unsigned", "value", "kafka key", "no kafka key", "sender", "epoch",
                                  "counter", "signature", "other topic", "missing header", "twice"])
def test_tampering_with_anything_signed_is_forged(case):
    headers, key, value = signed(), b"0", b"payload"
    if case == "wrong key":
        headers = signed(secret=OTHER)
    elif case == "unsigned":
        headers = []
    elif case == "value":
        value = b"payloaD"
    elif case == "kafka key":
        key = b"1"
    elif case == "no kafka key":
        key = None
    elif case == "sender":
        headers = replace_header(headers, "sl-from", b"1")
    elif case == "epoch":
        headers = replace_header(headers, "sl-epoch", b"101")
    elif case == "counter":
        headers = replace_header(headers, "sl-ctr", b"2")
    elif case == "signature":
        sig = dict(headers)["sl-sig"]
        headers = replace_header(headers, "sl-sig", (b"0" if sig[:1] != b"0" else b"1") + sig[1:])
    elif case == "other topic":
        headers = signed(topic="down")
    elif case == "missing header":
        headers = [(n, v) for n, v in headers if n != "sl-ctr"]
    elif case == "twice":
        headers = headers + [headers[0]]
    verdict = SyncVerifier(KEY, "up").verify(headers, key, value)
    assert verdict.reason == "forged", verdict


def test_counters_and_epochs_only_move_forward_and_a_newer_epoch_is_a_restart():
    verifier = SyncVerifier(KEY, "up")
    old, new = SyncSigner(KEY, "up", epoch=100), SyncSigner(KEY, "up", epoch=200)
    records = [(old.sign(b"m%d" % i, key=b"0", sender="0"), b"m%d" % i) for i in range(3)]
    assert verifier.verify(records[1][0], b"0", records[1][1]).ok  # counter 2 first (1 was lost)
    assert verifier.verify(records[0][0], b"0", records[0][1]).reason == "replayed"  # below the last
    assert verifier.verify(records[2][0], b"0", records[2][1]).ok
    restarted = new.sign(b"after", key=b"0", sender="0")  # the sender restarted: counter 1 again
    assert verifier.verify(restarted, b"0", b"after").ok
    late = old.sign(b"late", key=b"0", sender="0")  # the old epoch, even with a new counter
    assert verifier.verify(late, b"0", b"late").reason == "replayed"
    # other senders have counters of their own
    assert verifier.verify(old.sign(b"x", key=b"1", sender="1"), b"1", b"x").ok


def test_only_the_sync_service_may_write_sync_down_and_no_node_may_sign_as_it_on_sync_up():
    down = SyncVerifier(KEY, "down")
    assert down.verify(signed(topic="down", sender="sync", key=None), None, b"payload").ok
    assert down.verify(signed(topic="down", sender="3", key=None), None, b"payload").reason == "unknown_sender"
    up = SyncVerifier(KEY, "up")
    assert up.verify(signed(sender="sync"), b"0", b"payload").reason == "unknown_sender"
    # the sync service compares the signer with the node the message names
    assert up_sender(0) == "0" and up_sender(None, "t0k") == "auto:t0k" and up_sender(2, "t0k") == "2"


def test_the_replay_window_forgets_the_least_recent_sender_beyond_its_size():
    w = ReplayWindow(max_senders=2)
    for sender in ("a", "b", "c"):
        w.accept(sender, 1, 1)
    assert list(w.last) == ["b", "c"] and w.check("a", 1, 1) is None and w.check("b", 1, 1) == "replayed"


def test_refusals_count_every_reason_and_pace_the_warnings():
    clock = iter([0.0, 0.5, 1.0, 20.0]).__next__
    r = Refusals(every=10.0, clock=clock)
    assert [r.note(reason) for reason in ("forged", "replayed", "unknown_sender", "forged")] == [True, False, False,
                                                                                                 True]
    assert r.by_reason == {"forged": 2, "replayed": 1, "unknown_sender": 1} and r.total == 4


# ---- fuzz: the verifier never raises -----------------------------------------------------------

_names = st.sampled_from(list(HEADERS) + ["other", ""]) | st.text(max_size=8)
_raw = st.binary(max_size=80) | st.sampled_from([b"0", b"1", b"sync", b"18446744073709551616", b"-1", b"0" * 64])
_header = st.tuples(_names, _raw) | st.tuples(_names, st.none() | st.integers() | st.text(max_size=4))
_headers = st.none() | st.lists(_header, max_size=8) | st.lists(st.none() | st.integers(), max_size=3)


@hsettings(max_examples=400, deadline=None, derandomize=True)
@given(headers=_headers, key=st.none() | st.binary(max_size=8), value=st.binary(max_size=64) | st.none(),
       topic=st.sampled_from(["up", "down"]))
def test_fuzz_the_verifier_returns_a_reason_and_never_raises(headers, key, value, topic):
    verdict = SyncVerifier(KEY, topic).verify(headers, key, value)
    assert verdict.reason in AUTH_REASONS


@hsettings(max_examples=300, deadline=None, derandomize=True)
@given(value=st.binary(max_size=64), at=st.integers(0, 3), junk=st.binary(max_size=70), drop=st.booleans())
def test_fuzz_a_genuine_record_with_one_header_changed_is_refused(value, at, junk, drop):
    headers = signed(value=value)
    name, raw = headers[at]
    if not drop and junk == raw:
        return
    mutated = [h for h in headers if h[0] != name] if drop else replace_header(headers, name, junk)
    verdict = SyncVerifier(KEY, "up").verify(mutated, b"0", value)
    assert verdict.reason == "forged" or (name == "sl-from" and verdict.reason == "unknown_sender")


# ---- metrics -------------------------------------------------------------------------------------

def test_the_refusals_become_prometheus_counters_by_reason():
    from streamlearn.metrics import NodeMetrics, SyncMetrics

    by = {"forged": 3, "replayed": 2, "unknown_sender": 1}
    reg = CollectorRegistry()
    SyncMetrics(reg).update_from_status({"sync_signed": True, "unauthenticated_by_reason": by})
    node_reg = CollectorRegistry()
    NodeMetrics(node_reg, node=2).update_from_status({"node": 2, "sync_signed": True, "unauthenticated_by_reason": by})
    for reason, count in by.items():
        assert reg.get_sample_value("streamlearn_sync_unauthenticated_total", {"reason": reason}) == count
        assert node_reg.get_sample_value("streamlearn_node_sync_unauthenticated_total",
                                         {"node": "2", "reason": reason}) == count
    unsigned = CollectorRegistry()
    SyncMetrics(unsigned).update_from_status({"sync_signed": False, "joins": 1})
    assert unsigned.get_sample_value("streamlearn_sync_unauthenticated_total", {"reason": "forged"}) is None


# ---- the sync service with a key, against the real broker --------------------------------------

D = 2


class SignedNodes(FakeNodes):
    """Hand-played nodes that sign what they send, and a sync service with the key (or none)."""

    def __init__(self, broker, settings, prefix, key_file=None, **kw):
        self.settings_ = settings
        self.signers: dict = {}
        super().__init__(broker, settings, prefix, SyncConfig(
            protocol="dynamic:delta=1.0,b=1", max_nodes=4, timeout=60.0, device="cpu", status_interval=0.1,
            bootstrap=broker.bootstrap, prefix=prefix, settings=settings, sync_key_file=key_file, **kw))

    def produce(self, value: bytes, key=None, headers=None) -> None:
        self.producer.send(sync_up_topic(self.prefix), value, key=key, headers=headers, partition=0)
        self.producer.flush()

    def send_as(self, msg: SyncMessage, secret=KEY, sender=None, signer=None) -> tuple:
        """Send ``msg`` signed (by the node's own signer unless told otherwise); the record as sent."""
        value, key = encode_sync(msg), None if msg.node is None else str(msg.node).encode()
        if signer is None:
            signer = self.signers.setdefault(msg.node, SyncSigner(KEY, "up")) if secret == KEY else \
                SyncSigner(secret, "up")
        headers = signer.sign(value, key=key, sender=sender or up_sender(msg.node, msg.token))
        self.produce(value, key, headers)
        return value, key, headers

    def status(self, **want) -> dict:
        """The service's status once it has every ``key=value`` of ``want``."""
        def matching():
            got = self.service.status()
            return got if all(got.get(k) == v for k, v in want.items()) else None

        return wait_until(matching, f"a status with {want}")


signed_nodes = nodes_fixture(SignedNodes)


def join(node: int) -> SyncMessage:
    return SyncMessage("join", node=node, d=D, layout="L", model=np.zeros(D, dtype=np.float32))


def test_the_sync_service_refuses_forged_replayed_and_misattributed_records(signed_nodes, settings, prefix,
                                                                           tmp_path):
    key_file = tmp_path / "sync.key"
    key_file.write_bytes(KEY + b"\n")
    f = signed_nodes(key_file=str(key_file))
    for node in range(3):
        f.send_as(join(node))
        f.expect(lambda m, node=node: m.kind == "send" and m.targets == (node,), f"the join answer of {node}")
    # a genuine violation: node 0 reports, the others answer the request, a full sync goes down
    report = f.send_as(SyncMessage("report", node=0, step=1, n_samples=10, model=np.array([4.0, 0.0], np.float32)))
    request = f.expect(lambda m: m.kind == "request")
    for node in request.targets:
        f.send_as(SyncMessage("model", node=node, step=1, request=request.request, model=np.zeros(D, np.float32)))
    f.expect(lambda m: m.kind == "send" and m.reason == "sync", "the full sync")
    f.status(violations=1)

    poison = SyncMessage("report", node=0, step=2, n_samples=10, model=np.array([-9e5, 0.0], np.float32))
    f.produce(encode_sync(poison), b"0")                                     # unsigned: forged
    f.send_as(poison, secret=OTHER)                                          # another key: forged
    f.produce(*report)                                                       # a captured record again: replayed
    older = SyncSigner(KEY, "up", epoch=f.signers[1].epoch - 1)
    f.send_as(SyncMessage("report", node=1, step=2, model=np.array([9.0, 0.0], np.float32)), signer=older)  # replayed
    f.send_as(poison, sender="1", signer=f.signers[1])                       # node 1 signs as node 0: unknown_sender
    f.produce(encode_sync(join(3)), b"3")                                    # a ghost joins unsigned: forged
    f.send_as(join(3), secret=OTHER)                                         # ... or with another key: forged
    f.produce(encode_sync(SyncMessage("leave", node=2)), b"2")               # a forged leave: forged
    st = f.status(unauthenticated=8)
    assert st["sync_signed"] and st["unauthenticated_by_reason"] == {"forged": 5, "replayed": 2, "unknown_sender": 1}
    assert st["nodes_alive"] == 3 and st["alive"] == [0, 1, 2]  # no ghost, no forged leave
    assert st["violations"] == 1 and st["pending"] == [] and st["bad_records"] == 0

    # genuine records still flow: node 2 restarts (a newer epoch, its counter from 1 again) and leaves
    f.signers[2] = SyncSigner(KEY, "up")
    f.send_as(join(2))
    f.expect(lambda m: m.kind == "send" and m.targets == (2,), "the join answer of the restarted node")
    f.send_as(SyncMessage("leave", node=2))
    st = f.status(nodes_alive=2, unauthenticated=8)

    # everything the service wrote is signed by "sync", in order; the refused records are dead letters
    down = SyncVerifier(KEY, "down")
    records = read_all(settings, sync_down_topic(prefix))
    assert records and all(down.verify(r.headers, r.key, r.value).ok for r in records)
    dead = read_all(settings, deadletter_topic(prefix))
    reasons = [dict(r.headers)["sl-error"].split(b")")[0] for r in dead]
    assert sorted(reasons) == sorted([b"unauthenticated (forged"] * 5 + [b"unauthenticated (replayed"] * 2
                                     + [b"unauthenticated (unknown_sender"])
    registry = CollectorRegistry()
    from streamlearn.metrics import SyncMetrics

    SyncMetrics(registry, status=f.service.status)
    assert registry.get_sample_value("streamlearn_sync_unauthenticated_total", {"reason": "forged"}) == 5


def test_without_a_key_everything_works_as_before_with_one_warning(signed_nodes, caplog, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with caplog.at_level(logging.WARNING, logger="streamlearn"):
        f = signed_nodes()
        f.produce(encode_sync(join(0)), b"0")  # unsigned
        f.expect(lambda m: m.kind == "send" and m.targets == (0,), "the join answer")
        f.send_as(join(1))  # signed records are read too (the headers are ignored)
        f.expect(lambda m: m.kind == "send" and m.targets == (1,), "the join answer")
    st = f.status(nodes_alive=2)
    assert not st["sync_signed"] and st["unauthenticated"] == 0
    warnings = [r for r in caplog.records if "sync messages are not authenticated" in r.getMessage()]
    assert len(warnings) == 1 and KEY_ENV in warnings[0].getMessage()
    assert "--sync-key-file" in warnings[0].getMessage()


# ---- nodes and the sync service with a key, end to end -----------------------------------------

class SignedPipeline(Pipeline):
    """The pipeline of test_kafka_pipeline.py, every service given the key file."""

    def __init__(self, *args, key_file: str, **kw):
        super().__init__(*args, **kw)
        self.key_file = key_file

    def start_sync(self):
        from streamlearn.kafka.sync_service import SyncService

        self.sync = self._start(SyncService(SyncConfig(
            protocol=self.spec, max_nodes=8, timeout=self.timeout, device="cpu", status_interval=0.3,
            bootstrap=self.broker.bootstrap, prefix=self.prefix, settings=self.settings, sync_key_file=self.key_file)))
        return self.sync

    def start_node(self, node: int, **kw):
        return super().start_node(node, sync_key_file=self.key_file, **kw)


def test_signed_nodes_learn_and_sync_while_forged_and_replayed_records_are_refused(broker, settings, prefix,
                                                                                  tmp_path):
    from streamlearn.kafka.status import model_hash

    key_file = tmp_path / "sync.key"
    key_file.write_bytes(b"  " + KEY + b"\n")
    n = 600
    data = {node: make_data(2 * n, seed=20 + node) for node in (0, 1)}

    def part(k):
        return {node: encode(X[k * n:(k + 1) * n], y[k * n:(k + 1) * n], k * n, "binary", 20)
                for node, (X, y) in data.items()}

    with SignedPipeline(broker, settings, prefix, key_file=str(key_file)) as p:
        sync = p.start_sync()
        for node in (0, 1):
            p.start_node(node)
        p.wait(lambda r: r.sync and r.sync.get("nodes_alive") == 2, what="2 signed joins")
        publish(settings, prefix, part(0), seconds=1.0)
        p.wait(lambda r: p.learned({0: n, 1: n})(r) and r.sync["full_syncs"] >= 1 and not r.sync["pending"],
               what="the first part learned, with a full sync")
        d = p.status.sync["d"]
        up = [r for r in read_all(settings, sync_up_topic(prefix)) if decode_sync(r.value).kind == "report"]
        down = [r for r in read_all(settings, sync_down_topic(prefix)) if decode_sync(r.value).kind == "send"]
        assert up and down and all(dict(r.headers)["sl-from"] in (b"0", b"1") for r in up)

        bad = np.full(d, -1e3, dtype=np.float32)  # what an attacker wants every node to hold
        poison = encode_sync(SyncMessage("report", node=0, step=10_000, n_samples=10, model=bad))
        producer = KafkaProducer(**settings.producer_kwargs())
        try:
            # on sync.up: an unsigned and a wrongly signed poisoned report, a replayed genuine report, a ghost join
            producer.send(sync_up_topic(prefix), poison, key=b"0", partition=0)
            producer.send(sync_up_topic(prefix), poison, key=b"0", partition=0,
                          headers=SyncSigner(OTHER, "up").sign(poison, key=b"0", sender="0"))
            producer.send(sync_up_topic(prefix), up[-1].value, key=up[-1].key, headers=up[-1].headers, partition=0)
            ghost = encode_sync(SyncMessage("join", node=5, d=d, layout="L", model=bad))
            producer.send(sync_up_topic(prefix), ghost, key=b"5", partition=0)
            # on sync.down: a poisoned full sync unsigned and wrongly signed as the sync service, a replayed one
            forged = encode_sync(SyncMessage("send", targets=(0, 1), epoch=sync.epoch_, reason="sync", reference=True,
                                             model=bad))
            producer.send(sync_down_topic(prefix), forged, partition=0)
            producer.send(sync_down_topic(prefix), forged, partition=0,
                          headers=SyncSigner(OTHER, "down").sign(forged, sender="sync"))
            producer.send(sync_down_topic(prefix), down[-1].value, headers=down[-1].headers, partition=0)
            producer.flush()
        finally:
            producer.close()
        p.wait(lambda r: r.sync["unauthenticated_by_reason"] == {"forged": 3, "replayed": 1, "unknown_sender": 0}
               and all(r.nodes[k]["unauthenticated_by_reason"] == {"forged": 2, "replayed": 1, "unknown_sender": 0}
                       for k in (0, 1)), what="every attack refused and counted")

        publish(settings, prefix, part(1), seconds=1.0)
        p.wait(p.learned({0: 2 * n, 1: 2 * n}), what="the second part learned")
        p.wait(lambda r: not r.sync["pending"] and not any(s["awaiting_sync"] for s in r.nodes.values()),
               what="no sync in flight")
        p.status.poll(0.5)
        nodes, final = dict(p.status.nodes), p.status.sync
    assert final["nodes_alive"] == 2 and 5 not in final["alive"]  # no ghost
    assert final["unauthenticated"] == 4 and final["bad_records"] == 0
    for status in nodes.values():
        assert status["sync_signed"] and status["joined"] and status["syncs"] >= 1  # genuine syncs went on
        assert status["rolling_accuracy"] > 0.9, status["rolling_accuracy"]  # unharmed
        assert status["bad_sync_records"] == 0
        assert model_hash(bad) not in (status["model_hash"], status["reference_hash"])


def test_auto_id_nodes_claim_renew_join_and_leave_signed(broker, settings, prefix, tmp_path):
    key_file = tmp_path / "sync.key"
    key_file.write_bytes(KEY)
    with Services(broker, settings, prefix) as s:
        sync = s.sync(sync_key_file=str(key_file))
        nodes = [s.node(sync_key_file=str(key_file)) for _ in range(2)]  # claims signed as auto:<token>
        wait_until(lambda: sync.status().get("nodes_alive") == 2, "2 auto nodes joined")
        assert sorted(n.status()["node"] for n in nodes) == [0, 1]
        renewed = sync.status()["bytes_up_wire"]
        wait_until(lambda: sync.status()["bytes_up_wire"] > renewed, "renewals, signed as the node id")
        s.stop(nodes[0])  # its leave, with its token, frees the id
        wait_until(lambda: sync.status()["nodes_alive"] == 1 and len(sync.status()["assigned_ids"]) == 1, "the leave")
        assert sync.status()["unauthenticated"] == 0 and sync.status()["sync_signed"]
        assert nodes[1].status()["unauthenticated"] == 0 and nodes[1].status()["sync_signed"]
