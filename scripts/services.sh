#!/usr/bin/env bash
# Long-running helper services for binderbuild's single-machine run mode.
#
#   scripts/services.sh start    start what is not already running
#   scripts/services.sh stop     stop what this script started
#   scripts/services.sh status   say what answers
#   scripts/services.sh gc       the registry's garbage collection, in a
#                                maintenance window: the registry turns
#                                read-only (pulls and lookups work, pushes
#                                fail), unreferenced blobs and unfinished
#                                uploads are deleted, then it is writable
#                                again
#
# Services:
#   registry   Docker distribution registry on 127.0.0.1:${BINDERBUILD_REGISTRY_PORT:-5000},
#              storing under $VAR/registry, with htpasswd authentication
#              and deletes disabled (BINDERBUILD_REGISTRY_DELETES=1 enables
#              them, for c.RegistryLifecycle.enabled). The credentials are made on the first
#              start (user binderbuild, random password) and kept in
#              $VAR/registry/credentials ("user:password", mode 600): only
#              binderbuild (push) and the hub's spawner (the engine's pull)
#              read them; servers and build steps never see them.
#              Log: $VAR/log/registry.log
#
# BINDERBUILD_VAR moves $VAR (default $ROOT/var), e.g. for tests.
#
# dockerd is started by scripts/setup.sh; tests start their own registries
# and git servers on free ports (tests/realservices.py), so they never depend
# on this script.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VAR="${BINDERBUILD_VAR:-$ROOT/var}"
LOG="$VAR/log"
RUN="$VAR/run"
REGISTRY_PORT="${BINDERBUILD_REGISTRY_PORT:-5000}"
REGISTRY_ADDR="127.0.0.1:$REGISTRY_PORT"
REGISTRY_DIR="$VAR/registry"
REGISTRY_PID="$RUN/registry.pid"
REGISTRY_CREDENTIALS="$REGISTRY_DIR/credentials"
REGISTRY_HTPASSWD="$REGISTRY_DIR/htpasswd"
REGISTRY_CONFIG="$REGISTRY_DIR/config.yml"
# 1: manifests may be deleted (binderbuild's registry lifecycle needs it).
REGISTRY_DELETES="${BINDERBUILD_REGISTRY_DELETES:-0}"

say() { printf 'services: %s\n' "$*"; }

registry_up() {
    # Any HTTP answer (401 with auth) means something listens.
    curl -s -o /dev/null --max-time 3 "http://$REGISTRY_ADDR/v2/"
}

random_hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }

ensure_credentials() {
    # Made once, then reused: binderbuild and the hub read the same file.
    if [ ! -s "$REGISTRY_CREDENTIALS" ] || [ ! -s "$REGISTRY_HTPASSWD" ]; then
        command -v htpasswd >/dev/null || { say "htpasswd missing (apache2-utils): run scripts/setup.sh"; exit 1; }
        local user=binderbuild password
        password="$(random_hex 24)"
        (
            umask 077
            printf '%s:%s\n' "$user" "$password" >"$REGISTRY_CREDENTIALS.tmp"
            htpasswd -Bbn "$user" "$password" | sed '/^$/d' >"$REGISTRY_HTPASSWD.tmp"
        )
        mv "$REGISTRY_HTPASSWD.tmp" "$REGISTRY_HTPASSWD"
        mv "$REGISTRY_CREDENTIALS.tmp" "$REGISTRY_CREDENTIALS"
        say "registry credentials made: $REGISTRY_CREDENTIALS"
    fi
    chmod 600 "$REGISTRY_CREDENTIALS" "$REGISTRY_HTPASSWD"
}

start_registry() {
    if registry_up; then
        say "registry already answering on $REGISTRY_ADDR"
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "http://$REGISTRY_ADDR/v2/" || true)"
        if [ "$code" = 200 ]; then
            say "WARNING: it answers without authentication (started by an older version?):"
            say "  run 'scripts/services.sh stop' then 'scripts/services.sh start'"
        fi
        return
    fi
    command -v docker-registry >/dev/null || { say "docker-registry missing: run scripts/setup.sh"; exit 1; }
    # Config (with the upload secret), credentials and data: root's only.
    umask 077
    mkdir -p "$LOG" "$RUN" "$REGISTRY_DIR/data"
    ensure_credentials
    write_config "${1:-false}"
    launch_registry
}

write_config() {
    # $1: read-only (true during garbage collection). The config is rewritten
    # each start so a changed ROOT, port or BINDERBUILD_REGISTRY_DELETES applies.
    local readonly="$1" deletes=false
    if [ "$REGISTRY_DELETES" = 1 ]; then deletes=true; fi
    cat >"$REGISTRY_CONFIG" <<EOF
version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $REGISTRY_DIR/data
  # Off unless BINDERBUILD_REGISTRY_DELETES=1 (binderbuild's registry
  # lifecycle deletes least recently used manifests): while off, a stolen
  # credential cannot delete images either.
  delete:
    enabled: $deletes
  maintenance:
    readonly:
      enabled: $readonly
auth:
  htpasswd:
    realm: binderbuild
    path: $REGISTRY_HTPASSWD
http:
  addr: $REGISTRY_ADDR
  # Shared secret of upload sessions; a new one each start.
  secret: $(random_hex 16)
EOF
}

launch_registry() {
    # setsid + nohup so the registry outlives the shell that started it.
    setsid nohup docker-registry serve "$REGISTRY_CONFIG" \
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

maintenance() {
    [ -n "${BINDERBUILD_ADMIN_URL:-}" ] || return 0
    local answer
    if ! answer="$(curl -sS --fail-with-body -X POST --max-time 900 \
        -H "Authorization: Bearer ${BINDERBUILD_ADMIN_TOKEN:-}" \
        "${BINDERBUILD_ADMIN_URL%/}/api/admin/maintenance?action=$1")"; then
        say "gc: binderbuild refused maintenance $1: $answer"
        exit 1
    fi
    say "gc: binderbuild maintenance $1: $answer"
}

purge_uploads() {
    # Unfinished blob uploads (<repository>/_uploads/<id>). Every failed
    # attempt of a push leaves one holding what it wrote (a push that hits a
    # full disk leaves one per retry), and the registry's own purge only
    # removes them after a week. While the registry is read-only no upload is
    # in progress, so all of them are stale; a client whose upload was cut by
    # the window starts it over. Repository names cannot start with "_", so
    # only upload directories match.
    local repositories="$REGISTRY_DIR/data/docker/registry/v2/repositories" count
    [ -d "$repositories" ] || return 0
    count="$(find "$repositories" -path '*/_uploads/*' -prune -type d | wc -l)"
    find "$repositories" -path '*/_uploads/*' -prune -exec rm -rf {} +
    [ "$count" = 0 ] || say "gc: $count unfinished uploads removed"
}

gc_registry() {
    # Not stop-the-world: the registry is read-only meanwhile, so lookups and
    # pulls keep working; pushes (a build finishing) fail during the window,
    # and each restart costs about a second. Run it when few builds run.
    if [ ! -f "$REGISTRY_PID" ] || ! kill -0 "$(cat "$REGISTRY_PID")" 2>/dev/null; then
        say "gc: the registry was not started by this script (start it first)"
        exit 1
    fi
    # With BINDERBUILD_ADMIN_URL (binderbuild's URL) and BINDERBUILD_ADMIN_TOKEN
    # (one of its api_tokens), binderbuild opens a maintenance window first:
    # running builds finish, new ones queue until the window ends.
    maintenance start
    stop_registry >/dev/null
    start_registry true >/dev/null
    say "gc: registry read-only"
    local before after status=0
    before="$(du -sb "$REGISTRY_DIR/data" | cut -f1)"
    docker-registry garbage-collect "$REGISTRY_CONFIG" >>"$LOG/registry-gc.log" 2>&1 || status=$?
    purge_uploads
    after="$(du -sb "$REGISTRY_DIR/data" | cut -f1)"
    stop_registry >/dev/null
    start_registry false >/dev/null
    maintenance end
    if [ "$status" != 0 ]; then
        say "gc: garbage-collect failed ($status); see $LOG/registry-gc.log; registry writable again"
        exit "$status"
    fi
    say "gc: $((before - after)) bytes freed ($before -> $after); registry writable again"
}

case "${1:-}" in
    start) start_registry false ;;
    stop) stop_registry ;;
    gc) gc_registry ;;
    # scripts/backup.sh: the registry read-only while its data is copied.
    readonly) stop_registry >/dev/null; start_registry true ;;
    writable) stop_registry >/dev/null; start_registry false ;;
    status)
        if registry_up; then say "registry: up on $REGISTRY_ADDR"; else say "registry: down"; fi ;;
    *) echo "usage: $0 start|stop|status|gc|readonly|writable" >&2; exit 2 ;;
esac
