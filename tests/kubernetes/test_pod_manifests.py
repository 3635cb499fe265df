"""Build pod manifests, read as data."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from binderbuild.builders import pod_manifests as pm
from binderbuild.builders.r2d_command import ENGINE_NAME
from tests.kubernetes import k8s_schema
from tests.kubernetes.conftest import SECRET, make_job


def config(**overrides) -> pm.BuildPodConfig:
    values = {
        "namespace": "binder",
        "build_image": "registry.example.org/builder:1.0",
        "instance": "prod",
        "push_secret": "prod-push",
        "memory_limit": 2 * 1024**3,
    }
    values.update(overrides)
    return pm.BuildPodConfig(**values)


def container(pod: dict, name: str = pm.CONTAINER_NAME) -> dict:
    """One container of the pod by name: the trusted builder by default."""
    (found,) = [c for c in pod["spec"]["containers"] if c["name"] == name]
    return found


def sandbox(pod: dict) -> dict:
    return container(pod, pm.SANDBOX_CONTAINER_NAME)


def env_of(pod: dict, name: str = pm.CONTAINER_NAME) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(pod, name)["env"]}


def test_named_and_labelled_by_the_build():
    job = make_job()
    pod = pm.build_pod_manifest(job, config())
    meta = pod["metadata"]
    assert pod["apiVersion"] == "v1" and pod["kind"] == "Pod"
    assert meta["name"] == job.image.build_name
    assert meta["namespace"] == "binder"
    assert meta["labels"] == {
        "app.kubernetes.io/name": "binderbuild",
        "app.kubernetes.io/instance": "prod",
        "app.kubernetes.io/component": "build",
        "app.kubernetes.io/managed-by": "binderbuild",
    }
    annotations = dict(meta["annotations"])
    # The whole ref, for a replica that adopts the pod to record it in history.
    assert pm.ref_from_annotations(annotations) == job.ref
    del annotations["binderbuild/resolved-ref"]
    assert annotations == {
        "binderbuild/repo-url": job.ref.repo_url,
        "binderbuild/ref": job.ref.resolved_ref,
        "binderbuild/image": job.image.name,
        "binderbuild/provider": "git",
    }
    # The watch selector selects exactly these pods.
    selector = dict(term.split("=") for term in pm.build_selector("prod").split(","))
    assert selector.items() <= meta["labels"].items()


def test_extra_labels_cannot_hide_a_pod_from_the_watch():
    pod = pm.build_pod_manifest(
        make_job(),
        config(extra_labels={"app.kubernetes.io/component": "other", "team": "x"}),
    )
    labels = pod["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "build"
    assert labels["team"] == "x"


def test_pod_level_safety():
    spec = pm.build_pod_manifest(make_job(), config(active_deadline_seconds=5400))["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["activeDeadlineSeconds"] == 5400
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert "hostNetwork" not in spec and "hostPID" not in spec
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "supplementalGroups": [2375],
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def test_container_security_context():
    pod = pm.build_pod_manifest(make_job(), config())
    assert [c["name"] for c in pod["spec"]["containers"]] == ["sandbox", "builder"]
    for name in ("sandbox", "builder"):
        assert container(pod, name)["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
        }


@pytest.mark.parametrize("field", ["pod_uid", "sandbox_uid"])
def test_root_is_refused(field):
    with pytest.raises(ValueError, match="root"):
        pm.build_pod_manifest(make_job(), config(**{field: 0}))


def test_volumes_mount_the_builder_daemon_socket_directory_not_the_hosts_docker():
    pod = pm.build_pod_manifest(make_job(), config())
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    # Default: the chart's directory for this namespace and release, so two
    # releases on one node never share a daemon.
    assert volumes["docker-socket"]["hostPath"] == {
        "path": "/var/run/binderbuild-dind/binder/prod",
        "type": "DirectoryOrCreate",
    }
    other = pm.build_pod_manifest(make_job(), config(instance="staging"))
    other_volumes = {v["name"]: v for v in other["spec"]["volumes"]}
    assert other_volumes["docker-socket"]["hostPath"]["path"] == (
        "/var/run/binderbuild-dind/binder/staging"
    )
    assert volumes["scratch"] == {"name": "scratch", "emptyDir": {}}
    assert volumes["sandbox-work"] == {"name": "sandbox-work", "emptyDir": {}}
    host_paths = [v["hostPath"]["path"] for v in pod["spec"]["volumes"] if "hostPath" in v]
    assert "/var/run" not in host_paths and "/var/run/docker.sock" not in host_paths
    mounts = {m["name"]: m for m in container(pod)["volumeMounts"]}
    assert mounts["docker-socket"] == {
        "name": "docker-socket",
        "mountPath": "/var/run/binderbuild-docker",
        "readOnly": True,
    }
    assert mounts["scratch"]["mountPath"] == pm.SCRATCH_DIR
    assert mounts["sandbox-work"] == {
        "name": "sandbox-work",
        "mountPath": pm.SANDBOX_VIEW_DIR,
        "readOnly": True,
    }
    env = env_of(pod)
    assert env["BINDERBUILD_DOCKER_HOST"] == "unix:///var/run/binderbuild-docker/docker.sock"
    assert env["DOCKER_HOST"] == env["BINDERBUILD_DOCKER_HOST"]
    assert env["BINDERBUILD_DOCKER_SOCKET"] == "/var/run/binderbuild-docker/docker.sock"


def test_custom_socket_path_and_scratch_limit():
    pod = pm.build_pod_manifest(
        make_job(),
        config(docker_socket="/run/dind-x/engine.sock", scratch_size_limit="20Gi"),
    )
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["docker-socket"]["hostPath"]["path"] == "/run/dind-x"
    assert volumes["scratch"]["emptyDir"] == {"sizeLimit": "20Gi"}
    assert volumes["sandbox-work"]["emptyDir"] == {"sizeLimit": "20Gi"}
    assert env_of(pod)["BINDERBUILD_DOCKER_SOCKET"] == "/var/run/binderbuild-docker/engine.sock"


# ("" is not among them: it means the chart's default, see the volumes test.)
@pytest.mark.parametrize("bad", ["docker.sock", "/var/run/dind/", "relative/path.sock"])
def test_socket_must_be_an_absolute_file_path(bad):
    with pytest.raises(ValueError, match="docker_socket"):
        pm.build_pod_manifest(make_job(), config(docker_socket=bad))


def test_sandbox_runs_repo2docker_with_the_docker_api_engine_in_export_mode():
    job = make_job()
    pod = pm.build_pod_manifest(job, config())
    command = sandbox(pod)["command"]
    # tini as PID 1 forwards SIGTERM, so deleting a pod stops the build at once.
    assert command[:4] == ["tini", "--", "/bin/sh", "-c"]
    assert command[4] == pm.SANDBOX_PROLOGUE
    argv = command[6:]
    assert argv[:3] == ["python", "-m", "binderbuild.builders.sandbox_entry"]
    assert f"--engine={ENGINE_NAME}" in argv
    assert "--json-logs" in argv and "--no-run" in argv
    # The sandbox never pushes: it has nothing to push with.
    assert "--no-push" in argv and "--push" not in argv
    assert f"--image-name={job.image.name}" in argv
    assert f"--ref={job.ref.resolved_ref}" in argv
    assert f"--config={pm.R2D_CONFIG_PATH}" in argv
    # The repository comes last, after "--": it can never be read as an option.
    assert argv[-2:] == ["--", job.ref.repo_url]
    env = env_of(pod, "sandbox")
    # repo2docker's engine writes the context out instead of building, and
    # sandbox_entry reports its log and status through the shared volume.
    assert env["BINDERBUILD_ENGINE_EXPORT_DIR"] == f"{pm.SANDBOX_WORK_DIR}/out"
    assert env["BINDERBUILD_SANDBOX_REPORT_DIR"] == pm.SANDBOX_WORK_DIR
    mounts = {m["mountPath"]: m for m in sandbox(pod)["volumeMounts"]}
    assert set(mounts) == {pm.SANDBOX_WORK_DIR, pm.SCRATCH_DIR}
    assert not any(m.get("readOnly") for m in mounts.values())


def test_builder_runs_the_trusted_step_on_the_sandboxs_output():
    job = make_job()
    command = container(pm.build_pod_manifest(job, config()))["command"]
    assert command[:4] == ["tini", "--", "/bin/sh", "-c"]
    assert command[4] == pm.PROLOGUE
    assert command[6:] == [
        "python",
        "-m",
        "binderbuild.builders.trusted_build",
        f"--sandbox={pm.SANDBOX_VIEW_DIR}",
        f"--dir={pm.TRUSTED_CONTEXT_DIR}",
        f"--tag={job.image.name}",
        "--push",
    ]
    # Its private copy is on its own scratch volume, which the sandbox lacks.
    assert pm.TRUSTED_CONTEXT_DIR.startswith(pm.SCRATCH_DIR + "/")


def test_no_push_without_push():
    pod = pm.build_pod_manifest(make_job(push=False), config())
    argv = container(pod)["command"]
    assert "--no-push" in argv and "--push" not in argv
    assert "CONTAINER_ENGINE_REGISTRY_CREDENTIALS" not in env_of(pod)


def test_environment():
    pod = pm.build_pod_manifest(make_job(), config(build_network="isolated"))
    env = env_of(pod)
    assert env["HOME"] == pm.SCRATCH_DIR
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["BINDERBUILD_BUILD_NETWORK"] == "isolated"
    assert env["BINDERBUILD_BUILD_MEMORY_LIMIT"] == str(2 * 1024**3)
    box = env_of(pod, "sandbox")
    assert box["HOME"] == pm.SCRATCH_DIR  # its own emptyDir there
    assert box["GIT_TERMINAL_PROMPT"] == "0"
    # git in the sandbox: only http(s) and git://, as on one machine.
    git = {
        box[f"GIT_CONFIG_KEY_{i}"]: box[f"GIT_CONFIG_VALUE_{i}"]
        for i in range(int(box["GIT_CONFIG_COUNT"]))
    }
    assert git["protocol.allow"] == "never"
    config_text = box["BINDERBUILD_R2D_CONFIG"]
    assert "c.Repo2Docker.content_providers = [Git]" in config_text
    compile(config_text, "repo2docker_config.py", "exec")


def test_push_credentials_come_from_the_secret_only():
    pod = pm.build_pod_manifest(
        make_job(), config(push_secret="prod-push", push_secret_key="creds")
    )
    env = env_of(pod)
    assert env["CONTAINER_ENGINE_REGISTRY_CREDENTIALS"] == {
        "secretKeyRef": {"name": "prod-push", "key": "creds"}
    }
    # No value of any kind: the secret is resolved by the kubelet.
    (entry,) = [
        e for e in container(pod)["env"] if e["name"] == "CONTAINER_ENGINE_REGISTRY_CREDENTIALS"
    ]
    assert "value" not in entry


def test_anonymous_push_without_a_secret():
    env = env_of(pm.build_pod_manifest(make_job(), config(push_secret="")))
    assert "CONTAINER_ENGINE_REGISTRY_CREDENTIALS" not in env


def test_extra_environment_cannot_replace_ours():
    job = make_job(
        extra_env=(("GIT_CREDENTIAL_ENV", "user:pw"), ("DOCKER_HOST", "tcp://evil:2375"))
    )
    pod = pm.build_pod_manifest(
        job,
        config(
            extra_env={"HTTPS_PROXY": "http://proxy:3128", "BINDERBUILD_DOCKER_HOST": "tcp://x"}
        ),
    )
    # The extra variables are for the fetch: the sandbox has them...
    box = env_of(pod, "sandbox")
    assert box["HTTPS_PROXY"] == "http://proxy:3128"
    assert box["GIT_CREDENTIAL_ENV"] == "user:pw"
    # ... the trusted builder does not, and its daemon cannot be redirected.
    env = env_of(pod)
    assert "HTTPS_PROXY" not in env and "GIT_CREDENTIAL_ENV" not in env
    assert env["DOCKER_HOST"] == "unix:///var/run/binderbuild-docker/docker.sock"
    assert env["BINDERBUILD_DOCKER_HOST"] == env["DOCKER_HOST"]
    for name in ("builder", "sandbox"):
        names = [e["name"] for e in container(pod, name)["env"]]
        assert len(names) == len(set(names)), "duplicate environment variables"


def test_resources():
    pod = pm.build_pod_manifest(
        make_job(), config(cpu_request="500m", cpu_limit="2", memory_request="1Gi")
    )
    assert container(pod)["resources"] == {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"cpu": "2", "memory": str(2 * 1024**3)},
    }
    bare = pm.build_pod_manifest(make_job(), config(memory_limit=0))
    assert "resources" not in container(bare)
    # The sandbox has a limit of its own.
    assert "resources" not in sandbox(pod)
    boxed = pm.build_pod_manifest(make_job(), config(sandbox_memory_limit=512 * 1024**2))
    assert sandbox(boxed)["resources"] == {"limits": {"memory": str(512 * 1024**2)}}


def test_scheduling_options():
    spec = pm.build_pod_manifest(
        make_job(),
        config(
            node_selector={"pool": "builders"},
            tolerations=(
                {"key": "dedicated", "operator": "Equal", "value": "build", "effect": "NoSchedule"},
            ),
            image_pull_secrets=("pull-a", "pull-b"),
            service_account="prod-build",
            priority_class_name="binder-builds",
        ),
    )["spec"]
    assert spec["nodeSelector"] == {"pool": "builders"}
    assert spec["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "build", "effect": "NoSchedule"}
    ]
    assert spec["imagePullSecrets"] == [{"name": "pull-a"}, {"name": "pull-b"}]
    assert spec["serviceAccountName"] == "prod-build"
    assert spec["priorityClassName"] == "binder-builds"


def test_defaults_leave_optional_fields_out():
    spec = pm.build_pod_manifest(make_job(), config())["spec"]
    for key in (
        "nodeSelector",
        "tolerations",
        "imagePullSecrets",
        "serviceAccountName",
        "priorityClassName",
    ):
        assert key not in spec


def test_affinity_spreads_builds_by_default():
    affinity = pm.build_pod_manifest(make_job(), config())["spec"]["affinity"]
    (term,) = affinity["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == pm.build_labels("prod")
    assert "nodeAffinity" not in affinity


def test_sticky_affinity_prefers_one_node():
    affinity = pm.build_pod_manifest(make_job(), config(), preferred_node="node-7")["spec"][
        "affinity"
    ]
    (term,) = affinity["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["weight"] == 100
    assert term["preference"]["matchExpressions"] == [
        {"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-7"]}
    ]
    # Preferred, not required: a build still runs when that node is full or gone.
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in affinity["nodeAffinity"]


def test_manifest_is_plain_json_without_secrets():
    pod = pm.build_pod_manifest(make_job(), config())
    text = json.dumps(pod)
    assert json.loads(text) == pod
    assert SECRET not in text


def test_rendezvous_rank_is_stable_and_spreads():
    nodes = [f"node-{i}" for i in range(5)]
    keys = [f"https://git.example.org/r/{i}" for i in range(2000)]
    winners = {k: pm.rendezvous_rank(nodes, k)[0] for k in keys}
    # Deterministic and independent of the order nodes are listed in.
    assert all(pm.rendezvous_rank(list(reversed(nodes)), k)[0] == w for k, w in winners.items())
    # Roughly even: every node wins 400 +- 100 of 2000 keys.
    assert all(300 < n < 500 for n in Counter(winners.values()).values())
    # A node joining takes keys only for itself; nobody else's keys move.
    grown = {k: pm.rendezvous_rank([*nodes, "node-new"], k)[0] for k in keys}
    moved = [k for k in keys if grown[k] != winners[k]]
    assert moved and all(grown[k] == "node-new" for k in moved)
    # A node leaving moves only its own keys.
    shrunk = {k: pm.rendezvous_rank(nodes[1:], k)[0] for k in keys}
    assert all(shrunk[k] == winners[k] for k in keys if winners[k] != "node-0")


def test_rendezvous_rank_ignores_empty_and_duplicate_names():
    assert pm.rendezvous_rank([], "k") == []
    assert sorted(pm.rendezvous_rank(["a", "", "a", "b"], "k")) == ["a", "b"]


def test_prologues_write_the_config_wait_for_the_socket_and_exec_argv(tmp_path: Path):
    """Run both shell prologues for real (the config path moved into
    tmp_path): the sandbox's writes the config, the builder's wait for the
    socket ends as soon as the socket exists, and argv reaches the program
    unchanged through each."""
    config_file = tmp_path / "repo2docker_config.py"
    sandbox_prologue = pm.SANDBOX_PROLOGUE.replace(pm.R2D_CONFIG_PATH, str(config_file))
    sock_path = tmp_path / "docker.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock_path))
    tricky = ["a b", "$HOME", "'q'", '"dq"', "--", "https://x/y?z=1&w=2"]
    text = "c = get_config()\nc.Repo2Docker.engine = 'x'\n"
    try:
        for prologue in (sandbox_prologue, pm.PROLOGUE):
            result = subprocess.run(
                ["/bin/sh", "-c", prologue, "binderbuild-build", "printf", "%s\\n", *tricky],
                env={
                    "PATH": os.environ["PATH"],
                    "BINDERBUILD_R2D_CONFIG": text,
                    "BINDERBUILD_DOCKER_SOCKET": str(sock_path),
                },
                capture_output=True,
                text=True,
                timeout=10,
            )
            assert result.returncode == 0, result.stderr
            assert result.stdout.splitlines() == tricky
    finally:
        server.close()
    assert config_file.read_text() == text


def test_every_field_is_a_real_pod_field():
    """Full options, sticky and not: nothing is dropped by the V1Pod model."""
    full = config(
        node_selector={"pool": "b"},
        tolerations=({"key": "k", "operator": "Exists", "effect": "NoSchedule"},),
        image_pull_secrets=("pull",),
        service_account="sa",
        priority_class_name="p",
        cpu_request="1",
        cpu_limit="2",
        memory_request="1Gi",
        scratch_size_limit="10Gi",
        sandbox_memory_limit=1024**3,
        allowed_registries=("docker.io",),
        extra_labels={"team": "x"},
        extra_annotations={"note": "y"},
    )
    for preferred in (None, "node-1"):
        pod = pm.build_pod_manifest(make_job(), full, preferred_node=preferred)
        assert k8s_schema.problems(pod) == []


def test_the_field_check_catches_misspelt_fields():
    pod = pm.build_pod_manifest(make_job(), config())
    pod["spec"]["nodeSelecter"] = {"pool": "b"}
    pod["spec"]["containers"][1]["securityContext"]["readonly"] = True
    assert k8s_schema.problems(pod) == [
        "unknown field /spec/containers[1]/securityContext/readonly",
        "unknown field /spec/nodeSelecter",
    ]
