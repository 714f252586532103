"""Node-service throughput against the raw kafka-python consumer, and sync averaging against a copy.

Everything runs in this one process against a real Tansu broker
(:class:`~streamlearn.kafka.broker.EmbeddedBroker`, memory storage, loopback), with one torch
intra-op thread as the CLI sets for every service process (``--threads``):

1. ``--n`` SEA samples (default 1,000,000: a fraction of a second of the raw consumer's reading) are
   published to one node topic as binary sample batches of ``--record-size`` readings (the
   producer's default record size). For every node
   configuration the stream is published to a fresh topic prefix (publishing is not timed),
   then read:

   * **raw**: a kafka-python consumer, assign + poll + ``decode_sample_batch``, nothing else,
     until all samples are read; once with kafka-python's fetch defaults and once with the
     node's fetch settings (``max_poll_records``, ``fetch_wait_ms``); the faster is the
     baseline. Both check record CRCs, kafka-python's default and what the node does, with the
     compiled CRC-32C of the ``crc32c`` package (a dependency: kafka-python uses it when
     importable; the JSON says whether it was, ``crc32c_compiled``); a third read with
     ``check_crcs=False`` shows what checking CRCs still costs, reported beside the ratio;
   * **node**: one :class:`~streamlearn.kafka.node.NodeService` in a thread (consume, decode,
     test-then-train, node rule, commit) learning the topic to its end, with the logistic
     learner, detector None or ADWIN, at each ``--batch-sizes`` mini-batch size. Its protocol
     is ``dynamic:delta=0.5,b=1`` (the divergence is checked after every step); no sync
     service runs, so a violation sends a model and the node learns on (its wait times out).
     It publishes its predictions (``predictions``, on by default); the same node without them
     runs once more on a fresh topic (``node_without_predictions``);
   * **learner alone**: the same learner, in this process, without Kafka, test-then-train
     (``predict_proba_learn_many``) one mini-batch per call: what learning costs a step at a time;
   * **core alone**: the node's learning core (:class:`~streamlearn.node.core.NodeCore`: the
     learner, scoring, prequential metrics, loss guard, detector, node rule, the predictions in
     the declared order) on the same mini-batches, without Kafka, driven as the node drives it:
     runs of the mini-batches of up to ``RUN_SAMPLES`` buffered samples (:meth:`NodeCore.learn_run`,
     one compiled call for the logistic learner without a detector; with ADWIN one mini-batch a
     call): what a node costs before it consumes, publishes predictions and commits.

   Both clocks include creating the Kafka clients (the node's setup too: learner, producer,
   consumers, join); "steady" rates leave out the first 10 % of the samples. Every run is
   repeated ``--repeats`` times and the fastest kept (same treatment for raw and node). The
   node must end with every sample learned once and its position committed (checked).

   The node consumes and learns in one thread, one after the other, so even with nothing else
   to do it could not beat ``1 / (1 / raw + 1 / core alone)``: the **bound** on the ratio is
   ``core / (raw + core)``. The table shows it beside the ratio, with the share of the
   node's time that goes to its core (``node / core alone``), and says which batch sizes meet
   the target (node/raw >= 0.5) and, for the others, whether the core alone rules it out. A second bound
   comes from the CPU: every raw and node run records the CPU seconds of this process (all its threads:
   ``cpu_seconds``) and of the broker (``broker_cpu_seconds``, from /proc) while it ran. At ratio R the
   node has ``raw seconds / R`` of wall time, so ``cpus`` times that of CPU, and it needs what it and the
   broker used: ``ratio_bound_cpu = cpus * raw seconds / (node CPU + broker CPU)`` is the highest ratio
   these cores allow the node doing that work, however it were spread over threads or processes
   (``..._without_predictions`` for the node without predictions out).
   ``node_vs_raw_b<batch>`` (detector none; ``..._adwin`` with ADWIN) are the ratios node/raw of
   the same run, at the top of the JSON. Per mini-batch the node's time splits (``parts_us_per_step``)
   into consuming and decoding (the raw consumer's time for as many samples), the core (learning,
   scoring, metrics, node rule), predictions out (the node's time past its setup less
   that of the node without them), the node's setup (its clock starts before it) and the rest of
   the service (buffer, polling the sync topic, commits, status): what is left.

2. Sync averaging: the mean of 64 models of 1M float32 parameters as the sync service's
   protocols compute it (``ModelBank.mean`` over every row: gather + mean; also
   ``weighted_mean`` on the m x d tensor directly, plain and sample-weighted) against a plain
   copy of the same bytes (``torch.clone`` and ``numpy.copy`` of the 64 x 1M tensor; the
   faster copy is the reference), on the bank's device (cuda when available, else cpu).

Prints a table and writes ``bench/results/pipeline.json``. Not a test: tests never time.

    python bench/pipeline.py [--n 1000000] [--batch-sizes 10 100 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import statistics
import threading
import time

import numpy as np
import torch
from kafka.record.util import crc32c_c

from streamlearn.kafka.broker import EmbeddedBroker
from streamlearn.kafka.codecs import decode_sample_batch, encode_sample_batch
from streamlearn.kafka.config import KafkaSettings, default_fetch_wait_ms
from streamlearn.kafka import proba_text
from streamlearn.kafka.node import NodeConfig, NodeService
from streamlearn.kafka.topics import ensure_topics, samples_topic
from streamlearn.learners import TorchLearner
from streamlearn.node import run_kernel
from streamlearn.node.core import NodeCore
from streamlearn.streams import make_source
from streamlearn.sync.aggregate import weighted_mean
from streamlearn.sync.bank import ModelBank

OUT = os.path.join(os.path.dirname(__file__), "results", "pipeline.json")
PROTOCOL = "dynamic:delta=0.5,b=1"
STEADY_FROM = 0.1  # steady rates start after this fraction of the samples
TARGET = 0.5  # node/raw, the target for the logistic learner on binary batches
RUN_SAMPLES = 2000  # samples a node's buffer holds before it polls again (NodeService, at small batches)
_prefixes = itertools.count()
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def broker_cpu(pid) -> float | None:
    """CPU seconds the broker process has used so far (Linux /proc; None elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (OSError, ValueError, IndexError, TypeError):
        return None


def cpu_of(fn, broker_pid) -> dict:
    """``fn()``'s result with the CPU seconds this process (every thread) and the broker used during it."""
    c0, b0 = time.process_time(), broker_cpu(broker_pid)
    out = fn()
    b1 = broker_cpu(broker_pid)
    out["cpu_seconds"] = time.process_time() - c0
    out["broker_cpu_seconds"] = None if b0 is None or b1 is None else b1 - b0
    return out


def publish(bootstrap, settings, X, y, names, record_size) -> str:
    """A fresh prefix whose node-0 topic holds the stream as binary batches; returns the prefix."""
    from kafka import KafkaProducer

    prefix = f"bench{os.getpid()}x{next(_prefixes)}"
    ensure_topics(bootstrap, prefix, [0], settings=settings)
    producer = KafkaProducer(**settings.producer_kwargs(bootstrap, linger_ms=5))
    topic = samples_topic(prefix, 0)
    try:
        for i in range(0, len(y), record_size):
            producer.send(topic, encode_sample_batch(X[i:i + record_size], y[i:i + record_size], first_seq=i,
                                                     node=0, names=names), partition=0)
        producer.flush()
    finally:
        producer.close()
    return prefix


def raw_consume(bootstrap, settings, prefix, n, **fetch) -> dict:
    """Time a bare consumer (assign + poll + decode) reading the node topic to its end."""
    from kafka import KafkaConsumer, TopicPartition

    t0 = time.perf_counter()
    consumer = KafkaConsumer(**settings.consumer_kwargs(bootstrap, **fetch))
    try:
        tp = TopicPartition(samples_topic(prefix, 0), 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        got, t_mark = 0, None
        while got < n:
            for records in consumer.poll(timeout_ms=100).values():
                for rec in records:
                    got += decode_sample_batch(rec.value).n
            if t_mark is None and got >= STEADY_FROM * n:
                t_mark, n_mark = time.perf_counter(), got
            if time.perf_counter() - t0 > 600:
                raise RuntimeError(f"raw consumer stalled at {got}/{n} samples")
        t1 = time.perf_counter()
    finally:
        consumer.close()
    return {"seconds": t1 - t0, "samples_per_s": n / (t1 - t0), "steady_samples_per_s": _rate(n - n_mark, t1 - t_mark)}


def node_run(bootstrap, settings, prefix, n, batch_size, detector, learner, predictions=True) -> dict:
    """Time one NodeService thread learning the node topic to its end (then stopped cleanly)."""
    cfg = NodeConfig(node=0, source="sea", learner=learner, protocol=PROTOCOL, batch_size=batch_size,
                     detector=detector, device="cpu", predictions=predictions, prefix=prefix, bootstrap=bootstrap,
                     settings=settings)
    svc = NodeService(cfg)
    errors = []

    def target():
        try:
            svc.run()
        except BaseException as exc:  # reported below
            errors.append(exc)

    t0 = time.perf_counter()
    thread = threading.Thread(target=target, name="bench-node", daemon=True)
    thread.start()
    t_mark = t_first = None
    # The bench reads the service's sample counter (a private attribute) every ms: status
    # messages come only every status_interval, too coarse for a clock.
    while True:
        done = getattr(svc, "_samples", 0)
        now = time.perf_counter()
        if t_first is None and done > 0:
            t_first = now
        if t_mark is None and done >= STEADY_FROM * n:
            t_mark, n_mark = now, done
        if done >= n:
            break
        if errors or not thread.is_alive() or now - t0 > 600:
            raise RuntimeError(f"node stopped at {done}/{n} samples: {errors}")
        time.sleep(0.001)
    t1 = time.perf_counter()
    svc.stop()
    thread.join(30)
    if errors:
        raise errors[0]
    status = svc.status()
    if status["samples"] != n or status["offset"] != status["committed"]:
        raise RuntimeError(f"node ended wrong: samples {status['samples']} of {n}, "
                           f"offset {status['offset']}, committed {status['committed']}")
    return {"seconds": t1 - t0, "samples_per_s": n / (t1 - t0), "steady_samples_per_s": _rate(n - n_mark, t1 - t_mark),
            "setup_seconds": t_first - t0, "steps": status["steps"], "accuracy": status["accuracy"],
            "drifts_detected": status["n_drifts"], "models_sent": status["models_sent"]}


def learner_alone(X, y, batch_size, learner, classes, names) -> dict:
    """Time test-then-train of the learner alone (no Kafka) on the stream's mini-batches, as the node does it."""
    from streamlearn.learners import make_learner
    from streamlearn.learners.base import labels_array

    model = make_learner(learner, features=list(names), classes=list(classes), seed=0, device="cpu")
    labels = labels_array(list(classes))[y]
    fused = getattr(model, "predict_proba_learn_many", None)
    t0 = time.perf_counter()
    for i in range(0, len(y), batch_size):
        if fused is not None:
            fused(X[i:i + batch_size], labels[i:i + batch_size])
        else:
            model.predict_proba_many(X[i:i + batch_size])
            model.learn_many(X[i:i + batch_size], labels[i:i + batch_size])
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "samples_per_s": len(y) / seconds,
            "us_per_step": 1e6 * seconds / -(-len(y) // batch_size)}


def core_alone(X, y, batch_size, learner, classes, names, detector) -> dict:
    """Time the node's learning core alone (no Kafka) on the stream's mini-batches, as the node drives it (runs)."""
    from streamlearn.learners import make_learner

    model = make_learner(learner, features=list(names), classes=list(classes), seed=0, device="cpu")
    core = NodeCore(model, list(classes), PROTOCOL, node=0, seed=0, detector=detector)
    seqs = np.arange(len(y))
    yi = y.astype(np.int64)
    t0 = time.perf_counter()
    i = 0
    while i + batch_size <= len(y):
        # no sync service: a violation's model is built, not sent; run_proba: the predictions out
        steps, _ = core.learn_run(X[i:i + RUN_SAMPLES], yi[i:i + RUN_SAMPLES], seqs[i:i + RUN_SAMPLES], batch_size)
        i += steps * batch_size
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "samples_per_s": len(y) / seconds,
            "us_per_step": 1e6 * seconds / -(-len(y) // batch_size), "accuracy": core.preq.accuracy}


def _rate(n, seconds) -> float | None:
    return n / seconds if seconds > 0 else None  # too few samples after the mark to time them


def best(runs: list[dict]) -> dict:
    return min(runs, key=lambda r: r["seconds"])


def verdict(r: dict) -> str:
    """Whether a row meets the target, and if not, whether the node's core alone or the cores' CPU rule it out."""
    what = f"detector {r['detector']}, batch {r['batch_size']}: ratio {r['ratio']:.3f}"
    if r["ratio"] >= TARGET:
        return f"{what} >= {TARGET}: target met"
    raw_us = r["parts_us_per_step"]["consume_decode (raw)"]
    if r["ratio_bound"] < TARGET:
        return (f"{what} < {TARGET}: not reachable here: the node's core alone does "
                f"{r['core_alone']['samples_per_s']:,.0f} samples/s ({r['core_alone']['us_per_step']:.1f} us "
                f"per mini-batch, against {raw_us:.1f} us for the raw consumer to read and decode it), which caps "
                f"the ratio at {r['ratio_bound']:.3f}; the core takes {r['core_share']:.0%} of the node's time")
    cpu = r.get("ratio_bound_cpu")
    if cpu is not None and cpu < TARGET:
        nd = r["node"]
        return (f"{what} < {TARGET}: not reachable on these {r['cpus']} cores doing this work: the node used "
                f"{nd['cpu_seconds']:.2f} CPU-s in its process and the broker {nd['broker_cpu_seconds']:.2f} for "
                f"{r['n']:,} samples, while at {TARGET} it would have {r['cpus']} x "
                f"{r['n'] / r['raw_samples_per_s'] / TARGET:.2f} CPU-s; the cores cap the ratio at {cpu:.3f} "
                f"({r['ratio_bound_cpu_without_predictions']:.3f} without predictions out)")
    return (f"{what} < {TARGET}: reachable in principle (bound {r['ratio_bound']:.3f}"
            + ("" if cpu is None else f", cores {cpu:.3f}") + f"); the core takes "
            f"{r['core_share']:.0%} of the node's time, the rest is consuming, decoding, predictions out and the "
            f"service's own work")


def bench_pipeline(args, broker, settings) -> list[dict]:
    src = make_source("sea", seed=0)
    X, y = src.to_arrays(args.n)
    X = np.asarray(X, dtype=np.float32)
    y = np.searchsorted(np.asarray(src.classes), y).astype(np.int32)  # class indices, as the producer sends
    names = list(src.feature_names)
    bootstrap = broker.bootstrap
    node_fetch = dict(max_poll_records=NodeConfig.max_poll_records, fetch_max_wait_ms=default_fetch_wait_ms())  # as a node without --fetch-wait-ms
    rows = []
    for detector, batch_size in itertools.product(args.detectors, args.batch_sizes):
        det = None if detector == "none" else detector
        raw_default, raw_node, raw_nocrc, node, nopred, alone, cores = [], [], [], [], [], [], []
        for _ in range(args.repeats):
            prefix = publish(bootstrap, settings, X, y, names, args.record_size)
            pid = broker.pid
            raw_default.append(cpu_of(lambda: raw_consume(bootstrap, settings, prefix, args.n), pid))
            raw_node.append(cpu_of(lambda: raw_consume(bootstrap, settings, prefix, args.n, **node_fetch), pid))
            raw_nocrc.append(raw_consume(bootstrap, settings, prefix, args.n, check_crcs=False))
            node.append(cpu_of(lambda: node_run(bootstrap, settings, prefix, args.n, batch_size, det, args.learner),
                               pid))
            prefix = publish(bootstrap, settings, X, y, names, args.record_size)
            nopred.append(cpu_of(lambda: node_run(bootstrap, settings, prefix, args.n, batch_size, det, args.learner,
                                                  predictions=False), pid))
            alone.append(learner_alone(X, y, batch_size, args.learner, src.classes, names))
            cores.append(core_alone(X, y, batch_size, args.learner, src.classes, names, det))
        rd, rn, rc, nd, la = best(raw_default), best(raw_node), best(raw_nocrc), best(node), best(alone)
        co, npd = best(cores), best(nopred)
        steps = nd["steps"]
        raw_us = 1e6 * min(rd["seconds"], rn["seconds"]) / steps  # consuming + decoding as many samples
        node_us = 1e6 * nd["seconds"] / steps
        setup_us = 1e6 * nd["setup_seconds"] / steps
        # predictions out: the node's time past its setup, less that of the same node without them
        pred_us = node_us - setup_us - 1e6 * (npd["seconds"] - npd["setup_seconds"]) / npd["steps"]
        raw = min((rd, rn), key=lambda r: r["seconds"])
        steady = (nd["steady_samples_per_s"] / raw["steady_samples_per_s"]
                  if nd["steady_samples_per_s"] and raw["steady_samples_per_s"] else None)
        row = {
            "learner": args.learner, "detector": detector, "batch_size": batch_size, "n": args.n,
            "record_size": args.record_size, "protocol": PROTOCOL,
            "raw_samples_per_s": raw["samples_per_s"], "raw_steady_samples_per_s": raw["steady_samples_per_s"],
            "raw_default_fetch": rd, "raw_node_fetch": rn, "raw_without_crc_check": rc,
            "node_samples_per_s": nd["samples_per_s"], "node_steady_samples_per_s": nd["steady_samples_per_s"],
            "node": nd,
            "ratio": nd["samples_per_s"] / raw["samples_per_s"],
            "steady_ratio": steady,
            "learner_alone": la,
            "core_alone": co,
            # consume then learn, in one thread: the best ratio a node could reach (see the module doc)
            "ratio_bound": co["samples_per_s"] / (raw["samples_per_s"] + co["samples_per_s"]),
            "ratio_bound_learner_per_batch": la["samples_per_s"] / (raw["samples_per_s"] + la["samples_per_s"]),
            # where a mini-batch's time goes (the node's clock includes its setup, spread over its steps)
            "parts_us_per_step": {
                "consume_decode (raw)": raw_us,
                "core (learning, scoring, metrics, node rule)": co["us_per_step"],
                "predictions out (node - node without them)": pred_us,
                "service rest (buffer, sync topic, commits, status)":
                    node_us - setup_us - raw_us - co["us_per_step"] - pred_us,
                "setup (learner, clients, join)": setup_us,
            },
            "node_without_predictions": npd,
            "ratio_without_predictions": npd["samples_per_s"] / raw["samples_per_s"],
            "core_share": nd["samples_per_s"] / co["samples_per_s"],
            "ratio_to_raw_without_crc_check": nd["samples_per_s"] / rc["samples_per_s"],
            # the CPU the node takes (its process and the broker serving it) against what the cores give
            "cpus": os.cpu_count(),
            "ratio_bound_cpu": cpu_bound(raw, nd),
            "ratio_bound_cpu_without_predictions": cpu_bound(raw, npd),
            "node_us_per_step": 1e6 * nd["seconds"] / nd["steps"],
            "all_node_runs_samples_per_s": [r["samples_per_s"] for r in node],
            "all_raw_runs_samples_per_s": [max(a["samples_per_s"], b["samples_per_s"])
                                           for a, b in zip(raw_default, raw_node)],
        }
        rows.append(row)
        print(f"  {detector:>6} B={batch_size:<5} raw {row['raw_samples_per_s']:>10,.0f}/s  "
              f"node {row['node_samples_per_s']:>10,.0f}/s  ratio {row['ratio']:.3f} "
              f"(bound {row['ratio_bound']:.2f})  learner alone {la['samples_per_s']:>10,.0f}/s  "
              f"core alone {co['samples_per_s']:>10,.0f}/s  acc {nd['accuracy']:.3f}", flush=True)
    return rows


def cpu_bound(raw: dict, node: dict) -> float | None:
    """The highest node/raw ratio this machine's cores allow the node, doing the work it did: at ratio R it
    has ``raw seconds / R`` of wall time, ``cpus`` times that of CPU, and it needs what its process and the
    broker used (``cpu_seconds + broker_cpu_seconds``), however the work were spread over threads or processes."""
    if node.get("broker_cpu_seconds") is None:
        return None
    return (os.cpu_count() or 1) * raw["seconds"] / (node["cpu_seconds"] + node["broker_cpu_seconds"])


def _time(fn, repeats, sync) -> dict:
    fn()  # warm-up (allocator, threads)
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t)
        del out
    return {"best_seconds": min(times), "median_seconds": statistics.median(times)}


def bench_averaging(args) -> dict:
    m, d = args.models, args.params
    bank = ModelBank(m, d)  # cuda when available, else cpu: as the sync service
    dev = bank.device
    gen = torch.Generator().manual_seed(0)
    bank.put_many(range(m), torch.randn(m, d, generator=gen))
    samples = torch.arange(1, m + 1, dtype=torch.float32, device=dev)
    nodes = list(range(m))
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    W = bank.W
    cases = {
        "ModelBank.mean (all rows)": lambda: bank.mean(nodes),
        "weighted_mean(W)": lambda: weighted_mean(W),
        "weighted_mean(W, samples)": lambda: weighted_mean(W, samples),
        "torch clone of W": lambda: W.clone(),
    }
    if dev.type == "cpu":
        A = W.numpy()
        cases["numpy copy of W"] = lambda: A.copy()
    timed = {name: _time(fn, args.avg_repeats, sync) for name, fn in cases.items()}
    copy = min(v["best_seconds"] for k, v in timed.items() if "copy" in k or "clone" in k)
    for v in timed.values():
        v["ratio_to_copy"] = v["best_seconds"] / copy
        v["GB_per_s_read"] = m * d * 4 / v["best_seconds"] / 1e9
    ok = torch.allclose(bank.mean(nodes), W.double().mean(0).float(), atol=1e-5)
    return {"models": m, "params": d, "bytes": m * d * 4, "device": str(dev), "copy_seconds": copy,
            "mean_matches_float64": bool(ok), "cases": timed}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="samples in the node topic")
    ap.add_argument("--record-size", type=int, default=100, help="readings per binary record")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--detectors", nargs="+", default=["none", "adwin"])
    ap.add_argument("--learner", default="logreg")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", type=int, default=64)
    ap.add_argument("--params", type=int, default=1_000_000)
    ap.add_argument("--avg-repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: what `streamlearn node` and `sync` set)")
    ap.add_argument("--skip-pipeline", action="store_true")
    ap.add_argument("--skip-averaging", action="store_true")
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.ERROR)
    # As the CLI does for every service process (cli._setup_logging): small models, one process
    # per node; with more threads tiny ops wait on OpenMP/MKL workers whenever the cores are busy.
    torch.set_num_threads(args.threads)
    # The first torch optimizer imports torch._dynamo (~1.5 s): process start-up, not throughput.
    TorchLearner("logreg", n_features=1, classes=[0, 1], device="cpu")
    # Likewise numba: importing it and loading the node's compiled code from its cache (~0.5 s)
    run_kernel.warm_up()
    proba_text.warm_up()
    # crc32c_compiled: kafka-python checks record CRCs with the crc32c package's C code (else pure Python)
    result = {"benchmark": "pipeline", "platform": platform.platform(), "python": platform.python_version(),
              "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
              "load_average_at_start": os.getloadavg(), "crc32c_compiled": crc32c_c is not None,
              "args": vars(args)}
    if not args.skip_pipeline:
        print(f"node service vs raw consumer: {args.n} SEA samples, binary records of {args.record_size}, "
              f"learner {args.learner}, best of {args.repeats}")
        with EmbeddedBroker() as broker:
            settings = KafkaSettings(bootstrap_servers=broker.bootstrap)
            rows = bench_pipeline(args, broker, settings)
        result["pipeline"] = rows
        for r in rows:  # node/raw per batch size, same run (the target: >= 0.5 at batch 10)
            tail = "" if r["detector"] == "none" else f"_{r['detector']}"
            result[f"node_vs_raw_b{r['batch_size']}{tail}"] = r["ratio"]
        print(f"\n{'detector':>8} {'batch':>6} {'raw/s':>11} {'node/s':>11} {'ratio':>6} {'steady':>7} "
              f"{'bound':>6} {'cores':>6} {'core/s':>11} {'core':>9} {'us/step':>8} {'raw no-crc/s':>13} {'ratio':>6}")
        for r in rows:
            steady = "-" if r["steady_ratio"] is None else f"{r['steady_ratio']:.3f}"
            print(f"{r['detector']:>8} {r['batch_size']:>6} {r['raw_samples_per_s']:>11,.0f} "
                  f"{r['node_samples_per_s']:>11,.0f} {r['ratio']:>6.3f} {steady:>7} {r['ratio_bound']:>6.3f} "
                  f"{'-' if r['ratio_bound_cpu'] is None else format(r['ratio_bound_cpu'], '.3f'):>6} "
                  f"{r['core_alone']['samples_per_s']:>11,.0f} {r['core_share']:>9.0%} "
                  f"{r['node_us_per_step']:>8.0f} {r['raw_without_crc_check']['samples_per_s']:>13,.0f} "
                  f"{r['ratio_to_raw_without_crc_check']:>6.3f}")
        crc = "compiled (crc32c package)" if result["crc32c_compiled"] else "pure Python (no crc32c module)"
        print(f"raw: the faster of kafka-python's fetch defaults and the node's fetch settings, CRCs checked "
              f"(kafka-python's default, as the node; CRC-32C {crc}); 'raw no-crc': check_crcs=False, what "
              f"checking CRCs still costs")
        print("bound: core / (raw + core), the best ratio a node that consumes then learns in one thread "
              "could reach; core/s: the node's learning core alone, no Kafka, driven as the node drives it; core: the "
              "share of the node's time spent in it (node/s over core/s); cores: cpus x raw seconds / (the node's "
              "CPU seconds + the broker's during it), the best ratio these cores allow the node doing that work")
        print("\nwhere a mini-batch's time goes (us per step; the node's clock includes its setup):")
        for r in rows:
            parts = "  ".join(f"{name.split(' (')[0]} {us:.1f}" for name, us in r["parts_us_per_step"].items())
            print(f"  {r['detector']:>6} B={r['batch_size']:<5} node {r['node_us_per_step']:.1f} = {parts}  "
                  f"(learner alone, a mini-batch per call, {r['learner_alone']['us_per_step']:.1f}; "
                  f"ratio without predictions out {r['ratio_without_predictions']:.3f})")
        for r in rows:
            print(f"  {verdict(r)}")
        result["target_met_at"] = [[r["detector"], r["batch_size"]] for r in rows if r["ratio"] >= TARGET]
    if not args.skip_averaging:
        avg = bench_averaging(args)
        result["averaging"] = avg
        print(f"\naveraging {avg['models']} models x {avg['params']:,} float32 on {avg['device']} "
              f"({avg['bytes'] / 2**20:.0f} MiB); mean correct: {avg['mean_matches_float64']}")
        print(f"{'operation':>28} {'best ms':>8} {'median ms':>10} {'x copy':>7} {'GB/s read':>10}")
        for name, v in avg["cases"].items():
            print(f"{name:>28} {1e3 * v['best_seconds']:>8.1f} {1e3 * v['median_seconds']:>10.1f} "
                  f"{v['ratio_to_copy']:>7.2f} {v['GB_per_s_read']:>10.1f}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
