"""Robust aggregation against a poisoning attack (issue 14, point "Robust aggregation"), on the real Tansu broker.

Two nodes learn the near-separable stream under ``dynamic:delta=1.0,b=1``. Half way, the attacker
writes on ``sync.up`` as node 0 (no signing key: nothing tells it from node 0): one report whose model
is ``-9e5 * r / |r|`` (r the reference; valid CRC, under the default ``--max-norm``), then a flood of
2,000 such reports at once. With the defaults (``--clip 4``, ``--max-reports-per-second 100``,
``--report-burst 100``) the service clips the poisoned models it reads to ``||w - r|| = tau``, then
silences node 0 for a second (so the flood moves one average, not one per poll) and drops the rest:
the nodes end within 1 point of the clean run with the same seeds, and the counters (status,
Prometheus) count the attack. Without them (``clip=None``, ``max_reports_per_second=None``) the same
attack wrecks the nodes: what the defence is for.

A sudden honest drift (every node's labels swapped) moves every model far, all in one direction:
with clipping on, the nodes follow it as well as with clipping off (the bound grows with the moves).
"""

from __future__ import annotations

import time

import numpy as np
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry
from sync_wire_helpers import read_all
from test_kafka_pipeline import Pipeline, encode, make_data, publish

from streamlearn.kafka.sync_service import SyncConfig, SyncService
from streamlearn.kafka.topics import sync_up_topic
from streamlearn.kafka.wire import SyncMessage, decode_sync, encode_sync
from streamlearn.metrics import SyncMetrics

M, N, HALF, BATCH = 2, 4000, 2000, 10
SPEC = "dynamic:delta=1.0,b=1"
FLOOD = 2000
SEED = 40


class Guarded(Pipeline):
    """A :class:`Pipeline` whose sync service takes extra :class:`SyncConfig` settings (robust aggregation)."""

    def __init__(self, *args, sync_kw=None, **kw):
        super().__init__(*args, **kw)
        self.sync_kw = dict(sync_kw or {})

    def start_sync(self) -> SyncService:
        self.sync = self._start(SyncService(SyncConfig(
            protocol=self.spec, max_nodes=8, timeout=self.timeout, device="cpu", status_interval=0.2,
            bootstrap=self.broker.bootstrap, prefix=self.prefix, settings=self.settings, **self.sync_kw)))
        return self.sync


def attack(settings, prefix, sync: SyncService) -> int:
    """One poisoned report as node 0, then a flood of FLOOD more; returns the records sent."""
    r = sync.protocol_.reference.detach().cpu().numpy().astype(np.float32)
    poison = (-9e5 * r / np.linalg.norm(r)).astype(np.float32)
    assert np.linalg.norm(poison) < SyncConfig().max_norm  # the norm limit alone lets it in
    record = encode_sync(SyncMessage("report", node=0, step=10**6, n_samples=BATCH, loss=0.1, model=poison))
    producer = KafkaProducer(**settings.producer_kwargs())
    try:
        producer.send(sync_up_topic(prefix), record, partition=0)
        producer.flush()
        t0 = time.monotonic()
        for _ in range(FLOOD):
            producer.send(sync_up_topic(prefix), record, partition=0)
        producer.flush()
        print(f"\n{len(record)}-byte report, then {FLOOD} of them in {time.monotonic() - t0:.2f} s; "
              f"|r| = {np.linalg.norm(r):.3g}")
    finally:
        producer.close()
    return FLOOD + 1


def run(broker, settings, prefix, *, attacked: bool, sync_kw=None, flip_at=None) -> dict:
    """M nodes learn N samples each (labels swapped from ``flip_at``); ``attacked``: the attack at HALF.
    Returns the final node statuses and the sync service's status."""
    data = {node: make_data(N, seed=SEED + node, flip_at=flip_at) for node in range(M)}
    streams = {node: encode(X, y, 0, "binary", BATCH) for node, (X, y) in data.items()}
    cut = HALF // BATCH
    with Guarded(broker, settings, prefix, spec=SPEC, timeout=2.0, sync_kw=sync_kw) as p:
        sync = p.start_sync()
        for node in range(M):
            p.start_node(node, batch_size=BATCH, detector=None)
        p.wait(lambda r: r.sync and r.sync.get("nodes_alive") == M, what=f"{M} joins")

        def settled(done):
            return lambda r: (p.learned({n: done for n in range(M)})(r) and not r.sync["pending"]
                              and not any(r.nodes[n]["awaiting_sync"] for n in range(M)))

        publish(settings, prefix, {n: recs[:cut] for n, recs in streams.items()}, seconds=2.0)
        p.wait(settled(HALF), timeout=60, what="the first half learned")
        if attacked:
            before = sync.status()
            sent = attack(settings, prefix, sync)
            # every attack record read: processed as a report, or dropped by the rate limit
            p.wait(lambda r: (r.sync["reports"] - before["reports"]) + (r.sync["rate_limited"]
                                                                         - before["rate_limited"]) >= sent,
                   timeout=60, what="the attack read")
            p.wait(settled(HALF), timeout=60, what="the syncs of the attack done")
        publish(settings, prefix, {n: recs[cut:] for n, recs in streams.items()}, seconds=2.0)
        p.wait(settled(N), timeout=60, what="the stream learned")
        p.status.poll(0.5)  # statuses from after the last sync
        nodes = {n: dict(p.status.nodes[n]) for n in range(M)}
        status = sync.status()
    return {"nodes": nodes, "sync": status}


def up_rate(settings, prefix) -> int:
    """The most records one node sent on sync.up within one second (by the records' timestamps)."""
    stamps: dict = {}
    for rec in read_all(settings, sync_up_topic(prefix)):
        stamps.setdefault(decode_sync(rec.value).node, []).append(rec.timestamp / 1000)
    best = 0
    for t in stamps.values():
        t = np.sort(np.asarray(t))
        best = max(best, int((np.searchsorted(t, t + 1.0) - np.arange(len(t))).max()))
    return best


def _accuracies(run_: dict) -> str:
    return ", ".join(f"node {n}: {s['accuracy']:.4f} (rolling {s['rolling_accuracy']:.4f})"
                     for n, s in run_["nodes"].items())


def test_a_poisoned_report_and_a_flood_leave_the_nodes_within_a_point_of_the_clean_run(broker, settings, prefix):
    clean = run(broker, settings, f"{prefix}.c", attacked=False)
    hit = run(broker, settings, f"{prefix}.a", attacked=True)
    bare = run(broker, settings, f"{prefix}.u", attacked=True, sync_kw={"clip": None, "max_reports_per_second": None})
    peak = up_rate(settings, f"{prefix}.c")
    s = hit["sync"]
    print(f"clean:               {_accuracies(clean)}")
    print(f"attacked, defended:  {_accuracies(hit)}")
    print(f"attacked, no clip, no rate limit: {_accuracies(bare)}")
    print(f"defended: {s['clipped_models']} models clipped to ||w - r|| <= {s['clip_bound']:.3g}, "
          f"{s['rate_limited']} records dropped by the rate limit; clean run: {clean['sync']['clipped_models']} "
          f"clipped, peak {peak} records/s from one node")
    for n in range(M):
        # the final (rolling) accuracy within a point; the accuracy over the whole stream within two: two clean
        # runs differ by up to ~0.012 there already (the syncs' timing differs from run to run)
        assert abs(hit["nodes"][n]["rolling_accuracy"] - clean["nodes"][n]["rolling_accuracy"]) <= 0.01, \
            (hit["nodes"], clean["nodes"])
        assert abs(hit["nodes"][n]["accuracy"] - clean["nodes"][n]["accuracy"]) <= 0.02
        assert hit["nodes"][n]["samples"] == N and hit["nodes"][n]["seq_gaps"] == 0
    # the attack counted: every poisoned model read was clipped, then its node id silenced (CLIP_COOLDOWN),
    # so the flood beyond the first poll's burst was dropped unread
    # (node 0's own records are dropped too while its id is silenced: nothing tells them from the attacker's)
    assert s["clipped_models"] >= 1 and s["clipped_models"] + s["rate_limited"] >= FLOOD + 1
    assert s["rate_limited"] >= FLOOD + 1 - 2 * SyncConfig().report_burst
    assert s["clip_bound"] is not None and s["clip_bound"] < 100
    registry = CollectorRegistry()
    SyncMetrics(registry, status=lambda: s)
    assert registry.get_sample_value("streamlearn_sync_clipped_total") == s["clipped_models"]
    assert registry.get_sample_value("streamlearn_sync_rate_limited_total") == s["rate_limited"]
    assert registry.get_sample_value("streamlearn_sync_clip_bound") == s["clip_bound"]
    # honest runs: nothing dropped, a few moves clipped at most; honest nodes stay far below the rate limit
    assert clean["sync"]["rate_limited"] == 0 and clean["sync"]["clipped_models"] <= 10
    assert peak < SyncConfig().max_reports_per_second
    # Without the defence every poisoned record is taken in as node 0's report. What it costs then depends on
    # where the protocol stands when the records come (one run here: 0.49 accuracy, rolling 0.01; another: no
    # visible harm, the poison arrived while node 0's own report was awaited and was overwritten), so the test
    # asserts what is certain: nothing stopped it.
    assert bare["sync"]["clipped_models"] == bare["sync"]["rate_limited"] == 0
    assert bare["sync"]["reports"] - clean["sync"]["reports"] >= FLOOD // 2, (bare["sync"], clean["sync"])


def test_a_sudden_honest_drift_is_followed_with_clipping_on(broker, settings, prefix):
    # The swap moves every model from w toward -w, all in one direction. Under dynamic averaging the moves
    # stay near sqrt(delta) (a violation is reported as soon as it happens): a few are clipped at
    # factors 4 and 2, and the nodes follow the drift as well as without clipping.
    flip = 1000
    runs = {"clip 4": run(broker, settings, f"{prefix}.on", attacked=False, flip_at=flip),
            "clip 2": run(broker, settings, f"{prefix}.tight", attacked=False, flip_at=flip, sync_kw={"clip": 2}),
            "no clip": run(broker, settings, f"{prefix}.off", attacked=False, flip_at=flip, sync_kw={"clip": None})}
    print()
    for name, r in runs.items():
        bound = r["sync"]["clip_bound"]
        print(f"labels swapped at {flip}, {name}: {_accuracies(r)}; {r['sync']['clipped_models']} clipped, "
              f"bound {bound if bound is None else round(bound, 3)}, {r['sync']['full_syncs']} full syncs")
    off = runs["no clip"]["nodes"]
    # a few honest moves clipped at most (each keeps its direction), and no node ever silenced
    assert all(r["sync"]["clipped_models"] <= 10 and r["sync"]["rate_limited"] == 0 for r in runs.values())
    for name in ("clip 4", "clip 2"):
        for n in range(M):
            got = runs[name]["nodes"][n]
            # (two runs differ by ~0.006 here with nothing clipped: the syncs' timing differs)
            assert got["rolling_accuracy"] >= off[n]["rolling_accuracy"] - 0.02, (name, runs[name]["nodes"], off)
            assert got["rolling_accuracy"] > 0.95, (name, got)



def test_robust_settings_are_validated_at_the_edge(capsys):
    import pytest

    from streamlearn.cli import build_parser, main
    from streamlearn.errors import ConfigError
    from streamlearn.kafka.sync_service import sync_config_from_options
    from streamlearn.sync.robust import CLIP_FACTOR, REPORT_BURST, REPORT_RATE

    cfg = SyncConfig()
    assert (cfg.clip, cfg.max_reports_per_second, cfg.report_burst) == (CLIP_FACTOR, REPORT_RATE, REPORT_BURST)
    cfg = sync_config_from_options({"clip": "none", "max-reports-per-second": "none", "report-burst": "5"})
    assert (cfg.clip, cfg.max_reports_per_second, cfg.report_burst) == (None, None, 5)
    cfg = sync_config_from_options({"clip": "2.5", "max_reports_per_second": "20"})
    assert (cfg.clip, cfg.max_reports_per_second) == (2.5, 20.0)
    for opts, match in [({"clip": "0.5"}, "clip.*'0.5'"), ({"clip": "lots"}, "clip.*'lots'"),
                        ({"max_reports_per_second": "0"}, "max_reports_per_second.*'0'"),
                        ({"report_burst": "1.5"}, "report_burst.*'1.5'")]:
        with pytest.raises(ConfigError, match=match):
            sync_config_from_options(opts)
    # the CLI's defaults are the config's, and a bad value is a clear error before anything connects
    args = build_parser().parse_args(["sync"])
    assert (float(args.clip), float(args.max_reports_per_second), int(args.report_burst)) == \
        (CLIP_FACTOR, REPORT_RATE, REPORT_BURST)
    assert main(["sync", "--clip", "0.3", "--max-seconds", "1"]) == 2
    err = capsys.readouterr().err
    assert "clip must be a number >= 1" in err and "'0.3'" in err
