"""The Helm chart, linted and rendered by the real helm, read as objects."""

from __future__ import annotations

import ipaddress
import json
import logging
import subprocess
from pathlib import Path

import pytest
from traitlets.config import Application

from binderbuild.builders import pod_manifests as pm
from binderbuild.builders.kubernetes import KubernetesBuilder
from tests.helm.conftest import CHART, IMAGE_SETS, NAMESPACE, RELEASE, run_helm
from tests.kubernetes import k8s_schema
from tests.kubernetes.conftest import make_job
from tests.kubernetes.fake_k8s import FakeCoreV1Api

FULLNAME = f"{RELEASE}-binderbuild"


def test_lint(helm):
    result = subprocess.run(
        [helm, "lint", "--strict", str(CHART), *IMAGE_SETS],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    with_everything = subprocess.run(
        [
            helm,
            "lint",
            "--strict",
            str(CHART),
            *IMAGE_SETS,
            "--set",
            "ingress.enabled=true",
            "--set",
            "ingress.hosts[0].host=binder.example.org",
            "--set",
            "quota.kubernetes.enabled=true",
            "--set",
            "hub.namespace=jhub",
            "--set",
            "registry.url=https://reg.example.org",
            "--set",
            "registry.username=u",
            "--set",
            "registry.password=p",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert with_everything.returncode == 0, with_everything.stdout + with_everything.stderr


def test_default_objects(render):
    objs = render()
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in objs)
    assert kinds == sorted(
        [
            ("DaemonSet", f"{FULLNAME}-builder"),
            ("Deployment", FULLNAME),
            ("NetworkPolicy", FULLNAME),
            ("NetworkPolicy", f"{FULLNAME}-build"),
            ("NetworkPolicy", f"{FULLNAME}-builder"),
            ("PodDisruptionBudget", FULLNAME),
            ("Role", FULLNAME),
            ("RoleBinding", FULLNAME),
            ("Secret", FULLNAME),
            ("Service", FULLNAME),
            ("ServiceAccount", FULLNAME),
            ("ServiceAccount", f"{FULLNAME}-build"),
        ]
    )
    # Nothing cluster-wide.
    assert not objs.of("ClusterRole") and not objs.of("ClusterRoleBinding")


def test_every_field_is_a_real_api_field(render):
    """Every rendered object, with every optional part switched on, survives a
    round trip through its kubernetes_asyncio model: no misspelt field."""
    objs = render(
        {
            "ingress": {
                "enabled": True,
                "className": "nginx",
                "hosts": [{"host": "b.example.org"}],
                "tls": [{"secretName": "t", "hosts": ["b.example.org"]}],
            },
            "quota": {"kubernetes": {"enabled": True}},
            "hub": {"namespace": "jhub", "apiToken": "tok", "url": "https://hub.example.org/"},
            "registry": {"url": "https://reg.example.org", "username": "u", "password": "p"},
            "build": {
                "nodeSelector": {"pool": "b"},
                "tolerations": [{"key": "k", "operator": "Exists"}],
            },
            "builderDaemon": {"resources": {"limits": {"memory": "8Gi"}}},
            "imagePullSecrets": ["pull"],
            "serviceAccount": {"annotations": {"a": "b"}},
            "podAnnotations": {"x": "y"},
            "extraEnv": [{"name": "X", "value": "1"}],
            "tolerations": [{"key": "k", "operator": "Exists"}],
            "nodeSelector": {"pool": "svc"},
        }
    )
    assert len(objs) == 16
    for obj in objs:
        assert k8s_schema.problems(obj) == [], (obj["kind"], obj["metadata"]["name"])


def test_rbac_is_pods_only_in_its_namespace(render):
    objs = render()
    role = objs.one("Role")
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["pods"],
            "verbs": ["create", "get", "list", "watch", "delete"],
        },
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    ]
    binding = objs.one("RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": FULLNAME,
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}
    ]
    # The build pods' account is bound to nothing and mounts no token.
    build_sa = objs.get("ServiceAccount", f"{FULLNAME}-build")
    assert build_sa["automountServiceAccountToken"] is False
    assert all(
        s["name"] != f"{FULLNAME}-build" for b in objs.of("RoleBinding") for s in b["subjects"]
    )


def test_rbac_can_be_left_to_the_operator(render):
    objs = render({"rbac": {"create": False}})
    assert not objs.of("Role") and not objs.of("RoleBinding")


def test_quota_watch_gets_read_only_access_to_the_hub_namespace(render):
    objs = render({"quota": {"kubernetes": {"enabled": True}}, "hub": {"namespace": "jhub"}})
    role = objs.get("Role", f"{FULLNAME}-quota")
    assert role["metadata"]["namespace"] == "jhub"
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
    ]
    binding = objs.get("RoleBinding", f"{FULLNAME}-quota")
    assert binding["metadata"]["namespace"] == "jhub"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}
    ]
    settings = json.loads(objs.one("Secret")["stringData"]["chart_settings.json"])
    assert settings["PodCountCache"] == {
        "namespace": "jhub",
        "label_selector": "component=singleuser-server",
    }
    # The launcher's quota counts from the pod watch instead of the hub's API.
    assert settings["HubLauncher"] == {
        "server_counter_class": "binderbuild.k8s_quota.PodCountCache"
    }
    from traitlets.utils.importstring import import_item

    from binderbuild.k8s_quota import PodCountCache

    assert import_item(settings["HubLauncher"]["server_counter_class"]) is PodCountCache
    # Same namespace: the main Role already covers list/watch pods.
    same = render({"quota": {"kubernetes": {"enabled": True}}})
    assert [r["metadata"]["name"] for r in same.of("Role")] == [FULLNAME]


# --- configuration ------------------------------------------------------------


def write_config(objs, directory: Path) -> Path:
    """The config Secret's files, as binderbuild's pod sees them."""
    data = objs.get("Secret", FULLNAME)["stringData"]
    for name in ("chart_settings.json", "binderbuild_config.json", "binderbuild_config.py"):
        (directory / name).write_text(data[name])
    return directory / "binderbuild_config.json"


def load(path: Path):
    app = Application()
    app.load_config_file(str(path))
    return app.config


def test_config_is_passed_through_unchanged(render, tmp_path):
    user_config = {
        "BinderBuild": {"use_registry": True, "image_prefix": "reg.example.org/binder-"},
        "KubernetesBuilder": {"sticky_builds": False, "build_cpu_limit": "", "log_tail_lines": 0},
        "SomeFutureClass": {"option": [1, {"nested": None}]},
    }
    objs = render(
        {
            "config": user_config,
            "build": {"stickyBuilds": True, "cpuLimit": "2", "logTailLines": 50},
        }
    )
    data = objs.one("Secret")["stringData"]
    assert json.loads(data["binderbuild_config.json"]) == user_config
    config = load(write_config(objs, tmp_path))
    assert config.BinderBuild.use_registry is True
    assert config.BinderBuild.image_prefix == "reg.example.org/binder-"
    # `config` wins over the chart's settings, falsy values included.
    assert config.KubernetesBuilder.sticky_builds is False
    assert config.KubernetesBuilder.build_cpu_limit == ""
    assert config.KubernetesBuilder.log_tail_lines == 0
    assert config.SomeFutureClass.option == [1, {"nested": None}]
    # The chart's settings are there where `config` says nothing.
    assert config.BinderBuild.build_class == "kubernetes"
    assert config.KubernetesBuilder.instance_name == RELEASE
    assert config.KubernetesBuilder.build_namespace == NAMESPACE


def test_extra_config_runs_before_config(render, tmp_path):
    objs = render(
        {
            "extraConfig": {
                "10-custom": "c.BinderBuild.tornado_settings = {'debug': False}\nc.BinderBuild.image_prefix = 'from-extra-'",
            },
            "config": {"BinderBuild": {"image_prefix": "from-config-"}},
        }
    )
    config = load(write_config(objs, tmp_path))
    assert config.BinderBuild.tornado_settings == {"debug": False}
    assert config.BinderBuild.image_prefix == "from-config-"


def test_binderbuild_reads_the_chart_config_as_its_config_file(render, tmp_path):
    from binderbuild.app import BinderBuild

    objs = render(
        {
            "config": {"BinderBuild": {"use_registry": True, "base_url": "/binder/"}},
            "hub": {"url": "https://hub.example.org/", "localUrl": "http://hub:8081"},
        }
    )
    path = write_config(objs, tmp_path)
    args = objs.one("Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == ["--config=/etc/binderbuild/binderbuild_config.json"]
    app = BinderBuild()
    try:
        app.initialize([f"--config={path}"])
        assert app.use_registry is True
        assert app.base_url == "/binder/"
        assert app.build_class == "kubernetes"
        assert app.hub_url == "https://hub.example.org/"
        assert app.hub_url_local == "http://hub:8081"
        assert app.ip == "0.0.0.0"
    finally:
        BinderBuild.clear_instance()


def test_chart_and_builder_agree(render, tmp_path):
    """KubernetesBuilder configured by the chart makes pods that the chart's
    DaemonSet serves, its NetworkPolicy confines and its objects exist for."""
    objs = render(
        {
            "registry": {
                "url": "https://reg.example.org",
                "username": "u",
                "password": "secret-pw",
            },
            "build": {
                "nodeSelector": {"pool": "build"},
                "tolerations": [{"key": "build", "operator": "Exists"}],
                "memoryLimit": "2G",
            },
            "builderDaemon": {"hostSocketDir": "/var/run/bb-dind", "socketGid": 4242},
        }
    )
    config = load(write_config(objs, tmp_path))
    builder = KubernetesBuilder(config=config, k8s_api=FakeCoreV1Api(), log=logging.getLogger("t"))
    pod = pm.build_pod_manifest(make_job(), builder.pod_config())
    spec = pod["spec"]

    daemon = objs.one("DaemonSet")
    dspec = daemon["spec"]["template"]["spec"]
    dind = dspec["containers"][0]
    socket_volume = next(v for v in dspec["volumes"] if v["name"] == "socket-dir")
    pod_socket_volume = next(v for v in spec["volumes"] if v["name"] == "docker-socket")
    assert (
        pod_socket_volume["hostPath"]["path"]
        == socket_volume["hostPath"]["path"]
        == "/var/run/bb-dind"
    )
    # Inside its container the daemon sees that directory at a fixed, short path.
    mounts = {m["name"]: m["mountPath"] for m in dind["volumeMounts"]}
    assert "--host=unix://" + mounts["socket-dir"] + "/docker.sock" in dind["args"]
    assert f"--group={spec['securityContext']['supplementalGroups'][0]}" in dind["args"]
    assert spec["securityContext"]["supplementalGroups"] == [4242]
    # Build pods and the daemon land on the same nodes.
    assert spec["nodeSelector"] == dspec["nodeSelector"] == {"pool": "build"}
    assert spec["tolerations"] == dspec["tolerations"] == [{"key": "build", "operator": "Exists"}]
    # Sticky builds find the daemon's pods with this selector.
    daemon_labels = daemon["spec"]["template"]["metadata"]["labels"]
    selector = dict(t.split("=") for t in builder.builder_daemon_selector.split(","))
    assert selector.items() <= daemon_labels.items()
    # The build NetworkPolicy selects these pods.
    netpol = objs.get("NetworkPolicy", f"{FULLNAME}-build")
    assert netpol["spec"]["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    # The chart's service account and push Secret are what the pod names.
    assert spec["serviceAccountName"] in {
        sa["metadata"]["name"] for sa in objs.of("ServiceAccount")
    }
    (trusted,) = [c for c in spec["containers"] if c["name"] == pm.CONTAINER_NAME]
    env = {e["name"]: e for e in trusted["env"]}
    ref = env["CONTAINER_ENGINE_REGISTRY_CREDENTIALS"]["valueFrom"]["secretKeyRef"]
    push = objs.get("Secret", ref["name"])
    assert json.loads(push["stringData"][ref["key"]]) == {
        "registry": "https://reg.example.org",
        "username": "u",
        "password": "secret-pw",
    }
    assert "secret-pw" not in json.dumps(pod)
    # The app passes build_memory_limit to the builder as bytes.
    assert config.BinderBuild.build_memory_limit == "2G"
    # The watch selector matches the pods the builder makes for this release.
    assert builder.instance_name == RELEASE


def test_existing_push_secret_is_used_instead_of_creating_one(render, tmp_path):
    objs = render({"registry": {"url": "https://reg.example.org", "existingPushSecret": "my-push"}})
    assert [s["metadata"]["name"] for s in objs.of("Secret")] == [FULLNAME]
    config = load(write_config(objs, tmp_path))
    assert config.KubernetesBuilder.push_secret == "my-push"


# --- network policies -----------------------------------------------------------

METADATA = "169.254.169.254"
PRIVATE_DESTINATIONS = [
    METADATA,
    "10.4.0.17",
    "172.20.3.4",
    "192.168.1.10",
    "100.64.0.10",
    "127.0.0.1",
    "fd00:ec2::254",
    "fe80::1",
    "::1",
]
PUBLIC_DESTINATIONS = ["140.82.112.3", "151.101.0.223", "2606:4700::6810:84e5"]


def allowed(rules: list[dict], address: str, port: int) -> bool:
    """Whether a NetworkPolicy egress rule list lets traffic to address:port out."""
    ip = ipaddress.ip_address(address)
    for rule in rules:
        ports = rule.get("ports")
        if ports and not any(p.get("port") == port for p in ports):
            continue
        peers = rule.get("to")
        if not peers:
            return True
        for peer in peers:
            block = peer.get("ipBlock")
            if block is None:
                continue
            net = ipaddress.ip_network(block["cidr"])
            if (
                ip.version == net.version
                and ip in net
                and not any(
                    ip in ipaddress.ip_network(e)
                    for e in block.get("except", [])
                    if ipaddress.ip_network(e).version == ip.version
                )
            ):
                return True
    return False


@pytest.mark.parametrize("name", [f"{FULLNAME}-build", f"{FULLNAME}-builder"])
def test_builds_cannot_reach_private_ranges_or_metadata(render, name):
    policy = render().get("NetworkPolicy", name)["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["ingress"] == []
    egress = policy["egress"]
    for address in PRIVATE_DESTINATIONS:
        for port in (80, 443, 8081, 8585, 2375):
            assert not allowed(egress, address, port), f"{address}:{port} reachable"
    for address in PUBLIC_DESTINATIONS:
        assert allowed(egress, address, 443) and allowed(egress, address, 80)
    # DNS still resolves (the cluster resolver has a private address).
    assert allowed(egress, "10.96.0.10", 53)
    # No pod or namespace selectors: no pod (hub, binderbuild) is allow-listed.
    for rule in egress:
        for peer in rule.get("to", []):
            assert set(peer) == {"ipBlock"}


def test_extra_egress_for_an_in_cluster_registry(render):
    rule = {
        "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "registry"}}}],
        "ports": [{"protocol": "TCP", "port": 5000}],
    }
    objs = render({"networkPolicy": {"builderDaemon": {"extraEgress": [rule]}}})
    assert rule in objs.get("NetworkPolicy", f"{FULLNAME}-builder")["spec"]["egress"]
    assert rule not in objs.get("NetworkPolicy", f"{FULLNAME}-build")["spec"]["egress"]


def test_builds_cannot_reach_the_service(render):
    policy = render().get("NetworkPolicy", FULLNAME)["spec"]
    assert policy["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "service"
    (rule,) = policy["ingress"]
    pods = next(p for p in rule["from"] if "podSelector" in p)
    assert pods["namespaceSelector"] == {}
    assert pods["podSelector"]["matchExpressions"] == [
        {
            "key": "app.kubernetes.io/component",
            "operator": "NotIn",
            "values": ["build", "image-builder"],
        }
    ]
    # Public clients are admitted; private addresses only as (non-build) pods.
    blocks = [{"to": [p for p in rule["from"] if "ipBlock" in p]}]
    assert allowed(blocks, "140.82.112.3", 8585)
    for address in PRIVATE_DESTINATIONS:
        assert not allowed(blocks, address, 8585)
    assert rule["ports"] == [{"protocol": "TCP", "port": "http"}]


def test_network_policies_can_be_disabled(render):
    assert not render({"networkPolicy": {"enabled": False}}).of("NetworkPolicy")


# --- workloads ---------------------------------------------------------------------


def test_deployment(render):
    objs = render(
        {
            "replicas": 3,
            "hub": {"url": "https://hub.example.org/", "apiToken": "tok-123456"},
            "config": {"BinderBuild": {"base_url": "/binder"}},
        }
    )
    deploy = objs.one("Deployment")
    assert deploy["spec"]["replicas"] == 3
    pod = deploy["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == FULLNAME
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    (container,) = pod["containers"]
    assert container["image"] == "registry.example.org/binder/binderbuild:0.1.0"
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["readinessProbe"]["httpGet"]["path"] == "/binder/versions"
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["JUPYTERHUB_API_TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": FULLNAME, "key": "hub-api-token"}
    }
    assert "tok-123456" not in json.dumps(deploy)
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert labels["hub.jupyter.org/network-access-hub"] == "true"
    assert deploy["spec"]["selector"]["matchLabels"].items() <= labels.items()
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/etc/binderbuild"]["readOnly"] is True
    # Replicas spread over nodes by default.
    assert "podAntiAffinity" in pod["affinity"]


def test_hub_token_from_an_existing_secret(render):
    objs = render({"hub": {"existingSecret": {"name": "z2jh-binder", "key": "token"}}})
    (container,) = objs.one("Deployment")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["JUPYTERHUB_API_TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": "z2jh-binder", "key": "token"}
    }


def test_config_change_restarts_the_pods(render):
    def checksum(values):
        return render(values).one("Deployment")["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"
        ]

    assert checksum({}) == checksum({})
    assert checksum({}) != checksum({"config": {"BinderBuild": {"use_registry": True}}})


def test_builder_daemon(render):
    objs = render(
        {
            "build": {"tolerations": [{"key": "a", "operator": "Exists"}]},
            "builderDaemon": {"tolerations": [{"key": "b", "operator": "Exists"}]},
        }
    )
    daemon = objs.one("DaemonSet")
    spec = daemon["spec"]["template"]["spec"]
    # The image cleaner runs beside it (tests/helm/test_chart_registry.py).
    (dind,) = [c for c in spec["containers"] if c["name"] == "dockerd"]
    assert dind["securityContext"] == {"privileged": True}
    assert spec["automountServiceAccountToken"] is False
    assert spec["tolerations"] == [
        {"key": "a", "operator": "Exists"},
        {"key": "b", "operator": "Exists"},
    ]
    host_paths = {v["hostPath"]["path"] for v in spec["volumes"]}
    assert host_paths == {
        f"/var/run/binderbuild-dind/{NAMESPACE}/{RELEASE}",
        f"/var/lib/binderbuild-dind/{NAMESPACE}/{RELEASE}",
    }
    # Its own socket directory: never the node's Docker or container runtime.
    assert not host_paths & {
        "/var/run",
        "/run",
        "/var/run/docker.sock",
        "/var/lib/docker",
        "/run/containerd",
    }
    assert dind["args"][:4] == [
        "dockerd",
        "--host=unix:///var/run/binderbuild-dind/docker.sock",
        "--group=2375",
        "--storage-driver=overlay2",
    ]
    assert (
        daemon["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "image-builder"
    )
    assert not render({"builderDaemon": {"enabled": False}}).of("DaemonSet")


def test_ingress_is_optional(render):
    assert not render().of("Ingress")
    ingress = render(
        {
            "ingress": {
                "enabled": True,
                "className": "nginx",
                "hosts": [{"host": "binder.example.org"}],
                "tls": [{"secretName": "binder-tls", "hosts": ["binder.example.org"]}],
            }
        }
    ).one("Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "binder.example.org"
    (path,) = rule["http"]["paths"]
    assert path["backend"]["service"] == {"name": FULLNAME, "port": {"name": "http"}}
    assert ingress["spec"]["tls"] == [{"secretName": "binder-tls", "hosts": ["binder.example.org"]}]


def test_service_and_pdb(render):
    objs = render()
    service = objs.one("Service")
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]
    pdb = objs.one("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    labels = objs.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert not render({"pdb": {"enabled": False}}).of("PodDisruptionBudget")


def test_notes_render(helm, tmp_path):
    result = run_helm(
        helm,
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--dry-run=client",
        values={"builderDaemon": {"enabled": False}},
        tmp=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert f"port-forward service/{FULLNAME}" in notes
    assert "builderDaemon.enabled is false" in notes
    assert "No hub.url is set" in notes


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicas": 0}, "/replicas"),
        ({"replicas": "two"}, "/replicas"),
        ({"image": {"repository": "x", "pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"unknownKey": 1}, "unknownKey"),
        ({"config": {"lowercase": {"x": 1}}}, "lowercase"),
        ({"config": {"BinderBuild": "use_registry=true"}}, "/config/BinderBuild"),
        ({"builderDaemon": {"hostSocketDir": "/var/run"}}, "/builderDaemon/hostSocketDir"),
        ({"builderDaemon": {"hostSocketDir": "relative/dir"}}, "/builderDaemon/hostSocketDir"),
        ({"builderDaemon": {"socketGid": 0}}, "/builderDaemon/socketGid"),
        ({"hub": {"url": "hub.example.org"}}, "/hub/url"),
        ({"build": {"memoryLimit": "lots"}}, "/build/memoryLimit"),
        ({"networkPolicy": {"deniedCIDRs": ["not-a-cidr"]}}, "/networkPolicy/deniedCIDRs/0"),
        ({"service": {"port": 70000}}, "/service/port"),
        ({"ingress": {"enabled": True, "hosts": [{"paths": ["/"]}]}}, "host"),
    ],
)
def test_schema_rejects_bad_values(helm, tmp_path, values, complaint):
    result = run_helm(helm, "template", RELEASE, str(CHART), values=values, tmp=tmp_path)
    assert result.returncode != 0
    assert "schema" in result.stderr and complaint in result.stderr, result.stderr
