"""The command of a file rendered from a single source (`python -m k8s.render_envoy`, `k8s.render_rules`):
write it, or with `--check` only say whether the committed copy is stale."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


def main(module: str, summary: str, output: Path, text: Callable[[], str], argv: Sequence[str] | None) -> int:
    """`python -m <module> [--out FILE] [--check]`: writes `text()` to `output` (or `--out`); with `--check`
    exits 1 when the file differs from it."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=summary)
    parser.add_argument("--out", type=Path, default=output, help=f"file to write (default: {output})")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when --out is stale")
    args = parser.parse_args(argv)
    rendered = text()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.is_file() else None
        if current != rendered:
            print(f"{args.out} is stale: run `python -m {module}`", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(rendered, encoding="utf-8")
    return 0
