"""The whole mesh on one machine: embedded PostgreSQL and Valkey, the four services, the offline model and
Envoy, started on loopback in dependency order (`make run`, and the end-to-end tests)."""
