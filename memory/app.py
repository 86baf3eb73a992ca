"""The memory service, assembled: migrations, the pool, Redis, the embedder (its model made current,
with the background embedding of memory.reembed), the four memory servicers, and notifications
(NotificationsService for people, NotifierService for the mesh, Web Push)."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from athena.memory.v1 import memory_pb2, memory_pb2_grpc
from athena.notifications.v1 import notifications_pb2, notifications_pb2_grpc

from memory.conversation_recall import ConversationRecaller
from memory.database import Database, SessionConnection, init_connection
from memory.embeddings import BatchingEmbedder, Embedder, OpenAIEmbedder
from memory.ephemeral import RedisEphemeralStore
from memory.extraction import FactExtractor, FactJobs, FactLearner
from memory.facts import FactPolicy
from memory.keys import UserKeys
from memory.migrate import SERVICE, apply_migrations, migrate
from memory.notification_bus import RedisNotificationBus
from memory.notification_service import NotificationsServicer, NotifierServicer
from memory.notification_store import PostgresNotificationStore
from memory.notifications import NotificationHub, Notifier, PushSender
from memory.ranking import RankingPolicy
from memory.recall import Recaller
from memory.reembed import Reembedder
from memory.repository import (
    PostgresAgentStore,
    PostgresConversationStore,
    PostgresMemoryStore,
    PostgresMessageSearch,
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
from memory.vectors import PostgresEmbeddingModels
from memory.webpush import VapidKey, WebPushSender, load_vapid_key
from mesh.app import Assembly, Command, Deps, ServiceApp
from mesh.envelope import DataKeys
from mesh.events import EventConsumer
from mesh.keystore import PostgresDataKeys, rewrap_keys
from mesh.kms import KeyEncryptionKeys
from mesh.kms import from_settings as kms_from_settings
from mesh.server import Service

log = logging.getLogger(__name__)

SUBSCRIBER_TIMEOUT_SECONDS = 5.0
"""Socket timeout of the connection following other replicas' notification events."""

SERVICE_NAMES = tuple(
    memory_pb2.DESCRIPTOR.services_by_name[name].full_name
    for name in ("MemoryService", "ConversationService", "AgentService", "UserDataService")
)

NOTIFICATIONS, NOTIFIER = (
    notifications_pb2.DESCRIPTOR.services_by_name[name].full_name
    for name in ("NotificationsService", "NotifierService")
)

SERVICE_METHODS = (
    f"/{SERVICE_NAMES[2]}/SyncAgents",
    f"/{SERVICE_NAMES[1]}/DeliverAnswer",
    f"/{SERVICE_NAMES[0]}/ForgetEphemeral",
    f"/{SERVICE_NAMES[0]}/GetEmbeddingStatus",
    f"/{NOTIFIER}/Notify",
)
"""Methods called for no user (the orchestrator seeding the catalog, its outbox delivering answers, rules
leaving a notification, an operator watching re-embedding): they need the deployment's service key
(`ATHENA_SERVICE_KEY`, checked by mesh.interceptors.AuthInterceptor) instead of an access token."""


@dataclass(kw_only=True)
class MemoryDeps(Deps):
    embedder: Embedder | None = None
    """Turns text into vectors; None: the `/embeddings` API at `settings.openai_base_url`."""
    kms: KeyEncryptionKeys | None = None
    """Wraps the users' data keys; None: the KMS the settings name (`mesh.kms.from_settings`)."""
    push_sender: PushSender | None = None
    """Sends Web Push; None: pywebpush with the VAPID key of the settings (`memory.webpush`), if any."""
    extractor: FactExtractor | None = None
    """Asks the chat model which facts a turn stated; None: `settings.extraction_model` at
    `settings.openai_base_url`."""


EXTRACTION_BLOCK_SECONDS = 5.0
"""How long the extraction consumer's blocking read waits for news (its client's timeout is longer)."""


async def build(settings: MemorySettings, deps: MemoryDeps) -> Assembly:
    kms = deps.kms or kms_from_settings(settings)
    await migrate(
        settings.database_url,
        settings.embedding_dimension,
        kms,
        model=settings.embedding_model,
        wait_seconds=settings.startup_timeout_seconds,
    )
    pool = await deps.postgres(
        settings.database_url,
        min_size=settings.pool_floor,
        max_size=settings.pool_max_size,
        connect_timeout=settings.db_acquire_timeout_seconds,
        command_timeout=settings.db_command_timeout_seconds,
        init=init_connection,
        connection_class=SessionConnection,
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
    if embedder.model != settings.embedding:
        raise ValueError(
            f"the embedder makes {embedder.model} vectors, but the settings say {settings.embedding}"
        )
    models = PostgresEmbeddingModels(database, keys)
    # Vectors are written as the embedder's model (the only one they can be of) and read as it.
    current = await models.make_current(embedder.model)

    async def quiet_moment() -> None:
        await deps.quiet.wait(settings.background_quiet_seconds, settings.background_lag_seconds)

    reembedder = Reembedder(
        models,
        embedder,
        current,
        batch_size=settings.reembed_batch_size,
        lease_seconds=settings.reembed_lease_seconds,
        idle_seconds=settings.reembed_idle_seconds,
        before_work=quiet_moment,
    )
    log.info("embedding model", extra={"model": str(current.model), "model_id": current.id})
    memory_store = PostgresMemoryStore(database, keys, current, ef_search=settings.hnsw_ef_search)
    policy = RankingPolicy(
        threshold=settings.similarity_threshold,
        recency_weight=settings.recency_weight,
        half_life_days=settings.recency_half_life_days,
    )
    defaults = MemoryDefaults(
        dimension=settings.embedding_dimension,
        embedding_model=settings.embedding_model,
        recall_k=settings.recall_default_k,
        ephemeral_ttl_seconds=settings.ephemeral_ttl_seconds,
    )
    recaller = Recaller(memory_store, embedder, policy)
    memory = MemoryServicer(memory_store, recaller, embedder, ephemeral, defaults, reembedder=reembedder)
    conversation_recaller = ConversationRecaller(
        PostgresMessageSearch(database, keys, current, ef_search=settings.hnsw_ef_search), embedder, policy
    )
    memory_name, conversation_name, agent_name, user_data_name = SERVICE_NAMES
    bus = RedisNotificationBus(
        deps.redis(settings.redis_url, settings.redis_timeout_seconds),
        # Its reads wait up to a second for a message: a socket timeout above that.
        subscriber=deps.redis(settings.redis_url, SUBSCRIBER_TIMEOUT_SECONDS),
    )
    notifier = Notifier(
        PostgresNotificationStore(database, keys),
        NotificationHub(),
        bus,
        deps.push_sender or _push_sender(settings),
        clock=deps.clock,
        heartbeat_seconds=settings.notifications_heartbeat_seconds,
    )

    async def follow_notification_events() -> None:
        await bus.follow(notifier.received, notifier.hub.resync)

    background = [follow_notification_events, reembedder.index_messages]
    if settings.reembed_sweep:
        background.append(reembedder.sweep)
    fact_jobs = None
    if settings.extraction_enabled:
        fact_jobs = FactJobs(
            deps.redis(settings.redis_url, settings.redis_timeout_seconds), settings.extraction_stream
        )
        extractor = deps.extractor or FactExtractor(
            deps.model_api(settings.openai_base_url, settings.openai_api_key.get_secret_value()),
            settings.extraction_model,
            timeout=settings.extraction_timeout_seconds,
        )
        learner = FactLearner(
            memory_store,
            embedder,
            extractor,
            FactPolicy(
                min_confidence=settings.extraction_min_confidence,
                duplicate_similarity=settings.extraction_duplicate_similarity,
            ),
            before_work=quiet_moment,
        )
        consumer = EventConsumer(
            deps.redis(settings.redis_url, EXTRACTION_BLOCK_SECONDS * 2),
            group=settings.extraction_consumer_group,
            consumer=f"{socket.gethostname()}-{os.getpid()}",
            handle=learner.handle,
            message=memory_pb2.FactExtractionJob,
            max_attempts=settings.extraction_max_attempts,
            claim_idle_seconds=settings.extraction_retry_seconds,
            block_seconds=EXTRACTION_BLOCK_SECONDS,
            stream=settings.extraction_stream,
            dead_letters=f"{settings.extraction_stream}:dead",
        )
        background.append(consumer.run)

    return Assembly(
        services=[
            Service(memory_name, memory, memory_pb2_grpc.add_MemoryServiceServicer_to_server),
            Service(
                conversation_name,
                ConversationServicer(
                    PostgresConversationStore(database, keys, memory_store),
                    recaller,
                    recall_k=defaults.recall_k,
                    turn_lease_seconds=settings.turn_lease_seconds,
                    fact_jobs=fact_jobs,
                    conversation_recaller=conversation_recaller,
                    reembedder=reembedder,
                    quiet=deps.quiet,
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
            Service(
                NOTIFICATIONS,
                NotificationsServicer(notifier, allow_http_endpoints=settings.push_allow_http_endpoints),
                notifications_pb2_grpc.add_NotificationsServiceServicer_to_server,
            ),
            Service(
                NOTIFIER,
                NotifierServicer(notifier),
                notifications_pb2_grpc.add_NotifierServiceServicer_to_server,
            ),
        ],
        # PostgreSQL answers within a second; Redis is optional (ephemeral values, other replicas' events).
        readiness=database.ping,
        background=background,
        service_methods=SERVICE_METHODS,
    )


def _push_sender(settings: MemorySettings) -> WebPushSender | None:
    """Web Push with the deployment's VAPID key (made on a dev first start); None without one."""
    key = load_vapid_key(settings.vapid_key_path, create_if_missing=settings.env == "dev")
    if key is None:
        log.warning(
            "no VAPID key: Web Push is off (notifications are still stored and streamed)",
            extra={"path": str(settings.vapid_key_path)},
        )
        return None
    return WebPushSender(
        key,
        subject=settings.vapid_subject,
        ttl_seconds=settings.push_ttl_seconds,
        urgency=settings.push_urgency,
        timeout_seconds=settings.push_timeout_seconds,
    )


def _migrate(settings: MemorySettings) -> int:
    applied = apply_migrations(
        settings.database_url,
        settings.embedding_dimension,
        kms_from_settings(settings),
        model=settings.embedding_model,
    )
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")
    return 0


def _rewrap_keys(settings: MemorySettings) -> int:
    return rewrap_keys(settings.database_url, kms_from_settings(settings), SERVICE)


def _generate_vapid_key(settings: MemorySettings) -> int:
    path: Path = settings.vapid_key_path
    if path.exists():
        print(f"{path} exists; kept (a new key would unsubscribe every device)")
        return 1
    key = VapidKey.generate()
    key.save(path)
    print(f"wrote {path}; its public key (applicationServerKey): {key.public_key}")
    return 0


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
        "generate-vapid-key": Command(
            "write a new VAPID key for Web Push to MEMORY_VAPID_KEY_FILE (for the Secret memory-vapid-key)",
            _generate_vapid_key,
        ),
    },
)
