"""tests/servers.py: a missing server skips a test with the package to install, except in CI where it fails."""

from __future__ import annotations

import pytest
from servers import require

import servers


def test_found_tool_is_its_path(monkeypatch):
    monkeypatch.setenv("PATH", "/bin:/usr/bin")
    assert require("coreutils", "no-such-tool-xyz", "sh").endswith("/sh")


def test_missing_tool_skips_naming_the_package_outside_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(servers, "_EXTRA_DIRS", ())
    monkeypatch.setenv("PATH", "")
    with pytest.raises(pytest.skip.Exception, match="promtool is not installed: apt-get install prometheus"):
        require("prometheus", "promtool")


def test_missing_tool_fails_in_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr(servers, "_EXTRA_DIRS", ())
    monkeypatch.setenv("PATH", "")
    with pytest.raises(pytest.fail.Exception, match="mosquitto is not installed: apt-get install mosquitto"):
        require("mosquitto", "mosquitto")
