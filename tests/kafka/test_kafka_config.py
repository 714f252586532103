"""Kafka client settings from env vars: validation at the edge, kwargs for kafka-python."""

from __future__ import annotations

import pytest

from streamlearn.errors import ConfigError
from streamlearn.kafka.config import MAX_MESSAGE_BYTES, RECONNECT_BACKOFF_MAX_MS, KafkaSettings, client_kwargs


@pytest.fixture
def tls_files(tmp_path):
    paths = {}
    for name in ("ca.pem", "cert.pem", "key.pem"):
        p = tmp_path / name
        p.write_text("-----BEGIN TEST-----\n")
        paths[name] = str(p)
    return paths


def test_defaults_from_empty_env():
    s = KafkaSettings.from_env({})
    assert s == KafkaSettings()
    assert (s.bootstrap_servers, s.security_protocol, s.topic_prefix) == (None, "PLAINTEXT", "streamlearn")


def test_empty_variables_count_as_unset():
    env = {"KAFKA_BOOTSTRAP_SERVERS": "  ", "KAFKA_SECURITY_PROTOCOL": "", "KAFKA_TOPIC_PREFIX": ""}
    s = KafkaSettings.from_env(env)
    assert s == KafkaSettings()


def test_plaintext_kwargs_for_every_client():
    s = KafkaSettings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "k1:9092, k2:9093", "KAFKA_TOPIC_PREFIX": "plant.a"})
    assert s.topic_prefix == "plant.a"
    assert s.admin_kwargs() == {"bootstrap_servers": "k1:9092,k2:9093", "security_protocol": "PLAINTEXT",
                                "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS}
    # every client tries a broker that went away again within a second (kafka-python's own cap is 30 s)
    assert all(kw["reconnect_backoff_max_ms"] == 1000 for kw in (s.producer_kwargs(), s.consumer_kwargs()))
    producer = s.producer_kwargs()
    assert producer["max_request_size"] == MAX_MESSAGE_BYTES and producer["acks"] == "all"
    consumer = s.consumer_kwargs()
    assert consumer["max_partition_fetch_bytes"] == MAX_MESSAGE_BYTES
    assert consumer["enable_auto_commit"] is False and "group_id" not in consumer
    grouped = s.consumer_kwargs(group_id="nodes")
    assert grouped["group_id"] == "nodes" and grouped["session_timeout_ms"] == 6000
    assert s.consumer_kwargs(fetch_max_wait_ms=50)["fetch_max_wait_ms"] == 50  # overrides win


def test_kwargs_are_accepted_by_kafka_python_clients():
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    s = KafkaSettings(bootstrap_servers="127.0.0.1:1")
    for cls, kw in ((KafkaProducer, s.producer_kwargs()), (KafkaConsumer, s.consumer_kwargs(group_id="g")),
                    (KafkaAdminClient, s.admin_kwargs())):
        unknown = set(kw) - set(cls.DEFAULT_CONFIG)
        assert not unknown, (cls.__name__, unknown)


def test_sasl_ssl_kwargs(tls_files):
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "broker.example:9094",
        "KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
        "KAFKA_SASL_MECHANISM": "scram-sha-512",
        "KAFKA_SASL_USERNAME": "alice",
        "KAFKA_SASL_PASSWORD": " s3cret ",
        "KAFKA_SSL_CAFILE": tls_files["ca.pem"],
    }
    s = KafkaSettings.from_env(env)
    kw = s.producer_kwargs()
    assert kw["security_protocol"] == "SASL_SSL" and kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kw["sasl_plain_username"], kw["sasl_plain_password"]) == ("alice", " s3cret ")
    assert kw["ssl_cafile"] == tls_files["ca.pem"] and kw["ssl_certfile"] is None
    assert "s3cret" not in repr(s)


def test_mutual_tls(tls_files):
    s = KafkaSettings.from_env({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTFILE": tls_files["cert.pem"],
                                "KAFKA_SSL_KEYFILE": tls_files["key.pem"]})
    kw = s.consumer_kwargs("127.0.0.1:9093")
    assert kw["bootstrap_servers"] == "127.0.0.1:9093"
    assert (kw["ssl_certfile"], kw["ssl_keyfile"]) == (tls_files["cert.pem"], tls_files["key.pem"])


SASL = {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_SASL_USERNAME": "u",
        "KAFKA_SASL_PASSWORD": "p"}


@pytest.mark.parametrize(
    "env, var, shown",
    [
        ({"KAFKA_BOOTSTRAP_SERVERS": "localhost"}, "KAFKA_BOOTSTRAP_SERVERS", "'localhost'"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "k:99999"}, "KAFKA_BOOTSTRAP_SERVERS", "'k:99999'"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "k:9092,,k2:9092"}, "KAFKA_BOOTSTRAP_SERVERS", "bad entry ''"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "k :9092x"}, "KAFKA_BOOTSTRAP_SERVERS", "'k :9092x'"),
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL", "'TLS'"),
        ({**SASL, "KAFKA_SASL_MECHANISM": "GSSAPI"}, "KAFKA_SASL_MECHANISM", "'GSSAPI'"),
        ({**SASL, "KAFKA_SASL_MECHANISM": ""}, "KAFKA_SASL_MECHANISM", "SASL_PLAINTEXT"),
        ({**SASL, "KAFKA_SASL_USERNAME": ""}, "KAFKA_SASL_USERNAME", "SASL_PLAINTEXT"),
        ({**SASL, "KAFKA_SASL_PASSWORD": ""}, "KAFKA_SASL_PASSWORD", "SASL_PLAINTEXT"),
        ({"KAFKA_SASL_USERNAME": "bob"}, "KAFKA_SASL_USERNAME", "'bob'"),
        ({"KAFKA_SASL_PASSWORD": "hunter2"}, "KAFKA_SASL_PASSWORD", "<hidden>"),
        ({"KAFKA_SSL_CAFILE": "/etc/ca.pem"}, "KAFKA_SSL_CAFILE", "'/etc/ca.pem'"),
        ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"}, "KAFKA_SSL_CAFILE",
         "'/nonexistent/ca.pem'"),
        ({"KAFKA_TOPIC_PREFIX": "my topics"}, "KAFKA_TOPIC_PREFIX", "'my topics'"),
        ({"KAFKA_TOPIC_PREFIX": "a..b"}, "KAFKA_TOPIC_PREFIX", "'a..b'"),
        ({"KAFKA_TOPIC_PREFIX": "x" * 101}, "KAFKA_TOPIC_PREFIX", "'xxx"),
    ],
)
def test_bad_values_raise_config_error_naming_variable_and_value(env, var, shown):
    with pytest.raises(ConfigError) as info:
        KafkaSettings.from_env(env)
    assert var in str(info.value) and shown in str(info.value)
    assert "hunter2" not in str(info.value)


def test_certfile_without_keyfile(tls_files):
    with pytest.raises(ConfigError, match="KAFKA_SSL_KEYFILE"):
        KafkaSettings.from_env({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTFILE": tls_files["cert.pem"]})


def test_no_bootstrap_anywhere_is_a_clear_error():
    with pytest.raises(ConfigError, match="KAFKA_BOOTSTRAP_SERVERS"):
        KafkaSettings().producer_kwargs()
    with pytest.raises(ConfigError, match="bootstrap"):
        KafkaSettings().admin_kwargs("not a server")


def test_client_kwargs_dispatch(monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "envhost:9092")
    assert client_kwargs("admin")["bootstrap_servers"] == "envhost:9092"
    assert client_kwargs("producer", bootstrap="127.0.0.1:1")["bootstrap_servers"] == "127.0.0.1:1"
    with pytest.raises(ConfigError, match="'streams'"):
        client_kwargs("streams")
