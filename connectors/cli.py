"""``streamlearn connect <kind> ...``: the connectors' command line.

``streamlearn/cli.py`` calls :func:`add_connect_parser` on its subparsers (its one lazy hook,
``_register_connect``; this module never imports :mod:`streamlearn.cli`); every
kind sets ``func`` = :func:`cmd_connect`. :func:`main` runs one kind alone
(``python -m streamlearn.connectors csv data.csv --schema s.toml``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

from streamlearn.connectors.routing import NodeRouter, parse_node_map
from streamlearn.connectors.schema import load_schema
from streamlearn.errors import ConfigError, StreamlearnError
from streamlearn.logs import add_log_args, setup_logging
from streamlearn.metrics_cli import add_metrics_args, start_metrics  # the same --metrics-* flags as node, sync, produce

__all__ = ["KINDS", "add_connect_parser", "cmd_connect", "main", "router_from_args"]

KINDS = ("csv", "jsonl", "mqtt", "http", "river")
TOKEN_ENV = "STREAMLEARN_INGEST_TOKEN"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _common(p: argparse.ArgumentParser, schema_required: bool = True) -> None:
    p.add_argument("--schema", required=schema_required, metavar="FILE",
                   help="the stream's schema, TOML or JSON (features, label, classes, key, time)"
                        + ("" if schema_required else "; default: inferred from the first reading"))
    g = p.add_argument_group("node mapping (default: every reading to node 0)")
    g.add_argument("--node", type=_positive_int, help="every reading to this node")
    g.add_argument("--round-robin", type=_positive_int, metavar="M", help="readings to nodes 0..M-1 in turn")
    g.add_argument("--node-by", metavar="FIELD", help="the value of this field chooses the node")
    g.add_argument("--nodes", type=_positive_int, metavar="M",
                   help="with a value (--node-by, an MQTT {node} level, /ingest/<value>): integer mod M, "
                        "else a stable hash mod M")
    g.add_argument("--node-map", metavar="V=N,...", help="with a value: explicit value -> node map, e.g. a=0,b=1")
    g.add_argument("--first-seen", action="store_true",
                   help="with a value: one node per distinct value, numbered 0, 1, 2, ... in the order the values "
                        "first appear (a file replays the same way every time; with --nodes M: at most M values)")
    g.add_argument("--max-pending", type=_positive_int, default=100_000,
                   help="unlabelled readings with a key whose node is remembered for their late label")
    g = p.add_argument_group("kafka")
    g.add_argument("--bootstrap", metavar="HOST:PORT",
                   help="Kafka brokers (default KAFKA_BOOTSTRAP_SERVERS, else 127.0.0.1:9092, waited for: "
                        "start it with `streamlearn broker`)")
    g.add_argument("--prefix", help="topic prefix (default KAFKA_TOPIC_PREFIX, else streamlearn)")
    g = p.add_argument_group("run")
    g.add_argument("--max-seconds", type=float, help="stop after this many seconds")
    g.add_argument("--progress", type=float, default=10.0, metavar="SECONDS",
                   help="seconds between count lines on stderr (0: none)")
    g.add_argument("--json", action="store_true", help="print the final counts as JSON")
    add_metrics_args(p)


def _pacing(p: argparse.ArgumentParser, speedup: bool = True) -> None:
    g = p.add_argument_group("pacing (default: as fast as possible)")
    g.add_argument("--rate", type=float, help="readings per second, all nodes together")
    if speedup:
        g.add_argument("--speedup", type=float,
                       help="replay the schema's time field this many times faster than real time (1: real time)")
        g.add_argument("--max-gap", type=float, metavar="SECONDS", help="longest pause between two readings")
    g.add_argument("--limit", type=_positive_int, help="stop after this many records")


def add_connect_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``connect`` and its kinds to an argparse subparsers object; return the ``connect`` parser."""
    p = subparsers.add_parser(
        "connect", help="publish a real stream (CSV, JSON lines, MQTT, HTTP, a river dataset) into node topics",
        description="Publish readings into <prefix>.samples.<node>, checked against a schema; bad records go to "
                    "<prefix>.deadletter with the reason and are counted. See the README, section 'Plug in your own sensor stream'.")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")

    k = kinds.add_parser("csv", help="replay a CSV/TSV file (or - for stdin)")
    k.add_argument("path", help="CSV file (.gz ok), or - for stdin")
    k.add_argument("--delimiter", help="one character, or comma|tab|semicolon|pipe|auto (default: auto)")
    _pacing(k)
    _common(k)

    k = kinds.add_parser("jsonl", help="JSON lines from a file or stdin")
    k.add_argument("path", nargs="?", default="-", help="file (.gz ok); default - (stdin)")
    _pacing(k)
    _common(k)

    k = kinds.add_parser("mqtt", help="subscribe to an MQTT broker (JSON payloads)")
    k.add_argument("--host", default="127.0.0.1", help="MQTT broker host")
    k.add_argument("--port", type=int, default=1883, help="MQTT broker port")
    k.add_argument("--topic", action="append", default=[], metavar="FILTER",
                   help="subscription, e.g. 'sensors/{node}/reading' ({node}: that level chooses the node) "
                        "or 'plant/#' (repeatable)")
    k.add_argument("--topic-map", action="append", default=[], metavar="FILTER=NODE",
                   help="messages on FILTER go to NODE, e.g. 'plant/kitchen/#=0' (repeatable; subscribed too)")
    k.add_argument("--qos", type=int, default=1, choices=(0, 1, 2), help="subscription QoS")
    k.add_argument("--client-id", help="MQTT client id: a named connector keeps its session, so the broker queues "
                                        "QoS 1/2 readings while it is down (default: chosen by the broker, a clean "
                                        "session)")
    k.add_argument("--username", help="MQTT user name; the password is read from MQTT_PASSWORD")
    k.add_argument("--tls", action="store_true", help="connect with TLS")
    k.add_argument("--cafile", help="CA bundle for --tls (default: the system's)")
    k.add_argument("--max-messages", type=_positive_int, help="stop after this many messages")
    _common(k)

    k = kinds.add_parser("http", help="an HTTP endpoint: POST readings to /ingest or /ingest/<node>")
    k.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    k.add_argument("--port", type=int, default=8080, help="port (0: any free one)")
    k.add_argument("--token", help=f"bearer token requests must carry (default: {TOKEN_ENV}; none: no auth). "
                                   f"Prefer the variable: a flag shows in the process list")
    k.add_argument("--max-body", type=_positive_int, default=16 << 20, help="largest request body, bytes")
    k.add_argument("--read-timeout", type=_seconds, default=10.0, metavar="SECONDS",
                   help="longest wait for a client on a read or write: idle keep-alive connections are closed, "
                        "a body that stops arriving is answered 408")
    k.add_argument("--max-connections", type=_positive_int, default=64, metavar="N",
                   help="connections served at once (worker threads); more wait in the listen queue")
    _common(k)

    k = kinds.add_parser("river", help="a river dataset or generator by name (Phishing, Bananas, synth.SEA, ...)")
    k.add_argument("dataset", help="river.datasets class (Phishing, ...) or synth.NAME (synth.SEA, ...)")
    k.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset parameter, e.g. seed=1 (value read as JSON, else text; repeatable)")
    _pacing(k, speedup=False)
    _common(k, schema_required=False)

    for kind_parser in kinds.choices.values():
        kind_parser.set_defaults(func=cmd_connect)
    return p


def router_from_args(args) -> NodeRouter:
    """The :class:`NodeRouter` of the node-mapping flags (default: node 0)."""
    mapping = parse_node_map(args.node_map) if args.node_map else None
    if args.round_robin is not None and args.round_robin < 1:
        raise ConfigError("--round-robin: at least 1 node")
    if args.nodes is not None and args.nodes < 1:
        raise ConfigError("--nodes: at least 1 node")
    if args.node is None and args.round_robin is None and args.node_by is None and args.nodes is None \
            and mapping is None and not args.first_seen:
        return NodeRouter(node=0)
    return NodeRouter(node=args.node, round_robin=args.round_robin, field=args.node_by, nodes=args.nodes,
                      mapping=mapping, first_seen=args.first_seen)


def _params(items) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--param: KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def cmd_connect(args) -> int:
    """Run the connector ``args.kind``; print its counts. 0, or 1 when Kafka failed to take records."""
    from streamlearn.metrics import ConnectorMetrics

    router = router_from_args(args)
    schema = load_schema(args.schema) if args.schema else None
    metrics, server = start_metrics(args, lambda registry: ConnectorMetrics(registry, args.kind))
    kafka = dict(bootstrap=args.bootstrap, prefix=args.prefix, progress=args.progress, metrics=metrics)
    if schema is not None:
        features, classes = schema.layout()
        print(f"schema: features {','.join(features)}; classes "
              f"{'any' if classes is None else ','.join(map(str, classes))}; {router!r}", file=sys.stderr)
    stop = threading.Event()
    restore = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (docker stop) ends a connector like Ctrl-C: flush, print the counts.
        restore = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if args.kind == "csv":
            from streamlearn.connectors.csv_replay import parse_delimiter, run_csv

            stats = run_csv(args.path, schema, router, delimiter=parse_delimiter(args.delimiter), rate=args.rate,
                            speedup=args.speedup, max_gap=args.max_gap, limit=args.limit, stop_event=stop,
                            max_seconds=args.max_seconds, max_pending=args.max_pending, **kafka)
        elif args.kind == "jsonl":
            from streamlearn.connectors.jsonl import run_jsonl

            stats = run_jsonl(args.path, schema, router, rate=args.rate, speedup=args.speedup,
                              max_gap=args.max_gap, limit=args.limit, stop_event=stop,
                              max_seconds=args.max_seconds, max_pending=args.max_pending, **kafka)
        elif args.kind == "mqtt":
            from streamlearn.connectors.mqtt import parse_topic_map, run_mqtt

            stats = run_mqtt(schema, router, host=args.host, port=args.port, topics=args.topic,
                             topic_map=parse_topic_map(args.topic_map), qos=args.qos, client_id=args.client_id,
                             username=args.username, tls=args.tls, cafile=args.cafile, stop_event=stop,
                             max_seconds=args.max_seconds, max_messages=args.max_messages,
                             max_pending=args.max_pending, **kafka)
        elif args.kind == "http":
            from streamlearn.connectors.http_ingest import run_http

            token = args.token if args.token is not None else (os.environ.get(TOKEN_ENV) or None)
            stats = run_http(schema, router, host=args.host, port=args.port, token=token, max_body=args.max_body,
                             read_timeout=args.read_timeout, max_connections=args.max_connections,
                             stop_event=stop, max_seconds=args.max_seconds, max_pending=args.max_pending, **kafka)
        elif args.kind == "river":
            from streamlearn.connectors.river_source import run_river

            stats = run_river(args.dataset, router, params=_params(args.param), schema=schema, limit=args.limit,
                              rate=args.rate, stop_event=stop, max_seconds=args.max_seconds, **kafka)
        else:
            raise ConfigError(f"connect: kind must be one of {', '.join(KINDS)}, got {args.kind!r}")
    finally:
        if restore is not None:
            signal.signal(signal.SIGTERM, restore)
        if server is not None:
            server.stop()
    print(json.dumps(stats.to_dict()) if args.json else stats.summary(), flush=True)
    return 1 if stats.send_errors else 0


def main(kind: str, argv: list | None = None) -> int:
    """Run ``streamlearn connect <kind> <argv...>``; return the exit code (2 on a bad setting).

    Examples
    --------
    >>> main("csv", ["missing.csv", "--schema", "missing.toml"])
    2
    """
    parser = argparse.ArgumentParser(prog="streamlearn")
    add_connect_parser(parser.add_subparsers(dest="command", required=True))
    add_log_args(parser)
    args = parser.parse_args(["connect", kind, *(argv or [])])
    try:
        setup_logging(args.log_level, args.log_format)  # this entry's edge, as streamlearn.cli.main's
        return args.func(args)
    except StreamlearnError as exc:
        print(f"streamlearn connect {kind}: error: {exc}", file=sys.stderr)
        return 2
