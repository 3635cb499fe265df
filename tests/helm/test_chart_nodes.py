"""The builder daemon on shared nodes and its network (issue 18): MTU, host
paths per release, a registry at a private address, and traffic from load
balancers and hostNetwork ingress controllers."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from traitlets.config import Config

from binderbuild.builders import pod_manifests as pm
from binderbuild.builders.kubernetes import KubernetesBuilder
from tests.helm.conftest import CHART, NAMESPACE, RELEASE, Rendered, run_helm
from tests.helm.test_chart import FULLNAME, allowed, load, write_config
from tests.kubernetes import k8s_schema
from tests.kubernetes.conftest import make_job
from tests.kubernetes.fake_k8s import FakeCoreV1Api


def daemon_spec(objs) -> dict:
    return objs.one("DaemonSet")["spec"]["template"]["spec"]


def host_paths(objs) -> dict[str, str]:
    return {v["name"]: v["hostPath"]["path"] for v in daemon_spec(objs)["volumes"]}


# --- 3. MTU -----------------------------------------------------------------------


def run_daemon_command(dind: dict, tmp_path: Path, mtu_file: str | None) -> list[str]:
    """Run the daemon container's command + args with sh, a stand-in for the
    image's entrypoint that prints the argv it would start dockerd with."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    entry = bindir / "dockerd-entrypoint.sh"
    entry.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    entry.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:/usr/bin:/bin"}
    for item in dind.get("env", []):
        env[item["name"]] = item.get("value", "")
    if mtu_file is not None:
        env["BINDERBUILD_MTU_FROM"] = mtu_file
    argv = [*dind.get("command", []), *dind["args"]]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, check=True, timeout=10)
    return result.stdout.splitlines()


def test_builder_daemon_mtu_follows_the_pod_interface_by_default(render, tmp_path):
    objs = render()
    (dind,) = daemon_spec(objs)["containers"][:1]  # dockerd; the image cleaner follows
    env = {e["name"]: e.get("value") for e in dind["env"]}
    assert env["BINDERBUILD_MTU_FROM"] == "/sys/class/net/eth0/mtu"
    mtu = tmp_path / "mtu"
    mtu.write_text("1450\n")
    argv = run_daemon_command(dind, tmp_path, str(mtu))
    assert argv[0] == "dockerd"
    assert "--mtu=1450" in argv
    assert "--host=unix:///var/run/binderbuild-dind/docker.sock" in argv
    # No interface to read: dockerd's own default, still started.
    argv = run_daemon_command(dind, tmp_path, str(tmp_path / "missing"))
    assert argv[0] == "dockerd" and not [a for a in argv if a.startswith("--mtu")]


def test_builder_daemon_mtu_can_be_set(render):
    (dind,) = daemon_spec(render({"builderDaemon": {"mtu": 1400}}))["containers"][:1]
    assert "--mtu=1400" in dind["args"]
    assert "command" not in dind
    (plain,) = daemon_spec(render({"builderDaemon": {"mtu": ""}}))["containers"][:1]
    assert "command" not in plain
    assert not [a for a in plain["args"] if a.startswith("--mtu")]


# --- 3. registry at a private address ------------------------------------------------


def test_registry_at_a_private_address_is_reachable_by_the_daemon_only(render):
    default = render()
    for name in (f"{FULLNAME}-builder", f"{FULLNAME}-build"):
        egress = default.get("NetworkPolicy", name)["spec"]["egress"]
        assert not allowed(egress, "10.20.0.5", 5000)
    objs = render({"networkPolicy": {"registry": {"cidrs": ["10.20.0.0/24"], "ports": [5000]}}})
    daemon = objs.get("NetworkPolicy", f"{FULLNAME}-builder")["spec"]["egress"]
    assert allowed(daemon, "10.20.0.5", 5000)
    assert not allowed(daemon, "10.20.0.5", 22)  # only the registry's port
    assert not allowed(daemon, "10.20.1.5", 5000)  # only the registry's range
    assert not allowed(daemon, "169.254.169.254", 80)
    # Build pods do not push (the daemon does): their policy is unchanged.
    build = objs.get("NetworkPolicy", f"{FULLNAME}-build")["spec"]["egress"]
    assert not allowed(build, "10.20.0.5", 5000)


def test_registry_ports_default_to_https(render):
    objs = render({"networkPolicy": {"registry": {"cidrs": ["192.168.50.7/32"]}}})
    daemon = objs.get("NetworkPolicy", f"{FULLNAME}-builder")["spec"]["egress"]
    assert allowed(daemon, "192.168.50.7", 443)
    assert not allowed(daemon, "192.168.50.7", 5000)


# --- 3. ingress from load balancers and hostNetwork controllers ---------------------------


def admitted(rules: list[dict], address: str, port: int | str) -> bool:
    """Whether NetworkPolicy ingress rules admit address (an ipBlock peer) on port."""
    return allowed([{**r, "to": r.get("from")} for r in rules], address, port)  # type: ignore[arg-type]


def test_service_admits_configured_node_and_load_balancer_ranges(render):
    node = "10.128.0.7"  # a hostNetwork ingress controller, or kube-proxy's SNAT
    policy = render().get("NetworkPolicy", FULLNAME)["spec"]
    assert not admitted(policy["ingress"], node, "http")
    objs = render(
        {"networkPolicy": {"service": {"allowedIngressCIDRs": ["10.128.0.0/20", "fd00:1::/64"]}}}
    )
    ingress = objs.get("NetworkPolicy", FULLNAME)["spec"]["ingress"]
    assert admitted(ingress, node, "http")
    assert admitted(ingress, "fd00:1::9", "http")
    assert not admitted(ingress, "10.129.0.7", "http")
    # Only binderbuild's port.
    rule = next(
        r
        for r in ingress
        if any(p.get("ipBlock", {}).get("cidr") == "10.128.0.0/20" for p in r["from"])
    )
    assert rule["ports"] == [{"protocol": "TCP", "port": "http"}]


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"builderDaemon": {"mtu": 20}}, "/builderDaemon/mtu"),
        ({"builderDaemon": {"mtu": "big"}}, "/builderDaemon/mtu"),
        ({"networkPolicy": {"registry": {"cidrs": ["registry.local"]}}}, "/networkPolicy/registry"),
        ({"networkPolicy": {"registry": {"ports": [0]}}}, "/networkPolicy/registry"),
        ({"networkPolicy": {"service": {"allowedIngressCIDRs": ["x"]}}}, "allowedIngressCIDRs"),
    ],
)
def test_schema_rejects_bad_network_values(helm, tmp_path, values, complaint):
    result = run_helm(helm, "template", RELEASE, str(CHART), values=values, tmp=tmp_path)
    assert result.returncode != 0
    assert "schema" in result.stderr and complaint in result.stderr, result.stderr


# --- 4. two releases on the same nodes -----------------------------------------------


def rendered_as(helm: str, tmp_path: Path, release: str, namespace: str) -> Rendered:
    result = run_helm(
        helm, "template", release, str(CHART), "--namespace", namespace, values={}, tmp=tmp_path
    )
    assert result.returncode == 0, result.stderr
    return Rendered(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def test_host_paths_are_per_namespace_and_release(render, helm, tmp_path):
    paths = host_paths(render())
    assert paths == {
        "socket-dir": f"/var/run/binderbuild-dind/{NAMESPACE}/{RELEASE}",
        "lib": f"/var/lib/binderbuild-dind/{NAMESPACE}/{RELEASE}",
    }
    other_release = host_paths(rendered_as(helm, tmp_path, "other", NAMESPACE))
    other_namespace = host_paths(rendered_as(helm, tmp_path, RELEASE, "staging"))
    for other in (other_release, other_namespace):
        assert not set(other.values()) & set(paths.values())


def test_explicit_host_paths_are_kept(render):
    paths = host_paths(
        render({"builderDaemon": {"hostSocketDir": "/run/x-dind", "hostLibDir": "/srv/x-dind"}})
    )
    assert paths == {"socket-dir": "/run/x-dind", "lib": "/srv/x-dind"}


def test_daemon_socket_path_inside_its_container_stays_short(helm, tmp_path):
    """A unix socket path is limited to 107 bytes; the node's path may be long
    (namespace and release names), so the daemon sees its directory at a
    fixed path."""
    objs = rendered_as(helm, tmp_path, "r" * 40, "n" * 63)
    (dind,) = daemon_spec(objs)["containers"][:1]
    mounts = {m["name"]: m["mountPath"] for m in dind["volumeMounts"]}
    assert mounts["socket-dir"] == "/var/run/binderbuild-dind"
    assert "--host=unix:///var/run/binderbuild-dind/docker.sock" in dind["args"]
    assert len(host_paths(objs)["socket-dir"]) > 107 - len("/docker.sock")


def test_default_builder_socket_matches_the_chart_without_chart_settings(render):
    """A KubernetesBuilder configured by hand (namespace and instance only)
    mounts the directory the chart's daemon serves."""
    objs = render()
    config = Config()
    config.KubernetesBuilder.build_namespace = NAMESPACE
    config.KubernetesBuilder.instance_name = RELEASE
    builder = KubernetesBuilder(config=config, k8s_api=FakeCoreV1Api(), log=logging.getLogger("t"))
    pod = pm.build_pod_manifest(make_job(), builder.pod_config())
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "docker-socket")
    assert volume["hostPath"]["path"] == host_paths(objs)["socket-dir"]


def test_chart_settings_name_the_namespaced_socket(render, tmp_path):
    objs = render()
    config = load(write_config(objs, tmp_path))
    assert config.KubernetesBuilder.build_docker_host == (
        f"/var/run/binderbuild-dind/{NAMESPACE}/{RELEASE}/docker.sock"
    )


def test_replicas_know_their_pod_name(render):
    (container,) = render().one("Deployment")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


# --- build pods on Zero to JupyterHub's user nodes -----------------------------------

Z2JH_TOLERATIONS = [
    {"key": "hub.jupyter.org/dedicated", "operator": "Equal", "value": "user", "effect": "NoSchedule"},
    {"key": "hub.jupyter.org_dedicated", "operator": "Equal", "value": "user", "effect": "NoSchedule"},
]
PURPOSE = {"key": "hub.jupyter.org/node-purpose", "operator": "In", "values": ["user"]}


def chart_build_pod(objs, tmp_path) -> dict:
    """The spec of a build pod made by a KubernetesBuilder that the chart configured."""
    config = load(write_config(objs, tmp_path))
    builder = KubernetesBuilder(config=config, k8s_api=FakeCoreV1Api(), log=logging.getLogger("t"))
    return pm.build_pod_manifest(make_job(), builder.pod_config())["spec"]


def test_by_default_neither_builds_nor_the_daemon_go_to_user_nodes(render, tmp_path):
    objs = render()
    spec = chart_build_pod(objs, tmp_path)
    assert "tolerations" not in spec
    assert "nodeAffinity" not in spec["affinity"]
    assert "tolerations" not in daemon_spec(objs)
    assert "affinity" not in daemon_spec(objs)


@pytest.mark.parametrize("mode", ["tolerate", "prefer", "require"])
def test_user_nodes_reach_build_pods_and_the_daemon(render, tmp_path, mode):
    own = {"key": "pool", "operator": "Exists"}
    objs = render({"build": {"userNodes": mode, "tolerations": [own]}})
    spec = chart_build_pod(objs, tmp_path)
    assert spec["tolerations"] == [own, *Z2JH_TOLERATIONS]
    node = spec["affinity"].get("nodeAffinity", {})
    daemon = daemon_spec(objs)
    # The daemon must be on every node a build may land on.
    assert daemon["tolerations"] == [own, *Z2JH_TOLERATIONS]
    if mode == "prefer":
        (term,) = node["preferredDuringSchedulingIgnoredDuringExecution"]
        assert term["preference"]["matchExpressions"] == [PURPOSE]
    if mode == "require":
        assert node["requiredDuringSchedulingIgnoredDuringExecution"] == {
            "nodeSelectorTerms": [{"matchExpressions": [PURPOSE]}]
        }
        # Builds only go to user nodes: the daemon need not run elsewhere.
        assert daemon["affinity"]["nodeAffinity"] == {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [PURPOSE]}]
            }
        }
    else:
        assert "affinity" not in daemon


def test_build_node_affinity_reaches_build_pods_and_its_requirement_the_daemon(render, tmp_path):
    required = {
        "nodeSelectorTerms": [
            {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["build"]}]}
        ]
    }
    preferred = [
        {
            "weight": 3,
            "preference": {
                "matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]
            },
        }
    ]
    affinity = {
        "requiredDuringSchedulingIgnoredDuringExecution": required,
        "preferredDuringSchedulingIgnoredDuringExecution": preferred,
    }
    objs = render({"build": {"nodeAffinity": affinity}})
    spec = chart_build_pod(objs, tmp_path)
    assert spec["affinity"]["nodeAffinity"] == affinity
    # A DaemonSet runs on every node it may: only the requirement matters.
    assert daemon_spec(objs)["affinity"]["nodeAffinity"] == {
        "requiredDuringSchedulingIgnoredDuringExecution": required
    }
    both = render({"build": {"nodeAffinity": affinity, "userNodes": "require"}})
    terms = daemon_spec(both)["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert terms == [
        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["build"]}, PURPOSE]}
    ]
    assert k8s_schema.problems(both.one("DaemonSet")) == []
    assert chart_build_pod(both, tmp_path)["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ] == {"nodeSelectorTerms": terms}


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"build": {"userNodes": "always"}}, "/build/userNodes"),
        ({"build": {"nodeAffinity": {"required": {}}}}, "/build/nodeAffinity"),
    ],
)
def test_schema_rejects_bad_user_node_values(helm, tmp_path, values, complaint):
    result = run_helm(helm, "template", RELEASE, str(CHART), values=values, tmp=tmp_path)
    assert result.returncode != 0
    assert "schema" in result.stderr and complaint in result.stderr, result.stderr
