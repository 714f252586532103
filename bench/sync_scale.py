"""One sync service and m nodes over the real wire: messages per second and full-sync latency as m grows.

An embedded Tansu broker (memory, loopback) and one :class:`~streamlearn.kafka.sync_service.SyncService`
in this process; a load generator plays m nodes on the real wire protocol: each joins with a model of
``--d`` float32 parameters, then ``--rounds`` rounds of periodic averaging (b = 1): every node reports
its model, the service averages and sends the full sync (to more than 4096 nodes as several
``sync.down`` records sharing one model part). Reported per m: messages up per second through the
service, and the full-sync latency (last report sent -> every node named in the sync records read),
median over the rounds. No robust aggregation or rate limit (they are per node id and would throttle
the generator's burst). Not a test: tests never time. Writes ``bench/results/sync_scale.json``.

    python bench/sync_scale.py [--nodes 512 2048 4096 8192] [--d 200] [--rounds 4]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import threading
import time

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streamlearn.kafka.broker import EmbeddedBroker
from streamlearn.kafka.config import KafkaSettings
from streamlearn.kafka.sync_service import SyncConfig, SyncService
from streamlearn.kafka.topics import ensure_topics, sync_down_topic, sync_up_topic
from streamlearn.kafka.wire import SyncMessage, decode_sync, encode_sync

OUT = os.path.join(os.path.dirname(__file__), "results", "sync_scale.json")
WAIT = 300.0  # seconds at most for one join wave or one sync to come back


def run(broker, settings, m: int, d: int, rounds: int) -> dict:
    prefix = f"scale{m}"
    ensure_topics(broker.bootstrap, prefix, [], settings=settings)
    svc = SyncService(SyncConfig(protocol="periodic", params={"b": 1}, max_nodes=m, timeout=60.0, device="cpu",
                                 status_interval=5.0, max_reports_per_second=None, clip=None,
                                 bootstrap=broker.bootstrap, prefix=prefix, settings=settings))
    thread = threading.Thread(target=svc.run, daemon=True)
    thread.start()
    prod = KafkaProducer(**settings.producer_kwargs())
    cons = KafkaConsumer(**settings.consumer_kwargs(fetch_max_wait_ms=20))
    tp = TopicPartition(sync_down_topic(prefix), 0)
    cons.assign([tp])
    cons.seek_to_beginning(tp)
    up = sync_up_topic(prefix)

    def wait_for(pred, what):
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            for recs in cons.poll(timeout_ms=100).values():
                for r in recs:
                    if pred(decode_sync(r.value)):
                        return
        raise SystemExit(f"m={m}: no {what} within {WAIT:.0f} s")

    def covers(reason, seen):
        return lambda msg: msg.kind == "send" and msg.reason == reason and (seen.update(msg.targets) or len(seen) == m)

    try:
        wait_for(lambda msg: msg.kind == "hello", "hello")
        for n in range(m):
            prod.send(up, encode_sync(SyncMessage("join", node=n, d=d, layout="L", spec="periodic:b=1",
                                                  model=np.zeros(d, np.float32))), partition=0)
        prod.flush()
        wait_for(covers("join", set()), "answer to every join")
        models = np.random.default_rng(0).normal(size=(m, d)).astype(np.float32)
        records = [[encode_sync(SyncMessage("report", node=n, step=r + 1, n_samples=10, model=models[n]))
                    for n in range(m)] for r in range(rounds)]
        latency, t0 = [], time.perf_counter()
        for r in range(rounds):
            for data in records[r]:
                prod.send(up, data, partition=0)
            prod.flush()
            t_last = time.perf_counter()
            wait_for(covers("sync", set()), f"full sync of round {r + 1}")
            latency.append(time.perf_counter() - t_last)
        total = time.perf_counter() - t0
    finally:
        svc.stop()
        thread.join(timeout=20)
        prod.close()
        cons.close()
    return {"m": m, "d": d, "rounds": rounds, "messages_up_per_s": rounds * m / total,
            "full_sync_latency_ms_p50": 1e3 * float(np.median(latency)),
            "full_sync_latency_ms_max": 1e3 * float(np.max(latency))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[512, 2048, 4096, 8192])
    ap.add_argument("--d", type=int, default=200, help="parameters per model")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    rows = []
    with EmbeddedBroker() as broker:
        settings = KafkaSettings(bootstrap_servers=broker.bootstrap)
        for m in args.nodes:
            rows.append(run(broker, settings, m, args.d, args.rounds))
            r = rows[-1]
            print(f"m={m:6d}  {r['messages_up_per_s']:8,.0f} messages up/s  full sync p50 "
                  f"{r['full_sync_latency_ms_p50']:7.1f} ms  max {r['full_sync_latency_ms_max']:7.1f} ms", flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"benchmark": "sync_scale", "platform": platform.platform(), "cpus": os.cpu_count(),
                   "load_average_at_end": os.getloadavg(), "rows": rows}, fh, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
