"""The memory service, assembled: migrations, the pool, Redis, the embedder, and the four servicers."""

from __future__ import annotations

from dataclasses import dataclass

from athena.memory.v1 import memory_pb2, memory_pb2_grpc

from memory.database import Database, init_connection
from memory.embeddings import BatchingEmbedder, Embedder, OpenAIEmbedder
from memory.ephemeral import RedisEphemeralStore
from memory.keys import UserKeys
from memory.migrate import SERVICE, apply_migrations, migrate
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
from mesh.app import Assembly, Command, Deps, ServiceApp
from mesh.envelope import DataKeys
from mesh.keystore import PostgresDataKeys, rewrap_keys
from mesh.kms import KeyEncryptionKeys
from mesh.kms import from_settings as kms_from_settings
from mesh.server import Service

SERVICE_NAMES = tuple(
    memory_pb2.DESCRIPTOR.services_by_name[name].full_name
    for name in ("MemoryService", "ConversationService", "AgentService", "UserDataService")
)

SERVICE_METHODS = (f"/{SERVICE_NAMES[2]}/SyncAgents", f"/{SERVICE_NAMES[1]}/DeliverAnswer")
"""Methods called for no user (the orchestrator seeding the catalog, its outbox delivering answers): they
need the deployment's service key (`ATHENA_SERVICE_KEY`, checked by mesh.interceptors.AuthInterceptor)
instead of an access token."""


@dataclass(kw_only=True)
class MemoryDeps(Deps):
    embedder: Embedder | None = None
    """Turns text into vectors; None: the `/embeddings` API at `settings.openai_base_url`."""
    kms: KeyEncryptionKeys | None = None
    """Wraps the users' data keys; None: the KMS the settings name (`mesh.kms.from_settings`)."""


async def build(settings: MemorySettings, deps: MemoryDeps) -> Assembly:
    kms = deps.kms or kms_from_settings(settings)
    await migrate(
        settings.database_url,
        settings.embedding_dimension,
        kms,
        wait_seconds=settings.startup_timeout_seconds,
    )
    pool = await deps.postgres(
        settings.database_url,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        connect_timeout=settings.db_acquire_timeout_seconds,
        command_timeout=settings.db_command_timeout_seconds,
        init=init_connection,
    )
    database = Database(pool, acquire_timeout=settings.db_acquire_timeout_seconds)
    keys = UserKeys(
        DataKeys(PostgresDataKeys(pool), kms, SERVICE, cache_seconds=settings.data_key_cache_seconds),
        database,
    )
    ephemeral = RedisEphemeralStore(deps.redis(settings.redis_url, settings.redis_timeout_seconds))
    embedder = deps.embedder or BatchingEmbedder(
        OpenAIEmbedder(
            deps.model_api(settings.openai_base_url, settings.openai_api_key.get_secret_value()),
            settings.embedding_model,
            settings.embedding_dimension,
            send_dimensions=settings.sends_dimensions,
            timeout=settings.embedding_timeout_seconds,
        ),
        concurrency=settings.embedding_concurrency,
        max_batch=settings.embedding_batch_size,
    )
    memory_store = PostgresMemoryStore(database, keys, ef_search=settings.hnsw_ef_search)
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
    recaller = Recaller(memory_store, embedder, policy)
    memory = MemoryServicer(memory_store, recaller, embedder, ephemeral, defaults)
    memory_name, conversation_name, agent_name, user_data_name = SERVICE_NAMES
    return Assembly(
        services=[
            Service(memory_name, memory, memory_pb2_grpc.add_MemoryServiceServicer_to_server),
            Service(
                conversation_name,
                ConversationServicer(
                    PostgresConversationStore(database, keys),
                    recaller,
                    recall_k=defaults.recall_k,
                    turn_lease_seconds=settings.turn_lease_seconds,
                ),
                memory_pb2_grpc.add_ConversationServiceServicer_to_server,
            ),
            Service(
                agent_name,
                AgentServicer(PostgresAgentStore(database, keys)),
                memory_pb2_grpc.add_AgentServiceServicer_to_server,
            ),
            Service(
                user_data_name,
                UserDataServicer(PostgresUserDataStore(database, keys), ephemeral),
                memory_pb2_grpc.add_UserDataServiceServicer_to_server,
            ),
        ],
        # PostgreSQL answers within a second; Redis is optional (ephemeral values only).
        readiness=database.ping,
        service_methods=SERVICE_METHODS,
    )


def _migrate(settings: MemorySettings) -> int:
    applied = apply_migrations(
        settings.database_url, settings.embedding_dimension, kms_from_settings(settings)
    )
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")
    return 0


def _rewrap_keys(settings: MemorySettings) -> int:
    return rewrap_keys(settings.database_url, kms_from_settings(settings), SERVICE)


MEMORY = ServiceApp(
    name="memory",
    description="AthenaOS memory service: memories (pgvector), conversations, agents, user data. "
    "Applies its migrations on start-up.",
    settings=MemorySettings,
    deps=MemoryDeps,
    build=build,
    commands={
        "migrate": Command("apply the memory schema's migrations, then exit", _migrate),
        "rewrap-keys": Command(
            "rewrap every user's data key under the KMS's current key-encryption key (after a rotation)",
            _rewrap_keys,
        ),
    },
)
