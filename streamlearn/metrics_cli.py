"""The ``--metrics-port``/``--metrics-host`` flags and the Prometheus endpoint they start.

Shared by every command that serves metrics: ``streamlearn node``, ``sync``, ``produce``
(:mod:`streamlearn.cli`) and ``streamlearn connect`` (:mod:`streamlearn.connectors.cli`), so both command
lines import it and neither imports the other. ``prometheus_client`` is loaded only when a port
is given.

Examples
--------
>>> import argparse
>>> p = argparse.ArgumentParser()
>>> add_metrics_args(p)
>>> args = p.parse_args([])
>>> args.metrics_port, args.metrics_host
(None, '127.0.0.1')
>>> start_metrics(args, lambda registry: "unused")
(None, None)
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_metrics_args", "start_metrics"]


def add_metrics_args(p: argparse.ArgumentParser) -> None:
    """Add ``--metrics-port`` (default: none) and ``--metrics-host`` (default 127.0.0.1) to ``p``."""
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (default: none)")
    p.add_argument("--metrics-host", default="127.0.0.1", help="address of the metrics endpoint (0.0.0.0 exposes it)")


def start_metrics(args, make):
    """(metrics object, server) when --metrics-port is given, else (None, None).

    ``make(registry)`` builds the command's metrics object on a fresh registry; the server's
    address is printed on stderr.
    """
    if args.metrics_port is None:
        return None, None
    from streamlearn.metrics import new_registry, serve_metrics

    registry = new_registry()
    metrics = make(registry)
    server = serve_metrics(registry, args.metrics_port, args.metrics_host)
    print(f"metrics: {server.url}", file=sys.stderr, flush=True)
    return metrics, server
