"""The connectors' docstring examples (pytest's --doctest-modules covers streamlearn/ only)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import streamlearn.connectors as connectors

MODULES = sorted(m.name for m in pkgutil.iter_modules(connectors.__path__, "streamlearn.connectors.")
                 if m.name != "streamlearn.connectors.__main__")


def test_every_module_is_listed():
    assert {f"streamlearn.connectors.{m}" for m in ("schema", "csv_replay", "mqtt", "http_ingest")} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
