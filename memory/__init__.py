"""The memory service: what AthenaOS stores about each user (SPEC §3).

PostgreSQL with pgvector holds agents, conversations with their messages and long-term memories; a
Redis-compatible server holds ephemeral values with a time to live. Every call acts for the user named by
the verified access token, and row-level security scopes each transaction (or, for the turn's single
statements, the connection's session) to that user as well.

    settings      MemorySettings (env prefix MEMORY_)
    domain        records and the checks the contract cannot state: no I/O, no gRPC
    ranking       the recall score; pagination: page tokens
    recall        the two-stage retrieval (vector, then keyword) over a `MemoryStore`
    stores        the storage ports the servicers and recall depend on
    embeddings    the `Embedder` port and its OpenAI-compatible adapter
    migrate       the schema's migrations (memory/migrations) and the embedding-dimension check
    database      per-user transactions and statements on the pool (row-level security)
    repository    the SQL behind the stores
    ephemeral     Redis values with a TTL, namespaced per user
    convert       domain records <-> protobuf
    service       thin servicers: proto in → domain → proto out
    app           the assembly (`MEMORY`), used by `python -m memory`, `make run` and the tests
"""
