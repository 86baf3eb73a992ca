"""The offline model: an OpenAI-compatible HTTP server with deterministic answers and a hashing embedder.

It lets the whole product run without an API key and makes tests deterministic (SPEC §4). Start it with
`python -m offline_model`; `rules` decides the answers, `embeddings` embeds, `server` speaks
the OpenAI wire format (`OfflineModelServer` also runs it inside a test's event loop).
"""
