"""Signed sync records: an HMAC-SHA256 in Kafka headers, checked against forgery and replay.

With a shared secret (:data:`KEY_ENV` or a key file, :func:`load_key`), every record on
``<prefix>.sync.up`` and ``<prefix>.sync.down`` carries four Kafka record headers (ASCII)::

    sl-from   the sender: a node id ("3"), "auto:<token>" for a node still claiming an id, "sync"
    sl-epoch  the sender's epoch: decimal nanoseconds since 1970 at its start (newer = larger)
    sl-ctr    the sender's counter: 1, 2, 3, ... within the epoch
    sl-sig    64 lowercase hex digits: HMAC-SHA256(secret, signed data)

The signed data (:func:`compute_mac`) is ``"streamlearn-sync/1"``, then the topic kind (``up`` or
``down``), the sender, epoch, counter, the Kafka key (None and empty told apart) and the record value,
each length-prefixed, so no two different records sign the same bytes. The record value (the
:mod:`~streamlearn.kafka.wire` envelope) is not changed: a receiver without a key reads it as before.

A :class:`SyncVerifier` refuses, and never raises on, a record whose

- headers are missing, malformed or duplicated, or whose MAC is wrong: ``forged``;
- counter is not above the last accepted one of its sender and epoch, or whose epoch is older than
  the sender's last accepted epoch: ``replayed`` (a newer epoch, a restarted sender, is accepted
  and starts a new counter);
- sender may not send on that topic (``allowed``; only ``sync`` writes ``sync.down``): ``unknown_sender``.

The sync service also refuses, as ``unknown_sender``, a record whose sender is not the node the
message says it is from (:func:`up_sender`). What a shared secret does not give: telling one key
holder from another (any holder can sign as any node), and freshness towards a receiver that just
started (it accepts the first epoch and counter it sees of each sender; the services read the sync
topics from their end at start, so only records produced after that reach them).

Examples
--------
>>> key = b"0123456789abcdef-seed-0"
>>> signer = SyncSigner(key, "up", epoch=1)
>>> headers = signer.sign(b"report", key=b"0", sender="0")
>>> verifier = SyncVerifier(key, "up")
>>> verifier.verify(headers, b"0", b"report").sender
'0'
>>> verifier.verify(headers, b"0", b"report").reason      # the same record again
'replayed'
>>> verifier.verify(headers, b"0", b"forged!").reason
'forged'
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Mapping

from streamlearn.errors import ConfigError

__all__ = [
    "KEY_ENV",
    "MIN_KEY_BYTES",
    "AUTH_REASONS",
    "HEADERS",
    "load_key",
    "unsigned_warning",
    "new_epoch",
    "compute_mac",
    "up_sender",
    "SyncSigner",
    "SyncVerifier",
    "ReplayWindow",
    "Verdict",
    "Refusals",
]

#: Environment variable holding the shared secret (``--sync-key-file`` wins over it).
KEY_ENV = "STREAMLEARN_SYNC_KEY"
#: Shortest secret accepted, in bytes.
MIN_KEY_BYTES = 16
#: Why a signed record was refused (label ``reason`` of the unauthenticated counters).
AUTH_REASONS = ("forged", "replayed", "unknown_sender")
#: The header names: sender, epoch, counter, MAC.
HEADERS = ("sl-from", "sl-epoch", "sl-ctr", "sl-sig")
TOPICS = ("up", "down")
SYNC_SENDER = "sync"
_DOMAIN = b"streamlearn-sync/1"
_U64_MAX = (1 << 64) - 1
_NUMBER = re.compile(rb"[0-9]{1,20}")
_HEXMAC = re.compile(rb"[0-9a-f]{64}")
_MAX_SENDER_BYTES = 128
_NONE = 0xFFFF_FFFF  # length of an absent Kafka key (an empty one is 0)


def load_key(key_file: str | None = None, environ: Mapping[str, str] | None = None) -> bytes | None:
    """The shared secret: the bytes of ``key_file`` (stripped), else :data:`KEY_ENV`, else None.

    An unset or empty environment variable means no key. A key shorter than :data:`MIN_KEY_BYTES`
    or a file that cannot be read is a ConfigError naming where it came from.

    Examples
    --------
    >>> load_key(environ={}) is None
    True
    >>> load_key(environ={KEY_ENV: " correct horse battery staple "})
    b'correct horse battery staple'
    >>> load_key(environ={KEY_ENV: "short"})
    Traceback (most recent call last):
    ...
    streamlearn.errors.ConfigError: STREAMLEARN_SYNC_KEY: the sync key must be at least 16 bytes, got 5
    """
    if key_file is not None:
        if not isinstance(key_file, str) or not key_file:
            raise ConfigError(f"sync_key_file must be a file path, got {key_file!r}")
        source = f"--sync-key-file {key_file}"
        try:
            with open(key_file, "rb") as f:
                key = f.read(1 << 16).strip()
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read the sync key: {exc.strerror or exc}") from None
    else:
        env = os.environ if environ is None else environ
        text = env.get(KEY_ENV)
        if text is None or not text.strip():
            return None
        source, key = KEY_ENV, text.strip().encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"{source}: the sync key must be at least {MIN_KEY_BYTES} bytes, got {len(key)}")
    return key


def unsigned_warning(who: str) -> str:
    """The one warning a service logs at start when it has no key.

    Examples
    --------
    >>> unsigned_warning("node 3").startswith("node 3: sync messages are not authenticated")
    True
    """
    return (f"{who}: sync messages are not authenticated (anyone who can write the sync topics can send models); "
            f"set {KEY_ENV} or --sync-key-file to sign and verify them")


_epoch_lock = threading.Lock()
_last_epoch = 0


def new_epoch() -> int:
    """A sender epoch: nanoseconds since 1970, strictly increasing within this process.

    Examples
    --------
    >>> a, b = new_epoch(), new_epoch()
    >>> b > a > 0
    True
    """
    global _last_epoch
    with _epoch_lock:
        _last_epoch = max(time.time_ns(), _last_epoch + 1)
        return _last_epoch


def compute_mac(secret: bytes, topic: str, sender: str, epoch: int, counter: int, key: bytes | None,
                value: bytes) -> bytes:
    """HMAC-SHA256 of one sync record (32 bytes); see the module doc for what it covers.

    Examples
    --------
    >>> m = compute_mac(b"k" * 16, "up", "0", 1, 1, None, b"v")
    >>> len(m), m == compute_mac(b"k" * 16, "up", "0", 1, 1, b"", b"v")   # no key differs from an empty key
    (32, False)
    """
    h = hmac.new(secret, _DOMAIN, hashlib.sha256)
    for part in (topic.encode("ascii"), sender.encode("utf-8")):
        h.update(struct.pack("<I", len(part)))
        h.update(part)
    h.update(struct.pack("<QQ", epoch, counter))
    if key is None:
        h.update(struct.pack("<I", _NONE))
    else:
        h.update(struct.pack("<I", len(key)))
        h.update(key)
    h.update(struct.pack("<Q", len(value)))
    h.update(value)
    return h.digest()


def up_sender(node: int | None, token: str | None = None) -> str | None:
    """The sender a ``sync.up`` message must be signed by: its node id, or ``auto:<token>`` for an id claim.

    Examples
    --------
    >>> up_sender(3), up_sender(None, "ab12"), up_sender(None)
    ('3', 'auto:ab12', None)
    """
    if node is not None:
        return str(node)
    return None if token is None else f"auto:{token}"


def _check_topic(topic: str) -> None:
    if topic not in TOPICS:
        raise ConfigError(f"topic must be one of {TOPICS}, got {topic!r}")


def _check_secret(secret) -> bytes:
    if not isinstance(secret, (bytes, bytearray)) or len(secret) < MIN_KEY_BYTES:
        raise ConfigError(f"the sync key must be at least {MIN_KEY_BYTES} bytes")
    return bytes(secret)


class SyncSigner:
    """Signs the records one sender writes on one sync topic.

    Parameters
    ----------
    secret
        The shared key (at least :data:`MIN_KEY_BYTES`).
    topic
        ``"up"`` (a node) or ``"down"`` (the sync service).
    epoch
        The sender's epoch; default :func:`new_epoch` (a restart is a newer epoch).

    Examples
    --------
    >>> s = SyncSigner(b"x" * 16, "down", epoch=7)
    >>> h = dict(s.sign(b"hello", sender="sync"))
    >>> h["sl-from"], h["sl-epoch"], h["sl-ctr"], len(h["sl-sig"])
    (b'sync', b'7', b'1', 64)
    >>> dict(s.sign(b"hello", sender="sync"))["sl-ctr"]
    b'2'
    """

    def __init__(self, secret: bytes, topic: str, epoch: int | None = None):
        self._secret = _check_secret(secret)
        _check_topic(topic)
        self.topic = topic
        self.epoch = new_epoch() if epoch is None else int(epoch)
        self.counter = 0
        self._lock = threading.Lock()  # a node signs from its loop and its shutdown

    def sign(self, value: bytes, key: bytes | None = None, sender: str = SYNC_SENDER) -> list:
        """The Kafka headers (``[(name, bytes)]``) that sign ``value`` sent with ``key`` by ``sender``."""
        with self._lock:
            self.counter += 1
            ctr = self.counter
        mac = compute_mac(self._secret, self.topic, sender, self.epoch, ctr, key, bytes(value))
        return [("sl-from", sender.encode("utf-8")), ("sl-epoch", str(self.epoch).encode()),
                ("sl-ctr", str(ctr).encode()), ("sl-sig", mac.hex().encode())]


@dataclass(frozen=True)
class Verdict:
    """What :meth:`SyncVerifier.verify` found: ``reason`` None (accepted) or one of :data:`AUTH_REASONS`."""

    reason: str | None
    sender: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.reason is None


class ReplayWindow:
    """The last accepted ``(epoch, counter)`` of each sender: newer passes, anything else is a replay.

    At most ``max_senders`` senders are remembered (the least recently accepted is forgotten).

    Examples
    --------
    >>> w = ReplayWindow()
    >>> w.check("0", 5, 1), w.accept("0", 5, 1)
    (None, None)
    >>> w.check("0", 5, 1), w.check("0", 4, 9), w.check("0", 5, 2), w.check("0", 6, 1)
    ('replayed', 'replayed', None, None)
    """

    def __init__(self, max_senders: int = 4096):
        self.max_senders = int(max_senders)
        self.last: OrderedDict[str, tuple[int, int]] = OrderedDict()

    def check(self, sender: str, epoch: int, counter: int) -> str | None:
        """``"replayed"`` unless ``(epoch, counter)`` is after the sender's last accepted one; else None."""
        seen = self.last.get(sender)
        if seen is not None and (epoch, counter) <= seen:
            return "replayed"
        return None

    def accept(self, sender: str, epoch: int, counter: int) -> None:
        """Remember ``(epoch, counter)`` as the sender's last accepted one."""
        self.last[sender] = (epoch, counter)
        self.last.move_to_end(sender)
        while len(self.last) > self.max_senders:
            self.last.popitem(last=False)


class SyncVerifier:
    """Checks the signature, sender and freshness of the records read from one sync topic.

    Parameters
    ----------
    secret
        The shared key.
    topic
        ``"up"`` (the sync service reads) or ``"down"`` (a node reads).
    allowed
        Which senders may write this topic (a predicate); default: ``"sync"`` alone on ``down``,
        anyone but ``"sync"`` on ``up``.
    max_senders
        Senders whose last counter is remembered (see :class:`ReplayWindow`).

    Examples
    --------
    >>> key = b"k" * 16
    >>> fake = SyncSigner(key, "up").sign(b"send", sender="0")   # a node's signature on the down topic
    >>> SyncVerifier(key, "down").verify(fake, None, b"send").reason
    'forged'
    >>> SyncVerifier(key, "down").verify(SyncSigner(key, "down").sign(b"send", sender="7"), None, b"send").reason
    'unknown_sender'
    >>> SyncVerifier(key, "down").verify(None, None, b"send").detail
    'unsigned: no sl-sig header'
    """

    def __init__(self, secret: bytes, topic: str, allowed: Callable[[str], bool] | None = None,
                 max_senders: int = 4096):
        self._secret = _check_secret(secret)
        _check_topic(topic)
        self.topic = topic
        if allowed is None:
            allowed = (lambda s: s == SYNC_SENDER) if topic == "down" else (lambda s: s != SYNC_SENDER)
        self.allowed = allowed
        self.window = ReplayWindow(max_senders)

    def verify(self, headers, key, value) -> Verdict:
        """Accept (and remember) or refuse one record; never raises (a refusal says why)."""
        try:
            return self._verify(headers, key, value)
        except Exception as exc:  # hostile headers of a shape nothing above foresaw
            return Verdict("forged", None, f"unreadable signature headers: {type(exc).__name__}")

    def _verify(self, headers, key, value) -> Verdict:
        got, problem = _read_headers(headers)
        if problem is not None:
            return Verdict("forged", None, problem)
        sender, epoch, ctr, sig = got
        if key is not None and not isinstance(key, (bytes, bytearray, memoryview)):
            return Verdict("forged", sender, "the record key is not bytes")
        if not isinstance(value, (bytes, bytearray, memoryview)):
            return Verdict("forged", sender, "the record value is not bytes")
        mac = compute_mac(self._secret, self.topic, sender, epoch, ctr, None if key is None else bytes(key),
                          bytes(value))
        if not hmac.compare_digest(mac.hex().encode(), sig):
            return Verdict("forged", sender, f"wrong signature (sender {sender!r})")
        if not self.allowed(sender):
            return Verdict("unknown_sender", sender, f"sender {sender!r} may not write sync.{self.topic}")
        if self.window.check(sender, epoch, ctr) is not None:
            last = self.window.last[sender]
            return Verdict("replayed", sender, f"sender {sender!r} epoch {epoch} counter {ctr} is not after the "
                                               f"last accepted epoch {last[0]} counter {last[1]}")
        self.window.accept(sender, epoch, ctr)
        return Verdict(None, sender)


def _read_headers(headers) -> tuple[tuple | None, str | None]:
    """``((sender, epoch, counter, mac hex bytes), None)`` from Kafka headers, or ``(None, what is wrong)``."""
    found: dict[str, bytes] = {}
    for item in (headers or ()):
        name, raw = item
        if name not in HEADERS:
            continue  # other headers are not signed, and change nothing here
        if name in found:
            return None, f"header {name} given twice"
        if not isinstance(raw, (bytes, bytearray)):
            return None, f"header {name} is not bytes"
        found[name] = bytes(raw)
    if "sl-sig" not in found:
        return None, "unsigned: no sl-sig header"
    missing = [h for h in HEADERS if h not in found]
    if missing:
        return None, f"signature headers missing: {', '.join(missing)}"
    if not _HEXMAC.fullmatch(found["sl-sig"]):
        return None, "sl-sig is not 64 lowercase hex digits"
    numbers = []
    for name in ("sl-epoch", "sl-ctr"):
        if not _NUMBER.fullmatch(found[name]) or int(found[name]) > _U64_MAX:
            return None, f"{name} is not a decimal number below 2**64"
        numbers.append(int(found[name]))
    raw = found["sl-from"]
    if not raw or len(raw) > _MAX_SENDER_BYTES:
        return None, f"sl-from must be 1 to {_MAX_SENDER_BYTES} bytes"
    try:
        sender = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "sl-from is not UTF-8"
    return (sender, numbers[0], numbers[1], found["sl-sig"]), None


class Refusals:
    """Counts of refused records by reason, and when to say so in the log (at once, then every ``every`` s).

    Examples
    --------
    >>> r = Refusals(every=10.0, clock=iter([0.0, 1.0, 12.0]).__next__)
    >>> [r.note("forged") for _ in range(3)], r.by_reason["forged"], r.total
    ([True, False, True], 3, 3)
    """

    def __init__(self, every: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.by_reason = dict.fromkeys(AUTH_REASONS, 0)
        self.every, self._clock = every, clock
        self._next_log = -float("inf")

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def note(self, reason: str) -> bool:
        """Count one refusal; whether a warning is due (not more than one per ``every`` seconds)."""
        self.by_reason[reason] += 1
        now = self._clock()
        if now >= self._next_log:
            self._next_log = now + self.every
            return True
        return False
