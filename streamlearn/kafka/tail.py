"""``streamlearn tail predictions``: the nodes' predictions, live, one line each.

Follows ``<prefix>.predictions`` (:mod:`streamlearn.kafka.predictions`) from now on (or from its
start with ``--from-beginning``), optionally for some nodes only, until Ctrl-C, ``--max N``
predictions or ``--max-seconds S``. Lines are for people by default::

    node 0  seq 1042  key nsw  ts 2023-11-14T22:13:20Z  -> UP (p 0.75)  step 104  syncs 3  epoch 5f0c2a9e13d4

and with ``--json`` one JSON object per line (the prediction's fields plus ``node`` and ``classes``),
for scripts. Exit status: 0; 1 when ``--max N`` was given and fewer than N came within ``--max-seconds``.

Examples
--------
>>> line({"node": 0, "classes": ["DOWN", "UP"], "seq": 7, "key": "nsw", "ts": 0.0, "prediction": "UP",
...       "proba": [0.25, 0.75], "epoch": None, "syncs": 0, "step": 3, "late": True})
'node 0  seq 7  key nsw  ts 1970-01-01T00:00:00Z  -> UP (p 0.75)  step 3  syncs 0  late'
>>> line({"node": 1, "classes": None, "seq": 8, "prediction": 12.5, "proba": None, "syncs": 0, "step": 0})
'node 1  seq 8  -> 12.5  step 0  syncs 0'
"""

from __future__ import annotations

import json
import sys
import time

from streamlearn.errors import ConfigError

__all__ = ["add_tail_parser", "cmd_tail", "line", "parse_nodes"]


def parse_nodes(text: str | None) -> list | None:
    """``--node``: comma-separated node ids (None: every node).

    >>> parse_nodes("0,3"), parse_nodes(None)
    ([0, 3], None)
    """
    if text is None:
        return None
    try:
        nodes = [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"--node: comma-separated node ids (integers >= 0), got {text!r}") from None
    if not nodes or any(n < 0 for n in nodes):
        raise ConfigError(f"--node: comma-separated node ids (integers >= 0), got {text!r}")
    return nodes


def line(p: dict) -> str:
    """One prediction as a line for people."""
    parts = [f"node {p['node']}", f"seq {p['seq']}"]
    if p.get("key") is not None:
        parts.append(f"key {p['key']}")
    if p.get("ts") is not None:
        parts.append("ts " + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(p["ts"])))
    pred, proba, classes = p.get("prediction"), p.get("proba"), p.get("classes")
    if pred is None:
        parts.append("-> (no prediction yet)")
    elif proba is not None and classes and pred in classes:
        parts.append(f"-> {pred} (p {proba[classes.index(pred)]:.2f})")
    else:
        parts.append(f"-> {pred}")
    parts += [f"step {p['step']}", f"syncs {p['syncs']}"]
    if p.get("epoch") is not None:
        parts.append(f"epoch {p['epoch']}")
    if p.get("late"):
        parts.append("late")
    return "  ".join(parts)


def cmd_tail(args) -> int:
    from streamlearn.kafka.config import KafkaSettings, validate_topic_prefix
    from streamlearn.kafka.control import _resolve_bootstrap
    from streamlearn.kafka.predictions import PredictionReader
    from streamlearn.kafka.topics import ensure_topics

    if args.max is not None and args.max < 1:
        raise ConfigError(f"--max must be an integer >= 1, got {args.max!r}")
    if args.max_seconds is not None and not args.max_seconds > 0:
        raise ConfigError(f"--max-seconds must be a number > 0, got {args.max_seconds!r}")
    nodes = parse_nodes(args.node)
    settings = KafkaSettings.from_env()
    prefix = validate_topic_prefix(args.prefix, "--prefix") if args.prefix is not None else settings.topic_prefix
    bootstrap = _resolve_bootstrap(args.bootstrap, settings)
    # Tansu creates a topic a client asks about with 4 partitions: create the pipeline's topics first
    ensure_topics(bootstrap, prefix, [], settings=settings)
    given = 0
    try:
        with PredictionReader(bootstrap, prefix, settings, from_beginning=args.from_beginning, nodes=nodes) as reader:
            for p in reader.follow(args.max, args.max_seconds):
                text = json.dumps(p, separators=(",", ":"), ensure_ascii=False) if args.json else line(p)
                print(text, flush=True)
                given += 1
    except KeyboardInterrupt:  # Ctrl-C is how a person ends a tail
        return 0
    except BrokenPipeError:  # `streamlearn tail predictions | head`
        return 0
    if args.max is not None and given < args.max:
        print(f"streamlearn tail: {given} of {args.max} predictions within {args.max_seconds:g} s on {bootstrap} "
              f"(topic {prefix}.predictions): are nodes running with this --prefix?", file=sys.stderr)
        return 1
    return 0


def add_tail_parser(sub) -> None:
    """Add ``streamlearn tail`` to the CLI's subcommands."""
    p = sub.add_parser(
        "tail", help="show the nodes' predictions live (<prefix>.predictions)",
        description="Show the test-then-train predictions the nodes publish on <prefix>.predictions, as they come "
                    "(format: docs/schemas.md, 'Prediction record'). `streamlearn tail predictions` and "
                    "`streamlearn tail --predictions` are the same.")
    p.add_argument("what", nargs="?", default="predictions", choices=("predictions",),
                   help="what to show (default and only choice: predictions)")
    p.add_argument("--predictions", action="store_true", help="the same as the positional `predictions`")
    p.add_argument("--node", metavar="IDS", help="only these nodes, comma-separated (default: every node)")
    p.add_argument("--from-beginning", action="store_true",
                   help="start at the oldest prediction the topic keeps (default: only new ones)")
    p.add_argument("--max", type=int, metavar="N", help="stop after N predictions (exit 1 if fewer came)")
    p.add_argument("--max-seconds", type=float, metavar="S", help="stop after S seconds (default: until Ctrl-C)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per line (the prediction with node and classes)")
    p.add_argument("--bootstrap", metavar="HOST:PORT",
                   help="Kafka cluster of the pipeline (default: KAFKA_BOOTSTRAP_SERVERS, else 127.0.0.1:9092)")
    p.add_argument("--prefix", help="topic prefix of the pipeline (default: KAFKA_TOPIC_PREFIX, else streamlearn); "
                                    "`streamlearn demo` prints its own")
    p.set_defaults(func=cmd_tail)
