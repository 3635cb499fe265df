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
is not inherited. What repo2docker itself fetches (the clone, its redirects
and submodules, files of record providers) goes through a per-build
``EgressProxy`` that refuses internal addresses, and git may use only the
http, https and git transports (``r2d_command.git_fetch_config``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import sys
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from traitlets import Bool, Dict, Float, Integer, List, Unicode

from binderbuild.builders.base import Builder
from binderbuild.builders.r2d_command import (
    add_git_config,
    git_fetch_config,
    repo2docker_argv,
    repo2docker_config_text,
)
from binderbuild.builders.r2d_log import R2dLogReader, exit_failure
from binderbuild.egress import ENV_PROXY, EgressProxy
from binderbuild.errors import BuildBackendError, BuildFailed
from binderbuild.events import ProgressEvent
from binderbuild.models import BuildJob

_MAX_LINE = 1 << 20


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
    egress_filter = Bool(
        True,
        config=True,
        help="""Send everything repo2docker fetches (git clone, redirects, submodules,
        files of Zenodo/CKAN/... records) through a per-build proxy that refuses
        internal addresses (BinderBuild.allowed_internal_networks lists the allowed
        ones). Turn off only when the machine's network already isolates builds.""",
    )
    egress_allowed_hosts = List(
        Unicode(),
        config=True,
        help="""Host names builds may fetch from although they resolve to internal
        addresses, e.g. an internal GitHub Enterprise set as GitHubRepoProvider.hostname.
        Names, not networks: other hosts on the same network stay refused.""",
    )

    def _env(self, job: BuildJob, proxy: EgressProxy | None = None, workdir: str = "") -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "GIT_TERMINAL_PROMPT": "0",
            "BINDERBUILD_BUILD_NETWORK": self.build_network,
        }
        docker_host = self.resources.docker_host
        if docker_host:
            env["BINDERBUILD_DOCKER_HOST"] = docker_host
            env["DOCKER_HOST"] = docker_host
        elif "DOCKER_HOST" in os.environ:
            env["DOCKER_HOST"] = os.environ["DOCKER_HOST"]
        if self.resources.memory_limit:
            env["BINDERBUILD_BUILD_MEMORY_LIMIT"] = str(self.resources.memory_limit)
        credentials = dict(self.resources.registry_credentials)
        if job.push and credentials.get("username"):
            env["CONTAINER_ENGINE_REGISTRY_CREDENTIALS"] = json.dumps(credentials)
        env.update(self.extra_env)
        env.update(dict(job.extra_env))
        if proxy is not None:
            self._use_proxy(env, proxy, workdir)
        add_git_config(env, git_fetch_config(proxy.url if proxy is not None else ""))
        return env

    def _use_proxy(self, env: dict[str, str], proxy: EgressProxy, workdir: str) -> None:
        """Route repo2docker's fetches through ``proxy`` (see binderbuild.egress)."""
        for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
            env[name] = proxy.url
        env.pop("ALL_PROXY", None)
        env.pop("all_proxy", None)
        # The Docker API over TCP must not be proxied (it is this machine's
        # own daemon, which the filter would rightly refuse).
        docker_host = env.get("DOCKER_HOST", "")
        no_proxy = urlsplit(docker_host).hostname if docker_host.startswith("tcp://") else ""
        env["no_proxy"] = env["NO_PROXY"] = no_proxy or ""
        # git:// is not HTTP: git runs this command to connect, which tunnels
        # through the proxy with CONNECT.
        script = Path(workdir, "git-proxy")
        script.write_text(
            "#!/bin/sh\n"
            f"exec {shlex.quote(self.repo2docker_python)} -m binderbuild.egress \"$@\"\n"
        )
        script.chmod(0o700)
        env["GIT_PROXY_COMMAND"] = str(script)
        env[ENV_PROXY] = proxy.address

    async def build(self, job: BuildJob) -> AsyncIterator[ProgressEvent]:
        proxy: EgressProxy | None = None
        if self.egress_filter:
            proxy = EgressProxy(
                self.resources.allowed_internal_networks, allowed_hosts=self.egress_allowed_hosts
            )
            try:
                await proxy.start()
            except OSError as exc:
                raise BuildBackendError(f"Could not start the build's egress proxy: {exc}") from None
        try:
            # aclosing: a consumer that stops early must stop repo2docker
            # (the inner generator's finally) before the proxy goes away.
            async with contextlib.aclosing(self._build(job, proxy)) as events:
                async for ev in events:
                    yield ev
        except BuildFailed as exc:
            if proxy is not None and proxy.refusals:
                # The refusal is the reason a user can act on; git only says
                # "could not read from remote repository".
                raise type(exc)(
                    f"{exc.message} (the build tried to fetch from an address it may not "
                    f"reach: {proxy.refusals[0]})"
                ) from None
            raise
        finally:
            if proxy is not None:
                await proxy.close()

    async def _build(
        self, job: BuildJob, proxy: EgressProxy | None
    ) -> AsyncGenerator[ProgressEvent, None]:
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
            env = self._env(job, proxy, workdir)
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
            log = R2dLogReader(self.resources.scrubber)
            try:
                assert proc.stdout is not None
                async for line in _lines(proc.stdout):
                    yield log.read(line)
                code = await proc.wait()
            finally:
                if proc.returncode is None:
                    await self._stop(proc)
        if code != 0:
            raise exit_failure(code, log)

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
        client = self.resources.docker_client
        if client is None:
            return {}
        import docker.errors

        try:
            version = await asyncio.to_thread(client.version)
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
