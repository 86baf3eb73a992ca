"""Debian's Prometheus (`/usr/bin/prometheus`, package `prometheus`) scraping the mesh on loopback, with the
SLO rules of `observability/rules/` loaded: what `make run PROMETHEUS=1` starts, and what the end-to-end
test of the rules and the first-token histogram runs (tests/e2e/test_prometheus_e2e.py).

It scrapes every service's side port (`/metrics`, job = the service) and Envoy's admin port
(`/stats/prometheus`, job `envoy`), in OpenMetrics when the service offers it (exemplars kept:
`--enable-feature=exemplar-storage`), and evaluates the rules as often as it scrapes. Its data lives in
`data_dir`; the configuration is written there on every start.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from devstack.process import ManagedProcess, port_open

ROOT = Path(__file__).resolve().parent.parent
RULE_FILES = (ROOT / "observability" / "rules" / "athena-slo.yaml",)
"""The rules every Prometheus of ours loads (the one source; k8s renders the same file)."""


def prometheus_binary() -> str | None:
    """The `prometheus` executable (Debian installs it in /usr/bin), or None."""
    return shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )


@dataclass(frozen=True)
class ScrapeTarget:
    job: str
    port: int
    path: str = "/metrics"


def configuration(
    targets: Sequence[ScrapeTarget], *, interval_seconds: float, rule_files: Sequence[Path] = RULE_FILES
) -> dict[str, object]:
    """The prometheus.yml scraping `targets` on 127.0.0.1 every `interval_seconds` (rules evaluated as
    often)."""
    interval = f"{max(1, round(interval_seconds * 1000))}ms"
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [
            {
                "job_name": target.job,
                "metrics_path": target.path,
                "static_configs": [{"targets": [f"127.0.0.1:{target.port}"]}],
            }
            for target in targets
        ],
    }


class EmbeddedPrometheus:
    """One Prometheus server on `127.0.0.1:port` keeping its data under `data_dir`."""

    def __init__(
        self,
        port: int,
        data_dir: Path,
        log_path: Path,
        targets: Sequence[ScrapeTarget],
        *,
        interval_seconds: float = 5.0,
        rule_files: Sequence[Path] = RULE_FILES,
    ) -> None:
        binary = prometheus_binary()
        if binary is None:
            raise FileNotFoundError("prometheus is not installed (Debian: apt-get install prometheus)")
        self.port = port
        self.data_dir = data_dir
        self.config_path = data_dir / "prometheus.yml"
        self._config = configuration(targets, interval_seconds=interval_seconds, rule_files=rule_files)
        self.process = ManagedProcess(
            name="prometheus",
            argv=[
                binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={data_dir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--enable-feature=exemplar-storage",
                "--log.level=warn",
            ],
            log_path=log_path,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_configuration(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self._config, sort_keys=False))

    def start(self, timeout: float = 30.0) -> None:
        self.write_configuration()
        self.process.start()
        self.process.wait_ready(self.ready, timeout)

    def spawn(self) -> None:
        """Start again after an exit (the supervisor's restart), without waiting."""
        self.write_configuration()
        self.process.start()

    def ready(self) -> bool:
        import urllib.request

        if not port_open(self.port):
            return False
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:  # noqa: S310 (loopback)
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        self.process.stop()
