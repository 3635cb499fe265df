"""The build pod's sandbox (issue 11): an untrusted container fetches and
detects, a trusted one builds and pushes.

Read as data (the manifest), through KubernetesBuilder against the fake API
server (the options reach the pod; the trusted container's status decides
the build), and run for real as local processes: ``sandbox_entry``'s report
mode with the real repo2docker, followed by ``trusted_build``'s
``follow_sandbox`` through a shared directory, the way the two containers
share their volume. tests/images/test_images.py runs the whole pod in
Docker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from traitlets import TraitError

from binderbuild.builders import pod_manifests as pm
from binderbuild.builders import sandbox_entry, trusted_build
from binderbuild.builders.dockerfile_policy import ENV_ALLOWED_REGISTRIES
from binderbuild.builders.sandbox_output import CONTEXT_FILE, PARAMS_FILE, SandboxOutputError
from binderbuild.errors import BuildFailed
from tests.kubernetes import k8s_schema
from tests.kubernetes.conftest import SECRET, Collector, make_builder, make_job, run, until
from tests.kubernetes.fake_k8s import FakeCoreV1Api, rfc3339

NS = "ns"


def config(**overrides) -> pm.BuildPodConfig:
    values = {
        "namespace": "binder",
        "build_image": "registry.example.org/builder:1.0",
        "push_secret": "prod-push",
        "extra_env": {"GIT_TOKEN": SECRET},
    }
    values.update(overrides)
    return pm.BuildPodConfig(**values)


def containers(pod: dict) -> dict[str, dict]:
    return {c["name"]: c for c in pod["spec"]["containers"]}


# --- the manifest ----------------------------------------------------------------------


def test_push_credentials_and_the_socket_are_in_the_trusted_container_only():
    """Finding: the process that reads a stranger's repository must not hold
    the registry credentials or the daemon socket."""
    pod = pm.build_pod_manifest(make_job(), config())
    box, builder = containers(pod)["sandbox"], containers(pod)["builder"]
    assert not [e for e in box["env"] if "valueFrom" in e]
    assert "CONTAINER_ENGINE_REGISTRY_CREDENTIALS" not in {e["name"] for e in box["env"]}
    assert "DOCKER_HOST" not in {e["name"] for e in box["env"]}
    assert {e["name"] for e in builder["env"] if "valueFrom" in e} == {
        "CONTAINER_ENGINE_REGISTRY_CREDENTIALS"
    }
    box_volumes = {m["name"] for m in box["volumeMounts"]}
    assert box_volumes == {"sandbox-work", "sandbox-home"}
    assert "docker-socket" in {m["name"] for m in builder["volumeMounts"]}
    # The builder's own scratch (its private copy of the output) is not the sandbox's.
    assert "scratch" not in box_volumes
    # The operator's and the job's extra variables (a git token) are the
    # fetch's; the trusted container never gets them.
    assert SECRET in json.dumps(box["env"])
    assert SECRET not in json.dumps(builder["env"])


def test_no_service_account_token_and_no_shared_processes():
    spec = pm.build_pod_manifest(make_job(), config(service_account="prod-build"))["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["shareProcessNamespace"] is False
    for volume in spec["volumes"]:
        assert "projected" not in volume and "secret" not in volume, volume
    for container in spec["containers"]:
        for mount in container["volumeMounts"]:
            assert "serviceaccount" not in mount["mountPath"]
        assert "hostNetwork" not in spec and "hostPID" not in spec


def test_the_builder_reads_the_sandbox_volume_read_only():
    pod = pm.build_pod_manifest(make_job(), config())
    mounts = {m["name"]: m for m in containers(pod)["builder"]["volumeMounts"]}
    assert mounts["sandbox-work"]["readOnly"] is True
    sandbox_mounts = {m["name"]: m for m in containers(pod)["sandbox"]["volumeMounts"]}
    assert sandbox_mounts["sandbox-work"]["mountPath"] == pm.SANDBOX_WORK_DIR


def test_the_sandbox_uid_is_an_option():
    pod = pm.build_pod_manifest(make_job(), config(sandbox_uid=4242, pod_uid=1500))
    box = containers(pod)["sandbox"]["securityContext"]
    builder = containers(pod)["builder"]["securityContext"]
    assert (box["runAsUser"], box["runAsGroup"]) == (4242, 4242)
    assert (builder["runAsUser"], builder["runAsGroup"]) == (1500, 1500)
    assert k8s_schema.problems(pod) == []


def test_the_registry_policy_reaches_the_trusted_step():
    pod = pm.build_pod_manifest(make_job(), config(allowed_registries=("docker.io", "quay.io")))
    env = {e["name"]: e.get("value") for e in containers(pod)["builder"]["env"]}
    assert json.loads(env[ENV_ALLOWED_REGISTRIES]) == ["docker.io", "quay.io"]
    assert ENV_ALLOWED_REGISTRIES not in {e["name"] for e in containers(pod)["sandbox"]["env"]}


# --- through KubernetesBuilder and the fake API server --------------------------------


def test_builder_options_reach_the_pod(api: FakeCoreV1Api):
    async def main() -> None:
        builder = make_builder(
            api, sandbox_uid=4242, sandbox_memory_limit="1G", allowed_registries=["quay.io"]
        )
        try:
            job = make_job()
            collector = Collector(builder.build(job))
            await until(lambda: (NS, job.image.build_name) in api.pods, what="pod created")
            (create,) = api.calls_to("create_namespaced_pod")
            pod = create.args[1]
            box = containers(pod)["sandbox"]
            assert box["securityContext"]["runAsUser"] == 4242
            assert box["resources"] == {"limits": {"memory": str(1024**3)}}
            assert containers(pod)["builder"]["securityContext"]["runAsUser"] == 1000
            builder_env = {e["name"]: e.get("value") for e in containers(pod)["builder"]["env"]}
            assert json.loads(builder_env[ENV_ALLOWED_REGISTRIES]) == ["quay.io"]
            assert SECRET not in json.dumps(box)
            collector.task.cancel()
        finally:
            await builder.close()

    run(main())


@pytest.mark.parametrize("trait", ["sandbox_uid", "build_pod_uid"])
def test_root_uids_are_refused(api: FakeCoreV1Api, trait: str):
    with pytest.raises(TraitError, match="positive"):
        make_builder(api, **{trait: 0})


def test_the_trusted_containers_status_decides_not_the_sandboxs(api: FakeCoreV1Api):
    """A real kubelet reports both containers. The sandbox ending (even
    killed) does not end the build; the builder's exit and its log (which
    relays the sandbox's) do."""

    async def main() -> None:
        builder = make_builder(api)
        try:
            job = make_job()
            name = job.image.build_name
            collector = Collector(builder.build(job))
            await until(lambda: (NS, name) in api.pods, what="pod created")
            api.start(name)
            await until(lambda: api.log_streams, what="log followed")
            now = rfc3339(0)
            running = api.pod(name)["status"]["containerStatuses"][0]
            sandbox_killed = {
                "name": pm.SANDBOX_CONTAINER_NAME,
                "ready": False,
                "state": {
                    "terminated": {"exitCode": 137, "reason": "OOMKilled", "finishedAt": now}
                },
            }
            api.modify(name, containerStatuses=[sandbox_killed, running])
            api.log_json(name, "fetching", "Cloning repository...\n")
            api.log_json(name, "failed", "\nThe build sandbox was killed by signal 9.\n")
            await until(lambda: len(collector.events) >= 3, what="log relayed")
            assert not collector.task.done()
            api.finish(name, 1)
            await collector.done()
            assert isinstance(collector.error, BuildFailed)
            assert "The build sandbox was killed by signal 9." in str(collector.error)
        finally:
            await builder.close()

    run(main())


# --- the two processes, for real --------------------------------------------------------


def report(directory: Path, *r2d_args: str) -> subprocess.CompletedProcess[str]:
    """sandbox_entry in report mode, as the sandbox container runs it."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(directory),
        sandbox_entry.ENV_REPORT_DIR: str(directory),
        "TMPDIR": str(directory / "tmp"),
    }
    return subprocess.run(
        [sys.executable, "-m", "binderbuild.builders.sandbox_entry", *r2d_args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_sandbox_reports_repo2docker_output_and_status_to_the_trusted_step(tmp_path: Path):
    done = report(tmp_path, "--version")
    assert done.returncode == 0, done.stderr
    # Nothing on its own output: the trusted step relays the log.
    assert done.stdout == ""
    out = StringIO()
    assert trusted_build.follow_sandbox(str(tmp_path), out, poll=0.01) == (0, "")
    from importlib.metadata import version

    assert out.getvalue().strip() == version("jupyter-repo2docker")
    # The lock was let go, the temporary names are gone.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alive", "sandbox.log", "status", "tmp"]


def test_a_failing_sandbox_stops_the_trusted_step_with_its_log(tmp_path: Path):
    done = report(tmp_path, "--no-such-option")
    assert done.returncode == 1
    out = StringIO()
    status, _ = trusted_build.follow_sandbox(str(tmp_path), out, poll=0.01)
    assert status == 2  # argparse's
    assert "error: the following arguments are required" in out.getvalue()
    # run_sandboxed stops there, never reading an output directory.
    assert not (tmp_path / "out").exists()


def test_a_sandbox_killed_without_a_status_ends_the_wait(tmp_path: Path):
    fd = sandbox_entry.hold_alive(str(tmp_path))
    (tmp_path / "sandbox.log").write_text('{"phase": "fetching", "message": "x"}\npartial')
    os.close(fd)  # what the kernel does when the process dies
    out = StringIO()
    status, why = trusted_build.follow_sandbox(str(tmp_path), out, poll=0.01)
    assert status is None and "without a result" in why
    assert out.getvalue() == '{"phase": "fetching", "message": "x"}\npartial\n'


def test_a_symlinked_log_is_refused(tmp_path: Path):
    """The sandbox cannot make the trusted step print a file of its own."""
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    box = tmp_path / "box"
    box.mkdir()
    (box / "sandbox.log").symlink_to(secret)
    (box / "status").write_text("0\n")
    with pytest.raises(SandboxOutputError, match="symbolic link"):
        trusted_build.follow_sandbox(str(box), StringIO(), poll=0.01)


def test_the_output_is_copied_before_it_is_checked(tmp_path: Path):
    shared, private = tmp_path / "shared", tmp_path / "private"
    shared.mkdir()
    (shared / PARAMS_FILE).write_text('{"tag": "x"}')
    (shared / CONTEXT_FILE).write_bytes(b"c" * 100)
    trusted_build.copy_output(str(shared), str(private), max_context=100)
    assert (private / CONTEXT_FILE).read_bytes() == b"c" * 100
    # Changed afterwards in the shared volume: the private copy stays.
    (shared / CONTEXT_FILE).write_bytes(b"evil")
    assert (private / CONTEXT_FILE).read_bytes() == b"c" * 100
    (shared / CONTEXT_FILE).write_bytes(b"c" * 101)
    with pytest.raises(SandboxOutputError, match="larger"):
        trusted_build.copy_output(str(shared), str(tmp_path / "p2"), max_context=100)
    (shared / CONTEXT_FILE).unlink()
    (shared / CONTEXT_FILE).symlink_to(shared / PARAMS_FILE)
    with pytest.raises(SandboxOutputError, match="not a file"):
        trusted_build.copy_output(str(shared), str(tmp_path / "p3"), max_context=100)
