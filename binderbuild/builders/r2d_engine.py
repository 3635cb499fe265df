"""A repo2docker container engine that talks to the Docker Engine API.

repo2docker (since 2025) builds by shelling out to ``docker buildx build``,
which needs the buildx CLI plugin. Machines and build pods that only have a
Docker daemon (any API version >= 1.41) can use this engine instead: it
builds with the daemon's own builder through the ``docker`` Python package,
and pushes through the same API. repo2docker finds it through the
``repo2docker.engines`` entry point ``binderbuild_docker_api``
(``--engine binderbuild_docker_api``).

Behaviour is set by environment variables, which binderbuild sets on the
repo2docker subprocess (they are read once, when repo2docker creates the
engine):

``BINDERBUILD_BUILD_NETWORK``
    ``network_mode`` for the containers that run the build steps. Default
    ``none``: a step can reach nothing, not even the hub, the registry or the
    binderbuild service on this machine's loopback. ``host`` gives the steps
    the host's network *including its loopback services*; use it only for
    trusted builds. Any other value names an existing Docker network (for
    example an isolated bridge a real deployment creates for builds).
``BINDERBUILD_BUILD_MEMORY_LIMIT``
    Memory limit for each build step container, in bytes (``K``/``M``/``G``/
    ``T`` binary suffixes are accepted). Swap is capped at the same value, so
    a step cannot swap past it. Unset or ``0``: no limit. (repo2docker 2026.4
    no longer accepts ``--build-memory-limit`` itself.)
``BINDERBUILD_DOCKER_HOST``
    Docker daemon address (``unix:///var/run/docker.sock``, ``tcp://...``).
    Unset: ``docker.from_env()``, i.e. ``DOCKER_HOST`` & co. or the default
    socket.
``BINDERBUILD_ENGINE_EXPORT_DIR``
    Export mode, used inside a build sandbox (``builders/sandbox.py``): the
    engine talks to no daemon at all. ``build()`` writes the build context
    and parameters to this directory (``sandbox_output``) and returns; the
    service's trusted step checks and builds them. ``inspect_image`` finds
    nothing, so repo2docker always "builds".
``CONTAINER_ENGINE_REGISTRY_CREDENTIALS``
    repo2docker's own variable (``ContainerEngine.registry_credentials``):
    JSON ``{"registry": "...", "username": "...", "password": "..."}``.
    Used only to push, and only when the image's registry is the one named
    in ``registry`` (``https://`` prefixes and ``/v1/``-style paths are
    ignored when comparing), so credentials never go to another registry.
    They are never passed to the build: build steps cannot see them. No log
    line this engine yields contains the password or username.

Before anything reaches the daemon, the Dockerfile is checked
(``dockerfile_policy``): ``ADD`` from a URL is downloaded by the daemon itself,
outside the build network, so such Dockerfiles fail with a clear message; so
do image references (``FROM``, ``COPY --from``...) on internal registries or
on registries outside ``BINDERBUILD_ALLOWED_REGISTRIES`` (JSON lists set by
``DockerBuilder``, with ``BINDERBUILD_ALLOWED_INTERNAL_REGISTRIES``).

Build output is Docker's own event dicts (``string_output = False``), which
repo2docker turns into its JSON log lines (written to *stderr*):
``{"stream": ...}`` events, re-cut into whole lines, are logged in the
``building`` phase, and an ``{"error": ...}`` dict makes repo2docker log it
in the ``failed`` phase and exit 1. Push progress (one line per layer state
change) is logged by the engine itself in the ``pushing`` phase, ending with
``Successfully pushed IMAGE``; a failed push is an ``{"error": ...}`` too.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tarfile
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import docker
import docker.errors
from docker.auth import resolve_repository_name
from docker.utils import parse_repository_tag
from docker.utils.build import exclude_paths
from repo2docker.engine import (
    Container,
    ContainerEngine,
    ContainerEngineException,
    Image,
)
from repo2docker.utils import R2dState
from traitlets import TraitError, validate

from binderbuild.builders.dockerfile_policy import (
    DockerfilePolicyError,
    RegistryPolicy,
    check_dockerfile,
)
from binderbuild.builders.sandbox_output import CONTEXT_FILE, PARAMS_FILE

ENV_BUILD_NETWORK = "BINDERBUILD_BUILD_NETWORK"
ENV_BUILD_MEMORY_LIMIT = "BINDERBUILD_BUILD_MEMORY_LIMIT"
ENV_DOCKER_HOST = "BINDERBUILD_DOCKER_HOST"
ENV_REGISTRY_CREDENTIALS = "CONTAINER_ENGINE_REGISTRY_CREDENTIALS"
ENV_EXPORT_DIR = "BINDERBUILD_ENGINE_EXPORT_DIR"

DEFAULT_BUILD_NETWORK = "none"

# Dockerfiles larger than this are refused rather than parsed.
_MAX_DOCKERFILE = 1024 * 1024

# A build step can be silent for a long time (compiling, downloading); the
# docker SDK's default 60 s read timeout would abort such builds. The
# service kills repo2docker on its own build timeout, so an hour here is
# only a backstop against a hung daemon.
DOCKER_API_TIMEOUT = 3600

# Docker network names: what `docker network create` accepts.
_NETWORK_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_SIZE_RE = re.compile(r"\s*(\d+)\s*([kKmMgGtT]?)[bB]?\s*")
_SIZE_FACTORS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}

# Docker Hub answers under several names; docker-py resolves all images on
# it to "docker.io" (INDEX_NAME).
_DOCKER_HUB_ALIASES = {
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
}


def parse_memory_limit(value: str | None) -> int:
    """``"1073741824"``, ``"512M"``, ``"2G"`` -> bytes; empty/None -> 0."""
    if value is None or not value.strip():
        return 0
    match = _SIZE_RE.fullmatch(value)
    if not match:
        raise ValueError(f"{ENV_BUILD_MEMORY_LIMIT}={value!r} is not a size in bytes")
    return int(match.group(1)) * _SIZE_FACTORS[match.group(2).lower()]


def parse_build_network(value: str | None) -> str:
    """Validate the build network mode; default ``none``."""
    if value is None or not value.strip():
        return DEFAULT_BUILD_NETWORK
    value = value.strip()
    if not _NETWORK_RE.fullmatch(value):
        raise ValueError(f"{ENV_BUILD_NETWORK}={value!r} is not a Docker network name")
    return value


def normalize_registry(registry: str) -> str:
    """Reduce a registry given as URL or host to the host[:port] Docker uses.

    ``https://index.docker.io/v1/`` -> ``docker.io``;
    ``http://127.0.0.1:5000`` -> ``127.0.0.1:5000``.
    """
    host = registry.strip()
    host = re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", "", host)
    host = host.split("/", 1)[0].lower()
    if host in _DOCKER_HUB_ALIASES:
        return "docker.io"
    return host


def image_registry(image_spec: str) -> str:
    """The registry host an image reference is pushed to (``docker.io`` if none)."""
    repository, _tag = parse_repository_tag(image_spec)
    registry, _name = resolve_repository_name(repository)
    return normalize_registry(registry)


def _dockerfile_text(path: str, dockerfile: str, fileobj: Any, custom_context: bool) -> str:
    """The Dockerfile a build() call would hand the daemon, for the policy check.

    repo2docker passes either a directory (``path``, the repository, with
    ``dockerfile`` relative to it) or a tar of the build context
    (``fileobj`` with ``custom_context``); docker-py also accepts the
    Dockerfile itself as ``fileobj``. Reading leaves ``fileobj`` where it was.
    Unreadable input gives "" and the daemon reports the problem itself.
    """
    name = dockerfile or "Dockerfile"
    if fileobj is not None:
        start = fileobj.tell()
        try:
            if not custom_context:
                data = fileobj.read(_MAX_DOCKERFILE + 1)
            else:
                with tarfile.open(fileobj=fileobj, mode="r:*") as tar:
                    member = tar.extractfile(tar.getmember(name.removeprefix("./")))
                    data = member.read(_MAX_DOCKERFILE + 1) if member is not None else b""
        except (KeyError, tarfile.TarError):
            data = b""
        finally:
            fileobj.seek(start)
    else:
        root = os.path.realpath(path or ".")
        target = os.path.realpath(os.path.join(root, name))
        if os.path.commonpath([root, target]) != root:
            # A symlink out of the repository: the daemon cannot read it
            # either, and we do not read the host's files for a stranger.
            raise DockerfilePolicyError(f"{name} points outside the repository.")
        try:
            with open(target, "rb") as f:
                data = f.read(_MAX_DOCKERFILE + 1)
        except OSError:
            data = b""
    if isinstance(data, str):
        data = data.encode()
    if len(data) > _MAX_DOCKERFILE:
        raise DockerfilePolicyError(f"{name} is larger than {_MAX_DOCKERFILE // 1024} KiB.")
    text: str = data.decode("utf-8", "replace")
    return text


def _read_inside(root: str, name: str) -> bytes:
    """The bytes of ``root/name``, refusing a path that resolves outside ``root``."""
    target = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath([root, target]) != root:
        raise DockerfilePolicyError(f"{name} points outside the repository.")
    with open(target, "rb") as f:
        data = f.read(_MAX_DOCKERFILE + 1)
    if len(data) > _MAX_DOCKERFILE:
        raise DockerfilePolicyError(f"{name} is larger than {_MAX_DOCKERFILE // 1024} KiB.")
    return data


def write_context(path: str, dockerfile: str, dest: str) -> None:
    """Tar the directory ``path`` as docker-py would send it (``.dockerignore``
    applied, symlinks kept as symlinks), with ``dockerfile`` as a regular file.

    A Dockerfile that is a symlink is replaced by the file it points to, so
    the trusted step checks exactly what the daemon builds.
    """
    root = os.path.realpath(path or ".")
    name = (dockerfile or "Dockerfile").removeprefix("./")
    patterns: list[str] = []
    ignore = os.path.join(root, ".dockerignore")
    if os.path.isfile(ignore):
        with open(ignore) as f:
            patterns = [ln.strip() for ln in f.read().splitlines() if ln.strip() and ln.strip()[0] != "#"]
    files = sorted(set(exclude_paths(root, patterns, dockerfile=name)) - {name})
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for rel in files:
            full = os.path.join(root, rel)
            info = tar.gettarinfo(full, arcname=rel)
            if info is None:  # sockets
                continue
            if info.isreg():
                with open(full, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
        data = _read_inside(root, name)
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))


class _LineBuffer:
    """Re-cut Docker's stream chunks into whole lines.

    The classic builder sends "Step 1/9 : FROM x" and its "\\n" as two
    events, and a step's output arrives in arbitrary pieces; repo2docker
    makes one JSON log line per event, so without this a reader sees lone
    newlines and half lines.
    """

    def __init__(self) -> None:
        self._pending = ""

    def feed(self, text: str) -> Iterator[dict[str, str]]:
        self._pending += text
        *complete, self._pending = self._pending.split("\n")
        for line in complete:
            yield {"stream": line + "\n"}

    def flush(self) -> Iterator[dict[str, str]]:
        if self._pending:
            yield {"stream": self._pending + "\n"}
            self._pending = ""


# repo2docker ships no type information: its base classes are Any to mypy.
class DockerAPIContainer(Container):  # type: ignore[misc]
    """repo2docker's container interface over a docker-py ``Container``."""

    def __init__(self, container: Any) -> None:
        self._c = container

    def reload(self) -> None:
        self._c.reload()

    def logs(self, *, stream: bool = False, timestamps: bool = False, since: Any = None) -> Any:
        if isinstance(since, str):
            # repo2docker hands back the timestamp prefix of the last line it
            # saw (RFC 3339 in UTC, nanoseconds); the API wants epoch seconds.
            # Whole seconds are what the API can take anyway.
            since = int(
                datetime.strptime(since[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
            )
        return self._c.logs(stream=stream, timestamps=timestamps, since=since)

    def kill(self, *, signal: str = "KILL") -> None:
        self._c.kill(signal=signal)

    def remove(self) -> None:
        self._c.remove()

    def stop(self, *, timeout: int = 10) -> None:
        self._c.stop(timeout=timeout)

    def wait(self) -> Any:
        return self._c.wait()

    @property
    def exitcode(self) -> int:
        return int(self._c.attrs["State"]["ExitCode"])

    @property
    def status(self) -> str:
        return str(self._c.status)


class DockerAPIEngine(ContainerEngine):  # type: ignore[misc]  # untyped base, as above
    """repo2docker engine using the Docker Engine API (no CLI, no buildx)."""

    # Build and push yield Docker-style dicts; see the module docstring.
    string_output = False

    def __init__(self, *, parent: Any) -> None:
        super().__init__(parent=parent)
        # Configuration errors are ContainerEngineException so that
        # repo2docker reports "Container engine initialization error" and
        # exits 1 instead of printing a traceback.
        try:
            self.network_mode = parse_build_network(os.environ.get(ENV_BUILD_NETWORK))
            self.memory_limit = parse_memory_limit(os.environ.get(ENV_BUILD_MEMORY_LIMIT))
        except ValueError as e:
            raise ContainerEngineException(str(e)) from None
        self.export_dir = os.environ.get(ENV_EXPORT_DIR, "").strip()
        if self.export_dir:
            # In a sandbox: no daemon, no credentials.
            self._credentials: dict[str, str] = {}
            return
        self._credentials = self._load_credentials()
        base_url = os.environ.get(ENV_DOCKER_HOST, "").strip()
        try:
            if base_url:
                self.client = docker.DockerClient(
                    base_url=base_url, version="auto", timeout=DOCKER_API_TIMEOUT
                )
            else:
                self.client = docker.from_env(version="auto", timeout=DOCKER_API_TIMEOUT)
            self.client.ping()
        except docker.errors.DockerException as e:
            where = base_url or os.environ.get("DOCKER_HOST") or "the default socket"
            raise ContainerEngineException(
                f"cannot reach the Docker daemon at {where}: {e}"
            ) from None

    # ------------------------------------------------------------ credentials

    @validate("registry_credentials")
    def _registry_credentials_validate(self, proposal: Any) -> Any:
        """Replaces the base class's validator of the same name.

        repo2docker 2026.4's validator returns None, so any value set through
        traitlets config (``c.ContainerEngine.registry_credentials``) fails
        with "expected a dict, not the NoneType". Keys are checked in
        _load_credentials, which also covers the environment variable (trait
        defaults are not validated).
        """
        return proposal["value"]

    def _load_credentials(self) -> dict[str, str]:
        """Registry credentials from config or the environment; {} if none."""
        try:
            # Default: parsed from CONTAINER_ENGINE_REGISTRY_CREDENTIALS.
            creds: Any = self.registry_credentials
        except (json.JSONDecodeError, TraitError):
            # Never echo the value: it holds a password.
            raise ContainerEngineException(
                f"{ENV_REGISTRY_CREDENTIALS} is not valid JSON"
            ) from None
        if not creds:
            return {}
        if not isinstance(creds, dict) or not all(
            isinstance(creds.get(k), str) and creds.get(k)
            for k in ("registry", "username", "password")
        ):
            raise ContainerEngineException(
                f"{ENV_REGISTRY_CREDENTIALS} must be a JSON object with string keys "
                "'registry', 'username' and 'password'"
            )
        return {k: creds[k] for k in ("registry", "username", "password")}

    def _auth_config_for(self, image_spec: str) -> dict[str, str] | None:
        """Credentials for pushing ``image_spec``, if they are for its registry."""
        if not self._credentials:
            return None
        target = image_registry(image_spec)
        if normalize_registry(self._credentials["registry"]) != target:
            self.log.warning(
                "Registry credentials are for another registry than %s; pushing without them",
                target,
            )
            return None
        return {
            "username": self._credentials["username"],
            "password": self._credentials["password"],
            "serveraddress": self._credentials["registry"],
        }

    def _redact(self, text: str) -> str:
        """Remove secrets from a message that may end up in a log line."""
        for key in ("password", "username"):
            secret = self._credentials.get(key)
            # Very short values would blank out unrelated text; they are
            # not realistic credentials.
            if secret and len(secret) >= 4:
                text = text.replace(secret, "[redacted]")
        return text

    # ------------------------------------------------------------ build

    def build(
        self,
        *,
        push: bool = False,
        load: bool = False,
        buildargs: dict[str, str] | None = None,
        cache_from: list[str] | None = None,
        container_limits: dict[str, Any] | None = None,
        tag: str = "",
        custom_context: bool = False,
        dockerfile: str = "",
        fileobj: Any = None,
        path: str = "",
        labels: dict[str, str] | None = None,
        platform: str | None = None,
        **kwargs: Any,
    ) -> Iterator[dict[str, Any]]:
        """Build with the daemon's builder; push afterwards when asked.

        ``load`` needs no action: an Engine API build always lands in the
        daemon's image store. Unknown keyword arguments (from
        ``Repo2Docker.extra_build_kwargs``) are passed to the API's build
        call, except the few that would undo this engine's isolation.
        """
        if self.export_dir:
            yield from self._export(
                tag=tag,
                buildargs=buildargs,
                labels=labels,
                platform=platform,
                dockerfile=dockerfile,
                fileobj=fileobj,
                custom_context=custom_context,
                path=path,
            )
            return
        limits = dict(container_limits or {})
        if self.memory_limit:
            limits["memory"] = self.memory_limit
            # memswap is memory + swap in Docker's terms: equal means no swap.
            limits["memswap"] = self.memory_limit
        for key in ("network_mode", "decode", "extra_hosts"):
            # The operator chooses the network through the environment, not
            # repo2docker config that a build request could influence.
            kwargs.pop(key, None)

        build_kwargs: dict[str, Any] = {
            "tag": tag or None,
            "buildargs": dict(buildargs or {}),
            "cache_from": list(cache_from or []) or None,
            "container_limits": limits or None,
            "labels": dict(labels or {}) or None,
            "network_mode": self.network_mode,
            # Intermediate containers go away even when a step fails.
            "rm": True,
            "forcerm": True,
            # Nothing can be pulled here, and base images are pinned by the
            # operator; a pull attempt would only add a failing round trip.
            "pull": False,
            "decode": True,
            **kwargs,
        }
        if platform:
            build_kwargs["platform"] = platform
        if dockerfile:
            build_kwargs["dockerfile"] = dockerfile
        if fileobj is not None:
            build_kwargs["fileobj"] = fileobj
            build_kwargs["custom_context"] = custom_context
        else:
            build_kwargs["path"] = path

        try:
            check_dockerfile(
                _dockerfile_text(path, dockerfile, fileobj, custom_context),
                registries=RegistryPolicy.from_env(os.environ),
                build_args=build_kwargs["buildargs"],
            )
        except DockerfilePolicyError as e:
            yield {"error": str(e)}
            return

        # As a stream event, so it lands in the build log with the
        # "building" phase like the builder's own lines.
        yield {
            "stream": f"Building {tag or '<untagged>'} with the Docker Engine API "
            f"(build network: {self.network_mode}, "
            f"memory limit: {self.memory_limit or 'none'})\n"
        }
        lines = _LineBuffer()
        try:
            for event in self.client.api.build(**build_kwargs):
                if "error" in event:
                    yield from lines.flush()
                    yield {"error": self._redact(str(event["error"]))}
                    return
                if "aux" in event:
                    # {"aux": {"ID": "sha256:..."}}: the same information
                    # arrives as a "Successfully built" stream line.
                    continue
                if "stream" in event:
                    yield from lines.feed(event["stream"])
                elif "status" in event:
                    # Only seen when the builder pulls, which it cannot here.
                    yield from lines.feed(f"{event['status']}\n")
        except docker.errors.DockerException as e:
            yield from lines.flush()
            yield {"error": f"Docker build failed: {self._redact(str(e))}"}
            return
        yield from lines.flush()

        if push:
            if not tag:
                yield {"error": "cannot push an image built without a tag"}
                return
            yield from self._push_with_log(tag)

    def _export(
        self,
        *,
        tag: str,
        buildargs: dict[str, str] | None,
        labels: dict[str, str] | None,
        platform: str | None,
        dockerfile: str,
        fileobj: Any,
        custom_context: bool,
        path: str,
    ) -> Iterator[dict[str, Any]]:
        """Write the context and parameters for the trusted step (export mode).

        Only what repo2docker decides from the repository is written; the
        network, limits, pulls and the push are the trusted step's business.
        """
        os.makedirs(self.export_dir, exist_ok=True)
        context = os.path.join(self.export_dir, CONTEXT_FILE)
        name = (dockerfile or "Dockerfile").removeprefix("./")
        try:
            if fileobj is not None and custom_context:
                with open(context, "wb") as out:
                    shutil.copyfileobj(fileobj, out)
            elif fileobj is not None:
                # docker-py also takes the Dockerfile itself as fileobj.
                data = fileobj.read(_MAX_DOCKERFILE + 1)
                data = data.encode() if isinstance(data, str) else data
                name = "Dockerfile"
                with tarfile.open(context, "w") as tar:
                    info = tarfile.TarInfo(name)
                    info.size, info.mode = len(data), 0o644
                    tar.addfile(info, io.BytesIO(data))
            else:
                write_context(path, name, context)
        except (DockerfilePolicyError, OSError) as e:
            yield {"error": str(e)}
            return
        params = {
            "tag": tag,
            "buildargs": dict(buildargs or {}),
            "labels": dict(labels or {}),
            "dockerfile": name,
            "platform": platform or "",
        }
        with open(os.path.join(self.export_dir, PARAMS_FILE), "w") as f:
            json.dump(params, f)
        size = os.path.getsize(context)
        yield {"stream": f"Build context ready ({size} bytes); building outside the sandbox\n"}

    # ------------------------------------------------------------ push

    def push(self, image_spec: str) -> Iterator[dict[str, Any]]:
        """Push ``image_spec``; yields Docker's push progress dicts.

        Dicts have ``status``/``id``/``progressDetail`` keys, or ``error``
        when the push failed (the API reports most failures this way rather
        than by an HTTP error). ``error`` texts are redacted.
        """
        if self.export_dir:
            yield {"error": "this engine does not push from a build sandbox"}
            return
        repository, tag = parse_repository_tag(image_spec)
        auth_config = self._auth_config_for(image_spec)
        try:
            for event in self.client.api.push(
                repository,
                tag=tag or "latest",
                stream=True,
                decode=True,
                auth_config=auth_config,
            ):
                if "error" in event:
                    yield {"error": self._redact(str(event["error"]))}
                    return
                yield event
        except docker.errors.DockerException as e:
            yield {"error": f"Docker push failed: {self._redact(str(e))}"}

    def _push_with_log(self, image_spec: str) -> Iterator[dict[str, Any]]:
        """Push during build(): progress is logged, only a failure is yielded.

        repo2docker labels everything build() yields with the "building"
        phase; logging here directly gives push progress the "pushing" phase,
        so a consumer of the JSON log can tell the two apart. One line per
        layer state change: Docker repeats "Pushing" with byte counts for
        every chunk.
        """
        pushing = {"phase": R2dState.PUSHING}
        self.log.info(f"Pushing {image_spec}\n", extra=pushing)
        last_status: dict[str, str] = {}
        for event in self.push(image_spec):
            if "error" in event:
                yield {"error": f"Pushing {image_spec} failed: {event['error']}"}
                return
            status = event.get("status")
            if not status:
                continue
            layer = event.get("id", "")
            if last_status.get(layer) == status:
                continue
            last_status[layer] = status
            self.log.info(f"{layer}: {status}\n" if layer else f"{status}\n", extra=pushing)
        self.log.info(f"Successfully pushed {image_spec}\n", extra=pushing)

    # ------------------------------------------------------------ images

    def inspect_image(self, image: str) -> Image | None:
        if self.export_dir:
            return None
        try:
            # docker's stubs leave the low-level API unannotated.
            attrs = self.client.api.inspect_image(image)  # type: ignore[no-untyped-call]
        except docker.errors.ImageNotFound:
            return None
        config = dict(attrs.get("Config") or {})
        # repo2docker reads WorkingDir, which the OCI config may omit.
        config.setdefault("WorkingDir", "")
        return Image(tags=attrs.get("RepoTags") or [], config=config)

    def images(self) -> list[Image]:
        """All local images (tags only; config is not loaded)."""
        if self.export_dir:
            return []
        return [Image(tags=img.get("RepoTags") or []) for img in self.client.api.images()]

    # ------------------------------------------------------------ run

    def run(
        self,
        image_spec: str,
        *,
        command: list[str] | None = None,
        environment: list[str] | None = None,
        ports: dict[str, Any] | None = None,
        publish_all_ports: bool = False,
        remove: bool = False,
        volumes: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> DockerAPIContainer:
        """Start a container (only used by ``repo2docker --run``)."""
        if self.export_dir:
            raise ContainerEngineException("a build sandbox runs no containers")
        container = self.client.containers.run(
            image_spec,
            command=command or None,
            environment=list(environment or []),
            detach=True,
            ports=dict(ports or {}),
            publish_all_ports=publish_all_ports,
            remove=remove,
            volumes=dict(volumes or {}),
            **kwargs,
        )
        return DockerAPIContainer(container)
