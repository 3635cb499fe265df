"""Kubernetes objects for builds, as pure functions returning plain dicts.

Nothing here talks to a cluster: ``build_pod_manifest`` turns a ``BuildJob``
and the operator's settings (``BuildPodConfig``) into the JSON of one build
pod, and the tests read it as data (kubespawner's ``objects.py`` habit).

What a build pod is, and why:

* **Named by the build name** (``ImageSpec.build_name``): creating it is the
  cluster-wide lock. A second request, from this replica or another, gets
  409 AlreadyExists and follows the running pod instead of building again.
* **Two containers: an untrusted sandbox and a trusted builder**, the split
  of the Docker backend (docs/security.md). ``sandbox`` runs repo2docker
  (fetch, buildpack detection, Dockerfile rendering, build context) with
  binderbuild's engine in export mode: it writes the context and parameters
  to a volume and never talks to Docker. It runs as ``sandbox_uid``, has no
  Docker socket, no registry credentials, no service-account token, a
  read-only root filesystem, no capabilities, its own memory limit, and its
  network is the pod's, which the chart's NetworkPolicy limits to DNS and
  public addresses. ``builder`` runs ``trusted_build``: it relays the
  sandbox's log (the one log the service follows), waits for its exit
  status, copies its output into a volume of its own, applies the
  Dockerfile policy and builds and pushes through the node's build daemon
  with the push Secret. Neither container sees the other's processes
  (``shareProcessNamespace: false``); they share only the sandbox's work
  volume, which the builder mounts read-only. repo2docker's config file is
  passed in an environment variable and written by a two-line shell
  prologue (a ConfigMap per build would need more API rights and another
  object to clean up).
* **The node's build daemon, not the host's Docker**: the socket directory
  of the builder DaemonSet (``docker_socket``, default
  ``/var/run/binderbuild-dind/<namespace>/<instance>/docker.sock``, the
  chart's layout, so two releases on one node never share a daemon) is
  mounted from the node into the builder container only. The
  directory, not the socket file, because a restarted daemon makes a new
  socket inode that a file mount would not see. Whoever can reach that
  socket controls that daemon, which is why it is a separate daemon with no
  access to the node's own containers.
* **Least privilege**: non-root uids, no privilege escalation, all
  capabilities dropped, read-only root filesystems (scratch space is
  emptyDirs), the default seccomp profile, no service-account token
  (``automountServiceAccountToken: false``; the service account, if named,
  has no Role), no service-link environment variables. Access to the socket
  comes from a supplementary group that the DaemonSet gives its socket
  (pod-wide in Kubernetes, but the socket is mounted in the builder only).
* **Push credentials from a Secret** (``valueFrom.secretKeyRef``), so they
  never appear in the pod spec that anyone with ``get pods`` can read.
* ``restartPolicy: Never`` (a failed build is reported, not retried behind
  the user's back) and ``activeDeadlineSeconds`` (a hung build pod is ended
  by the kubelet even if every binderbuild replica is gone).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from binderbuild.builders import sandbox as sandbox_mod
from binderbuild.builders.dockerfile_policy import RegistryPolicy
from binderbuild.builders.r2d_command import (
    add_git_config,
    git_fetch_config,
    repo2docker_argv,
    repo2docker_config_text,
)
from binderbuild.builders.sandbox_entry import ENV_REPORT_DIR
from binderbuild.models import BuildJob, ResolvedRef

# --- labels and annotations ------------------------------------------------

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
APP_NAME = "binderbuild"
BUILD_COMPONENT = "build"
BUILDER_DAEMON_COMPONENT = "image-builder"

ANNOTATION_REPO = "binderbuild/repo-url"
ANNOTATION_REF = "binderbuild/ref"
ANNOTATION_IMAGE = "binderbuild/image"
ANNOTATION_PROVIDER = "binderbuild/provider"
# "<namespace>/<pod name>/<process id>" of the replica that created the pod:
# only it deletes the pod when its build is cancelled, and other replicas
# adopt the pod once that replica is gone.
ANNOTATION_OWNER = "binderbuild/owner"
# The whole ResolvedRef as JSON: enough for whoever adopts the pod to record
# the build in history under its repository (ref_from_annotations).
ANNOTATION_RESOLVED_REF = "binderbuild/resolved-ref"

# The builder DaemonSet's directories on the node are
# <root>/<namespace>/<release> (helm/binderbuild/templates/_helpers.tpl).
HOST_SOCKET_ROOT = "/var/run/binderbuild-dind"

# The trusted container, whose log and exit status are the build's.
CONTAINER_NAME = "builder"
# The untrusted one: repo2docker's fetch and detection.
SANDBOX_CONTAINER_NAME = "sandbox"

# Zero to JupyterHub's dedicated user nodes: its user node pool is tainted
# hub.jupyter.org/dedicated=user:NoSchedule, or hub.jupyter.org_dedicated
# where the provider refuses "/" in taint keys (GKE node pools did), and
# labelled hub.jupyter.org/node-purpose=user. Its own user pods tolerate both
# spellings; build pods do with BuildPodConfig.user_nodes.
Z2JH_USER_TOLERATIONS: tuple[Mapping[str, str], ...] = tuple(
    {"key": key, "operator": "Equal", "value": "user", "effect": "NoSchedule"}
    for key in ("hub.jupyter.org/dedicated", "hub.jupyter.org_dedicated")
)
Z2JH_NODE_PURPOSE = {"key": "hub.jupyter.org/node-purpose", "operator": "In", "values": ["user"]}
# "": stay off user nodes (their taint keeps builds away); "tolerate": may run
# there; "prefer": prefer them (weighted like Z2JH's matchNodePurpose=prefer);
# "require": only there.
USER_NODES_MODES = ("", "tolerate", "prefer", "require")

# Where things are inside the build container.
SOCKET_MOUNT_DIR = "/var/run/binderbuild-docker"
# An emptyDir private to the pod (the root filesystem is read-only), so the
# shared-/tmp hazards the S108 rule is about do not arise.
SCRATCH_DIR = "/tmp"  # noqa: S108
# The builder's private copy of the sandbox's output (on its scratch volume).
TRUSTED_CONTEXT_DIR = f"{SCRATCH_DIR}/context"
# The sandbox's work volume, as the sandbox sees it (read-write: checkout,
# output, log) and as the builder does (read-only).
SANDBOX_WORK_DIR = sandbox_mod.WORK_DIR
SANDBOX_VIEW_DIR = "/sandbox"
R2D_CONFIG_PATH = f"{SANDBOX_WORK_DIR}/repo2docker_config.py"
# The sandbox's HOME (git and Python write a little there).
SANDBOX_HOME_SIZE = "64Mi"

# Environment variables the prologue and the engine read; operators' and
# jobs' extra variables cannot replace them.
ENV_R2D_CONFIG = "BINDERBUILD_R2D_CONFIG"
ENV_SOCKET = "BINDERBUILD_DOCKER_SOCKET"
RESERVED_ENV = frozenset(
    {
        ENV_R2D_CONFIG,
        ENV_SOCKET,
        "BINDERBUILD_DOCKER_HOST",
        "DOCKER_HOST",
        "BINDERBUILD_BUILD_NETWORK",
        "BINDERBUILD_BUILD_MEMORY_LIMIT",
        "CONTAINER_ENGINE_REGISTRY_CREDENTIALS",
        "HOME",
        "TMPDIR",
        "BINDERBUILD_ENGINE_EXPORT_DIR",
        ENV_REPORT_DIR,
    }
)

# Runs before repo2docker in the sandbox: write its config file. repo2docker's
# argv follows as "$@", so nothing is re-parsed by the shell.
SANDBOX_PROLOGUE = (
    'printf "%s" "$BINDERBUILD_R2D_CONFIG" > ' + R2D_CONFIG_PATH + ' || exit 1\nexec "$@"\n'
)

# Runs before the trusted step in the builder: wait (briefly) for the node's
# build daemon, which may be restarting, so that the build fails with the
# engine's clear "cannot reach the Docker daemon" only if it stays away.
PROLOGUE = (
    "i=0\n"
    'while [ ! -S "$BINDERBUILD_DOCKER_SOCKET" ] && [ "$i" -lt 30 ]; do\n'
    "  sleep 1; i=$((i + 1))\n"
    "done\n"
    'exec "$@"\n'
)


@dataclass(frozen=True)
class BuildPodConfig:
    """Operator settings of build pods (KubernetesBuilder's traitlets, as values)."""

    namespace: str
    build_image: str
    instance: str = APP_NAME
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    # A Kubernetes NodeAffinity object; sticky builds and user_nodes add to it.
    node_affinity: Mapping[str, Any] = field(default_factory=dict)
    user_nodes: str = ""  # one of USER_NODES_MODES
    docker_socket: str = ""  # path on the node; "": default_docker_socket()
    docker_socket_gid: int = 2375
    build_network: str = "bridge"
    push_secret: str = ""
    push_secret_key: str = "credentials.json"
    service_account: str = ""
    cpu_request: str = ""
    cpu_limit: str = ""
    memory_request: str = ""
    memory_limit: int = 0  # bytes; also the limit of each build step
    scratch_size_limit: str = ""
    active_deadline_seconds: int = 7200
    termination_grace_seconds: int = 10
    priority_class_name: str = ""
    pod_uid: int = 1000
    # The sandbox container's uid and gid (KubernetesBuilder.sandbox_uid).
    sandbox_uid: int = sandbox_mod.SANDBOX_UID
    sandbox_memory_limit: int = 0  # bytes; 0: none
    # The Dockerfile policy's registry lists (dockerfile_policy.RegistryPolicy).
    allowed_registries: tuple[str, ...] = ()
    allowed_internal_registries: tuple[str, ...] = ()
    python: str = "python"
    user_id: int = 1000
    user_name: str = "jovyan"
    extra_args: tuple[str, ...] = ()
    extra_env: Mapping[str, str] = field(default_factory=dict)
    extra_labels: Mapping[str, str] = field(default_factory=dict)
    extra_annotations: Mapping[str, str] = field(default_factory=dict)
    owner: str = ""  # ANNOTATION_OWNER; "" leaves it out

    @property
    def socket_path(self) -> str:
        return self.docker_socket or default_docker_socket(self.namespace, self.instance)


def default_docker_socket(namespace: str, instance: str) -> str:
    """Where the chart's builder daemon for release ``instance`` in
    ``namespace`` puts its socket on the node."""
    return f"{HOST_SOCKET_ROOT}/{namespace}/{instance}/docker.sock"


def ref_from_annotations(annotations: Mapping[str, str]) -> ResolvedRef:
    """The build's ResolvedRef from its pod's annotations: exact from
    ANNOTATION_RESOLVED_REF, else (pods of older versions) what the plain
    annotations say, with an empty spec."""
    try:
        data = json.loads(annotations.get(ANNOTATION_RESOLVED_REF) or "")
        known = {f.name for f in dataclasses.fields(ResolvedRef)}
        if isinstance(data, dict):
            return ResolvedRef(**{k: v for k, v in data.items() if k in known})
    except (ValueError, TypeError):
        pass
    repo_url = str(annotations.get(ANNOTATION_REPO) or "")
    resolved = str(annotations.get(ANNOTATION_REF) or "")
    return ResolvedRef(
        provider_id=str(annotations.get(ANNOTATION_PROVIDER) or ""),
        spec="",
        unresolved_ref=resolved,
        resolved_ref=resolved,
        resolved_spec="",
        repo_url=repo_url,
        ref_url="",
        slug_source=repo_url,
    )


def build_labels(instance: str) -> dict[str, str]:
    """The labels that identify this deployment's build pods (the watch selector)."""
    return {
        LABEL_NAME: APP_NAME,
        LABEL_INSTANCE: instance,
        LABEL_COMPONENT: BUILD_COMPONENT,
    }


def label_selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def build_selector(instance: str) -> str:
    return label_selector(build_labels(instance))


def rendezvous_rank(nodes: Iterable[str], key: str) -> list[str]:
    """Nodes ordered by preference for ``key`` (highest random weight first).

    Rendezvous hashing: each (node, key) pair gets a pseudo-random score and
    the highest wins. When a node joins or leaves, only the keys whose winner
    it is move, so a repository keeps finding its layer cache on the same
    node while the pool changes around it.
    """

    def score(node: str) -> bytes:
        return hashlib.sha256(f"{node}\0{key}".encode()).digest()

    return sorted({n for n in nodes if n}, key=score, reverse=True)


def build_tolerations(config: BuildPodConfig) -> list[dict[str, Any]]:
    """The operator's tolerations, then Zero to JupyterHub's user-node
    tolerations when ``user_nodes`` asks for them (each once)."""
    tolerations = [dict(t) for t in config.tolerations]
    if config.user_nodes:
        tolerations += [dict(t) for t in Z2JH_USER_TOLERATIONS if dict(t) not in tolerations]
    return tolerations


def build_node_affinity(config: BuildPodConfig, preferred_node: str | None) -> dict[str, Any]:
    """The operator's node affinity (copied, never changed in place), plus
    the user-node preference or requirement and the sticky build's node."""
    node: dict[str, Any] = copy.deepcopy(dict(config.node_affinity))
    preferred: list[dict[str, Any]] = list(
        node.get("preferredDuringSchedulingIgnoredDuringExecution") or []
    )
    if config.user_nodes == "prefer":
        preferred.append(
            {"weight": 100, "preference": {"matchExpressions": [dict(Z2JH_NODE_PURPOSE)]}}
        )
    elif config.user_nodes == "require":
        required = node.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
        # Terms are alternatives, the expressions of a term all hold: the
        # user-node expression joins every term (or makes the only one).
        terms = [dict(t) for t in required.get("nodeSelectorTerms") or []] or [{}]
        for term in terms:
            term["matchExpressions"] = [
                *(term.get("matchExpressions") or []),
                dict(Z2JH_NODE_PURPOSE),
            ]
        node["requiredDuringSchedulingIgnoredDuringExecution"] = {
            **required,
            "nodeSelectorTerms": terms,
        }
    if preferred_node:
        preferred.append(
            {
                "weight": 100,
                "preference": {
                    "matchExpressions": [
                        {
                            "key": "kubernetes.io/hostname",
                            "operator": "In",
                            "values": [preferred_node],
                        }
                    ]
                },
            }
        )
    if preferred:
        node["preferredDuringSchedulingIgnoredDuringExecution"] = preferred
    return node


def build_affinity(config: BuildPodConfig, preferred_node: str | None) -> dict[str, Any]:
    """Sticky builds prefer one node; otherwise builds prefer to spread out,
    so that concurrent builds do not compete for one node's daemon. Either
    way within the nodes ``node_affinity`` and ``user_nodes`` allow."""
    affinity: dict[str, Any] = {}
    node = build_node_affinity(config, preferred_node)
    if node:
        affinity["nodeAffinity"] = node
    if preferred_node:
        return affinity
    affinity["podAntiAffinity"] = {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {
                "weight": 100,
                "podAffinityTerm": {
                    "topologyKey": "kubernetes.io/hostname",
                    "labelSelector": {"matchLabels": build_labels(config.instance)},
                },
            }
        ]
    }
    return affinity


def build_resources(config: BuildPodConfig) -> dict[str, Any]:
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if config.cpu_request:
        requests["cpu"] = str(config.cpu_request)
    if config.memory_request:
        requests["memory"] = str(config.memory_request)
    if config.cpu_limit:
        limits["cpu"] = str(config.cpu_limit)
    if config.memory_limit:
        limits["memory"] = str(config.memory_limit)
    resources: dict[str, Any] = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    return resources


def build_env(job: BuildJob, config: BuildPodConfig) -> list[dict[str, Any]]:
    """The builder's (trusted) environment: the build daemon, the build
    steps' limits, the Dockerfile policy and the push credentials. Nothing of
    the operator's or the job's extra variables: those are for the fetch."""
    socket_in_pod = posixpath.join(SOCKET_MOUNT_DIR, posixpath.basename(config.socket_path))
    values: dict[str, str] = {
        "HOME": SCRATCH_DIR,
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        ENV_SOCKET: socket_in_pod,
        "BINDERBUILD_DOCKER_HOST": f"unix://{socket_in_pod}",
        "DOCKER_HOST": f"unix://{socket_in_pod}",
        "BINDERBUILD_BUILD_NETWORK": config.build_network,
        **RegistryPolicy(
            tuple(config.allowed_registries), tuple(config.allowed_internal_registries)
        ).to_env(),
    }
    if config.memory_limit:
        values["BINDERBUILD_BUILD_MEMORY_LIMIT"] = str(config.memory_limit)
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in values.items()]
    if job.push and config.push_secret:
        env.append(
            {
                "name": "CONTAINER_ENGINE_REGISTRY_CREDENTIALS",
                "valueFrom": {
                    "secretKeyRef": {"name": config.push_secret, "key": config.push_secret_key}
                },
            }
        )
    return env


def sandbox_env(job: BuildJob, config: BuildPodConfig) -> list[dict[str, Any]]:
    """The sandbox's environment: extra variables first (the operator's, the
    job's, e.g. a private repository's credential helper), then ours, which
    win; git limited to its safe transports. No socket, no credentials."""
    extra: dict[str, str] = {}
    for key, value in [*config.extra_env.items(), *job.extra_env]:
        if key not in RESERVED_ENV:
            extra[key] = str(value)
    values = sandbox_mod.sandbox_env(proxied=False, extra=(extra,))
    values["LANG"] = extra.get("LANG", "C.UTF-8")
    values[ENV_R2D_CONFIG] = repo2docker_config_text(job.ref.content_provider)
    values[ENV_REPORT_DIR] = SANDBOX_WORK_DIR
    add_git_config(values, git_fetch_config(""))
    return [{"name": k, "value": v} for k, v in values.items()]


def sandbox_command(job: BuildJob, config: BuildPodConfig) -> list[str]:
    """repo2docker in export mode, under ``sandbox_entry`` (which reports its
    log and status to the builder through the shared volume)."""
    argv = repo2docker_argv(
        python=config.python,
        repo_url=job.ref.repo_url,
        ref=job.ref.resolved_ref,
        image_name=job.image.name,
        push=False,
        config_path=R2D_CONFIG_PATH,
        user_id=config.user_id,
        user_name=config.user_name,
        extra_args=config.extra_args,
    )
    # argv is "python -m repo2docker ARGS": sandbox_entry runs it the same way.
    entry = [config.python, "-m", "binderbuild.builders.sandbox_entry", *argv[3:]]
    return ["tini", "--", "/bin/sh", "-c", SANDBOX_PROLOGUE, "binderbuild-sandbox", *entry]


def build_command(job: BuildJob, config: BuildPodConfig) -> list[str]:
    """The trusted step, following the sandbox first."""
    argv = [
        config.python,
        "-m",
        "binderbuild.builders.trusted_build",
        f"--sandbox={SANDBOX_VIEW_DIR}",
        f"--dir={TRUSTED_CONTEXT_DIR}",
        f"--tag={job.image.name}",
        "--push" if job.push else "--no-push",
    ]
    # tini is PID 1: a plain process as PID 1 ignores SIGTERM, so deleting a
    # build pod would wait out its whole grace period; tini forwards the
    # signal. $0 of the prologue names it in `ps`; the step's argv is "$@".
    return ["tini", "--", "/bin/sh", "-c", PROLOGUE, "binderbuild-build", *argv]


def _locked_down(uid: int) -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
    }


def build_pod_manifest(
    job: BuildJob, config: BuildPodConfig, *, preferred_node: str | None = None
) -> dict[str, Any]:
    """The build pod for ``job``. Raises ValueError for settings that cannot work."""
    socket_path = config.socket_path
    if not posixpath.isabs(socket_path) or socket_path.endswith("/"):
        raise ValueError(
            f"docker_socket must be the absolute path of a socket on the node, not {socket_path!r}"
        )
    if config.pod_uid <= 0 or config.sandbox_uid <= 0:
        raise ValueError("build pods never run as root: pod_uid and sandbox_uid must be positive")
    if config.user_nodes not in USER_NODES_MODES:
        raise ValueError(
            f"user_nodes must be one of {', '.join(repr(m) for m in USER_NODES_MODES)}, "
            f"not {config.user_nodes!r}"
        )
    labels = {**config.extra_labels, **build_labels(config.instance), LABEL_MANAGED_BY: APP_NAME}
    annotations = {
        **config.extra_annotations,
        ANNOTATION_REPO: job.ref.repo_url,
        ANNOTATION_REF: job.ref.resolved_ref,
        ANNOTATION_IMAGE: job.image.name,
        ANNOTATION_PROVIDER: job.ref.provider_id,
    }
    annotations[ANNOTATION_RESOLVED_REF] = json.dumps(
        dataclasses.asdict(job.ref), separators=(",", ":"), sort_keys=True
    )
    if config.owner:
        annotations[ANNOTATION_OWNER] = config.owner
    volumes: list[dict[str, Any]] = [
        {
            "name": "docker-socket",
            "hostPath": {
                "path": posixpath.dirname(socket_path),
                # Created empty if the DaemonSet has not started on this node
                # yet: the build then fails with "cannot reach the Docker
                # daemon" instead of hanging in ContainerCreating.
                "type": "DirectoryOrCreate",
            },
        },
        # The builder's own: HOME and its copy of the sandbox's output.
        {"name": "scratch", "emptyDir": _empty_dir(config.scratch_size_limit)},
        # The sandbox's checkout, output and log; the builder reads it.
        {"name": "sandbox-work", "emptyDir": _empty_dir(config.scratch_size_limit)},
        {"name": "sandbox-home", "emptyDir": _empty_dir(SANDBOX_HOME_SIZE)},
    ]
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": config.build_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": build_command(job, config),
        "workingDir": SCRATCH_DIR,
        "env": build_env(job, config),
        "volumeMounts": [
            # Read-only still allows connecting to the socket (and so full
            # use of that daemon); it only stops the build replacing files
            # in the node's socket directory.
            {"name": "docker-socket", "mountPath": SOCKET_MOUNT_DIR, "readOnly": True},
            {"name": "scratch", "mountPath": SCRATCH_DIR},
            {"name": "sandbox-work", "mountPath": SANDBOX_VIEW_DIR, "readOnly": True},
        ],
        "securityContext": _locked_down(config.pod_uid),
    }
    resources = build_resources(config)
    if resources:
        container["resources"] = resources
    sandbox: dict[str, Any] = {
        "name": SANDBOX_CONTAINER_NAME,
        "image": config.build_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": sandbox_command(job, config),
        "workingDir": SANDBOX_WORK_DIR,
        "env": sandbox_env(job, config),
        "volumeMounts": [
            {"name": "sandbox-work", "mountPath": SANDBOX_WORK_DIR},
            {"name": "sandbox-home", "mountPath": sandbox_mod.CONTAINER_TMP},
        ],
        "securityContext": _locked_down(config.sandbox_uid),
    }
    if config.sandbox_memory_limit:
        sandbox["resources"] = {"limits": {"memory": str(config.sandbox_memory_limit)}}
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": int(config.active_deadline_seconds),
        "terminationGracePeriodSeconds": int(config.termination_grace_seconds),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        # The sandbox never sees the builder's processes (or their environment).
        "shareProcessNamespace": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": config.pod_uid,
            "runAsGroup": config.pod_uid,
            "supplementalGroups": [config.docker_socket_gid],
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [sandbox, container],
        "volumes": volumes,
        "affinity": build_affinity(config, preferred_node),
    }
    if config.service_account:
        spec["serviceAccountName"] = config.service_account
    if config.node_selector:
        spec["nodeSelector"] = dict(config.node_selector)
    tolerations = build_tolerations(config)
    if tolerations:
        spec["tolerations"] = tolerations
    if config.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": name} for name in config.image_pull_secrets]
    if config.priority_class_name:
        spec["priorityClassName"] = config.priority_class_name
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": job.image.build_name,
            "namespace": config.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": spec,
    }


def _empty_dir(size_limit: str) -> dict[str, Any]:
    return {"sizeLimit": size_limit} if size_limit else {}
