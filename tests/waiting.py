"""Polling for a condition in tests that drive real services. No tests here."""

from __future__ import annotations

import time


def wait_until(condition, what: str = "condition", timeout: float = 20.0, every: float = 0.05):
    """The first truthy value of ``condition()`` within ``timeout`` seconds, else an AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = condition()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")
