"""The Envoy edge: one source that renders its configuration for local runs and for Kubernetes."""
