"""The edge's tracer against a real Envoy: it decides, once per request, whether the request is traced, and
every service downstream follows its decision (the sampled flag of the `traceparent` it passes on).

An upstream gRPC server records the `traceparent` Envoy sends it; an OTLP receiver (devstack.otlp_sink)
records Envoy's spans."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from edge_fixtures import ENVOY, running_envoy
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from devstack.otlp_sink import OtlpSink, serve
from devstack.process import free_port
from edge.envoy_config import CHAT_SERVICE, EdgeConfig

pytestmark = pytest.mark.skipif(ENVOY is None, reason="envoy is not installed")


class Recorder(grpc.aio.ServerInterceptor):
    """Keeps the `traceparent` of every call (None for a call without one)."""

    def __init__(self) -> None:
        self.traceparents: list[str | None] = []

    async def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        self.traceparents.append(dict(details.invocation_metadata or ()).get("traceparent"))
        return await continuation(details)


@pytest.fixture
def sink() -> Iterator[tuple[OtlpSink, int]]:
    received, port = OtlpSink(keep=True), free_port()
    server = serve(received, port)
    yield received, port
    server.stop(grace=None)


def traceparent(flag: str) -> tuple[str, str]:
    trace_id = secrets.token_hex(16)
    return trace_id, f"00-{trace_id}-{secrets.token_hex(8)}-{flag}"


@pytest.mark.parametrize("sampling", [1.0, 0.0])
async def test_the_edge_decides_and_passes_its_decision_on(
    sampling: float, sink: tuple[OtlpSink, int], tmp_path: Path
) -> None:
    received, otlp_port = sink
    recorder = Recorder()
    upstream = grpc.aio.server(interceptors=[recorder])
    servicer = HealthServicer()
    await servicer.set(CHAT_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, upstream)
    router_port = upstream.add_insecure_port("127.0.0.1:0")
    await upstream.start()
    config = EdgeConfig(
        listen_port=free_port(),
        admin_port=free_port(),
        router_port=router_port,
        web_root=tmp_path / "no-web-app",
        otlp_endpoint=f"http://127.0.0.1:{otlp_port}",
        trace_sampling=sampling,
    )
    sent: dict[str, str] = {}
    try:
        async with (
            running_envoy(config, tmp_path),
            grpc.aio.insecure_channel(f"127.0.0.1:{config.listen_port}") as channel,
        ):
            stub = health_pb2_grpc.HealthStub(channel)
            # The route's first call may come before Envoy's first health check marked the upstream up.
            for _ in range(50):
                try:
                    await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.1)
            for flag in ("01", "00"):
                trace_id, header = traceparent(flag)
                sent[flag] = trace_id
                recorder.traceparents.clear()
                await stub.Check(
                    health_pb2.HealthCheckRequest(), metadata=(("traceparent", header),), timeout=3
                )
                (passed_on,) = recorder.traceparents
                assert passed_on is not None
                _, upstream_trace, parent, passed_flag = passed_on.split("-")
                assert upstream_trace == trace_id  # the same trace, whatever was decided
                assert parent != header.split("-")[2]  # under the edge's span
                # Sampled only when the caller did not say "not sampled" and the edge's sampling says so.
                assert passed_flag == ("01" if flag == "01" and sampling == 1.0 else "00")
            recorder.traceparents.clear()
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=3)
            (started,) = recorder.traceparents
            assert started is not None  # a trace the edge started
            assert started.endswith("-01" if sampling == 1.0 else "-00")
            if sampling == 1.0:
                for _ in range(100):  # Envoy flushes its spans every 5 s
                    if received.spans(lambda span: span.trace_id == sent["01"]):
                        break
                    await asyncio.sleep(0.1)
    finally:
        await upstream.stop(None)
    edge_spans = received.spans(lambda span: span.service == "athena-edge")
    traced_ids = {span.trace_id for span in edge_spans}
    assert (sent["01"] in traced_ids) is (sampling == 1.0)
    assert sent["00"] not in traced_ids
