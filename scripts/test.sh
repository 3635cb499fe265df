#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this script).
#
# 1. scripts/setup.sh installs and starts what the tests need (apt packages,
#    the venv, dockerd, base images, configurable-http-proxy, Chromium,
#    helm); it is idempotent.
# 2. ruff over the code, mypy (strict) over binderbuild/.
# 3. pytest over tests/: real Docker engine, registry, JupyterHub + proxy,
#    git servers and headless Chromium, all on loopback. The only skip allowed
#    is the Kubernetes-cluster test (no cluster here; see README).
# 4. The benchmarks in their short form; they print figures.
#
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/unit -x`.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh || { echo "test.sh: setup failed" >&2; exit 1; }

status=0
.venv/bin/ruff check binderbuild tests benchmarks scripts || status=1
# Strict type check of the service (settings in pyproject.toml [tool.mypy]).
.venv/bin/mypy || status=1

if [ "$#" -eq 0 ]; then
    # Benchmarks first, short form; their figures are printed, not asserted
    # on time (the build benchmark does fail when N identical requests start
    # more than one build).
    for bench in benchmarks/*_benchmark.py; do
        module="benchmarks.$(basename "$bench" .py)"
        echo "== $module (short form)"
        .venv/bin/python -m "$module" --short || status=1
    done
fi

.venv/bin/pytest "$@"
pytest_status=$?
[ "$pytest_status" -eq 0 ] || status=$pytest_status
exit "$status"
