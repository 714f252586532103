"""Where the tests find the real servers and tools they start (Debian packages), and what happens without one.

In CI (``CI=true``) a missing server FAILS the test that needs it: CI must prove the system against real parts.
Elsewhere the test is skipped with one line naming the Debian package, so a newcomer's ``python -m pytest -q``
passes on a machine with only the Python dependencies (Tansu, the Kafka-protocol broker, comes with those).
The full suite's servers: ``apt-get install prometheus mosquitto chromium chromium-driver docker-compose``.
"""

from __future__ import annotations

import os
import shutil

import pytest

__all__ = ["in_ci", "require"]

# Debian installs some servers outside a normal user's PATH.
_EXTRA_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require(package: str, *names: str) -> str:
    """Path of the first executable of ``names`` found; without one, fail (CI) or skip naming ``package``."""
    for name in names:
        exe = shutil.which(name) or next((os.path.join(d, name) for d in _EXTRA_DIRS
                                          if os.access(os.path.join(d, name), os.X_OK)), None)
        if exe:
            return exe
    message = f"{names[0]} is not installed: apt-get install {package}"
    if in_ci():
        pytest.fail(message + " (CI=true: tests that need a server run, never skip)", pytrace=False)
    pytest.skip(message)
