#!/usr/bin/env bash
# Creates the Secrets the manifests use but never contain, once: a Secret that already exists
# is left as it is (rotate with the commands in deploy/README.md, "Secrets"), and since no
# kustomization renders them, `kubectl apply -k` never overwrites them either.
#   deploy/k8s/secrets.sh [NAMESPACE]        (default: headwater; the namespace must exist)
# Instead of this script, an external-secrets or sealed-secrets object of the same name and
# keys works the same way. tests/deploy/test_cluster_manifests.py checks that every Secret
# key a manifest reads is created here (or by an operator).
set -euo pipefail
ns="${1:-headwater}"

# A random URL-safe password (it goes into the ClickHouse DSN).
password() { openssl rand -hex 24; }

# ensure_secret NAME KEY=VALUE|KEY@FILE...: create Secret NAME unless it exists.
ensure_secret() {
  local name="$1"; shift
  if kubectl -n "$ns" get secret "$name" >/dev/null 2>&1; then
    echo "secret/$name exists: left unchanged"
    return
  fi
  local args=()
  for kv in "$@"; do
    case "$kv" in
      *@*) args+=("--from-file=${kv%%@*}=${kv#*@}") ;;
      *) args+=("--from-literal=$kv") ;;
    esac
  done
  kubectl -n "$ns" create secret generic "$name" "${args[@]}"
  kubectl -n "$ns" label secret "$name" app.kubernetes.io/part-of=headwater >/dev/null
}

# ClickHouse users `headwater` (read-write) and `auditor` (read-only); the Altinity operator
# reads them (k8s_secret_password) and the Headwater pods build their DSN from `password`.
ensure_secret headwater-clickhouse \
  "password=$(password)" \
  "auditor-password=$(password)"

# The query service's token file: starts with no tokens (every call but health is refused).
# Add a line per client with `python -m headwater.query_service.server.auth new-token ROLE NAME`
# and replace the Secret (deploy/README.md, "Secrets").
tokens="$(mktemp)"
trap 'rm -f "$tokens"' EXIT
echo "# <sha256-hex> <role> [name]; roles: producer, unlearner, reader, auditor, admin" > "$tokens"
ensure_secret headwater-query-tokens "tokens@$tokens"
