"""The memory service: what AthenaOS stores about each user (SPEC §3).

PostgreSQL with pgvector holds agents, conversations with their messages and long-term memories; a
Redis-compatible server holds ephemeral values with a time to live. Every call acts for the user named by
the verified access token, and row-level security scopes each transaction to that user as well.

    settings      MemorySettings (env prefix MEMORY_)
    domain        records, validation, ranking, page tokens: no I/O, no gRPC
    recall        the two-stage retrieval (vector, then keyword) over a `MemoryStore`
    embeddings    `Embedder` protocol, the OpenAI implementation and a deterministic hashing fake
    migrate       yoyo migrations (memory/migrations) and the embedding-dimension check
    database      asyncpg pool, per-user transactions, driver errors → mesh.errors
    repository    the SQL behind the stores
    ephemeral     Redis values with a TTL, namespaced per user
    service       thin servicers: proto in → domain → proto out
    app           wiring, used by `python -m memory` and by the tests
"""
