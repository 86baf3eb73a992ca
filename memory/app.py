"""Wiring: settings → stores → servicers → `mesh.server.Service`s. Used by `python -m memory` and tests."""

from __future__ import annotations

from dataclasses import dataclass

import openai
from athena.memory.v1 import memory_pb2, memory_pb2_grpc

from memory import ephemeral
from memory.database import Database, open_pool
from memory.embeddings import Embedder, OpenAIEmbedder
from memory.ephemeral import RedisEphemeralStore
from memory.ranking import RankingPolicy
from memory.recall import Recaller
from memory.repository import (
    PostgresAgentStore,
    PostgresConversationStore,
    PostgresMemoryStore,
    PostgresUserDataStore,
)
from memory.service import (
    AgentServicer,
    ConversationServicer,
    MemoryDefaults,
    MemoryServicer,
    UserDataServicer,
)
from memory.settings import MemorySettings
from mesh.server import Service

SERVICE_NAMES = tuple(
    memory_pb2.DESCRIPTOR.services_by_name[name].full_name
    for name in ("MemoryService", "ConversationService", "AgentService", "UserDataService")
)

SERVICE_METHODS = (f"/{SERVICE_NAMES[2]}/SyncAgents",)
"""Methods called for no user (the orchestrator seeding the catalog): they need the deployment's service
key (`ATHENA_SERVICE_KEY`, checked by mesh.interceptors.AuthInterceptor) instead of an access token."""


@dataclass
class Resources:
    """What the service holds open while it runs."""

    database: Database
    ephemeral: RedisEphemeralStore

    async def ready(self) -> bool:
        """Readiness: PostgreSQL answers `SELECT 1` within a second (Redis is optional: ephemeral only)."""
        return await self.database.ping(within=1.0)

    async def close(self) -> None:
        await self.ephemeral.close()
        await self.database.close()


async def open_resources(settings: MemorySettings) -> Resources:
    pool = await open_pool(
        settings.database_url,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        connect_timeout=settings.db_acquire_timeout_seconds,
        command_timeout=settings.db_command_timeout_seconds,
    )
    database = Database(pool, acquire_timeout=settings.db_acquire_timeout_seconds)
    store = RedisEphemeralStore(ephemeral.connect(settings.redis_url, settings.redis_timeout_seconds))
    return Resources(database=database, ephemeral=store)


def openai_embedder(settings: MemorySettings) -> OpenAIEmbedder:
    client = openai.AsyncOpenAI(
        base_url=settings.openai_base_url,
        api_key=settings.openai_api_key.get_secret_value(),
        max_retries=2,
    )
    return OpenAIEmbedder(
        client,
        settings.embedding_model,
        settings.embedding_dimension,
        send_dimensions=settings.sends_dimensions,
        timeout=settings.embedding_timeout_seconds,
    )


def build_services(settings: MemorySettings, resources: Resources, embedder: Embedder) -> list[Service]:
    memory_store = PostgresMemoryStore(resources.database, ef_search=settings.hnsw_ef_search)
    policy = RankingPolicy(
        threshold=settings.similarity_threshold,
        recency_weight=settings.recency_weight,
        half_life_days=settings.recency_half_life_days,
    )
    defaults = MemoryDefaults(
        dimension=settings.embedding_dimension,
        recall_k=settings.recall_default_k,
        ephemeral_ttl_seconds=settings.ephemeral_ttl_seconds,
    )
    memory = MemoryServicer(
        memory_store, Recaller(memory_store, embedder, policy), embedder, resources.ephemeral, defaults
    )
    conversations = ConversationServicer(PostgresConversationStore(resources.database))
    agents = AgentServicer(PostgresAgentStore(resources.database))
    user_data = UserDataServicer(PostgresUserDataStore(resources.database), resources.ephemeral)
    memory_name, conversation_name, agent_name, user_data_name = SERVICE_NAMES
    return [
        Service(memory_name, memory, memory_pb2_grpc.add_MemoryServiceServicer_to_server),
        Service(conversation_name, conversations, memory_pb2_grpc.add_ConversationServiceServicer_to_server),
        Service(agent_name, agents, memory_pb2_grpc.add_AgentServiceServicer_to_server),
        Service(user_data_name, user_data, memory_pb2_grpc.add_UserDataServiceServicer_to_server),
    ]
