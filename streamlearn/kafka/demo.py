"""``streamlearn demo``: the whole pipeline on one machine, with a live terminal view.

A broker (the embedded Tansu unless ``KAFKA_BOOTSTRAP_SERVERS`` is set), a producer with a drift
schedule, N node processes and the sync service, each a process of its own started with the same
``streamlearn`` commands a user would type. The demo itself only watches: it follows the status
and drift topics, redraws a table every second, stops everything on Ctrl-C or after
``duration`` seconds, and ends with a summary table and a plot.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from streamlearn.errors import ConfigError, StreamlearnError

__all__ = ["DemoConfig", "run_demo"]


@dataclass
class DemoConfig:
    """Settings of a demo run (validated by :meth:`check`)."""

    nodes: int = 4
    source: str = "sea"
    drifts: list = field(default_factory=lambda: ["label-permutation@20000", "feature-rotation@40000:angle=90"])
    schedule: str = "all"
    rate: float = 1000.0
    learner: str = "logreg"
    protocol: str = "dynamic:delta=0.5,b=1"
    batch_size: int = 10
    lr: float | None = None
    duration: float | None = 60.0
    out: str = "demo-out"
    seed: int = 0
    prefix: str | None = None  # default: a fresh one per run
    refresh: float = 1.0
    view_port: int | None = 8050  # the live page on 127.0.0.1; None: no page
    view_host: str = "127.0.0.1"

    def check(self) -> "DemoConfig":
        if not isinstance(self.nodes, int) or not 1 <= self.nodes <= 64:
            raise ConfigError(f"--nodes: need an int in [1, 64], got {self.nodes!r}")
        if not self.rate > 0:
            raise ConfigError(f"--rate: need samples/s per node > 0, got {self.rate!r}")
        if self.duration is not None and not self.duration > 0:
            raise ConfigError(f"--duration: need seconds > 0, got {self.duration!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"--batch-size: need an int >= 1, got {self.batch_size!r}")
        # Fail here, before any process starts, on a bad source, drift or protocol.
        from streamlearn.streams import make_source, parse_drift
        from streamlearn.sync.spec import parse_spec

        make_source(self.source, seed=self.seed)
        for d in self.drifts:
            parse_drift(d)
        parse_spec(self.protocol)
        return self


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "streamlearn.cli", *[str(a) for a in args]]


class _Processes:
    """The child processes, each logging to its own file; stopped with SIGINT, then killed."""

    def __init__(self, log_dir: str, env: dict):
        self.log_dir = log_dir
        self.env = env
        self.procs: list[tuple[str, subprocess.Popen, object]] = []

    def start(self, name: str, argv: list[str]) -> None:
        log = open(os.path.join(self.log_dir, f"{name}.log"), "w")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
                                start_new_session=True)  # Ctrl-C in the terminal reaches the demo only
        self.procs.append((name, proc, log))

    def dead(self) -> list[str]:
        return [f"{name} (exit {p.returncode})" for name, p, _ in self.procs if p.poll() is not None and p.returncode]

    def stop(self, names=None, timeout: float = 15.0) -> None:
        chosen = [(n, p, f) for n, p, f in self.procs if names is None or n.split("-")[0] in names]
        for _, p, _ in chosen:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout
        for _, p, f in chosen:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            f.close()


class _DriftReader:
    """Follows ``<prefix>.drift``: the ground-truth drift events, as the producer publishes them."""

    def __init__(self, bootstrap: str, prefix: str):
        from kafka import KafkaConsumer, TopicPartition

        from streamlearn.kafka.config import KafkaSettings
        from streamlearn.kafka.topics import drift_topic

        self.events: list = []
        self._consumer = KafkaConsumer(**KafkaSettings.from_env().consumer_kwargs(bootstrap))
        tp = TopicPartition(drift_topic(prefix), 0)
        self._consumer.assign([tp])
        self._consumer.seek_to_beginning(tp)

    def poll(self) -> None:
        from streamlearn.kafka.codecs import DecodeError, decode_message

        for records in self._consumer.poll(timeout_ms=0).values():
            for rec in records:
                try:
                    self.events.append(decode_message(rec.value, expect="drift"))
                except DecodeError:
                    pass

    def close(self) -> None:
        self._consumer.close()


def _periodic_bytes(nodes: dict, sync: dict | None, b: int) -> int:
    """What periodic averaging with the same b would have sent: every b steps, m models up and m down."""
    d = (sync or {}).get("d") or 0
    return int(sum(2 * (s.get("steps", 0) // b) for s in nodes.values()) * d * 4)


def _fmt(v, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def _view(cfg: DemoConfig, nodes: dict, sync: dict | None, drifts: list, t0: float, b: int) -> str:
    lines = [f"streamlearn demo — {cfg.nodes} nodes, {cfg.source}, {cfg.protocol}, "
             f"{time.monotonic() - t0:5.0f} s{'' if cfg.duration is None else f' of {cfg.duration:.0f}'}  "
             f"(Ctrl-C stops)", ""]
    lines.append(f"{'node':>4} {'samples':>8} {'rate/s':>7} {'rolling acc':>11} {'accuracy':>8} {'detected':>8} "
                 f"{'divergence':>10} {'Δ':>6} {'models up':>9} {'syncs':>5}")
    for node in sorted(nodes):
        s = nodes[node]
        lines.append(f"{node:>4} {s.get('samples', 0):>8} {_fmt(s.get('rate'), '.0f'):>7} "
                     f"{_fmt(s.get('rolling_accuracy')):>11} {_fmt(s.get('accuracy')):>8} "
                     f"{s.get('n_drifts', 0):>8} {_fmt(s.get('divergence'), '.3g'):>10} "
                     f"{_fmt(s.get('delta'), '.3g'):>6} {s.get('models_sent', 0):>9} {s.get('syncs', 0):>5}")
    lines.append("")
    if drifts:
        shown = ", ".join(f"{e.kind}@{e.seq}" + ("" if e.node is None else f" (node {e.node})") for e in drifts[-6:])
        lines.append(f"drifts injected: {len(drifts)}  [{shown}]")
    else:
        lines.append("drifts injected: none yet")
    if sync:
        sent = int(sync.get("bytes", 0) or 0)
        periodic = _periodic_bytes(nodes, sync, b)
        saved = f"{periodic / sent:.1f}x less" if sent else "nothing sent"
        lines.append(f"sync: {sync.get('full_syncs', 0)} full, {sync.get('partial_syncs', 0)} partial; "
                     f"models {sync.get('models', 0)} ({sync.get('models_up', 0)} up, "
                     f"{sync.get('models_down', 0)} down); sent {sent / 1e6:.2f} MB, periodic (b={b}) would have "
                     f"sent {periodic / 1e6:.2f} MB: {saved}")
    else:
        lines.append("sync service: waiting for its first status")
    return "\n".join(lines)


def _view_state(cfg: DemoConfig, history: dict, sync_history: list, nodes: dict, drifts: list, summary: str) -> dict:
    detected = sorted({p for s in nodes.values() for p in s.get("drifts", [])})
    delta = next((s.get("delta") for s in nodes.values() if s.get("delta") is not None), None)
    return {"title": f"{cfg.nodes} nodes, {cfg.source}, {cfg.protocol}", "summary": summary, "history": history,
            "drifts": [e.seq for e in drifts if e.seq is not None], "detected": detected, "delta": delta,
            "sync_history": sync_history}


def _plot(history: list, drifts: list, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    nodes = sorted({node for _, snap in history for node in snap})
    for node in nodes:
        pts = [(snap[node]["samples"], snap[node]["rolling_accuracy"]) for _, snap in history
               if node in snap and snap[node].get("rolling_accuracy") is not None]
        if pts:
            ax.plot(*zip(*pts), linewidth=1, label=f"node {node}")
            last = [snap[node] for _, snap in history if node in snap][-1]
            for pos in last.get("drifts", []):
                ax.axvline(pos, color="gray", linestyle=":", linewidth=0.8)
            for pos in last.get("sync_positions", [])[-200:]:
                ax.plot([pos], [0.02], "|", color="green", markersize=6)
    for e in drifts:
        if e.seq is not None:
            ax.axvline(e.seq, color="red", linestyle="--", linewidth=1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("samples learned per node (red dashed: injected drift; gray dotted: detected; green ticks: syncs)")
    ax.set_ylabel("rolling accuracy")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(cfg: DemoConfig) -> dict:
    """Run the demo; returns the final node and sync statuses (also printed as a table)."""
    from streamlearn.kafka.broker import ensure_broker
    from streamlearn.kafka.status import StatusReader
    from streamlearn.kafka.topics import ensure_topics
    from streamlearn.sync.spec import parse_spec

    cfg.check()
    name, params = parse_spec(cfg.protocol)
    b = int(params.get("b", params.get("tau", 1)) or 1)
    prefix = cfg.prefix or f"streamlearn-demo-{int(time.time())}"
    os.makedirs(os.path.join(cfg.out, "logs"), exist_ok=True)
    broker = ensure_broker()
    print(f"broker: {broker.bootstrap} ({broker.origin}); topics: {prefix}.*; logs: {cfg.out}/logs", flush=True)
    ensure_topics(broker.bootstrap, prefix, list(range(cfg.nodes)))
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap, KAFKA_TOPIC_PREFIX=prefix)
    procs = _Processes(os.path.join(cfg.out, "logs"), env)
    learner_args = ["--learner", cfg.learner, "--batch-size", cfg.batch_size, "--seed", cfg.seed]
    if cfg.lr is not None:
        learner_args += ["--lr", cfg.lr]
    tty = sys.stdout.isatty()
    history: list = []
    series: dict = {}  # node -> points for the live page (bounded)
    sync_history: list = []
    reader = drift_reader = view = None
    t0 = time.monotonic()
    try:
        procs.start("sync", _cli("sync", "--protocol", cfg.protocol))
        for i in range(cfg.nodes):
            procs.start(f"node-{i}", _cli("node", "--id", i, "--source", cfg.source, "--protocol", cfg.protocol,
                                          *learner_args))
        drift_args = [a for d in cfg.drifts for a in ("--drift", d)]
        procs.start("producer", _cli("produce", "--source", cfg.source, "--nodes", cfg.nodes, "--rate", cfg.rate,
                                     "--schedule", cfg.schedule, "--seed", cfg.seed, "--format", "binary",
                                     *drift_args))
        reader = StatusReader(broker.bootstrap, prefix)
        drift_reader = _DriftReader(broker.bootstrap, prefix)
        if cfg.view_port is not None:
            from streamlearn.kafka.liveview import LiveView

            view = LiveView(cfg.view_host, cfg.view_port)
            print(f"live view: {view.url}", flush=True)
        next_draw = 0.0
        while cfg.duration is None or time.monotonic() - t0 < cfg.duration:
            reader.poll(0.2)
            drift_reader.poll()
            now = time.monotonic()
            if now >= next_draw:
                history.append((now - t0, {k: dict(v) for k, v in reader.nodes.items()}))
                text = _view(cfg, reader.nodes, reader.sync, drift_reader.events, t0, b)
                print(("\x1b[H\x1b[2J" + text) if tty else text + "\n", flush=True)
                if view is not None:
                    for node, st in reader.nodes.items():
                        pts = series.setdefault(str(node), [])
                        pts.append({k: st.get(k) for k in ("samples", "rolling_accuracy", "divergence")})
                        del pts[:-600]
                    sync = reader.sync or {}
                    sync_history.append({"t": round(now - t0, 1), "full_syncs": sync.get("full_syncs", 0),
                                         "partial_syncs": sync.get("partial_syncs", 0), "bytes": sync.get("bytes", 0),
                                         "periodic_bytes": _periodic_bytes(reader.nodes, reader.sync, b)})
                    del sync_history[:-600]
                    view.update(_view_state(cfg, series, sync_history, reader.nodes, drift_reader.events,
                                            text.splitlines()[-1]))
                next_draw = now + (cfg.refresh if tty else max(cfg.refresh, 5.0))
            dead = procs.dead()
            if dead:
                raise StreamlearnError(f"demo: a process failed: {', '.join(dead)}; see {cfg.out}/logs")
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
    finally:
        # Producer first (no new samples), then the nodes (they leave), then the sync service.
        procs.stop(["producer"])
        procs.stop(["node"])
        procs.stop(["sync"])
        if reader is not None:
            for _ in range(5):
                reader.poll(0.2)
        if drift_reader is not None:
            drift_reader.poll()
    nodes, sync = (reader.nodes, reader.sync) if reader is not None else ({}, None)
    drifts = drift_reader.events if drift_reader is not None else []
    history.append((time.monotonic() - t0, {k: dict(v) for k, v in nodes.items()}))
    print(_view(cfg, nodes, sync, drifts, t0, b))
    plot_path = os.path.join(cfg.out, "demo.png")
    _plot(history, drifts, plot_path, f"{cfg.nodes} nodes, {cfg.source}, {cfg.protocol}")
    print(f"\nwrote {plot_path}")
    if view is not None:
        view.close()
    if reader is not None:
        reader.close()
    if drift_reader is not None:
        drift_reader.close()
    if broker.origin == "started":
        broker.stop()
    return {"nodes": nodes, "sync": sync, "drifts": [e.__dict__ for e in drifts], "plot": plot_path,
            "periodic_bytes": _periodic_bytes(nodes, sync, b)}
