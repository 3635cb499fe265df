"""Build on the local Docker engine: repo2docker in a sandbox, then a trusted build.

A build has two processes (``sandbox`` = True, the default):

1. the **sandbox** (``builders/sandbox.py``): repo2docker fetches the
   repository, detects its buildpack, renders the Dockerfile and assembles
   the build context in a container from the builder image, as uid
   ``sandbox_uid`` (1000) with no capabilities, no Docker socket, no network but the build's egress
   proxy, and one writable mount (its own work directory). Its engine
   (``binderbuild_docker_api`` in export mode) writes the context and the
   build parameters out instead of building;
2. the **trusted step** (``builders/trusted_build.py``), a subprocess of the
   service: checks that output as hostile input, applies the Dockerfile
   policy, builds through the Docker Engine API and pushes.

Nothing derived from a repository is fetched, read, detected or rendered by
a process that is root on the host or holds the Docker socket; the trusted
step only parses the sandbox's JSON and the tar's headers and Dockerfile.
Both stream repo2docker-style JSON log lines into one ``R2dLogReader``, so
events and failure messages are those of a single repo2docker run. Either
can be killed at any time (the container is removed, the subprocess's
process group killed), and both die with the service: the sandbox through
its stdin lifeline, the subprocess through ``PR_SET_PDEATHSIG``. Each build
has its own work directory (``work_root``), removed however the build ends;
``start`` (or the first build) removes what builds of a killed service left
behind (``builders/leftovers.py``). ``sandbox = False`` runs repo2docker itself as a
subprocess of the service (the behaviour before sandboxes), for machines
without the builder image; it is unsafe for public use.

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
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from traitlets import Bool, Dict, Float, Integer, List, TraitError, Unicode, Union, validate

from binderbuild.builders import leftovers
from binderbuild.builders import sandbox as sandbox_mod
from binderbuild.builders.base import Builder
from binderbuild.builders.dockerfile_policy import RegistryPolicy
from binderbuild.builders.r2d_command import (
    add_git_config,
    git_fetch_config,
    repo2docker_argv,
    repo2docker_config_text,
)
from binderbuild.builders.r2d_log import R2dLogReader, exit_failure
from binderbuild.builders.trusted_build import ENV_MAX_CONTEXT
from binderbuild.egress import ENV_PROXY, EgressProxy
from binderbuild.errors import BuildBackendError, BuildFailed
from binderbuild.events import ProgressEvent
from binderbuild.models import BuildJob
from binderbuild.units import parse_bytes

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
    allowed_registries = List(
        Unicode(),
        config=True,
        help="""Registries a repository's Dockerfile may take images from (FROM,
        COPY --from, RUN --mount=from=), e.g. ["docker.io", "quay.io", "ghcr.io"].
        "docker.io" stands for Docker Hub and for names without a registry host
        (python:3.11, and local base images such as binderbuild/base:bookworm).
        An entry without a port allows every port of that host. Empty (default):
        every public registry. Internal registries are refused either way unless
        listed in allowed_internal_registries.""",
    )
    allowed_internal_registries = List(
        Unicode(),
        config=True,
        help="""Registries on internal addresses (loopback, private networks, names
        resolving to them) that a repository's Dockerfile may still name in FROM
        or COPY --from, e.g. ["127.0.0.1:5000"] for this machine's own registry.
        An entry without a port allows every port of that host. Default: none;
        the Docker daemon would otherwise pull from inside the deployment on a
        stranger's behalf.""",
    )

    sandbox = Bool(
        True,
        config=True,
        help="""Fetch and detect in a build sandbox: repo2docker runs in a container from
        sandbox_image as an unprivileged user, without the Docker socket, with no
        network but the build's egress proxy; the service then builds and pushes what
        it prepared. False runs repo2docker on the host, as the service's user and
        with the Docker socket: a repository's record files and symlinks can then
        reach the host's files. Only for trusted repositories.""",
    )
    sandbox_image = Unicode(
        "binderbuild/builder:local",
        config=True,
        help="""Image of the build sandbox: repo2docker and binderbuild (images/builder,
        built by scripts/setup.sh).""",
    )
    sandbox_memory_limit = Union(
        [Integer(), Unicode()],
        default_value="2G",
        config=True,
        help="Memory limit of the build sandbox (fetch and detection), e.g. '2G'.",
    )
    sandbox_uid = Integer(
        sandbox_mod.SANDBOX_UID,
        config=True,
        help="""UID (and GID) of the build sandbox's user. Pick one that owns nothing on
        this host (1000 is often the first human user): the sandbox's work directory is
        given to it, and files it writes there belong to it. 0 is refused.""",
    )

    @validate("sandbox_uid")
    def _valid_sandbox_uid(self, proposal: Any) -> int:
        if int(proposal["value"]) <= 0:
            raise TraitError(
                "DockerBuilder.sandbox_uid must be positive: the sandbox is never root"
            )
        return int(proposal["value"])

    sandbox_pids_limit = Integer(
        1024, config=True, help="Maximum number of processes in the build sandbox."
    )
    max_context_size = Union(
        [Integer(), Unicode()],
        default_value="10G",
        config=True,
        help="""Largest build context a sandbox may hand to the trusted build step
        (bytes, or '10G'); larger ones fail the build.""",
    )
    work_root = Unicode(
        "",
        config=True,
        help="""Directory for the builds' work directories (binderbuild-XXXX: the
        checkout, the build context, the egress proxy's socket). Each is removed when
        its build ends, however it ends; those of a service that was killed are
        removed by the next start. Empty (default): the system's temporary directory
        (TMPDIR, else /tmp).""",
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._swept = False  # the leftovers of earlier processes were removed
        self._sweep_lock = asyncio.Lock()

    def _env(self, job: BuildJob, proxy: EgressProxy | None = None, workdir: str = "") -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "GIT_TERMINAL_PROMPT": "0",
            "BINDERBUILD_BUILD_NETWORK": self.build_network,
            # The Dockerfile policy's registry lists (dockerfile_policy.RegistryPolicy).
            **RegistryPolicy(
                tuple(self.allowed_registries), tuple(self.allowed_internal_registries)
            ).to_env(),
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
        await self._sweep_once()
        try:
            path = leftovers.make_workdir(self.work_root, job.image.name)
        except OSError as exc:
            raise BuildBackendError(f"Could not make the build's work directory: {exc}") from None
        workdir = str(path)
        # Removed on every end of the build: success, failure, timeout, cancel.
        try:
            proxy: EgressProxy | None = None
            if self.egress_filter:
                proxy = EgressProxy(
                    self.resources.allowed_internal_networks, allowed_hosts=self.egress_allowed_hosts
                )
                try:
                    if self.sandbox:
                        egress_dir = Path(workdir, "egress")
                        egress_dir.mkdir(mode=0o755)
                        egress_dir.chmod(0o755)
                        await proxy.start_unix(str(egress_dir / sandbox_mod.EGRESS_SOCKET_NAME))
                    else:
                        await proxy.start()
                except OSError as exc:
                    raise BuildBackendError(
                        f"Could not start the build's egress proxy: {exc}"
                    ) from None
            try:
                inner = (
                    self._sandboxed(job, proxy, workdir)
                    if self.sandbox
                    else self._build(job, proxy, workdir)
                )
                # aclosing: a consumer that stops early must stop the build
                # (the inner generator's finally) before the proxy goes away.
                async with contextlib.aclosing(inner) as events:
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
        finally:
            leftovers.remove_workdir(path)

    async def _build(
        self, job: BuildJob, proxy: EgressProxy | None, workdir: str
    ) -> AsyncGenerator[ProgressEvent, None]:
        """repo2docker on the host (``sandbox = False``)."""
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
        # repo2docker's checkout (tempfile.mkdtemp) goes into the work
        # directory, so it goes with it however the build ends.
        checkouts = Path(workdir, "tmp")
        checkouts.mkdir()
        env["TMPDIR"] = str(checkouts)
        log = R2dLogReader(self.resources.scrubber)
        code: list[int] = []
        async for ev in self._process(argv, env, workdir, log, code):
            yield ev
        if code[0] != 0:
            raise exit_failure(code[0], log, memory_limit=self.resources.memory_limit)

    async def _process(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        log: R2dLogReader,
        code: list[int],
    ) -> AsyncGenerator[ProgressEvent, None]:
        """Run ``argv`` in its own process group, yield its output as events,
        append its exit status to ``code``; kill the group if stopped early.

        The process dies with the service (``PR_SET_PDEATHSIG``), and its
        group is noted in the work directory ``cwd`` for the next start to
        kill if the service dies before it can."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=leftovers.deathsig_preexec(),
                limit=_MAX_LINE,
            )
        except OSError as exc:
            raise BuildBackendError(f"Could not start {argv[0]}: {exc}") from None
        try:
            leftovers.note_process(Path(cwd), proc.pid)
            assert proc.stdout is not None
            async for line in _lines(proc.stdout):
                yield log.read(line)
            code.append(await proc.wait())
        finally:
            if proc.returncode is None:
                await self._stop(proc)

    async def _sandboxed(
        self, job: BuildJob, proxy: EgressProxy | None, workdir: str
    ) -> AsyncGenerator[ProgressEvent, None]:
        """Fetch and detect in the sandbox, then build what it prepared."""
        client = self.resources.docker_client
        if client is None:
            raise BuildBackendError("The build sandbox needs the Docker engine, which is not configured.")
        import docker.errors

        box = Path(workdir, "box")
        box.mkdir()
        config = box / "repo2docker_config.py"
        config.write_text(repo2docker_config_text(job.ref.content_provider))
        try:
            for path in (box, config):
                os.chown(path, self.sandbox_uid, self.sandbox_uid)
        except PermissionError:
            # The service is not root: let the sandbox's user write anyway.
            box.chmod(0o777)
            config.chmod(0o644)
        argv = repo2docker_argv(
            python="python",
            repo_url=job.ref.repo_url,
            ref=job.ref.resolved_ref,
            image_name=job.image.name,
            push=False,
            config_path=f"{sandbox_mod.WORK_DIR}/{config.name}",
            user_id=self.user_id,
            user_name=self.user_name,
            extra_args=self.extra_args,
        )
        env = sandbox_mod.sandbox_env(
            proxied=proxy is not None, extra=(self.extra_env, dict(job.extra_env))
        )
        add_git_config(env, git_fetch_config(sandbox_mod.relay_url() if proxy is not None else ""))
        try:
            args = sandbox_mod.container_args(
                image=self.sandbox_image,
                r2d_args=argv[3:],  # after "python -m repo2docker"
                env=env,
                work_dir=str(box),
                egress_dir=str(Path(workdir, "egress")) if proxy is not None else None,
                network=self.build_network,
                memory_limit=parse_bytes(self.sandbox_memory_limit),
                pids_limit=self.sandbox_pids_limit,
                image_name=job.image.name,
                build=Path(workdir).name,
                uid=self.sandbox_uid,
            )
            container = await asyncio.to_thread(client.containers.create, **args)
        except docker.errors.ImageNotFound:
            raise BuildBackendError(
                f"The build sandbox image {self.sandbox_image} is missing: run scripts/setup.sh."
            ) from None
        except (docker.errors.DockerException, ValueError) as exc:
            raise BuildBackendError(f"Could not create the build sandbox: {exc}") from None
        log = R2dLogReader(self.resources.scrubber)
        lifeline: Any = None
        try:
            try:
                # Before it starts: the sandbox dies when this connection does.
                lifeline = await asyncio.to_thread(
                    sandbox_mod.attach_lifeline, client, container.id
                )
                await asyncio.to_thread(container.start)
            except docker.errors.DockerException as exc:
                raise BuildBackendError(f"Could not start the build sandbox: {exc}") from None
            async for line in sandbox_mod.container_lines(client, container.id):
                yield log.read(line)
            try:
                status = await asyncio.to_thread(container.wait)
            except docker.errors.DockerException as exc:
                raise BuildBackendError(f"Lost the build sandbox: {exc}") from None
            code = int(status.get("StatusCode", 1))
            oom = code != 0 and await asyncio.to_thread(
                sandbox_mod.oom_killed, client, container.id
            )
        finally:
            await sandbox_mod.remove(client, container.id)
            if lifeline is not None:
                sandbox_mod.close_lifeline(lifeline)
        if code != 0:
            raise exit_failure(
                code, log, memory_limit=parse_bytes(self.sandbox_memory_limit), oom_killed=oom
            )

        # The trusted step: build and push what the sandbox prepared.
        trusted = [
            self.repo2docker_python,
            "-m",
            "binderbuild.builders.trusted_build",
            f"--dir={box / 'out'}",
            f"--tag={job.image.name}",
            "--push" if job.push else "--no-push",
        ]
        env = self._env(job)
        env["HOME"] = workdir
        env[ENV_MAX_CONTEXT] = str(parse_bytes(self.max_context_size))
        codes: list[int] = []
        async for ev in self._process(trusted, env, workdir, log, codes):
            yield ev
        if codes[0] != 0:
            # The build steps ran under the build containers' memory limit.
            raise exit_failure(codes[0], log, memory_limit=self.resources.memory_limit)

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

    async def start(self) -> None:
        """Remove what builds of a service that is gone left behind, then say
        at startup, not at the first build, when the sandbox image is missing."""
        await self._sweep_once()
        client = self.resources.docker_client
        if not self.sandbox or client is None:
            return
        import docker.errors

        try:
            await asyncio.to_thread(client.api.inspect_image, self.sandbox_image)
        except docker.errors.ImageNotFound:
            self.log.error(
                "The build sandbox image %s is missing: builds will fail until "
                "scripts/setup.sh (scripts/builder_image.py) builds it.",
                self.sandbox_image,
            )
        except (docker.errors.DockerException, OSError) as exc:
            self.log.warning("Could not check the build sandbox image: %s", exc)

    async def _sweep_once(self) -> None:
        """Kill and remove the builds a previous process left (its sandbox
        containers, process groups and work directories; ``leftovers``), once,
        before this process's first build. A restarted service thus never
        runs a second build of an image the dead one was still building."""
        if self._swept:
            return
        async with self._sweep_lock:
            if self._swept:
                return
            found = await asyncio.to_thread(leftovers.sweep_workdirs, self.work_root)
            client = self.resources.docker_client
            if client is not None:
                import docker.errors

                try:
                    found += await asyncio.to_thread(sandbox_mod.sweep, client)
                except (docker.errors.DockerException, OSError) as exc:
                    # The engine is down: try again before the next build.
                    self.log.warning("Could not look for left-over build sandboxes: %s", exc)
                    return
            for item in found:
                self.log.warning(
                    "Removed the %s %s of an interrupted build of %s (its service %s is gone%s)",
                    item.what,
                    item.name,
                    item.image or "an unknown image",
                    item.owner.split(":")[2] if item.owner.count(":") == 3 else item.owner,
                    f"; killed {item.killed_groups} process group(s)" if item.killed_groups else "",
                )
            self._swept = True

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
