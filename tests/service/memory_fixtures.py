"""Helpers for the memory service tests: the memory service on a real database, and stubs to call it.

Imported explicitly by tests/service/test_memory_*.py (not a conftest, so other suites are unaffected).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from athena.chat.v1 import chat_pb2
from athena.memory.v1 import memory_pb2, memory_pb2_grpc
from conftest import StartService, auth_metadata, service_settings
from doubles.embedder import HashingEmbedder

from devstack.postgres import EmbeddedPostgres
from devstack.valkey import EmbeddedValkey
from memory.app import MEMORY, MemoryDeps
from memory.extraction import FactExtractor
from memory.migrate import apply_migrations
from memory.settings import MemorySettings
from mesh.app import RunningService
from mesh.clients import service_call
from mesh.kms import KeyEncryptionKeys, LocalKeyFile
from mesh.tokens import TokenVerifier
from orchestrator.catalog import Catalog
from orchestrator.memory_client import sync_request

DIMENSION = 384
SERVICE_KEY = "memory-tests-service-key"
"""The deployment's service key in these tests (SyncAgents needs it); callers may pass their own."""


@dataclass
class MemoryHarness:
    """A running memory service and one stub per service."""

    service: RunningService
    settings: MemorySettings
    channel: grpc.aio.Channel
    embedder: HashingEmbedder
    make_token: Callable[..., str]

    @property
    def port(self) -> int:
        return self.service.port

    @property
    def memory(self) -> memory_pb2_grpc.MemoryServiceStub:
        return memory_pb2_grpc.MemoryServiceStub(self.channel)

    @property
    def conversations(self) -> memory_pb2_grpc.ConversationServiceStub:
        return memory_pb2_grpc.ConversationServiceStub(self.channel)

    @property
    def agents(self) -> memory_pb2_grpc.AgentServiceStub:
        return memory_pb2_grpc.AgentServiceStub(self.channel)

    @property
    def user_data(self) -> memory_pb2_grpc.UserDataServiceStub:
        return memory_pb2_grpc.UserDataServiceStub(self.channel)

    @property
    def service_metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata of a call made for no user (SyncAgents, Notify), with the service's key."""
        key = self.settings.service_key
        return tuple(service_call(key.get_secret_value() if key is not None else SERVICE_KEY)["metadata"])

    def user(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        """A fresh user id and the call metadata carrying its token."""
        user_id = str(uuid.uuid4())
        return user_id, auth_metadata(self.make_token(user_id))


def local_kms(tmp_path: Path) -> LocalKeyFile:
    """A key-encryption key of the test's own (a first dev start makes one the same way)."""
    return LocalKeyFile.load(tmp_path / "kms-keys", create_if_empty=True)


async def migrate(database_url: str, kms: KeyEncryptionKeys) -> None:
    await asyncio.to_thread(apply_migrations, database_url, DIMENSION, kms)


async def start_memory(
    start_service: StartService,
    verifier: TokenVerifier,
    make_token: Callable[..., str],
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    *,
    embedder: HashingEmbedder | None = None,
    extractor: FactExtractor | None = None,
    **overrides: Any,
) -> MemoryHarness:
    """The memory service built like `python -m memory` (migrations included), with the hashing embedder
    (`embedder`, if given: its model is configured as the embedding model)."""
    overrides.setdefault("ATHENA_SERVICE_KEY", SERVICE_KEY)
    # Off unless a test asks: on the session's shared database the sweep would meet other tests' users,
    # whose data keys are wrapped by their own tests' KMS keys.
    overrides.setdefault("reembed_sweep", False)
    overrides.setdefault("extraction_enabled", False)  # tests of fact learning turn it on
    # Tests poll every 50 ms, which is never quiet for long: background work at once (mesh.quiet has tests).
    overrides.setdefault("background_quiet_seconds", 0)
    # One connection kept, not the twenty a deployment keeps: tests start many memory services.
    overrides.setdefault("pool_min_size", 1)
    embedder = embedder or HashingEmbedder(DIMENSION)
    settings = MemorySettings(
        **service_settings(
            tmp_path,
            database_url=database_url,
            redis_url=redis_url,
            embedding_model=embedder.model.name,
            embedding_dimension=embedder.model.dimension,
            **overrides,
        )
    )
    deps = MemoryDeps(verifier=verifier, embedder=embedder, kms=local_kms(tmp_path), extractor=extractor)
    service = await start_service(MEMORY, settings, deps)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
    service.deps.on_close(lambda: channel.close(None))
    harness = MemoryHarness(service, settings, channel, embedder, make_token)
    if settings.service_key is not None:
        # The shipped catalog, as the orchestrator seeds it: turns need their agent to exist.
        await harness.agents.SyncAgents(
            memory_pb2.SyncAgentsRequest(agents=shipped_agents()),
            metadata=tuple(service_call(settings.service_key.get_secret_value())["metadata"]),
        )
    return harness


def shipped_agents() -> list[memory_pb2.AgentDefinition]:
    """The catalog shipped with the orchestrator, as it seeds memory."""
    return list(sync_request(list(Catalog.load())).agents)


def start_turn_request(
    *,
    agent_id: str = "",
    text: str = "",
    conversation_id: str = "",
    client_request_id: str = "",
    history_messages: int = 0,
) -> memory_pb2.StartTurnRequest:
    """A StartTurn as the orchestrator sends it for a person's Chat."""
    return memory_pb2.StartTurnRequest(
        chat=chat_pb2.ChatRequest(
            agent_id=agent_id, text=text, conversation_id=conversation_id, client_request_id=client_request_id
        ),
        history_messages=history_messages,
    )


@pytest_asyncio.fixture
async def memory_service(
    postgres: EmbeddedPostgres,
    valkey: EmbeddedValkey,
    verifier: TokenVerifier,
    make_token: Callable[..., str],
    start_service: StartService,
    tmp_path: Path,
) -> AsyncIterator[MemoryHarness]:
    """The memory service on the session's PostgreSQL and Valkey, with the hashing embedder."""
    yield await start_memory(start_service, verifier, make_token, tmp_path, postgres.url, valkey.url)


async def expect_status(call: Any, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    """Awaits `call` and returns its error, failing the test unless it ended with `code`."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == code, raised.value.details()
    return raised.value
