"""The public door of AthenaOS: ChatService and AccountService, routed to the orchestrator pool and the
memory and auth services. Every object is scoped to the caller's token."""
