"""The public door of AthenaOS: ChatService and AccountService, routed to the orchestrator pool and the
memory and auth services. Every object is scoped to the caller's token.

Chat turns are rate limited per user (concurrent streams, turns per minute; `router.limits`) with counters
shared by every router replica in Redis. When Redis is down the limits are not enforced and a WARNING is
logged: availability over limits."""
