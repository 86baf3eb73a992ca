"""`python -m devstack` (what `make run` calls): the whole mesh on loopback until Ctrl-C or SIGTERM. A part
that exits meanwhile is restarted with backoff (1 s, doubling to 30 s), and says so here and in its log."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from devstack.process import StartupError
from devstack.stack import Stack, StackConfig


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack",
        description=__doc__,
        epilog="Ports: ATHENA_<PART>_PORT (EDGE, ROUTER, ...); DATABASE_URL / REDIS_URL: external servers; "
        "OPENAI_API_KEY (and OPENAI_BASE_URL) use a real model instead of the offline one.",
    )
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("ATHENA_DATA_DIR", "var")))
    parser.add_argument(
        "--provider-emulators",
        action="store_true",
        help="also start the Google and Microsoft emulators of the tests and connect accounts there "
        "[ATHENA_PROVIDER_EMULATORS=1]",
    )
    parser.add_argument(
        "--prometheus",
        action="store_true",
        help="also start Debian's Prometheus (apt-get install prometheus) scraping every part, with the SLO "
        "rules of observability/rules/ loaded [ATHENA_PROMETHEUS=1; port ATHENA_PROMETHEUS_PORT, 9090]",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    stopping = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, request_stop)
    config = StackConfig.from_environment(args.data_dir)
    if args.provider_emulators:
        config = dataclasses.replace(config, provider_emulators=True)
    if args.prometheus:
        config = dataclasses.replace(config, prometheus=True)
    stack = Stack(config)
    started = time.monotonic()
    try:
        stack.start()
        model = "offline model" if stack.offline else "OpenAI-compatible model"
        tracing = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        ports = stack.config.ports
        print(
            f"\nAthenaOS is ready in {time.monotonic() - started:.1f} s ({model}): {stack.edge_url}\n"
            f"  grpcurl -plaintext 127.0.0.1:{stack.config.ports.edge} list\n"
            f"  logs: {stack.logs}\n"
            + (f"  traces: every process exports to {tracing} (OTLP/gRPC)\n" if tracing else "")
            + (
                f"  connections: Google and Microsoft are the emulators on :{ports.google_emulator} "
                f"and :{ports.microsoft_emulator} (a demo account that always consents)\n"
                if stack.config.provider_emulators
                else ""
            )
            + (
                f"  prometheus: {stack.prometheus.url} (SLO rules and alerts: {stack.prometheus.url}/alerts; "
                "Grafana dashboard: observability/grafana/turn-path.json)\n"
                if stack.prometheus is not None
                else ""
            )
            + "  Ctrl-C stops everything.\n",
            flush=True,
        )
        while not stopping.is_set():
            time.sleep(0.5)
    except StartupError as error:
        print(stack.describe_failure(error), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("stopping…", flush=True)
        stack.stop()
        print("stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
