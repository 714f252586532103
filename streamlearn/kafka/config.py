"""Kafka client settings, read from environment variables and validated once, here.

============================  ==============================================================
Variable                      Meaning
============================  ==============================================================
KAFKA_BOOTSTRAP_SERVERS       ``host:port[,host:port...]``; unset: ``127.0.0.1:9092``, where
                              ``streamlearn broker`` runs the embedded Tansu broker
                              (see :func:`streamlearn.kafka.broker.ensure_broker`)
KAFKA_SECURITY_PROTOCOL       PLAINTEXT (default), SSL, SASL_PLAINTEXT or SASL_SSL
KAFKA_SASL_MECHANISM          PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (required for SASL_*)
KAFKA_SASL_USERNAME           required for SASL_*
KAFKA_SASL_PASSWORD           required for SASL_*; never printed
KAFKA_SSL_CAFILE              CA bundle (SSL, SASL_SSL); must be a readable file
KAFKA_SSL_CERTFILE            client certificate (mutual TLS), with KAFKA_SSL_KEYFILE
KAFKA_SSL_KEYFILE             client private key
KAFKA_TOPIC_PREFIX            first part of every topic name, default ``streamlearn``
STREAMLEARN_BROKER_STORAGE    storage of the embedded Tansu that ``streamlearn broker`` or the demo
                              starts: ``memory://tansu/`` (default, lost when it stops) or
                              ``s3://<bucket>/`` (durable; endpoint and keys from ``AWS_*``
                              variables, see :class:`~streamlearn.kafka.broker.EmbeddedBroker`)
STREAMLEARN_BROKER_WAIT       seconds a service waits for a broker on ``127.0.0.1:9092`` when
                              KAFKA_BOOTSTRAP_SERVERS is unset (default 300; 0: fail at once)
============================  ==============================================================

Empty variables count as unset. A bad value raises
:class:`~streamlearn.errors.ConfigError` naming the variable and the value.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from typing import Mapping

from streamlearn.errors import ConfigError

__all__ = [
    "KafkaSettings",
    "client_kwargs",
    "validate_bootstrap",
    "validate_topic_prefix",
    "ENV_VARS",
    "SECURITY_PROTOCOLS",
    "SASL_MECHANISMS",
    "DEFAULT_TOPIC_PREFIX",
    "MAX_MESSAGE_BYTES",
    "BROKER_STORAGE_VAR",
    "DEFAULT_BROKER_STORAGE",
    "validate_broker_storage",
    "broker_storage_from_env",
]

ENV_VARS = (
    "KAFKA_BOOTSTRAP_SERVERS",
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SSL_CAFILE",
    "KAFKA_SSL_CERTFILE",
    "KAFKA_SSL_KEYFILE",
    "KAFKA_TOPIC_PREFIX",
)
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
# kafka-python's other mechanisms (GSSAPI, OAUTHBEARER) need objects or libraries, not env strings.
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
DEFAULT_TOPIC_PREFIX = "streamlearn"
# The largest record a client sends or fetches: a 64 MiB model plus its header,
# below Kafka's default socket.request.max.bytes (100 MiB) and kafka-python's
# receive_message_max_bytes (100 MB).
MAX_MESSAGE_BYTES = 72 << 20
#: Longest wait between two attempts to reach a broker that went away (ms).
RECONNECT_BACKOFF_MAX_MS = 1000

_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)$")
_TOPIC_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_MAX_PREFIX_CHARS = 100  # leaves room for ".samples.<node>" under Kafka's 249-character limit


def validate_bootstrap(value: str, var: str = "KAFKA_BOOTSTRAP_SERVERS") -> str:
    """Check a ``host:port[,host:port...]`` list; return it without blanks.

    Examples
    --------
    >>> validate_bootstrap(" kafka:9092, 10.0.0.2:9093 ")
    'kafka:9092,10.0.0.2:9093'
    """
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{var} must be host:port[,host:port...], got {value!r}")
    servers = []
    for item in value.split(","):
        item = item.strip()
        host, sep, port = item.rpartition(":")
        if not sep or not _HOST_RE.match(host) or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(f"{var} must be host:port[,host:port...] with ports 1-65535; "
                              f"bad entry {item!r} in {value!r}")
        servers.append(f"{host}:{int(port)}")
    return ",".join(servers)


BROKER_STORAGE_VAR = "STREAMLEARN_BROKER_STORAGE"
DEFAULT_BROKER_STORAGE = "memory://tansu/"
_STORAGE_RE = re.compile(r"^([a-z][a-z0-9+.-]*)://\S+$")


def validate_broker_storage(value: str, var: str = BROKER_STORAGE_VAR) -> str:
    """Check a Tansu storage URL (``scheme://...``); return it without blanks.

    Only the form is checked here: which engines exist depends on how the Tansu
    binary was built, and it says so when it starts (see ``EmbeddedBroker``).

    Examples
    --------
    >>> validate_broker_storage(" s3://tansu/ ")
    's3://tansu/'
    >>> validate_broker_storage("/var/lib/tansu")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    streamlearn.errors.ConfigError: STREAMLEARN_BROKER_STORAGE must be a Tansu storage URL ..., got '/var/lib/tansu'
    """
    if isinstance(value, str) and _STORAGE_RE.match(value.strip()):
        return value.strip()
    shown = _redact_url(value) if isinstance(value, str) else value
    raise ConfigError(f"{var} must be a Tansu storage URL such as {DEFAULT_BROKER_STORAGE!r} or 's3://<bucket>/', "
                      f"got {shown!r}")


def broker_storage_from_env(env: Mapping[str, str] | None = None) -> str:
    """The embedded broker's storage URL: ``STREAMLEARN_BROKER_STORAGE``, else memory.

    Examples
    --------
    >>> broker_storage_from_env({})
    'memory://tansu/'
    """
    env = os.environ if env is None else env
    value = env.get(BROKER_STORAGE_VAR)
    if not isinstance(value, str) or not value.strip():
        return DEFAULT_BROKER_STORAGE
    return validate_broker_storage(value)


def default_fetch_wait_ms(env: Mapping[str, str] | None = None) -> int:
    """How long a service lets the broker hold a fetch, unless told: 20 ms, or 500 ms when the embedded
    broker keeps its records in object storage (``STREAMLEARN_BROKER_STORAGE=s3://...``).

    Tansu holds a fetch about that long even when records arrive, so the wait is the latency of a
    sync message and is short by default; Tansu 0.6 on ``s3://`` answers a fetch shorter than an
    object-store read with no records, and a consumer asking again can stay stuck there.

    >>> default_fetch_wait_ms({}), default_fetch_wait_ms({"STREAMLEARN_BROKER_STORAGE": "s3://b/"})
    (20, 500)
    """
    return 20 if broker_storage_from_env(env).startswith(("memory:", "null:")) else 500


def _redact_url(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` in it hidden (e.g. a postgres:// URL)."""
    return re.sub(r"([A-Za-z][A-Za-z0-9+.-]*://[^:@/\s\"']*):[^@/\s\"']*@", r"\1:<hidden>@", text)


def validate_topic_prefix(value: str, var: str = "KAFKA_TOPIC_PREFIX") -> str:
    """Check a topic prefix: dot-separated parts of ``[A-Za-z0-9_-]``, at most 100 characters.

    Examples
    --------
    >>> validate_topic_prefix("plant3.streamlearn")
    'plant3.streamlearn'
    """
    if not isinstance(value, str) or not _TOPIC_PREFIX_RE.match(value) or len(value) > _MAX_PREFIX_CHARS:
        raise ConfigError(
            f"{var} must be dot-separated parts of letters, digits, '_' or '-' "
            f"(at most {_MAX_PREFIX_CHARS} characters), got {value!r}"
        )
    return value


@dataclass(frozen=True)
class KafkaSettings:
    """Validated kafka-python client settings; one field per environment variable.

    Build it with :meth:`from_env` (or directly, e.g. in tests); every value is
    checked on construction. ``bootstrap_servers`` None means "use the embedded
    broker": pass ``bootstrap=`` to the ``*_kwargs`` methods then.

    Examples
    --------
    >>> s = KafkaSettings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092"})
    >>> s.producer_kwargs()["bootstrap_servers"], s.topic_prefix
    ('127.0.0.1:9092', 'streamlearn')
    >>> KafkaSettings.from_env({"KAFKA_SECURITY_PROTOCOL": "TLS"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    streamlearn.errors.ConfigError: KAFKA_SECURITY_PROTOCOL must be one of PLAINTEXT, SSL, ... got 'TLS'
    """

    bootstrap_servers: str | None = None
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    topic_prefix: str = DEFAULT_TOPIC_PREFIX

    def __post_init__(self):
        if self.bootstrap_servers is not None:
            object.__setattr__(self, "bootstrap_servers", validate_bootstrap(self.bootstrap_servers))
        proto = self.security_protocol
        if not isinstance(proto, str) or proto.upper() not in SECURITY_PROTOCOLS:
            raise ConfigError(f"KAFKA_SECURITY_PROTOCOL must be one of {', '.join(SECURITY_PROTOCOLS)}, got {proto!r}")
        proto = proto.upper()
        object.__setattr__(self, "security_protocol", proto)
        validate_topic_prefix(self.topic_prefix)

        sasl = proto.startswith("SASL_")
        if sasl:
            mech = self.sasl_mechanism
            if mech is None:
                raise ConfigError(f"KAFKA_SASL_MECHANISM is required with KAFKA_SECURITY_PROTOCOL={proto!r}")
            if not isinstance(mech, str) or mech.upper() not in SASL_MECHANISMS:
                raise ConfigError(f"KAFKA_SASL_MECHANISM must be one of {', '.join(SASL_MECHANISMS)}, got {mech!r}")
            object.__setattr__(self, "sasl_mechanism", mech.upper())
            if not self.sasl_username:
                raise ConfigError(f"KAFKA_SASL_USERNAME is required with KAFKA_SECURITY_PROTOCOL={proto!r}")
            if not self.sasl_password:
                raise ConfigError(f"KAFKA_SASL_PASSWORD is required with KAFKA_SECURITY_PROTOCOL={proto!r}")
        else:
            # Credentials with a protocol that ignores them are a mistake worth reporting.
            for var, value in (("KAFKA_SASL_MECHANISM", self.sasl_mechanism),
                               ("KAFKA_SASL_USERNAME", self.sasl_username),
                               ("KAFKA_SASL_PASSWORD", self.sasl_password)):
                if value is not None:
                    shown = "<hidden>" if var == "KAFKA_SASL_PASSWORD" else repr(value)
                    raise ConfigError(f"{var}={shown} is set but KAFKA_SECURITY_PROTOCOL={proto!r} does not use SASL")

        ssl = proto in ("SSL", "SASL_SSL")
        files = (("KAFKA_SSL_CAFILE", self.ssl_cafile), ("KAFKA_SSL_CERTFILE", self.ssl_certfile),
                 ("KAFKA_SSL_KEYFILE", self.ssl_keyfile))
        for var, path in files:
            if path is None:
                continue
            if not ssl:
                raise ConfigError(f"{var}={path!r} is set but KAFKA_SECURITY_PROTOCOL={proto!r} does not use SSL")
            if not os.path.isfile(path) or not os.access(path, os.R_OK):
                raise ConfigError(f"{var} must name a readable file, got {path!r}")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ConfigError(
                "KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together, got "
                f"KAFKA_SSL_CERTFILE={self.ssl_certfile!r}, KAFKA_SSL_KEYFILE={self.ssl_keyfile!r}"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "KafkaSettings":
        """Read the ``KAFKA_*`` variables from ``env`` (default ``os.environ``)."""
        env = os.environ if env is None else env

        def get(var):
            value = env.get(var)
            if not isinstance(value, str):
                return None
            return value.strip() or None

        return cls(
            bootstrap_servers=get("KAFKA_BOOTSTRAP_SERVERS"),
            security_protocol=get("KAFKA_SECURITY_PROTOCOL") or "PLAINTEXT",
            sasl_mechanism=get("KAFKA_SASL_MECHANISM"),
            sasl_username=get("KAFKA_SASL_USERNAME"),
            sasl_password=env.get("KAFKA_SASL_PASSWORD") or None,  # not stripped: spaces may be part of it
            ssl_cafile=get("KAFKA_SSL_CAFILE"),
            ssl_certfile=get("KAFKA_SSL_CERTFILE"),
            ssl_keyfile=get("KAFKA_SSL_KEYFILE"),
            topic_prefix=get("KAFKA_TOPIC_PREFIX") or DEFAULT_TOPIC_PREFIX,
        )

    def with_bootstrap(self, bootstrap: str) -> "KafkaSettings":
        """A copy that talks to ``bootstrap`` (e.g. the embedded broker's address)."""
        return replace(self, bootstrap_servers=bootstrap)

    def common_kwargs(self, bootstrap: str | None = None) -> dict:
        """kwargs every kafka-python client takes: servers and security."""
        servers = validate_bootstrap(bootstrap, "bootstrap") if bootstrap is not None else self.bootstrap_servers
        if servers is None:
            raise ConfigError(
                "no Kafka bootstrap servers: set KAFKA_BOOTSTRAP_SERVERS or pass bootstrap= "
                "(streamlearn.kafka.broker.bootstrap_servers() waits for the broker of `streamlearn broker`)"
            )
        # kafka-python splits a comma-separated string itself. Reconnects back off to at most 1 s (the Java
        # client's default; kafka-python's is 30 s): after a broker restart every client is back within a
        # second instead of up to 30 s later, while records that wait fail after their delivery timeout.
        kw = {"bootstrap_servers": servers, "security_protocol": self.security_protocol,
              "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS}
        if self.security_protocol.startswith("SASL_"):
            kw.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                      sasl_plain_password=self.sasl_password)
        if self.security_protocol in ("SSL", "SASL_SSL"):
            kw.update(ssl_cafile=self.ssl_cafile, ssl_certfile=self.ssl_certfile, ssl_keyfile=self.ssl_keyfile)
        return kw

    def producer_kwargs(self, bootstrap: str | None = None, **overrides) -> dict:
        """kwargs for ``KafkaProducer``: room for 64 MiB models, all replicas acknowledge.

        Not idempotent: after a broker restart that lost its state, an idempotent
        kafka-python producer fails its producer-id request and stays failed for
        good. Without it a retried send may be written twice (at-least-once into
        Kafka); a node counts such a repeat as a ``seq`` gap.

        Ordered: one request in flight per connection, so a retried batch is sent
        again before any later one and never lands after it (with 5 in flight, the
        default, records came back out of order after a broker restart). The cost is
        one round trip per request; with ``linger_ms`` batching on loopback it is
        not the bottleneck.
        """
        kw = self.common_kwargs(bootstrap)
        kw.update(acks="all", max_request_size=MAX_MESSAGE_BYTES, enable_idempotence=False,
                  max_in_flight_requests_per_connection=1)
        kw.update(overrides)
        return kw

    def consumer_kwargs(self, bootstrap: str | None = None, *, group_id: str | None = None, **overrides) -> dict:
        """kwargs for ``KafkaConsumer``.

        Without ``group_id`` (the default) the caller uses ``assign()`` and
        explicit offsets and nothing is committed. With one, session timeouts
        are short: Tansu only completes a group join after about half the
        session timeout (about 22 s with kafka-python's default 45 s); 6 s is
        the smallest a default Apache Kafka broker accepts.
        """
        kw = self.common_kwargs(bootstrap)
        kw.update(
            fetch_max_bytes=MAX_MESSAGE_BYTES,
            max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
            # Topics come from ensure_topics(); Apache Kafka honours this, Tansu creates them anyway.
            allow_auto_create_topics=False,
            enable_auto_commit=group_id is not None,
        )
        if group_id is not None:
            kw.update(group_id=group_id, session_timeout_ms=6000, heartbeat_interval_ms=2000)
        kw.update(overrides)
        return kw

    def admin_kwargs(self, bootstrap: str | None = None, **overrides) -> dict:
        """kwargs for ``KafkaAdminClient``."""
        kw = self.common_kwargs(bootstrap)
        kw.update(overrides)
        return kw


def client_kwargs(kind: str, settings: KafkaSettings | None = None, *, bootstrap: str | None = None,
                  **overrides) -> dict:
    """kwargs for a kafka-python client: ``kind`` is ``"producer"``, ``"consumer"`` or ``"admin"``.

    ``settings`` defaults to :meth:`KafkaSettings.from_env`.

    Examples
    --------
    >>> client_kwargs("admin", KafkaSettings(), bootstrap="127.0.0.1:9092")
    {'bootstrap_servers': '127.0.0.1:9092', 'security_protocol': 'PLAINTEXT', 'reconnect_backoff_max_ms': 1000}
    """
    settings = KafkaSettings.from_env() if settings is None else settings
    makers = {"producer": settings.producer_kwargs, "consumer": settings.consumer_kwargs,
              "admin": settings.admin_kwargs}
    if kind not in makers:
        raise ConfigError(f"client kind must be one of {sorted(makers)}, got {kind!r}")
    return makers[kind](bootstrap, **overrides)
