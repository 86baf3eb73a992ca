"""The agent runtime: one user message in, a streamed, tool-using, memory-aware answer out (SPEC §4).

Modules, one concept each: `catalog` (agents), `prompt` (packaging, pure), `model` (the LLM boundary),
`tools` (schemas, registry, providers), `turn` (the run loop), `events` (what a turn emits), `records`
(plain data), `ports` (what the turn needs from memory), `memory_client` (that port over gRPC),
`service` (the gRPC servicer), `app` (assembly), `settings`. The deterministic OpenAI-compatible server
used without an API key is the top-level package `offline_model`.
"""
