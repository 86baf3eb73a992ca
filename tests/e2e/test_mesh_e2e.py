"""The whole mesh started like `make run` does (`python -m devstack`), used like its users use it:
grpcurl through the edge, the browser's gRPC-web, native gRPC, a service killed and restarted by the
launcher, and a restart that keeps the data."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import grpc
import httpx
import psutil
import pytest
from athena.account.v1 import account_pb2, account_pb2_grpc
from athena.auth.v1 import auth_pb2, auth_pb2_grpc
from athena.chat.v1 import chat_pb2, chat_pb2_grpc
from athena.memory.v1 import memory_pb2, memory_pb2_grpc
from athena.notifications.v1 import notifications_pb2, notifications_pb2_grpc
from google.protobuf.json_format import MessageToDict
from grpcweb import call as grpc_web_call

from auth.receipts import verify_receipt
from devstack.postgres import _bin as _pg_bin
from devstack.process import free_port, port_open
from devstack.stack import Ports

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
Metadata = tuple[tuple[str, str], ...]
PUBLIC = {
    "athena.auth.v1.AuthService",
    "athena.chat.v1.ChatService",
    "athena.account.v1.AccountService",
    "athena.connections.v1.ConnectionsService",
    "athena.uploads.v1.UploadsService",
    "athena.notifications.v1.NotificationsService",
}
SERVICE_NAMES = {
    "router": ["athena.chat.v1.ChatService", "athena.account.v1.AccountService"],
    "orchestrator": ["athena.orchestrator.v1.OrchestratorService"],
    "memory": [
        "athena.memory.v1.MemoryService",
        "athena.memory.v1.ConversationService",
        "athena.memory.v1.AgentService",
        "athena.memory.v1.UserDataService",
        "athena.notifications.v1.NotificationsService",
        "athena.notifications.v1.NotifierService",
    ],
    "auth": ["athena.auth.v1.AuthService"],
    "integrations": [
        "athena.connections.v1.ConnectionsService",
        "athena.integrations.v1.IntegrationsService",
    ],
}


@dataclass
class RunningMesh:
    process: subprocess.Popen[str]
    ports: Ports
    data_dir: Path
    output: list[str]
    """The launcher's output so far (read on as it comes)."""

    @property
    def edge(self) -> str:
        return f"127.0.0.1:{self.ports.edge}"

    def child(self, module: str) -> psutil.Process:
        """The running process of `python -m <module>` started by the launcher."""
        for child in psutil.Process(self.process.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if child.cmdline()[1:3] == ["-m", module]:
                    return child
        raise LookupError(module)


def start_mesh(data_dir: Path, ports: Ports) -> RunningMesh:
    env = {
        **os.environ,
        **{f"ATHENA_{field.name.upper()}_PORT": str(getattr(ports, field.name)) for field in fields(Ports)},
        "ATHENA_OFFLINE_DELAY_MS": "5",
    }
    env.pop("OPENAI_API_KEY", None)
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "devstack", "--data-dir", str(data_dir)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    deadline = time.monotonic() + 180
    assert process.stdout is not None
    for line in process.stdout:
        output.append(line)
        if "AthenaOS is ready" in line:
            # Read on, so the launcher never blocks on a full pipe and tests see what it says later.
            threading.Thread(target=output.extend, args=(process.stdout,), daemon=True).start()
            return RunningMesh(process, ports, data_dir, output)
        if time.monotonic() > deadline:
            break
    process.kill()
    raise AssertionError("the mesh did not become ready:\n" + "".join(output[-60:]))


def stop_mesh(mesh: RunningMesh) -> None:
    """SIGTERM, as an operator or Ctrl-C would; everything must be gone afterwards."""
    children = psutil.Process(mesh.process.pid).children(recursive=True)
    mesh.process.send_signal(signal.SIGTERM)
    mesh.process.wait(60)
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"processes left behind: {[p.info for p in alive]}"
    listening = [port for port in (getattr(mesh.ports, f.name) for f in fields(Ports)) if port_open(port)]
    assert not listening, f"ports still listening after SIGTERM: {listening}"


@pytest.fixture(scope="module")
def ports() -> Ports:
    return Ports(**{field.name: free_port() for field in fields(Ports)})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mesh-data")


@pytest.fixture(scope="module")
def mesh(data_dir: Path, ports: Ports) -> Iterator[RunningMesh]:
    running = start_mesh(data_dir, ports)
    try:
        yield running
    finally:
        if running.process.poll() is None:
            stop_mesh(running)


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "grpcurl"), "-plaintext", *args], capture_output=True, text=True, timeout=30
    )


def dev_login(mesh: RunningMesh, email: str) -> auth_pb2.Session:
    with grpc.insecure_channel(mesh.edge) as channel:
        response = auth_pb2_grpc.AuthServiceStub(channel).DevLogin(
            auth_pb2.DevLoginRequest(email=email), timeout=10
        )
    return response.session


def test_edge_lists_exactly_the_public_api(mesh: RunningMesh) -> None:
    listed = set(grpcurl(mesh.edge, "list").stdout.split())
    assert listed - {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} == PUBLIC
    for service in PUBLIC:
        described = grpcurl(mesh.edge, "describe", service)
        assert described.returncode == 0, described.stderr
        assert "rpc " in described.stdout


def test_every_service_reports_health_by_name_and_lists_itself(mesh: RunningMesh) -> None:
    for part, names in SERVICE_NAMES.items():
        address = f"127.0.0.1:{getattr(mesh.ports, part)}"
        for name in ["", *names]:
            result = grpcurl("-d", json.dumps({"service": name}), address, "grpc.health.v1.Health/Check")
            assert result.returncode == 0, (part, name, result.stderr)
            assert json.loads(result.stdout)["status"] == "SERVING"
        listed = set(grpcurl(address, "list").stdout.split())
        assert set(names) <= listed, (part, listed)


def test_internal_services_are_not_routable_through_the_edge(mesh: RunningMesh) -> None:
    token = dev_login(mesh, "edge-probe@example.com").access_token
    for method in (
        "athena.orchestrator.v1.OrchestratorService/Run",
        "athena.memory.v1.MemoryService/ListMemories",
        "athena.memory.v1.UserDataService/PurgeUser",
        "athena.integrations.v1.IntegrationsService/PurgeUser",
        "athena.notifications.v1.NotifierService/Notify",
    ):
        result = grpcurl(
            "-import-path",
            str(ROOT / "proto"),
            "-import-path",
            str(ROOT / "third_party" / "protovalidate"),
            "-proto",
            "athena/memory/v1/memory.proto",
            "-proto",
            "athena/orchestrator/v1/orchestrator.proto",
            "-proto",
            "athena/integrations/v1/integrations.proto",
            "-proto",
            "athena/notifications/v1/notifications.proto",
            "-H",
            f"authorization: Bearer {token}",
            "-d",
            "{}",
            mesh.edge,
            method,
        )
        assert result.returncode != 0
        assert "Unimplemented" in result.stderr, result.stderr


def test_notifications_are_served_through_the_edge_with_a_token(mesh: RunningMesh) -> None:
    """NotificationsService goes to memory: a token is required, the watch stream opens with the unread
    count, and the dev deployment has a VAPID key for browsers to subscribe with."""
    session = dev_login(mesh, "notified@example.com")
    token = (("authorization", f"Bearer {session.access_token}"),)
    with grpc.insecure_channel(mesh.edge) as channel:
        stub = notifications_pb2_grpc.NotificationsServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ListNotifications(notifications_pb2.ListNotificationsRequest(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        listed = stub.ListNotifications(
            notifications_pb2.ListNotificationsRequest(), metadata=token, timeout=10
        )
        assert listed.unread_count == 0
        config = stub.GetPushConfig(notifications_pb2.GetPushConfigRequest(), metadata=token, timeout=10)
        assert len(config.vapid_public_key) == 87
        stream = stub.WatchNotifications(notifications_pb2.WatchNotificationsRequest(), metadata=token)
        try:
            assert next(stream).unread_count == 0
        finally:
            stream.cancel()


async def test_chat_streams_over_grpc_web_and_native_grpc(mesh: RunningMesh) -> None:
    session = dev_login(mesh, "ada@example.com")
    async with httpx.AsyncClient() as client:
        result = await grpc_web_call(
            client,
            f"http://{mesh.edge}",
            "/athena.chat.v1.ChatService/Chat",
            chat_pb2.ChatRequest(agent_id="athena", text="What do you know about me?"),
            token=session.access_token,
        )
    assert result.http_status == 200
    assert result.grpc_status == 0, result.grpc_message
    events = result.decode(chat_pb2.ChatResponse)
    kinds = [event.WhichOneof("event") for event in events]
    assert kinds[0] == "conversation_started"
    assert kinds.count("text_delta") >= 2  # the first word alone, then a few words at a time
    assert kinds[-1] == "message_completed"
    answer = "".join(event.text_delta.text for event in events if event.HasField("text_delta"))
    assert answer == events[-1].message_completed.content

    with grpc.insecure_channel(mesh.edge) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        metadata = (("authorization", f"Bearer {session.access_token}"),)
        conversation_id = events[0].conversation_started.conversation_id
        native = list(
            stub.Chat(
                chat_pb2.ChatRequest(agent_id="athena", conversation_id=conversation_id, text="Hello again"),
                metadata=metadata,
                timeout=30,
            )
        )
        assert native[0].conversation_started.conversation_id == conversation_id
        assert sum(event.HasField("text_delta") for event in native) >= 2
        assert native[-1].HasField("message_completed")
        stored = stub.GetConversation(
            chat_pb2.GetConversationRequest(conversation_id=conversation_id), metadata=metadata, timeout=10
        ).conversation
        assert [message.content for message in stored.messages if message.role == chat_pb2.ROLE_USER] == [
            "What do you know about me?",
            "Hello again",
        ]


def test_calls_without_a_token_are_refused_at_the_edge(mesh: RunningMesh) -> None:
    result = grpcurl("-d", "{}", mesh.edge, "athena.chat.v1.ChatService/ListAgents")
    assert result.returncode != 0
    assert "Unauthenticated" in result.stderr


def refused_within_bound(probe: Callable[[Metadata], object], metadata: Metadata) -> str:
    """Calls `probe` until it is refused UNAUTHENTICATED (its message is returned); fails after 5 s."""
    started = time.monotonic()
    while True:
        refusal: grpc.RpcError | None = None
        try:
            probe(metadata)
        except grpc.RpcError as error:
            refusal = error
        if refusal is not None:
            assert refusal.code() == grpc.StatusCode.UNAUTHENTICATED, refusal.details()
            return str(refusal.details())
        assert time.monotonic() - started < 5.0, "the revoked token is still accepted"
        time.sleep(0.02)


def test_delete_account_revokes_its_tokens_through_the_edge_and_at_each_service_and_signs_a_receipt(
    mesh: RunningMesh,
) -> None:
    """Separate processes, as `make run` starts them: each service's own copy of the revocation list refuses
    the erased account's token within a second (polled; asserted within a generous bound)."""
    session = dev_login(mesh, "erase-e2e@example.com")
    bystander = dev_login(mesh, "stays-e2e@example.com")
    revoked = (("authorization", f"Bearer {session.access_token}"),)
    kept = (("authorization", f"Bearer {bystander.access_token}"),)
    with contextlib.ExitStack() as channels:
        edge, router, orchestrator, memory, auth = (
            channels.enter_context(grpc.insecure_channel(address))
            for address in (
                mesh.edge,
                *(
                    f"127.0.0.1:{getattr(mesh.ports, part)}"
                    for part in ("router", "orchestrator", "memory", "auth")
                ),
            )
        )
        probes = {
            "edge": lambda metadata: chat_pb2_grpc.ChatServiceStub(edge).ListAgents(
                chat_pb2.ListAgentsRequest(), metadata=metadata, timeout=10
            ),
            "router": lambda metadata: chat_pb2_grpc.ChatServiceStub(router).ListAgents(
                chat_pb2.ListAgentsRequest(), metadata=metadata, timeout=10
            ),
            "orchestrator": lambda metadata: list(
                chat_pb2_grpc.ChatServiceStub(orchestrator).Chat(
                    chat_pb2.ChatRequest(agent_id="athena", text="hello"), metadata=metadata, timeout=30
                )
            ),
            "memory": lambda metadata: memory_pb2_grpc.MemoryServiceStub(memory).ListMemories(
                memory_pb2.ListMemoriesRequest(), metadata=metadata, timeout=10
            ),
            "auth": lambda metadata: auth_pb2_grpc.AuthServiceStub(auth).RevokeAllSessions(
                auth_pb2.RevokeAllSessionsRequest(), metadata=metadata, timeout=10
            ),
        }
        for name, probe in probes.items():
            if name != "auth":  # RevokeAllSessions would end the session before its deletion
                probe(revoked)

        deleted = account_pb2_grpc.AccountServiceStub(edge).DeleteAccount(
            account_pb2.DeleteAccountRequest(), metadata=revoked, timeout=30
        )

        for name, probe in probes.items():
            assert refused_within_bound(probe, revoked) == "access token revoked", name
            probe(kept)

        published = auth_pb2_grpc.AuthServiceStub(edge).GetJwks(auth_pb2.GetJwksRequest(), timeout=10)
    jwks = {"keys": [MessageToDict(key, preserving_proto_field_name=True) for key in published.keys]}
    receipt = verify_receipt(deleted.receipt, jwks, issuer="athenaos")
    assert receipt.user_id == session.user.id
    assert receipt.erased == dict(deleted.erased)
    assert receipt.erased["account"] == 1


def chat(
    mesh: RunningMesh, token: str, agent_id: str, text: str, conversation_id: str = ""
) -> list[chat_pb2.ChatResponse]:
    with grpc.insecure_channel(mesh.edge) as channel:
        return list(
            chat_pb2_grpc.ChatServiceStub(channel).Chat(
                chat_pb2.ChatRequest(agent_id=agent_id, text=text, conversation_id=conversation_id),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=60,
            )
        )


def answer(events: list[chat_pb2.ChatResponse]) -> str:
    assert events[-1].HasField("message_completed"), events[-1]
    return events[-1].message_completed.content


def test_memory_is_shared_across_agents_scoped_per_agent_and_private_per_user(mesh: RunningMesh) -> None:
    ada = dev_login(mesh, "memory-ada@example.com").access_token
    bob = dev_login(mesh, "memory-bob@example.com").access_token

    told = chat(mesh, ada, "nutrition", "remember my caloric goal is 2000 kcal")
    calls = [event.tool_call for event in told if event.HasField("tool_call")]
    assert [call.name for call in calls] == ["remember_memory"]
    assert json.loads(calls[0].arguments_json)["scope"] == "user"
    assert any(event.HasField("tool_result") and not event.tool_result.is_error for event in told)

    assert "2000 kcal" in answer(chat(mesh, ada, "focus", "what is my caloric goal?"))

    chat(mesh, ada, "nutrition", "note I ate oatmeal with berries for breakfast")
    assert "oatmeal" in answer(chat(mesh, ada, "nutrition", "what did I eat for breakfast?"))
    # The note is the nutrition coach's own: the focus coach recalls no memory of it (what the person said
    # stays theirs to search from any of their agents, recall_conversations).
    focus = chat(mesh, ada, "focus", "what did I eat for breakfast?")
    assert not [e for e in focus if e.HasField("memories_recalled") and e.memories_recalled.memories]
    assert not answer(focus).startswith("Here is what I know")

    for agent in ("athena", "nutrition"):
        assert answer(chat(mesh, bob, agent, "what is my caloric goal?")) == "I don't know that yet."


def test_a_superuser_reads_nothing_a_person_said_or_who_they_are(mesh: RunningMesh) -> None:
    """Issue 14: after a session through the public API (sign-in e-mail and name, a chat that titles its
    conversation, remember, note), neither a superuser's dump of the database nor its files (tables,
    indexes, write-ahead log) hold any of those strings."""
    words = {name: f"zq{secrets.token_hex(5)}" for name in ("email", "name", "said", "remembered", "noted")}
    email = f"{words['email']}@example.com"
    with grpc.insecure_channel(mesh.edge) as channel:
        session = (
            auth_pb2_grpc.AuthServiceStub(channel)
            .DevLogin(auth_pb2.DevLoginRequest(email=email, display_name=f"Ada {words['name']}"), timeout=10)
            .session
        )
    token = session.access_token
    chat(mesh, token, "athena", f"I keep a secret garden of {words['said']} roses")
    chat(mesh, token, "nutrition", f"remember my favourite fruit is the {words['remembered']}")
    chat(mesh, token, "focus", f"note I study {words['noted']} on Mondays")
    assert words["remembered"] in answer(chat(mesh, token, "focus", f"what about {words['remembered']}?"))

    superuser = f"postgresql://postgres@127.0.0.1:{mesh.ports.postgres}/athena"
    subprocess.run([str(_pg_bin("psql")), superuser, "-c", "CHECKPOINT"], check=True, capture_output=True)
    dump = subprocess.run(
        [str(_pg_bin("pg_dump")), "--dbname", superuser], check=True, capture_output=True, text=True
    ).stdout.lower()
    encoded = [word.encode() for word in words.values()]
    files = [path for path in (mesh.data_dir / "postgres").rglob("*") if path.is_file()]
    for word in words.values():
        assert word not in dump, word
    assert not [str(path) for path in files if any(word in path.read_bytes() for word in encoded)]


def test_handoff_calendar_and_the_stored_conversation(mesh: RunningMesh) -> None:
    token = dev_login(mesh, "handoff@example.com").access_token
    chat(mesh, token, "nutrition", "remember my caloric goal is 1800 kcal")

    events = chat(mesh, token, "athena", "ask nutrition what is my caloric goal?")
    handoffs = [event.handoff for event in events if event.HasField("handoff")]
    assert [(h.from_agent_id, h.to_agent_id) for h in handoffs] == [("athena", "nutrition")]
    assert events[-1].message_completed.agent_id == "nutrition"
    assert "1800 kcal" in answer(events)
    conversation_id = events[0].conversation_started.conversation_id

    calendar = chat(mesh, token, "focus", "am I free tomorrow afternoon?")
    assert [e.tool_call.name for e in calendar if e.HasField("tool_call")] == ["calendar_freebusy"]

    with grpc.insecure_channel(mesh.edge) as channel:
        stored = (
            chat_pb2_grpc.ChatServiceStub(channel)
            .GetConversation(
                chat_pb2.GetConversationRequest(conversation_id=conversation_id),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=10,
            )
            .conversation
        )
    user, assistant = stored.messages[0], stored.messages[-1]
    assert (user.role, user.agent_id) == (chat_pb2.ROLE_USER, "athena")
    assert (assistant.role, assistant.agent_id) == (chat_pb2.ROLE_ASSISTANT, "nutrition")
    assert any(call.name == "handoff_to_nutrition" for call in assistant.tool_calls)


def test_a_killed_service_is_restarted_by_the_launcher_and_serves_again(mesh: RunningMesh) -> None:
    token = dev_login(mesh, "restart@example.com").access_token
    memory = mesh.child("memory")
    memory.send_signal(signal.SIGKILL)
    killed = time.monotonic()

    # Nothing is done by hand: within seconds memory serves again, and a chat through the edge works. (The
    # chat is tried once a second, not in a tight loop: every try counts against the user's turns.)
    events: list[chat_pb2.ChatResponse] = []
    refused: grpc.RpcError | None = None
    while not events and time.monotonic() - killed < 20:
        try:
            events = chat(mesh, token, "athena", "are you back?")
        except grpc.RpcError as error:
            refused = error
            time.sleep(1.0)
    assert events, f"memory was not back within 20 s: {refused}"
    assert answer(events)
    assert mesh.child("memory").pid != memory.pid

    def said(text: str) -> bool:
        return any(text in line for line in mesh.output)

    deadline = time.monotonic() + 10
    while not said("memory ready again") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert said("memory exited unexpectedly with signal 9 (SIGKILL)"), "".join(mesh.output[-20:])
    assert said("memory restarted (pid ")
    assert said("memory ready again")
    log = (mesh.data_dir / "logs" / "memory.log").read_text().splitlines()
    logged = [json.loads(line)["message"] for line in log if line.startswith("{")]
    assert any(m.startswith("devstack: memory exited unexpectedly with signal 9 (SIGKILL)") for m in logged)
    assert any(m.startswith("devstack: memory restarted") for m in logged)


# Last: it stops the module's mesh (a restarted service included: nothing may be left behind).
def test_sigterm_leaves_nothing_behind_and_data_survives_a_restart(
    mesh: RunningMesh, data_dir: Path, ports: Ports
) -> None:
    session = dev_login(mesh, "persist@example.com")
    metadata = (("authorization", f"Bearer {session.access_token}"),)
    with grpc.insecure_channel(mesh.edge) as channel:
        events = list(
            chat_pb2_grpc.ChatServiceStub(channel).Chat(
                chat_pb2.ChatRequest(agent_id="athena", text="Please keep this conversation"),
                metadata=metadata,
                timeout=30,
            )
        )
    conversation_id = events[0].conversation_started.conversation_id
    stop_mesh(mesh)

    restarted = start_mesh(data_dir, ports)
    try:
        again = dev_login(restarted, "persist@example.com")
        assert again.user.id == session.user.id
        with grpc.insecure_channel(restarted.edge) as channel:
            conversation = (
                chat_pb2_grpc.ChatServiceStub(channel)
                .GetConversation(
                    chat_pb2.GetConversationRequest(conversation_id=conversation_id),
                    metadata=(("authorization", f"Bearer {again.access_token}"),),
                    timeout=10,
                )
                .conversation
            )
        assert conversation.messages[0].content == "Please keep this conversation"
    finally:
        stop_mesh(restarted)
