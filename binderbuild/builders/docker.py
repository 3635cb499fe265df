"""Build on the local Docker engine by running repo2docker as a subprocess.

A subprocess (not repo2docker in-process) so that a crashed, hung or
cancelled build can be killed as a whole process group, and so its memory
stays out of the service. repo2docker talks to the engine through
binderbuild's ``binderbuild_docker_api`` engine (``r2d_engine``), which needs
no ``docker`` CLI or buildx plugin.

What a build can reach: the build steps run in containers on the network
named by ``build_network`` (default ``none``) and never get the Docker socket;
registry credentials are handed to the repo2docker process only (for the
push), never to build steps; the service's own environment (hub token, etc.)
is not inherited.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from traitlets import Dict, Float, Integer, List, Unicode

from binderbuild.builders.base import Builder
from binderbuild.builders.r2d_command import repo2docker_argv, repo2docker_config_text
from binderbuild.errors import BuildBackendError, BuildFailed
from binderbuild.events import Phase, ProgressEvent, event
from binderbuild.models import BuildJob
from binderbuild.secrets import Scrubber

_R2D_PHASES = {
    "fetching": Phase.FETCHING,
    "building": Phase.BUILDING,
    "pushing": Phase.PUSHING,
    "built": Phase.BUILDING,
    "failed": Phase.BUILDING,
    "failure": Phase.BUILDING,
    "running": Phase.BUILDING,
    "launching": Phase.BUILDING,
}

_MAX_LINE = 1 << 20


def parse_log_line(line: str) -> tuple[ProgressEvent, bool]:
    """Turn one repo2docker output line into an event; also says whether the
    line reports a failure. Unstructured lines become ``unknown`` events."""
    try:
        data = json.loads(line)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return event(Phase.UNKNOWN, line + "\n"), False
    raw_phase = str(data.get("phase", "")).lower()
    phase = _R2D_PHASES.get(raw_phase, Phase.UNKNOWN)
    message = str(data.get("message", ""))
    fields: dict[str, Any] = {}
    if phase is Phase.PUSHING and isinstance(data.get("progress"), dict):
        fields["progress"] = data["progress"]
    return event(phase, message, **fields), raw_phase in ("failed", "failure")


class DockerBuilder(Builder):
    """repo2docker on the local Docker engine."""

    repo2docker_python = Unicode(
        sys.executable,
        config=True,
        help="Python interpreter that has repo2docker and binderbuild installed.",
    )
    build_network = Unicode(
        "none",
        config=True,
        help="""Docker network for build steps. 'none' (default) gives build steps no
        network at all; name an isolated bridge network to let builds download
        packages. 'host' exposes the host's loopback services (hub, registry) to
        build steps: use it only on a machine with nothing to protect.""",
    )
    extra_args = List(
        Unicode(), config=True, help="Extra command-line arguments passed to repo2docker."
    )
    extra_env = Dict(
        value_trait=Unicode(),
        config=True,
        help="Extra environment variables for the repo2docker process (not the build steps).",
    )
    kill_grace = Float(
        10.0, config=True, help="Seconds between SIGTERM and SIGKILL when a build is stopped."
    )
    user_id = Integer(1000, config=True, help="UID of the notebook user in built images.")
    user_name = Unicode("jovyan", config=True, help="Name of the notebook user in built images.")

    def __init__(
        self,
        *,
        docker_host: str = "",
        memory_limit: int = 0,
        registry_credentials: Mapping[str, str] | None = None,
        docker_client: Any = None,
        scrubber: Scrubber | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.docker_host = docker_host
        self.memory_limit = memory_limit
        self.registry_credentials = dict(registry_credentials or {})
        self.docker_client = docker_client
        self.scrubber = scrubber or Scrubber()

    def _env(self, job: BuildJob) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "GIT_TERMINAL_PROMPT": "0",
            "BINDERBUILD_BUILD_NETWORK": self.build_network,
        }
        if self.docker_host:
            env["BINDERBUILD_DOCKER_HOST"] = self.docker_host
            env["DOCKER_HOST"] = self.docker_host
        elif "DOCKER_HOST" in os.environ:
            env["DOCKER_HOST"] = os.environ["DOCKER_HOST"]
        if self.memory_limit:
            env["BINDERBUILD_BUILD_MEMORY_LIMIT"] = str(self.memory_limit)
        if job.push and self.registry_credentials.get("username"):
            env["CONTAINER_ENGINE_REGISTRY_CREDENTIALS"] = json.dumps(self.registry_credentials)
        env.update(self.extra_env)
        env.update(dict(job.extra_env))
        return env

    async def build(self, job: BuildJob) -> AsyncIterator[ProgressEvent]:
        with tempfile.TemporaryDirectory(prefix="binderbuild-") as workdir:
            config_path = Path(workdir, "repo2docker_config.py")
            config_path.write_text(repo2docker_config_text(job.ref.content_provider))
            argv = repo2docker_argv(
                python=self.repo2docker_python,
                repo_url=job.ref.repo_url,
                ref=job.ref.resolved_ref,
                image_name=job.image.name,
                push=job.push,
                config_path=str(config_path),
                user_id=self.user_id,
                user_name=self.user_name,
                extra_args=self.extra_args,
            )
            env = self._env(job)
            env["HOME"] = workdir
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    env=env,
                    cwd=workdir,
                    start_new_session=True,
                    limit=_MAX_LINE,
                )
            except OSError as exc:
                raise BuildBackendError(f"Could not start repo2docker: {exc}") from None
            failure_messages: list[str] = []
            tail: list[str] = []
            try:
                assert proc.stdout is not None
                async for line in _lines(proc.stdout):
                    line = self.scrubber.scrub(line)
                    ev, is_failure = parse_log_line(line)
                    if ev.message.strip():
                        tail = (tail + [ev.message.strip()])[-5:]
                    if is_failure and ev.message.strip():
                        failure_messages.append(ev.message.strip())
                    yield ev
                code = await proc.wait()
            finally:
                if proc.returncode is None:
                    await self._stop(proc)
        if code != 0:
            reason = failure_messages[-1] if failure_messages else (tail[-1] if tail else "")
            raise BuildFailed(
                f"repo2docker exited with code {code}" + (f": {reason}" if reason else "")
            )

    async def _stop(self, proc: asyncio.subprocess.Process) -> None:
        """Stop the whole process group: TERM, then KILL after the grace period."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                await asyncio.wait_for(asyncio.shield(proc.wait()), self.kill_grace)
                return
            except TimeoutError:
                continue

    async def check(self) -> dict[str, Any]:
        if self.docker_client is None:
            return {}
        import docker.errors

        try:
            version = await asyncio.to_thread(self.docker_client.version)
        except (docker.errors.DockerException, OSError) as exc:
            raise BuildBackendError(f"Docker engine unreachable: {exc}") from None
        return {"engine": "docker", "version": version.get("Version", "")}


async def _lines(stream: asyncio.StreamReader) -> AsyncIterator[str]:
    """Lines of a stream, tolerating lines longer than the reader's limit."""
    while True:
        try:
            raw = await stream.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                yield exc.partial.decode(errors="replace").rstrip("\r\n")
            return
        except asyncio.LimitOverrunError as exc:
            raw = await stream.readexactly(exc.consumed)
        yield raw.decode(errors="replace").rstrip("\r\n")
