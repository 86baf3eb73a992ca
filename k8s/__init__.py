"""Kubernetes deployment of AthenaOS: kustomize base and overlays, and the Envoy ConfigMap renderer."""
