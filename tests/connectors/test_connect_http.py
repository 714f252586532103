"""HTTP ingest into a real broker: good and bad payloads, batches, size limit, bearer token."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from streamlearn.connectors.http_ingest import IngestServer
from streamlearn.connectors.routing import NodeRouter
from streamlearn.connectors.schema import StreamSchema
from streamlearn.errors import ConfigError
from streamlearn.kafka.codecs import decode_sample_json
from streamlearn.kafka.topics import deadletter_topic, samples_topic

SCHEMA = StreamSchema({"temp": "float", "rpm": "int"}, label="state", classes=["ok", "fault"], key="id")


def post(url, body, token=None, raw=False):
    data = body if raw else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture
def server(kafka):
    srv = IngestServer(SCHEMA, NodeRouter(node=0), port=0, max_body=4096, **kafka).start()
    yield srv
    srv.stop()


def test_good_payloads_are_delivered_and_bad_ones_are_400_naming_the_field(server, kafka, consume):
    url = server.url + "/ingest"
    assert post(url, {"temp": 20.5, "rpm": 1200, "state": "ok"}) == (200, {"accepted": 1, "delivered": 1})
    status, body = post(url, {"temp": "hot", "rpm": 1200, "state": "ok"})
    assert status == 400 and body["field"] == "temp" and "must be a number" in body["error"]
    status, body = post(url, {"temp": 1, "rpm": 1200, "state": "ok", "colour": "red"})
    assert status == 400 and body["field"] == "colour"
    status, body = post(url, b'{"temp": NaN, "rpm": 1, "state": "ok"}', raw=True)
    assert status == 400 and body["field"] == "<json>"
    status, body = post(url, b'{"temp": 1,', raw=True)
    assert status == 400 and body["field"] == "<payload>"
    # a batch: the good records are delivered, the bad one named by index and field
    batch = [{"temp": 1, "rpm": 1, "state": "ok"}, {"temp": 2, "rpm": 2.5, "state": "ok"},
             {"x": {"temp": 3, "rpm": 3}, "state": "fault", "id": "k3"}]
    status, body = post(url, batch)
    assert status == 400 and body["accepted"] == 2 and body["rejected"] == 1
    assert body["errors"] == [{"index": 1, "field": "rpm", "error": body["errors"][0]["error"]}]
    assert post(url + "/3", [{"temp": 4, "rpm": 4, "state": "ok"}]) == (200, {"accepted": 1, "delivered": 1})
    status, body = post(url + "/kitchen", {"temp": 4, "rpm": 4, "state": "ok"})
    assert status == 400 and body["field"] == "<path>"
    status, body = post(url, {"temp": 1, "rpm": 1, "state": "ok", "pad": "x" * 5000})
    assert status == 413 and body["field"] == "<payload>"

    stats = server.stats
    assert (stats.readings, stats.deadlettered) == (4, 7)
    node0 = [decode_sample_json(r.value) for r in consume(samples_topic(kafka["prefix"], 0), 3)]
    assert [s.x["temp"] for s in node0] == [20.5, 1.0, 3.0] and node0[2].key == "k3"
    node3 = consume(samples_topic(kafka["prefix"], 3), 1)
    assert decode_sample_json(node3[0].value).x == {"temp": 4.0, "rpm": 4.0}
    dead = consume(deadletter_topic(kafka["prefix"]), 7)
    reasons = [dict(r.headers)["sl-error"].decode() for r in dead]
    assert "field 'temp'" in reasons[0] and "field 'rpm'" in reasons[4] and "too large" in reasons[6]
    assert dead[0].value == b'{"temp": "hot", "rpm": 1200, "state": "ok"}'
    assert json.loads(dead[4].value) == batch[1]


def test_health_and_unknown_paths(server):
    with urllib.request.urlopen(server.url + "/health", timeout=10) as resp:
        assert json.loads(resp.read())["status"] == "ok"
    status, body = post(server.url + "/other", {})
    assert status == 404


def test_bearer_token_is_required_when_set(kafka):
    srv = IngestServer(SCHEMA, NodeRouter(node=0), port=0, token="s3cret", **kafka).start()
    try:
        reading = {"temp": 1, "rpm": 1, "state": "ok"}
        assert post(srv.url + "/ingest", reading)[0] == 401
        assert post(srv.url + "/ingest", reading, token="wrong")[0] == 401
        assert post(srv.url + "/ingest", reading, token="s3cret")[0] == 200
        assert srv.stats.readings == 1 and srv.stats.deadlettered == 0
    finally:
        srv.stop()


def test_binds_loopback_by_default(kafka):
    srv = IngestServer(SCHEMA, NodeRouter(node=0), port=0, **kafka)
    try:
        assert srv.url.startswith("http://127.0.0.1:")
    finally:
        srv.stop()
    with pytest.raises(ConfigError):
        IngestServer(SCHEMA, NodeRouter(node=0), port=0, token="  ", **kafka)
