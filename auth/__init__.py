"""The auth service: who a person is, and the tokens that prove it to the rest of the mesh.

Modules, one concept each:

- `settings`: `AuthSettings` (env prefix `AUTH_`), identity providers included.
- `keys`: the signing key ring (RSA PEM files named by `kid`, generation, rotation, the JWKS).
- `access`: issuing RS256 access tokens.
- `sessions`: refresh-token families, rotation and reuse detection, DevLogin, erasure — the domain.
- `oidc`: the OIDC authorization-code flow with PKCE against Google and Microsoft.
- `store`: the storage protocol the domain uses, with an in-memory implementation for unit tests;
  `postgres`: the asyncpg implementation; `migrations/`: its SQL schema (yoyo).
- `servicer`: the thin gRPC `AuthService`; `server`: wiring for `python -m auth serve`.

Domain modules import neither `grpc` nor generated code; only `servicer` and `server` do.
"""
