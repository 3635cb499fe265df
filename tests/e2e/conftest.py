"""Browser tests: Debian's Chromium driven by playwright-core from Node.

Why Node and not Python's ``playwright`` package: that package insists on
browsers of its own (downloaded at install time), which cannot be fetched
here; playwright-core from npm drives the system's /usr/bin/chromium.
Each scenario is a small ES module under ``js/`` run as a subprocess: its
parameters go in as JSON on the command line, its findings come back as one
``RESULT <json>`` line, and the assertions are made here, in pytest.
Screenshots go to ``test-artifacts/e2e/`` (git-ignored).

Missing Node, playwright-core or Chromium fails the tests with what to run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import service_config
from tests.service import BinderBuildService

E2E = Path(__file__).resolve().parent
ROOT = E2E.parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "e2e"
CHROMIUM = os.environ.get("BINDERBUILD_CHROMIUM", "/usr/bin/chromium")


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: run scripts/setup.sh", pytrace=False)
    return node


@pytest.fixture(scope="session")
def browser_env() -> Path:
    """Checks what the browser tests need; returns the artifacts directory."""
    _node()
    if not (E2E / "node_modules" / "playwright-core" / "package.json").is_file():
        pytest.fail(
            "playwright-core is not installed in tests/e2e: run scripts/setup.sh "
            "(npm ci --prefix tests/e2e)",
            pytrace=False,
        )
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"Chromium is missing at {CHROMIUM}: run scripts/setup.sh", pytrace=False)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def _result(name: str, returncode: int, stdout: str, stderr: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if returncode != 0 or not lines:
        pytest.fail(
            f"browser scenario {name} failed (exit {returncode}):\n"
            f"--- stderr ---\n{stderr[-6000:]}\n--- stdout ---\n{stdout[-3000:]}",
            pytrace=False,
        )
    return json.loads(lines[-1][len("RESULT ") :])  # type: ignore[no-any-return]


def run_scenario(name: str, params: dict[str, Any], timeout: float = 400) -> dict[str, Any]:
    """Run js/<name>.mjs with params; return its RESULT object."""
    try:
        proc = subprocess.run(
            [_node(), str(E2E / "js" / f"{name}.mjs"), json.dumps(params)],
            cwd=E2E,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"browser scenario {name} did not finish within {timeout}s:\n{exc.stderr}", pytrace=False)
    return _result(name, proc.returncode, proc.stdout, proc.stderr)


class InteractiveScenario:
    """A scenario that stops at ``WAIT <what>`` lines until the test answers."""

    def __init__(self, name: str, params: dict[str, Any]) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [_node(), str(E2E / "js" / f"{name}.mjs"), json.dumps(params)],
            cwd=E2E,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: list[str] = []

    def wait_for(self, what: str, timeout: float) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.stdout.append(line)
            if line.strip() == f"WAIT {what}":
                return
        self.proc.kill()
        out, err = self.proc.communicate()
        pytest.fail(
            f"scenario {self.name} never reached {what!r}:\n{err[-6000:]}\n{''.join(self.stdout)[-3000:]}{out}",
            pytrace=False,
        )

    def answer(self, line: str = "go") -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def result(self, timeout: float) -> dict[str, Any]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return _result(self.name, self.proc.returncode, "".join(self.stdout) + out, err)


@pytest.fixture(scope="module")
def e2e_service(tmp_path_factory: pytest.TempPathFactory, docker_client: Any) -> Iterator[BinderBuildService]:
    """binderbuild with the default configuration: no hub, so it builds only."""
    service = BinderBuildService(tmp_path_factory.mktemp("e2e-svc"), service_config(None)).start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def scenario() -> Callable[..., dict[str, Any]]:
    return run_scenario
