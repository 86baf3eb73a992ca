"""Child processes that are started, awaited until ready, and always stopped: no orphan, no port left."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

_PICKED: set[int] = set()
FREE_PORTS = range(20_000, 32_768)
"""Where `free_port` picks: below Linux's default range of ephemeral ports (32768-60999), which the kernel
hands to outgoing connections — a port picked there could be taken by any process's next connection
between the pick and the bind of the server it is for."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now and this process has not handed out before."""
    for _ in range(1_000):
        port = random.choice(FREE_PORTS)  # noqa: S311 (a port, not a secret)
        if port in _PICKED:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _PICKED.add(port)
        return port
    raise RuntimeError(f"no free port in {FREE_PORTS.start}-{FREE_PORTS.stop - 1}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


class StartupError(RuntimeError):
    """A child process died or did not become ready in time; the message holds the end of its log."""


@dataclass
class ManagedProcess:
    """One child process with its log file; `start` may be called again once it has exited (a restart)."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 15.0
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _log: IO[bytes] | None = field(default=None, init=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self._log is not None:
            self._log.close()
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            list(self.argv),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(self.env) if self.env is not None else None,
            cwd=self.cwd,
            start_new_session=True,  # Ctrl-C in the terminal reaches the launcher only; it stops us in order
        )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def poll(self) -> int | None:
        """The exit status once the process has ended (negative: the signal that ended it), else None."""
        return None if self.process is None else self.process.poll()

    def kill_leftovers(self) -> None:
        """After the process ended by itself: what it started in its group goes too (PostgreSQL backends
        outliving a killed postmaster would keep its shared memory and its port)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def note(self, message: str, level: int = logging.INFO, **fields: object) -> None:
        """Append one JSON line in the services' log shape to this process's log (the launcher's notes:
        why it stopped, when it was restarted)."""
        line = {
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "level": logging.getLevelName(level),
            "logger": "devstack",
            "message": message,
            **fields,
        }
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a") as log:
            log.write(json.dumps(line) + "\n")

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def wait_ready(self, ready: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise StartupError(f"{self.name} exited during start-up:\n{self.log_tail()}")
            if ready():
                return
            time.sleep(0.1)
        raise StartupError(f"{self.name} was not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Polite signal, then SIGKILL to the whole process group after `stop_timeout`."""
        process = self.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, self.stop_signal)
            try:
                process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        # Leftover children of the group (none expected) go too.
        self.kill_leftovers()
        if self._log is not None:
            self._log.close()
            self._log = None
