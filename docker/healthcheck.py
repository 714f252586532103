"""HEALTHCHECK of the streamlearn image: healthy while the metrics endpoint of the container's command answers.

The command is PID 1's (the image's ENTRYPOINT is ``streamlearn``; with ``docker run --init`` it is
PID 1's arguments all the same). With ``--metrics-port P`` (P > 0) the check asks
``http://127.0.0.1:P/metrics`` (or the ``--metrics-host`` address, unless that is a wildcard); a
command without a metrics endpoint (``--help``, ``simulate``) counts as healthy while it runs.
"""

from __future__ import annotations

import sys
import urllib.request


def _option(argv: list[str], name: str) -> str | None:
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def metrics_url(argv: list[str]) -> str | None:
    """The metrics URL of a ``streamlearn`` command line (None: it serves none).

    >>> metrics_url(["streamlearn", "node", "--metrics-port", "9100", "--metrics-host", "0.0.0.0"])
    'http://127.0.0.1:9100/metrics'
    >>> metrics_url(["streamlearn", "sync", "--metrics-port=9200", "--metrics-host", "10.0.0.7"])
    'http://10.0.0.7:9200/metrics'
    >>> metrics_url(["streamlearn", "simulate"]) is None
    True
    """
    port = _option(argv, "--metrics-port")
    if port is None or not port.isdigit() or int(port) == 0:
        return None
    host = _option(argv, "--metrics-host") or "127.0.0.1"
    if host in ("0.0.0.0", "::", "[::]", ""):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}/metrics"


def main(cmdline: str = "/proc/1/cmdline", timeout: float = 5.0) -> int:
    with open(cmdline, "rb") as fh:
        argv = fh.read().decode(errors="replace").split("\0")
    url = metrics_url(argv)
    if url is None:
        return 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            r.read(1)
    except OSError as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))
