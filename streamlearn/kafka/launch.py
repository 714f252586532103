"""Start ``streamlearn`` commands as processes forked from one server that imported streamlearn once.

A node process spends about 2 s of CPU importing torch, numba, river, scipy and kafka-python and
loading its compiled code before it reads a sample: the demo's twelve nodes on the Beijing file, with
the sync service and the producer, spent about 14 s of a two-core machine doing that before any
learned. Forked from a server that did it once (:mod:`streamlearn.kafka.preload`), each starts in
milliseconds and shares those pages with the others.

Each child is still a process of its own running the command a user would type
(``streamlearn.cli.main(argv)``): in a session of its own (Ctrl-C in the terminal reaches the parent
only), with the environment it is given, stdout and stderr line by line into its log file, and
named in ``top`` and ``ps -o comm`` as the parent calls it (``node-3``; its command line stays
the server's). :class:`Child` answers as much of
:class:`subprocess.Popen` as the demo uses; exit codes are as Popen's (-N for signal N).

The server is ``python -m streamlearn.kafka.launch``, talking JSON lines over its stdin and stdout
(no pickle, nothing of the parent's ``__main__`` run again): a request
``{"name", "args", "log", "env"}`` is answered ``{"started": pid}``; each child's end comes as
``{"pid", "exit"}``. It ends when its stdin closes; children it started run on (a child whose
server is gone ends with exit code -1: the real one is not known). Off Linux (macOS's system
libraries are not safe to fork, Windows has no fork), or with ``fork=False``, :class:`Launcher`
runs each command as ``python -m streamlearn.cli`` with :mod:`subprocess`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

from streamlearn.errors import StreamlearnError

__all__ = ["Child", "Launcher"]

READY_TIMEOUT = 120.0  # s for the server to import everything (a loaded machine, a cold disk)


class Child:
    """A command the launcher started, answering as :class:`subprocess.Popen` does."""

    def __init__(self, launcher: "Launcher", pid: int):
        self._launcher = launcher
        self.pid = pid

    @property
    def returncode(self) -> int | None:
        return self.poll()

    def poll(self) -> int | None:
        launcher = self._launcher
        code = launcher._exits.get(self.pid)
        if code is None and launcher._closed and not _alive(self.pid):
            code = launcher._exits.setdefault(self.pid, -1)  # its server is gone: the code is not known
        return code

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(f"streamlearn child {self.pid}", timeout)
            with self._launcher._cond:  # woken by its exit; looks again now and then should the server be gone
                self._launcher._cond.wait(0.2 if left is None else min(0.2, left))
        return self.poll()

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:  # ended meanwhile: its exit is on its way
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Launcher:
    """Starts ``streamlearn`` commands from one preloaded server (started now: it imports while the caller
    goes on); :meth:`close` ends it, leaving running children running.

    With ``fork=False``, or off Linux, each command is a fresh interpreter (:class:`subprocess.Popen`).
    """

    def __init__(self, fork: bool = True):
        self._exits: dict[int, int] = {}
        self._started: list[int] = []
        self._cond = threading.Condition()
        self._lock = threading.Lock()  # one request at a time: answers come in order
        self._server = None
        self._closed = False
        if fork and sys.platform.startswith("linux"):  # macOS: system libraries are not safe to fork
            self._server = subprocess.Popen([sys.executable, "-m", "streamlearn.kafka.launch"], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, text=True, bufsize=1, start_new_session=True)
            self._reader = threading.Thread(target=self._read, name="streamlearn-launcher", daemon=True)
            self._reader.start()

    def _read(self) -> None:
        for line in self._server.stdout:
            try:
                msg = json.loads(line)
            except ValueError:  # not ours (the server's stdout carries nothing else)
                continue
            with self._cond:
                if "started" in msg:
                    self._started.append(msg["started"])
                elif "pid" in msg:
                    self._exits[msg["pid"]] = msg["exit"]
                self._cond.notify_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _answer(self, timeout: float):
        with self._cond:
            if not self._cond.wait_for(lambda: self._started or self._closed, timeout):
                raise StreamlearnError(f"launcher: no answer from its server within {timeout:.0f} s")
            if not self._started:
                raise StreamlearnError(f"launcher: its server ended (exit {self._server.poll()})")
            return self._started.pop(0)

    def start(self, name: str, args: list, log_path: str, env: dict):
        """Start ``streamlearn <args>`` as a process named ``name``, its output into ``log_path`` (truncated).

        Returns a :class:`Child` (forked) or a :class:`subprocess.Popen` (not forked)."""
        args = [str(a) for a in args]
        with open(log_path, "w") as log:
            if self._server is None:
                return subprocess.Popen([sys.executable, "-m", "streamlearn.cli", *args], stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                        start_new_session=True)
        with self._lock:
            request = {"name": name, "args": args, "log": os.path.abspath(log_path), "env": dict(env)}
            try:
                self._server.stdin.write(json.dumps(request) + "\n")
                self._server.stdin.flush()
            except (BrokenPipeError, ValueError):
                raise StreamlearnError(f"launcher: its server ended (exit {self._server.poll()})") from None
            pid = self._answer(READY_TIMEOUT)
        return Child(self, pid)

    def close(self) -> None:
        if self._server is None or self._server.stdin.closed:
            return
        self._server.stdin.close()  # the server ends; its children run on
        try:
            self._server.wait(10)
        except subprocess.TimeoutExpired:
            self._server.kill()
            self._server.wait()
        self._reader.join(5)

    def __enter__(self) -> "Launcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- the server and its children -------------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process now has that pid: ours is gone
        return False
    try:  # an ended orphan that nobody reaps (a container's PID 1 may not) is a zombie: gone too
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):  # not Linux
        return True


def _name_process(name: str) -> None:
    """The process's name in ``ps``/``top`` and ``/proc/PID/comm`` (Linux; 15 bytes)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):  # not Linux: the name is cosmetic
        pass


def _child(request: dict) -> int:
    """In the forked child: its session, name, environment and log, then the command; returns its exit code."""
    os.setsid()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the server ignores it; a command must not
    _name_process(request["name"])
    os.environ.clear()
    os.environ.update(request["env"])
    null = os.open(os.devnull, os.O_RDONLY)
    fd = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(null)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # whole lines as they come, for `tail -f`
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    sys.argv = [sys.executable, "-m", "streamlearn.cli", *request["args"]]
    code = 1
    try:
        from streamlearn.cli import main

        code = main(request["args"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=sys.stderr)
    except BaseException:  # what an interpreter prints for an uncaught exception
        import traceback

        traceback.print_exc()
    finally:
        import atexit

        threading._shutdown()  # non-daemon threads joined, as at an interpreter's exit
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    return code if isinstance(code, int) else 1


def _serve() -> None:
    """The server: preload, then fork a child per request line; report every child's end."""
    import selectors

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # the answers get stdout to themselves: whatever else prints goes to stderr
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    import streamlearn.kafka.preload  # noqa: F401  (everything the commands import, once)

    def say(msg: dict) -> None:
        out.write(json.dumps(msg) + "\n")
        out.flush()

    children: set[int] = set()
    sel = selectors.DefaultSelector()
    sel.register(0, selectors.EVENT_READ)
    pending = b""
    while True:
        if sel.select(timeout=0.05):
            chunk = os.read(0, 1 << 16)
            if not chunk:  # the parent closed: end; the children run on
                return
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                pid = os.fork()
                if pid == 0:
                    code = 1
                    try:
                        sel.close()
                        out.close()  # the answers' pipe: the parent sees its end when the server ends
                        code = _child(json.loads(line))
                    finally:  # never back into the server's loop
                        os._exit(code)
                children.add(pid)
                say({"started": pid})
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            children.discard(pid)
            say({"pid": pid, "exit": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    _serve()
