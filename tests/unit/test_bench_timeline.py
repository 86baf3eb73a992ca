"""bench.timeline's reading of traces: each kind of span at its median moment from the turn's edge span."""

from __future__ import annotations

from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from bench.timeline import CALL, FIRST_DELTA, burst_timeline, markdown, span_label, timeline
from devstack.otlp_sink import ReceivedSpan

MS = 1_000_000


def _span(
    service: str, name: str, trace: int, start_ms: float, end_ms: float, **attributes: str
) -> ReceivedSpan:
    return ReceivedSpan(
        service,
        trace_pb2.Span(
            trace_id=trace.to_bytes(16, "big"),
            span_id=(trace * 100 + int(start_ms)).to_bytes(8, "big"),
            name=name,
            start_time_unix_nano=int(start_ms * MS),
            end_time_unix_nano=int(end_ms * MS),
            attributes=[
                common_pb2.KeyValue(key=key.replace("_", "."), value=common_pb2.AnyValue(string_value=value))
                for key, value in attributes.items()
            ],
        ),
    )


def _turn(trace: int, at: float, statement_ms: float) -> list[ReceivedSpan]:
    return [
        _span("athena-edge", "/athena.chat.v1.ChatService/Chat", trace, at, at + 20),
        _span("athena-orchestrator", "/athena.chat.v1.ChatService/Chat", trace, at + 1, at + 19),
        _span(
            "athena-memory",
            "WITH",
            trace,
            at + 6,
            at + 6 + statement_ms,
            db_system="postgresql",
            db_statement="WITH agent_states AS ( SELECT a.id, a.position FROM agents",
        ),
        _span(
            "athena-orchestrator",
            "EVALSHA",
            trace,
            at + 2,
            at + 3,
            db_system="redis",
            db_statement="EVALSHA ? ?",
        ),
    ]


def test_database_spans_are_named_by_their_statement_and_redis_arguments_left_out() -> None:
    sql, redis, plain = _turn(1, 0, 2)[2], _turn(1, 0, 2)[3], _turn(1, 0, 2)[1]
    assert span_label(sql) == "memory: postgresql WITH agent_states AS ( SELECT a.id, …"
    assert span_label(redis) == "orchestrator: redis EVALSHA"
    assert span_label(plain) == "orchestrator: /athena.chat.v1.ChatService/Chat"
    literal = _span(
        "athena-memory",
        "SELECT",
        1,
        0,
        1,
        db_system="postgresql",
        db_statement="SELECT set_config('athena.user_id', '06803edc-35a0-4da6-80d6-d5d86b7747ad', false)",
    )
    assert span_label(literal) == "memory: postgresql SELECT set_config('athena.user_id', …"


def test_each_kind_of_span_is_placed_at_its_median_from_the_edge_span_with_the_client_call() -> None:
    spans = _turn(1, 1000, 2) + _turn(2, 2000, 3) + _turn(3, 3000, 10)
    spans.append(_span("athena-memory", "process facts", 9, 1500, 1510))  # no edge span: not a turn
    calls = [(int(999.5 * MS), 14.0), (int(1999.5 * MS), 15.0), (int(2999.5 * MS), 16.0)]

    found = timeline(spans, calls)

    assert found["turns"] == 3
    rows = {row["span"]: row for row in found["spans"]}
    assert rows["memory: postgresql WITH agent_states AS ( SELECT a.id, …"] == {
        "span": "memory: postgresql WITH agent_states AS ( SELECT a.id, …",
        "turns": 3,
        "start_ms": 6.0,
        "end_ms": 9.0,  # the median of 8, 9 and 16
    }
    assert rows[CALL] == {"span": CALL, "turns": 3, "start_ms": -0.5, "end_ms": 14.5}
    assert [row["span"] for row in found["spans"]][:3] == [
        CALL,
        "edge: /athena.chat.v1.ChatService/Chat",
        "orchestrator: /athena.chat.v1.ChatService/Chat",
    ]
    assert "memory: process facts" not in rows
    spans.append(_span("athena-orchestrator", "rare", 3, 3001, 3002))  # in one turn of three
    found = timeline(spans, calls)

    report = markdown(
        {
            "command": "python -m bench.timeline --turns 3",
            "commit": "abc1234",
            "when": "2026-12-03 12:00 UTC",
            "machine": {"cpus": 2},
            "cpu_stolen_percent": 0.5,
            "errors": 0,
            "first_delta_ms": 15.0,
            **found,
        }
    )
    assert "| memory: postgresql WITH agent_states AS ( SELECT a.id, … | 6.00 | 9.00 | 3.00 | 3 |" in report
    assert f"| {CALL} | -0.50 | 14.50 | 15.00 | 3 |" in report
    assert "orchestrator: rare" not in report
    assert "1 kinds of span met in fewer than half the turns" in report


def test_a_span_met_twice_in_a_turn_is_told_apart() -> None:
    spans = [
        *_turn(1, 0, 2),
        _span("athena-memory", "SELECT", 1, 7, 8, db_system="postgresql", db_statement="SELECT 1"),
        _span("athena-memory", "SELECT", 1, 9, 10, db_system="postgresql", db_statement="SELECT 1"),
    ]
    labels = [row["span"] for row in timeline(spans)["spans"]]
    assert "memory: postgresql SELECT 1" in labels
    assert "memory: postgresql SELECT 1 (#2)" in labels


def test_a_burst_places_each_kind_of_span_from_the_moment_its_burst_was_sent() -> None:
    # Two bursts of two turns, sent at 1,000 and 5,000 ms; the second turn of each is taken 40 ms late.
    spans = [
        *_turn(1, 1010, 2),
        *_turn(2, 1050, 2),
        *_turn(3, 5010, 2),
        *_turn(4, 5050, 2),
        _span("athena-edge", "/athena.chat.v1.ChatService/Chat", 5, 900, 920),  # before any burst: left out
        _span("athena-memory", "process facts", 9, 1500, 1510),  # no edge span: not a turn
    ]
    bursts = [(1000 * MS, [30.0, 70.0]), (5000 * MS, [31.0, 71.0])]

    found = burst_timeline(spans, bursts)

    assert (found["bursts"], found["turns"]) == (2, 4)
    rows = {row["span"]: row for row in found["spans"]}
    assert rows["edge: /athena.chat.v1.ChatService/Chat"] == {
        "span": "edge: /athena.chat.v1.ChatService/Chat",
        "turns": 4,
        "start_p50_ms": 50.0,  # of 10, 10, 50, 50 (the nearest rank)
        "start_p95_ms": 50.0,
        "end_p50_ms": 70.0,
        "end_p95_ms": 70.0,
    }
    assert rows["memory: postgresql WITH agent_states AS ( SELECT a.id, …"]["start_p50_ms"] == 56.0
    assert rows[FIRST_DELTA]["start_p95_ms"] == 71.0
    assert "memory: process facts" not in rows
    assert found["spans"][0]["span"] == "edge: /athena.chat.v1.ChatService/Chat"

    report = markdown(
        {
            "command": "python -m bench.timeline --turns 0 --burst 2 --rounds 2",
            "commit": "abc1234",
            "when": "2026-12-03 12:00 UTC",
            "machine": {"cpus": 2},
            "cpu_stolen_percent": 0.5,
            "errors": 0,
            "first_delta_ms": None,
            "turns": 0,
            "spans": [],
            "burst": {"streams": 2, "delay_ms": 20, "errors": 0, "cpu_stolen_percent": 1.0, **found},
        }
    )
    assert "## A burst: 2 streams at once, the model pacing 20 ms a word" in report
    assert "| edge: /athena.chat.v1.ChatService/Chat | 50.0 | 50.0 | 70.0 | 70.0 | 4 |" in report
    assert f"| {FIRST_DELTA} | 70.0 | 71.0 | 70.0 | 71.0 | 4 |" in report
