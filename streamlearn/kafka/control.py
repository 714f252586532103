"""Live drift commands: ``streamlearn drift --node 2 --kind label-permutation`` on ``<prefix>.control``.

A live drift is a :class:`~streamlearn.kafka.codecs.ControlCommand` with
``command="inject_drift"``, ``target`` the node (absent: every node) and
``args = {"kind": KIND, "params": {NAME: VALUE, ...}}``, e.g.::

    {"type":"control","command":"inject_drift","target":2,
     "args":{"kind":"noise","params":{"sigma":0.3}},"id":"drift-1f3a","ts":1700000120.0}

``kind`` is a key of :data:`streamlearn.streams.DRIFT_KINDS`; ``params`` are
that kind's parameters (defaults fill the rest); there is no position: a running
producer applies the drift from the node's current position on and publishes the
ground-truth event (``params.live = true``) on ``<prefix>.drift``.

:func:`inject_drift` (``streamlearn drift``) also waits for that event, matched by the command's
``id`` in ``params.command``, and reports which nodes applied the drift from which sample; no event
within the wait means no producer applied it (none on this prefix and cluster, or it rejected the
command). ``--bootstrap`` and ``--prefix`` reach a pipeline whose topics differ from the environment's,
e.g. a ``streamlearn demo``, which prints its own command.

Everything is validated here, before anything is sent: an unknown kind, an
unknown parameter or a bad value raises :class:`~streamlearn.errors.ConfigError`
naming it. Parameters that depend on the stream (``features`` names, a rotation
of a one-feature stream) can only be checked by the producer, which skips such a
command with a warning.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from streamlearn.errors import ConfigError, StreamlearnError
from streamlearn.kafka.codecs import ControlCommand, encode_message
from streamlearn.streams.drift_spec import DRIFT_KINDS, DriftSpec

__all__ = [
    "LIVE_DRIFT_COMMAND",
    "LiveDrift",
    "parse_params",
    "drift_command",
    "parse_drift_command",
    "send_drift_command",
    "DriftResult",
    "inject_drift",
]

LIVE_DRIFT_COMMAND = "inject_drift"


@dataclass(frozen=True)
class LiveDrift:
    """A validated live drift: which node (None: all), which kind, its parameters (as given, typed)."""

    target: int | None
    kind: str
    params: dict = field(default_factory=dict)
    id: str | None = None


def parse_params(items: Iterable[str] | None) -> dict:
    """``["k=v", ...]`` (the CLI's repeated ``--param``) to a dict of strings.

    Examples
    --------
    >>> parse_params(["sigma=0.3", "features=x0|x1"])
    {'sigma': '0.3', 'features': 'x0|x1'}
    >>> parse_params(["sigma"])
    Traceback (most recent call last):
    ...
    streamlearn.errors.ConfigError: bad --param 'sigma': expected NAME=VALUE
    """
    out = {}
    for item in items or ():
        key, eq, value = str(item).partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError(f"bad --param {item!r}: expected NAME=VALUE")
        if key in out:
            raise ConfigError(f"bad --param {item!r}: parameter {key!r} given twice")
        out[key] = value.strip()
    return out


def _target(node) -> int | None:
    if node is None or (isinstance(node, str) and node.strip().lower() == "all"):
        return None
    if isinstance(node, str) and node.strip().isdigit():
        return int(node.strip())
    if isinstance(node, bool) or not isinstance(node, int) or not 0 <= node < 2**31:
        raise ConfigError(f"node must be a node id >= 0 or 'all', got {node!r}")
    return node


def _check_kind_params(kind, params) -> tuple[str, dict]:
    """(kind, params cast to their types); ConfigError naming the bad kind, parameter or value."""
    if not isinstance(kind, str) or kind.strip().lower() not in DRIFT_KINDS:
        raise ConfigError(f"unknown drift kind {kind!r}; known: {', '.join(DRIFT_KINDS)}")
    kind = kind.strip().lower()
    if not isinstance(params, Mapping):
        raise ConfigError(f"drift params must be a mapping of NAME to VALUE, got {params!r}")
    known = DRIFT_KINDS[kind]["params"]
    unknown = [k for k in params if k not in known]
    if unknown:
        raise ConfigError(f"unknown parameter(s) {', '.join(map(repr, unknown))} for drift kind {kind!r} "
                          f"(known: {', '.join(known) or 'none'})")
    typed = {}
    for key, value in params.items():
        try:
            typed[key] = DriftSpec(kind, 0, {key: value}).params[key]
        except ConfigError as exc:
            # DriftSpec names a spec "kind@0"; a live drift has no position, so keep only the reason.
            reason = str(exc).partition("': ")[2] or str(exc)
            raise ConfigError(f"bad parameter {key}={value!r} for drift kind {kind!r}: {reason}") from None
    return kind, typed


def _jsonable(params: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}


def drift_command(node, kind: str, params: Mapping | None = None, *, id: str | None = None,
                  ts: float | None = None) -> ControlCommand:
    """The validated ``inject_drift`` command for ``node`` (an id, or ``"all"``/None for every node).

    ``params`` may hold strings (from the command line): they are cast and checked
    against ``DRIFT_KINDS[kind]``. ``id`` defaults to a fresh ``drift-<hex>``.

    Examples
    --------
    >>> cmd = drift_command(2, "noise", {"sigma": "0.3"}, id="c1", ts=0.0)
    >>> cmd
    ControlCommand(command='inject_drift', target=2, args={'kind': 'noise', 'params': {'sigma': 0.3}}, id='c1', ts=0.0)
    >>> drift_command("all", "label-permutation", {"foo": 1})
    Traceback (most recent call last):
    ...
    streamlearn.errors.ConfigError: unknown parameter(s) 'foo' for drift kind 'label-permutation' (known: none)
    """
    target = _target(node)
    kind, typed = _check_kind_params(kind, dict(params or {}))
    return ControlCommand(
        command=LIVE_DRIFT_COMMAND,
        target=target,
        args={"kind": kind, "params": _jsonable(typed)},
        id=id if id is not None else f"drift-{uuid.uuid4().hex[:12]}",
        ts=time.time() if ts is None else float(ts),
    )


def parse_drift_command(cmd: ControlCommand) -> LiveDrift:
    """Validate a received ``inject_drift`` command (ConfigError naming what is wrong).

    Examples
    --------
    >>> parse_drift_command(drift_command(1, "feature-shift", {"shift": "2"}, id="c2"))
    LiveDrift(target=1, kind='feature-shift', params={'shift': 2.0}, id='c2')
    """
    if cmd.command != LIVE_DRIFT_COMMAND:
        raise ConfigError(f"not a live drift command: {cmd.command!r}")
    args = cmd.args or {}
    extra = sorted(set(args) - {"kind", "params"})
    if extra:
        raise ConfigError(f"unknown field(s) {extra} in inject_drift args")
    kind, typed = _check_kind_params(args.get("kind"), args.get("params") or {})
    return LiveDrift(cmd.target, kind, typed, cmd.id)


def _resolve_bootstrap(bootstrap, settings) -> str:
    """The cluster to send to; never starts a broker (a drift command needs a running producer's broker)."""
    if bootstrap is not None:
        return bootstrap
    if settings.bootstrap_servers is not None:
        return settings.bootstrap_servers
    from streamlearn.kafka.broker import DEFAULT_EMBEDDED_HOST, DEFAULT_EMBEDDED_PORT, BrokerError, probe

    if probe(DEFAULT_EMBEDDED_HOST, DEFAULT_EMBEDDED_PORT):
        return f"{DEFAULT_EMBEDDED_HOST}:{DEFAULT_EMBEDDED_PORT}"
    raise BrokerError(f"no Kafka broker answers on {DEFAULT_EMBEDDED_HOST}:{DEFAULT_EMBEDDED_PORT} and "
                      "KAFKA_BOOTSTRAP_SERVERS is not set: start the producer (streamlearn produce) first")


def send_drift_command(bootstrap: str | None, prefix: str | None, node, kind: str, params: Mapping | None = None,
                       *, settings=None, id: str | None = None, timeout: float = 10.0) -> ControlCommand:
    """Validate, then publish an ``inject_drift`` command on ``<prefix>.control``; return it.

    Parameters
    ----------
    bootstrap
        ``host:port``; None: ``KAFKA_BOOTSTRAP_SERVERS``, else the embedded broker on
        127.0.0.1:9092 if one answers (it is never started here).
    prefix
        Topic prefix; None: ``settings.topic_prefix``.
    node
        Node id, or ``"all"``/None for every node.
    kind, params
        A key of ``DRIFT_KINDS`` and its parameters (strings are cast).
    settings
        :class:`~streamlearn.kafka.config.KafkaSettings`; default from the environment.
    id
        Command id (default ``drift-<hex>``); the drift event of each node carries it as ``params.command``.
    timeout
        Seconds to wait for the broker to acknowledge.

    Raises
    ------
    ConfigError
        Bad node, kind or parameter, before anything is sent.
    StreamlearnError
        The broker did not acknowledge within ``timeout``.
    """
    return inject_drift(bootstrap, prefix, node, kind, params, settings=settings, id=id, timeout=timeout,
                        wait=0).command


@dataclass(frozen=True)
class DriftResult:
    """What :func:`inject_drift` did: the command sent, where, and the drift events it produced."""

    command: ControlCommand
    bootstrap: str
    prefix: str
    events: list = field(default_factory=list)  # codecs.DriftEvent with params.command == command.id


def inject_drift(bootstrap: str | None, prefix: str | None, node, kind: str, params: Mapping | None = None, *,
                 settings=None, id: str | None = None, timeout: float = 10.0, wait: float = 5.0) -> DriftResult:
    """Send an ``inject_drift`` command (as :func:`send_drift_command`) and wait for a producer to apply it.

    A producer that applies a live drift publishes, per node, a ground-truth event on
    ``<prefix>.drift`` whose ``params.command`` is the command's id. This reads that topic from
    its end before sending and collects those events for up to ``wait`` seconds: until the
    target node's event arrives, or, for every node, until no new one came for a second.
    An empty ``events`` means no producer applied the command in time (none runs with this
    prefix on this cluster, its live drift is off, or it rejected the command: its log says why).
    ``gradual`` is announced at the centre of its transition, ``width`` samples later.

    Parameters
    ----------
    bootstrap, prefix, node, kind, params, settings, id, timeout
        As for :func:`send_drift_command`.
    wait
        Seconds to wait for the drift events; 0: send only.
    """
    from streamlearn.kafka.config import KafkaSettings, validate_topic_prefix
    from streamlearn.kafka.topics import control_topic, drift_topic, ensure_topics

    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not wait >= 0:
        raise ConfigError(f"--wait: need seconds >= 0, got {wait!r}")
    cmd = drift_command(node, kind, params, id=id)
    settings = KafkaSettings.from_env() if settings is None else settings
    prefix = validate_topic_prefix(prefix, "--prefix") if prefix is not None else settings.topic_prefix
    bootstrap = _resolve_bootstrap(bootstrap, settings)
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    # Creates the control topic (one partition) if no producer did yet; Tansu would auto-create it with four.
    ensure_topics(bootstrap, prefix, [], settings=settings, timeout_ms=int(timeout * 1000))
    consumer = None
    if wait > 0:
        # Positioned at the drift topic's end before the command goes out, so no answer is missed.
        consumer = KafkaConsumer(**settings.consumer_kwargs(bootstrap, fetch_max_wait_ms=100))
        tp = TopicPartition(drift_topic(prefix), 0)
        consumer.assign([tp])
        consumer.seek_to_end(tp)
        consumer.position(tp)
    try:
        producer = KafkaProducer(**settings.producer_kwargs(bootstrap))
        try:
            future = producer.send(control_topic(prefix), value=encode_message(cmd), partition=0)
            try:
                future.get(timeout=timeout)
            except Exception as exc:  # KafkaTimeoutError, broker errors
                raise StreamlearnError(f"the drift command was not acknowledged by {bootstrap}: {exc}") from exc
        finally:
            producer.close(timeout=timeout)
        events = [] if consumer is None else _answers(consumer, cmd, wait)
    finally:
        if consumer is not None:
            consumer.close()
    return DriftResult(cmd, bootstrap, prefix, events)


def _answers(consumer, cmd: ControlCommand, wait: float) -> list:
    """The drift events carrying ``cmd.id``, read for up to ``wait`` seconds (see :func:`inject_drift`)."""
    from streamlearn.kafka.codecs import DecodeError, decode_message

    events: list = []
    deadline = time.monotonic() + wait
    quiet_until = None  # for every node: stop one second after the last event
    while time.monotonic() < deadline and (quiet_until is None or time.monotonic() < quiet_until):
        for records in consumer.poll(timeout_ms=100).values():
            for rec in records:
                try:
                    event = decode_message(rec.value, expect="drift")
                except DecodeError:
                    continue
                if (event.params or {}).get("command") != cmd.id:
                    continue
                events.append(event)
                if cmd.target is not None:
                    return events
                quiet_until = time.monotonic() + 1.0
    return events
