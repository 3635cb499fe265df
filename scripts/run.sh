#!/usr/bin/env bash
# Run a complete Binder on this machine, in the foreground:
#
#   bash scripts/run.sh [--port N] [--local-store] [--no-setup] [--no-demo] [--config FILE] [--auth]
#
# 1. scripts/setup.sh (idempotent): Docker engine, venv, base images,
#    configurable-http-proxy.
# 2. The image registry on 127.0.0.1:5000 (scripts/services.sh start), or with
#    --local-store none: the Docker engine's own image store is the cache.
# 3. A JupyterHub with its proxy, configured by binderbuild.hubconfig:
#    binderbuild's BinderDockerSpawner on the local engine (servers on the
#    internal Docker network binderbuild-servers, made when missing, as uid
#    1000 with no capabilities and memory/CPU/PID limits; the hub's API on
#    the host's address on that network), binderbuild's service token, the
#    idle culler. The registry's credentials go to binderbuild (push) and the
#    hub (pull) only.
# 4. binderbuild on 127.0.0.1:PORT (default 8585), launching on that hub.
# 5. A demo repository on a loopback git server, and the URL to open.
#
# This script supervises what it starts (the proxy, the hub, the demo git
# server, binderbuild): one that exits is started again after a pause that
# doubles up to 30 s ("run: <name> exited (status N); restarting it in Ns").
# The proxy is its own process and the hub keeps servers when it stops
# (cleanup_servers off), so a restarted hub leaves user servers and their
# routes alone; the idle culler dies with its hub. Ctrl-C / SIGTERM stops
# everything within a few seconds (BINDERBUILD_STOP_GRACE each, then KILL);
# user servers keep running, as with any JupyterHub, and the next run.sh
# finds them. State lives under var/singlemachine (hub database, service
# token, configs); logs under var/log (BINDERBUILD_VAR moves both). A
# deployment with its own hub runs binderbuild alone with
# c.BinderBuild.hub_url / hub_api_token instead (docs/operators.md).
#
# Environment knobs: BINDERBUILD_PORT (8585), BINDERBUILD_HUB_PORT (8000,
# where browsers reach the servers), BINDERBUILD_HUB_API_PORT (8081),
# BINDERBUILD_PROXY_API_PORT (8001), BINDERBUILD_DEMO_GIT_PORT (9419),
# BINDERBUILD_REGISTRY_PORT (5000), BINDERBUILD_CULL_TIMEOUT (600 s idle),
# BINDERBUILD_SERVER_NETWORK (binderbuild-servers; "host" is the unsafe
# opt-in of docs/security.md), BINDERBUILD_SERVER_MEM_LIMIT (2G),
# BINDERBUILD_SERVER_CPU_LIMIT (1), BINDERBUILD_SERVER_PIDS_LIMIT (512),
# BINDERBUILD_VAR (var/), BINDERBUILD_STOP_GRACE (5 s per component).
#
# Public mode (docs/public-single-machine.md): --public https://name[:port]
# (BINDERBUILD_PUBLIC) puts binderbuild at / and the hub with every user
# server at /jupyter/ (BINDERBUILD_HUB_PREFIX) behind one origin: the
# proxy alone listens on the public port, on --listen ADDR
# (BINDERBUILD_LISTEN, default 127.0.0.1), with the certificate of
# --tls-cert/--tls-key (BINDERBUILD_TLS_CERT/_KEY) or, without them, a
# self-signed one made in $VAR/singlemachine/tls. --http-port N
# (BINDERBUILD_HTTP_PORT; 80 when the public port is 443, 0 for none)
# redirects plain HTTP there; --hsts SECONDS (BINDERBUILD_HSTS) sends Strict-Transport-Security.
# Everything else stays on loopback (or the servers' private network).
# BINDERBUILD_LOG_TO=journal writes components' logs to stdout (systemd's
# journal) instead of $VAR/log.
#
# Signed-in mode (docs/signed-in.md): --auth (BINDERBUILD_AUTH=1). The hub
# signs people in with accounts of its own (jupyterhub-nativeauthenticator):
# a login page, a sign-up page, sign-ups approved by an admin at
# /hub/authorize. The first admin, "admin", is made before the hub starts
# with a generated password, stored 0600 in $VAR/singlemachine/hub-admin-password
# and printed once (delete the file to get a new one). binderbuild's pages
# send anonymous visitors to the hub's login and back; each launch is a
# named server of the signed-in user. For an identity provider (Keycloak,
# any OpenID Connect / OAuth2 provider) see docs/signed-in.md: with --auth,
# BINDERBUILD_OIDC_ISSUER (its issuer URL), BINDERBUILD_OIDC_CLIENT_ID,
# BINDERBUILD_OIDC_CLIENT_SECRET_FILE and BINDERBUILD_OIDC_ALLOWED_GROUPS
# (comma-separated; BINDERBUILD_OIDC_ADMIN_GROUPS likewise) sign people in
# there instead, and no local admin is made. BINDERBUILD_STORAGE_LIMIT (e.g.
# 5G; unset: no limit) caps each signed-in server's persistent storage
# (docs/persistent-servers.md).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VAR="${BINDERBUILD_VAR:-$ROOT/var}"
export BINDERBUILD_VAR="$VAR"  # scripts/services.sh keeps the registry there
STATE="$VAR/singlemachine"
LOG="$VAR/log"
PY="$ROOT/.venv/bin/python"

PORT="${BINDERBUILD_PORT:-8585}"
HUB_PORT="${BINDERBUILD_HUB_PORT:-8000}"
HUB_API_PORT="${BINDERBUILD_HUB_API_PORT:-8081}"
PROXY_API_PORT="${BINDERBUILD_PROXY_API_PORT:-8001}"
GIT_PORT="${BINDERBUILD_DEMO_GIT_PORT:-9419}"
REGISTRY_PORT="${BINDERBUILD_REGISTRY_PORT:-5000}"
CULL_TIMEOUT="${BINDERBUILD_CULL_TIMEOUT:-600}"
SERVER_NETWORK="${BINDERBUILD_SERVER_NETWORK:-binderbuild-servers}"
SERVER_MEM_LIMIT="${BINDERBUILD_SERVER_MEM_LIMIT:-2G}"
SERVER_CPU_LIMIT="${BINDERBUILD_SERVER_CPU_LIMIT:-1}"
SERVER_PIDS_LIMIT="${BINDERBUILD_SERVER_PIDS_LIMIT:-512}"
STOP_GRACE="${BINDERBUILD_STOP_GRACE:-5}"
PUBLIC="${BINDERBUILD_PUBLIC:-}"
LISTEN="${BINDERBUILD_LISTEN:-127.0.0.1}"
TLS_CERT="${BINDERBUILD_TLS_CERT:-}"
TLS_KEY="${BINDERBUILD_TLS_KEY:-}"
HTTP_PORT="${BINDERBUILD_HTTP_PORT:-}"
HSTS="${BINDERBUILD_HSTS:-0}"
HUB_PREFIX="${BINDERBUILD_HUB_PREFIX:-/jupyter/}"
LOG_TO="${BINDERBUILD_LOG_TO:-files}"
AUTH="${BINDERBUILD_AUTH:-0}"
USE_REGISTRY=1
SETUP=1
DEMO=1
EXTRA_CONFIG=""

while [ $# -gt 0 ]; do
    case "$1" in
        --port) PORT="$2"; shift 2 ;;
        --port=*) PORT="${1#*=}"; shift ;;
        --local-store) USE_REGISTRY=0; shift ;;
        --no-setup) SETUP=0; shift ;;
        --no-demo) DEMO=0; shift ;;
        --config) EXTRA_CONFIG="$(realpath "$2")"; shift 2 ;;
        --config=*) EXTRA_CONFIG="$(realpath "${1#*=}")"; shift ;;
        --public) PUBLIC="$2"; shift 2 ;;
        --public=*) PUBLIC="${1#*=}"; shift ;;
        --listen) LISTEN="$2"; shift 2 ;;
        --listen=*) LISTEN="${1#*=}"; shift ;;
        --tls-cert) TLS_CERT="$2"; shift 2 ;;
        --tls-cert=*) TLS_CERT="${1#*=}"; shift ;;
        --tls-key) TLS_KEY="$2"; shift 2 ;;
        --tls-key=*) TLS_KEY="${1#*=}"; shift ;;
        --http-port) HTTP_PORT="$2"; shift 2 ;;
        --http-port=*) HTTP_PORT="${1#*=}"; shift ;;
        --hsts) HSTS="$2"; shift 2 ;;
        --hsts=*) HSTS="${1#*=}"; shift ;;
        --auth) AUTH=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "run.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done

say() { printf 'run: %s\n' "$*"; }
# A clone URL as one path segment of a launch link (/v2/git/<here>/<ref>).
url_encode() { "$PY" -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"; }
die() { printf 'run: ERROR: %s\n' "$*" >&2; exit 1; }

port_busy() {  # port [ip]
    "$PY" - "$1" "${2:-127.0.0.1}" <<'EOF' 2>/dev/null
import socket, sys
s = socket.socket()
# Like the servers themselves: connections in TIME_WAIT do not make a port busy.
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind((sys.argv[2], int(sys.argv[1])))
except OSError:
    sys.exit(0)
sys.exit(1)
EOF
}

wait_http() {  # url seconds what logfile
    local url="$1" seconds="$2" what="$3" logfile="$4"
    for _ in $(seq $((seconds * 5))); do
        curl -fs -o /dev/null --max-time 2 "$url" && return 0
        sleep 0.2
    done
    echo "---- last lines of $logfile ----" >&2; tail -n 30 "$logfile" >&2 || true
    die "$what did not answer on $url within ${seconds}s"
}

# ------------------------------------------------------------ setup
if [ "$SETUP" = 1 ]; then
    bash "$ROOT/scripts/setup.sh"
fi
[ -x "$PY" ] || die "no venv at $ROOT/.venv: run scripts/setup.sh"
CHP="$ROOT/var/node/node_modules/.bin/configurable-http-proxy"
[ -x "$CHP" ] || die "configurable-http-proxy missing ($CHP): run scripts/setup.sh"
mkdir -p "$STATE/hub" "$STATE/run" "$LOG"

# ------------------------------------------------------------ public mode: one origin
# PUBLIC_ORIGIN (scheme://name:port, no path) is the only origin of every URL
# handed out; binderbuild and the hub read it from their configuration,
# never from a request's Host header.
PUBLIC_ORIGIN=""
if [ -n "$PUBLIC" ]; then
    read -r PUBLIC_ORIGIN PUBLIC_SCHEME PUBLIC_NAME PUBLIC_PORT < <("$PY" - "$PUBLIC" <<'EOF'
import sys
from urllib.parse import urlsplit

u = urlsplit(sys.argv[1])
if u.scheme not in ("http", "https") or not u.hostname or u.path not in ("", "/") or u.query:
    sys.exit(f"--public wants scheme://name[:port], got {sys.argv[1]!r}")
port = u.port or (443 if u.scheme == "https" else 80)
name = u.hostname
host = f"[{name}]" if ":" in name else name
default = port == (443 if u.scheme == "https" else 80)
print(f"{u.scheme}://{host}{'' if default else f':{port}'}", u.scheme, name, port)
EOF
) || die "bad --public value $PUBLIC"
    HUB_PREFIX="/$(printf '%s' "$HUB_PREFIX" | sed 's#^/*##; s#/*$##')/"
    [ "$HUB_PREFIX" != "//" ] || die "BINDERBUILD_HUB_PREFIX must not be /: binderbuild is at /"
    if [ -z "$HTTP_PORT" ] && [ "$PUBLIC_SCHEME" = https ] && [ "$PUBLIC_PORT" = 443 ]; then
        HTTP_PORT=80
    fi
    [ "$HTTP_PORT" = 0 ] && HTTP_PORT=""  # --http-port 0: no redirect (e.g. port 80 is certbot's)
    if [ "$PUBLIC_SCHEME" = https ]; then
        if [ -z "$TLS_CERT" ] && [ -z "$TLS_KEY" ]; then
            # For trials: a self-signed certificate for the public name, kept
            # (browsers warn once); replace with the operator's own.
            TLS_CERT="$STATE/tls/selfsigned.crt" TLS_KEY="$STATE/tls/selfsigned.key"
            if [ ! -s "$TLS_CERT" ] || [ ! -s "$TLS_KEY" ]; then
                mkdir -p "$STATE/tls"
                san="DNS:$PUBLIC_NAME"
                "$PY" -c 'import ipaddress, sys; ipaddress.ip_address(sys.argv[1])' "$PUBLIC_NAME" 2>/dev/null \
                    && san="IP:$PUBLIC_NAME"
                (umask 077 && openssl req -x509 -newkey rsa:2048 -nodes -days 365 \
                    -keyout "$TLS_KEY" -out "$TLS_CERT" -subj "/CN=$PUBLIC_NAME" \
                    -addext "subjectAltName=$san" >/dev/null 2>&1) \
                    || die "could not make a self-signed certificate (openssl)"
                say "made a self-signed certificate for $PUBLIC_NAME: $TLS_CERT (for trials only)"
            fi
        fi
        [ -r "$TLS_CERT" ] && [ -r "$TLS_KEY" ] || die "--tls-cert and --tls-key must both name readable files"
    else
        say "WARNING: --public $PUBLIC is plain HTTP: logins and tokens cross the network in clear."
    fi
fi

# Servers run on an internal Docker network of their own; the hub's API
# listens on the host's address there (the network's gateway), the only
# address of this machine the servers need. Made when missing.
if [ "$SERVER_NETWORK" = host ]; then
    say "WARNING: BINDERBUILD_SERVER_NETWORK=host: servers share this machine's network and"
    say "  reach every service on its loopback. Unsafe for public use (docs/security.md)."
    HUB_IP=127.0.0.1
else
    HUB_IP="$("$PY" -m binderbuild.hubconfig.network "$SERVER_NETWORK")" \
        || die "could not set up the Docker network $SERVER_NETWORK for the servers"
fi

INTERNAL_PORTS=("$PORT" "$PROXY_API_PORT")
[ -n "$PUBLIC" ] || INTERNAL_PORTS+=("$HUB_PORT")
if [ -n "$PUBLIC" ]; then
    port_busy "$PUBLIC_PORT" "$LISTEN" && die "port $PUBLIC_PORT on $LISTEN is in use"
    if [ -n "$HTTP_PORT" ]; then
        port_busy "$HTTP_PORT" "$LISTEN" && die "port $HTTP_PORT on $LISTEN is in use"
    fi
fi
for p in "${INTERNAL_PORTS[@]}"; do
    port_busy "$p" && die "port $p on 127.0.0.1 is in use (another run.sh? set BINDERBUILD_*PORT)"
done
port_busy "$HUB_API_PORT" "$HUB_IP" \
    && die "port $HUB_API_PORT on $HUB_IP is in use (another run.sh? set BINDERBUILD_HUB_API_PORT)"

# ------------------------------------------------------------ supervision
# Each component runs under its own supervisor, a subshell that starts it
# again when it exits (backoff 1, 2, 4 ... 30 s; back to 1 s after a minute
# up) and, on SIGTERM, stops it: TERM, then KILL after STOP_GRACE seconds.
# The component's pid is in $STATE/run/<name>.pid.
SUPERVISORS=()
NAMES=()
STARTED_REGISTRY=0
stopping=0

supervise() {  # name logfile command...
    local name="$1" logfile="$2"
    shift 2
    (
        child=""
        stop_child() {
            if [ -n "$child" ] && kill -0 "$child" 2>/dev/null; then
                kill -TERM "$child" 2>/dev/null || true
                for _ in $(seq $((STOP_GRACE * 10))); do
                    kill -0 "$child" 2>/dev/null || break
                    sleep 0.1
                done
                if kill -0 "$child" 2>/dev/null; then
                    say "$name did not stop within ${STOP_GRACE}s; killing it"
                    kill -KILL "$child" 2>/dev/null || true
                fi
            fi
            rm -f "$STATE/run/$name.pid"
            exit 0
        }
        trap stop_child TERM INT
        delay=1
        while :; do
            since=$SECONDS
            if [ "$LOG_TO" = journal ]; then
                # One stream, each line tagged with its component.
                "$@" > >(sed -u "s/^/$name: /") 2>&1 </dev/null &
            else
                "$@" >>"$logfile" 2>&1 </dev/null &
            fi
            child=$!
            echo "$child" >"$STATE/run/$name.pid"
            code=0
            wait "$child" || code=$?
            if [ $((SECONDS - since)) -ge 60 ]; then delay=1; fi
            say "$name exited (status $code); restarting it in ${delay}s (log: $logfile)"
            sleep "$delay" &
            wait $! || true
            delay=$((delay * 2 > 30 ? 30 : delay * 2))
        done
    ) &
    SUPERVISORS+=("$!")
    NAMES+=("$name")
}

stop_all() {
    [ "$stopping" = 1 ] && return
    stopping=1
    say "stopping..."
    # Reverse order: binderbuild, the git server, the hub, the proxy; each
    # supervisor stops its component within STOP_GRACE seconds.
    for (( i=${#SUPERVISORS[@]}-1; i>=0; i-- )); do
        pid="${SUPERVISORS[$i]}"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq $(((STOP_GRACE + 2) * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            say "the supervisor of ${NAMES[$i]} did not stop; killing it"
            kill -KILL "$pid" 2>/dev/null || true
            p="$(cat "$STATE/run/${NAMES[$i]}.pid" 2>/dev/null || true)"
            [ -n "$p" ] && kill -KILL "$p" 2>/dev/null || true
        fi
    done
    if [ "$STARTED_REGISTRY" = 1 ]; then
        bash "$ROOT/scripts/services.sh" stop || true
    fi
    say "stopped"
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap 'stop_all' EXIT

# ------------------------------------------------------------ images: registry or local store
if [ "$USE_REGISTRY" = 1 ]; then
    if ! curl -s -o /dev/null --max-time 3 "http://127.0.0.1:$REGISTRY_PORT/v2/"; then
        BINDERBUILD_REGISTRY_PORT="$REGISTRY_PORT" bash "$ROOT/scripts/services.sh" start
        STARTED_REGISTRY=1
    else
        say "registry already answering on 127.0.0.1:$REGISTRY_PORT"
    fi
    IMAGE_PREFIX="127.0.0.1:$REGISTRY_PORT/binder-"
    PULL_POLICY="ifnotpresent"
    # Made by services.sh; absent when someone else's registry answers there.
    REGISTRY_CREDENTIALS="$VAR/registry/credentials"
    [ -s "$REGISTRY_CREDENTIALS" ] || REGISTRY_CREDENTIALS=""
else
    IMAGE_PREFIX="binder-"
    PULL_POLICY="never"
    REGISTRY_CREDENTIALS=""
fi

# ------------------------------------------------------------ the hub
TOKEN_FILE="$STATE/binder-service-token"
# --auth: binderbuild's public URL is where the hub sends browsers back to
# after they sign in (its OAuth callback).
BB_PUBLIC_URL="${PUBLIC_ORIGIN:+$PUBLIC_ORIGIN/}"
BB_PUBLIC_URL="${BB_PUBLIC_URL:-http://127.0.0.1:$PORT/}"
LOGIN_ARGS=()
OIDC_ISSUER="${BINDERBUILD_OIDC_ISSUER:-}"
if [ "$AUTH" = 1 ] && [ -n "$OIDC_ISSUER" ]; then
    LOGIN_ARGS=(--login oauth --service-url "$BB_PUBLIC_URL" --oidc-issuer "$OIDC_ISSUER"
        --oauth-client-id "${BINDERBUILD_OIDC_CLIENT_ID:?set BINDERBUILD_OIDC_CLIENT_ID}"
        --oauth-client-secret-file "${BINDERBUILD_OIDC_CLIENT_SECRET_FILE:?set BINDERBUILD_OIDC_CLIENT_SECRET_FILE}")
    IFS=, read -r -a _groups <<<"${BINDERBUILD_OIDC_ALLOWED_GROUPS:-}"
    for g in "${_groups[@]}"; do [ -n "$g" ] && LOGIN_ARGS+=(--oauth-allowed-group "$g"); done
    IFS=, read -r -a _groups <<<"${BINDERBUILD_OIDC_ADMIN_GROUPS:-}"
    for g in "${_groups[@]}"; do [ -n "$g" ] && LOGIN_ARGS+=(--oauth-admin-group "$g"); done
elif [ "$AUTH" = 1 ]; then
    LOGIN_ARGS=(--login native --admin-user admin --service-url "$BB_PUBLIC_URL")
fi
if [ "$AUTH" = 1 ] && [ -n "${BINDERBUILD_STORAGE_LIMIT:-}" ]; then
    # Each named server's files in a size-limited, loop-mounted volume
    # (docs/persistent-servers.md); unset: plain directories, no limit.
    LOGIN_ARGS+=(--storage-limit "$BINDERBUILD_STORAGE_LIMIT")
fi
"$PY" -m binderbuild.hubconfig \
    --out "$STATE/hub/jupyterhub_config.py" \
    --data-dir "$STATE/hub" \
    --token-file "$TOKEN_FILE" \
    --image-prefix "$IMAGE_PREFIX" \
    --proxy-command "$CHP" \
    --port "$HUB_PORT" --hub-port "$HUB_API_PORT" --proxy-api-port "$PROXY_API_PORT" \
    --base-url "$([ -n "$PUBLIC" ] && echo "$HUB_PREFIX" || echo /)" \
    --public-url "$([ -n "$PUBLIC" ] && echo "$PUBLIC_ORIGIN$HUB_PREFIX" || true)" \
    --pull-policy "$PULL_POLICY" \
    --container-prefix "binder" \
    --cull-timeout "$CULL_TIMEOUT" \
    --docker-network "$SERVER_NETWORK" --hub-ip "$HUB_IP" \
    --mem-limit "$SERVER_MEM_LIMIT" --cpu-limit "$SERVER_CPU_LIMIT" \
    --pids-limit "$SERVER_PIDS_LIMIT" \
    --registry-credentials-file "$REGISTRY_CREDENTIALS" \
    "${LOGIN_ARGS[@]}"
ADMIN_PASSWORD_FILE="$STATE/hub-admin-password"
ADMIN_PASSWORD_NEW=""
if [ "$AUTH" = 1 ] && [ -z "$OIDC_ISSUER" ]; then
    # The first admin's account, made while the hub is stopped (nobody can
    # take the name by signing up first); a new password only when the file
    # is missing.
    ADMIN_PASSWORD_NEW="$("$PY" -m binderbuild.hubconfig.admin \
        --db-url "sqlite:///$STATE/hub/jupyterhub.sqlite" --user admin \
        --password-file "$ADMIN_PASSWORD_FILE" 2>>"$LOG/hub-admin.log")" \
        || { tail -n 20 "$LOG/hub-admin.log" >&2; die "could not create the hub's admin account"; }
fi
cat >>"$STATE/hub/jupyterhub_config.py" <<'EOF'

# --- supervised by scripts/run.sh -------------------------------------------
# The proxy is run.sh's own process (the token is CONFIGPROXY_AUTH_TOKEN), and
# the hub leaves servers running when it stops: restarting the hub keeps
# every user server and its route.
c.ConfigurableHTTPProxy.should_start = False
c.JupyterHub.cleanup_servers = False
# The idle culler dies with its hub (PR_SET_PDEATHSIG), however the hub ends.
# The hub stops it with SIGINT, which a background job inherits as ignored
# (the hub then waited 10 s before SIGTERM): SIGINT is reset for it.
for _service in c.JupyterHub.services:
    if _service.get("command"):
        _service["command"] = [
            "env", "--default-signal=INT",
            "setpriv", "--pdeathsig", "KILL", "--",
            *_service["command"],
        ]
EOF
PROXY_TOKEN_FILE="$STATE/proxy-auth-token"
if [ ! -s "$PROXY_TOKEN_FILE" ]; then
    (umask 077 && "$PY" -c 'import secrets; print(secrets.token_hex(32))' >"$PROXY_TOKEN_FILE")
fi
export CONFIGPROXY_AUTH_TOKEN="$(cat "$PROXY_TOKEN_FILE")"
if [ -n "$PUBLIC" ]; then
    if [ "$PUBLIC_SCHEME" = https ]; then
        cat >>"$STATE/hub/jupyterhub_config.py" <<EOF
# HTTPS only: every cookie the hub sets (its _xsrf cookie too) is Secure,
# and so is each server's own _xsrf cookie (kept on the server's path).
c.JupyterHub.tornado_settings["cookie_options"] = {"secure": True}
def _secure_server_cookies(spawner):
    kwargs = {"xsrf_cookie_kwargs": {"path": spawner.server.base_url, "secure": True}}
    spawner.args = [*spawner.args, f"--ServerApp.tornado_settings={kwargs!r}"]
c.Spawner.pre_spawn_hook = _secure_server_cookies
EOF
    fi
    if [ "$HSTS" != 0 ] && [ "$PUBLIC_SCHEME" = https ]; then
        cat >>"$STATE/hub/jupyterhub_config.py" <<EOF
c.JupyterHub.tornado_settings.setdefault("headers", {})["Strict-Transport-Security"] = "max-age=$HSTS"
EOF
    fi
    # The one public port: binderbuild is the proxy's default target, the hub
    # adds its own route for $HUB_PREFIX (and one per user server).
    TLS_ARGS=()
    [ "$PUBLIC_SCHEME" = https ] && TLS_ARGS=(--ssl-cert "$TLS_CERT" --ssl-key "$TLS_KEY")
    say "starting the proxy on $PUBLIC_ORIGIN/ (listening on $LISTEN:$PUBLIC_PORT; log: $LOG/proxy.log)"
    supervise proxy "$LOG/proxy.log" "$CHP" \
        --ip "$LISTEN" --port "$PUBLIC_PORT" "${TLS_ARGS[@]}" \
        --api-ip 127.0.0.1 --api-port "$PROXY_API_PORT" \
        --default-target "http://127.0.0.1:$PORT" \
        --error-target "http://$HUB_IP:$HUB_API_PORT${HUB_PREFIX}hub/error"
    if [ -n "$HTTP_PORT" ] && [ "$PUBLIC_SCHEME" = https ]; then
        say "redirecting http://$LISTEN:$HTTP_PORT/ to $PUBLIC_ORIGIN/"
        supervise http-redirect "$LOG/http-redirect.log" "$PY" "$ROOT/scripts/https_redirect.py" \
            --listen "$LISTEN" --port "$HTTP_PORT" --origin "$PUBLIC_ORIGIN"
    fi
else
say "starting the proxy on http://127.0.0.1:$HUB_PORT/ (log: $LOG/proxy.log)"
supervise proxy "$LOG/proxy.log" "$CHP" \
    --ip 127.0.0.1 --port "$HUB_PORT" \
    --api-ip 127.0.0.1 --api-port "$PROXY_API_PORT" \
    --default-target "http://$HUB_IP:$HUB_API_PORT" \
    --error-target "http://$HUB_IP:$HUB_API_PORT/hub/error"
fi
say "starting JupyterHub (log: $LOG/jupyterhub.log)"
# The culler runs with this PATH; the hub in its state directory.
supervise jupyterhub "$LOG/jupyterhub.log" env -C "$STATE/hub" PATH="$ROOT/.venv/bin:$PATH" \
    "$ROOT/.venv/bin/jupyterhub" -f "$STATE/hub/jupyterhub_config.py"
if [ -n "$PUBLIC" ]; then
    wait_http "http://$HUB_IP:$HUB_API_PORT${HUB_PREFIX}hub/api/" 90 JupyterHub "$LOG/jupyterhub.log"
else
wait_http "http://127.0.0.1:$HUB_PORT/hub/api/" 90 JupyterHub "$LOG/jupyterhub.log"
fi
unset CONFIGPROXY_AUTH_TOKEN

# ------------------------------------------------------------ the demo repository
DEMO_URL=""
if [ "$DEMO" = 1 ]; then
    GIT_ROOT="$STATE/git"
    if [ ! -d "$GIT_ROOT/demo.git" ]; then
        say "creating the demo repository"
        "$PY" - "$GIT_ROOT" <<'EOF'
import sys
from pathlib import Path

from binderbuild.hubconfig.demo import make_demo_repo

make_demo_repo(Path(sys.argv[1]))
EOF
    fi
    if port_busy "$GIT_PORT"; then
        say "port $GIT_PORT is busy: no demo git server (set BINDERBUILD_DEMO_GIT_PORT)"
    else
        supervise demo-git "$LOG/demo-git.log" git daemon --reuseaddr --export-all \
            --base-path="$GIT_ROOT" --listen=127.0.0.1 --port="$GIT_PORT" "$GIT_ROOT"
        DEMO_URL="git://127.0.0.1:$GIT_PORT/demo.git"
    fi
fi

# ------------------------------------------------------------ binderbuild
cat >"$STATE/binderbuild_config.py" <<EOF
# Written by scripts/run.sh; see docs/operators.md.
c.BinderBuild.ip = "127.0.0.1"
c.BinderBuild.port = $PORT
# The build history (and image usage) lives with the rest of the state.
c.BinderBuild.data_dir = "$VAR"
c.BinderBuild.hub_url = "http://127.0.0.1:$HUB_PORT/"
# The hub's API listens on the host's address on the servers' network.
c.BinderBuild.hub_url_local = "http://$HUB_IP:$HUB_API_PORT/"
c.BinderBuild.image_prefix = "$IMAGE_PREFIX"
c.BinderBuild.use_registry = $([ "$USE_REGISTRY" = 1 ] && echo True || echo False)
c.DockerRegistry.url = "http://127.0.0.1:$REGISTRY_PORT"
EOF
if [ -n "$REGISTRY_CREDENTIALS" ]; then
    cat >>"$STATE/binderbuild_config.py" <<EOF
# The registry's credentials (made by scripts/services.sh), read at start.
with open("$REGISTRY_CREDENTIALS") as _f:
    _user, _, _password = _f.read().strip().partition(":")
c.DockerRegistry.username = _user
c.DockerRegistry.password = _password
EOF
fi
cat >>"$STATE/binderbuild_config.py" <<EOF
# Exactly the demo git server may be fetched from, although it is on
# loopback (the hub, the registry and this service stay refused). More with
# --config FILE (e.g. c.BinderBuild.allowed_internal_networks.append(...)).
c.BinderBuild.allowed_internal_networks = ["127.0.0.1:$GIT_PORT"]
# Safe defaults for a Binder others can reach (docs/operators.md): each
# client IP may start 30 builds/launches an hour without a build token (the
# launch page hands one out), and at most 20 servers run at once.
c.RateLimiter.limit = int("${BINDERBUILD_RATE_LIMIT:-30}")
c.RateLimiter.period_seconds = 3600
c.BinderBuild.pod_quota = int("${BINDERBUILD_POD_QUOTA:-20}")
EOF
if [ "$AUTH" = 1 ]; then
    cat >>"$STATE/binderbuild_config.py" <<EOF
# --auth (docs/signed-in.md): only signed-in hub users launch, each launch a
# named server of theirs; the pages send anonymous visitors to the hub's
# login and back to ${BB_PUBLIC_URL}oauth_callback.
c.BinderBuild.auth_enabled = True
c.BinderBuild.use_named_servers = True
c.BinderBuild.launch_host = "$BB_PUBLIC_URL"
EOF
fi
if [ -n "$PUBLIC" ]; then
    cat >>"$STATE/binderbuild_config.py" <<EOF
# Public mode: one origin (docs/public-single-machine.md). Every URL handed
# out (ready URLs, share links, badges, OpenGraph, OAuth callback) starts
# with $PUBLIC_ORIGIN, whatever Host a request names.
c.BinderBuild.launch_host = "$PUBLIC_ORIGIN/"
c.BinderBuild.hub_url = "$PUBLIC_ORIGIN$HUB_PREFIX"
c.BinderBuild.hub_url_local = "http://$HUB_IP:$HUB_API_PORT$HUB_PREFIX"
# Browsers come through the proxy on this machine: their address is the
# last one it appends to X-Forwarded-For (rate limits count people, not it).
c.BinderBuild.trusted_proxies = ["127.0.0.1/32"]
EOF
    if [ "$PUBLIC_SCHEME" = https ]; then
        cat >>"$STATE/binderbuild_config.py" <<EOF
c.HubOAuth.cookie_options = {"secure": True}
EOF
        if [ "$HSTS" != 0 ]; then
            cat >>"$STATE/binderbuild_config.py" <<EOF
c.BinderBuild.tornado_settings = {"extra_headers": {"Strict-Transport-Security": "max-age=$HSTS"}}
EOF
        fi
    fi
fi
if [ -n "$EXTRA_CONFIG" ]; then
    # The operator's own settings, loaded last so they win.
    "$PY" -c 'import sys; print(f"# --config, loaded last\nload_subconfig({sys.argv[1]!r})")' \
        "$EXTRA_CONFIG" >>"$STATE/binderbuild_config.py"
fi
say "starting binderbuild on http://127.0.0.1:$PORT/ (log: $LOG/binderbuild.log)"
supervise binderbuild "$LOG/binderbuild.log" \
    env JUPYTERHUB_API_TOKEN="$(cat "$TOKEN_FILE")" "$PY" -m binderbuild \
    --config="$STATE/binderbuild_config.py" --port="$PORT"
wait_http "http://127.0.0.1:$PORT/versions" 60 binderbuild "$LOG/binderbuild.log"
if [ "$AUTH" = 1 ] && [ -n "$OIDC_ISSUER" ]; then
    say "signed-in mode: sign in at ${BB_PUBLIC_URL} through $OIDC_ISSUER"
elif [ "$AUTH" = 1 ]; then
    say "signed-in mode: sign in at ${BB_PUBLIC_URL} (the hub's login page); people sign up"
    say "  there and the admin approves them at the hub's /hub/authorize page"
    if [ -n "$ADMIN_PASSWORD_NEW" ]; then
        say "  first admin: user admin, password $ADMIN_PASSWORD_NEW"
        say "  (shown this once; kept in $ADMIN_PASSWORD_FILE, mode 0600)"
    else
        say "  first admin: user admin, password in $ADMIN_PASSWORD_FILE"
    fi
fi
if [ -n "$PUBLIC" ]; then
    # Through the proxy, as browsers come (-k: the name may not resolve here).
    probe="$LISTEN"
    case "$probe" in 0.0.0.0) probe=127.0.0.1 ;; ::) probe=::1 ;; esac
    case "$probe" in *:*) probe="[$probe]" ;; esac
    for _ in $(seq 100); do
        curl -fsk -o /dev/null --max-time 2 "$PUBLIC_SCHEME://$probe:$PUBLIC_PORT/versions" && break
        sleep 0.2
    done
    echo
    say "a public Binder is running at $PUBLIC_ORIGIN/ (the hub: $PUBLIC_ORIGIN$HUB_PREFIX)"
    say "  listening on $LISTEN:$PUBLIC_PORT only; binderbuild, the hub's API, the proxy's API"
    say "  and the registry stay on 127.0.0.1 / the servers' network"
    if [ -n "$DEMO_URL" ]; then
        say "open the demo: $PUBLIC_ORIGIN/v2/git/$(url_encode "$DEMO_URL")/HEAD"
    fi
else
    echo
    say "a complete Binder is running:"
    say "  binderbuild  http://127.0.0.1:$PORT/"
    say "  JupyterHub   http://127.0.0.1:$HUB_PORT/ (servers are reached here)"
    if [ -n "$DEMO_URL" ]; then
        enc="$(url_encode "$DEMO_URL")"
        say "open the demo: http://127.0.0.1:$PORT/v2/git/$enc/HEAD"
        say "  (its event stream: curl -N -H 'Accept: text/event-stream' http://127.0.0.1:$PORT/build/git/$enc/HEAD)"
    fi
    say "any repository: http://127.0.0.1:$PORT/v2/git/<url-encoded clone URL>/<ref>"
fi
say "Ctrl-C stops everything."

# The supervisors run until Ctrl-C / SIGTERM (the traps above stop them).
set +e
while :; do
    wait
    sleep 1
done
