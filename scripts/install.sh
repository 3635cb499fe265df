#!/usr/bin/env bash
# Install binderbuild as a systemd service that starts on boot
# (docs/public-single-machine.md):
#
#   bash scripts/install.sh [--public https://name[:port]] [--listen ADDR]
#       [--tls-cert FILE --tls-key FILE] [--http-port N] [--hsts SECONDS]
#       [--set KEY=VALUE]... [--state DIR] [--config-dir DIR] [--unit-dir DIR]
#       [--no-setup] [--no-start]
#
# Writes, from this checkout:
#   UNIT_DIR/binderbuild.service   (default /etc/systemd/system) running
#                                  this checkout's scripts/run.sh
#   CONFIG_DIR/binderbuild.env     (default /etc/binderbuild) the run.sh
#                                  settings (BINDERBUILD_* variables); options
#                                  given here replace their keys, every other
#                                  line is kept
#   CONFIG_DIR/config.py           the operator's binderbuild configuration,
#                                  loaded last (made empty once, never
#                                  overwritten)
# State (hub database, tokens, build history, registry data, certificates)
# lives in STATE_DIR (default /var/lib/binderbuild) and is never touched by
# an install: installing a newer checkout over an older one is the upgrade.
# Then, when systemd runs this machine: daemon-reload, enable, (re)start.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
UNIT_DIR=/etc/systemd/system
CONFIG_DIR=/etc/binderbuild
STATE_DIR=/var/lib/binderbuild
SETUP=1
START=1
SETTINGS=()

say() { printf 'install: %s\n' "$*"; }
die() { printf 'install: ERROR: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --public) SETTINGS+=("BINDERBUILD_PUBLIC=$2"); shift 2 ;;
        --listen) SETTINGS+=("BINDERBUILD_LISTEN=$2"); shift 2 ;;
        --tls-cert) SETTINGS+=("BINDERBUILD_TLS_CERT=$(realpath "$2")"); shift 2 ;;
        --tls-key) SETTINGS+=("BINDERBUILD_TLS_KEY=$(realpath "$2")"); shift 2 ;;
        --http-port) SETTINGS+=("BINDERBUILD_HTTP_PORT=$2"); shift 2 ;;
        --hsts) SETTINGS+=("BINDERBUILD_HSTS=$2"); shift 2 ;;
        --set) SETTINGS+=("$2"); shift 2 ;;
        --state) STATE_DIR="$2"; shift 2 ;;
        --config-dir) CONFIG_DIR="$2"; shift 2 ;;
        --unit-dir) UNIT_DIR="$2"; shift 2 ;;
        --no-setup) SETUP=0; shift ;;
        --no-start) START=0; shift ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (try --help)" ;;
    esac
done
for kv in "${SETTINGS[@]}"; do
    [[ "$kv" =~ ^BINDERBUILD_[A-Z_]+=[^$'\n']*$ ]] || die "not a BINDERBUILD_KEY=value setting: $kv"
    [[ "$kv" != BINDERBUILD_VAR=* ]] || die "the state directory is --state, not BINDERBUILD_VAR"
done
case "$STATE_DIR" in /*) ;; *) die "--state must be an absolute path" ;; esac

if [ "$SETUP" = 1 ]; then
    bash "$ROOT/scripts/setup.sh"
fi

mkdir -p "$UNIT_DIR" "$CONFIG_DIR" "$STATE_DIR"
STATE_DIR="$(realpath "$STATE_DIR")"
CONFIG_DIR="$(realpath "$CONFIG_DIR")"
chmod 700 "$STATE_DIR"
ENV_FILE="$CONFIG_DIR/binderbuild.env"
CONFIG_FILE="$CONFIG_DIR/config.py"

# The settings file: kept across installs; given options replace their key.
python3 - "$ENV_FILE" "${SETTINGS[@]}" <<'PYEOF'
import os
import sys

path, updates = sys.argv[1], sys.argv[2:]
lines = []
if os.path.exists(path):
    with open(path) as f:
        lines = f.read().splitlines()
else:
    lines = [
        "# binderbuild's settings: scripts/run.sh's BINDERBUILD_* variables",
        "# (docs/public-single-machine.md). Read by binderbuild.service; kept by",
        "# scripts/install.sh, which replaces only the keys it is given.",
        "# BINDERBUILD_PUBLIC=https://binder.example.org",
        "# BINDERBUILD_LISTEN=0.0.0.0",
    ]
for kv in updates:
    key = kv.split("=", 1)[0]
    lines = [line for line in lines if not line.startswith(key + "=")]
    lines.append(kv)
tmp = path + ".tmp"
with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
    f.write("\n".join(lines) + "\n")
os.replace(tmp, path)
PYEOF
if [ ! -e "$CONFIG_FILE" ]; then
    cat >"$CONFIG_FILE" <<PYEOF
# binderbuild configuration of this machine, loaded after the settings
# scripts/run.sh writes (docs/configuration.md lists every option).
# Kept by scripts/install.sh.
PYEOF
    chmod 600 "$CONFIG_FILE"
fi

# The unit, from the template, pointing at this checkout.
sed -e "s#@ROOT@#$ROOT#g" -e "s#@STATE_DIR@#$STATE_DIR#g" \
    -e "s#@ENV_FILE@#$ENV_FILE#g" -e "s#@CONFIG_FILE@#$CONFIG_FILE#g" \
    "$ROOT/scripts/systemd/binderbuild.service.in" >"$UNIT_DIR/binderbuild.service.tmp"
mv "$UNIT_DIR/binderbuild.service.tmp" "$UNIT_DIR/binderbuild.service"
say "wrote $UNIT_DIR/binderbuild.service (runs $ROOT/scripts/run.sh)"
say "settings: $ENV_FILE; configuration: $CONFIG_FILE; state: $STATE_DIR"

if [ "$START" = 1 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    systemctl daemon-reload
    systemctl enable binderbuild.service
    # An upgrade: the running stack stops (state stays) and the new one starts.
    systemctl restart binderbuild.service
    say "binderbuild.service enabled and started: journalctl -u binderbuild -f"
else
    say "systemd is not running here: not started. Start it with"
    say "  systemctl daemon-reload && systemctl enable --now binderbuild"
fi
