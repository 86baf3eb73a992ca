"""The orchestrator, assembled: catalog, model, tools and the memory gateway around one `TurnRunner`.

At start-up the catalog is seeded into memory (`sync_catalog`), retried while memory is still starting.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from athena.chat.v1 import chat_pb2
from athena.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc

from mesh.app import Assembly, Deps, ServiceApp
from mesh.clients import service_call
from mesh.context import time_remaining
from mesh.errors import AthenaError, DeadlineExceeded, InvalidArgument, Unavailable
from mesh.model_api import ModelApi
from mesh.retry import until_reachable
from mesh.server import Service
from mesh.validation import check, shared_validator
from orchestrator.catalog import Catalog, CatalogError
from orchestrator.embedding import TurnEmbedder
from orchestrator.gate import StartLimit
from orchestrator.integrations_client import ConnectedCalendars, ConnectedDrives, ConnectedHealth
from orchestrator.limits import Limiter, LimitStore
from orchestrator.memory_client import GrpcMemoryGateway, sync_request
from orchestrator.metrics import TURN_START_LIMIT, TURN_STARTS_WAITING
from orchestrator.model import ChatModel, OpenAIChatModel, RetryingModel
from orchestrator.outbox import RedisAnswerOutbox
from orchestrator.ports import AgentStore, AnswerOutbox, MemoryGateway
from orchestrator.redis_limits import RedisLimitStore
from orchestrator.service import ChatServicer, OrchestratorServicer, Turns
from orchestrator.settings import OrchestratorSettings
from orchestrator.tools import ToolRegistry, build_registry
from orchestrator.turn import TurnRunner

log = logging.getLogger(__name__)

SERVICE_NAME = orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"].full_name
CHAT_SERVICE = chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name
"""Served here for its Chat method only, which the edge routes to the orchestrator."""


@dataclass(kw_only=True)
class OrchestratorDeps(Deps):
    catalog: Catalog | None = None
    """The agents; None: the file at `settings.catalog_path` (or the one shipped with the package)."""
    memory: MemoryGateway | None = None
    """Memory for the turns; None: the memory service at `settings.memory_target`."""
    agent_store: AgentStore | None = None
    """Where the catalog is seeded at start-up; None: the memory service at `settings.memory_target`."""
    model: ChatModel | None = None
    """The model; None: Chat Completions at `settings.openai_base_url`, retried within the deadline."""
    tools: ToolRegistry | None = None
    """The tools; None: memory tools plus those whose provider is configured in `settings`."""
    limit_store: LimitStore | None = None
    """Where the per-user chat limits of every replica meet; None: Redis at `settings.redis_url`."""
    outbox: AnswerOutbox | None = None
    """Keeps answers memory could not store; None: a Redis stream at `settings.redis_url`, delivered by
    this replica too (it needs the service key; without one answers are not kept)."""


def model_api(settings: OrchestratorSettings, deps: Deps) -> ModelApi:
    """The OpenAI-compatible API at `openai_base_url` (chat completions, turns' embeddings)."""
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else "offline"
    return deps.model_api(settings.openai_base_url, key)


def openai_model(settings: OrchestratorSettings, api: ModelApi) -> ChatModel:
    """Chat Completions against `openai_base_url`, retried by us (the SDK's own retries would not respect
    the caller's deadline, nor know whether text already reached the client)."""
    return RetryingModel(
        OpenAIChatModel(api),
        attempts=settings.model_attempts,
        timeout=settings.model_timeout_seconds,
        time_remaining=time_remaining,
    )


def tool_registry(settings: OrchestratorSettings, deps: Deps) -> ToolRegistry:
    """Memory tools, and the tools over each person's connected accounts when the integrations service is
    configured (calendars, drives, health data); without it, memory tools only."""
    if not settings.integrations_target:
        return build_registry()
    integrations = deps.channel(settings.integrations_target)
    calendars = ConnectedCalendars(integrations)
    return build_registry(
        calendar=calendars,
        events=calendars,
        drives=ConnectedDrives(integrations),
        wearables=ConnectedHealth(integrations),
    )


def checked(catalog: Catalog) -> Catalog:
    """`catalog` when every agent keeps the contract's rules for agent definitions (an agent id's form,
    a name's length), else `CatalogError` naming the entry, for example "agents[2].id: ..."."""
    try:
        check(shared_validator(), sync_request(list(catalog)))
    except InvalidArgument as exc:
        raise CatalogError(f"the agent catalog breaks a rule: {exc.message}") from exc
    return catalog


async def sync_catalog(
    store: AgentStore,
    catalog: Catalog,
    credentials: Sequence[tuple[str, str]],
    *,
    within: float | None,
    first_delay: float = 0.2,
) -> bool:
    """Seeds `catalog` into memory, retrying while memory is unreachable (it may still be starting).
    Anything else (a refused key, a rejected catalog) is logged: memory keeps the catalog of the last
    successful sync, and serving with it beats not serving. Returns whether the catalog was synced."""
    try:
        async for attempt in until_reachable(
            "syncing the agent catalog to memory",
            (Unavailable, DeadlineExceeded),
            within=within,
            first_delay=first_delay,
            max_delay=0.5,  # memory is usually starting next to us: notice it soon
        ):
            with attempt:
                await store.sync_agents(list(catalog), credentials)
    except AthenaError as exc:
        log.error(
            "memory refused the agent catalog; serving with the catalog it has", extra={"error": exc.message}
        )
        return False
    log.info("agent catalog synced", extra={"agents": [agent.id for agent in catalog]})
    return True


async def build(settings: OrchestratorSettings, deps: OrchestratorDeps) -> Assembly:
    catalog = checked(deps.catalog or Catalog.load(settings.catalog_path))
    # Channels connect lazily: one a test replaced both uses of costs nothing.
    gateway = GrpcMemoryGateway(deps.channel(settings.memory_target), timeout=settings.memory_timeout_seconds)
    memory = deps.memory or gateway
    agent_store = deps.agent_store or gateway
    outbox = deps.outbox
    background = []
    if settings.service_key is None:
        log.warning(
            "ATHENA_SERVICE_KEY is unset: the agent catalog is not synced to memory, and answers memory "
            "cannot store are not kept for later"
        )
    else:
        credentials = service_call(settings.service_key.get_secret_value())["metadata"]
        await sync_catalog(agent_store, catalog, credentials, within=settings.startup_timeout_seconds)
        if outbox is None:
            redis_outbox = RedisAnswerOutbox(
                deps.redis(settings.redis_url, settings.redis_timeout_seconds),
                lambda user_id, conversation_id, message: gateway.deliver_answer(
                    user_id, conversation_id, message, credentials
                ),
                consumer=f"{socket.gethostname()}-{os.getpid()}",
                # Its read for new answers must end before the client's timeout cuts it off.
                block_seconds=settings.redis_timeout_seconds / 2,
            )
            outbox, background = redis_outbox, [redis_outbox.deliver_forever]
    api = model_api(settings, deps)
    embedding_model = settings.turn_embedding_model
    start_limit = StartLimit(settings.turn_starts_at_once, settings.turn_starts_at_most)
    # Read when scraped (nothing per turn); one limit serves a process.
    TURN_START_LIMIT.set_function(lambda: start_limit.limit)
    TURN_STARTS_WAITING.set_function(lambda: start_limit.waiting)
    runner = TurnRunner(
        catalog,
        memory,
        deps.model or openai_model(settings, api),
        deps.tools or tool_registry(settings, deps),
        embedder=TurnEmbedder(
            api,
            embedding_model,
            dimensions=settings.embedding_dimensions,
            timeout=settings.embedding_timeout_seconds,
        )
        if embedding_model
        else None,
        model_name=settings.model_for,
        offline_model=settings.uses_offline_model,
        max_steps=settings.max_steps,
        history_messages=settings.history_messages,
        recall_k=settings.recall_k,
        lease_seconds=settings.turn_lease_seconds,
        outbox=outbox,
        start_limit=start_limit,
    )
    # Registered after the channel, so it runs first on stop: pending failed-turn writes still reach memory.
    deps.on_close(runner.wait_background)
    limits = deps.limit_store or RedisLimitStore(
        deps.redis(settings.redis_url, settings.limits_timeout_seconds)
    )
    turns = Turns(
        runner,
        Limiter(settings.limits(), limits, deps.clock),
        coalesce_seconds=settings.coalesce_ms / 1000,
        busy_coalesce_seconds=settings.coalesce_busy_ms / 1000,
    )
    return Assembly(
        services=[
            Service(CHAT_SERVICE, ChatServicer(turns), ChatServicer.add_to_server),
            Service(
                SERVICE_NAME,
                OrchestratorServicer(turns),
                orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server,
            ),
        ],
        background=background,
    )


ORCHESTRATOR = ServiceApp(
    name="orchestrator",
    description="AthenaOS orchestrator: serves the public chat stream, running agent turns (prompt, memory "
    "recall, streaming model calls, tools, handoffs) under per-user limits.",
    settings=OrchestratorSettings,
    deps=OrchestratorDeps,
    build=build,
)
