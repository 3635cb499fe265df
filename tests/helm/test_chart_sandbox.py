"""The chart's settings of the build pods' sandbox (issue 11), rendered by the
real helm and read by the real KubernetesBuilder."""

from __future__ import annotations

import json
import logging
import subprocess

import pytest

from binderbuild.builders import pod_manifests as pm
from binderbuild.builders.dockerfile_policy import ENV_ALLOWED_REGISTRIES
from binderbuild.builders.kubernetes import KubernetesBuilder
from tests.helm.conftest import CHART, IMAGE_SETS, RELEASE, run_helm
from tests.helm.test_chart import FULLNAME, load, write_config
from tests.kubernetes import k8s_schema
from tests.kubernetes.conftest import make_job
from tests.kubernetes.fake_k8s import FakeCoreV1Api


def pod_from_chart(render, tmp_path, build: dict) -> dict:
    objs = render(
        {
            "registry": {"url": "https://reg.example.org", "username": "u", "password": "pw"},
            "build": build,
        }
    )
    config = load(write_config(objs, tmp_path))
    builder = KubernetesBuilder(config=config, k8s_api=FakeCoreV1Api(), log=logging.getLogger("t"))
    return pm.build_pod_manifest(make_job(), builder.pod_config())


def by_name(pod: dict) -> dict[str, dict]:
    return {c["name"]: c for c in pod["spec"]["containers"]}


def test_sandbox_settings_reach_the_build_pod(render, tmp_path):
    pod = pod_from_chart(
        render,
        tmp_path,
        {"sandbox": {"uid": 4242, "memoryLimit": "1G"}, "allowedRegistries": ["quay.io"]},
    )
    box, trusted = by_name(pod)["sandbox"], by_name(pod)["builder"]
    assert box["securityContext"]["runAsUser"] == box["securityContext"]["runAsGroup"] == 4242
    assert box["resources"] == {"limits": {"memory": str(1024**3)}}
    assert trusted["securityContext"]["runAsUser"] == 1000
    env = {e["name"]: e.get("value") for e in trusted["env"]}
    assert json.loads(env[ENV_ALLOWED_REGISTRIES]) == ["quay.io"]
    assert k8s_schema.problems(pod) == []


def test_defaults_sandbox_the_fetch(render, tmp_path):
    """With the chart's defaults: the push credentials (a Secret the chart
    makes) and the daemon socket reach the trusted container only, no token
    is mounted, and the build NetworkPolicy (egress to public addresses and
    DNS only, no ingress) selects the pod the sandbox is in."""
    pod = pod_from_chart(render, tmp_path, {})
    box, trusted = by_name(pod)["sandbox"], by_name(pod)["builder"]
    assert box["securityContext"]["runAsUser"] == 1000
    assert box["resources"] == {"limits": {"memory": str(2 * 1024**3)}}
    assert not [e for e in box["env"] if "valueFrom" in e]
    assert [e["name"] for e in trusted["env"] if "valueFrom" in e] == [
        "CONTAINER_ENGINE_REGISTRY_CREDENTIALS"
    ]
    assert "docker-socket" not in {m["name"] for m in box["volumeMounts"]}
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert "pw" not in json.dumps(pod["spec"]["containers"])
    objs = render()
    policy = objs.get("NetworkPolicy", f"{FULLNAME}-build")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert policy["ingress"] == []
    for account in objs.of("ServiceAccount"):
        if account["metadata"]["name"] == pod["spec"]["serviceAccountName"]:
            assert account.get("automountServiceAccountToken") is False


def test_lint_with_sandbox_settings(helm):
    result = subprocess.run(
        [
            helm,
            "lint",
            "--strict",
            str(CHART),
            *IMAGE_SETS,
            "--set",
            "build.sandbox.uid=2001",
            "--set",
            "build.sandbox.memoryLimit=512M",
            "--set",
            "build.allowedRegistries={docker.io,quay.io}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"build": {"sandbox": {"uid": 0}}}, "/build/sandbox/uid"),
        ({"build": {"sandbox": {"memoryLimit": "lots"}}}, "/build/sandbox/memoryLimit"),
        ({"build": {"sandbox": {"user": "root"}}}, "user"),
        ({"build": {"allowedRegistries": [""]}}, "/build/allowedRegistries/0"),
    ],
)
def test_schema_rejects_bad_sandbox_values(helm, tmp_path, values, complaint):
    result = run_helm(helm, "template", RELEASE, str(CHART), values=values, tmp=tmp_path)
    assert result.returncode != 0
    assert "schema" in result.stderr and complaint in result.stderr, result.stderr
