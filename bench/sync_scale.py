"""One sync service and m nodes over the real wire: throughput, latency, service CPU, lag and broker bytes as m grows.

Per row (model size ``d``, node count ``m``) a fresh embedded Tansu broker (it keeps every record in
memory, so a row never inherits the previous one's), the real ``streamlearn sync`` CLI as a subprocess
(``periodic:b=1``, cpu, ``--max-nodes m``) and, in this process, a load generator that plays the m nodes
on the node's wire protocol: each joins with a model of ``d`` float32 parameters (``join`` with ``d``,
layout and spec, as :class:`~streamlearn.kafka.node.NodeService` sends it), then ``rounds`` rounds of
periodic averaging, rounds back to back: every node reports its model (``report`` with the model, b = 1),
the service averages and sends the full sync. A ``request`` (RequestModels) is answered with a ``model``
record from each node it names (periodic with models in the reports never asks; the answer path is there so
a protocol that asks is not stalled). Models are a seeded base vector plus a per-node, per-round offset
(fixed seeds, no models held per node). The generator reads all of ``sync.down`` with one consumer,
decodes each record once and marks the nodes it names, instead of m consumers each reading everything
(that would measure the generator, not the service); the broker traffic m real nodes cause is computed.

Measured per row, over the rounds only (joins and start-up apart):

- ``messages_up_per_s``: reports through the service per second of wall time;
- ``full_sync_latency_ms_p50/p95``: last report of a round flushed -> every node named in a ``send``
  (reason ``sync``) read back from ``sync.down``; p95 over few rounds is close to the max;
- ``service_cpu_ms_per_msg`` / ``_per_sync`` / ``_per_node_sync``: CPU time (user + system, all threads)
  of the ``streamlearn sync`` process read from ``/proc/<pid>/stat``, not wall time, so the other work on
  this shared 2-core machine does not count; ``..._net`` variants subtract the service's idle CPU rate
  (measured over ``--idle`` seconds after the joins, polling an empty topic) times the rounds' wall time;
- ``broker_cpu_ms_per_node_sync``: CPU of the Tansu process the same way; ``service_cores``, ``broker_cores``
  and ``generator_cores`` (this process) say who was busy during the rounds;
- ``lag_max`` / ``lag_at_last_send_max``: records on ``sync.up`` not yet consumed by the service, sampled at
  every status record (one a second): records of ``sync.up`` the broker had acknowledged at the status's
  timestamp minus the records the status says the service consumed (``joins + reports + models answered``);
  Tansu's end offsets do not count records, hence the acks (an ack comes after the append, so this
  understates a little). The service reads a whole poll before it counts it, and the rounds are bursts of m
  records, so at large m a sample may see most of a round unread: compare ``lag_max`` with m;
- ``broker_bytes_out_per_sync``: bytes of the ``sync.down`` records of a round times m (every real node
  fetches all of ``sync.down`` and skips, on the header, what is not addressed to it: wire.addressed_to)
  plus the ``sync.up`` bytes of the round once (the service's fetch). Status and join traffic are apart
  (``join_broker_bytes_out``: each join answer is a whole model to one node, fetched by all m);
- ``service_peak_rss_mb`` / ``broker_peak_rss_mb`` (VmHWM).

No robust aggregation (``--clip none``) and no rate limit (``--max-reports-per-second none``): clipping is
a per-model cost the comparison across m does not need, and the per-node rate limit would throttle the
generator's back-to-back rounds. The targets (issue 18), written as JSON keys with a verdict line each:

- ``nodes_per_service_200``: at d=200, nodes syncing once a minute a service holds at <= half a core:
  ``0.5 * 60 / (service CPU per node-sync at the largest m)`` (target >= 10,000);
- ``nodes_per_service_1m``: at d=1,000,000, nodes syncing once a minute across the services this machine
  holds: its 2 cores shared by the services and the broker, ``2 * 60 / (service + broker CPU per node-sync
  at the largest m)``, bounded by memory (24 GiB over the growth of the service's peak RSS per node between
  the first and the last row) and by what the machine showed (the best messages/s of the d=1M rows times 60,
  one service with the broker and this generator on the same 2 cores) (target 500);
- ``cpu_per_msg_growth``: CPU per message at the largest m over m=8, at d=200, idle-net (the raw ratio is
  lower, as the m=8 rows spend their long round trips polling; target <= 1.5).

With ``--profile`` (default on) the service of the largest m of each d runs under
``py-spy record --nonblocking`` during the rounds (a separate process; its sampling does not count in the
service's CPU) and the top functions by own time go to the JSON (``profile``). Not a test: tests never time.

Default (d=200: m = 8 ... 32768; d=1M: m = 8, 32, 128, 256; about 4 minutes on this machine, 5 GB of
broker memory at d=1M, m=256)::

    python bench/sync_scale.py

Full sweep (about 7 minutes; 10 GB of broker memory and 2.5 GB of service memory at d=1M, m=512)::

    python bench/sync_scale.py --nodes 8 64 512 2048 8192 16384 32768 65536 --big-nodes 8 32 128 256 512
"""

from __future__ import annotations

import argparse
import bisect
import collections
import itertools
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streamlearn.kafka.broker import EmbeddedBroker
from streamlearn.kafka.config import KafkaSettings
from streamlearn.kafka.status import decode_status
from streamlearn.kafka.topics import (
    ensure_topics,
    status_topic,
    sync_down_topic,
    sync_up_topic,
)
from streamlearn.kafka.wire import SyncMessage, decode_sync, encode_sync

OUT = os.path.join(os.path.dirname(__file__), "results", "sync_scale.json")
WAIT = 600.0  # seconds at most for one join wave or one sync to come back
BIG_D = 1_000_000
TICK = os.sysconf("SC_CLK_TCK")
SPEC = "periodic:b=1"


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def default_rounds(m: int, d: int) -> int:
    if d >= BIG_D:
        return 3
    return int(np.clip(32768 // m, 6, 200))  # enough messages per row for 10 ms CPU ticks to be small


def run(m: int, d: int, rounds: int, idle: float, profile_path: str | None) -> dict:
    prefix = f"scale{d}x{m}"
    with EmbeddedBroker() as broker, tempfile.TemporaryFile("w+") as svc_log:
        settings = KafkaSettings(bootstrap_servers=broker.bootstrap)
        ensure_topics(broker.bootstrap, prefix, [], settings=settings)
        exe = os.path.join(os.path.dirname(sys.executable), "streamlearn")
        svc = subprocess.Popen([exe, "sync", "--bootstrap", broker.bootstrap, "--prefix", prefix, "--protocol", SPEC,
                                "--max-nodes", str(m), "--timeout", str(WAIT), "--device", "cpu", "--clip", "none",
                                "--max-reports-per-second", "none", "--max-params", str(max(d, 1)),
                                "--log-level", "WARNING"], stdout=svc_log, stderr=subprocess.STDOUT)
        try:
            return _drive(broker, settings, svc, prefix, m, d, rounds, idle, profile_path)
        except BaseException:
            svc_log.seek(0)
            sys.stderr.write(svc_log.read()[-4000:])
            raise
        finally:
            if svc.poll() is None:
                svc.send_signal(signal.SIGINT)
                try:
                    svc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    svc.kill()
                    svc.wait()


def _drive(broker, settings, svc, prefix, m, d, rounds, idle, profile_path) -> dict:
    prod = KafkaProducer(**settings.producer_kwargs())
    cons = KafkaConsumer(**settings.consumer_kwargs(fetch_max_wait_ms=20))
    down, stat = TopicPartition(sync_down_topic(prefix), 0), TopicPartition(status_topic(prefix), 0)
    up = TopicPartition(sync_up_topic(prefix), 0)
    cons.assign([down, stat])
    cons.seek_to_beginning(down, stat)
    st = collections.Counter()  # generator-side counts
    lag = []  # (time, lag) samples
    seen: set = set()
    want = {"kind": None}  # what ends the current wait: ("join"|"sync")
    answered = [0]
    acked: list = []  # when the broker acknowledged each sync.up record (Tansu's end offsets do not count records)

    def ack(_):
        acked.append(time.time())

    def send_up(data):
        prod.send(up.topic, data, partition=0).add_callback(ack)

    last_status: dict = {}
    base = np.random.default_rng(0).normal(size=d).astype(np.float32)

    def base_model(n: int, r: int) -> np.ndarray:
        return base + np.float32(0.01 * ((n * 7 + r) % 101))

    def handle(rec_tp, rec):
        if rec_tp == stat:
            s = decode_status(rec.value)
            if s.get("role") != "sync":
                return
            consumed = s.get("joins", 0) + s.get("reports", 0) + answered_consumed(s)
            end = bisect.bisect_right(acked, s["ts"])  # written when the service took its status
            lag.append((time.perf_counter(), end - consumed))
            last_status.update({k: s.get(k) for k in ("joins", "reports", "models_up", "unknown_reports",
                                                      "bad_records")}, acked_up=end)
            st["status"] += 1
            return
        st["down_bytes"] += len(rec.value)
        st["down_records"] += 1
        msg = decode_sync(rec.value)
        if msg.kind == "hello":
            st["hello"] += 1
        elif msg.kind == "request":
            for n in (range(m) if msg.targets is None else msg.targets):
                send_up(encode_sync(SyncMessage("model", node=n, request=msg.request, step=1, model=base_model(n, 0))))
                answered[0] += 1
            prod.flush()
        elif msg.kind == "send" and msg.reason == want["kind"]:
            seen.update(range(m) if msg.targets is None else msg.targets)

    def answered_consumed(s):
        # Models up beyond the reports' own (every report here carries one): answers to requests.
        return max(0, s.get("models_up", 0) - s.get("reports", 0))

    def poll_all(timeout_ms):
        for tp, recs in cons.poll(timeout_ms=timeout_ms).items():
            for r in recs:
                handle(tp, r)

    def wait(pred, what):
        deadline = time.monotonic() + WAIT
        while not pred():
            if time.monotonic() > deadline:
                raise SystemExit(f"d={d} m={m}: no {what} within {WAIT:.0f} s")
            if svc.poll() is not None:
                raise SystemExit(f"d={d} m={m}: the sync service exited ({svc.returncode}) waiting for {what}")
            poll_all(100)

    try:
        wait(lambda: st["hello"] > 0, "hello")
        # Joins: every node registers with its reference (w0), as NodeService does on a hello.
        want["kind"] = "join"
        t = time.perf_counter()
        c0, b0 = cpu_seconds(svc.pid), cpu_seconds(broker.pid)
        down0 = st["down_bytes"]
        for n in range(m):
            send_up(encode_sync(SyncMessage("join", node=n, d=d, layout="L", spec=SPEC, model=base)))
        prod.flush()
        wait(lambda: len(seen) >= m, "answer to every join")
        join_s = time.perf_counter() - t
        join_cpu = cpu_seconds(svc.pid) - c0
        join_down = st["down_bytes"] - down0
        # Idle: the service polling an empty sync.up (its floor of CPU per second).
        poll_all(200)
        c0, t = cpu_seconds(svc.pid), time.perf_counter()
        while time.perf_counter() - t < idle:
            poll_all(100)
        idle_rate = (cpu_seconds(svc.pid) - c0) / (time.perf_counter() - t)
        small = d < BIG_D
        if small:  # encoded before the clock starts (the generator's cost is not the service's)
            records = [[encode_sync(SyncMessage("report", node=n, step=r + 1, n_samples=10, model=base_model(n, r + 1)))
                        for n in range(m)] for r in range(rounds)]
        spy = None
        if profile_path is not None:
            spy = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "py-spy"), "record", "--nonblocking",
                                    "--rate", "50", "--format", "raw", "-o", profile_path, "--pid", str(svc.pid)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # attached before the first round
        want["kind"] = "sync"
        latency, lag_at_send, up_bytes = [], [], 0
        c0, b0, g0 = cpu_seconds(svc.pid), cpu_seconds(broker.pid), time.process_time()
        down0, lag0 = st["down_bytes"], len(lag)
        t0 = time.perf_counter()
        for r in range(rounds):
            seen.clear()
            for n in range(m):
                data = records[r][n] if small else encode_sync(
                    SyncMessage("report", node=n, step=r + 1, n_samples=10, model=base_model(n, r + 1)))
                up_bytes += len(data)
                send_up(data)
                if not small and n % 8 == 7:
                    poll_all(0)  # read sync.down while sending, as nodes do
            prod.flush()
            t_last = time.perf_counter()
            n_lag = len(lag)
            wait(lambda: len(seen) >= m, f"full sync of round {r + 1}")
            latency.append(time.perf_counter() - t_last)
            if len(lag) > n_lag:
                lag_at_send.append(lag[n_lag][1])
        wall = time.perf_counter() - t0
        cpu = cpu_seconds(svc.pid) - c0
        bcpu = cpu_seconds(broker.pid) - b0
        gcpu = time.process_time() - g0
        down_bytes = st["down_bytes"] - down0
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(timeout=60)
            except subprocess.TimeoutExpired:
                spy.kill()
        # Wait for one more status: the lag when everything is read must be 0 (checks the lag arithmetic).
        n = len(lag)
        wait(lambda: len(lag) > n, "a status after the rounds")
        final_lag = lag[-1][1]
        svc_rss, broker_rss = peak_rss_mb(svc.pid), peak_rss_mb(broker.pid)
    finally:
        prod.close()
        cons.close()
    msgs = rounds * m
    lags = [v for _, v in lag[lag0:]]
    net = max(cpu - idle_rate * wall, 0.0)
    return {"m": m, "d": d, "rounds": rounds, "wall_s": wall,
            "messages_up_per_s": msgs / wall,
            "full_sync_latency_ms_p50": 1e3 * float(np.percentile(latency, 50)),
            "full_sync_latency_ms_p95": 1e3 * float(np.percentile(latency, 95)),
            "full_sync_latency_ms_max": 1e3 * float(np.max(latency)),
            "service_cpu_s": cpu, "service_cores": cpu / wall, "service_idle_cores": idle_rate,
            "service_cpu_ms_per_msg": 1e3 * cpu / msgs, "service_cpu_ms_per_msg_net": 1e3 * net / msgs,
            "service_cpu_ms_per_sync": 1e3 * cpu / rounds, "service_cpu_ms_per_sync_net": 1e3 * net / rounds,
            "service_cpu_ms_per_node_sync": 1e3 * cpu / msgs, "broker_cpu_ms_per_node_sync": 1e3 * bcpu / msgs,
            "broker_cores": bcpu / wall, "generator_cores": gcpu / wall,
            "lag_max": max(lags, default=None), "lag_at_last_send_max": max(lag_at_send, default=None),
            "lag_samples": len(lags), "lag_final": final_lag,
            "sync_down_bytes_per_sync": down_bytes / rounds, "sync_up_bytes_per_sync": up_bytes / rounds,
            "broker_bytes_out_per_sync": (m * down_bytes + up_bytes) / rounds,
            "join_s": join_s, "join_service_cpu_s": join_cpu, "join_broker_bytes_out": m * join_down,
            "requests_answered": answered[0], "last_status": last_status,
            "service_peak_rss_mb": svc_rss, "broker_peak_rss_mb": broker_rss}


def top_costs(path: str, k: int = 6) -> dict:
    """Top functions of a py-spy raw (collapsed stacks) file: by own time, and the streamlearn functions by
    inclusive time (without the run loop and its callers, in nearly every sample of the main thread), as shares
    of all samples (every thread of the service: kafka-python's sender thread too)."""
    own, incl, total = collections.Counter(), collections.Counter(), 0
    with open(path) as fh:
        for line in fh:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            total += n
            names = []
            for frame in stack.split(";"):
                name, _, where = frame.partition(" (")
                names.append((f"{name} ({where.split(':')[0].rsplit('/', 1)[-1] if where else '?'})",
                              "streamlearn/" in where))
            own[names[-1][0]] += n
            for name in {name for name, ours in names if ours}:
                incl[name] += n
    if not total:
        return {}
    top = max(incl.values(), default=0)  # the run loop and its callers: in every sample of the service's thread
    return {"own": [f"{100 * n / total:.1f}% {name}" for name, n in own.most_common(k)],
            "inclusive_streamlearn": [f"{100 * n / total:.1f}% {name}" for name, n in incl.most_common()
                                      if n < 0.9 * top][:k],
            "samples": total}


def knee(rows: list) -> str:
    """Where full-sync latency p50, or the lag on sync.up when a round's last report is flushed, first grows
    faster than m between two rows (by more than 25%, for noise; lags are compared from a row whose lag is at
    least 16 records: below, one status a second mostly misses the short rounds)."""
    out = []
    for a, b in itertools.pairwise(rows):
        gm = b["m"] / a["m"]
        la, lb = a["full_sync_latency_ms_p50"], b["full_sync_latency_ms_p50"]
        if lb / la > 1.25 * gm:
            out.append(f"latency p50 grows faster than m from m={a['m']} to m={b['m']} ({la:.0f} -> {lb:.0f} ms, "
                       f"m x{gm:.0f})")
            break
    for a, b in itertools.pairwise(rows):
        gm = b["m"] / a["m"]
        la, lb = a["lag_at_last_send_max"] or 0, b["lag_at_last_send_max"] or 0
        if la >= 16 and lb > 1.25 * gm * la:
            out.append(f"lag at the last send grows faster than m from m={a['m']} to m={b['m']} ({la} -> {lb} "
                       f"records)")
            break
    if not rows:
        return "no rows"
    return "; ".join(out) or f"none up to m={rows[-1]['m']}: latency and lag grow no faster than m"


def summarize(result: dict, small_d: int) -> None:
    """Knees and targets (with a verdict line each) from ``result["rows"]``, into ``result``."""
    result["knee"] = {}
    for d in sorted({r["d"] for r in result["rows"]}):
        result["knee"][f"d={d}"] = knee([r for r in result["rows"] if r["d"] == d])
    by = collections.defaultdict(list)
    for r in result["rows"]:
        by[r["d"]].append(r)
    targets, verdicts = {}, []
    small = by.get(small_d, [])
    if small:
        top = small[-1]
        n200 = 0.5 * 60e3 / top["service_cpu_ms_per_node_sync"]
        targets["nodes_per_service_200"] = round(n200)
        # Syncs spread over the minute: the service's floor at that m (status of O(m) lists each second,
        # measured idle) comes off the half core before the node-syncs (idle-net CPU) share the rest.
        floor = (0.5 - top["service_idle_cores"]) * 60e3 / top["service_cpu_ms_per_msg_net"]
        targets["nodes_per_service_200_with_idle_floor"] = round(floor)
        verdicts.append(f"nodes_per_service_200: {'met' if n200 >= 10_000 else 'MISSED'} ({n200:,.0f} nodes at 0.5 "
                        f"core, {top['service_cpu_ms_per_node_sync']:.3f} ms CPU per node-sync at m={top['m']}; "
                        f"{floor:,.0f} after its idle floor of {top['service_idle_cores']:.2f} core; "
                        f"target >= 10,000)")
        first = next((r for r in small if r["m"] == 8), None)
        if first is not None and top is not first:
            g_net = top["service_cpu_ms_per_msg_net"] / first["service_cpu_ms_per_msg_net"]
            g_raw = top["service_cpu_ms_per_msg"] / first["service_cpu_ms_per_msg"]
            targets["cpu_per_msg_growth"] = round(g_net, 3)
            targets["cpu_per_msg_growth_raw"] = round(g_raw, 3)
            # m=8 pays a poll per tiny round: the growth from the first row that batches (m=512) says more.
            mid = next((r for r in small if r["m"] == 512), None)
            if mid is not None and top is not mid:
                targets["cpu_per_msg_growth_raw_vs_m512"] = round(
                    top["service_cpu_ms_per_msg"] / mid["service_cpu_ms_per_msg"], 3)
            verdicts.append(f"cpu_per_msg_growth: {'met' if g_net <= 1.5 else 'MISSED'} ({g_net:.2f} idle-net, "
                            f"{g_raw:.2f} raw, m={top['m']} vs m=8; target <= 1.5)")
    big = by.get(BIG_D, [])
    if big:
        top = big[-1]
        per = top["service_cpu_ms_per_node_sync"] + top["broker_cpu_ms_per_node_sync"]
        cpu_bound = 2 * 60e3 / per
        # Memory per node: the service's peak RSS growth per node between the first and last rows (the
        # process's own base, python and torch, is not per node).
        first = big[0]
        per_mb = ((top["service_peak_rss_mb"] - first["service_peak_rss_mb"]) / (top["m"] - first["m"])
                  if top["m"] > first["m"] else top["service_peak_rss_mb"] / top["m"])
        mem_bound = 24 * 1024 / max(per_mb, 1e-3)
        # What the machine showed: node-syncs per minute through one service with the broker and the generator.
        seen_bound = max(r["messages_up_per_s"] for r in big) * 60
        n1m = min(cpu_bound, mem_bound, seen_bound)
        targets["nodes_per_service_1m"] = round(n1m)
        targets["nodes_per_service_1m_detail"] = (
            f"2 cores / ({top['service_cpu_ms_per_node_sync']:.0f} ms service + "
            f"{top['broker_cpu_ms_per_node_sync']:.0f} ms broker CPU per node-sync at m={top['m']}) -> "
            f"{cpu_bound:,.0f} nodes/min; memory 24 GiB / {per_mb:.1f} MB per node -> "
            f"{mem_bound:,.0f}; measured {seen_bound / 60:.0f} node-syncs/s -> {seen_bound:,.0f}; "
            f"one service at 0.5 core: {0.5 * 60e3 / top['service_cpu_ms_per_node_sync']:,.0f}")
        verdicts.append(f"nodes_per_service_1m: {'met' if n1m >= 500 else 'MISSED'} ({n1m:,.0f}: "
                        f"{targets['nodes_per_service_1m_detail']}; target 500)")
    result["targets"] = targets
    result["verdicts"] = verdicts


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="*", default=[8, 64, 512, 2048, 8192, 16384, 32768],
                    help="node counts at --d parameters")
    ap.add_argument("--d", type=int, default=200, help="parameters per model of the small sweep")
    ap.add_argument("--big-nodes", type=int, nargs="*", default=[8, 32, 128, 256],
                    help=f"node counts at {BIG_D:,} parameters (4 MB models)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per row (default: by m and d)")
    ap.add_argument("--idle", type=float, default=2.0, help="seconds of idle service CPU measured per row")
    ap.add_argument("--no-profile", dest="profile", action="store_false")
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--summarize", action="store_true",
                    help="recompute knees, targets and verdicts of the rows already in --out, run nothing")
    args = ap.parse_args()
    if args.summarize:
        with open(args.out) as fh:
            result = json.load(fh)
        summarize(result, args.d)
        report(result, args.out)
        return
    result = {"benchmark": "sync_scale", "platform": platform.platform(), "cpus": os.cpu_count(),
              "command": " ".join(["python", "bench/sync_scale.py"] + sys.argv[1:]), "protocol": SPEC,
              "rows": [], "profile": {}, "knee": {}}
    t_start = time.perf_counter()
    if args.profile and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "py-spy")):
        print("no profile: py-spy is not installed beside this python (pip install py-spy)", flush=True)
        args.profile = False
    for d, sweep in ((args.d, args.nodes), (BIG_D, args.big_nodes)):
        rows = []
        for i, m in enumerate(sweep):
            rounds = args.rounds or default_rounds(m, d)
            prof = None
            if args.profile and i == len(sweep) - 1:
                fd, prof = tempfile.mkstemp(suffix=".txt")
                os.close(fd)
            row = run(m, d, rounds, args.idle, prof)
            if prof is not None:
                try:
                    result["profile"][f"d={d},m={m}"] = top_costs(prof)
                except (OSError, ValueError) as exc:
                    result["profile"][f"d={d},m={m}"] = {"error": f"no profile: {exc}"}
                os.unlink(prof)
            rows.append(row)
            print(f"d={d:>9,} m={m:6d} {row['messages_up_per_s']:8,.0f} msg/s  sync p50 "
                  f"{row['full_sync_latency_ms_p50']:8.1f} p95 {row['full_sync_latency_ms_p95']:8.1f} ms  "
                  f"cpu {row['service_cpu_ms_per_msg']:.3f} ms/msg (net {row['service_cpu_ms_per_msg_net']:.3f}) "
                  f"{row['service_cpu_ms_per_sync']:.0f} ms/sync  cores svc/broker/gen {row['service_cores']:.2f}/"
                  f"{row['broker_cores']:.2f}/{row['generator_cores']:.2f}  lag max {row['lag_max']}  "
                  f"out {row['broker_bytes_out_per_sync'] / 1e6:,.1f} MB/sync  [{time.perf_counter() - t_start:.0f} s]",
                  flush=True)
        result["rows"] += rows
    summarize(result, args.d)
    result["load_average_at_end"] = os.getloadavg()
    report(result, args.out)


def report(result: dict, out: str) -> None:
    for line in result["verdicts"]:
        print(line)
    for k, v in result["knee"].items():
        print(f"knee {k}: {v}")
    for k, v in result["profile"].items():
        for kind in ("own", "inclusive_streamlearn", "error"):
            if kind in v:
                print(f"profile {k} {kind}: " + ("; ".join(v[kind]) if isinstance(v[kind], list) else v[kind]))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
