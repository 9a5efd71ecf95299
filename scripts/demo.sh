#!/usr/bin/env bash
# `make run`: a real FHIR upstream (Medplum's engine, in memory) with purgeproxy in front of it.
set -euo pipefail
cd "$(dirname "$0")/.."
UPSTREAM_PORT=${UPSTREAM_PORT:-8080}
PROXY_PORT=${PROXY_PORT:-8000}
export PURGEPROXY_ADMIN_TOKEN=${PURGEPROXY_ADMIN_TOKEN:-demo-admin-token}
export PURGEPROXY_UPSTREAM="http://127.0.0.1:${UPSTREAM_PORT}/fhir"

node upstreams/medplum/server.js --port "$UPSTREAM_PORT" --base /fhir > .demo-upstream.log 2>&1 &
UPSTREAM_PID=$!
trap 'kill $UPSTREAM_PID 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 1 100); do
  grep -q '^READY' .demo-upstream.log 2>/dev/null && break
  kill -0 $UPSTREAM_PID 2>/dev/null || { cat .demo-upstream.log; exit 1; }
  sleep 0.2
done

cat <<MSG
Upstream FHIR server (Medplum engine, in memory): $PURGEPROXY_UPSTREAM
purgeproxy FHIR base:                             http://127.0.0.1:${PROXY_PORT}/fhir

Try it:
  curl -s -X POST http://127.0.0.1:${PROXY_PORT}/fhir/Patient -H 'Content-Type: application/fhir+json' \\
       -d '{"resourceType":"Patient","name":[{"family":"Demo"}]}'
  curl -s http://127.0.0.1:${PROXY_PORT}/fhir/Patient
  curl -s -X POST http://127.0.0.1:${PROXY_PORT}/fhir/Patient/<id>/\$purge \\
       -H "Authorization: Bearer \$PURGEPROXY_ADMIN_TOKEN"        # token: $PURGEPROXY_ADMIN_TOKEN
Stop with Ctrl-C.
MSG
.venv/bin/purgeproxy serve --config config.example.yaml --port "$PROXY_PORT"
