"""Helpers for ``test_dashboards_prometheus.py``: the compose services as local processes, a Prometheus
config derived from the checked-in one, the PromQL of every dashboard, and Prometheus's HTTP API.

Nothing here starts a process on import; the test module owns every process it starts.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from servers import require

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
PROMETHEUS_FILE = ROOT / "prometheus" / "prometheus.yml"
DASHBOARDS = ROOT / "grafana" / "dashboards"
# Compose settings the test fixes (and must not inherit from the caller's environment).
COMPOSE_SETTINGS = ("NODES", "SOURCE", "RATE", "PROTOCOL", "LEARNER", "TORCH_INDEX_URL", "KAFKA_HOST_PORT")


def tool(name: str, package: str) -> str:
    """Path of an executable; missing: a failure in CI, else a skip naming the package (tests/servers.py)."""
    return require(package, name)


# ---- docker-compose ---------------------------------------------------------------------------------


def compose_services(**settings) -> dict:
    """The services of ``docker-compose.yml`` as ``docker-compose config`` resolves them (anchors merged,
    ``${VAR:-default}`` interpolated with ``settings``)."""
    env = {k: v for k, v in os.environ.items() if k not in COMPOSE_SETTINGS and not k.startswith("COMPOSE_")}
    r = subprocess.run([tool("docker-compose", "docker-compose"), "-f", str(COMPOSE_FILE), "config"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT, env={**env, **settings})
    assert r.returncode == 0, f"docker-compose config failed:\n{r.stderr}"
    return yaml.safe_load(r.stdout)["services"]


def option(argv: list[str], name: str) -> str | None:
    """Value of ``--name VALUE`` in ``argv`` (None when absent)."""
    return argv[argv.index(name) + 1] if name in argv else None


def with_option(argv: list[str], name: str, value: str) -> list[str]:
    """``argv`` with the value of ``--name`` replaced (the option must be there)."""
    assert name in argv, f"{name} missing from {argv}"
    out = list(argv)
    out[out.index(name) + 1] = value
    return out


def drifts_moved_early(argv: list[str], first: int) -> list[str]:
    """``argv`` with every ``--drift KIND@POS[:...]`` position scaled so the first drift is at ``first``
    (the compose schedule's drifts come after minutes; a test has seconds). Order and spacing ratio kept."""
    positions = [int(re.match(r"[^@]+@(\d+)", argv[i + 1]).group(1)) for i, a in enumerate(argv) if a == "--drift"]
    assert positions, f"no --drift in {argv}"
    scale = first / min(positions)
    out = list(argv)
    for i, a in enumerate(out):
        if a == "--drift":
            out[i + 1] = re.sub(r"@(\d+)", lambda m: f"@{max(1, round(int(m.group(1)) * scale))}", out[i + 1], count=1)
    return out


# ---- Prometheus config ------------------------------------------------------------------------------


def scraped_services(job: dict) -> list[tuple[str, int]]:
    """``(compose service, port)`` pairs a checked-in scrape job reaches (static targets and DNS names)."""
    found = []
    for sc in job.get("static_configs", []):
        for target in sc.get("targets", []):
            host, _, port = target.rpartition(":")
            found.append((host, int(port)))
    for sd in job.get("dns_sd_configs", []):
        for name in sd.get("names", []):
            found.append((name, int(sd["port"])))
    return found


def derived_prometheus_config(checked_in: dict, targets: dict[str, list[str]], interval: str = "1s") -> dict:
    """The checked-in config with only the targets rewritten and the intervals shortened.

    ``targets`` maps a compose service to the ``host:port`` addresses of its local processes. Jobs,
    metric paths, schemes and relabelling rules are kept as they are; each job's service discovery
    (``static_configs``, ``dns_sd_configs``) becomes ``static_configs`` of the processes of the
    services it named. ``rule_files`` are made absolute (they are relative to the checked-in file).
    """
    cfg = json.loads(json.dumps(checked_in))  # a deep copy
    cfg["rule_files"] = [str(PROMETHEUS_FILE.parent / f) for f in cfg.get("rule_files", [])]
    cfg["global"] = {**cfg.get("global", {}), "scrape_interval": interval, "scrape_timeout": interval,
                     "evaluation_interval": interval}
    for job in cfg["scrape_configs"]:
        services = [s for s, _ in scraped_services(job)]
        unknown = [s for s in services if s not in targets]
        assert not unknown, f"job {job['job_name']} scrapes {unknown}: not a streamlearn service"
        for key in ("static_configs", "dns_sd_configs"):
            job.pop(key, None)
        job["static_configs"] = [{"targets": [t for s in services for t in targets[s]]}]
        job.pop("scrape_interval", None)
        job.pop("scrape_timeout", None)
    return cfg


# ---- dashboards ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    dashboard: str  # file name
    where: str  # panel title / annotation name, and which target
    expr: str  # PromQL as written in the dashboard

    @property
    def id(self) -> str:
        return f"{self.dashboard}:{self.where}"


def _panels(panels):
    for p in panels or []:
        yield p
        yield from _panels(p.get("panels"))  # rows hold their panels when collapsed


def dashboard_queries(folder: Path = DASHBOARDS) -> list[Query]:
    """Every PromQL expression of every dashboard: panel targets and annotations (both the annotation's
    own ``expr`` and its ``target.expr``), in file order, without exact duplicates at one place."""
    out = []
    for path in sorted(folder.glob("*.json")):
        board = json.loads(path.read_text(encoding="utf-8"))
        seen = set()

        def add(where, expr):
            if isinstance(expr, str) and expr.strip() and (where, expr) not in seen:
                seen.add((where, expr))
                out.append(Query(path.name, where, expr))

        for panel in _panels(board.get("panels")):
            for t in panel.get("targets", []) or []:
                add(f"panel '{panel.get('title')}' target {t.get('refId', '?')}", t.get("expr"))
        for a in board.get("annotations", {}).get("list", []):
            add(f"annotation '{a.get('name')}'", a.get("expr"))
            add(f"annotation '{a.get('name')}'", (a.get("target") or {}).get("expr"))
    return out


def dashboard_variables(folder: Path = DASHBOARDS) -> dict[str, str]:
    """Current values of the dashboards' template variables (name -> value; may be empty)."""
    out = {}
    for path in sorted(folder.glob("*.json")):
        board = json.loads(path.read_text(encoding="utf-8"))
        for v in board.get("templating", {}).get("list", []):
            cur = (v.get("current") or {}).get("value")
            out[v["name"]] = cur[0] if isinstance(cur, list) and cur else (cur if isinstance(cur, str) else "")
    return out


# Grafana's built-in interval variables at a 1 s scrape interval ($__rate_interval >= 4 scrapes).
BUILTINS = {"__rate_interval": "20s", "__interval": "5s", "__interval_ms": "5000", "__range": "1m",
            "__range_s": "60", "__range_ms": "60000", "__auto": "5s"}
_VAR_RE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]|\$(\w+)")


def substitute(expr: str, values: dict[str, str]) -> str:
    """``expr`` with Grafana variables (``$x``, ``${x}``, ``${x:fmt}``, ``[[x]]``) replaced from ``values``
    (built-ins first). An unknown variable is an assertion error.

    >>> substitute('rate(x{node="$node"}[$__rate_interval])', {"node": "1"})
    'rate(x{node="1"}[20s])'
    """
    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        value = BUILTINS.get(name, values.get(name))
        assert value is not None, f"no value for Grafana variable ${name} in {expr!r}"
        return value

    return _VAR_RE.sub(repl, expr)


# ---- Prometheus HTTP API --------------------------------------------------------------------------------


@dataclass
class PromAPI:
    url: str  # http://127.0.0.1:PORT

    def get(self, path: str, **params) -> dict:
        q = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{q}", timeout=10) as r:
            body = json.loads(r.read().decode())
        assert body.get("status") == "success", body
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[tuple[dict, float]]:
        """``[(labels, value), ...]`` of an instant query (a scalar gives one unlabelled sample)."""
        params = {"query": expr} | ({} if at is None else {"time": f"{at:.3f}"})
        data = self.get("/api/v1/query", **params)
        if data["resultType"] in ("scalar", "string"):
            return [({}, float(data["result"][1]))]
        if data["resultType"] == "matrix":
            return [(s["metric"], float(v)) for s in data["result"] for _, v in s["values"]]
        return [(s["metric"], float(s["value"][1])) for s in data["result"]]

    def query_range(self, expr: str, start: float, end: float, step: str = "1s") -> list[tuple[dict, list[float]]]:
        data = self.get("/api/v1/query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=step)
        return [(s["metric"], [float(v) for _, v in s["values"]]) for s in data["result"]]

    def label_values(self, label: str) -> list[str]:
        return self.get(f"/api/v1/label/{label}/values")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False


def finite(samples) -> list[tuple[dict, float]]:
    return [(labels, v) for labels, v in samples if not math.isnan(v)]


# ---- processes --------------------------------------------------------------------------------------


@dataclass
class Procs:
    """Processes started by the test, each with its output in a log file; :meth:`stop_all` ends them."""

    folder: Path
    procs: dict = field(default_factory=dict)  # name -> (Popen, log path)

    def start(self, name: str, argv: list[str], env: dict) -> subprocess.Popen:
        log = self.folder / f"{name}.log"
        fh = open(log, "wb")
        try:
            p = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=self.folder,
                                 start_new_session=True)
        finally:
            fh.close()
        self.procs[name] = (p, log)
        return p

    def dead(self) -> dict[str, int]:
        """Processes that exited: name -> return code."""
        return {n: p.poll() for n, (p, _) in self.procs.items() if p.poll() is not None}

    def tail(self, name: str, lines: int = 25) -> str:
        text = self.procs[name][1].read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def tails(self, lines: int = 15) -> str:
        return "\n".join(f"--- {n} (rc={p.poll()}) ---\n{self.tail(n, lines)}" for n, (p, _) in self.procs.items())

    def stop_all(self, timeout: float = 5.0) -> None:
        """SIGTERM every process (by its own pid), then SIGKILL what is still running after ``timeout``."""
        for p, _ in self.procs.values():
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + timeout
        for p, _ in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
