"""Which node a record goes to: a fixed node, round-robin over m nodes, or a value (a field, an MQTT topic level).

A value becomes a node through an explicit map (``mapping``); else, with
``first_seen``, the next free node the first time it appears (0, 1, 2, ... in
order of appearance: one node per distinct value, no collisions; the same for a
file replayed twice, the order of arrival for a live source); else, with
``nodes`` = m, an integer value modulo m and any other value by a stable hash
(BLAKE2b) modulo m; else the value must itself be a node id (``0``, ``"3"``).
"""

from __future__ import annotations

import re
import threading
from typing import Mapping

from streamlearn.connectors.errors import RecordError
from streamlearn.errors import ConfigError
from streamlearn.records import node_of_key

__all__ = ["NodeRouter", "parse_node_map", "MAX_NODE"]

MAX_NODE = 1023  # a node id beyond it is a bad record: one bad value must not create a thousand topics
_INT_RE = re.compile(r"^(0|[1-9][0-9]{0,9})$")
_NO_VALUE = object()


def _count(value, what: str, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"{what} must be an integer >= {lo}, got {value!r}")
    return value


def parse_node_map(text: str) -> dict:
    """``"kitchen=0,garage=1"`` -> ``{"kitchen": 0, "garage": 1}``.

    Examples
    --------
    >>> parse_node_map("kitchen=0, garage=1")
    {'kitchen': 0, 'garage': 1}
    """
    out = {}
    for item in str(text).split(","):
        item = item.strip()
        if not item:
            continue
        value, sep, node = item.rpartition("=")
        if not sep or not value or not _INT_RE.match(node.strip()):
            raise ConfigError(f"node map entries are VALUE=NODE, e.g. kitchen=0; got {item!r}")
        if value in out:
            raise ConfigError(f"node map lists {value!r} twice")
        out[value] = int(node)
    if not out:
        raise ConfigError(f"empty node map {text!r}")
    return out


class NodeRouter:
    """Choose the node of each record.

    Parameters
    ----------
    node
        Every record to this node.
    round_robin
        Records to nodes 0, 1, ..., m-1, 0, ... in turn.
    field
        The record's field whose value chooses the node (``by_value`` is then
        given that value; MQTT and HTTP give a topic level or a URL part instead).
    nodes
        With a value: m, for "integer mod m, else hash mod m".
    mapping
        With a value: value (as text) -> node; any other value is a bad record.
    first_seen
        With a value: number the distinct values 0, 1, 2, ... as they first appear (with ``nodes``: at most that
        many; one more distinct value is a bad record).
    max_node
        Largest node id a value may name.

    Exactly one of ``node``, ``round_robin`` and "by value" (``field``,
    ``nodes``, ``mapping`` or none of them: the value is the node id) applies.

    Examples
    --------
    >>> r = NodeRouter(round_robin=3)
    >>> [r.next_node() for _ in range(4)], r.known_nodes()
    ([0, 1, 2, 0], [0, 1, 2])
    >>> r = NodeRouter(field="day", nodes=7)
    >>> r.by_value(9), r.by_value("9"), r.by_value(3)
    (2, 2, 3)
    >>> r = NodeRouter(field="station", first_seen=True)
    >>> [r.by_value(s) for s in ("Dongsi", "Tiantan", "Dongsi", "Aotizhongxin")], r.first_seen
    ([0, 1, 0, 2], {'Dongsi': 0, 'Tiantan': 1, 'Aotizhongxin': 2})
    >>> NodeRouter(mapping={"kitchen": 0}).by_value("garage")
    Traceback (most recent call last):
    ...
    streamlearn.connectors.errors.RecordError: value not in the node map (field '<node>', value 'garage')
    """

    def __init__(self, *, node: int | None = None, round_robin: int | None = None, field: str | None = None,
                 nodes: int | None = None, mapping: Mapping | None = None, first_seen: bool = False,
                 max_node: int = MAX_NODE):
        self.max_node = _count(max_node, "max_node", 0)
        modes = [node is not None, round_robin is not None, field is not None or nodes is not None
                 or mapping is not None or first_seen]
        if sum(modes) > 1:
            raise ConfigError("choose one node mapping: a fixed node, round-robin, or by value "
                              "(a field or topic level, with nodes= or a node map)")
        if nodes is not None and mapping is not None:
            raise ConfigError("a node map and a node count exclude each other")
        if first_seen and mapping is not None:
            raise ConfigError("numbering values by first appearance and a node map exclude each other")
        self.node = None if node is None else self._check_node(_count(node, "node", 0))
        self.round_robin = None if round_robin is None else _count(round_robin, "round_robin", 1)
        if self.round_robin is not None and self.round_robin - 1 > self.max_node:
            raise ConfigError(f"round_robin: at most {self.max_node + 1} nodes")
        self.field = field
        self.nodes = None if nodes is None else _count(nodes, "nodes", 1)
        if self.nodes is not None and self.nodes - 1 > self.max_node:
            raise ConfigError(f"nodes: at most {self.max_node + 1}")
        self.mapping = None
        if mapping is not None:
            self.mapping = {str(k): self._check_node(_count(v, f"node of {k!r}", 0)) for k, v in mapping.items()}
        self._turn = 0
        # value (as text) -> node, in the order the values came; None: not numbering by first appearance
        self.first_seen: dict | None = {} if first_seen else None
        self._lock = threading.Lock()  # the HTTP connector routes from several threads

    def _check_node(self, node: int) -> int:
        if node > self.max_node:
            raise ConfigError(f"node {node} is above max_node {self.max_node}")
        return node

    @property
    def by_field(self) -> bool:
        """Records carry the value that routes them (in ``field``)."""
        return self.field is not None

    @property
    def fixed(self) -> bool:
        return self.node is not None

    def known_nodes(self) -> list | None:
        """The nodes records can go to, when known before the first record (their topics are created up front)."""
        if self.node is not None:
            return [self.node]
        if self.round_robin is not None:
            return list(range(self.round_robin))
        if self.first_seen is not None:  # 0, 1, ... as values come: at most nodes of them
            return None if self.nodes is None else list(range(self.nodes))
        if self.nodes is not None:
            return list(range(self.nodes))
        if self.mapping is not None:
            return sorted(set(self.mapping.values()))
        return None

    def next_node(self) -> int:
        """The node of a record that carries no routing value (fixed or round-robin)."""
        if self.node is not None:
            return self.node
        if self.round_robin is not None:
            k = self._turn
            self._turn = (k + 1) % self.round_robin
            return k
        raise RecordError("no value to choose the node from", field=self.field or "<node>")

    def by_value(self, value, field: str | None = None) -> int:
        """The node for a routing value (a field's value, an MQTT topic level, a URL part)."""
        where = field or self.field or "<node>"
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            value = int(value)  # JSON 3.0 is node 3
        if isinstance(value, bool) or not isinstance(value, (int, str)) \
                or (isinstance(value, int) and value.bit_length() > 800):
            raise RecordError("cannot choose a node from this value", field=where, value=value)
        text = str(value) if isinstance(value, int) else value.strip()
        if self.mapping is not None:
            node = self.mapping.get(text)
            if node is None:
                raise RecordError("value not in the node map", field=where, value=value)
            return node
        if self.first_seen is not None:
            return self._number(text, where, value)
        if self.nodes is not None:
            return node_of_key(text, self.nodes)  # the rule streamlearn's key split uses too
        if not _INT_RE.match(text) or int(text) > self.max_node:
            raise RecordError(f"must be a node id 0..{self.max_node} (or give a node count or a node map)",
                              field=where, value=value)
        return int(text)

    def _number(self, text: str, where: str, value) -> int:
        node = self.first_seen.get(text)
        if node is None:
            with self._lock:
                node = self.first_seen.get(text)
                if node is None:
                    node = len(self.first_seen)
                    limit = self.max_node + 1 if self.nodes is None else self.nodes
                    if node >= limit:
                        raise RecordError(f"more distinct values than the {limit} nodes", field=where, value=value)
                    self.first_seen[text] = node
        return node

    def __repr__(self) -> str:
        parts = [f"{k}={v!r}" for k, v in (("node", self.node), ("round_robin", self.round_robin),
                                           ("field", self.field), ("nodes", self.nodes),
                                           ("mapping", self.mapping)) if v is not None]
        if self.first_seen is not None:
            parts.append("first_seen=True")
        return f"NodeRouter({', '.join(parts)})"
