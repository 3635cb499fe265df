"""The backend contract of builders/base.py: lifecycle defaults, the abstract
``build``, and backends configured from their traits plus ``BuildResources``
(never from their traitlets parent)."""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import json
import shlex
from pathlib import Path
from typing import Any

import pytest
from traitlets.config import LoggingConfigurable

from binderbuild.builders.base import Builder, BuildResources
from binderbuild.builders.docker import DockerBuilder
from binderbuild.builders.kubernetes import KubernetesBuilder
from binderbuild.errors import BuildFailed
from binderbuild.events import Phase, ProgressEvent
from binderbuild.models import BuildJob, ImageSpec, ResolvedRef
from binderbuild.secrets import Scrubber

REF = ResolvedRef(
    provider_id="gh",
    spec="o/r/main",
    unresolved_ref="main",
    resolved_ref="a" * 40,
    resolved_spec="o/r/" + "a" * 40,
    repo_url="https://github.com/o/r",
    ref_url="https://github.com/o/r/tree/" + "a" * 40,
    slug_source="github.com/o/r",
)
IMAGE = ImageSpec("registry.example.org/binder-o-r", "a" * 40, "build-o-r")


def job(push: bool = True) -> BuildJob:
    return BuildJob(image=IMAGE, ref=REF, push=push)


def test_build_is_abstract() -> None:
    with pytest.raises(NotImplementedError, match="Builder does not implement build"):
        Builder().build(job())


def test_lifecycle_defaults_are_awaitable_no_ops() -> None:
    builder = Builder()

    async def lifecycle() -> dict[str, Any]:
        await builder.start()
        health = await builder.check()
        await builder.begin_shutdown()
        await builder.close()
        return health

    assert asyncio.run(lifecycle()) == {}
    assert builder.needs_local_engine is True


def test_resources_default_to_empty() -> None:
    resources = Builder().resources
    assert resources == BuildResources(scrubber=resources.scrubber)
    assert resources.docker_client is None and not resources.registry_credentials
    with pytest.raises(AttributeError):
        resources.docker_host = "x"  # type: ignore[misc]


def test_which_backends_need_the_local_engine() -> None:
    assert DockerBuilder.needs_local_engine is True
    assert KubernetesBuilder.needs_local_engine is False


def test_every_lifecycle_step_of_the_backends_is_a_coroutine() -> None:
    for klass in (Builder, DockerBuilder, KubernetesBuilder):
        for step in ("start", "check", "begin_shutdown", "close"):
            assert inspect.iscoroutinefunction(getattr(klass, step)), (klass, step)


class _Parent(LoggingConfigurable):
    """An application object with settings a backend must not read."""

    allowed_internal_networks = ["10.0.0.0/8"]


def test_docker_builder_takes_shared_parts_from_resources_only() -> None:
    networks = (ipaddress.ip_network("192.168.7.0/24"),)
    credentials = {"registry": "https://reg", "username": "u", "password": "p4ssword"}
    resources = BuildResources(
        docker_host="tcp://127.0.0.1:2375",
        memory_limit=1 << 30,
        registry_credentials=credentials,
        allowed_internal_networks=networks,
    )
    builder = DockerBuilder(parent=_Parent(), resources=resources, egress_filter=False)
    assert builder.resources is resources
    env = builder._env(job(push=True))
    assert env["DOCKER_HOST"] == env["BINDERBUILD_DOCKER_HOST"] == "tcp://127.0.0.1:2375"
    assert env["BINDERBUILD_BUILD_MEMORY_LIMIT"] == str(1 << 30)
    assert json.loads(env["CONTAINER_ENGINE_REGISTRY_CREDENTIALS"]) == credentials
    assert "CONTAINER_ENGINE_REGISTRY_CREDENTIALS" not in builder._env(job(push=False))
    # The parent's networks are not the builder's: only resources count.
    assert list(DockerBuilder(parent=_Parent()).resources.allowed_internal_networks) == []


def test_docker_check_without_a_client_is_empty() -> None:
    assert asyncio.run(DockerBuilder().check()) == {}


def fake_repo2docker(tmp_path: Path, lines: list[str], code: int) -> str:
    """An executable standing in for repo2docker's Python: prints ``lines``
    and exits with ``code``, whatever its arguments."""
    script = tmp_path / "fake-python"
    body = "".join(f"printf '%s\\n' {shlex.quote(text)}\n" for text in lines)
    script.write_text(f"#!/bin/sh\n{body}exit {code}\n")
    script.chmod(0o755)
    return str(script)


def run_build(builder: DockerBuilder) -> tuple[list[ProgressEvent], BaseException | None]:
    async def consume() -> tuple[list[ProgressEvent], BaseException | None]:
        events: list[ProgressEvent] = []
        try:
            async for ev in builder.build(job(push=False)):
                events.append(ev)
        except BuildFailed as exc:
            return events, exc
        return events, None

    return asyncio.run(consume())


def test_docker_build_reads_the_log_and_classifies_the_exit(tmp_path: Path) -> None:
    python = fake_repo2docker(
        tmp_path,
        [
            json.dumps({"phase": "building", "message": "Step 1/2 with s3cret-value\n"}),
            json.dumps({"phase": "failed", "message": "The command failed\n"}),
            "plain trailing line",
        ],
        code=3,
    )
    builder = DockerBuilder(
        resources=BuildResources(scrubber=Scrubber(["s3cret-value"])),
        repo2docker_python=python,
        egress_filter=False,
        sandbox=False,
    )
    events, error = run_build(builder)
    assert [(e.phase, e.message) for e in events] == [
        (Phase.BUILDING, "Step 1/2 with ***\n"),
        (Phase.BUILDING, "The command failed\n"),
        (Phase.UNKNOWN, "plain trailing line\n"),
    ]
    assert isinstance(error, BuildFailed)
    assert error.message == "repo2docker exited with code 3: The command failed"


def test_docker_build_succeeds_on_exit_zero(tmp_path: Path) -> None:
    python = fake_repo2docker(
        tmp_path, [json.dumps({"phase": "built", "message": "done\n"})], code=0
    )
    events, error = run_build(
        DockerBuilder(repo2docker_python=python, egress_filter=False, sandbox=False)
    )
    assert error is None and [e.message for e in events] == ["done\n"]
