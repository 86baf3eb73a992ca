"""A real Prometheus (Debian's `prometheus`) against the running mesh: it scrapes every part each second with
the SLO rules of observability/rules/ loaded (devstack/prometheus.py, as `make run PROMETHEUS=1` runs it),
while chat turns go through the edge. The first-token quantile Prometheus computes matches what the client
measured, within a bucket; the alert state follows what the turns did (injected model failures drive the
availability alert to pending; the first-token alert stays inactive); the histograms' exemplars name traces
the services exported (to an OTLP receiver the test runs); every query of the dashboard runs."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from athena.chat.v1 import chat_pb2, chat_pb2_grpc
from polling import eventually_blocking as eventually
from test_mesh_e2e import RunningMesh, dev_login, start_mesh, stop_mesh  # type: ignore[import-not-found]

from devstack.otlp_sink import OtlpSink, serve
from devstack.process import free_port
from devstack.prometheus import EmbeddedPrometheus, prometheus_binary
from devstack.stack import Ports, scrape_targets
from orchestrator.metrics import TIME_TO_FIRST_TOKEN

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(300),
    pytest.mark.skipif(prometheus_binary() is None, reason="no prometheus (apt-get install prometheus)"),
]
ROOT = Path(__file__).resolve().parents[2]
BOUND_SECONDS = 30.0
SCRAPE_SECONDS = 1.0
QUICK_TURNS = 16
SLOW_TURNS = 4
SLOW_MS = 600
"""Turns the offline model answers after 600 ms: the p95 of 20 turns is one of them (rank 19)."""
FAILING_TURNS = 6
BUCKETS = list(TIME_TO_FIRST_TOKEN._upper_bounds)


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[OtlpSink, int]]:
    """An OTLP/gRPC trace receiver (devstack.otlp_sink) keeping the spans exported to it."""
    received, port = OtlpSink(keep=True), free_port()
    server = serve(received, port)
    yield received, port
    server.stop(None)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, receiver: tuple[OtlpSink, int]) -> Iterator[RunningMesh]:
    ports = Ports(**{field.name: free_port() for field in fields(Ports)})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OFFLINE_MODEL_TEST_DIRECTIVES", "1")  # `!slow` and `!fail` steer the offline model
        patch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{receiver[1]}")  # tracing on
        running = start_mesh(tmp_path_factory.mktemp("mesh-data"), ports)
    try:
        yield running
    finally:
        if running.process.poll() is None:
            stop_mesh(running)


@pytest.fixture(scope="module")
def prometheus(mesh: RunningMesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPrometheus]:
    base = tmp_path_factory.mktemp("prometheus")
    server = EmbeddedPrometheus(
        free_port(),
        base,
        base / "prometheus.log",
        scrape_targets(mesh.ports),
        interval_seconds=SCRAPE_SECONDS,
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def query(prometheus: EmbeddedPrometheus, promql: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{prometheus.url}/api/v1/query", params={"query": promql}, timeout=10)
    body = response.json()
    assert response.status_code == 200, (promql, body)
    assert body["status"] == "success", (promql, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def value(prometheus: EmbeddedPrometheus, promql: str) -> float | None:
    result = query(prometheus, promql)
    return float(result[0]["value"][1]) if result else None


def first_delta_seconds(stub: chat_pb2_grpc.ChatServiceStub, token: str, text: str) -> float:
    """From sending a turn to its first text, as the client sees it; the turn is read to its end."""
    started = time.perf_counter()
    first: float | None = None
    for event in stub.Chat(
        chat_pb2.ChatRequest(agent_id="athena", text=text),
        metadata=(("authorization", f"Bearer {token}"),),
        timeout=60,
    ):
        if first is None and event.HasField("text_delta"):
            first = time.perf_counter() - started
    assert first is not None, "the turn streamed no text"
    return first


def bucket(seconds: float) -> int:
    """Index of the histogram bucket holding `seconds` (len(BUCKETS) for +Inf)."""
    return next((index for index, bound in enumerate(BUCKETS) if seconds <= bound), len(BUCKETS))


def alert_states(prometheus: EmbeddedPrometheus) -> dict[str, str]:
    response = httpx.get(f"{prometheus.url}/api/v1/rules", params={"type": "alert"}, timeout=10).json()
    return {rule["name"]: rule["state"] for group in response["data"]["groups"] for rule in group["rules"]}


def test_every_part_is_scraped_and_the_rules_are_loaded(
    mesh: RunningMesh, prometheus: EmbeddedPrometheus
) -> None:
    def all_up() -> bool:
        return value(prometheus, "count(up == 1)") == 7.0

    eventually(all_up, "every target up", within=BOUND_SECONDS)
    states = alert_states(prometheus)
    assert {"AthenaChatAvailabilityFastBurn", "AthenaChatFirstTokenFastBurn"} <= set(states)
    assert set(states.values()) == {"inactive"}


def test_the_first_token_quantile_matches_the_clients_measurement_within_a_bucket(
    mesh: RunningMesh, prometheus: EmbeddedPrometheus
) -> None:
    token = dev_login(mesh, "prometheus@example.com").access_token
    with grpc.insecure_channel(mesh.edge) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        measured = [first_delta_seconds(stub, token, f"hello {index}") for index in range(QUICK_TURNS)]
        measured += [
            first_delta_seconds(stub, token, f"!slow {SLOW_MS} hello {index}") for index in range(SLOW_TURNS)
        ]
    turns = len(measured)
    client_p95 = sorted(measured)[math.ceil(0.95 * turns) - 1]  # nearest rank
    selector = 'athena_chat_time_to_first_token_seconds_bucket{agent="athena"}'

    def all_scraped() -> bool:
        return value(prometheus, f"sum({selector.replace('_bucket', '_count')})") == turns

    eventually(all_scraped, f"{turns} turns in the first-token histogram", within=BOUND_SECONDS)
    server_p95 = value(prometheus, f"histogram_quantile(0.95, sum by (le) ({selector}))")
    assert server_p95 is not None
    assert abs(bucket(server_p95) - bucket(client_p95)) <= 1, (server_p95, client_p95, BUCKETS)
    assert client_p95 >= SLOW_MS / 1000
    # The same through the dashboard's panel (rate over a window), once two scrapes hold the turns.
    rate_p95 = value(
        prometheus,
        "histogram_quantile(0.95, sum by (le) (rate(athena_chat_time_to_first_token_seconds_bucket[2m])))",
    )
    assert rate_p95 is None or math.isnan(rate_p95) or abs(bucket(rate_p95) - bucket(client_p95)) <= 1


def test_the_first_token_exemplars_name_traces_the_services_exported(
    mesh: RunningMesh, prometheus: EmbeddedPrometheus, receiver: tuple[OtlpSink, int]
) -> None:
    received, _ = receiver
    now = time.time()
    response = httpx.get(
        f"{prometheus.url}/api/v1/query_exemplars",
        params={
            "query": "athena_chat_time_to_first_token_seconds_bucket",
            "start": now - 600,
            "end": now,
        },
        timeout=10,
    ).json()
    assert response["status"] == "success", response
    linked = {
        exemplar["labels"]["trace_id"] for series in response["data"] for exemplar in series["exemplars"]
    }
    assert linked, "no exemplar on the first-token histogram"

    def exported() -> bool:
        return linked <= {span.trace_id for span in received.spans()}

    eventually(exported, "the exemplars' traces exported", within=BOUND_SECONDS)


def test_model_failures_drive_the_availability_alert_and_the_first_token_alert_stays_inactive(
    mesh: RunningMesh, prometheus: EmbeddedPrometheus
) -> None:
    token = dev_login(mesh, "failures@example.com").access_token
    faults = (
        'sum(grpc_server_handled_total{grpc_service="athena.chat.v1.ChatService",grpc_method="Chat",'
        'grpc_code="UNAVAILABLE"})'
    )

    def fail_once(index: int) -> None:
        # The model answers 503 to every attempt: the orchestrator retries, then the turn is UNAVAILABLE.
        with grpc.insecure_channel(mesh.edge) as channel, pytest.raises(grpc.RpcError) as raised:
            list(
                chat_pb2_grpc.ChatServiceStub(channel).Chat(
                    chat_pb2.ChatRequest(agent_id="athena", text=f"!fail 503 10 broken {index}"),
                    metadata=(("authorization", f"Bearer {token}"),),
                    timeout=30,
                )
            )
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE

    # The first fault creates its series; rate() counts the ones after a scrape has seen it.
    fail_once(0)
    eventually(lambda: value(prometheus, faults) == 1.0, "the first fault scraped", within=BOUND_SECONDS)
    for index in range(1, FAILING_TURNS):
        fail_once(index)

    def burning() -> bool:
        return alert_states(prometheus)["AthenaChatAvailabilityFastBurn"] in {"pending", "firing"}

    eventually(burning, "the availability alert pending", within=BOUND_SECONDS)
    ratio = value(prometheus, "athena:chat_turn_errors:ratio_rate5m")
    assert ratio is not None
    assert ratio > 14.4 * 0.005
    pending = query(prometheus, 'ALERTS{alertname="AthenaChatAvailabilityFastBurn"}')
    assert {series["metric"]["alertstate"] for series in pending} <= {"pending", "firing"}
    assert pending[0]["metric"]["severity"] == "page"
    assert alert_states(prometheus)["AthenaChatFirstTokenFastBurn"] == "inactive"
    assert alert_states(prometheus)["AthenaEncryptionIntegrityFailure"] == "inactive"


def test_every_dashboard_query_runs_on_the_live_prometheus(
    mesh: RunningMesh, prometheus: EmbeddedPrometheus
) -> None:
    dashboard = json.loads((ROOT / "observability" / "grafana" / "turn-path.json").read_text())
    answered = {}
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            promql = target["expr"].replace("$__rate_interval", "1m")
            answered[promql] = query(prometheus, promql)
    first_token = next(promql for promql in answered if "time_to_first_token" in promql and "0.95" in promql)
    assert answered[first_token], "the first-token panel has data after the turns above"
