"""scripts/run.sh supervises its components (issue 12).

The script runs for real (``--no-setup --local-store --no-demo``) on free
ports under a temporary ``BINDERBUILD_VAR``: binderbuild killed with SIGKILL
is started again; the hub killed with SIGKILL is started again, its idle
culler dies with it, and the proxy (run.sh's own process) keeps running
with its routes; SIGTERM to run.sh stops every process within the grace the
test configures.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.helpers import wait_for
from tests.realservices import free_port

pytestmark = [pytest.mark.docker, pytest.mark.hub]

ROOT = Path(__file__).resolve().parents[2]
RUN_SH = ROOT / "scripts" / "run.sh"
STOP_GRACE = 3
# What SIGTERM may take: each component's grace, stopped one after another,
# plus the script's own bookkeeping. Not a speed claim: the bound we configure.
STOPPED_WITHIN = 4 * (STOP_GRACE + 1) + 5


def answers(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=3) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def children_matching(parent: int, needle: bytes) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        if ppid == parent and needle in cmdline:
            found.append(int(name))
    return found


class RunSh:
    def __init__(self, var: Path) -> None:
        self.var = var
        self.port, self.hub_port, self.hub_api_port, self.proxy_api_port = (
            free_port() for _ in range(4)
        )
        self.output = var / "run-sh.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "BINDERBUILD_VAR": str(self.var),
            "BINDERBUILD_PORT": str(self.port),
            "BINDERBUILD_HUB_PORT": str(self.hub_port),
            "BINDERBUILD_HUB_API_PORT": str(self.hub_api_port),
            "BINDERBUILD_PROXY_API_PORT": str(self.proxy_api_port),
            "BINDERBUILD_STOP_GRACE": str(STOP_GRACE),
        }
        self.var.mkdir(parents=True, exist_ok=True)
        with self.output.open("ab") as out:
            self.proc = subprocess.Popen(
                ["bash", str(RUN_SH), "--no-setup", "--local-store", "--no-demo"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def pid(self, name: str) -> int:
        path = self.var / "singlemachine" / "run" / f"{name}.pid"
        return int(path.read_text().strip()) if path.exists() else 0

    def text(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    def logs(self) -> str:
        parts = [self.text()]
        for name in ("jupyterhub.log", "binderbuild.log", "proxy.log"):
            path = self.var / "log" / name
            if path.exists():
                parts.append(f"---- {name}\n" + path.read_text(errors="replace")[-3000:])
        return "\n".join(parts)

    @property
    def binderbuild(self) -> str:
        return f"http://127.0.0.1:{self.port}/versions"

    @property
    def hub(self) -> str:
        return f"http://127.0.0.1:{self.hub_port}/hub/api/"


@pytest.fixture
def run_sh(tmp_path: Path, docker_client: Any) -> Iterator[RunSh]:
    stack = RunSh(tmp_path / "var")
    stack.start()
    yield stack
    if stack.proc is not None and stack.proc.poll() is None:
        stack.proc.send_signal(signal.SIGTERM)
        try:
            stack.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(stack.proc.pid, signal.SIGKILL)
            stack.proc.wait()


def test_run_sh_restarts_what_exits_and_stops_within_seconds(run_sh: RunSh) -> None:
    def up() -> bool:
        assert run_sh.proc is not None and run_sh.proc.poll() is None, run_sh.logs()
        return answers(run_sh.binderbuild) and answers(run_sh.hub)

    try:
        wait_for("the stack to answer", up, 180)
    except AssertionError:
        raise AssertionError(run_sh.logs()) from None

    # binderbuild killed: started again, and it says so.
    first = run_sh.pid("binderbuild")
    os.kill(first, signal.SIGKILL)
    wait_for(
        "binderbuild to be started again",
        lambda: run_sh.pid("binderbuild") not in (0, first) and answers(run_sh.binderbuild),
        90,
    )
    assert "binderbuild exited (status 137); restarting it in" in run_sh.text()

    # The hub killed: its culler goes with it, the proxy stays, the hub comes back.
    hub, proxy = run_sh.pid("jupyterhub"), run_sh.pid("proxy")
    wait_for("the idle culler to run", lambda: children_matching(hub, b"jupyterhub_idle_culler"), 60)
    culler = children_matching(hub, b"jupyterhub_idle_culler")
    os.kill(hub, signal.SIGKILL)
    wait_for("the culler to die with its hub", lambda: not any(map(pid_alive, culler)), 15)
    wait_for(
        "the hub to be started again",
        lambda: run_sh.pid("jupyterhub") not in (0, hub) and answers(run_sh.hub),
        120,
    )
    assert run_sh.pid("proxy") == proxy and pid_alive(proxy), "the proxy was not restarted"
    assert "jupyterhub exited (status 137); restarting it in" in run_sh.text()

    # SIGTERM: everything it started is gone within the configured grace.
    everything = [run_sh.pid(n) for n in ("binderbuild", "jupyterhub", "proxy")]
    hub = run_sh.pid("jupyterhub")
    wait_for("the new culler", lambda: children_matching(hub, b"jupyterhub_idle_culler"), 60)
    everything += children_matching(hub, b"jupyterhub_idle_culler")
    assert run_sh.proc is not None
    start = time.monotonic()
    run_sh.proc.send_signal(signal.SIGTERM)
    run_sh.proc.wait(STOPPED_WITHIN)
    wait_for(
        "every component to be gone",
        lambda: not any(map(pid_alive, everything)),
        max(1.0, STOPPED_WITHIN - (time.monotonic() - start)),
    )
    assert "run: stopped" in run_sh.text()
