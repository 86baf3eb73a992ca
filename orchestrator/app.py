"""Wiring: settings → catalog, model, tools, memory gateway → `TurnRunner` → `mesh.server.Service`.

Used by `python -m orchestrator` and by tests (which pass their own model or memory gateway).
"""

from __future__ import annotations

import openai

from mesh.context import time_remaining
from orchestrator.catalog import Catalog
from orchestrator.memory_client import MemoryGateway
from orchestrator.model import ChatModel, OpenAIChatModel, RetryingModel
from orchestrator.settings import OrchestratorSettings
from orchestrator.tools import (
    CsvSampleFolder,
    IcsFolderCalendar,
    LocalFolderFiles,
    ToolRegistry,
    build_registry,
)
from orchestrator.turn import TurnRunner


def openai_model(settings: OrchestratorSettings) -> ChatModel:
    """Chat Completions against `openai_base_url`, retried by us (the SDK's own retries are off: they
    would not respect the caller's deadline, nor know whether text already reached the client)."""
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else "offline"
    client = openai.AsyncOpenAI(base_url=settings.openai_base_url, api_key=key, max_retries=0)
    return RetryingModel(
        OpenAIChatModel(client),
        attempts=settings.model_attempts,
        timeout=settings.model_timeout_seconds,
        time_remaining=time_remaining,
    )


def tool_registry(settings: OrchestratorSettings) -> ToolRegistry:
    return build_registry(
        calendar=IcsFolderCalendar(settings.calendar_dir) if settings.calendar_dir else None,
        wearables=CsvSampleFolder(settings.wearables_dir) if settings.wearables_dir else None,
        files=LocalFolderFiles(settings.files_dir) if settings.files_dir else None,
    )


def build_runner(
    settings: OrchestratorSettings,
    memory: MemoryGateway,
    *,
    catalog: Catalog | None = None,
    model: ChatModel | None = None,
    tools: ToolRegistry | None = None,
) -> TurnRunner:
    return TurnRunner(
        catalog or Catalog.load(settings.catalog_path),
        memory,
        model or openai_model(settings),
        tools or tool_registry(settings),
        model_name=settings.model_for,
        offline_model=settings.uses_offline_model,
        max_steps=settings.max_steps,
        history_messages=settings.history_messages,
        recall_k=settings.recall_k,
    )
