"""What the node and sync services share: stop, status and the run scaffolding.

A service's :meth:`Service.run` blocks (run it in a thread or a process): it sets up
(``_setup``, which leaves ``_state`` at ``"running"`` unless it was stopped meanwhile), runs
``_loop`` until :meth:`Service.stop`, the ``stop_event``, SIGINT/SIGTERM (main thread only) or
``max_seconds``, and always ends with ``_shutdown``. :meth:`Service.status` is the latest
status dict, safe to read from any thread.
"""

from __future__ import annotations

import logging
import signal
import threading

from streamlearn.kafka.wire import positive

__all__ = ["Service", "StopSignals"]

log = logging.getLogger(__name__)


class StopSignals:
    """Context manager: SIGINT/SIGTERM set ``event`` while inside (main thread only; elsewhere a no-op).

    A second Ctrl-C (SIGINT with ``event`` already set) raises :class:`KeyboardInterrupt` at once: a
    service still blocked where the event is not looked at (kafka-python's clients waiting up to
    30 s for a broker that does not answer) then ends now, its shutdown closing what it opened.
    """

    def __init__(self, event: threading.Event):
        self.event = event
        self.received = False  # a signal set the event (not a stop asked for otherwise)
        self._saved: dict = {}

    def _handler(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            if self.event.is_set():
                raise KeyboardInterrupt
            # logging's handler locks are reentrant: safe from a handler in the thread that may hold them
            log.warning("stopping; Ctrl-C again quits at once")
        self.received = True
        self.event.set()

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        self._saved.clear()


class Service:
    """Base of the long-running services. Subclasses implement ``_setup``, ``_loop(stop_event,
    max_seconds)`` and ``_shutdown`` and publish their status with ``_set_status``."""

    def __init__(self, config, metrics=None):
        self.config = config
        self.metrics = metrics
        self._stop = threading.Event()
        self._external_stop: threading.Event | None = None
        self._lock = threading.Lock()
        self._status: dict = {}
        self._state = "new"

    def stop(self) -> None:
        """Ask :meth:`run` to finish (thread-safe)."""
        self._stop.set()

    def status(self) -> dict:
        """The latest status (a dict; empty before the service started)."""
        with self._lock:
            return dict(self._status)

    def run(self, stop_event: threading.Event | None = None, max_seconds: float | None = None) -> dict:
        """Run until stopped (:meth:`stop`, ``stop_event``, SIGINT/SIGTERM) or ``max_seconds`` passed.

        Returns the final status. Errors while starting raise; the shutdown runs in every case.
        """
        positive("max_seconds", max_seconds, allow_none=True)
        self._external_stop = stop_event
        try:
            with StopSignals(self._stop):  # from the start: Ctrl-C while waiting to connect stops too
                self._setup()
                if self._state == "running":
                    self._loop(stop_event, max_seconds)
        finally:
            self._shutdown()
        return self.status()

    def _stopping(self) -> bool:
        return self._stop.is_set() or (self._external_stop is not None and self._external_stop.is_set())

    def _set_status(self, status: dict) -> None:
        with self._lock:
            self._status = status

    def _setup(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _loop(self, stop_event, max_seconds) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _shutdown(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError
