"""Conventions for raw text records, shared by the streams and the connectors.

Kept free of heavy imports so that ``connectors`` can use it without loading the streams:
how a CSV delimiter is guessed, and which node a key value goes to.
"""

from __future__ import annotations

import hashlib
import re

from streamlearn.errors import ConfigError

__all__ = ["DELIMITERS", "parse_delimiter", "sniff_delimiter", "key_hash", "is_int_key", "node_of_key"]

DELIMITERS = (",", "\t", ";", "|")
_NAMED = {"comma": ",", "tab": "\t", "\\t": "\t", "semicolon": ";", "pipe": "|", "auto": None}
# An integer key: no sign but "-", no leading zeros, at most 10 digits ("007" and "1e3" are text keys).
_INT_KEY = re.compile(r"^-?(0|[1-9][0-9]{0,9})$")


def parse_delimiter(text: str | None) -> str | None:
    """A ``--delimiter`` value: one character, or comma/tab/semicolon/pipe/auto (None: guess).

    Examples
    --------
    >>> parse_delimiter("tab"), parse_delimiter(";"), parse_delimiter("auto")
    ('\\t', ';', None)
    """
    if text is None:
        return None
    if text.lower() in _NAMED:
        return _NAMED[text.lower()]
    if len(text) != 1 or text in "\r\n\"":
        raise ConfigError(f"delimiter must be one character or comma, tab, semicolon, pipe, auto; got {text!r}")
    return text


def sniff_delimiter(header: str) -> str:
    """The most frequent of ``,`` tab ``;`` ``|`` in the header line (``,`` if none).

    Examples
    --------
    >>> sniff_delimiter("a;b;c"), sniff_delimiter("a\\tb,c\\td")
    (';', '\\t')
    """
    counts = [(header.count(d), -i, d) for i, d in enumerate(DELIMITERS)]
    best = max(counts)
    return best[2] if best[0] > 0 else ","


def key_hash(text: str) -> int:
    """A 64-bit hash of a text key, the same in every process and run (BLAKE2b; Python's ``hash`` is salted).

    >>> key_hash("press-1")
    3448320258102867446
    """
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def is_int_key(text: str) -> bool:
    """Whether a (stripped) key text is an integer key: ``"3"``, ``"-12"``; not ``"007"``, ``"3.0"``."""
    return bool(_INT_KEY.match(text))


def node_of_key(text: str, nodes: int) -> int:
    """The node of a key value given as (stripped) text: an integer key modulo ``nodes``, any other by its hash.

    Examples
    --------
    >>> node_of_key("7", 3), node_of_key("-1", 3), node_of_key("press-1", 3) == node_of_key("press-1", 3)
    (1, 2, True)
    """
    if _INT_KEY.match(text):
        return int(text) % nodes
    return key_hash(text) % nodes
