"""Fixtures shared by every test folder: one real Tansu broker for the whole session (never a skip)."""

from __future__ import annotations

import itertools

import pytest

from streamlearn.kafka.broker import EmbeddedBroker
from streamlearn.kafka.config import KafkaSettings

_prefixes = itertools.count()


@pytest.fixture(scope="session")
def broker():
    # Fails loudly (BrokerError) when the Tansu binary is missing: never a skip.
    with EmbeddedBroker() as b:
        yield b


@pytest.fixture(scope="session")
def settings(broker):
    return KafkaSettings(bootstrap_servers=broker.bootstrap)


@pytest.fixture
def prefix():
    """A fresh topic prefix per test: tests share one broker but never each other's topics."""
    return f"t{next(_prefixes)}.sl"
