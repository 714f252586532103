"""Every Grafana dashboard query against a real Prometheus scraping the real pipeline (issue 5).

The streamlearn services of ``docker-compose.yml`` run as local processes with the commands and
environment ``docker-compose config`` gives them, against a real Tansu broker; only the broker
address, the metrics ports (free loopback ports), the node ids (when ``--id auto`` is not
available) and the drift positions (moved early, so drifts happen within seconds) differ. A real
Prometheus scrapes them with the checked-in ``prometheus/prometheus.yml``, only its targets
rewritten and its interval shortened to 1 s. Then every PromQL expression of every dashboard
(panel targets and annotations) must return data through the HTTP API, the drift annotations
must fire, and every ``/metrics`` endpoint must pass ``promtool check metrics``.

Needs ``prometheus``/``promtool`` (Debian package prometheus) and ``docker-compose``: the tests
fail, never skip, without them. About 30 s for the module (READY_TIMEOUT bounds it).
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from promhelpers import (PROMETHEUS_FILE, PromAPI, Procs, Query, compose_services, dashboard_queries,
                         dashboard_variables, derived_prometheus_config, drifts_moved_early, finite, option,
                         scraped_services, substitute, tool, with_option)
from streamlearn.errors import ConfigError
from streamlearn.kafka.broker import EmbeddedBroker, free_port

NODES = 2
FIRST_DRIFT = 2500  # samples per node: ~5 s of producing at the compose rate (500/s)
READY_TIMEOUT = 150.0  # seconds at most for the whole stack to be scraped, synced, drifted and detected (a bound, not a wait: 20 s when idle; one CI run here needed more than 75)
APP_COMMANDS = ("produce", "node", "sync")  # the streamlearn services of the compose file
QUERIES = dashboard_queries()
ANNOTATIONS = [q for q in QUERIES if q.where.startswith("annotation")]


def auto_ids() -> bool:
    """True when the node service assigns its id itself (``--id auto``)."""
    from streamlearn.kafka.node import node_config_from_options

    try:
        node_config_from_options({"id": "auto", "source": "sea"})
    except ConfigError:
        return False
    return True


@dataclass
class Stack:
    prom: PromAPI
    procs: Procs
    endpoints: dict  # process name -> metrics URL
    jobs: set  # job names of the checked-in config
    t_start: float
    t_eval: float  # every query is evaluated at this instant
    variables: dict  # Grafana variable values


def _app_services(services: dict, commands=APP_COMMANDS, profiles: bool = False) -> dict:
    """The streamlearn services running ``commands``; those of a compose profile only with ``profiles``
    (``docker compose up`` leaves them out; docker-compose 1.x's ``config`` lists them all the same)."""
    return {name: s for name, s in services.items()
            if s.get("command") and s["command"][0] in commands and (profiles or not s.get("profiles"))}


def _default_jobs(checked_in: dict, services: dict) -> dict:
    """The checked-in config without the jobs of profile services (their DNS names do not resolve then)."""
    jobs = [j for j in checked_in["scrape_configs"] if all(s in services for s, _ in scraped_services(j))]
    return {**checked_in, "scrape_configs": jobs}


def _argv(service: dict, port: int, node_id: int | None) -> list[str]:
    args = [str(a) for a in service["command"]]
    args = with_option(with_option(args, "--metrics-port", str(port)), "--metrics-host", "127.0.0.1")
    if args[0] == "node" and option(args, "--id") == "auto" and node_id is not None:
        args = with_option(args, "--id", str(node_id))
    if args[0] == "produce":
        args = drifts_moved_early(args, FIRST_DRIFT)
    return [str(Path(sys.executable).with_name("streamlearn"))] + args


def _env(service: dict, bootstrap: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
    for k, v in (service.get("environment") or {}).items():
        env[k] = re.sub(r"\bkafka:9092\b", bootstrap, str(v))
    assert env.get("KAFKA_BOOTSTRAP_SERVERS") == bootstrap, service.get("environment")
    env["PYTHONUNBUFFERED"] = "1"  # as in the Dockerfile: logs reach the log files at once
    return env


def _wait_ready(prom: PromAPI, procs: Procs, n_targets: int) -> None:
    """Until every target is up, every node has synced (and waited for a sync), and a drift was injected and
    detected; fails at once when a process dies."""
    checks = {
        "every target up": ("count(up == 1)", lambda v: v >= n_targets),
        "every node synced": ("count(streamlearn_node_syncs_total > 0)", lambda v: v >= NODES),
        "a drift injected": ("sum(streamlearn_producer_drift_events_total)", lambda v: v > 0),
        "sync waits observed": ("sum(streamlearn_node_sync_wait_seconds_count)", lambda v: v > 0),
    }
    # Every annotation has fired since the start: a counter seen > 0 is not enough, as a detection made before
    # Prometheus's first scrape of a node never shows as a change.
    for q in ANNOTATIONS:
        checks[f"{q.id} fired"] = (f"max(max_over_time(({q.expr})[{int(READY_TIMEOUT) + 30}s:1s]))", lambda v: v > 0)
    deadline = time.monotonic() + READY_TIMEOUT
    pending = dict(checks)
    while pending and time.monotonic() < deadline:
        dead = procs.dead()
        assert not dead, f"processes exited early: {dead}\n{procs.tails()}"
        for name, (expr, ok) in list(pending.items()):
            got = finite(prom.query(expr)) if prom.ready() else []
            if got and ok(got[0][1]):
                del pending[name]
        time.sleep(1.0)
    assert not pending, (f"not reached within {READY_TIMEOUT:.0f} s: {sorted(pending)}; "
                         f"up: {prom.query('up')}\n{procs.tails()}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    prometheus = tool("prometheus", "prometheus")
    folder = tmp_path_factory.mktemp("promstack")
    services = _app_services(compose_services(NODES=str(NODES)))
    assert {s["command"][0] for s in services.values()} == set(APP_COMMANDS), sorted(services)
    checked_in = _default_jobs(yaml.safe_load(PROMETHEUS_FILE.read_text()), services)
    ids = None if auto_ids() else iter(range(NODES))

    with EmbeddedBroker() as broker:
        procs = Procs(folder)
        try:
            # Ports first, so Prometheus scrapes from the start and sees every drift counter at 0 before its
            # first increase (changes() in the annotations needs that).
            plan, targets, endpoints = [], {}, {}
            for name, service in services.items():
                replicas = int((service.get("deploy") or {}).get("replicas", 1))
                for r in range(replicas):
                    port = free_port()
                    pname = name if replicas == 1 else f"{name}-{r + 1}"
                    node_id = next(ids) if ids is not None and service["command"][0] == "node" else None
                    plan.append((pname, _argv(service, port, node_id), _env(service, broker.bootstrap)))
                    targets.setdefault(name, []).append(f"127.0.0.1:{port}")
                    endpoints[pname] = f"http://127.0.0.1:{port}/metrics"
            assert len(targets.get("node", [])) == NODES, targets

            cfg_path = folder / "prometheus.yml"
            cfg_path.write_text(yaml.safe_dump(derived_prometheus_config(checked_in, targets)))
            prom_port = free_port()
            procs.start("prometheus", [prometheus, f"--config.file={cfg_path}", f"--storage.tsdb.path={folder / 'tsdb'}",
                                       f"--web.listen-address=127.0.0.1:{prom_port}"], env={"PATH": "/usr/bin:/bin"})
            prom = PromAPI(f"http://127.0.0.1:{prom_port}")
            deadline = time.monotonic() + 20
            while not prom.ready():
                assert time.monotonic() < deadline and not procs.dead(), f"Prometheus not ready\n{procs.tails()}"
                time.sleep(0.1)
            t_start = time.time()
            # Compose starts the services together once Kafka is healthy.
            for pname, argv, env in plan:
                procs.start(pname, argv, env)
            _wait_ready(prom, procs, len(endpoints))
            time.sleep(3.0)  # a few more scrapes, so every rate() window holds several points after the syncs
            variables = dashboard_variables()
            for name in variables:  # a template variable over a label: one of its live values
                live = prom.label_values(name)
                if live:
                    variables[name] = live[0]
            yield Stack(prom, procs, endpoints, {j["job_name"] for j in checked_in["scrape_configs"]},
                        t_start, time.time(), variables)
        finally:
            procs.stop_all()


def test_every_target_is_up_under_its_checked_in_job(stack):
    up = stack.prom.query("up", at=stack.t_eval)
    assert {labels["job"] for labels, _ in up} == stack.jobs
    assert len(up) == len(stack.endpoints) and all(v == 1 for _, v in up), up


def _metric_names(expr: str) -> list[str]:
    return sorted(set(re.findall(r"\b(streamlearn_\w+|process_\w+|python_\w+|up)\b(?!\s*\()", expr)))


@pytest.mark.parametrize("q", QUERIES, ids=[q.id for q in QUERIES])
def test_dashboard_query_returns_data(stack, q: Query):
    expr = substitute(q.expr, stack.variables)
    got = stack.prom.query(expr, at=stack.t_eval)
    if not finite(got):
        missing = [m for m in _metric_names(expr)
                   if not stack.prom.query(f"count({{__name__=\"{m}\"}})", at=stack.t_eval)]
        pytest.fail(f"{q.id}: {expr!r} returned {'only NaN' if got else 'nothing'}; "
                    f"metrics with no series: {missing or 'none'}")


def _aligned_start(stack) -> float:
    """A range start whole seconds before ``t_eval``, so the range's last step is ``t_eval`` itself: a drift
    first scraped in the last second before it is in the range as it is in an instant query at ``t_eval``."""
    return stack.t_eval - math.ceil(stack.t_eval - stack.t_start)


@pytest.mark.parametrize("q", ANNOTATIONS, ids=[q.id for q in ANNOTATIONS])
def test_drift_annotation_fires(stack, q: Query):
    """An annotation query marks a moment when it is non-zero: each must have fired during the run."""
    series = stack.prom.query_range(substitute(q.expr, stack.variables), _aligned_start(stack), stack.t_eval)
    fired = [labels for labels, values in series if any(v > 0 for v in values)]
    assert fired, f"{q.id}: {q.expr!r} never non-zero over the run ({len(series)} series)"


def test_every_injected_drift_is_annotated(stack):
    """Each (node, kind) whose drift counter rose during the run is marked by the drift-injected annotation."""
    counter = "streamlearn_producer_drift_events_total"
    [q] = [q for q in ANNOTATIONS if counter in q.expr] or [None]
    assert q is not None, f"no annotation over {counter}"
    injected = {(lb["node"], lb["kind"]) for lb, v in stack.prom.query(f"{counter} > 0", at=stack.t_eval)}
    assert injected, "no drift injected during the run"
    series = stack.prom.query_range(substitute(q.expr, stack.variables), _aligned_start(stack), stack.t_eval)
    marked = {(lb["node"], lb["kind"]) for lb, values in series if any(v > 0 for v in values)}
    assert injected <= marked, f"drifts without annotation: {sorted(injected - marked)}"


def test_promtool_check_metrics_on_every_endpoint(stack):
    promtool = tool("promtool", "prometheus")
    problems = {}
    for name, url in stack.endpoints.items():
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read()
        res = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)
        if res.returncode != 0 or res.stdout.strip() or res.stderr.strip():
            problems[name] = (res.returncode, (res.stdout + res.stderr).decode(errors="replace").strip())
    assert not problems, problems


def test_checked_in_config_scrapes_every_service_on_its_metrics_port():
    # every streamlearn service, the example connectors of the profile "connectors" included
    services = _app_services(compose_services(NODES=str(NODES), COMPOSE_PROFILES="connectors"),
                             APP_COMMANDS + ("connect",), profiles=True)
    assert any(s["command"][0] == "connect" for s in services.values()), sorted(services)
    checked_in = yaml.safe_load(PROMETHEUS_FILE.read_text())
    scraped = {}
    for job in checked_in["scrape_configs"]:
        for service, port in scraped_services(job):
            scraped.setdefault(service, []).append((job["job_name"], port))
    assert set(scraped) == set(services), "every streamlearn service scraped, nothing else"
    for name, service in services.items():
        args = [str(a) for a in service["command"]]
        port = int(option(args, "--metrics-port"))
        assert [p for _, p in scraped[name]] == [port], (name, scraped[name], port)
        assert option(args, "--metrics-host") == "0.0.0.0", f"{name}: Prometheus reaches it from another container"
        assert str(port) in [str(e).split("/")[0] for e in service.get("expose", [])], (name, service.get("expose"))
