"""`python -m offline_model [--help]`: settings from the environment (or flags), then serve."""

from __future__ import annotations

import uvloop

from mesh.telemetry import configure_logging
from offline_model.server import serve
from offline_model.settings import OfflineModelSettings


def main() -> None:
    settings = OfflineModelSettings(_cli_parse_args=True, _cli_prog_name="python -m offline_model")
    configure_logging("offline-model", settings.log_level)
    uvloop.run(serve(settings))


if __name__ == "__main__":
    main()
