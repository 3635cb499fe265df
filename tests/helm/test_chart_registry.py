"""The chart's in-cluster registry and the builder daemon's image cleaner
(issue 16), rendered and linted by the real helm."""

from __future__ import annotations

import subprocess
from pathlib import Path

from traitlets.config import Application

from binderbuild.lifecycle import node_cleaner_parser
from binderbuild.units import parse_bytes
from tests.helm.conftest import CHART, IMAGE_SETS, run_helm
from tests.helm.test_chart import FULLNAME, write_config
from tests.kubernetes import k8s_schema

REGISTRY = f"{FULLNAME}-registry"
IN_CLUSTER = {
    "registry": {
        "url": "https://registry.binder.example.org",
        "username": "binder",
        "password": "s3cret-push",
        "storage": "50Gi",
        "inCluster": {"enabled": True, "nodePort": 30500, "storageClassName": "fast"},
    }
}


def cleaner(objs) -> dict | None:
    pod = objs.get("DaemonSet", f"{FULLNAME}-builder")["spec"]["template"]["spec"]
    return next((c for c in pod["containers"] if c["name"] == "image-cleaner"), None)


def test_no_registry_by_default_and_the_cleaner_runs_next_to_the_daemon(render) -> None:
    objs = render({"config": {"BinderBuild": {"image_prefix": "reg.example.org/binder-"}}})
    assert not [o for o in objs if o["metadata"]["name"] == REGISTRY]
    container = cleaner(objs)
    assert container is not None
    command = container["command"]
    assert command[:3] == ["python", "-m", "binderbuild.lifecycle"]
    # The chart's arguments are the ones the cleaner's command line takes.
    args = node_cleaner_parser().parse_args(command[3:])
    assert args.image_prefix == "reg.example.org/binder-"
    assert (args.high_water_percent, args.low_water_percent) == (80, 60)
    assert args.budget == "" and args.interval == 300 and args.grace_period == 3600
    assert args.docker_host.startswith("unix://") and args.docker_host.endswith("/docker.sock")
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["lib"]["readOnly"] is True and mounts["lib"]["mountPath"] == "/var/lib/docker"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_cleaner_values_and_off(render) -> None:
    objs = render(
        {
            "builderDaemon": {
                "imageCleaner": {
                    "highWaterPercent": 70,
                    "lowWaterPercent": 40,
                    "budget": "50G",
                    "intervalSeconds": 60,
                }
            }
        }
    )
    args = node_cleaner_parser().parse_args(cleaner(objs)["command"][3:])
    assert (args.high_water_percent, args.low_water_percent, args.budget, args.interval) == (
        70,
        40,
        "50G",
        60,
    )
    assert args.image_prefix == "binder-"  # BinderBuild's default
    assert cleaner(render({"builderDaemon": {"imageCleaner": {"enabled": False}}})) is None


def test_in_cluster_registry_objects(render, tmp_path: Path, monkeypatch) -> None:
    # The shared schema table knows no claims yet: this test adds one for itself.
    monkeypatch.setitem(
        k8s_schema.MODELS, ("v1", "PersistentVolumeClaim"), "V1PersistentVolumeClaim"
    )
    objs = render(IN_CLUSTER)
    for obj in objs:
        assert k8s_schema.problems(obj) == [], (obj["kind"], obj["metadata"]["name"])
    claim = objs.get("PersistentVolumeClaim", REGISTRY)
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert claim["spec"]["storageClassName"] == "fast"
    service = objs.get("Service", REGISTRY)
    assert service["spec"]["type"] == "NodePort"
    assert service["spec"]["ports"][0]["nodePort"] == 30500

    deployment = objs.get("Deployment", REGISTRY)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    pod = deployment["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["REGISTRY_STORAGE_DELETE_ENABLED"]["value"] == "true"
    assert env["REGISTRY_AUTH"]["value"] == "htpasswd"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["storage"]["persistentVolumeClaim"]["claimName"] == REGISTRY
    assert volumes["auth"]["secret"]["secretName"] == REGISTRY

    # The credentials Secret's htpasswd entry accepts the push credentials
    # (checked by the real htpasswd) and nothing else.
    entry = objs.get("Secret", REGISTRY)["stringData"]["htpasswd"]
    path = tmp_path / "htpasswd"
    path.write_text(entry + "\n")

    def verify(password: str) -> int:
        return subprocess.run(
            ["htpasswd", "-vb", str(path), "binder", password], capture_output=True, check=False
        ).returncode

    assert verify("s3cret-push") == 0
    assert verify("wrong") != 0

    # The service deletes under a budget of 80 % of the volume.
    (tmp_path / "cfg").mkdir()
    config = write_config(objs, tmp_path / "cfg")
    app = Application()
    app.load_config_file(str(config))
    lifecycle = app.config.RegistryLifecycle
    assert lifecycle.enabled is True
    assert parse_bytes(lifecycle.budget) == int(50 * 2**30 * 0.8)
    assert lifecycle.keep_days == 7


def test_registry_lifecycle_values(render, tmp_path: Path) -> None:
    objs = render(
        {"registry": {**IN_CLUSTER["registry"], "lifecycle": {"budget": "30G", "keepDays": 2}}}
    )
    (tmp_path / "a").mkdir()
    app = Application()
    app.load_config_file(str(write_config(objs, tmp_path / "a")))
    assert app.config.RegistryLifecycle.budget == "30G"
    assert app.config.RegistryLifecycle.keep_days == 2
    # Off explicitly; and an external registry has no lifecycle unless asked.
    for values in (
        {"registry": {**IN_CLUSTER["registry"], "lifecycle": {"enabled": False}}},
        {"registry": {"url": "https://reg.example.org"}},
    ):
        objs = render(values)
        settings = objs.get("Secret", FULLNAME)["stringData"]["chart_settings.json"]
        assert "RegistryLifecycle" not in settings


def test_in_cluster_registry_needs_url_and_credentials(helm, tmp_path: Path) -> None:
    for missing, text in (("url", "registry.url"), ("password", "registry.password")):
        values = {"registry": {k: v for k, v in IN_CLUSTER["registry"].items() if k != missing}}
        result = run_helm(helm, "template", "rel", str(CHART), values=values, tmp=tmp_path)
        assert result.returncode != 0
        assert text in result.stderr, result.stderr
    bad = {"registry": {**IN_CLUSTER["registry"], "storage": "lots"}}
    result = run_helm(helm, "template", "rel", str(CHART), values=bad, tmp=tmp_path)
    assert result.returncode != 0 and "storage" in result.stderr


def test_lint_with_the_in_cluster_registry(helm) -> None:
    result = subprocess.run(
        [
            helm,
            "lint",
            "--strict",
            str(CHART),
            *IMAGE_SETS,
            "--set=registry.inCluster.enabled=true",
            "--set=registry.url=https://registry.binder.example.org",
            "--set=registry.username=u",
            "--set=registry.password=p",
            "--set=registry.storage=100Gi",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
