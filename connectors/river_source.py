"""``streamlearn connect river``: publish any river dataset or synthetic generator into node topics.

``name`` is a class of ``river.datasets`` (``Phishing``, ``Bananas``, ...) or
of ``river.datasets.synth`` (``SEA``, ``Agrawal``, ... also as
``synth.SEA``), built with ``params`` (``seed=1``, ...). Without a schema
file one is inferred from the first reading: every feature a float, the label
``y`` with classes [False, True] (boolean labels) or 0..n_classes-1 (integer
labels of a classifier), a float target for regression, else open. Datasets
that river downloads (``Elec2``, ``Higgs``, ...) are fetched on first use;
the bundled ones (``Phishing``, ``Bananas``, ``TrumpApproval``, ...) and the
generators need no network. Generators are endless: give ``limit``.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time

from streamlearn.connectors.ingest import Ingestor
from streamlearn.connectors.pacing import Pacer
from streamlearn.connectors.publish import ConnectStats, Publisher
from streamlearn.connectors.routing import NodeRouter
from streamlearn.connectors.schema import StreamSchema
from streamlearn.errors import ConfigError

__all__ = ["load_river_dataset", "infer_river_schema", "run_river"]

log = logging.getLogger(__name__)


def load_river_dataset(name: str, params: dict | None = None):
    """Build ``river.datasets.<name>`` or ``river.datasets.synth.<name>`` with ``params``; ConfigError if unknown.

    Examples
    --------
    >>> type(load_river_dataset("synth.SEA", {"seed": 1})).__name__
    'SEA'
    """
    from river import datasets
    from river.datasets import synth

    if not isinstance(name, str) or not name:
        raise ConfigError(f"a river dataset name, e.g. Phishing or synth.SEA; got {name!r}")
    short = name.split(".")[-1]
    places = [synth] if name.startswith("synth.") else [datasets, synth]
    cls = next((getattr(m, short) for m in places if isinstance(getattr(m, short, None), type)), None)
    if cls is None:
        known = sorted(n for n in dir(datasets) if n[:1].isupper()) + \
            sorted(f"synth.{n}" for n in dir(synth) if n[:1].isupper())
        raise ConfigError(f"no river dataset {name!r}; known: {', '.join(known)}")
    try:
        return cls(**(params or {}))
    except TypeError as exc:
        raise ConfigError(f"river dataset {name}: {exc}") from None


def _plain(value):
    # numpy scalars -> Python numbers, so the schema sees ints and floats
    return value.item() if hasattr(value, "item") and not isinstance(value, (str, bytes)) else value


def infer_river_schema(dataset, x: dict, y, label: str = "y") -> StreamSchema:
    """The schema of a river dataset from its first reading (see the module doc).

    Examples
    --------
    >>> ds = load_river_dataset("Phishing")
    >>> x, y = next(iter(ds))
    >>> infer_river_schema(ds, x, y).classes
    (False, True)
    """
    task = str(getattr(dataset, "task", "")).lower()
    y = _plain(y)
    if "regression" in task:
        return StreamSchema.infer(x, label=label, target=True)
    classes = None
    if isinstance(y, bool):
        classes = [False, True]
    elif isinstance(y, int) and isinstance(getattr(dataset, "n_classes", None), int):
        classes = list(range(dataset.n_classes))
    elif isinstance(y, int) and "binary" in task:
        classes = [0, 1]
    return StreamSchema.infer(x, label=label, classes=classes)


def run_river(name: str, router: NodeRouter, *, params: dict | None = None, schema: StreamSchema | None = None,
              limit: int | None = None, rate: float | None = None, bootstrap: str | None = None,
              prefix: str | None = None, settings=None, progress: float = 0.0,
              stop_event: threading.Event | None = None, max_seconds: float | None = None,
              metrics=None) -> ConnectStats:
    """Publish the readings of a river dataset into node topics; return the counts.

    ``schema`` None: inferred (:func:`infer_river_schema`, label field ``y``),
    and printed on stderr; a given schema's label field receives river's ``y``.
    Other parameters as for :func:`streamlearn.connectors.csv_replay.run_csv`.
    """
    dataset = load_river_dataset(name, params)
    stop_event = stop_event or threading.Event()
    pacer = Pacer(rate, stop_event=stop_event)
    it = iter(dataset)
    if limit is not None:
        it = itertools.islice(it, limit)
    first = next(it, None)
    if first is None:
        raise ConfigError(f"river dataset {name} is empty")
    if schema is None:
        schema = infer_river_schema(dataset, first[0], first[1])
        feats, classes = schema.layout()
        log.info("inferred schema: features %s, classes %s", feats, classes)
    publisher = Publisher("river", bootstrap=bootstrap, prefix=prefix, settings=settings,
                          nodes=router.known_nodes(), progress=progress, metrics=metrics)
    ingest = Ingestor(schema, router, publisher, pacer=pacer)
    source = f"river:{name}"
    t0, reason = time.monotonic(), "done"
    try:
        for i, (x, y) in enumerate(itertools.chain([first], it), start=1):
            if stop_event.is_set():
                reason = "stop"
                break
            if max_seconds is not None and time.monotonic() - t0 >= max_seconds:
                reason = "max_seconds"
                break
            obj = {str(k): _plain(v) for k, v in x.items()}
            obj[schema.label] = _plain(y)
            ingest.record(obj, obj, source=source, offset=i)
            publisher.tick()
        else:
            reason = "limit" if limit is not None else "done"
    except KeyboardInterrupt:
        reason = "interrupted"
    finally:
        stats = publisher.close(reason)
    return stats
