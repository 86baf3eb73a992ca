#!/usr/bin/env python3
"""Prints `buf/validate/validate.proto` rebuilt from the descriptor that the protovalidate wheel embeds.

    python scripts/vendor_protovalidate.py [WHEEL] > third_party/protovalidate/buf/validate/validate.proto

The protovalidate wheel on PyPI (Apache-2.0) ships `protovalidate/_gen/buf/validate/validate_pb.py`, whose
`file_desc(b"...")` call holds the serialized `FileDescriptorProto` of validate.proto. This script reads
that bytes literal (without importing the module) from WHEEL, or from the installed `protovalidate`
package when no wheel is given, and prints equivalent proto source: messages, enums, oneofs, proto2
labels, extension ranges, `extend` blocks and every option, including the `(buf.validate.predefined)`
options that validate.proto sets on its own rule fields. The descriptor carries no comments, so neither
does the output. The license beside the vendored file is the wheel's
`protovalidate-<version>.dist-info/licenses/LICENSE`.

Contract: compiling the printed source gives back the wheel's descriptor, except for source info.
`tests/unit/test_vendored_protovalidate.py` checks that against the vendored copy. Anything in the
descriptor this printer does not know (proto3, editions, maps, groups, defaults, services, options of
files it cannot resolve) stops it with an error instead of being dropped.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.metadata
import importlib.util
import math
import sys
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, unknown_fields
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

GENERATED_MODULE = "protovalidate/_gen/buf/validate/validate_pb.py"
"""Where the wheel keeps validate.proto's generated protobuf-py module."""

MAX_FIELD_NUMBER = 536_870_911
INDENT = "  "

_SCALAR_TYPES = {
    FieldDescriptor.TYPE_DOUBLE: "double",
    FieldDescriptor.TYPE_FLOAT: "float",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_FIXED64: "fixed64",
    FieldDescriptor.TYPE_FIXED32: "fixed32",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_SFIXED32: "sfixed32",
    FieldDescriptor.TYPE_SFIXED64: "sfixed64",
    FieldDescriptor.TYPE_SINT32: "sint32",
    FieldDescriptor.TYPE_SINT64: "sint64",
}
_LABELS = {
    FieldDescriptor.LABEL_OPTIONAL: "optional",
    FieldDescriptor.LABEL_REQUIRED: "required",
    FieldDescriptor.LABEL_REPEATED: "repeated",
}
# The descriptor fields each printer below renders; a descriptor using any other one is refused.
_FILE_FIELDS = {
    "name", "package", "dependency", "message_type", "enum_type", "extension", "options", "syntax",
}  # fmt: skip
_MESSAGE_FIELDS = {
    "name", "field", "extension", "nested_type", "enum_type", "extension_range", "oneof_decl", "options",
    "reserved_range", "reserved_name",
}  # fmt: skip
_FIELD_FIELDS = {
    "name", "number", "label", "type", "type_name", "extendee", "json_name", "oneof_index", "options",
}  # fmt: skip
_ONEOF_FIELDS = {"name", "options"}
_RANGE_FIELDS = {"start", "end"}
_ENUM_FIELDS = {"name", "value", "options", "reserved_range", "reserved_name"}
_ENUM_VALUE_FIELDS = {"name", "number", "options"}


class UnsupportedDescriptor(Exception):
    """The descriptor uses something this printer cannot render faithfully."""


def serialized_descriptor(module_source: str) -> bytes:
    """The bytes passed to `file_desc(...)` in a protobuf-py generated module's source."""
    for node in ast.walk(ast.parse(module_source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "file_desc"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, bytes)
        ):
            return node.args[0].value
    raise UnsupportedDescriptor("no file_desc(b'...') call in the generated module")


def read_wheel(wheel: Path) -> tuple[str, str]:
    """(protovalidate version, generated module source) from a downloaded wheel."""
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        version = next(
            line.split(":", 1)[1].strip()
            for line in archive.read(metadata).decode().splitlines()
            if line.startswith("Version:")
        )
        return version, archive.read(GENERATED_MODULE).decode()


def read_installed() -> tuple[str, str]:
    """(protovalidate version, generated module source) from the installed package, without importing it."""
    spec = importlib.util.find_spec("protovalidate")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("protovalidate is not installed: pass the path of its wheel")
    package = Path(next(iter(spec.submodule_search_locations)))
    module = package.parent / GENERATED_MODULE
    return importlib.metadata.version("protovalidate"), module.read_text()


def resolving_pool(serialized: bytes) -> descriptor_pool.DescriptorPool:
    """A pool holding the file and its (well-known) dependencies, so its custom options can be read."""
    file = descriptor_pb2.FileDescriptorProto.FromString(serialized)
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(name: str) -> None:
        if name in added:
            return
        # Well-known types only: google/protobuf/duration.proto is google.protobuf.duration_pb2.
        module = importlib.import_module(name.removesuffix(".proto").replace("/", ".") + "_pb2")
        known = module.DESCRIPTOR
        for dependency in known.dependencies:
            add(dependency.name)
        proto = descriptor_pb2.FileDescriptorProto()
        known.CopyToProto(proto)
        pool.Add(proto)
        added.add(name)

    for dependency in file.dependency:
        add(dependency)
    pool.Add(file)
    return pool


def parse_with_options(serialized: bytes, pool: descriptor_pool.DescriptorPool) -> Message:
    """The FileDescriptorProto parsed with the pool's own descriptor.proto, so that extensions the file
    declares on `google.protobuf.*Options` are read as extensions, not unknown fields."""
    file_type = pool.FindMessageTypeByName("google.protobuf.FileDescriptorProto")
    parsed: Message = message_factory.GetMessageClass(file_type).FromString(serialized)
    return parsed


def render(serialized: bytes, provenance: str) -> str:
    """The proto source of the serialized FileDescriptorProto, headed by `provenance` (comment lines)."""
    pool = resolving_pool(serialized)
    return _FileRenderer(parse_with_options(serialized, pool), provenance).render()


def _check_fields(message: Message, handled: set[str]) -> None:
    used = {field.name for field, _ in message.ListFields()}
    if used - handled:
        raise UnsupportedDescriptor(f"{type(message).__name__} uses {sorted(used - handled)}")


def _json_name(name: str) -> str:
    """protoc's default JSON name: underscores dropped, the letter after one upper-cased."""
    parts = name.split("_")
    return parts[0] + "".join(part[:1].upper() + part[1:] for part in parts[1:])


def _string_literal(value: str | bytes) -> str:
    raw = value.encode() if isinstance(value, str) else value
    escaped = {ord("\\"): "\\\\", ord('"'): '\\"', ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}
    out: list[str] = []
    text = raw.decode("utf-8", errors="surrogateescape")
    for char in text:
        code = ord(char)
        if code in escaped:
            out.append(escaped[code])
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8 (bytes values only)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _scalar_literal(field: FieldDescriptor, value: object) -> str:
    if field.type == FieldDescriptor.TYPE_ENUM:
        assert isinstance(value, int)
        assert field.enum_type is not None
        return field.enum_type.values_by_number[value].name
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | bytes):
        return _string_literal(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    return str(value)


def _option_name(field: FieldDescriptor) -> str:
    return f"({field.full_name})" if field.is_extension else field.name


def _values(field: FieldDescriptor, value: object) -> list[object]:
    """One entry per value the field holds (a repeated field holds several)."""
    if field.is_repeated:
        assert isinstance(value, Iterable)
        return list(value)
    return [value]


def _text_value(field: FieldDescriptor, value: object, depth: int) -> str:
    """The value in protobuf text format, as written after `=` in an option; messages span several lines."""
    if field.type != FieldDescriptor.TYPE_MESSAGE:
        return _scalar_literal(field, value)
    assert isinstance(value, Message)
    inner = INDENT * (depth + 1)
    lines = ["{"]
    for sub, sub_value in value.ListFields():
        name = f"[{sub.full_name}]" if sub.is_extension else sub.name
        for item in _values(sub, sub_value):
            separator = " " if sub.type == FieldDescriptor.TYPE_MESSAGE else ": "
            lines.append(f"{inner}{name}{separator}{_text_value(sub, item, depth + 1)}")
    lines.append(INDENT * depth + "}")
    return "\n".join(lines)


def _option_assignments(options: Message, depth: int) -> list[str]:
    """`name = value` for each option set, message-valued ones split per field the way validate.proto is
    written (`(buf.validate.predefined).cel = {...}` once per rule)."""
    if len(unknown_fields.UnknownFieldSet(options)):
        raise UnsupportedDescriptor(f"{type(options).__name__} has options of a file that is not imported")
    assignments: list[str] = []
    for field, value in options.ListFields():
        name = _option_name(field)
        for item in _values(field, value):
            if field.type == FieldDescriptor.TYPE_MESSAGE and field.is_extension:
                assert isinstance(item, Message)
                for sub, sub_value in item.ListFields():
                    assignments.extend(
                        f"{name}.{_option_name(sub)} = {_text_value(sub, sub_item, depth)}"
                        for sub_item in _values(sub, sub_value)
                    )
            else:
                assignments.append(f"{name} = {_text_value(field, item, depth)}")
    return assignments


class _FileRenderer:
    """Prints one file; its descriptor messages are the resolving pool's dynamic classes, hence `Any`."""

    def __init__(self, file: Any, provenance: str) -> None:
        self.file = file
        self.package: str = file.package
        self.lines: list[str] = [f"// {line}".rstrip() for line in provenance.splitlines()]

    def render(self) -> str:
        file = self.file
        _check_fields(file, _FILE_FIELDS)
        if file.syntax not in ("", "proto2"):
            raise UnsupportedDescriptor(f"syntax {file.syntax!r}")
        self.lines += ["", 'syntax = "proto2";', "", f"package {self.package};", ""]
        self.lines += [f'import "{dependency}";' for dependency in file.dependency]
        self.lines.append("")
        self._options(file.options, 0)
        for message in file.message_type:
            self._message(message, 0)
        for enum in file.enum_type:
            self._enum(enum, 0)
        self._extensions(file.extension, 0)
        while self.lines[-1] == "":
            self.lines.pop()
        return "\n".join(self.lines) + "\n"

    def _emit(self, depth: int, text: str) -> None:
        self.lines.append(INDENT * depth + text)

    def _type_name(self, name: str) -> str:
        """A fully qualified type name, relative to the package when it is in it."""
        prefix = f".{self.package}."
        return name[len(prefix) :] if name.startswith(prefix) else name.lstrip(".")

    def _options(self, options: Any, depth: int) -> None:
        assignments = _option_assignments(options, depth)
        for assignment in assignments:
            self._emit(depth, f"option {assignment};")
        if assignments:
            self.lines.append("")

    def _bracketed(self, options: Any, depth: int, extra: Iterable[str] = ()) -> str:
        """` [a = 1, b = 2]` for a field or enum value, one option per line; empty without options."""
        assignments = [*extra, *_option_assignments(options, depth + 1)]
        if not assignments:
            return ""
        inner = INDENT * (depth + 1)
        return (
            " [\n"
            + ",\n".join(inner + assignment for assignment in assignments)
            + "\n"
            + INDENT * depth
            + "]"
        )

    def _field(self, field: Any, depth: int, *, in_oneof: bool) -> None:
        _check_fields(field, _FIELD_FIELDS)
        kind = field.type
        if kind in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_ENUM):
            type_name = self._type_name(field.type_name)
        elif kind in _SCALAR_TYPES:
            type_name = _SCALAR_TYPES[kind]
        else:
            raise UnsupportedDescriptor(f"field {field.name} is a group")
        name: str = field.name
        label = "" if in_oneof else _LABELS[field.label] + " "
        json_name = field.json_name
        extra = (
            [f"json_name = {_string_literal(json_name)}"]
            if json_name and json_name != _json_name(name)
            else []
        )
        options = self._bracketed(field.options, depth, extra)
        self._emit(depth, f"{label}{type_name} {name} = {field.number}{options};")

    def _message(self, message: Any, depth: int) -> None:
        _check_fields(message, _MESSAGE_FIELDS)
        self._emit(depth, f"message {message.name} {{")
        body = depth + 1
        self._options(message.options, body)
        printed_oneofs: set[int] = set()
        for field in message.field:
            if not field.HasField("oneof_index"):
                self._field(field, body, in_oneof=False)
            elif field.oneof_index not in printed_oneofs:  # a oneof is printed where its first field is
                printed_oneofs.add(field.oneof_index)
                self._oneof(message, field.oneof_index, body)
        for enum in message.enum_type:
            self._enum(enum, body)
        for nested in message.nested_type:
            self._message(nested, body)
        self._extensions(message.extension, body)
        for extension_range in message.extension_range:
            _check_fields(extension_range, _RANGE_FIELDS)
            self._emit(body, f"extensions {self._range(extension_range.start, extension_range.end - 1)};")
        self._reserved(message.reserved_range, message.reserved_name, body, exclusive=True)
        if self.lines[-1] == "":
            self.lines.pop()
        self._emit(depth, "}")
        self.lines.append("")

    def _oneof(self, message: Any, index: int, depth: int) -> None:
        oneof = message.oneof_decl[index]
        _check_fields(oneof, _ONEOF_FIELDS)
        self._emit(depth, f"oneof {oneof.name} {{")
        self._options(oneof.options, depth + 1)
        for field in message.field:
            if field.HasField("oneof_index") and field.oneof_index == index:
                self._field(field, depth + 1, in_oneof=True)
        self._emit(depth, "}")

    def _enum(self, enum: Any, depth: int) -> None:
        _check_fields(enum, _ENUM_FIELDS)
        self._emit(depth, f"enum {enum.name} {{")
        self._options(enum.options, depth + 1)
        for value in enum.value:
            _check_fields(value, _ENUM_VALUE_FIELDS)
            options = self._bracketed(value.options, depth + 1)
            self._emit(depth + 1, f"{value.name} = {value.number}{options};")
        self._reserved(enum.reserved_range, enum.reserved_name, depth + 1, exclusive=False)
        self._emit(depth, "}")
        self.lines.append("")

    def _extensions(self, extensions: Iterable[Any], depth: int) -> None:
        """`extend` blocks, one per run of consecutive extensions of the same message (keeps their order)."""
        extendee = None
        for extension in extensions:
            if extension.extendee != extendee:
                if extendee is not None:
                    self._emit(depth, "}")
                    self.lines.append("")
                extendee = extension.extendee
                self._emit(depth, f"extend {self._type_name(extendee)} {{")
            self._field(extension, depth + 1, in_oneof=False)
        if extendee is not None:
            self._emit(depth, "}")
            self.lines.append("")

    def _reserved(self, ranges: Iterable[Any], names: Iterable[str], depth: int, *, exclusive: bool) -> None:
        """Message reserved ranges end before `end`; enum reserved ranges include it."""
        spans = []
        for reserved in ranges:
            _check_fields(reserved, _RANGE_FIELDS)
            spans.append(self._range(reserved.start, reserved.end - 1 if exclusive else reserved.end))
        if spans:
            self._emit(depth, f"reserved {', '.join(spans)};")
        quoted = [_string_literal(name) for name in names]
        if quoted:
            self._emit(depth, f"reserved {', '.join(quoted)};")

    @staticmethod
    def _range(first: int, last: int) -> str:
        if first == last:
            return str(first)
        return f"{first} to {'max' if last == MAX_FIELD_NUMBER else last}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "wheel", nargs="?", type=Path, help="protovalidate wheel (default: the installed one)"
    )
    arguments = parser.parse_args()
    version, source = read_wheel(arguments.wheel) if arguments.wheel else read_installed()
    copyright_line = next(line for line in source.splitlines() if "Copyright" in line)
    provenance = f"""\
buf/validate/validate.proto of protovalidate {version}: DO NOT EDIT.

Reconstructed by scripts/vendor_protovalidate.py (rerun it to update) from the FileDescriptorProto
embedded in {GENERATED_MODULE} of the protovalidate {version} wheel on PyPI.
The descriptor has no comments: the rules are documented in that module's docstrings and at
https://protovalidate.com.

{copyright_line.lstrip("# ")}
Licensed under the Apache License, Version 2.0 (LICENSE in third_party/protovalidate); you may not use
this file except in compliance with the License. Distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR
CONDITIONS OF ANY KIND, either express or implied."""
    sys.stdout.write(render(serialized_descriptor(source), provenance))


if __name__ == "__main__":
    main()
