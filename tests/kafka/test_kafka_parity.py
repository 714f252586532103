"""The pipeline does what the simulator measured: 12 node services and a sync service on real
Tansu learn a slice of Beijing air (one node per station), and the simulator learns the same rows
with the same learner and protocol; accuracy and communication must agree within stated margins.

The rows: ``tests/data/beijing_slice.csv.gz`` (the first 2,000 hours of the data set; see
tests/data/README.md), read ONCE by the project's own CSV source (rows with a missing value are
skipped there, so both sides skip the same ones) and materialised with ``load_node_data``. The
simulator learns those arrays; the pipeline gets exactly those rows, one binary batch record per
mini-batch, on each node's topic.

What differs from the simulator (and why the margins are not zero):

- The nodes do not run in lockstep. Publishing is paced round by round (record k of every node at
  the same moment, a mini-batch every ~0.14 s, as ``publish(..., seconds=...)`` does), so the nodes
  stay within a step or so of each other, but a sync's model arrives after the round trip over
  Kafka: a node may have learned a mini-batch more where the simulator applies it right after the
  step (since 2026-12 the node keeps those steps: it holds the average plus what it learned since it
  sent its model, ``NodeCore._with_progress``). Periodic averaging barely notices (all nodes send
  at the same moment, the mean is back before the next mini-batch).
- Dynamic averaging: a node's violation is decided on its own model at its own time, and balancing
  takes one or more round trips, whose requests reach nodes that have moved on by a step or two; so
  which nodes sync, and when, drifts apart from the lockstep run, and the steps overwritten cost
  accuracy (see MARGINS).
- The pipeline's counts include the join replies (the reference sent to each node as it registers,
  one dense model per node); the simulator has none. They are taken off before comparing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_kafka_pipeline import Pipeline, publish

from streamlearn.kafka.codecs import encode_sample_batch
from streamlearn.kafka.node import NodeConfig, NodeService
from streamlearn.kafka.sync_service import SyncConfig, SyncService
from streamlearn.sync.codec import FP32_HEADER_BYTES

DATA = Path(__file__).resolve().parents[1] / "data" / "beijing_slice.csv.gz"
STATIONS = ["Aotizhongxin", "Changping", "Dingling", "Dongsi", "Guanyuan", "Gucheng", "Huairou", "Nongzhanguan",
            "Shunyi", "Tiantan", "Wanliu", "Wanshouxigong"]
M = len(STATIONS)
BATCH = 10
LR = 0.15
LEARNER = {"lr": LR, "scale": True}  # logreg; the simulator's template: TorchLearner("logreg", **LEARNER)
SECONDS = 40.0  # publishing time per run: 146 mini-batches per node, one every ~0.27 s

# Margins per protocol: accuracy in points (|pipeline - simulator|, mean over the nodes) and
# communication relative to the simulator's counts (models up, models down, bytes). Measured on a
# loaded 2-core machine, 8 runs at this pace (pipeline minus simulator):
#
# Periodic: the same rounds (146 steps, b=8: 18 full syncs, the last after step 144; the last 2 steps
# send nothing), so the counts matched exactly in every run (fp32 and sign) at 20 s of publishing in
# 2026-11; they differ when a round's answer takes longer than b steps (12 node services, the sync
# service and the producer share one Python process here): a node does not send its model again
# while the answer to the last one is awaited (the non-blocking rule), so two rounds become one. In
# 2026-12 at 20 s: 17 and 15 of 18 full syncs in CI on this machine (models up -6 % and -17 %),
# accuracy -0.21 and +0.41 points. At 40 s the answer has ~2 s per round. A full suite run beside two busy
# loops (2026-12-04) stalled kafka-python's event loop for 34 s and merged 5 of 18: since then each node's
# merged rounds are counted (its suppressed sync points) and the counts compared over the rounds it had.
# Accuracy: -0.21 to +0.25 points (fp32), -0.31 to +0.06 (sign), in 2026-11.
#
# Dynamic: the pipeline ran below the lockstep simulator, -0.41 to -1.15 points (mean -0.8; -0.19
# and -0.45 in one run each at 40 s and 10 s of publishing) while a sync overwrote the steps a node
# learned during the round trip; keeping them (2026-12) gave -0.31 points in one run (periodic b=8:
# +0.11, sign: +0.23). Its transfers move by -11 % to +8 %
# (models up -5 % to +12 %, down -17 % to +3 %; -15 %, -8 % and -23 % in the run at 10 s); the
# simulator alone moves by +-6 % over protocol seeds. The accuracy bias is the sync latency: a node
# learns on while its violation is balanced (one or more round trips), and the averaged model then
# overwrites what it learned meanwhile. A simulator that applies every sync one round late,
# discarding the step in between, shows it: 83.1-83.5 % and ~500-560 transfers against 84.0-84.3 %
# and ~630-700 in lockstep (periodic b=8: unchanged, 83.7 %). Models up exceed models down in the
# pipeline: a violation from a node already in the balancing, or an answer that arrives after the
# sync ended, is counted up but brings nothing down.
MARGINS = {  # spec: (accuracy points, relative communication)
    "periodic:b=8": (1.0, 0.12),
    "periodic:b=8,codec=sign": (1.0, 0.12),
    "dynamic:delta=0.3": (2.0, 0.35),
}


@pytest.fixture(scope="module")
def rows():
    """The per-station arrays, built once with the project's CSV source, cut to whole mini-batches."""
    from streamlearn.sim.simulator import NodeData, load_node_data
    from streamlearn.streams import node_streams

    streams = node_streams(f"csv:{DATA}", M, split="key:station", key_map={s: i for i, s in enumerate(STATIONS)},
                           label="pm25_high", on_bad_record="skip")
    data = load_node_data(streams, None)  # every node cut to the shortest station (Huairou: 1,468 rows)
    n = data.n // BATCH * BATCH
    return NodeData(X=np.ascontiguousarray(data.X[:, :n]), y=np.ascontiguousarray(data.y[:, :n]),
                    classes=data.classes, feature_names=data.feature_names)


class StationPipeline(Pipeline):
    """The pipeline test's services with a slot for every station, nodes with the Beijing layout."""

    def start_sync(self) -> SyncService:
        self.sync = self._start(SyncService(SyncConfig(
            protocol=self.spec, max_nodes=M, timeout=self.timeout, device="cpu", status_interval=0.3,
            bootstrap=self.broker.bootstrap, prefix=self.prefix, settings=self.settings)))
        return self.sync

    def start_node(self, node: int, data=None) -> NodeService:
        self.nodes[node] = self._start(NodeService(NodeConfig(
            node=node, features=data.feature_names, classes=data.classes, learner="logreg", learner_params=LEARNER,
            batch_size=BATCH, protocol=self.spec, detector=None, status_interval=0.3, commit_interval=0.5,
            device="cpu", bootstrap=self.broker.bootstrap, prefix=self.prefix, settings=self.settings)))
        return self.nodes[node]


COMM = ("models_up", "models_down", "bytes_up", "bytes_down")


def run_pipeline(broker, settings, prefix, spec, data) -> tuple[dict, dict]:
    """The node statuses once every row was learned, and the sync service's final status."""
    n = data.n
    records = {node: [encode_sample_batch(data.X[node, i:i + BATCH], data.y[node, i:i + BATCH], first_seq=i,
                                          names=data.feature_names) for i in range(0, n, BATCH)]
               for node in range(M)}
    # A timeout well above the round trip: a loaded machine must not make the service give up on a node.
    with StationPipeline(broker, settings, prefix, spec=spec, timeout=10.0) as p:
        sync = p.start_sync()
        # Nodes start once the service is up: its hello (sent as it starts) then precedes them, instead of
        # reaching a node that had registered already and making it register again.
        p.wait(lambda r: r.sync is not None and r.sync.get("state") == "running", what="the sync service")
        for node in range(M):
            p.start_node(node, data)
        p.wait(lambda r: r.sync and r.sync.get("nodes_alive") == M
               and all(r.nodes.get(k, {}).get("joined") for k in range(M)), timeout=60, what="12 joins")
        publish(settings, prefix, records, seconds=SECONDS)
        p.wait(lambda r: p.learned({k: n for k in range(M)})(r) and not r.sync["pending"]
               and not any(s["awaiting_sync"] for s in r.nodes.values()), timeout=60, what="every row learned")
        p.stop(sync)
        final = sync.status()
        p.status.poll(0.5)
        nodes = {k: dict(p.status.nodes[k]) for k in range(M)}
    return nodes, final


@pytest.mark.parametrize("spec", list(MARGINS))
def test_the_pipeline_matches_the_simulator_on_beijing_air(broker, settings, prefix, rows, spec):
    from streamlearn.learners import TorchLearner
    from streamlearn.sim.simulator import simulate

    sim = simulate(rows, TorchLearner("logreg", seed=0, device="cpu", **LEARNER), spec, batch_size=BATCH,
                   progress=False)
    nodes, final = run_pipeline(broker, settings, prefix, spec, rows)

    for k, st in nodes.items():  # every published row learned, once, in order
        assert st["samples"] == rows.n and st["seq_gaps"] == 0 and st["last_seq"] == rows.n - 1, (k, st)
        assert st["deadletters"] == 0 and st["joined"]
        assert st["join_hash"] == st["w0_hash"]  # registered before the first sync, never again later
    # Every join is answered with the reference: one dense model down. A node that hears the service's
    # hello after it sent its join registers again (harmless: still w0, before any sample), so there can
    # be more joins than nodes.
    joins = final["joins"]
    assert joins >= M
    comm = {k: final[k] for k in COMM}
    comm["models_down"] -= joins
    comm["bytes_down"] -= joins * (FP32_HEADER_BYTES + 4 * sim.d)

    acc = float(np.mean([st["accuracy"] for st in nodes.values()]))
    transfers = comm["models_up"] + comm["models_down"]
    sent = comm["bytes_up"] + comm["bytes_down"]
    print(f"\n{spec}: accuracy pipeline {acc:.4f} simulator {sim.accuracy:.4f} "
          f"({100 * (acc - sim.accuracy):+.2f} points); transfers {transfers} vs {sim.transfers} "
          f"(up {comm['models_up']} vs {sim.comm['models_up']}, down {comm['models_down']} vs "
          f"{sim.comm['models_down']}); bytes {sent} vs {sim.bytes}; full syncs {final['full_syncs']} vs "
          f"{sim.comm['full_syncs']}, partial {final['partial_syncs']} vs {sim.comm['partial_syncs']}; "
          f"timeouts {final['timeouts']}, joins {joins}")

    points, rel = MARGINS[spec]
    assert abs(acc - sim.accuracy) * 100 <= points, (acc, sim.accuracy)
    share = 1.0  # of the simulator's rounds the pipeline had
    if spec.startswith("periodic"):
        # Every node passes the simulator's sync points (every b steps); at one where its last model is still
        # awaited (an answer slower than b steps: a loaded machine) it sends nothing (the non-blocking rule), and
        # two rounds are one. Counted per node, the points match exactly; the counts are compared over the rounds
        # the pipeline had, so a stalled machine cannot fail the test, and a lost or extra model still does.
        points_per_node = sim.comm["models_up"] // M
        for k, st in nodes.items():
            # (the node rule's "model" answers: sent, the node's violations, or suppressed)
            assert st["violations"] + st["suppressed"] == points_per_node, (k, st["violations"], st["suppressed"])
        assert comm["models_up"] == sum(st["violations"] for st in nodes.values())  # every model sent came up
        merged = sum(st["suppressed"] for st in nodes.values())
        assert merged <= sim.comm["models_up"] // 2, merged  # most rounds happen as in the simulator
        share = 1.0 - merged / sim.comm["models_up"]
    for ours, theirs, what in [(comm["models_up"], share * sim.comm["models_up"], "models up"),
                               (comm["models_down"], share * sim.comm["models_down"], "models down"),
                               (sent, share * sim.bytes, "bytes")]:
        assert theirs > 0 and abs(ours - theirs) <= rel * theirs, (what, ours, theirs, comm, sim.comm)
