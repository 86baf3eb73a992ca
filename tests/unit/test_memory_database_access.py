"""Row-level security holds only if user data is read and written through `memory.database.Database`: a
pooled connection's session may still be scoped to the user it served last (`Database.statements`), so a
query sent on the pool directly would run as that user instead of as nobody."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DIRECT = re.compile(
    r"(?<![A-Za-z0-9])_?pool\.(acquire|fetch|fetchrow|fetchval|execute|executemany|copy_\w+)\("
)
ALLOWED = {
    "memory/database.py",  # the one door
    # The data keys' table holds no user rows and has no row-level security (wrapped keys by owner).
    "mesh/keystore.py",
    "mesh/postgres.py",  # readiness: SELECT 1
}


def test_only_the_database_module_sends_queries_on_the_memory_pool() -> None:
    found = {
        str(path.relative_to(ROOT))
        for folder in ("memory", "mesh")
        for path in (ROOT / folder).rglob("*.py")
        if DIRECT.search(path.read_text())
    }
    assert found <= ALLOWED, f"queries on the pool outside memory.database: {sorted(found - ALLOWED)}"
    assert {"memory/database.py", "mesh/keystore.py"} <= found, "the pattern finds the known uses"
