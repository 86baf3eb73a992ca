#!/usr/bin/env bash
# DEV ONLY: create the Secrets the dev overlay expects, with random passwords and a fresh signing key.
# Nothing secret is committed: run this once per cluster, from the repository root, before or after
# `kubectl apply -k k8s/overlays/dev` (pods wait for their Secrets). Secrets that exist are kept, so a
# second run never changes the password of a database that is already initialised.
#
#   k8s/overlays/dev/create-secrets.sh            # namespace athena, kubectl's current context
#   NAMESPACE=athena PYTHON=.venv/bin/python k8s/overlays/dev/create-secrets.sh
set -euo pipefail

namespace=${NAMESPACE:-athena}
python=${PYTHON:-.venv/bin/python}
kubectl=${KUBECTL:-kubectl}

random() { "$python" -c 'import secrets; print(secrets.token_urlsafe(32))'; }

exists() { "$kubectl" --namespace "$namespace" get secret "$1" >/dev/null 2>&1; }

create() {
  local name=$1
  shift
  if exists "$name"; then
    echo "secret/$name exists, kept"
  else
    "$kubectl" --namespace "$namespace" create secret generic "$name" "$@"
  fi
}

"$kubectl" get namespace "$namespace" >/dev/null 2>&1 || "$kubectl" create namespace "$namespace"

# PostgreSQL: the superuser, and the application role `athena` (init-athena.sh creates it).
create postgres-superuser --from-literal=password="$(random)"
if exists postgres-athena; then
  athena_password=$("$kubectl" --namespace "$namespace" get secret postgres-athena \
    --output 'go-template={{.data.password | base64decode}}')
else
  athena_password=$(random)
  create postgres-athena --from-literal=password="$athena_password"
fi
database_url="postgresql://athena:${athena_password}@postgres.${namespace}.svc.cluster.local:5432/athena"

# Valkey, and the URLs memory, auth and integrations connect with (every service follows the revocation
# list at memory-datastores' redis-url).
if exists valkey; then
  valkey_password=$("$kubectl" --namespace "$namespace" get secret valkey \
    --output 'go-template={{.data.password | base64decode}}')
else
  valkey_password=$(random)
  create valkey --from-literal=password="$valkey_password"
fi
create memory-datastores \
  --from-literal=database-url="$database_url" \
  --from-literal=redis-url="redis://:${valkey_password}@valkey.${namespace}.svc.cluster.local:6379/0"
create auth-database --from-literal=database-url="$database_url"
# The same database for integrations (its tables are in its own schema, `integrations`).
create integrations-database --from-literal=database-url="$database_url"

# The key of internal calls made for no user (the orchestrator's catalog sync to memory).
create athena-service-key --from-literal=service-key="$(random)"

# A first signing key for access tokens (`<kid>.pem`); rotate later as k8s/README.md shows.
if ! exists auth-signing-keys; then
  keys=$(mktemp -d)
  trap 'rm -rf "$keys"' EXIT
  AUTH_KEYS_DIR="$keys/keys" "$python" -m auth rotate-keys
  create auth-signing-keys --from-file="$keys/keys"
fi

# A first key-encryption key for the users' data keys (ATHENA_KMS=local); rotate as k8s/README.md shows.
if ! exists athena-kms-keys; then
  kms=$(mktemp -d)
  "$python" -m mesh.kms rotate --keys-dir "$kms/keys"
  create athena-kms-keys --from-file="$kms/keys"
  rm -rf "$kms"
fi

# The deployment's VAPID key for Web Push (`private_key.pem`): every memory replica signs with it, and
# browsers subscribe with its public half. A new key unsubscribes every device: keep it.
if ! exists memory-vapid-key; then
  vapid=$(mktemp -d)
  MEMORY_VAPID_KEY_FILE="$vapid/private_key.pem" "$python" -m memory generate-vapid-key
  create memory-vapid-key --from-file="$vapid/private_key.pem"
  rm -rf "$vapid"
fi

# Optional, not created here: model-api (api-key) to use a real model instead of the offline one — then
# also set OPENAI_BASE_URL —, auth-oidc (AUTH_GOOGLE__CLIENT_ID, ...) for Google/Microsoft sign-in, and
# integrations-oauth (INTEGRATIONS_GOOGLE__CLIENT_ID, INTEGRATIONS_GOOGLE__CLIENT_SECRET,
# INTEGRATIONS_MICROSOFT__CLIENT_ID, INTEGRATIONS_MICROSOFT__CLIENT_SECRET) to connect Google/Microsoft
# accounts; a provider is offered only when its client id is set. For example:
#   kubectl -n athena create secret generic integrations-oauth \
#     --from-literal=INTEGRATIONS_GOOGLE__CLIENT_ID=... --from-literal=INTEGRATIONS_GOOGLE__CLIENT_SECRET=...
echo "dev secrets ready in namespace $namespace"
