#!/usr/bin/env bash
# Back up and restore binderbuild's state directory
# (docs/public-single-machine.md#backup):
#
#   bash scripts/backup.sh create  [--state DIR] [--out FILE.tar]
#   bash scripts/backup.sh restore FILE.tar [--state DIR] [--force]
#
# DIR: the state directory (default $BINDERBUILD_VAR, else this checkout's
# var/; an installed machine uses /var/lib/binderbuild).
#
# create, while the stack runs or not:
#   - every SQLite database (the hub's users, servers and tokens; the build
#     history and image usage) is copied with SQLite's online backup API, so
#     each copy is one consistent snapshot however busy the database is;
#   - the registry's data is copied with the registry read-only (pulls and
#     lookups keep working; a build finishing meanwhile fails to push and
#     says so) when scripts/services.sh runs it, else as it is (stopped);
#   - everything else (tokens, cookie secret, registry credentials,
#     certificates, configuration) as files. Logs and pid files are left out.
# restore refuses while a stack runs on DIR, and into a DIR that is not
# empty unless --force (the old contents are moved to DIR.before-restore-*).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || PY=python3
STATE="${BINDERBUILD_VAR:-$ROOT/var}"
OUT=""
FORCE=0

say() { printf 'backup: %s\n' "$*"; }
die() { printf 'backup: ERROR: %s\n' "$*" >&2; exit 1; }

cmd="${1:-}"
[ $# -gt 0 ] && shift
ARCHIVE=""
if [ "$cmd" = restore ]; then
    [ $# -gt 0 ] || die "restore needs the backup file"
    ARCHIVE="$(realpath "$1")"; shift
fi
while [ $# -gt 0 ]; do
    case "$1" in
        --state) STATE="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --force) FORCE=1; shift ;;
        *) die "unknown argument $1" ;;
    esac
done

# Is a process of this state directory's stack alive? (pid files of run.sh
# and services.sh; a stale file names a dead pid.)
stack_running() {
    local f pid
    for f in "$STATE"/singlemachine/run/*.pid "$STATE"/run/registry.pid; do
        [ -f "$f" ] || continue
        pid="$(cat "$f" 2>/dev/null || true)"
        [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && return 0
    done
    return 1
}

registry_running() {
    local pid
    pid="$(cat "$STATE/run/registry.pid" 2>/dev/null || true)"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

registry_port() {
    sed -n 's/^  addr: .*:\([0-9]*\)$/\1/p' "$STATE/registry/config.yml" 2>/dev/null | head -n1
}

create() {
    [ -d "$STATE" ] || die "no state directory at $STATE"
    STATE="$(realpath "$STATE")"
    [ -n "$OUT" ] || OUT="$PWD/binderbuild-backup-$(date -u +%Y%m%dT%H%M%SZ).tar"
    OUT="$(realpath -m "$OUT")"
    case "$OUT" in "$STATE"/*) die "--out must be outside the state directory" ;; esac
    STAGING="$(mktemp -d "$(dirname "$OUT")/.binderbuild-backup.XXXXXX")"
    trap 'rm -rf "$STAGING"' EXIT
    mkdir -p "$STAGING/db"
    # 1. SQLite databases, found by their header, through the backup API.
    "$PY" - "$STATE" "$STAGING/db" "$STAGING/exclude" <<'PYEOF'
import os
import sqlite3
import sys

state, dest, exclude = sys.argv[1:4]
skip = {"log", "run", os.path.join("singlemachine", "run")}
excluded = []
for dirpath, dirnames, filenames in os.walk(state):
    rel_dir = os.path.relpath(dirpath, state)
    dirnames[:] = [d for d in dirnames if os.path.normpath(os.path.join(rel_dir, d)) not in skip]
    if rel_dir.startswith(os.path.join("registry", "data")):
        continue
    for name in filenames:
        path = os.path.join(dirpath, name)
        rel = os.path.normpath(os.path.relpath(path, state))
        try:
            with open(path, "rb") as f:
                magic = f.read(16)
        except OSError:
            continue
        if magic != b"SQLite format 3\x00":
            continue
        target = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        dst = sqlite3.connect(target)
        with dst:
            src.backup(dst)
        dst.close()
        src.close()
        print(f"backup: {rel}: SQLite snapshot", file=sys.stderr)
        for suffix in ("", "-wal", "-shm", "-journal"):
            excluded.append("./" + rel + suffix)
with open(exclude, "w") as f:
    f.write("\n".join(excluded) + "\n")
PYEOF
    # 2. Everything else; the registry read-only meanwhile when it runs here.
    local readonly=0 port
    port="$(registry_port)"
    if registry_running && [ -n "$port" ]; then
        BINDERBUILD_VAR="$STATE" BINDERBUILD_REGISTRY_PORT="$port" \
            bash "$ROOT/scripts/services.sh" readonly >/dev/null
        readonly=1
        say "registry read-only while its data is copied"
    fi
    local status=0
    tar -C "$STATE" -cf "$OUT.part" -X "$STAGING/exclude" \
        --exclude=./log --exclude=./run --exclude=./singlemachine/run \
        --exclude=./registry/data/docker/registry/v2/repositories/*/_uploads \
        . || status=$?
    if [ "$readonly" = 1 ]; then
        BINDERBUILD_VAR="$STATE" BINDERBUILD_REGISTRY_PORT="$port" \
            bash "$ROOT/scripts/services.sh" writable >/dev/null
        say "registry writable again"
    fi
    [ "$status" = 0 ] || { rm -f "$OUT.part"; die "tar failed ($status)"; }
    # 3. The database snapshots, at their own paths.
    printf 'binderbuild backup\ncreated %s\nfrom %s\n' "$(date -u +%FT%TZ)" "$STATE" >"$STAGING/db/BACKUP-INFO"
    tar -C "$STAGING/db" -rf "$OUT.part" .
    mv "$OUT.part" "$OUT"
    chmod 600 "$OUT"
    say "wrote $OUT ($(du -h "$OUT" | cut -f1))"
}

restore() {
    [ -f "$ARCHIVE" ] || die "no backup file $ARCHIVE"
    tar -tf "$ARCHIVE" ./BACKUP-INFO >/dev/null 2>&1 || die "$ARCHIVE is not a binderbuild backup"
    if [ -d "$STATE" ]; then
        stack_running && die "a stack is running on $STATE: stop it first (systemctl stop binderbuild)"
        if [ -n "$(ls -A "$STATE")" ]; then
            [ "$FORCE" = 1 ] || die "$STATE is not empty (use --force to move it aside)"
            local aside
            aside="$STATE.before-restore-$(date -u +%Y%m%dT%H%M%SZ)"
            mv "$STATE" "$aside"
            say "moved the old state to $aside"
        fi
    fi
    mkdir -p "$STATE"
    chmod 700 "$STATE"
    tar -C "$STATE" -xpf "$ARCHIVE"
    rm -f "$STATE/BACKUP-INFO"
    say "restored $ARCHIVE into $STATE; start the stack (systemctl start binderbuild)"
}

case "$cmd" in
    create) create ;;
    restore) restore ;;
    *) echo "usage: $0 create [--state DIR] [--out FILE] | restore FILE [--state DIR] [--force]" >&2; exit 2 ;;
esac
