#!/usr/bin/env bash
# `make run`: a real FHIR upstream with purgeproxy in front of it, seeded with synthetic patients;
# then, with the CLI, a dry run and a purge of them, and the job list. The proxy keeps serving
# afterwards (Ctrl-C stops everything) unless DEMO_KEEP_RUNNING=0.
#
#   DEMO_UPSTREAM=medplum (default: Medplum's engine, in memory, starts in seconds)
#   DEMO_UPSTREAM=hapi    (HAPI FHIR JPA: built with Maven on first use, ~20-60 s to start)
#   DEMO_PATIENTS=3  UPSTREAM_PORT=8080  PROXY_PORT=8000
#
# e.g. `make run DEMO_UPSTREAM=hapi`.
set -euo pipefail
cd "$(dirname "$0")/.."
UPSTREAM_KIND=${DEMO_UPSTREAM:-medplum}
UPSTREAM_PORT=${UPSTREAM_PORT:-8080}
PROXY_PORT=${PROXY_PORT:-8000}
PATIENTS=${DEMO_PATIENTS:-3}
DEMO_DIR=${DEMO_DIR:-.demo}
BIN=${BIN:-.venv/bin}
mkdir -p "$DEMO_DIR"
DEMO_DIR=$(cd "$DEMO_DIR" && pwd)
export PURGEPROXY_ADMIN_TOKEN=${PURGEPROXY_ADMIN_TOKEN:-demo-admin-token}
export PURGEPROXY_UPSTREAM="http://127.0.0.1:${UPSTREAM_PORT}/fhir"
export PURGEPROXY_DEMO_DIR="$DEMO_DIR"
export PURGEPROXY_URL="http://127.0.0.1:${PROXY_PORT}/fhir"
export PURGEPROXY_TOKEN="$PURGEPROXY_ADMIN_TOKEN"

PIDS=()
stop_all() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [[ "$UPSTREAM_KIND" == hapi ]]; then upstreams/hapi/hapi.sh stop "$DEMO_DIR/hapi" >/dev/null 2>&1 || true; fi
}
trap stop_all EXIT
trap 'exit 130' INT TERM

wait_for() {  # URL PID LOG: until URL answers 200 (at most 180 s), or the process died
  local deadline=$((SECONDS + 180))
  while (( SECONDS < deadline )); do
    [[ "$(curl -s -o /dev/null -m 5 -w '%{http_code}' "$1" || true)" == 200 ]] && return 0
    kill -0 "$2" 2>/dev/null || { cat "$3" >&2; exit 1; }
    sleep 0.2
  done
  echo "demo: $1 did not answer" >&2; tail -n 40 "$3" >&2; exit 1
}

case "$UPSTREAM_KIND" in
  medplum)
    node upstreams/medplum/server.js --port "$UPSTREAM_PORT" --base /fhir > "$DEMO_DIR/upstream.log" 2>&1 &
    PIDS+=($!)
    wait_for "$PURGEPROXY_UPSTREAM/metadata" "${PIDS[-1]}" "$DEMO_DIR/upstream.log"
    NAME="Medplum's FHIR engine, in memory" ;;
  hapi)
    upstreams/hapi/hapi.sh build
    upstreams/hapi/hapi.sh start "$UPSTREAM_PORT" "$DEMO_DIR/hapi"
    NAME="HAPI FHIR JPA" ;;
  *) echo "demo: DEMO_UPSTREAM is medplum or hapi, not '$UPSTREAM_KIND'" >&2; exit 2 ;;
esac

rm -f "$DEMO_DIR"/jobs.sqlite3*
"$BIN/purgeproxy" serve --config scripts/demo.yaml --port "$PROXY_PORT" > "$DEMO_DIR/proxy.log" 2>&1 &
PIDS+=($!)
wait_for "http://127.0.0.1:${PROXY_PORT}/healthz" "${PIDS[-1]}" "$DEMO_DIR/proxy.log"  # the upstream is up already

echo "== Upstream ($NAME): $PURGEPROXY_UPSTREAM"
echo "== purgeproxy: $PURGEPROXY_URL  (token: \$PURGEPROXY_TOKEN=$PURGEPROXY_TOKEN; logs: $DEMO_DIR/proxy.log)"
echo "== Seeding $PATIENTS synthetic patients straight into the upstream"
"$BIN/python" -m purgeproxy.demo "$PURGEPROXY_UPSTREAM" --patients "$PATIENTS" > "$DEMO_DIR/patients.txt"
FIRST=$(head -n 1 "$DEMO_DIR/patients.txt")
echo
echo "\$ purgeproxy purge --dry-run --details $FIRST"
"$BIN/purgeproxy" purge --dry-run --details "$FIRST" || true
echo
echo "\$ purgeproxy purge --dry-run --from-file $DEMO_DIR/patients.txt"
"$BIN/purgeproxy" purge --dry-run --from-file "$DEMO_DIR/patients.txt" || true
echo
echo "\$ purgeproxy purge --confirm --from-file $DEMO_DIR/patients.txt"
"$BIN/purgeproxy" purge --confirm --from-file "$DEMO_DIR/patients.txt" || true
echo
echo "\$ purgeproxy jobs list"
"$BIN/purgeproxy" jobs list
echo
TAG=${FIRST%-p1}
for path in "Patient/$FIRST" "Group/$TAG-household" "Coverage/$TAG-family-plan" "AuditEvent/$TAG-audit"; do
  echo "GET $path -> HTTP $(curl -s -o /dev/null -w '%{http_code}' "$PURGEPROXY_URL/$path")"
done
echo "(the Patient is gone; the shared Group and Coverage and the AuditEvent are kept. HAPI refuses to"
echo " delete a Patient that kept resources still reference: there the purge says incomplete and names them)"

if [[ "${DEMO_KEEP_RUNNING:-1}" == 0 ]]; then exit 0; fi
cat <<MSG

The proxy keeps serving. Try (in another shell, with the two exports):
  export PURGEPROXY_URL=$PURGEPROXY_URL PURGEPROXY_TOKEN=$PURGEPROXY_TOKEN
  .venv/bin/python -m purgeproxy.demo $PURGEPROXY_UPSTREAM --patients 1 | xargs .venv/bin/purgeproxy purge --confirm
  .venv/bin/purgeproxy jobs list
  curl -s $PURGEPROXY_URL/metadata | head -c 300
Stop with Ctrl-C.
MSG
wait "${PIDS[-1]}"
