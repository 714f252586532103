"""``streamlearn demo``: the whole pipeline on one machine, with a live terminal view.

From a file in one command: ``streamlearn demo --source csv:PATH --label COLUMN --split key:COLUMN`` runs
one node per distinct key value (first seen, first numbered). The demo reads the file once: for the
model layout (features and classes, typed as in the file) and the number of nodes, given to the node
processes as ``--features``/``--classes``, and for the producer, which sends the streams read there (a
big file takes seconds to parse, and the nodes would wait for a second parse); it sends missing values as
missing and every node imputes or skips them (``--missing``), counted per node in the terminal view. A file
gets no drift injected unless asked (``--drift``): its drift is its own.

A broker (``KAFKA_BOOTSTRAP_SERVERS``, else one answering on 127.0.0.1:9092, else an embedded
Tansu the demo starts there and stops at its end, after the processes that use it), a producer with a drift
schedule (a thread of the demo, logging to ``logs/producer.log``, or a connector process for a live source),
N node processes and the sync service, each a process of its own started with the same
``streamlearn`` commands a user would type (on Linux forked from one server that imported streamlearn
once, so that a dozen nodes do not each spend seconds importing: :mod:`streamlearn.kafka.launch`; in
``top`` and ``ps -o comm`` each is named as its log, e.g. ``node-3``). Besides its producer the demo only
watches: it follows the status and drift topics, takes a snapshot every ``refresh`` seconds (for the live
page and the final plot), redraws a table (every ``refresh`` seconds on a terminal, every 5 s into a log),
prints the ``streamlearn drift`` command that reaches this run's topics, stops everything on Ctrl-C or after
``duration`` seconds of running, and ends with a summary table and a plot. When a child process dies (or
the producer fails), the others are stopped, the summary and plot are still written, and the error names
the process and shows the end of its log.
"""

from __future__ import annotations

import contextlib
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

    nodes: int | None = 4  # None: one per distinct key value (split="key:COLUMN" on a file), else 4
    source: str = "sea"
    drifts: list | None = None  # None: DEFAULT_DRIFTS for a generator, none for a file
    schedule: str = "all"
    rate: float = 1000.0
    learner: str = "logreg"
    protocol: str = "dynamic:delta=0.5,b=1"
    batch_size: int = 10
    lr: float | None = None
    lr_decay: float | None = None  # tau of the nodes' step-size schedule (TorchLearner lr_decay)
    duration: float | None = 60.0
    out: str = "demo-out"
    seed: int = 0
    prefix: str | None = None  # default: a fresh one per run
    refresh: float = 1.0
    view_port: int | None = 8050  # the live page on 127.0.0.1; None: no page
    view_host: str = "127.0.0.1"
    guard: int | None = None  # guarded averaging at every node: window in samples (None: off)
    guard_margin: float = 0.05  # nats (streamlearn.sync.guard)
    split: str | None = None  # round-robin | key:COLUMN[...] (node_streams)
    source_params: dict = field(default_factory=dict)  # of a csv source: label, features, classes, ...
    missing: str = "impute"  # impute | skip (at the nodes) | error (a bad record, at the producer)
    schema: str | None = None  # the schema file of a connector source (jsonl:, mqtt:, http:; demo_sources.py)
    checkpoints: bool = True  # nodes keep checkpoints under <out>/checkpoints/<prefix> (for `streamlearn export`)
    task: str = "classification"  # or "regression": a csv file's float label, scored by MAE
    fork: bool = True  # processes forked from one preloaded server (Linux); False: each a fresh interpreter

    @property
    def regression(self) -> bool:
        return self.task == "regression"

    def check(self) -> "DemoConfig":
        from streamlearn.kafka.demo_sources import connector_kind
        from streamlearn.streams.registry import is_finite_source

        self._check_task()
        if connector_kind(self.source) is not None:
            return self._check_connector()
        if self.schema is not None:
            raise ConfigError(f"--schema: only with a connector source (jsonl:, mqtt:, http:), not {self.source!r}")
        if self.drifts is None:
            self.drifts = [] if is_finite_source(self.source) else list(DEFAULT_DRIFTS)
        if self.missing not in ("impute", "skip", "error"):
            raise ConfigError(f"--missing: impute, skip or error, got {self.missing!r}")
        if self.nodes is None and self.split is None:
            self.nodes = 4
        if self.nodes is not None and (not isinstance(self.nodes, int) or not 1 <= self.nodes <= 64):
            raise ConfigError(f"--nodes: need an int in [1, 64], got {self.nodes!r}")
        if not self.rate > 0:
            raise ConfigError(f"--rate: need samples/s per node > 0, got {self.rate!r}")
        if self.duration is not None and not self.duration > 0:
            raise ConfigError(f"--duration: need seconds > 0, got {self.duration!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"--batch-size: need an int >= 1, got {self.batch_size!r}")
        from streamlearn.learners.schedule import check_lr_decay

        check_lr_decay(self.lr_decay, "--lr-decay")
        # Fail here, before any process starts, on a bad source, drift or protocol.
        from streamlearn.streams import make_source, parse_drift
        from streamlearn.sync.spec import parse_spec

        if self.split is not None:
            from streamlearn.streams import parse_split

            parse_split(self.split)
        else:
            make_source(self.source, seed=self.seed, **self.source_params)
        for d in self.drifts:
            parse_drift(d)
        parse_spec(self.protocol)
        from streamlearn.learners.custom import check_protocol
        from streamlearn.learners.registry import learner_family

        learner_family(self.learner)  # an unknown name or a package.module:factory that does not import
        check_protocol(self.learner, self.protocol)  # a custom river classifier cannot be averaged
        from streamlearn.sync.guard import check_guard

        try:
            self.guard, self.guard_margin = check_guard(self.guard, self.guard_margin)
        except ConfigError as exc:
            raise ConfigError(f"--{exc}".replace("--guard_margin", "--guard-margin")) from None
        return self


    def _check_task(self) -> None:
        """Regression reads a float label from a csv file and needs a torch learner (one output, Huber loss)."""
        if self.task not in ("classification", "regression"):
            raise ConfigError(f"--task: classification or regression, got {self.task!r}")
        if not self.regression:
            return
        from streamlearn.kafka.demo_sources import connector_kind

        if connector_kind(self.source) is not None:
            return  # the schema's label (type = "float") decides; the nodes take the connector's layout
        if self.source.partition(":")[0].strip().lower() != "csv":
            raise ConfigError(f"--task regression: the demo reads a float label from a csv file (--source csv:PATH "
                              f"--label COLUMN) or a connector whose schema says type = \"float\", not {self.source!r}")
        from streamlearn.learners.registry import learner_family

        if learner_family(self.learner) != "torch":
            raise ConfigError(f"--task regression: needs a torch learner (logreg, mlp, cnn or your own torch "
                              f"factory), got {self.learner!r}")
        if self.source_params.get("classes"):
            raise ConfigError("--classes: a regression label is a number, it has no classes")
        self.source_params["task"] = "regression"  # the file's label read as a float

    def _check_connector(self) -> "DemoConfig":
        """A source read by ``streamlearn connect``: a schema, no drift injection, the node count known at start."""
        from streamlearn.kafka.demo_sources import distinct_keys

        if self.schema is None:
            raise ConfigError(f"--schema: a {self.source.partition(':')[0]} source needs the stream's schema file "
                              f"(see the README, 'Plug in your own sensor stream')")
        if not os.path.exists(self.schema):
            raise ConfigError(f"--schema: no such file {self.schema!r}")
        if self.drifts:
            raise ConfigError("--drift: drifts are injected by the producer; a connector source publishes your "
                              "readings as they are")
        self.drifts = []
        if self.source_params:
            raise ConfigError(f"--label/--features/--classes/--categorical: the schema file declares them for "
                              f"{self.source!r}")
        if self.nodes is None:
            kind, _, path = self.source.partition(":")
            if self.split and self.split.startswith("key:") and kind.strip().lower() == "jsonl":
                self.nodes = distinct_keys(path.strip(), self.split[4:].partition(":")[0])
            else:
                self.nodes = 4  # a live source: the values come as they come (--first-seen caps them at --nodes)
        if not isinstance(self.nodes, int) or not 1 <= self.nodes <= 64:
            raise ConfigError(f"--nodes: need an int in [1, 64], got {self.nodes!r}")
        from streamlearn.sync.spec import parse_spec

        parse_spec(self.protocol)
        return self


DEFAULT_DRIFTS = ("label-permutation@20000", "feature-rotation@40000:angle=90")
STARTUP_SECONDS = 180.0  # longest start-up (broker, processes, reading the source) before --duration counts anyway


@dataclass
class _Layout:
    """What the demo reads from its source before starting: the node count and the model layout."""

    nodes: int
    features: list
    classes: list | None  # None: a float label (regression)
    unlabelled: int = 0  # records of the file left out for an empty label
    keys: dict | None = None  # key value -> node of a first-seen split
    streams: list | None = None  # the node streams, with the drift schedule: what the producer sends


def _layout(cfg: DemoConfig) -> _Layout:
    """The node streams the producer sends: their number, features and classes (typed as in the file)."""
    from streamlearn.streams import node_streams

    streams = node_streams(cfg.source, cfg.nodes, cfg.drifts, cfg.schedule, cfg.split, cfg.seed,
                           on_missing=_producer_missing(cfg), **cfg.source_params)
    first = streams[0]
    if first.classes is None and not cfg.regression:
        raise ConfigError(f"--source {cfg.source}: the stream has no known classes for the nodes' models")
    nodes = len(streams)
    if not 1 <= nodes <= 64:
        raise ConfigError(f"the demo runs 1 to 64 node processes; --split {cfg.split} gives {nodes}")
    bad = [f for f in first.feature_names if "," in f]
    if bad:
        raise ConfigError(f"feature names with a comma cannot be given to the nodes: {bad}")
    inner = first
    while hasattr(inner, "split") or hasattr(inner, "inner"):
        inner = inner.split.source if hasattr(inner, "split") else inner.inner
    split = getattr(first, "split", None)
    keys = split.key_nodes() if split is not None and getattr(split, "how", None) == "first" else None
    return _Layout(nodes, list(first.feature_names), None if first.classes is None else list(first.classes),
                   int(getattr(inner, "unlabelled", 0) or 0), keys, streams)


def _producer_missing(cfg: DemoConfig) -> str | None:
    """The producer's ``missing``: kept as missing for the nodes to impute or skip, or a bad record (``error``)."""
    return None if cfg.missing == "error" else "keep"


class _Processes:
    """The child processes (``streamlearn`` commands, forked from one preloaded server: see
    :mod:`streamlearn.kafka.launch`), each logging to its own file; stopped with SIGINT, then killed."""

    def __init__(self, launcher, log_dir: str, env: dict):
        self.launcher = launcher
        self.log_dir = log_dir
        self.env = env
        self.procs: list[tuple[str, object]] = []

    def start(self, name: str, args: list) -> None:
        # each in a session of its own: Ctrl-C in the terminal reaches the demo only
        self.procs.append((name, self.launcher.start(name, args, os.path.join(self.log_dir, f"{name}.log"),
                                                     self.env)))

    def add(self, name: str, proc) -> None:
        """Watch and stop ``proc`` (a :class:`_ProducerThread`) with the processes."""
        self.procs.append((name, proc))

    def dead(self) -> list[str]:
        """The processes that ended with an error, as ``name (exit N)``; a demo child never ends on its own."""
        return [f"{name} (exit {p.returncode})" for name, p in self.procs if p.poll() is not None and p.returncode]

    def failed_names(self) -> list[str]:
        return [name for name, p in self.procs if p.poll() is not None and p.returncode]

    def tail(self, name: str, lines: int = 20) -> str:
        """The last ``lines`` lines of a process's log."""
        with open(os.path.join(self.log_dir, f"{name}.log"), errors="replace") as f:
            return "".join(f.readlines()[-lines:]).rstrip() or "(empty)"

    def stop(self, names=None, timeout: float = 15.0) -> None:
        chosen = [p for n, p in self.procs if names is None or n.split("-")[0] in names]
        for p in chosen:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout
        for p in chosen:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


class _ProducerThread:
    """The demo's producer: a :class:`~streamlearn.kafka.producer.Producer` of the streams the demo read, in a
    thread, logging to its own file and answering as the child processes do (``poll``, ``send_signal``,
    ``wait``): exit code 0 once stopped, 1 after an error (its traceback in the log)."""

    def __init__(self, config, streams: list, log_path: str):
        import logging
        import threading

        from streamlearn.kafka.producer import Producer

        self._file = open(log_path, "w", buffering=1)
        try:
            self.producer = Producer(config, streams=streams, progress_to=self._file)
        except BaseException:
            self._file.close()
            raise
        # its warnings (a rejected drift command, a broker outage) into its log, as a producer process has them
        self._logger = logging.getLogger("streamlearn.kafka.producer")
        self._handler = logging.StreamHandler(self._file)
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        self._logger.addHandler(self._handler)
        self._propagate, self._logger.propagate = self._logger.propagate, False
        self.returncode: int | None = None
        self._thread = threading.Thread(target=self._run, name="streamlearn-producer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        code = 1
        try:
            self.producer.run(handle_signals=False)  # prints its counts into the log
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc(file=self._file)
        finally:
            self._logger.removeHandler(self._handler)
            self._logger.propagate = self._propagate
            self._file.close()
            self.returncode = code

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.producer.stop()  # a clean stop whatever the signal: its last records flushed and counted

    def kill(self) -> None:
        self.producer.stop()

    def wait(self, timeout: float | None = None) -> int | None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise subprocess.TimeoutExpired("the demo's producer", timeout)
        return self.returncode


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


class _DeadLetters:
    """How many records ``<prefix>.deadletter`` holds: the nodes' dead letters and those of the producer or
    connector before them (a bad reading a connector rejects never reaches a node's count)."""

    def __init__(self, bootstrap: str, prefix: str):
        from kafka import KafkaConsumer, TopicPartition

        from streamlearn.kafka.config import KafkaSettings
        from streamlearn.kafka.topics import deadletter_topic

        self.topic = deadletter_topic(prefix)
        self._tp = TopicPartition(self.topic, 0)
        self._consumer = KafkaConsumer(**KafkaSettings.from_env().consumer_kwargs(bootstrap))

    def count(self) -> int | None:
        """Records in the topic (its end offset; None when the broker does not answer now)."""
        try:
            return int(self._consumer.end_offsets([self._tp])[self._tp])
        except Exception:  # kafka.errors.KafkaError, a timeout: the view shows the nodes' count alone
            return None

    def close(self) -> None:
        self._consumer.close()


#: Counts of the sync status that add up over the shards of a sharded layer (one sync service per shard).
_SHARD_SUMS = ("full_syncs", "partial_syncs", "models", "models_up", "models_down", "bytes", "nodes_alive")


def _sync_of(reader, shards: int) -> dict | None:
    """The sync status the views show: the service's, or with ``shards`` > 1 the shards' added up (None until
    every shard has reported).

    >>> class R: shards = {0: {"full_syncs": 2, "models": 5, "d": 3}, 1: {"full_syncs": 1, "models": 4, "d": 3}}
    >>> s = _sync_of(R(), 2); s["full_syncs"], s["models"], s["d"], s["shards_reporting"]
    (3, 9, 3, 2)
    """
    if shards == 1:
        return reader.sync
    parts = [reader.shards[k] for k in sorted(reader.shards) if k < shards]
    if len(parts) < shards:
        return None
    out = dict(parts[0])
    for key in _SHARD_SUMS:
        out[key] = sum(int(p.get(key) or 0) for p in parts)
    out["shards_reporting"] = len(parts)
    return out


def _periodic_bytes(nodes: dict, sync: dict | None, b: int) -> int:
    """What plain periodic averaging with the same b would have sent over the steps the nodes took:
    every b steps each node's model up and the mean back down, as dense fp32 model messages (header
    included, as the sync service counts its own). A fixed schedule, not a rate matched to accuracy.

    >>> _periodic_bytes({0: {"steps": 9}, 1: {"steps": 8}}, {"d": 10}, 4)  # 2 rounds x 2 nodes x (up + down)
    736
    """
    from streamlearn.sync.codec import FP32_HEADER_BYTES

    d = (sync or {}).get("d") or 0
    rounds = sum(s.get("steps", 0) // b for s in nodes.values())
    return int(2 * rounds * (FP32_HEADER_BYTES + 4 * d)) if d else 0


def _baseline(b: int) -> str:
    return "periodic averaging every step (b=1)" if b == 1 else f"periodic averaging every {b} steps (b={b})"


def _fmt(v, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def _size(n: float) -> str:
    """Bytes for a person: ``_size(2_500) == '2.5 kB'``, ``_size(3.2e6) == '3.20 MB'``."""
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _sync_line(nodes: dict, sync: dict | None, b: int) -> str:
    if not sync:
        return "sync service: waiting for its first status"
    sent = int(sync.get("bytes", 0) or 0)
    periodic = _periodic_bytes(nodes, sync, b)
    if not periodic:
        saved = "no ratio yet" if not sync.get("d") else "no step taken yet"
    elif not sent:
        saved = "this run sent nothing yet"
    elif periodic >= sent:
        saved = f"this run sent {periodic / sent:.1f}x fewer bytes"
    else:
        saved = f"this run sent {sent / periodic:.1f}x more bytes"
    versus = _size(periodic) if sync.get("d") else "? MB (model size not known yet)"
    # Say plainly what the ratio compares with: a fixed schedule at the same b, not periodic averaging
    # at the accuracy this run reached (bench/sync_value.py measures that, README Benchmarks).
    return (f"sync: {sync.get('full_syncs', 0)} full, {sync.get('partial_syncs', 0)} partial; "
            f"models {sync.get('models', 0)} ({sync.get('models_up', 0)} up, {sync.get('models_down', 0)} down); "
            f"sent {_size(sent)}\n"
            f"baseline: {versus} for {_baseline(b)} over the same steps (every node's model up and the mean "
            f"down, plain fp32): {saved}\n"
            f"  (a fixed schedule, not periodic averaging at this run's accuracy: bytes at matched accuracy, "
            f"each setting at its best learning rate, are in the README's Benchmarks, bench/sync_value.py)")


def _view(cfg: DemoConfig, nodes: dict, sync: dict | None, drifts: list, elapsed: float, b: int,
          status: str = "running", drift_command: str | None = None, deadletters: tuple | None = None) -> str:
    """The demo's table; ``deadletters``: (records in the dead-letter topic, its name), None if not known."""
    lines = [f"streamlearn demo — {cfg.nodes} nodes, {cfg.source}, {cfg.protocol}, "
             f"{elapsed:5.0f} s{'' if cfg.duration is None else f' of {cfg.duration:.0f}'}  {status}"
             f"{'  (Ctrl-C stops)' if status == 'running' or status.startswith('starting') else ''}", ""]
    skip = any(s.get("missing_policy") == "skip" for s in nodes.values())
    missing_head = "skipped" if skip else "imputed"  # missing values imputed, or rows skipped, at each node
    regression = _regression(cfg, nodes)
    rolling, overall = _score_keys(regression)
    heads = ("rolling MAE", "MAE") if regression else ("rolling acc", "accuracy")
    lines.append(f"{'node':>4} {'samples':>8} {'rate/s':>7} {heads[0]:>11} {heads[1]:>8} {'detected':>8} "
                 f"{'divergence':>10} {'Δ':>6} {'models up':>9} {'syncs':>5} {'dead':>5} {missing_head:>7}")
    for node in sorted(nodes):
        s = nodes[node]
        missing = s.get("missing_skipped" if skip else "missing_imputed")
        lines.append(f"{node:>4} {s.get('samples', 0):>8} {_fmt(s.get('rate'), '.0f'):>7} "
                     f"{_fmt(s.get(rolling)):>11} {_fmt(s.get(overall)):>8} "
                     f"{s.get('n_drifts', 0):>8} {_fmt(s.get('divergence'), '.3g'):>10} "
                     f"{_fmt(s.get('delta'), '.3g'):>6} {s.get('models_sent', 0):>9} {s.get('syncs', 0):>5} "
                     f"{s.get('deadletters', 0):>5} {'-' if missing is None else missing:>7}")
    if not nodes:
        lines.append(f"{'':>4} (no node has reported yet: {status})")
    else:
        total = {k: sum(int(v.get(k) or 0) for v in nodes.values())
                 for k in ("deadletters", "missing_imputed", "missing_skipped")}
        dead = f"dead letters: {total['deadletters']}"
        if deadletters is not None and deadletters[0] is not None and deadletters[0] != total["deadletters"]:
            dead = f"dead letters: {deadletters[0]} in {deadletters[1]} ({total['deadletters']} counted by the nodes)"
        lines.append(f"{dead}; missing values: {total['missing_imputed']} imputed "
                     f"(running mean per node), {total['missing_skipped']} rows skipped")
    lines.append("")
    if drifts:
        shown = ", ".join(f"{e.kind}@{e.seq}" + ("" if e.node is None else f" (node {e.node})") for e in drifts[-6:])
        lines.append(f"drifts injected: {len(drifts)}  [{shown}]")
    else:
        lines.append("drifts injected: none yet")
    if drift_command:
        lines.append(f"inject one now: {drift_command}")
    lines.append(_sync_line(nodes, sync, b))
    groups = _groups_line(sync)
    if groups:
        lines.append(groups)
    return "\n".join(lines)


def _regression(cfg: DemoConfig, nodes: dict) -> bool:
    """A regression run: asked for, or said by the nodes (a connector's schema with a float label)."""
    return cfg.regression or any(s.get("task") == "regression" for s in nodes.values())


def _score_keys(regression: bool) -> tuple[str, str]:
    """The node status keys the views show: rolling and overall accuracy, or MAE for a regression."""
    return ("rolling_mae", "mae") if regression else ("rolling_accuracy", "accuracy")


def _groups_line(sync: dict | None) -> str | None:
    """Which nodes are averaged apart (split=N), or None while every node is in the whole.

    >>> _groups_line({"node_groups": {"0": 0, "1": 0, "2": 3, "3": 3}, "group_changes_by_kind": {"split": 2, "merge": 1}})
    'groups: 0: nodes 0, 1 | 3: nodes 2, 3  (changes: split 2, merge 1)'
    """
    groups = (sync or {}).get("node_groups") or {}
    if not any(groups.values()):
        return None
    members: dict = {}
    for node, g in sorted(groups.items(), key=lambda kv: int(kv[0])):
        members.setdefault(g, []).append(node)
    changes = ", ".join(f"{k} {v}" for k, v in ((sync or {}).get("group_changes_by_kind") or {}).items() if v)
    return ("groups: " + " | ".join(f"{g}: nodes {', '.join(ns)}" for g, ns in sorted(members.items()))
            + (f"  (changes: {changes})" if changes else ""))


def _thin(points: list, limit: int = 600) -> None:
    """Bound a growing series by dropping every other point (first and last kept), so it keeps its start."""
    if len(points) > limit:
        del points[1:-1:2]


class _Watch:
    """What the demo has seen: a snapshot per refresh, for the live page and the final plot."""

    def __init__(self, cfg: DemoConfig, b: int, view=None):
        self.cfg, self.b, self.view = cfg, b, view
        self.history: list = []  # (seconds, {node: {samples, score, group}}), for the plot
        self.series: dict = {}  # node -> points of the live page
        self.sync_history: list = []
        self.status = "starting …"
        self.drift_command = None
        self.regression = cfg.regression

    def snapshot(self, elapsed: float, nodes: dict, sync: dict | None, drifts: list) -> None:
        groups = (sync or {}).get("node_groups") or {}  # node -> group averaged in (split=N)
        self.regression = self.regression or _regression(self.cfg, nodes)
        rolling = _score_keys(self.regression)[0]  # rolling accuracy, or rolling MAE of a regression
        self.history.append((elapsed, {k: {"samples": v.get("samples", 0), "score": v.get(rolling),
                                           "group": groups.get(str(k))} for k, v in nodes.items()}))
        _thin(self.history, 3600)
        for node, st in nodes.items():
            pts = self.series.setdefault(str(node), [])
            pts.append({**{k: st.get(k) for k in ("samples", rolling, "divergence")},
                        "group": groups.get(str(node))})
            _thin(pts)
        if sync:
            # periodic_bytes is unknown (None) until the sync service knows the model size d
            periodic = _periodic_bytes(nodes, sync, self.b) if sync.get("d") else None
            self.sync_history.append({"t": round(elapsed, 1), "full_syncs": sync.get("full_syncs", 0),
                                      "partial_syncs": sync.get("partial_syncs", 0), "bytes": sync.get("bytes", 0),
                                      "periodic_bytes": periodic})
            _thin(self.sync_history)
        self.publish(nodes, sync, drifts)

    def publish(self, nodes: dict, sync: dict | None, drifts: list) -> None:
        if self.view is None:
            return
        cfg = self.cfg
        detected, false_alarms = _split_detected(nodes, drifts)
        delta = next((s.get("delta") for s in nodes.values() if s.get("delta") is not None), None)
        self.view.update({"title": f"{cfg.nodes} nodes, {cfg.source}, {cfg.protocol}", "status": self.status,
                          "summary": _sync_line(nodes, sync, self.b), "drift_command": self.drift_command,
                          "protocol": cfg.protocol, "baseline": _baseline(self.b), "history": self.series,
                          "score": _score_keys(self.regression)[0],
                          "score_title": "Rolling MAE per node" if self.regression else "Rolling accuracy per node",
                          "drifts": sorted({e.seq for e in drifts if e.seq is not None}), "detected": detected,
                          "false_alarms": false_alarms, "max_delay": DETECTION_MAX_DELAY, "delta": delta, "sync_history": self.sync_history})


#: A node's detection within this many samples after a drift injected at it found that drift; the
#: others are false alarms (drawn apart on the live page and the plot).
DETECTION_MAX_DELAY = 1000


def _split_detected(nodes: dict, drifts: list) -> tuple[list[int], list[int]]:
    """Every node's detections (sample positions), split into those that found a drift injected at
    that node (or at every node) within ``DETECTION_MAX_DELAY`` and false alarms.

    >>> from streamlearn.kafka.codecs import DriftEvent
    >>> drifts = [DriftEvent(kind="label-permutation", ts=0.0, seq=20000), DriftEvent("x", 0.0, node=1, seq=30000)]
    >>> _split_detected({"0": {"drifts": [900, 20040]}, "1": {"drifts": [20100, 30300]}}, drifts)
    ([20040, 20100, 30300], [900])
    """
    from streamlearn.evaluation.scoring import split_detections

    true, false = set(), set()
    for node, status in nodes.items():
        events = [e.seq for e in drifts if e.seq is not None and (e.node is None or str(e.node) == str(node))]
        t, f = split_detections(status.get("drifts", []), events, DETECTION_MAX_DELAY)
        true.update(t)
        false.update(f)
    return sorted(true), sorted(false)


def _runs(points: list) -> list:
    """Consecutive runs of ``(x, y, group)`` points in one group, each run joined to the next point so the line
    has no gap: ``[(group, points), ...]``.

    >>> [(g, [p[0] for p in run]) for g, run in _runs([(0, .5, 0), (1, .6, 0), (2, .7, 1), (3, .8, 1)])]
    [(0, [0, 1, 2]), (1, [2, 3])]
    """
    out = []
    for p in points:
        if not out or out[-1][0] != p[2]:
            if out:
                out[-1][1].append(p)
            out.append((p[2], [p]))
        else:
            out[-1][1].append(p)
    return out


def _plot(history: list, nodes: dict, drifts: list, path: str, title: str, regression: bool = False) -> None:
    from streamlearn.extras import require

    matplotlib = require("matplotlib", "demo", "the demo's plot")  # optional: the "demo" (or "plots") extra
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    # With groups (split=N) a node's line takes its group's colour while it is in that group; else each node its own.
    grouped = any(snap[n].get("group") for _, snap in history for n in snap)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labelled = set()
    for k, node in enumerate(sorted({node for _, snap in history for node in snap}, key=str)):
        pts = [(snap[node]["samples"], snap[node]["score"], snap[node].get("group") or 0)
               for _, snap in history if node in snap and snap[node].get("score") is not None]
        if not grouped:
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], linewidth=1, label=f"node {node}")
            continue
        for group, run in _runs(pts):
            label = None if group in labelled else f"group {group}"
            labelled.add(group)
            ax.plot([p[0] for p in run], [p[1] for p in run], linewidth=1, color=colours[group % len(colours)],
                    label=label)
    from streamlearn.evaluation.plot import DETECTED_STYLE, FALSE_ALARM_STYLE

    top = 1.0 if not regression else max([p["score"] for _, snap in history for p in snap.values()
                                          if p.get("score") is not None] or [1.0])  # MAE in the label's units
    true, false = _split_detected(nodes, drifts)
    for xs, style, label in ((true, DETECTED_STYLE, f"detected drift (within {DETECTION_MAX_DELAY})"),
                             (false, FALSE_ALARM_STYLE, "false alarm")):
        for pos in xs:
            ax.axvline(pos, color=style["color"], linestyle=":", linewidth=0.8)
        if xs:  # a marker on top of each line: orange triangle, grey x
            ax.plot(xs, [top] * len(xs), **style, label=label, clip_on=False)
    for status in nodes.values():
        for pos in status.get("sync_positions", [])[-200:]:
            ax.plot([pos], [0.02 * top], "|", color="green", markersize=6)
    for e in drifts:
        if e.seq is not None:
            ax.axvline(e.seq, color="red", linestyle="--", linewidth=1)
    ax.set_xlim(left=0)
    ax.set_ylim(0, 1.02 * top)
    ax.set_xlabel("samples learned per node (red dashed: injected drift; orange ▲: detected drift; gray x: false alarm; "
                  "green ticks: syncs)" + ("\ncolour: the group a node is averaged in" if grouped else ""))
    ax.set_ylabel("rolling MAE" if regression else "rolling accuracy")
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(cfg: DemoConfig) -> dict:
    """Run the demo; returns the final node and sync statuses (also printed as a table).

    Raises :class:`StreamlearnError` naming the process when one of them dies, after the others are
    stopped and the summary and plot are written.
    """
    from streamlearn.kafka.launch import Launcher

    cfg.check()
    # the server the processes are forked from imports streamlearn while the file is read
    with Launcher(fork=cfg.fork) as launcher:
        return _run_demo(cfg, launcher)


def _run_demo(cfg: DemoConfig, launcher) -> dict:
    from streamlearn.kafka.broker import start_or_reuse_broker
    from streamlearn.kafka.status import StatusReader
    from streamlearn.kafka.topics import ensure_topics
    from streamlearn.sync.spec import parse_spec

    from streamlearn.kafka.demo_sources import connector_argv, connector_kind

    fed = connector_kind(cfg.source)  # None: the producer; else a connector, whose layout the nodes take
    # a file is read once: the number of nodes and the model layout, before anything starts
    layout = _layout(cfg) if fed is None else _Layout(cfg.nodes, [], [])
    cfg.nodes = layout.nodes
    if layout.keys is not None:
        shown = ", ".join(f"{k} -> {v}" for k, v in list(layout.keys.items())[:12])
        print(f"split {cfg.split}: {len(layout.keys)} nodes, one per value ({shown}"
              f"{', ...' if len(layout.keys) > 12 else ''})", flush=True)
    if layout.unlabelled:
        print(f"{layout.unlabelled} records without a label left out of {cfg.source}", flush=True)
    name, params = parse_spec(cfg.protocol)
    b = int(params.get("b", params.get("tau", 1)) or 1)
    shards = int(params.get("shards", 1) or 1)
    if shards > cfg.nodes:
        raise ConfigError(f"--protocol {cfg.protocol}: shards={shards} is more than the {cfg.nodes} nodes")
    prefix = cfg.prefix or f"streamlearn-demo-{int(time.time())}"
    log_dir = os.path.join(cfg.out, "logs")
    os.makedirs(log_dir, exist_ok=True)
    tty = sys.stdout.isatty()
    with contextlib.ExitStack() as stack:
        view = None
        if cfg.view_port is not None:
            from streamlearn.kafka.liveview import LiveView

            view = stack.enter_context(LiveView(cfg.view_host, cfg.view_port))
            print(f"live view: {view.url}", flush=True)
        watch = _Watch(cfg, b, view)
        watch.status = "starting: the Kafka broker …"
        watch.publish({}, None, [])
        print(watch.status, flush=True)
        # The demo owns the broker it starts (the services never start one): stopped last, after them.
        broker = start_or_reuse_broker()
        if broker.origin == "started":
            stack.callback(broker.stop)
        watch.drift_command = (f"streamlearn drift --bootstrap {broker.bootstrap} --prefix {prefix} "
                               f"--node {min(1, cfg.nodes - 1)} --kind label-permutation")
        print(f"broker: {broker.bootstrap} ({broker.origin}); topics: {prefix}.*; logs: {log_dir}", flush=True)
        if fed is None:
            print(f"inject a drift while it runs: {watch.drift_command}", flush=True)
        else:
            watch.drift_command = None
        print(f"the nodes' predictions: streamlearn tail predictions --bootstrap {broker.bootstrap} --prefix {prefix}",
              flush=True)
        ensure_topics(broker.bootstrap, prefix, list(range(cfg.nodes)), shards=shards)
        env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap, KAFKA_TOPIC_PREFIX=prefix)
        procs = _Processes(launcher, log_dir, env)
        stack.callback(procs.stop)  # on an error below; a no-op after the orderly stop
        if fed is None:  # sending while the node processes start: they read their topics from the start
            from streamlearn.kafka.producer import ProducerConfig

            pcfg = ProducerConfig(source=cfg.source, nodes=cfg.nodes, rate=cfg.rate, drifts=tuple(cfg.drifts),
                                  schedule=cfg.schedule, split=cfg.split, format="binary", seed=cfg.seed,
                                  source_params=dict(cfg.source_params), bootstrap=broker.bootstrap, prefix=prefix,
                                  missing=_producer_missing(cfg))
            procs.add("producer", _ProducerThread(pcfg, layout.streams, os.path.join(log_dir, "producer.log")))
        learner_args = ["--learner", cfg.learner, "--batch-size", cfg.batch_size, "--seed", cfg.seed]
        if cfg.lr is not None:
            learner_args += ["--lr", cfg.lr]
        if cfg.lr_decay is not None:
            learner_args += ["--lr-decay", cfg.lr_decay]
        if cfg.guard is not None:  # guarded averaging at every node
            learner_args += ["--guard", cfg.guard, "--guard-margin", cfg.guard_margin]
        ckpt = os.path.join(cfg.out, "checkpoints", prefix) if cfg.checkpoints else None
        if ckpt is not None:  # a fresh folder per run: a node must not resume another run's model
            learner_args += ["--checkpoint-dir", ckpt]
        reader = StatusReader(broker.bootstrap, prefix)
        stack.callback(reader.close)
        drift_reader = _DriftReader(broker.bootstrap, prefix)
        stack.callback(drift_reader.close)
        dead_letters = _DeadLetters(broker.bootstrap, prefix)
        stack.callback(dead_letters.close)

        t0 = time.monotonic()  # --duration counts from here: the pipeline's run, not the broker's start
        if shards == 1:
            procs.start("sync", ["sync", "--protocol", cfg.protocol])
        else:  # a sharded layer (shards=S): one sync service per shard, shard 0's hosts the root
            for k in range(shards):
                procs.start(f"sync-{k}", ["sync", "--protocol", cfg.protocol, "--shard", k])
        if fed is not None:
            layout_args = []  # the nodes take the layout the connector announces (streamlearn.kafka.layout)
        elif cfg.source.partition(":")[0].strip().lower() == "csv":  # the layout read from the file, typed as there
            layout_args = ["--features", ",".join(layout.features)]
            layout_args += (["--task", "regression"] if cfg.regression else
                            ["--classes", ",".join(map(str, layout.classes))])
        else:
            layout_args = ["--source", cfg.source]
        if cfg.missing != "error":
            layout_args += ["--missing", cfg.missing]
        for i in range(cfg.nodes):
            procs.start(f"node-{i}", ["node", "--id", i, *layout_args, "--protocol", cfg.protocol, *learner_args])
        if fed is not None:
            procs.start("connector", connector_argv(cfg.source, cfg.schema, cfg.nodes, cfg.split, cfg.rate))
        failed: list[str] = []
        failed_names: list[str] = []
        stopped_by = "--duration"
        next_snapshot = next_print = 0.0
        # --duration counts the pipeline's run: from when every process reports and samples flow (a big file
        # takes the producer a while to read while the node processes start), at most STARTUP_SECONDS later
        clock = None
        try:
            while True:
                now = time.monotonic()
                if clock is None and (now - t0 >= STARTUP_SECONDS or (
                        watch.status == "running" and any(v.get("samples") for v in reader.nodes.values()))):
                    clock = now
                left = None if cfg.duration is None else cfg.duration - (now - (clock or now))
                if left is not None and left <= 0:
                    break
                reader.poll(0.2 if left is None else max(0.0, min(0.2, left)))
                drift_reader.poll()
                now = time.monotonic()
                sync_now = _sync_of(reader, shards)
                if len(reader.nodes) < cfg.nodes or sync_now is None:
                    watch.status = (f"starting: {len(reader.nodes)} of {cfg.nodes} nodes and "
                                    f"{'the' if sync_now else 'no'} sync service reporting …")
                else:
                    watch.status = "running"
                # The page and the plot get a snapshot every refresh; a log (not a terminal) a table every 5 s.
                if now >= next_snapshot:
                    watch.snapshot(now - t0, reader.nodes, sync_now, drift_reader.events)
                    next_snapshot = now + cfg.refresh
                if now >= next_print:
                    text = _view(cfg, reader.nodes, sync_now, drift_reader.events, now - (clock or now), b,
                                 watch.status, watch.drift_command, (dead_letters.count(), dead_letters.topic))
                    print(("\x1b[H\x1b[2J" + text) if tty else text + "\n", flush=True)
                    next_print = now + (cfg.refresh if tty else max(cfg.refresh, 5.0))
                failed = procs.dead()
                if failed:
                    failed_names = procs.failed_names()  # now: once stopped with SIGINT, the others exit non-zero too
                    stopped_by = "a failed process"
                    break
        except KeyboardInterrupt:
            stopped_by = "Ctrl-C"
        elapsed = time.monotonic() - (clock or t0)
        watch.status = f"stopping ({stopped_by}) …"
        watch.publish(reader.nodes, _sync_of(reader, shards), drift_reader.events)
        print(f"\nstopping after {elapsed:.0f} s ({stopped_by}) …", flush=True)
        # Producer first (no new samples), then the nodes (they leave), then the sync service.
        procs.stop(["producer", "connector"])
        procs.stop(["node"])
        procs.stop(["sync"])
        for _ in range(5):
            reader.poll(0.2)
        drift_reader.poll()
        nodes, sync, drifts = reader.nodes, _sync_of(reader, shards), drift_reader.events
        watch.snapshot(elapsed, nodes, sync, drifts)
        watch.status = f"stopped after {elapsed:.0f} s ({stopped_by})" if not failed else \
            f"failed: {', '.join(failed)} died; see {log_dir}"
        watch.publish(nodes, sync, drifts)
        print(_view(cfg, nodes, sync, drifts, elapsed, b, watch.status,
                    deadletters=(dead_letters.count(), dead_letters.topic)))
        plot_path = os.path.join(cfg.out, "demo.png")
        _plot(watch.history, nodes, drifts, plot_path, f"{cfg.nodes} nodes, {cfg.source}, {cfg.protocol}",
              watch.regression)
        print(f"\nwrote {plot_path}", flush=True)
        if ckpt is not None and not failed:
            print(f"take a node's model away: streamlearn export --checkpoint-dir {ckpt} --node 0 "
                  f"--out {os.path.join(cfg.out, 'model')}", flush=True)
        if failed:
            for name in failed_names:
                print(f"\n--- last lines of {log_dir}/{name}.log ---\n{procs.tail(name)}", flush=True)
            raise StreamlearnError(f"demo: a process died: {', '.join(failed)}; its log is above and in {log_dir} "
                                   f"(summary and plot written)")
    return {"nodes": nodes, "sync": sync, "drifts": [e.__dict__ for e in drifts], "plot": plot_path,
            "periodic_bytes": _periodic_bytes(nodes, sync, b), "elapsed": elapsed}
