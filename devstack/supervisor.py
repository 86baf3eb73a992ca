"""Restarts a part of the mesh that exits unexpectedly, the way the kubelet restarts a container.

    exited ──> wait the backoff delay ──> restarted ──> ready again (the part's own readiness check)
      ^                                       │
      └────── exits again (delay doubles) ────┘     runs `reset_after` seconds: the delay starts over

Each exit (exit code or signal, uptime, delay) and each restart is logged on the launcher's output
(logger `devstack.supervisor`) and written into the part's own log file. A deliberate stop — the whole
stack (Ctrl-C, SIGTERM) or one part (`stop_part`, an operator's action) — is never undone: `stop` and
`stop_part` mark the part before its process is signalled, and a restart is only made under the same lock.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from devstack.process import ManagedProcess

log = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(frozen=True)
class RestartPolicy:
    """Kubelet-like exponential backoff (the kubelet uses 10 s doubling to 5 min, reset after 10 min;
    a laptop's mesh wants its parts back sooner)."""

    initial_delay: float = 1.0
    """Seconds before the first restart after a part has run well."""
    factor: float = 2.0
    """Each exit that follows a short run multiplies the delay by this."""
    max_delay: float = 30.0
    """The delay never exceeds this."""
    reset_after: float = 60.0
    """A part that ran this many seconds before exiting is restarted after `initial_delay` again."""


class Backoff:
    """The delay before each restart of one part; time comes from `clock` (tests pass a fake one)."""

    def __init__(self, policy: RestartPolicy, clock: Clock = time.monotonic) -> None:
        self._policy = policy
        self._clock = clock
        self._exits = 0
        self._started_at = clock()

    def started(self) -> None:
        """The part was (re)started now."""
        self._started_at = self._clock()

    def uptime(self) -> float:
        """Seconds since the last (re)start."""
        return self._clock() - self._started_at

    def next_delay(self) -> float:
        """The part exited now: how long to wait before restarting it."""
        if self.uptime() >= self._policy.reset_after:
            self._exits = 0
        delay = min(self._policy.max_delay, self._policy.initial_delay * self._policy.factor**self._exits)
        self._exits += 1
        return delay


def describe_exit(returncode: int) -> str:
    """`exit code 1`, or `signal 9 (SIGKILL)` for a process a signal ended."""
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"
    return f"signal {-returncode} ({name})"


@dataclass(frozen=True)
class Part:
    """One supervised part: its process, how to start it again, and when it is ready."""

    name: str
    process: ManagedProcess
    ready: Callable[[], bool]
    spawn: Callable[[], None]
    """Starts the process again (PostgreSQL first clears the stale lock file of a killed server)."""


@dataclass(frozen=True)
class SupervisorEvent:
    """Something the supervisor saw or did, for the log and for tools (`bench.chaos`) that measure it."""

    at: float
    """`time.monotonic()` when it happened."""
    part: str
    kind: str
    """`exited`, `restarted`, `ready`, `not-ready`; `stopped` and `started` for `stop_part`/`start_part`."""
    message: str
    restarts: int
    """Restarts of this part so far."""


@dataclass
class _Supervised:
    part: Part
    backoff: Backoff
    held: bool = False
    """Stopped on purpose (`stop_part`): not restarted until `start_part`."""
    restarts: int = 0
    thread: threading.Thread | None = field(default=None, repr=False)


class Supervisor:
    """Watches parts from threads of its own (one per part), so a slow restart delays no other."""

    def __init__(
        self,
        policy: RestartPolicy | None = None,
        *,
        clock: Clock = time.monotonic,
        poll_interval: float = 0.1,
        ready_timeout: float = 90.0,
    ) -> None:
        self.policy = policy or RestartPolicy()
        self._clock = clock
        self._poll_interval = poll_interval
        self._ready_timeout = ready_timeout
        self._parts: dict[str, _Supervised] = {}
        self._changed = threading.Condition()
        """Guards `_stopping`, each part's `held` and every restart; notified when either flag is set."""
        self._stopping = False
        self.events: list[SupervisorEvent] = []

    def watch(self, part: Part) -> None:
        """Supervise `part`, whose process is running and ready."""
        supervised = _Supervised(part, Backoff(self.policy, self._clock))
        with self._changed:
            if self._stopping:
                return
            self._parts[part.name] = supervised
            self._follow(supervised)

    def stop_part(self, name: str) -> None:
        """Stop one part on purpose (an operator stopping a server): it stays down until `start_part`."""
        supervised = self._parts[name]
        with self._changed:
            supervised.held = True
            self._changed.notify_all()
        self._record(supervised, "stopped", "stopped on purpose; it stays down until started again")
        supervised.part.process.stop()
        self._join(supervised)

    def start_part(self, name: str) -> None:
        """Start a part stopped with `stop_part` again, wait until it is ready, and supervise it again."""
        supervised = self._parts[name]
        with self._changed:
            if self._stopping or not supervised.held:
                return
            supervised.held = False
            supervised.part.spawn()
            supervised.backoff.started()
            self._record(
                supervised, "started", f"started again on purpose (pid {supervised.part.process.pid})"
            )
        self._await_ready(supervised, self._clock())
        with self._changed:
            if not self._stopping and not supervised.held:
                self._follow(supervised)

    def stop(self) -> None:
        """Restart nothing any more (the stack is stopping); returns once no restart is under way."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        for supervised in list(self._parts.values()):
            self._join(supervised)

    def _follow(self, supervised: _Supervised) -> None:
        """Start the thread watching `supervised` (the caller holds `_changed`)."""
        supervised.thread = threading.Thread(
            target=self._watch, args=(supervised,), name=f"supervise-{supervised.part.name}", daemon=True
        )
        supervised.thread.start()

    @staticmethod
    def _join(supervised: _Supervised) -> None:
        thread = supervised.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _interrupted(self, supervised: _Supervised) -> bool:
        return self._stopping or supervised.held

    def _pause(self, supervised: _Supervised, seconds: float) -> bool:
        """Wait `seconds`; True as soon as the part or the stack is stopped on purpose."""
        with self._changed:
            return self._changed.wait_for(lambda: self._interrupted(supervised), seconds)

    def _record(self, supervised: _Supervised, kind: str, message: str, level: int = logging.INFO) -> None:
        name = supervised.part.name
        self.events.append(SupervisorEvent(self._clock(), name, kind, message, supervised.restarts))
        log.log(level, "%s %s", name, message)
        supervised.part.process.note(
            f"devstack: {name} {message}", level=level, supervisor_event=kind, restarts=supervised.restarts
        )

    def _watch(self, supervised: _Supervised) -> None:
        process = supervised.part.process
        while not self._pause(supervised, self._poll_interval):
            returncode = process.poll()
            if returncode is None:
                continue
            with self._changed:
                if self._interrupted(supervised):
                    return
            uptime = supervised.backoff.uptime()
            delay = supervised.backoff.next_delay()
            process.kill_leftovers()
            self._record(
                supervised,
                "exited",
                f"exited unexpectedly with {describe_exit(returncode)} after {uptime:.1f} s; "
                f"restarting in {delay:g} s",
                logging.WARNING,
            )
            if self._restart(supervised, delay):
                self._await_ready(supervised, self._clock())
            else:
                return

    def _restart(self, supervised: _Supervised, delay: float) -> bool:
        """Restart the part after `delay` (again, backing off, while it cannot even be started); False
        when it was stopped on purpose meanwhile."""
        while not self._pause(supervised, delay):
            with self._changed:
                if self._interrupted(supervised):
                    return False
                supervised.backoff.started()
                supervised.restarts += 1
                try:
                    supervised.part.spawn()
                except OSError as error:
                    delay = supervised.backoff.next_delay()
                    message = f"could not be restarted ({error}); trying again in {delay:g} s"
                    self._record(supervised, "exited", message, logging.ERROR)
                    continue
                pid = supervised.part.process.pid
                self._record(supervised, "restarted", f"restarted (pid {pid}, restart {supervised.restarts})")
                return True
        return False

    def _await_ready(self, supervised: _Supervised, since: float) -> None:
        """Readiness after a restart is checked the way it is at start; an exit is left to `_watch`."""
        process = supervised.part.process
        while not self._interrupted(supervised):
            if process.poll() is not None:
                return
            if supervised.part.ready():
                self._record(
                    supervised, "ready", f"ready again ({self._clock() - since:.1f} s after starting)"
                )
                return
            if self._clock() - since > self._ready_timeout:
                self._record(
                    supervised,
                    "not-ready",
                    f"not ready {self._ready_timeout:.0f} s after starting (see its log)",
                    logging.WARNING,
                )
                return
            self._pause(supervised, self._poll_interval)
