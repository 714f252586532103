"""Soak: the embedded pipeline for minutes, with drifts, bad records and faults on a schedule.

Runs a Tansu broker, ``streamlearn sync`` (with ``--state-dir``), ``--nodes`` node processes
(with ``--checkpoint-dir``) and ``streamlearn produce`` (SEA, binary batches, drifts spread
over the run), all as real processes. On a schedule it injects faults (``kill -9`` a node and
restart it, ``kill -9`` the sync service and restart it on its state, stop a node cleanly and
restart it, ``kill -9`` the broker (memory storage: it loses every topic) and restart it on the
same port; ``--no-broker-kill`` leaves the broker alone; a poisoning attempt: a node's own model
flipped and stretched to ``-9e5 w/|w|``, sent as node 0 with 500 copies, ``--no-poison`` leaves it
out, its effect on the rolling accuracies written beside it) and writes a few undecodable records
into the node topics. Then it stops the producer, waits until every node has learned up to the
last sample produced, stops everything cleanly and checks the books, per node:

- samples produced (the producer's own count) == samples learned (the node's count, which a
  restored checkpoint carries on: exactly once with respect to the model) + samples counted as
  lost (``seq_lost``: the sequence numbers the node never got, what a broker restart took);
  without a broker kill nothing may be lost;
- bad records written (since the last broker restart: those before it went with the broker) ==
  records dead-lettered (distinct source offsets on the dead-letter topic; a record dead-lettered
  again after a crash counts once);
- samples learned a second time after a crash (``relearned``) are reported apart.

It also samples the resident memory (RSS) of every process every 5 s and reports each one's
value 20 s after its start and at its end (a flat line: no leak), and the syncs. Prints a table and
writes ``bench/results/soak.json``. Not a test: ``python bench/soak.py --minutes 10``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

PREFIX = "soak"


def rss_mb(pid: int) -> float | None:
    """Resident memory of ``pid`` in MB (None when the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Service:
    """One ``streamlearn`` process that can be killed and started again; every incarnation is logged."""

    def __init__(self, name: str, args: list, env: dict, logdir: str):
        self.name, self.args, self.env, self.logdir = name, [str(a) for a in args], env, logdir
        self.proc: subprocess.Popen | None = None
        self.incarnations: list[dict] = []
        self.start()

    def start(self) -> None:
        k = len(self.incarnations)
        log = open(os.path.join(self.logdir, f"{self.name}.{k}.log"), "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "streamlearn.cli", *self.args], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        log.close()
        self.incarnations.append({"pid": self.proc.pid, "started": time.time(), "ended": None, "how": None,
                                  "rss_mb": []})

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def sample_rss(self, t0: float) -> None:
        if self.alive:
            mb = rss_mb(self.proc.pid)
            if mb is not None:
                self.incarnations[-1]["rss_mb"].append([round(time.time() - t0, 1), round(mb, 1)])

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.incarnations[-1].update(ended=time.time(), how="kill -9", code=self.proc.returncode)

    def stop(self, timeout: float = 60) -> int:
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.incarnations[-1].update(ended=time.time(), how="SIGTERM", code=code)
        return code


def count_topic(settings, bootstrap: str, topic: str) -> dict:
    """Samples and bad records in a node topic, read from its start to its end."""
    from kafka import KafkaConsumer, TopicPartition

    from streamlearn.kafka.codecs import DecodeError, decode_sample_batch

    c = KafkaConsumer(**settings.consumer_kwargs(bootstrap, fetch_max_wait_ms=100))
    tp = TopicPartition(topic, 0)
    c.assign([tp])
    c.seek_to_beginning(tp)
    end = c.end_offsets([tp])[tp]
    samples = bad = records = 0
    while c.position(tp) < end:
        for recs in c.poll(timeout_ms=500).values():
            for rec in recs:
                records += 1
                try:
                    samples += decode_sample_batch(rec.value).n
                except DecodeError:
                    bad += 1
    c.close()
    return {"records": records, "samples": samples, "bad_records": bad, "end_offset": end}


def deadlettered(settings, bootstrap: str) -> dict:
    """Distinct (topic, offset) sources of the dead-letter topic, and all its records, per source topic."""
    from kafka import KafkaConsumer, TopicPartition

    from streamlearn.kafka.topics import deadletter_topic

    c = KafkaConsumer(**settings.consumer_kwargs(bootstrap, fetch_max_wait_ms=100))
    tp = TopicPartition(deadletter_topic(PREFIX), 0)
    c.assign([tp])
    c.seek_to_beginning(tp)
    end = c.end_offsets([tp])[tp]
    distinct, total = defaultdict(set), defaultdict(int)
    while c.position(tp) < end:
        for recs in c.poll(timeout_ms=500).values():
            for rec in recs:
                h = {k: v.decode() for k, v in rec.headers}
                topic = h.get("sl-source-topic", "?")
                distinct[topic].add(int(h.get("sl-source-offset", -1)))
                total[topic] += 1
    c.close()
    return {t: {"distinct": len(distinct[t]), "records": total[t]} for t in distinct}


def poison(settings, bootstrap: str, flood: int = 500) -> dict:
    """The poisoning attack of the hardening issue, from outside: read the newest model a node reported on
    ``sync.up``, send it back as node 0 flipped and stretched to ``-9e5 w/|w|`` (valid CRC, under the default
    ``--max-norm``), then ``flood`` more copies at once. Returns what was sent."""
    import numpy as np
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    from streamlearn.kafka.codecs import DecodeError
    from streamlearn.kafka.topics import sync_up_topic
    from streamlearn.kafka.wire import SyncMessage, decode_sync, encode_sync

    c = KafkaConsumer(**settings.consumer_kwargs(bootstrap, fetch_max_wait_ms=100))
    tp = TopicPartition(sync_up_topic(PREFIX), 0)
    c.assign([tp])
    end = c.end_offsets([tp])[tp]
    c.seek(tp, max(0, end - 500))
    w = None
    while c.position(tp) < end:
        for recs in c.poll(timeout_ms=500).values():
            for rec in recs:
                try:
                    msg = decode_sync(rec.value)
                except DecodeError:
                    continue
                if msg.model is not None and msg.kind in ("report", "model"):
                    w = np.asarray(msg.model, dtype=np.float32)
    c.close()
    if w is None:
        return {"sent": 0, "why": "no model on sync.up to copy"}
    bad = (-9e5 * w / np.linalg.norm(w)).astype(np.float32)
    record = encode_sync(SyncMessage("report", node=0, step=10**9, n_samples=10, loss=0.1, model=bad))
    p = KafkaProducer(**settings.producer_kwargs(bootstrap))
    for _ in range(1 + flood):
        p.send(sync_up_topic(PREFIX), record, partition=0)
    p.flush()
    p.close()
    return {"sent": 1 + flood, "norm": float(np.linalg.norm(bad)), "bytes": len(record)}


def producer_counts(log_path: str) -> tuple[dict, str | None]:
    """Samples the producer sent per node, from its final summary, and its delivery line (None: no outage)."""
    with open(log_path, "rb") as fh:
        text = fh.read().decode("utf-8", "replace")
    sent = {int(k): int(n) for k, n in re.findall(r"node (\d+): (\d+) samples in \d+ records", text)}
    failed = re.findall(r"delivery: [^\n]*", text)
    return sent, (failed[-1] if failed else None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="how long the stream runs")
    ap.add_argument("--nodes", type=int, default=3, help="node processes")
    ap.add_argument("--rate", type=float, default=250.0, help="samples per second per node")
    ap.add_argument("--fault-every", type=float, default=None,
                    help="seconds between two faults (default: 8 faults over the run)")
    ap.add_argument("--checkpoint-every", type=int, default=2000, help="samples between two node checkpoints")
    ap.add_argument("--protocol", default="dynamic:delta=0.5,b=1")
    ap.add_argument("--no-broker-kill", action="store_true", help="leave the broker out of the faults")
    ap.add_argument("--no-poison", action="store_true", help="leave the poisoning attempt out of the faults")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "soak.json"))
    ap.add_argument("--workdir", help="keep logs, checkpoints and state here (default: a temp dir)")
    args = ap.parse_args(argv)

    from streamlearn.kafka.broker import EmbeddedBroker
    from streamlearn.kafka.config import KafkaSettings
    from streamlearn.kafka.status import StatusReader
    from streamlearn.kafka.topics import ensure_topics, samples_topic

    m = args.nodes
    seconds = args.minutes * 60
    work = args.workdir or tempfile.mkdtemp(prefix="streamlearn-soak-")
    os.makedirs(work, exist_ok=True)
    broker = EmbeddedBroker(log_path=os.path.join(work, "tansu.log")).start()
    bootstrap = broker.bootstrap
    settings = KafkaSettings(bootstrap_servers=bootstrap)
    ensure_topics(bootstrap, PREFIX, m, settings=settings)
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=bootstrap, KAFKA_TOPIC_PREFIX=PREFIX, OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    n_total = int(seconds * args.rate)
    drifts = [f"sudden@{int(n_total * 0.2)}", f"label-permutation@{int(n_total * 0.4)}",
              f"feature-rotation@{int(n_total * 0.6)}:angle=90", f"gradual@{int(n_total * 0.8)}:width=2000"]
    print(f"soak: {m} nodes, {args.rate:g} samples/s each, {args.minutes:g} min, drifts {drifts}; work dir {work}",
          flush=True)

    sync = Service("sync", ["sync", "--protocol", args.protocol, "--max-nodes", 16, "--timeout", 2, "--device", "cpu",
                            "--state-dir", os.path.join(work, "sync-state")], env, work)
    nodes = [Service(f"node{i}", ["node", "--id", i, "--source", "sea", "--learner", "logreg", "--protocol",
                                  args.protocol, "--batch-size", 10,
                                  "--checkpoint-dir", os.path.join(work, "checkpoints"),
                                  "--checkpoint-every", args.checkpoint_every], env, work) for i in range(m)]
    reader = StatusReader(bootstrap, PREFIX, settings=settings)
    deadline = time.monotonic() + 120
    while not (reader.sync and reader.sync.get("nodes_alive") == m):
        reader.poll(0.5)
        if time.monotonic() > deadline:
            raise SystemExit(f"the nodes did not join within 120 s; logs in {work}")
    # with progress: its final summary (per node samples, and what was not delivered) is in its log
    producer = Service("producer", ["produce", "--source", "sea", "--nodes", m, "--rate", args.rate, "--format",
                                    "binary", "--batch", 50, "--schedule", "staggered:3000",
                                    *[a for d in drifts for a in ("--drift", d)]], env, work)
    t0 = time.time()
    services = [sync, *nodes, producer]

    # faults: kill -9 a node, kill -9 the sync service, SIGTERM a node; each restarted after a pause
    # (node 0 is never touched: its memory line runs through the whole soak)
    victims = list(range(1, m)) or [0]
    kinds = (["kill-node", "kill-sync", "term-node"] + ([] if args.no_broker_kill else ["kill-broker"])
             + ([] if args.no_poison else ["poison"]))
    n_faults = 8
    every = args.fault_every or seconds / (n_faults + 1)
    plan = [(every * (k + 1), kinds[k % len(kinds)], victims[k % len(victims)])
            for k in range(int(seconds // every)) if every * (k + 1) < seconds - 20]
    faults, bad_written = [], defaultdict(int)
    from kafka import KafkaProducer

    garbage = KafkaProducer(**settings.producer_kwargs(bootstrap))
    next_bad = 15.0
    stop_sampling = threading.Event()

    def sampler():
        while not stop_sampling.wait(5.0):
            for s in services:
                s.sample_rss(t0)

    threading.Thread(target=sampler, daemon=True).start()
    for s in services:
        s.sample_rss(t0)
    while (now := time.time() - t0) < seconds:
        reader.poll(0.5)
        for f in faults:  # the nodes' rolling accuracy 30 s after a poisoning attempt
            if f["kind"] == "poison" and "rolling_accuracy_30s_after" not in f and now >= f["t"] + 30:
                f["rolling_accuracy_30s_after"] = {i: reader.nodes.get(i, {}).get("rolling_accuracy")
                                                   for i in range(m)}
        if now >= next_bad:  # a few records nobody can decode, into one node's topic (in turn)
            node = int(next_bad // 30) % m
            for i in range(3):
                garbage.send(samples_topic(PREFIX, node), b"\x00soak garbage %d" % i, partition=0)
            garbage.flush()
            bad_written[node] += 3
            next_bad += 30.0
        if plan and now >= plan[0][0] and plan[0][1] == "kill-broker":
            plan.pop(0)
            broker.kill()  # memory storage: every topic, offset and dead letter so far is gone
            print(f"  t={now:5.0f}s  kill-broker (nodes at {[reader.nodes.get(i, {}).get('samples') for i in range(m)]})",
                  flush=True)
            time.sleep(3.0)
            broker.start()  # same port, empty
            ensure_topics(bootstrap, PREFIX, m, settings=settings)
            bad_written.clear()  # the bad records written so far went with the broker
            reader.close()
            reader = StatusReader(bootstrap, PREFIX, settings=settings)  # the status topic is new too
            faults.append({"t": round(now, 1), "kind": "kill-broker", "service": "broker"})
            continue
        if plan and now >= plan[0][0] and plan[0][1] == "poison":
            plan.pop(0)
            before = {i: reader.nodes.get(i, {}).get("rolling_accuracy") for i in range(m)}
            sent_attack = poison(settings, bootstrap)
            print(f"  t={now:5.0f}s  poison: {sent_attack} (rolling accuracy before {before})", flush=True)
            faults.append({"t": round(now, 1), "kind": "poison", "service": "sync.up", **sent_attack,
                           "rolling_accuracy_before": before})
            continue
        if plan and now >= plan[0][0]:
            _, kind, victim = plan.pop(0)
            target = sync if kind == "kill-sync" else nodes[victim]
            st = dict(reader.nodes.get(victim, {})) if kind != "kill-sync" else dict(reader.sync or {})
            (target.stop if kind == "term-node" else target.kill)()
            print(f"  t={now:5.0f}s  {kind} {target.name} (samples {st.get('samples')}, full syncs "
                  f"{(reader.sync or {}).get('full_syncs')})", flush=True)
            time.sleep(3.0)
            target.start()
            faults.append({"t": round(now, 1), "kind": kind, "service": target.name})
    producer_code = producer.stop()
    garbage.close()
    sent, not_delivered = producer_counts(os.path.join(work, "producer.0.log"))
    print(f"producer stopped (exit {producer_code}, sent {sent}, {not_delivered or 'all delivered'}); waiting for "
          "the nodes to learn up to the last sample", flush=True)

    produced = {i: count_topic(settings, bootstrap, samples_topic(PREFIX, i)) for i in range(m)}
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        reader.poll(0.5)
        if all(i in sent and reader.nodes.get(i, {}).get("last_seq") == sent[i] - 1
               and reader.nodes[i].get("deadletters") is not None and not reader.nodes[i].get("buffered")
               for i in range(m)):
            break
    time.sleep(2.0)
    for s in services:
        s.sample_rss(t0)
    stop_sampling.set()
    codes = {s.name: s.stop() for s in nodes}
    codes["sync"] = sync.stop()
    reader.poll(1.0)
    dead = deadlettered(settings, bootstrap)
    final_nodes = {i: reader.nodes.get(i, {}) for i in range(m)}
    final_sync = reader.sync or {}
    reader.close()
    broker.stop()

    rows, per_node, balanced = [], {}, True
    for i in range(m):
        st = final_nodes[i]
        d = dead.get(samples_topic(PREFIX, i), {"distinct": 0, "records": 0})
        lost = st.get("seq_lost") or 0
        broker_kills = sum(f["kind"] == "kill-broker" for f in faults)
        # produced = learned + counted-lost (+ dead-lettered: the bad records, checked apart); a loss only
        # where the broker lost data, one gap per broker kill at most
        ok = sent.get(i) == (st.get("samples") or 0) + lost and d["distinct"] == produced[i]["bad_records"] \
            == bad_written[i] and (st.get("seq_gaps") or 0) <= broker_kills and (broker_kills or lost == 0)
        balanced &= ok
        per_node[i] = {"produced_samples": sent.get(i), "in_topic_samples": produced[i]["samples"],
                       "learned_samples": st.get("samples"), "lost_samples": lost,
                       "topic_resets": st.get("topic_resets"),
                       "relearned_samples": st.get("relearned"), "bad_records_written": bad_written[i],
                       "bad_records_in_topic": produced[i]["bad_records"], "deadlettered_distinct": d["distinct"],
                       "deadletter_records": d["records"], "seq_gaps": st.get("seq_gaps"),
                       "accuracy": st.get("accuracy"), "rolling_accuracy": st.get("rolling_accuracy"),
                       "syncs": st.get("syncs"), "drifts_detected": st.get("n_drifts"),
                       "resumed_from": st.get("resumed_from"), "balanced": ok}
        rows.append([f"node {i}", sent.get(i), st.get("samples"), lost, st.get("relearned"), bad_written[i],
                     d["distinct"], f"{st.get('accuracy') or float('nan'):.3f}", "yes" if ok else "NO"])
    memory = {}
    for s in services:
        for k, inc in enumerate(s.incarnations):
            # "start": the first sample once the process has run 20 s (imports and buffers settled)
            born = inc["started"] - t0
            series = [p for p in inc["rss_mb"] if p[0] >= born + 20] or inc["rss_mb"][-1:]
            if series:
                memory[f"{s.name}.{k}"] = {"first_mb": series[0][1], "last_mb": series[-1][1],
                                           "max_mb": max(v for _, v in series), "seconds": series[-1][0] - series[0][0],
                                           "how_it_ended": inc["how"], "samples": inc["rss_mb"]}
    result = {
        "minutes": args.minutes, "nodes": m, "rate_per_node": args.rate, "protocol": args.protocol,
        "drifts": drifts, "faults": faults, "exit_codes": codes, "balanced": balanced, "per_node": per_node,
        "producer": {"exit_code": producer_code, "not_delivered": not_delivered},
        "totals": {"produced": sum(sent.values()),
                   "learned": sum((final_nodes[i].get("samples") or 0) for i in range(m)),
                   "lost": sum((final_nodes[i].get("seq_lost") or 0) for i in range(m)),
                   "relearned": sum((final_nodes[i].get("relearned") or 0) for i in range(m)),
                   "bad_records_written": sum(bad_written.values()),
                   "deadlettered_distinct": sum(v["distinct"] for v in dead.values())},
        "sync": {k: final_sync.get(k) for k in ("full_syncs", "partial_syncs", "violations", "models_up",
                                                "models_down", "timeouts", "rejected_models", "joins", "leaves",
                                                "state_saves", "resumed_from", "clipped_models", "rate_limited",
                                                "unauthenticated")},
        "memory": memory, "workdir": work,
    }
    widths = [10, 10, 10, 10, 10, 10, 12, 9, 9]
    head = ["", "produced", "learned", "lost", "relearned", "bad sent", "deadletter", "accuracy", "balanced"]
    print("  ".join(h.rjust(w) for h, w in zip(head, widths)))
    for r in rows:
        print("  ".join(str(c).rjust(w) for c, w in zip(r, widths)))
    t = result["totals"]
    print(f"total: produced {t['produced']} = learned {t['learned']} + lost {t['lost']} (counted by the nodes); "
          f"{t['relearned']} relearned after crashes, "
          f"bad records {t['bad_records_written']} -> dead-lettered {t['deadlettered_distinct']}")
    print(f"sync: {result['sync']}")
    print("memory (RSS MB, first -> last sample of each process):")
    for name, mem in memory.items():
        print(f"  {name:12s} {mem['first_mb']:7.1f} -> {mem['last_mb']:7.1f}  over {mem['seconds']:.0f} s "
              f"({mem['how_it_ended']})")
    print(f"faults: {[(f['t'], f['kind'], f['service']) for f in faults]}")
    print(f"balanced: {balanced}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"wrote {args.out}")
    return 0 if balanced else 1


if __name__ == "__main__":
    sys.exit(main())
