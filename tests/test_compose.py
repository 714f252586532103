"""The docker-compose stack: compose file, Prometheus config, Grafana provisioning and dashboards, Dockerfile.

Docker does not run here: the compose file is checked with ``docker-compose config`` and the Prometheus
config and every dashboard query with ``promtool`` (both must be installed; the tests fail without them).
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
from prometheus_client import generate_latest

from streamlearn.metrics import NodeMetrics, ProducerMetrics, SyncMetrics, new_registry

ROOT = Path(__file__).resolve().parents[1]
APP_SERVICES = {"producer": "produce", "node": "node", "sync": "sync"}
SERVICES = {"kafka", "prometheus", "grafana", *APP_SERVICES}
SETTINGS = ("NODES", "SOURCE", "RATE", "PROTOCOL", "LEARNER", "TORCH_INDEX_URL", "SENSOR_NODES", "SENSOR_RATE",
            "STREAMLEARN_INGEST_TOKEN")
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


# ---- docker-compose.yml ---------------------------------------------------------------------------

def test_compose_config_passes_with_every_service_of_the_pipeline(compose):
    assert set(default_services(compose)) == SERVICES


def test_kafka_is_one_kraft_broker_with_a_healthcheck_the_services_wait_for(compose):
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    assert "kafka-broker-api-versions.sh" in " ".join(kafka["healthcheck"]["test"])
    for name in APP_SERVICES:
        assert compose["services"][name]["depends_on"]["kafka"]["condition"] == "service_healthy"


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
    from connectors.cli import KINDS, cmd_connect

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
    from connectors.schema import load_schema

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
    # every query uses the provisioned datasource
    for board in dashboards.values():
        for panel in board["panels"]:
            assert panel["datasource"] == {"type": "prometheus", "uid": ds["uid"]}
            assert all(t["datasource"]["uid"] == ds["uid"] for t in panel["targets"])


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
    rules = [{"record": f"dashboard:query_{i}", "expr": e}
             for i, e in enumerate(e for b in dashboards.values() for e in exprs(b))]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, allow_unicode=True))
    r = subprocess.run([tool("promtool", "prometheus"), "check", "rules", str(path)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(rules)} rules found" in r.stdout


def test_every_metric_a_dashboard_queries_is_exposed(dashboards):
    # one registry per endpoint, as the services serve them, after a little activity
    node, sync, producer = (new_registry() for _ in range(3))
    NodeMetrics(node, 0).update_from_status({"samples": 10, "steps": 1, "averageable": True, "lag": 0,
                                             "protocol": "dynamic:delta=0.5,b=1", "divergence": 0.1,
                                             "delta": 0.5, "rolling_accuracy": 0.5})
    SyncMetrics(sync).update_from_status({"nodes_alive": 1, "full_syncs": 1, "node_groups": {"0": 0},
                                          "n_groups": 1, "group_changes_by_kind": {"split": 0}})
    ProducerMetrics(producer, nodes=1)
    exposed = set()
    for reg in (node, sync, producer):
        exposed |= set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", generate_latest(reg).decode(), re.M))
    words = {"sum", "by", "avg", "max", "rate", "increase", "changes", "histogram_quantile", "bool", "up",
             "le", "job", "node", "kind", "direction", "reason"}
    for board in dashboards.values():
        for e in exprs(board):
            names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", re.sub(r'"[^"]*"|\[[^\]]*\]', "", e))) - words
            assert names <= exposed, (e, names - exposed)


# ---- Dockerfile ------------------------------------------------------------------------------------

def test_dockerfile_builds_the_cli_image_with_cpu_torch_by_default():
    text = (ROOT / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in lines
    assert "ARG TORCH_VERSION=2.13.0" in lines
    assert 'ENTRYPOINT ["streamlearn"]' in lines and "EXPOSE 9100" in lines
    torch_step = next(i for i, line in enumerate(lines) if "torch==" in line)
    package_step = next(i for i, line in enumerate(lines) if line.startswith("RUN pip install ."))
    assert torch_step < package_step  # the CPU build is in place before the package's dependencies resolve
    for path in ("pyproject.toml", "README.md", "streamlearn", "connectors"):
        assert (ROOT / path).exists() and any(line.startswith("COPY") and path in line for line in lines)
