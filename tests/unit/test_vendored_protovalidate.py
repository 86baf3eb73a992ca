"""third_party/protovalidate's validate.proto is the one the installed protovalidate engine was built with."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[2]
VENDORED = ROOT / "third_party" / "protovalidate" / "buf" / "validate" / "validate.proto"
SCRIPT = ROOT / "scripts" / "vendor_protovalidate.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vendor_protovalidate", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_vendored_file_is_what_the_script_prints_for_the_installed_wheel() -> None:
    printed = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert printed == VENDORED.read_text(), (
        "rerun scripts/vendor_protovalidate.py > third_party/protovalidate/buf/validate/validate.proto"
    )


def test_vendored_file_compiles_to_the_descriptor_the_engine_ships(tmp_path: Path) -> None:
    script = _script()
    _, module_source = script.read_installed()
    shipped = script.serialized_descriptor(module_source)

    image = tmp_path / "image.binpb"
    subprocess.run(
        [str(Path(sys.executable).parent / "buf"), "build", "third_party/protovalidate",
         "--as-file-descriptor-set", "--exclude-source-info", "-o", str(image)],
        cwd=ROOT, check=True, timeout=60,
    )  # fmt: skip
    compiled = next(
        file
        for file in descriptor_pb2.FileDescriptorSet.FromString(image.read_bytes()).file
        if file.name == "buf/validate/validate.proto"
    ).SerializeToString()

    # Read with the custom options resolved, so that every (buf.validate.predefined) rule is compared.
    pool = script.resolving_pool(shipped)
    expected = script.parse_with_options(shipped, pool)
    actual = script.parse_with_options(compiled, pool)
    assert actual == expected
    rules = [
        field for message in actual.message_type for field in message.field if field.options.ListFields()
    ]
    assert len(rules) > 100  # the standard rules, each with its predefined CEL
