"""The orchestrator's Prometheus metrics: what an operator asks of the turn path (see `mesh.metrics` for
the naming and label rules). Recorded once per turn, model call or tool call, never per token: a turn's
tokens are counted when it ends, from the model's usage.

`agent` is a catalog agent id, `model` the model name the catalog maps it to, `tool` a tool of the registry
("unknown" for a name the model made up), `status` a gRPC status name: all bounded by the deployment.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

FIRST_TOKEN_SLO_SECONDS = 2.5
"""The first-token objective (SPEC §7: p95 ≤ 2.5 s); a bucket bound of `TIME_TO_FIRST_TOKEN`, so the SLO
rules count the turns under it exactly (`observability/rules/athena-slo.yaml` names it too)."""

TIME_TO_FIRST_TOKEN = Histogram(
    "athena_chat_time_to_first_token_seconds",
    "From the start of a turn (the orchestrator has the request) to the first text of the answer.",
    ["agent", "model"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, FIRST_TOKEN_SLO_SECONDS, 3, 5, 10, 30),
)
TURN_DURATION = Histogram(
    "athena_chat_turn_duration_seconds",
    "From the start of a turn to its end, by the agent that finished it and outcome (ok, error, cancelled).",
    ["agent", "model", "outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300),
)
TOKENS = Counter(
    "athena_chat_tokens_total",
    "Tokens of the turns' model calls as the model reported them, by type: input (prompt) or output "
    "(streamed to the caller).",
    ["agent", "model", "type"],
)
ACTIVE_STREAMS = Gauge("athena_chat_active_streams", "Chat turns streaming now (admitted by the limits).")
TURNS_STARTING = Gauge(
    "athena_chat_turns_starting",
    "Chat turns of this orchestrator that have not sent their first text yet (admission, memory, the model's "
    "first token): how far behind starting turns it is. While any has, answers under way send their text "
    "less often (orchestrator.coalesce).",
)
TURN_START_LIMIT = Gauge(
    "athena_chat_turn_start_limit",
    "Turns this orchestrator starts in memory at once at most now (orchestrator.gate): above its floor "
    "while memory keeps up with more.",
)
TURN_STARTS_WAITING = Gauge(
    "athena_chat_turn_starts_waiting",
    "Turns of this orchestrator waiting for a place under that limit before memory starts them.",
)
MODEL_ERRORS = Counter(
    "athena_model_errors_total",
    "Model calls that failed after their retries, by the status the turn got.",
    ["model", "status"],
)
MODEL_RETRIES = Counter(
    "athena_model_retries_total",
    "Model call attempts that failed and were retried, by the attempt's status.",
    ["model", "status"],
)
TOOL_DURATION = Histogram(
    "athena_tool_call_duration_seconds",
    "Time a tool call took, failed ones included.",
    ["tool"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15),
)
TOOL_ERRORS = Counter(
    "athena_tool_call_errors_total",
    "Tool calls answered with an error, by why: invalid_arguments, timeout, error (the tool's own), "
    "crashed (a bug), unknown_tool.",
    ["tool", "reason"],
)
