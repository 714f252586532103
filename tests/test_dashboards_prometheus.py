"""Every Grafana dashboard query against a real Prometheus scraping the real pipeline (issue 5).

The streamlearn services of ``docker-compose.yml`` run as local processes with the commands and
environment ``docker-compose config`` gives them, against a real Tansu broker; only the broker
address, the metrics ports (free loopback ports), the node ids (when ``--id auto`` is not
available) and the drift positions (moved early, so drifts happen within seconds) differ. A real
Prometheus scrapes them with the checked-in ``prometheus/prometheus.yml``, only its targets
rewritten and its interval shortened to 1 s. Then every PromQL expression of every dashboard
(panel targets and annotations) must return data through the HTTP API, with the template variables
at one live value and at "All", the drift annotations must fire, every ``/metrics`` endpoint must pass
``promtool check metrics``, every alert rule of prometheus/alerts.yml must evaluate without error and
none fire, and each service's compose healthcheck must pass. The nodes' ``--checkpoint-dir`` and the
sync service's ``--state-dir`` (compose volumes) become folders of the test, one per service as one
volume per service in compose.

Needs ``prometheus``/``promtool`` (Debian package prometheus) and ``docker-compose``: the tests
fail, never skip, without them. About 30 s for the module (READY_TIMEOUT bounds it).
"""

from __future__ import annotations

import json
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
from promhelpers import (
    PROMETHEUS_FILE,
    Procs,
    PromAPI,
    Query,
    compose_services,
    dashboard_queries,
    dashboard_variables,
    derived_prometheus_config,
    drifts_moved_early,
    finite,
    option,
    scraped_services,
    substitute,
    tool,
    with_option,
)

from streamlearn.errors import ConfigError
from streamlearn.kafka.broker import EmbeddedBroker, free_port

NODES = 2
FIRST_DRIFT = 2500  # samples per node: ~5 s of producing at the compose rate (500/s)
READY_TIMEOUT = 150.0  # seconds at most for the whole stack to be scraped, synced, drifted and detected (a bound, not a wait: 20 s when idle; one CI run here needed more than 75)
APP_COMMANDS = ("produce", "node", "sync")  # the streamlearn services of the compose file
QUERIES = dashboard_queries()
ANNOTATIONS = [q for q in QUERIES if q.where.startswith("annotation")]
# Every template variable at "All" (its allValue), as Grafana opens the dashboards.
ALL = {"pipeline": ".*", "node": ".*", "datasource": ""}
# Series that exist only with an option the compose services do not use (--sync-key-file).
OPTIONAL_METRICS = ("streamlearn_sync_unauthenticated_total", "streamlearn_node_sync_unauthenticated_total")


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
    healthchecks: dict  # process name -> argv of its compose healthcheck, aimed at its metrics port
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


def _argv(service: dict, port: int, node_id: int | None, folder: Path) -> list[str]:
    args = [str(a) for a in service["command"]]
    args = with_option(with_option(args, "--metrics-port", str(port)), "--metrics-host", "127.0.0.1")
    for flag in ("--checkpoint-dir", "--state-dir"):  # the compose volumes: folders of this test
        if flag in args:
            args = with_option(args, flag, str(folder / flag.strip("-")))
    if args[0] == "node" and option(args, "--id") == "auto" and node_id is not None:
        args = with_option(args, "--id", str(node_id))
    if args[0] == "produce":
        args = drifts_moved_early(args, FIRST_DRIFT)
    return [str(Path(sys.executable).with_name("streamlearn"))] + args


def _healthcheck(service: dict, port: int) -> list[str]:
    """The service's compose healthcheck as a local command, aimed at ``port`` instead of the compose one."""
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "python", test
    compose_port = option([str(a) for a in service["command"]], "--metrics-port")
    return [sys.executable] + [a.replace(f":{compose_port}/", f":{port}/") for a in test[2:]]


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
        expr = substitute(q.expr, ALL)
        checks[f"{q.id} fired"] = (f"max(max_over_time(({expr})[{int(READY_TIMEOUT) + 30}s:1s]))", lambda v: v > 0)
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
            plan, targets, endpoints, healthchecks = [], {}, {}, {}
            for name, service in services.items():
                replicas = int((service.get("deploy") or {}).get("replicas", 1))
                for r in range(replicas):
                    port = free_port()
                    pname = name if replicas == 1 else f"{name}-{r + 1}"
                    node_id = next(ids) if ids is not None and service["command"][0] == "node" else None
                    plan.append((pname, _argv(service, port, node_id, folder / name), _env(service, broker.bootstrap)))
                    targets.setdefault(name, []).append(f"127.0.0.1:{port}")
                    endpoints[pname] = f"http://127.0.0.1:{port}/metrics"
                    healthchecks[pname] = _healthcheck(service, port)
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
                        healthchecks, t_start, time.time(), variables)
        finally:
            procs.stop_all()


def test_every_target_is_up_under_its_checked_in_job(stack):
    up = stack.prom.query("up", at=stack.t_eval)
    assert {labels["job"] for labels, _ in up} == stack.jobs
    assert len(up) == len(stack.endpoints) and all(v == 1 for _, v in up), up


def _metric_names(expr: str) -> list[str]:
    return sorted(set(re.findall(r"\b(streamlearn_\w+|process_\w+|python_\w+|up)\b(?!\s*\()", expr)))


def _check_query(stack, q: Query, values: dict) -> None:
    expr = substitute(q.expr, values)
    got = stack.prom.query(expr, at=stack.t_eval)
    if not finite(got) and any(m in expr for m in OPTIONAL_METRICS):
        assert not got, (q.id, got)  # absent without --sync-key-file, but valid
        return
    if not finite(got):
        missing = [m for m in _metric_names(expr)
                   if not stack.prom.query(f"count({{__name__=\"{m}\"}})", at=stack.t_eval)]
        pytest.fail(f"{q.id}: {expr!r} returned {'only NaN' if got else 'nothing'}; "
                    f"metrics with no series: {missing or 'none'}")


@pytest.mark.parametrize("q", QUERIES, ids=[q.id for q in QUERIES])
def test_dashboard_query_returns_data(stack, q: Query):
    """With one pipeline and one node chosen (the first live values of the variables)."""
    _check_query(stack, q, stack.variables)


@pytest.mark.parametrize("q", QUERIES, ids=[q.id for q in QUERIES])
def test_dashboard_query_returns_data_for_all_pipelines_and_nodes(stack, q: Query):
    """With every variable at "All", as the dashboards open."""
    _check_query(stack, q, ALL)


def test_every_target_carries_its_pipeline_and_the_variables_find_it(stack):
    up = stack.prom.query("up", at=stack.t_eval)
    assert up and {labels.get("pipeline") for labels, _ in up} == {"streamlearn"}, up
    assert stack.variables["pipeline"] == "streamlearn"
    nodes = {lb["node"] for lb, _ in stack.prom.query('streamlearn_node_samples_total{pipeline=~"streamlearn"}')}
    assert len(nodes) == NODES and stack.variables["node"] in nodes, (nodes, stack.variables)


def test_template_variable_queries_list_the_live_pipelines_and_nodes(stack):
    """Each query variable's ``label_values(selector, label)``, as Grafana asks Prometheus for it."""
    boards = sorted((PROMETHEUS_FILE.parents[1] / "grafana" / "dashboards").glob("*.json"))
    assert boards
    for path in boards:
        for v in json.loads(path.read_text(encoding="utf-8"))["templating"]["list"]:
            if v["type"] != "query":
                continue
            m = re.fullmatch(r"label_values\((.+), (\w+)\)", v["query"])
            assert m and m.group(2) == v["name"], v["query"]
            values = stack.prom.get(f"/api/v1/label/{m.group(2)}/values", **{"match[]": substitute(m.group(1), ALL)})
            expected = {"pipeline": ["streamlearn"], "node": [str(i) for i in range(NODES)]}[v["name"]]
            assert sorted(values) == expected, (path.name, v["name"], values)


def test_alert_rules_load_evaluate_and_stay_quiet_on_a_healthy_pipeline(stack):
    rules_file = PROMETHEUS_FILE.parent / "alerts.yml"
    wanted = {r["alert"] for g in yaml.safe_load(rules_file.read_text())["groups"] for r in g["rules"]}
    deadline = time.monotonic() + 30
    while True:  # every rule evaluated at least once (evaluation_interval 1 s here)
        rules = [r for g in stack.prom.get("/api/v1/rules")["groups"] for r in g["rules"]]
        if {r["name"] for r in rules} == wanted and all(r.get("lastEvaluation", "").startswith("2") and
                                                         not r["lastEvaluation"].startswith("0001") for r in rules):
            break
        assert time.monotonic() < deadline, [(r["name"], r.get("lastEvaluation")) for r in rules]
        time.sleep(0.5)
    bad = [(r["name"], r.get("health"), r.get("lastError")) for r in rules if r.get("health") != "ok"]
    assert not bad, bad
    firing = [(a["labels"]["alertname"], a["labels"]) for a in stack.prom.get("/api/v1/alerts")["alerts"]
              if a["state"] == "firing"]
    assert not firing, firing


def test_compose_healthchecks_pass_against_the_running_services(stack):
    for name, argv in stack.healthchecks.items():
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, (name, argv, r.stderr)


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
    start = _aligned_start(stack)
    # A drift made before Prometheus's first successful scrape of the producer (a slow start, a timed-out
    # scrape on a loaded machine) is a first sample > 0: no change to mark. Checked: the drifts seen rising.
    seen = stack.prom.query_range(counter, start, stack.t_eval)
    injected = {(lb["node"], lb["kind"]) for lb, values in seen
                if any(a == 0 and b > 0 for a, b in zip(values, values[1:]))}
    assert injected, f"no drift seen rising during the run: {[(lb, max(v)) for lb, v in seen if max(v) > 0]}"
    series = stack.prom.query_range(substitute(q.expr, ALL), start, stack.t_eval)  # every node
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
