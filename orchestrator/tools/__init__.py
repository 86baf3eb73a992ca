"""The tools agents call: memory, calendar free/busy and events, wearable stats, files (connected drives),
and handoffs.

`build_registry` assembles the tools a deployment offers from its configured providers.
"""

from __future__ import annotations

from orchestrator.tools.calendar import CalendarProvider, EventsProvider, calendar_tool, events_tool
from orchestrator.tools.drives import Drives, drive_tools
from orchestrator.tools.memory import memory_tools
from orchestrator.tools.registry import Tool, ToolContext, ToolOutcome, ToolRegistry
from orchestrator.tools.wearables import HealthData, wearables_tool

__all__ = [
    "CalendarProvider",
    "EventsProvider",
    "HealthData",
    "Tool",
    "ToolContext",
    "ToolOutcome",
    "ToolRegistry",
    "build_registry",
]


def build_registry(
    *,
    calendar: CalendarProvider | None = None,
    events: EventsProvider | None = None,
    wearables: HealthData | None = None,
    drives: Drives | None = None,
    timeout: float = 15.0,
) -> ToolRegistry:
    """Memory tools always; each provider's tools when the provider is configured (`calendar_events` next
    to `calendar_freebusy` when the calendars can list events; `file_search` and `file_read` for
    connected drives)."""
    tools: list[Tool] = memory_tools()
    if calendar is not None:
        tools.append(calendar_tool(calendar))
    if events is not None:
        tools.append(events_tool(events))
    if wearables is not None:
        tools.append(wearables_tool(wearables))
    if drives is not None:
        tools += drive_tools(drives)
    return ToolRegistry(tools, timeout=timeout)
