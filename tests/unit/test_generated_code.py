"""gen/ is generated from proto/ (and the vendored third_party/) and committed; this fails when someone
changed one without the other."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _tree(base: Path) -> dict[str, Path]:
    return {str(path.relative_to(base)): path for path in sorted(base.rglob("*")) if path.is_file()}


def test_gen_is_what_buf_generates_from_proto(tmp_path: Path) -> None:
    for name in ("proto", "third_party", "scripts"):
        shutil.copytree(ROOT / name, tmp_path / name)
    for name in ("buf.yaml", "buf.gen.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    (tmp_path / "edge" / "web").mkdir(parents=True)
    (tmp_path / "edge" / "web" / "node_modules").symlink_to(ROOT / "edge" / "web" / "node_modules")
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run([str(bin_dir / "buf"), "generate"], cwd=tmp_path, env=env, check=True, timeout=120)

    fresh, committed = _tree(tmp_path / "gen"), _tree(ROOT / "gen")
    assert sorted(fresh) == sorted(committed), (
        "gen/ lists other files than proto/ generates: run `make proto`"
    )
    stale = [name for name in fresh if not filecmp.cmp(fresh[name], committed[name], shallow=False)]
    assert not stale, f"gen/ is stale for {stale}: run `make proto`"
