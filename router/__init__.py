"""The public door of AthenaOS for everything but the chat stream: ChatService's agents and conversations,
and AccountService, routed to the memory and auth services. Every object is scoped to the caller's token.

The chat stream itself (`ChatService.Chat`) is served by the orchestrator, where the edge routes it."""
