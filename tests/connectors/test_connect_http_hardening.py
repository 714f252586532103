"""HTTP ingest against clumsy or hostile clients, on a real broker: read timeouts, huge lengths, a bounded
worker pool, requests served in parallel, clients that hang up."""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import socket
import struct
import threading
import urllib.error
import urllib.request

import pytest
from waiting import wait_until

from streamlearn.connectors.cli import add_connect_parser
from streamlearn.connectors.http_ingest import IngestServer
from streamlearn.connectors.routing import NodeRouter
from streamlearn.connectors.schema import StreamSchema
from streamlearn.errors import ConfigError
from streamlearn.kafka.codecs import decode_sample_json
from streamlearn.kafka.topics import deadletter_topic, samples_topic

SCHEMA = StreamSchema({"temp": "float", "rpm": "int"}, label="state", classes=["ok", "fault"], key="id")
READING = {"temp": 1.5, "rpm": 10, "state": "ok"}
OK1 = (200, {"accepted": 1, "delivered": 1})


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def connect(server) -> socket.socket:
    host, port = server._httpd.server_address[:2]
    return socket.create_connection((host, port), timeout=30)  # a server that never answers fails the test


def head(length, path="/ingest") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode("latin-1")


def response(sock) -> tuple:
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    body = resp.read()
    return resp.status, json.loads(body), resp.getheader("Connection")


def closed_by_server(sock) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def blocking_publish(server, temp=999.0):
    """Make the publish of a reading with ``temp`` wait: (inside, release) events."""
    inside, release = threading.Event(), threading.Event()
    real = server.publisher.reading

    def reading(node, r):
        if r.x["temp"] == temp:
            inside.set()
            assert release.wait(60)
        return real(node, r)

    server.publisher.reading = reading
    return inside, release


def test_idle_and_stalled_connections_are_closed_after_the_read_timeout(kafka):
    srv = IngestServer(SCHEMA, NodeRouter(node=0), port=0, read_timeout=0.5, **kafka).start()
    try:
        idle = connect(srv)  # never sends a byte
        keep = connect(srv)  # one request, then idle on the kept-alive connection
        body = json.dumps(READING).encode()
        keep.sendall(head(len(body)) + body)
        status, answer, _ = response(keep)
        assert (status, answer) == OK1
        stalled = connect(srv)  # promises 100 bytes, sends 7
        stalled.sendall(head(100) + b'{"temp"')
        status, answer, connection = response(stalled)
        assert status == 408 and answer["field"] == "<payload>" and "7 of 100 bytes" in answer["error"]
        assert connection == "close"
        assert closed_by_server(idle) and closed_by_server(keep) and closed_by_server(stalled)
        assert srv.connections()["timeouts"] >= 1
        assert (srv.stats.readings, srv.stats.deadlettered) == (1, 0)  # nothing of the stalled body published
        for s in (idle, keep, stalled):
            s.close()
    finally:
        srv.stop()


def test_a_huge_content_length_is_413_at_once_without_waiting_for_the_body(kafka, consume):
    # A read timeout far beyond the client's 30 s: the answers below can only come without waiting for the body.
    srv = IngestServer(SCHEMA, NodeRouter(node=0), port=0, max_body=4096, read_timeout=600, **kafka).start()
    try:
        for length in ("1" + "0" * 30, "9" * 5000):  # 10^30; and more digits than int() converts
            s = connect(srv)
            s.sendall(head(length) + b'{"temp": 1')
            status, answer, connection = response(s)
            assert status == 413 and answer["field"] == "<payload>" and "too large" in answer["error"]
            assert connection == "close"
            s.close()
        s = connect(srv)
        s.sendall(b"POST /ingest HTTP/1.1\r\nHost: test\r\nContent-Length: \xb2\r\n\r\n")  # '²'.isdigit() is True
        status, answer, _ = response(s)
        assert status == 411
        s.close()
        assert post(srv.url + "/ingest", READING) == OK1  # still serving
        dead = consume(deadletter_topic(kafka["prefix"]), 2)
        reasons = [dict(r.headers)["sl-error"].decode() for r in dead]
        assert "1000000000000000000000000000000 bytes" in reasons[0] and "5000-digit" in reasons[1]
        assert all(b'{"temp": 1'.startswith(r.value or b"") for r in dead)  # only what had arrived
    finally:
        srv.stop()


def test_connections_beyond_max_connections_wait_for_a_worker_and_are_all_served(kafka):
    srv = IngestServer(SCHEMA, NodeRouter(round_robin=2), port=0, max_connections=3, read_timeout=30,
                       **kafka).start()
    try:
        workers = [t for t in threading.enumerate() if t.name.startswith("streamlearn-ingest-")]
        hold = [connect(srv) for _ in range(3)]  # idle: each holds a worker
        wait_until(lambda: srv.connections()["active"] == 3, "3 connections held")
        results = []
        clients = [threading.Thread(target=lambda: results.append(post(srv.url + "/ingest", READING)))
                   for _ in range(20)]
        for c in clients:
            c.start()
        assert results == [] and srv.connections()["active"] == 3  # the others wait in the listen queue
        for s in hold:
            s.close()
        for c in clients:
            c.join(60)
        assert results == [OK1] * 20
        assert srv.connections()["peak"] == 3 and len(workers) == 3
        assert [t for t in threading.enumerate() if t.name.startswith("streamlearn-ingest-")] == workers
        assert srv.stats.readings == 20 and srv.stats.per_node == {0: 10, 1: 10}  # round-robin stays exact
    finally:
        srv.stop()


def test_a_late_label_follows_its_reading_across_requests(kafka, consume):
    srv = IngestServer(SCHEMA, NodeRouter(round_robin=2), port=0, **kafka).start()
    try:
        url = srv.url + "/ingest"
        assert post(url, {"id": "a", "temp": 1, "rpm": 1, "state": None}) == OK1  # node 0
        assert post(url, {"id": "b", "temp": 2, "rpm": 2, "state": None}) == OK1  # node 1
        assert post(url, {"id": "b", "state": "fault"}) == OK1  # to node 1, where b's reading went
        assert (srv.stats.readings, srv.stats.labels) == (2, 1)
        node1 = consume(samples_topic(kafka["prefix"], 1), 2)
        assert [json.loads(r.value).get("key") for r in node1] == ["b", "b"] and b"fault" in node1[1].value
    finally:
        srv.stop()


def test_a_request_being_published_does_not_hold_up_another(kafka, consume):
    srv = IngestServer(SCHEMA, NodeRouter(node=0), port=0, **kafka).start()
    try:
        inside, release = blocking_publish(srv)
        big = [{"temp": 999, "rpm": 1, "state": "ok"}] + [READING] * 200
        out = []
        sender = threading.Thread(target=lambda: out.append(post(srv.url + "/ingest", big)))
        sender.start()
        assert inside.wait(30)  # the big request is being published, and stays so until released
        assert post(srv.url + "/ingest", READING) == OK1
        assert out == [] and sender.is_alive()
        release.set()
        sender.join(60)
        assert out == [(200, {"accepted": 201, "delivered": 201})]
        assert srv.stats.readings == 202
        assert len(consume(samples_topic(kafka["prefix"], 0), 202)) == 202
    finally:
        srv.stop()


def test_a_small_post_answers_while_a_large_body_is_still_arriving(kafka):
    srv = IngestServer(SCHEMA, NodeRouter(node=0), port=0, **kafka).start()
    try:
        body = json.dumps([READING] * 5000).encode()
        rest_sent = threading.Event()
        s = connect(srv)
        s.sendall(head(len(body)) + body[: len(body) // 2])
        wait_until(lambda: srv.connections()["active"] == 1, "the large request accepted")
        assert post(srv.url + "/ingest", READING) == OK1
        assert not rest_sent.is_set()  # answered while the large body was still incomplete
        s.sendall(body[len(body) // 2:])
        rest_sent.set()
        status, answer, _ = response(s)
        assert (status, answer) == (200, {"accepted": 5000, "delivered": 5000})
        s.close()
        assert srv.stats.readings == 5001
    finally:
        srv.stop()


def test_clients_that_hang_up_are_counted_quietly_and_accepted_records_are_kept(kafka, consume, capfd, caplog):
    caplog.set_level(logging.DEBUG, logger="streamlearn.connectors.http_ingest")
    srv = IngestServer(SCHEMA, NodeRouter(node=0), port=0, **kafka).start()
    try:
        inside, release = blocking_publish(srv)
        s = connect(srv)
        body = json.dumps({"temp": 999, "rpm": 1, "state": "ok"}).encode()
        s.sendall(head(len(body)) + body)
        assert inside.wait(30)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # reset: the answer cannot be written
        release.set()
        wait_until(lambda: srv.connections()["hangups"] == 1, "the reset counted")
        s = connect(srv)
        s.sendall(head(100) + b'{"te')
        s.close()  # gone mid-body
        wait_until(lambda: srv.connections()["hangups"] == 2, "the truncated body counted")
        assert post(srv.url + "/ingest", READING) == OK1
        assert srv.stats.readings == 2 and srv.stats.deadlettered == 0
        assert [decode_sample_json(r.value).x["temp"] for r in consume(samples_topic(kafka["prefix"], 0), 2)] \
            == [999.0, 1.5]  # accepted before the hang-up: delivered all the same
    finally:
        srv.stop()
    assert "Traceback" not in capfd.readouterr().err
    assert [r for r in caplog.records
            if r.levelno >= logging.WARNING and r.name.startswith("streamlearn.connectors")] == []
    assert any("hung up" in r.getMessage() for r in caplog.records)


def test_stop_does_not_wait_for_idle_keep_alive_connections(kafka):
    srv = IngestServer(SCHEMA, NodeRouter(node=0), port=0, read_timeout=600, **kafka).start()
    idle = connect(srv)
    wait_until(lambda: srv.connections()["active"] == 1, "the idle connection accepted")
    stopper = threading.Thread(target=srv.stop)
    stopper.start()
    stopper.join(60)  # with the idle reader waiting out its 600 s this would still be alive
    assert not stopper.is_alive()
    assert closed_by_server(idle)
    idle.close()


def test_connection_settings_are_checked(kafka, capsys):
    for bad in ({"read_timeout": 0}, {"read_timeout": float("nan")}, {"read_timeout": True},
                {"max_connections": 0}, {"max_connections": 2.0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            IngestServer(SCHEMA, NodeRouter(node=0), port=0, **bad, **kafka)
    parser = argparse.ArgumentParser()
    add_connect_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["connect", "http", "--schema", "s.toml", "--read-timeout", "2.5",
                              "--max-connections", "8"])
    assert (args.read_timeout, args.max_connections) == (2.5, 8)
    args = parser.parse_args(["connect", "http", "--schema", "s.toml"])
    assert (args.read_timeout, args.max_connections) == (10.0, 64)
    for bad in ("0", "-1", "nan", "soon"):
        with pytest.raises(SystemExit):
            parser.parse_args(["connect", "http", "--schema", "s.toml", "--read-timeout", bad])
    assert "--read-timeout: expected a number of seconds > 0, got 'nan'" in capsys.readouterr().err
