"""The integrations service, assembled (what `python -m integrations`, `make run` and the tests start
through `mesh.app`): migrations, the PostgreSQL store sealing with each person's data key, OAuth with the
providers the settings name, the providers' change-notification subscriptions (when the webhooks have a
public URL; registered in Redis for the webhooks service), the maintenance round (expired pending
connections purged, imports taken over, subscriptions renewed), and — with a memory target and the service
key — the proactive agents consuming the event bus (`integrations.proactive_consumer`)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from athena.connections.v1 import connections_pb2_grpc
from athena.events.v1 import events_pb2
from athena.integrations.v1 import integrations_pb2_grpc
from athena.uploads.v1 import uploads_pb2_grpc

from integrations.calendars import Calendars
from integrations.connections import Connections, ConnectionStore
from integrations.file_references import PostgresFileReferences
from integrations.files import Files
from integrations.health import Health
from integrations.health_google import GoogleHealth
from integrations.migrate import DATA_KEYS_TABLE, SERVICE, apply_migrations, migrate
from integrations.notifier_client import MemoryNotifier
from integrations.oauth import OAuth
from integrations.objects import from_settings as objects_from_settings
from integrations.postgres import PostgresConnectionStore
from integrations.postgres_subscriptions import PostgresSubscriptionStore
from integrations.postgres_uploads import PostgresHealthStore, PostgresUploadStore
from integrations.proactive_consumer import ProactiveAgents
from integrations.providers import Provider
from integrations.servicer import (
    INTERNAL_SERVICE_NAME,
    SERVICE_NAME,
    UPLOADS_SERVICE_NAME,
    ConnectionsServicer,
    IntegrationsServicer,
    UploadsServicer,
)
from integrations.settings import IntegrationsSettings
from integrations.subscriptions import Subscriptions
from integrations.uploads import Uploads
from mesh.app import Assembly, BackgroundTask, Command, Deps, ServiceApp
from mesh.envelope import DataKeys
from mesh.events import EventConsumer
from mesh.keystore import PostgresDataKeys, rewrap_keys
from mesh.kms import KeyEncryptionKeys
from mesh.kms import from_settings as kms_from_settings
from mesh.server import Service
from mesh.subscriptions import SubscriptionRegistry

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class IntegrationsDeps(Deps):
    kms: KeyEncryptionKeys | None = None
    """Wraps the people's data keys; None: the KMS the settings name (`mesh.kms.from_settings`)."""


REFERENCE_RETENTION = timedelta(days=90)
"""How long a document a conversation read counts as one it referred to."""


async def _maintain(
    store: ConnectionStore,
    references: PostgresFileReferences,
    uploads: Uploads,
    subscriptions: Subscriptions | None,
    settings: IntegrationsSettings,
    now: Callable[[], datetime],
    agents: ProactiveAgents | None = None,
) -> None:
    """Every `maintenance_seconds`: purges expired pending connections, takes over imports whose replica
    stopped, deletes abandoned uploads, renews the subscriptions about to expire (and recreates those the
    providers no longer have), and has the proactive agents catch up with what those may have missed."""
    while True:
        await asyncio.sleep(settings.maintenance_seconds)
        try:
            await store.purge_pending(now())
            await references.forget_before(now() - REFERENCE_RETENTION)
            await uploads.maintain(timedelta(hours=settings.upload_receiving_hours))
            if subscriptions is not None:
                await subscriptions.maintain(limit=settings.subscription_renewal_limit)
                if agents is not None:
                    await agents.catch_up(subscriptions)
        except Exception:  # maintenance must outlive a database hiccup
            log.exception("integrations maintenance failed")


async def build(settings: IntegrationsSettings, deps: IntegrationsDeps) -> Assembly:
    await migrate(settings.database_url, wait_seconds=settings.startup_timeout_seconds)
    pool = await deps.postgres(settings.database_url, max_size=settings.database_pool_size)
    keys = DataKeys(
        PostgresDataKeys(pool, DATA_KEYS_TABLE),
        deps.kms or kms_from_settings(settings),
        SERVICE,
        cache_seconds=settings.data_key_cache_seconds,
    )
    store = PostgresConnectionStore(pool, keys)
    oauth = OAuth(timeout=settings.http_timeout_seconds, clock=lambda: deps.clock.now().timestamp())
    connections = Connections(store, oauth, settings.providers(), clock=deps.clock.now)
    http = deps.http_client(settings.http_timeout_seconds)
    calendars = Calendars(
        connections,
        http,
        google_calendar_url=settings.google.calendar_url,
        graph_url=settings.microsoft.graph_url,
    )
    references = PostgresFileReferences(pool, keys)
    files = Files(
        connections,
        http,
        drive_url=settings.google.drive_url,
        graph_url=settings.microsoft.graph_url,
        references=references,
        clock=deps.clock.now,
    )
    health_days = PostgresHealthStore(pool, keys)
    health = Health(health_days, GoogleHealth(connections, http, health_url=settings.google.health_url))
    objects = objects_from_settings(settings.objects)
    uploads = Uploads(
        PostgresUploadStore(pool, keys),
        objects,
        keys,
        health_days,
        clock=deps.clock.now,
        max_bytes=settings.max_upload_bytes,
        import_concurrency=settings.import_concurrency,
    )
    subscriptions = None
    if settings.webhooks_public_url:
        subscriptions = Subscriptions(
            PostgresSubscriptionStore(pool, keys),
            SubscriptionRegistry(deps.redis(settings.redis_url, settings.http_timeout_seconds)),
            connections,
            http,
            webhooks_url=settings.webhooks_public_url,
            google_calendar_url=settings.google.calendar_url,
            drive_url=settings.google.drive_url,
            graph_url=settings.microsoft.graph_url,
            health_url=settings.google.health_url,
            clock=deps.clock.now,
        )
        connections.observe(subscriptions)
    background: list[BackgroundTask] = []
    agents: ProactiveAgents | None = None
    if settings.memory_target and settings.service_key is not None:
        notifier = MemoryNotifier(
            deps.channel(settings.memory_target), settings.service_key.get_secret_value()
        )
        known = subscriptions

        async def lifecycle(event: events_pb2.ProviderEvent) -> None:
            if known is not None and agents is not None:
                await known.on_lifecycle(Provider(event.provider), event.subscription_id, event.change)
                await agents.catch_up(known)  # a `missed` or a recreated subscription: resynced now

        agents = ProactiveAgents(
            calendars,
            health,
            notifier,
            clock=deps.clock.now,
            on_lifecycle=lifecycle,
            file_changes=subscriptions,
            references=references,
        )
        consumer = EventConsumer(
            deps.redis(settings.redis_url, timeout=10.0),
            group=settings.event_consumer_group,
            consumer=f"{socket.gethostname()}-{os.getpid()}",
            handle=agents.handle,
            block_seconds=5.0,
        )
        background.append(consumer.run)
    proactive = agents
    background.append(
        lambda: _maintain(store, references, uploads, subscriptions, settings, deps.clock.now, proactive)
    )
    return Assembly(
        services=[
            Service(
                SERVICE_NAME,
                ConnectionsServicer(connections),
                connections_pb2_grpc.add_ConnectionsServiceServicer_to_server,
            ),
            Service(
                INTERNAL_SERVICE_NAME,
                IntegrationsServicer(connections, calendars, files, health, uploads, references),
                integrations_pb2_grpc.add_IntegrationsServiceServicer_to_server,
            ),
            Service(
                UPLOADS_SERVICE_NAME,
                UploadsServicer(uploads),
                uploads_pb2_grpc.add_UploadsServiceServicer_to_server,
            ),
        ],
        readiness=store.ping,
        background=background,
    )


def _migrate(settings: IntegrationsSettings) -> int:
    applied = apply_migrations(settings.database_url)
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")
    return 0


def _rewrap_keys(settings: IntegrationsSettings) -> int:
    return rewrap_keys(settings.database_url, kms_from_settings(settings), SERVICE, DATA_KEYS_TABLE)


INTEGRATIONS = ServiceApp(
    name="integrations",
    description="AthenaOS integrations service: a person's connected accounts (Google, Microsoft) and "
    "their tokens. Applies its migrations on start-up.",
    settings=IntegrationsSettings,
    deps=IntegrationsDeps,
    build=build,
    commands={
        "migrate": Command("apply the integrations schema's migrations, then exit", _migrate),
        "rewrap-keys": Command(
            "rewrap every data key under the KMS's current key-encryption key (after a rotation)",
            _rewrap_keys,
        ),
    },
)
