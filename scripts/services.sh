#!/usr/bin/env bash
# Long-running helper services for binderbuild's single-machine run mode.
#
#   scripts/services.sh start    start what is not already running
#   scripts/services.sh stop     stop what this script started
#   scripts/services.sh status   say what answers
#
# Services:
#   registry   Docker distribution registry on 127.0.0.1:${BINDERBUILD_REGISTRY_PORT:-5000},
#              storing under $ROOT/var/registry, deletes enabled, no auth
#              (loopback only). Log: $ROOT/var/log/registry.log
#
# dockerd is started by scripts/setup.sh; tests start their own registries
# and git servers on free ports (tests/realservices.py), so they never depend
# on this script.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VAR="$ROOT/var"
LOG="$VAR/log"
RUN="$VAR/run"
REGISTRY_PORT="${BINDERBUILD_REGISTRY_PORT:-5000}"
REGISTRY_ADDR="127.0.0.1:$REGISTRY_PORT"
REGISTRY_DIR="$VAR/registry"
REGISTRY_PID="$RUN/registry.pid"

say() { printf 'services: %s\n' "$*"; }

registry_up() {
    # /v2/ answers 200 without auth; any HTTP answer means something listens.
    curl -s -o /dev/null --max-time 3 "http://$REGISTRY_ADDR/v2/"
}

start_registry() {
    if registry_up; then
        say "registry already answering on $REGISTRY_ADDR"
        return
    fi
    command -v docker-registry >/dev/null || { say "docker-registry missing: run scripts/setup.sh"; exit 1; }
    mkdir -p "$LOG" "$RUN" "$REGISTRY_DIR/data"
    # The config is rewritten each start so a changed ROOT or port applies.
    cat >"$REGISTRY_DIR/config.yml" <<EOF
version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $REGISTRY_DIR/data
  delete:
    enabled: true
http:
  addr: $REGISTRY_ADDR
EOF
    # setsid + nohup so the registry outlives the shell that started it.
    setsid nohup docker-registry serve "$REGISTRY_DIR/config.yml" \
        >>"$LOG/registry.log" 2>&1 </dev/null &
    echo $! >"$REGISTRY_PID"
    for _ in $(seq 50); do
        registry_up && { say "registry on http://$REGISTRY_ADDR (data: $REGISTRY_DIR/data)"; return; }
        sleep 0.2
    done
    say "registry did not answer; see $LOG/registry.log"
    tail -n 20 "$LOG/registry.log" >&2 || true
    exit 1
}

stop_registry() {
    # Only the process this script started (by its pid), never by name.
    if [ -f "$REGISTRY_PID" ]; then
        pid="$(cat "$REGISTRY_PID")"
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid"
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
            say "registry stopped"
        fi
        rm -f "$REGISTRY_PID"
    else
        say "registry was not started by this script"
    fi
}

case "${1:-}" in
    start) start_registry ;;
    stop) stop_registry ;;
    status)
        if registry_up; then say "registry: up on $REGISTRY_ADDR"; else say "registry: down"; fi ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
