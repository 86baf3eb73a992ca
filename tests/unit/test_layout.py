"""Where things live, as rules a reviewer would otherwise check by hand (issue #9's acceptance):

- no runtime module is, or imports, a test double: doubles live in tests/ only (the words that name
  doubles appear nowhere in runtime code, so a search for them finds only tests);
- no service imports another service's package: services meet through their contracts (gen/) and the
  shared runtime (mesh/), which imports no service;
- every service's `__main__` is the shared entry point and nothing else.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("router", "orchestrator", "memory", "auth", "webhooks", "offline_model")
RUNTIME = ("mesh", *SERVICES)
DOUBLE_WORDS = re.compile(r"fake|Fake|InMemory|Scripted")


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imported(path: Path) -> set[str]:
    """Top-level package names `path` imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", RUNTIME)
def test_runtime_code_holds_no_test_double(package: str) -> None:
    named = [
        str(path.relative_to(ROOT)) for path in modules(package) if DOUBLE_WORDS.search(path.read_text())
    ]
    assert named == []
    importing = [
        str(path.relative_to(ROOT)) for path in modules(package) if {"tests", "doubles"} & imported(path)
    ]
    assert importing == []


@pytest.mark.parametrize("package", RUNTIME)
def test_no_service_imports_another_service(package: str) -> None:
    others = set(SERVICES) - {package}
    crossing = {
        str(path.relative_to(ROOT)): sorted(imported(path) & others)
        for path in modules(package)
        if imported(path) & others
    }
    assert crossing == {}


@pytest.mark.parametrize("service", [s for s in SERVICES if s != "offline_model"])
def test_every_service_starts_through_the_shared_entry_point(service: str) -> None:
    source = (ROOT / service / "__main__.py").read_text(encoding="utf-8")
    code = [line for line in source.splitlines() if line.strip() and not line.startswith(('"""', "#"))]
    assert f"main({service.upper()})" in source
    assert len(code) <= 6, code
