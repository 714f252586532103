"""The connectors' docstring examples (pytest's --doctest-modules covers streamlearn/ only)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import connectors

MODULES = sorted(m.name for m in pkgutil.iter_modules(connectors.__path__, "connectors.") if m.name != "connectors.__main__")


def test_every_module_is_listed():
    assert {"connectors.schema", "connectors.csv_replay", "connectors.mqtt", "connectors.http_ingest"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
