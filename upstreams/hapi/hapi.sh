#!/usr/bin/env bash
# Build, start and stop the HAPI FHIR JPA test upstream (see README.md).
#
#   hapi.sh build                  build target/hapi-upstream.jar (skipped when up to date)
#   hapi.sh start PORT [DATA_DIR]  start in the background, wait for /fhir/metadata
#   hapi.sh stop [DATA_DIR]        stop the server started with that DATA_DIR
#
# DATA_DIR (default: $TMPDIR/purgeproxy-hapi) holds hapi.pid, hapi.log and the H2
# database (DATA_DIR/h2), which is wiped on every start so each run is clean.
# Environment: HAPI_JAVA_OPTS (JVM flags), HAPI_START_TIMEOUT (seconds, default 180).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
JAR="$HERE/target/hapi-upstream.jar"
DEFAULT_DATA_DIR="${TMPDIR:-/tmp}/purgeproxy-hapi"
JAVA_OPTS="${HAPI_JAVA_OPTS:--Xmx1g -XX:+UseSerialGC -XX:TieredStopAtLevel=1}"
START_TIMEOUT="${HAPI_START_TIMEOUT:-180}"

die() { echo "hapi.sh: $*" >&2; exit 1; }

http_code() { curl -s -o /dev/null -m 5 -w '%{http_code}' "$1" 2>/dev/null || true; }

cmd_build() {
    if [[ -f "$JAR" ]] && [[ -z "$(find "$HERE/pom.xml" "$HERE/src" -newer "$JAR" -print -quit)" ]]; then
        echo "hapi.sh: $JAR is up to date"
        return 0
    fi
    (cd "$HERE" && mvn -q -B -Dstyle.color=never package -DskipTests)
    [[ -f "$JAR" ]] || die "build finished but $JAR is missing"
    echo "hapi.sh: built $JAR"
}

cmd_start() {
    local port="${1:-}" data_dir="${2:-$DEFAULT_DATA_DIR}"
    [[ "$port" =~ ^[0-9]+$ ]] || die "usage: hapi.sh start PORT [DATA_DIR]"
    [[ -f "$JAR" ]] || die "$JAR not built; run: hapi.sh build"
    mkdir -p "$data_dir"
    data_dir="$(cd "$data_dir" && pwd)"
    local pid_file="$data_dir/hapi.pid" log="$data_dir/hapi.log"
    if [[ -f "$pid_file" ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
        die "already running (pid $(cat "$pid_file")); run: hapi.sh stop $data_dir"
    fi
    local base="http://127.0.0.1:$port/fhir"
    [[ "$(http_code "$base/metadata")" == "000" ]] || die "something already answers on port $port"
    rm -rf "$data_dir/h2"
    # shellcheck disable=SC2086  # JAVA_OPTS is a list of flags
    nohup java $JAVA_OPTS -jar "$JAR" "$port" "$data_dir" >"$log" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$pid_file"
    local start=$SECONDS
    while (( SECONDS - start < START_TIMEOUT )); do
        if [[ "$(http_code "$base/metadata")" == "200" ]]; then
            echo "hapi.sh: HAPI FHIR up at $base (pid $pid, $((SECONDS - start)) s, log $log)"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$pid_file"
            echo "hapi.sh: server exited during start-up; last log lines:" >&2
            tail -n 40 "$log" >&2
            exit 1
        fi
        sleep 1
    done
    echo "hapi.sh: $base/metadata did not answer 200 within ${START_TIMEOUT}s; last log lines:" >&2
    tail -n 40 "$log" >&2
    kill "$pid" 2>/dev/null || true
    rm -f "$pid_file"
    exit 1
}

cmd_stop() {
    local data_dir="${1:-$DEFAULT_DATA_DIR}"
    local pid_file="$data_dir/hapi.pid"
    if [[ ! -f "$pid_file" ]]; then
        echo "hapi.sh: not running (no $pid_file)"
        return 0
    fi
    local pid
    pid="$(cat "$pid_file")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 1 30); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "hapi.sh: pid $pid ignored SIGTERM for 30 s; killing" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$pid_file"
    echo "hapi.sh: stopped (pid $pid)"
}

case "${1:-}" in
    build) shift; cmd_build "$@" ;;
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    *) die "usage: hapi.sh build | start PORT [DATA_DIR] | stop [DATA_DIR]" ;;
esac
