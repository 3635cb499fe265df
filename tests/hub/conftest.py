"""Fixtures for launch tests against a real JupyterHub, proxy, DockerSpawner and engine.

The session ``hub`` runs ``jupyterhub`` (with configurable-http-proxy and
``binderbuild.spawner.BinderDockerSpawner``) on free loopback ports; tests
that stop or reconfigure a hub start their own with ``start_hub``. Images
that need no repo2docker build (a plain server, one that crashes, one that
starts slowly) are made directly on the engine by ``make_image``, in about a
second each, from the local notebook base image.
"""

from __future__ import annotations

import asyncio
import functools
import io
import secrets
import shutil
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from binderbuild.http import HttpClient
from binderbuild.hub import HubLauncher, HubSettings
from binderbuild.models import LaunchRequest, ResolvedRef
from tests.hubservice import HubService, HubUnavailable

# The image prefix binderbuild uses in these tests (tests/conftest.py's
# service_config without a registry) and the only one the hubs accept.
IMAGE_PREFIX = "bbtest-local-"
NOTEBOOK_BASE_IMAGE = "binderbuild/notebook-base:bookworm"


def run_async(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run an async test body with asyncio.run (fixtures pass through)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run(fn(*args, **kwargs))

    return wrapper


def _start(workdir: Path, **kwargs: Any) -> HubService:
    try:
        return HubService(workdir, [IMAGE_PREFIX], **kwargs).start()
    except HubUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory, docker_client: Any) -> Iterator[HubService]:
    service = _start(tmp_path_factory.mktemp("hub"))
    yield service
    service.stop()
    service.remove_containers(docker_client)


@pytest.fixture
def start_hub(tmp_path: Path, docker_client: Any) -> Iterator[Callable[..., HubService]]:
    """Start extra hubs for one test (stopped, and their containers removed, after it)."""
    started: list[HubService] = []

    def start(**kwargs: Any) -> HubService:
        service = _start(tmp_path / f"hub{len(started)}", **kwargs)
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()
        service.remove_containers(docker_client)


@pytest.fixture(scope="session")
def make_image(docker_client: Any) -> Iterator[Callable[..., str]]:
    """make_image(dockerfile_lines, name=None) -> image name under IMAGE_PREFIX.

    Built through the Engine API with no network, FROM the notebook base."""
    made: list[str] = []

    def make(lines: list[str], label: str = "img") -> str:
        name = f"{IMAGE_PREFIX}hubtest-{label}-{secrets.token_hex(4)}:1"
        dockerfile = "\n".join([f"FROM {NOTEBOOK_BASE_IMAGE}", *lines]) + "\n"
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            data = dockerfile.encode()
            info = tarfile.TarInfo("Dockerfile")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        buf.seek(0)
        for chunk in docker_client.api.build(
            fileobj=buf, custom_context=True, tag=name, network_mode="none", rm=True, decode=True
        ):
            if "error" in chunk:
                pytest.fail(f"building test image {name}: {chunk['error']}")
        made.append(name)
        return name

    yield make
    for name in made:
        try:
            docker_client.images.remove(name, force=True)
        except Exception:
            pass


@pytest.fixture(scope="session")
def plain_image(make_image: Callable[..., str]) -> str:
    """The notebook base under the allowed prefix: a server that starts normally."""
    return make_image(["LABEL binderbuild.test=plain"], "plain")


@pytest.fixture(scope="session")
def slow_image(make_image: Callable[..., str]) -> str:
    """A server that needs ~8 s to come up: time to interrupt its launch."""
    return make_image(
        [
            'ENTRYPOINT ["sh", "-c", "sleep 8; exec \\"$@\\"", "--"]',
            'CMD ["jupyterhub-singleuser"]',
        ],
        "slow",
    )


def fake_request(image: str, repo_url: str | None = None, user: str | None = None) -> LaunchRequest:
    repo_url = repo_url or f"git://127.0.0.1:9/hubtest-{secrets.token_hex(3)}.git"
    ref = ResolvedRef(
        provider_id="git",
        spec=f"{repo_url}/main",
        unresolved_ref="main",
        resolved_ref="0" * 40,
        resolved_spec=f"{repo_url}/{'0' * 40}",
        repo_url=repo_url,
        ref_url=repo_url,
        slug_source=repo_url,
    )
    return LaunchRequest(
        image=image,
        ref=ref,
        request_path=f"v2/git/{ref.spec}",
        persistent_request_path=f"v2/git/{ref.resolved_spec}",
        launch_host="http://127.0.0.1:1/",
        user=user,
    )


def make_launcher(hub: HubService, **options: Any) -> HubLauncher:
    """An in-process HubLauncher aimed at ``hub``. Keyword options are
    HubLauncher traits, or HubSettings fields (auth_enabled, per_repo_quota...)."""
    fields = set(HubSettings.__dataclass_fields__)
    settings_kwargs = {k: options.pop(k) for k in list(options) if k in fields}
    settings = HubSettings(
        hub_url=hub.url, hub_url_local=hub.local_url, hub_api_token=hub.token, **settings_kwargs
    )
    options.setdefault("retry_delay", 0.2)
    options.setdefault("launch_timeout", 90.0)
    return HubLauncher(http=HttpClient(), settings=settings, **options)


async def run_launch(launcher: HubLauncher, request: LaunchRequest) -> tuple[list[Any], Any]:
    """Drive one launch; returns (launching messages, LaunchResult or exception)."""
    from binderbuild.errors import BinderBuildError
    from binderbuild.models import LaunchResult

    messages: list[Any] = []
    try:
        async for item in launcher.launch(request):
            if isinstance(item, LaunchResult):
                return messages, item
            messages.append(item)
    except BinderBuildError as exc:
        return messages, exc
    raise AssertionError(f"launch ended without a result: {messages}")


@pytest.fixture(scope="session", autouse=True)
def _check_proxy_installed() -> None:
    from tests.hubservice import PROXY_COMMAND

    if not PROXY_COMMAND.exists() or not shutil.which("node"):
        pytest.fail(
            f"configurable-http-proxy ({PROXY_COMMAND}) or node is missing: run scripts/setup.sh",
            pytrace=False,
        )
