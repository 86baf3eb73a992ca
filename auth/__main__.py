"""`python -m auth [serve | migrate | rotate-keys]`: the auth service and its operator commands."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from auth.keys import KeyRingError, rotate_keys
from auth.settings import AuthSettings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m auth",
        description="AthenaOS auth service: sign-in, sessions, access tokens and their keys. "
        "Configured by environment variables (AUTH_*, ATHENA_ENV, ATHENA_DATA_DIR, DATABASE_URL).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("serve", help="run the gRPC service (default)")
    commands.add_parser("migrate", help="apply the auth schema's database migrations, then exit")
    rotate = commands.add_parser(
        "rotate-keys",
        help="add a new signing key; delete keys no unexpired token can name",
        description="Adds a signing key to the key directory. It is published in the JWKS at once and "
        "signs after AUTH_KEY_ACTIVATION_DELAY; keys superseded for longer than the access-token "
        "lifetime plus leeway are deleted. Running services reread the directory every "
        "AUTH_KEY_RELOAD_SECONDS.",
    )
    rotate.add_argument(
        "--keys-dir", type=Path, help="key directory (default: AUTH_KEYS_DIR or data_dir/auth-keys)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    settings = AuthSettings()
    command = arguments.command or "serve"
    if command == "migrate":
        from auth.migrate import apply_migrations

        applied = apply_migrations(settings.database_url)
        print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")
        return 0
    if command == "rotate-keys":
        from auth.server import key_retention

        directory = arguments.keys_dir or settings.signing_keys_dir
        try:
            new, deleted = rotate_keys(
                directory,
                now=datetime.now(UTC),
                activation_delay=settings.key_activation_delay,
                retention=key_retention(settings),
            )
        except (KeyRingError, OSError) as exc:
            print(f"rotating keys failed: {exc}", file=sys.stderr)
            return 1
        print(f"added key {new.kid} in {directory}; deleted {len(deleted)} retired key(s)")
        return 0
    from auth.server import serve

    try:
        asyncio.run(serve(settings))
    except KeyRingError as exc:
        print(f"auth cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
