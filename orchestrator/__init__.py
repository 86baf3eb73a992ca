"""The agent runtime: one user message in, a streamed, tool-using, memory-aware answer out (SPEC §4).

Modules, one concept each: `catalog` (agents), `prompt` (packaging, pure), `model` (the LLM boundary),
`tools` (schemas, registry, providers), `turn` (the run loop, domain events), `memory_client` (the memory
service), `service` (the gRPC servicer), `app` (wiring), `settings`. The deterministic OpenAI-compatible server
used without an API key is the top-level package `offline_model`.
"""
