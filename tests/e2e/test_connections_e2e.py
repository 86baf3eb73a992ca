"""Connected calendars through the edge, the whole mesh as `make run` starts it, with the Google and
Microsoft emulators standing in for the providers (issue 15's first acceptance item): one person connects
both; "when am I free tomorrow?" to the focus agent answers from the union of both calendars; an access
token Google stops accepting mid-session is refreshed without the person noticing; a grant revoked at
Google turns the connection to "needs reconnect" and the answer says so; another person sees none of it;
"what's on my calendar tomorrow?" names the events of both calendars, an all-day one on its own day."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, fields
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import grpc
import httpx
import pytest
import pytest_asyncio
from athena.auth.v1 import auth_pb2, auth_pb2_grpc
from athena.chat.v1 import chat_pb2, chat_pb2_grpc
from athena.connections.v1 import connections_pb2 as pb
from athena.connections.v1 import connections_pb2_grpc
from athena.integrations.v1 import integrations_pb2, integrations_pb2_grpc
from emulators import GoogleEmulator, MicrosoftEmulator

from devstack.process import free_port
from devstack.stack import (
    EMULATOR_CLIENT_ID,
    EMULATOR_CLIENT_SECRET,
    Ports,
    Stack,
    StackConfig,
    emulated_providers,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

AT_GOOGLE, AT_MICROSOFT = "ada@example.com", "ada@contoso.com"


@dataclass
class Mesh:
    stack: Stack
    channel: grpc.aio.Channel
    redirect: str
    google: GoogleEmulator
    microsoft: MicrosoftEmulator

    async def sign_in(self, email: str) -> tuple[tuple[str, str], ...]:
        auth = auth_pb2_grpc.AuthServiceStub(self.channel)
        session = (await auth.DevLogin(auth_pb2.DevLoginRequest(email=email))).session
        return (("authorization", f"Bearer {session.access_token}"),)

    @property
    def connections(self) -> connections_pb2_grpc.ConnectionsServiceStub:
        return connections_pb2_grpc.ConnectionsServiceStub(self.channel)

    async def chat(
        self, metadata: tuple[tuple[str, str], ...], text: str, agent: str = "focus"
    ) -> list[chat_pb2.ChatResponse]:
        chat = chat_pb2_grpc.ChatServiceStub(self.channel)
        call = chat.Chat(chat_pb2.ChatRequest(agent_id=agent, text=text), metadata=metadata, timeout=60)
        return [event async for event in call]


@pytest_asyncio.fixture(scope="module")
async def mesh() -> AsyncIterator[Mesh]:
    google, microsoft = GoogleEmulator(account=AT_GOOGLE), MicrosoftEmulator(account=AT_MICROSOFT)
    await google.start()
    await microsoft.start()
    ports = Ports(**{f.name: free_port() for f in fields(Ports)})
    redirect = f"http://127.0.0.1:{ports.edge}/connections"
    for emulator in (google, microsoft):
        emulator.register_client(EMULATOR_CLIENT_ID, EMULATOR_CLIENT_SECRET, [redirect])
    extra_env = emulated_providers(google.base_url, microsoft.base_url, [redirect])
    with tempfile.TemporaryDirectory(prefix="athena-connections-") as data:
        stack = Stack(StackConfig(data_dir=Path(data), ports=ports, offline_delay_ms=0, extra_env=extra_env))
        await asyncio.to_thread(stack.start)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{ports.edge}")
        try:
            yield Mesh(stack, channel, redirect, google, microsoft)
        finally:
            await channel.close(grace=None)
            await asyncio.to_thread(stack.stop)
            await google.stop()
            await microsoft.stop()


async def connect(
    mesh: Mesh, metadata: tuple[tuple[str, str], ...], provider: int, capability: int = pb.CAPABILITY_CALENDAR
) -> pb.Connection:
    begun = await mesh.connections.BeginConnection(
        pb.BeginConnectionRequest(provider=provider, capabilities=[capability], redirect_uri=mesh.redirect),
        metadata=metadata,
    )
    async with httpx.AsyncClient(follow_redirects=False) as browser:
        consent = await browser.get(begun.authorization_url)
    assert consent.status_code == 302, consent.text
    back = {k: v[0] for k, v in parse_qs(urlsplit(consent.headers["location"]).query).items()}
    completed = await mesh.connections.CompleteConnection(
        pb.CompleteConnectionRequest(state=back["state"], code=back["code"], redirect_uri=mesh.redirect),
        metadata=metadata,
    )
    return completed.connection


def tool_result(events: list[chat_pb2.ChatResponse], name: str) -> tuple[dict[str, Any], bool]:
    (result,) = [e.tool_result for e in events if e.HasField("tool_result") and e.tool_result.name == name]
    return json.loads(result.result_json), result.is_error


def calendar_result(events: list[chat_pb2.ChatResponse]) -> tuple[dict[str, object], bool]:
    (result,) = [
        e.tool_result
        for e in events
        if e.HasField("tool_result") and e.tool_result.name == "calendar_freebusy"
    ]
    return json.loads(result.result_json), result.is_error


def answer(events: list[chat_pb2.ChatResponse]) -> str:
    return "".join(e.text_delta.text for e in events if e.HasField("text_delta"))


def z(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def test_free_time_tomorrow_comes_from_both_calendars_refreshed_and_then_reconnect(mesh: Mesh) -> None:
    metadata = await mesh.sign_in("ada@example.com")
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    nine, ten, eleven = (tomorrow.replace(hour=h) for h in (9, 10, 11))
    mesh.google.add_event(
        AT_GOOGLE,
        "primary",
        {"summary": "standup", "start": {"dateTime": z(nine)}, "end": {"dateTime": z(ten)}},
    )
    mesh.microsoft.add_event(
        AT_MICROSOFT,
        {
            "subject": "review",
            "start": {"dateTime": eleven.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
            "end": {
                "dateTime": (eleven + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%S"),
                "timeZone": "UTC",
            },
        },
    )
    await connect(mesh, metadata, pb.PROVIDER_GOOGLE)
    await connect(mesh, metadata, pb.PROVIDER_MICROSOFT)

    events = await mesh.chat(metadata, "when am I free tomorrow?")
    result, failed = calendar_result(events)
    assert not failed
    assert result["busy"] == [
        {"start": z(nine), "end": z(ten)},
        {"start": z(eleven), "end": z(eleven + timedelta(minutes=30))},
    ]
    assert sorted(result["calendars"]) == ["google", "microsoft"]  # type: ignore[arg-type]
    assert "You have 2 busy blocks" in answer(events)

    # Google stops accepting the access token before its time: one refresh, and nobody notices. (The tool
    # keeps a complete answer five minutes for its window, which the offline model sets to the second:
    # a second later is a new window, asked of the calendars again.)
    mesh.google.expire_access_tokens()
    refreshes = len([r for r in mesh.google.requests if r.path == "/token"])
    await asyncio.sleep(1.1)
    events = await mesh.chat(metadata, "am I busy tomorrow?")
    result, failed = calendar_result(events)
    assert not failed
    assert "unavailable" not in result
    assert len(result["busy"]) == 2  # type: ignore[arg-type]
    assert len([r for r in mesh.google.requests if r.path == "/token"]) == refreshes + 1

    # The person removes AthenaOS at Google: the connection needs reconnecting, and the answer says so.
    mesh.google.revoke_grant(AT_GOOGLE)
    await asyncio.sleep(1.1)
    events = await mesh.chat(metadata, "what does my calendar look like this week?")
    result, failed = calendar_result(events)
    assert not failed
    assert result["calendars"] == ["microsoft"]
    assert "connect it again" in answer(events)
    statuses = {
        c.provider: c.status
        for c in (
            await mesh.connections.ListConnections(pb.ListConnectionsRequest(), metadata=metadata)
        ).connections
    }
    assert statuses == {
        pb.PROVIDER_GOOGLE: pb.CONNECTION_STATUS_NEEDS_RECONNECT,
        pb.PROVIDER_MICROSOFT: pb.CONNECTION_STATUS_CONNECTED,
    }

    # Someone else sees no connection, and no calendar of Ada's.
    stranger = await mesh.sign_in("grace@example.com")
    assert not (
        await mesh.connections.ListConnections(pb.ListConnectionsRequest(), metadata=stranger)
    ).connections
    events = await mesh.chat(stranger, "when am I free tomorrow?")
    result, _ = calendar_result(events)
    assert result["busy"] == []
    assert "No calendar is connected" in answer(events)


async def test_whats_on_my_calendar_tomorrow_names_the_events_of_both_calendars(mesh: Mesh) -> None:
    metadata = await mesh.sign_in("bea@example.com")
    at_google, at_microsoft = "bea@example.com", "bea@contoso.com"
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    day = tomorrow.date().isoformat()
    nine = tomorrow.replace(hour=9)
    mesh.google.add_event(
        at_google,
        "primary",
        {
            "summary": "standup",
            "start": {"dateTime": z(nine)},
            "end": {"dateTime": z(nine.replace(minute=30))},
        },
    )
    berlin = ZoneInfo("Europe/Berlin")
    review = datetime.combine(tomorrow.date(), time(15), berlin)  # 15:00 in Berlin, whatever the season
    mesh.microsoft.add_event(
        at_microsoft,
        {
            "subject": "design review",
            "start": {"dateTime": f"{day}T15:00:00", "timeZone": "W. Europe Standard Time"},
            "end": {"dateTime": f"{day}T16:00:00", "timeZone": "W. Europe Standard Time"},
        },
    )
    following = (tomorrow + timedelta(days=1)).date().isoformat()
    mesh.microsoft.add_event(  # all day in Los Angeles: from 07:00 or 08:00 UTC, still tomorrow's date
        at_microsoft,
        {
            "subject": "Seattle trip",
            "isAllDay": True,
            "showAs": "oof",
            "start": {"dateTime": f"{day}T00:00:00", "timeZone": "Pacific Standard Time"},
            "end": {"dateTime": f"{following}T00:00:00", "timeZone": "Pacific Standard Time"},
        },
    )
    for emulator, account, provider in (
        (mesh.google, at_google, pb.PROVIDER_GOOGLE),
        (mesh.microsoft, at_microsoft, pb.PROVIDER_MICROSOFT),
    ):
        signed_in = emulator.account
        emulator.sign_in(account)
        try:
            await connect(mesh, metadata, provider)
        finally:
            emulator.sign_in(signed_in)

    events = await mesh.chat(metadata, "what's on my calendar tomorrow?")
    listed, failed = tool_result(events, "calendar_events")
    assert not failed
    assert (listed["start"], listed["end"]) == (z(tomorrow), z(tomorrow + timedelta(days=1)))
    assert [(e["title"], e["calendar"]) for e in listed["events"]] == [
        ("Seattle trip", "microsoft"),
        ("standup", "google"),
        ("design review", "microsoft"),
    ]
    trip = listed["events"][0]
    assert (trip["all_day"], trip["start_date"], trip["end_date"]) == (True, day, following)
    assert trip["time_zone"] == "America/Los_Angeles"
    review_utc = review.astimezone(UTC)
    assert listed["events"][2]["start"] == z(review_utc)
    assert sorted(listed["calendars"]) == ["google", "microsoft"]
    said = answer(events)
    assert said.startswith(f"You have 3 events between {day} 00:00 UTC")
    assert f"Seattle trip (all day {day})" in said
    assert f"standup ({day} 09:00–09:30 UTC)" in said
    assert f"design review ({day} {review_utc:%H:%M}–{review_utc + timedelta(hours=1):%H:%M} UTC)" in said


async def test_the_business_assistant_finds_and_reads_documents_in_a_connected_drive(mesh: Mesh) -> None:
    metadata = await mesh.sign_in("sme@example.com")
    mesh.google.add_file(
        AT_GOOGLE, "Q3 plan", "application/vnd.google-apps.document", b"The Q3 budget grows by ten percent."
    )
    await connect(mesh, metadata, pb.PROVIDER_GOOGLE, pb.CAPABILITY_FILES)
    events = await mesh.chat(metadata, "find my documents about the Q3 budget", agent="sme")
    found, failed = tool_result(events, "file_search")
    assert not failed
    assert [f["name"] for f in found["files"]] == ["Q3 plan"]
    assert "I found 1 file: Q3 plan." in answer(events)
    text = await _read_through_integrations(mesh, metadata, found["files"][0]["id"])
    assert text.strip() == "The Q3 budget grows by ten percent."


async def _read_through_integrations(mesh: Mesh, metadata: tuple[tuple[str, str], ...], file_id: str) -> str:
    """file_read as the orchestrator calls it (the offline model never asks for it by itself)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.stack.config.ports.integrations}") as channel:
        read = await integrations_pb2_grpc.IntegrationsServiceStub(channel).ReadFile(
            integrations_pb2.ReadFileRequest(provider="google", file_id=file_id), metadata=metadata
        )
    return read.text


async def test_connections_need_a_token_at_the_edge(mesh: Mesh) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await mesh.connections.ListConnections(pb.ListConnectionsRequest())
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_make_run_can_start_the_provider_emulators_to_connect_accounts_without_credentials() -> None:
    ports = Ports(**{f.name: free_port() for f in fields(Ports)})
    with tempfile.TemporaryDirectory(prefix="athena-emulated-") as data:
        stack = Stack(
            StackConfig(data_dir=Path(data), ports=ports, offline_delay_ms=0, provider_emulators=True)
        )
        await asyncio.to_thread(stack.start)
        try:
            assert "provider-emulators" in stack.part_names
            async with grpc.aio.insecure_channel(f"127.0.0.1:{ports.edge}") as channel:
                session = (
                    await auth_pb2_grpc.AuthServiceStub(channel).DevLogin(
                        auth_pb2.DevLoginRequest(email="try@example.com")
                    )
                ).session
                metadata = (("authorization", f"Bearer {session.access_token}"),)
                connections = connections_pb2_grpc.ConnectionsServiceStub(channel)
                redirect = f"http://localhost:{ports.edge}/connections"
                for provider in (pb.PROVIDER_GOOGLE, pb.PROVIDER_MICROSOFT):
                    begun = await connections.BeginConnection(
                        pb.BeginConnectionRequest(
                            provider=provider, capabilities=[pb.CAPABILITY_CALENDAR], redirect_uri=redirect
                        ),
                        metadata=metadata,
                    )
                    assert begun.authorization_url.startswith("http://127.0.0.1:")
                    async with httpx.AsyncClient(follow_redirects=False) as browser:
                        consent = await browser.get(begun.authorization_url)
                    back = {k: v[0] for k, v in parse_qs(urlsplit(consent.headers["location"]).query).items()}
                    connected = await connections.CompleteConnection(
                        pb.CompleteConnectionRequest(
                            state=back["state"], code=back["code"], redirect_uri=redirect
                        ),
                        metadata=metadata,
                    )
                    assert connected.connection.status == pb.CONNECTION_STATUS_CONNECTED
                chat = chat_pb2_grpc.ChatServiceStub(channel)
                call = chat.Chat(
                    chat_pb2.ChatRequest(agent_id="focus", text="when am I free tomorrow?"),
                    metadata=metadata,
                    timeout=60,
                )
                events = [event async for event in call]
        finally:
            await asyncio.to_thread(stack.stop)
    result, failed = calendar_result(events)
    assert not failed
    assert sorted(result["calendars"]) == ["google", "microsoft"]  # type: ignore[arg-type]
    assert result["busy"]  # the emulators' demo events
