"""A contract written only for the tests of `mesh.validation`, compiled by buf when the tests run.

It uses each kind of `buf.validate` rule our contracts use, written exactly as they are meant to be written
in `proto/`: a rule declared once in a proto2 file (`athena.probe.v1.agent_id`, a predefined rule) and used
on several fields, required and optional UUIDs, text limits, ranges, enums, repeated and map items, a
message-level rule, and two broken rules (one that cannot compile, one that fails when evaluated).
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "athena.probe.v1"

RULES_PROTO = r"""
syntax = "proto2";

package athena.probe.v1;

import "buf/validate/validate.proto";

// Predefined rules extend buf.validate's rule messages, which only a proto2 (or editions) file may do.
// In the expressions, `this` is the field's value and `rule` the value the field sets the rule to. The
// extension numbers differ from athena.rules.v1's: one validator serves every message of a process.
extend buf.validate.StringRules {
  // An agent id: a lowercase letter, then at most 31 lowercase letters, digits, '-' or '_'.
  optional bool agent_id = 80049952 [(buf.validate.predefined).cel = {
    id: "string.agent_id"
    message: "must be an agent id: a lowercase letter, then at most 31 lowercase letters, digits, - or _"
    expression: "!rule || this.matches('^[a-z][a-z0-9_-]{0,31}$')"
  }];
  // Text a person wrote: not blank, and no NUL character (PostgreSQL cannot store one).
  optional bool plain_text = 80049953 [
    (buf.validate.predefined).cel = {
      id: "string.plain_text.blank"
      message: "must not be blank"
      expression: "!rule || this.matches('\\\\S')"
    },
    (buf.validate.predefined).cel = {
      id: "string.plain_text.nul"
      message: "must not contain NUL characters"
      expression: "!rule || !this.contains('\\u0000')"
    }
  ];
}
"""

PROBE_PROTO = r"""
syntax = "proto3";

package athena.probe.v1;

import "athena/probe/v1/rules.proto";
import "buf/validate/validate.proto";

enum Role {
  ROLE_UNSPECIFIED = 0;
  ROLE_USER = 1;
  ROLE_AGENT = 2;
}

message ToolCall {
  string name = 1 [(buf.validate.field).string = {min_len: 1, max_len: 64}];
}

message Turn {
  Role role = 1 [(buf.validate.field).required = true, (buf.validate.field).enum.defined_only = true];
  repeated ToolCall tool_calls = 2 [(buf.validate.field).repeated.max_items = 4];
}

message CheckRequest {
  string agent_id = 1 [(buf.validate.field).string.(athena.probe.v1.agent_id) = true];
  string user_id = 2 [(buf.validate.field).required = true, (buf.validate.field).string.uuid = true];
  string conversation_id = 3 [
    (buf.validate.field).ignore = IGNORE_IF_ZERO_VALUE,
    (buf.validate.field).string.uuid = true
  ];
  string text = 4 [
    (buf.validate.field).string = {min_len: 1, max_len: 32000},
    (buf.validate.field).string.(athena.probe.v1.plain_text) = true
  ];
  int32 percent = 5 [(buf.validate.field).int32 = {gte: 0, lte: 100}];
  Turn turn = 6;
  repeated string handoff_to = 7 [(buf.validate.field).repeated = {
    max_items: 3
    unique: true
    items: {string: {[athena.probe.v1.agent_id]: true}}
  }];
  map<string, string> labels = 8 [(buf.validate.field).map = {
    keys: {string: {min_len: 1, max_len: 16}}
    values: {string: {max_len: 64}}
  }];
  string from_agent = 9 [
    (buf.validate.field).ignore = IGNORE_IF_ZERO_VALUE,
    (buf.validate.field).string.(athena.probe.v1.agent_id) = true
  ];

  option (buf.validate.message).cel = {
    id: "handoff_to_another_agent"
    message: "from_agent must differ from agent_id"
    expression: "this.from_agent != this.agent_id"
  };
}

message CheckResponse {
  string text = 1;
}

// A rule for strings on an integer: cannot be compiled.
message MismatchedRequest {
  int32 count = 1 [(buf.validate.field).string.max_len = 3];
}

// Divides by the value: fails when evaluated on zero.
message RatioRequest {
  int32 divisor = 1 [(buf.validate.field).cel = {id: "ratio", expression: "100 / this > 1"}];
}

service ProbeService {
  rpc Check(CheckRequest) returns (CheckResponse);
  rpc Watch(CheckRequest) returns (stream CheckResponse);
  rpc Mismatched(MismatchedRequest) returns (CheckResponse);
}
"""


@functools.cache
def probe_messages() -> dict[str, type[Message]]:
    """The probe contract's message classes by short name, built with buf and the vendored validate.proto
    into a pool of their own (the process's default pool stays as the services have it)."""
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp)
        shutil.copytree(ROOT / "third_party" / "protovalidate", workspace / "protovalidate")
        contract = workspace / "probe" / "athena" / "probe" / "v1"
        contract.mkdir(parents=True)
        (contract / "rules.proto").write_text(RULES_PROTO)
        (contract / "probe.proto").write_text(PROBE_PROTO)
        (workspace / "buf.yaml").write_text(
            "version: v2\nmodules:\n  - path: probe\n  - path: protovalidate\n"
        )
        image = workspace / "image.binpb"
        buf = Path(sys.executable).parent / "buf"
        subprocess.run(
            [str(buf), "build", "probe", "--as-file-descriptor-set", "-o", str(image)],
            cwd=workspace,
            check=True,
            timeout=60,
        )
        files = descriptor_pb2.FileDescriptorSet.FromString(image.read_bytes()).file
    pool = descriptor_pool.DescriptorPool()
    for file in files:  # buf lists every file after its imports
        pool.Add(file)
    probe = pool.FindFileByName("athena/probe/v1/probe.proto")
    return {
        name: message_factory.GetMessageClass(descriptor)
        for name, descriptor in probe.message_types_by_name.items()
    }
