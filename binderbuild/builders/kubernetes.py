"""Build in Kubernetes pods: one build pod per image, shared by every replica.

How one ``build(job)`` goes:

1. **Create or attach.** The pod is named by the job's build name, so
   creating it is a cluster-wide lock: 201 means this process owns the
   build; 409 AlreadyExists means another replica (or this service before a
   restart) already runs it, and this process follows that pod instead,
   starting from the last ``log_tail_lines`` lines of its log. A leftover
   pod that failed or is being deleted is removed and created afresh; one
   that just succeeded is followed (its image has just been pushed). The
   pod names its creator (``binderbuild/owner``: namespace, pod and process
   of the replica).
2. **Wait for it to start**, from the process-wide watch (``PodWatcher``):
   one list+watch of all build pods per process, never one per request.
   Scheduling news becomes ``waiting`` events; a pod that can never start
   (builder image cannot be pulled, push Secret missing) ends the build at
   once, ``ErrImagePull`` after ``image_pull_error_grace``, and a pod still
   Pending ``pending_timeout`` seconds after its creation (unschedulable,
   say) ends it with the scheduler's reason.
3. **Stream its log, raced against the watch.** One log reader per build
   per process; the ``BuildManager`` fans its events out to every client.
   The log followed is the trusted ``builder`` container's: it relays the
   sandbox container's log (repo2docker's fetch and detection, see
   ``pod_manifests``), then adds its own (policy, build, push), so the
   build's outcome is that one container's. Lines are repo2docker's JSON logs, read by ``r2d_log.R2dLogReader`` as
   the local backend reads its subprocess's output. If the stream breaks
   or goes quiet for ``log_read_timeout`` while the container still runs,
   it is requested again from the last timestamp seen, skipping lines
   already delivered. The log never decides the outcome: once the watch
   says the container ended, the stream gets ``log_end_grace`` seconds to
   end, then it is cancelled and the rest of the log is read once without
   following. A half-open stream cannot hold a finished build.
4. **Read the outcome from the pod status**: success returns; a failure
   raises ``BuildFailed`` with the reason from the status (out of memory,
   evicted, deadline exceeded, exit code) plus repo2docker's own failure
   message (``r2d_log.status_failure``).

Cleanup: the owner (the creating process) deletes its pod when the build
ends and when its build is cancelled. A replica that only follows another
replica's build never deletes it on cancel: its clients leaving stops its
following, not the build. Pods that can never start are deleted by whoever
sees it. A sweep in every replica deletes finished pods after
``finished_pod_max_age`` and any pod older than ``build_max_age``.
Deletions carry the pod's uid as a precondition, so a late cleanup never
removes the next build of the same image.

Service restarts and crashed replicas: at shutdown the app awaits
``begin_shutdown()`` before it cancels its builds, so cancelled builds leave
their pods running. At start-up (``start()``, called by the service) and at
every sweep, pods whose owner is gone (its pod no longer exists, or it is
this pod's previous process) are adopted: followed to their end, their
outcome recorded (``adopted``, ``on_adopted`` hooks) and the pod deleted. A
client asking for the same image meanwhile gets 409 and joins the pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import hashlib
import os
import socket
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from traitlets import (
    Bool,
    CaselessStrEnum,
    Dict,
    Float,
    Integer,
    List,
    TraitError,
    Unicode,
    Union,
    default,
    validate,
)

from binderbuild import __version__
from binderbuild.builders import pod_manifests as pm
from binderbuild.builders.base import Builder, BuildResources, ExternalBuild
from binderbuild.builders.r2d_log import R2dLogReader, status_failure
from binderbuild.errors import BuildBackendError, BuildFailed, error_code
from binderbuild.events import Phase, ProgressEvent, event
from binderbuild.k8s_api import (
    PodAPI,
    StreamStalled,
    close_core_api,
    current_namespace,
    make_core_api,
)
from binderbuild.k8s_status import (
    container_status,
    created_at,
    failure_reason,
    finished_at,
    is_finished,
    is_pull_error,
    is_terminating,
    outcome,
    parse_timestamp,
    pending_message,
    pending_problem,
    pending_timeout_reason,
    phase,
    uid,
)
from binderbuild.k8s_watch import PodWatcher
from binderbuild.models import BuildJob
from binderbuild.units import parse_bytes

# Outcomes of adopted pods remembered (for operators and hooks).
_ADOPTED_KEPT = 500
# Events of one adopted build kept for its history record.
_ADOPTED_EVENTS_KEPT = 20_000


class _Unstartable(Exception):
    """The pod can never start; carries the reason."""


@dataclass(frozen=True)
class AdoptedBuild:
    """How a build pod left behind by a replica that went away ended."""

    name: str
    image: str
    repo_url: str
    ref: str
    outcome: str  # succeeded | failed | unstartable | abandoned
    reason: str
    finished: float  # time.time()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _LogPosition:
    """The last log line delivered: its kubelet timestamp (to the nanosecond)
    and how many delivered lines carried it."""

    def __init__(self) -> None:
        self.last: tuple[int, int] | None = None
        self.at_last = 0

    def advance(self, stamp: tuple[int, int]) -> None:
        if stamp == self.last:
            self.at_last += 1
        else:
            self.last, self.at_last = stamp, 1

    def snapshot(self) -> tuple[tuple[int, int] | None, int]:
        return self.last, self.at_last

    def since_seconds(self) -> int | None:
        if self.last is None:
            return None
        # Wall clocks of node and service differ a little; the overlap is
        # skipped by timestamp, so err on the early side.
        return max(1, int(time.time() - self.last[0]) + 30)


@dataclass
class _EndOfLog:
    error: BaseException | None = None


class FollowEnd(enum.StrEnum):
    """How following a build pod ended; decides who deletes the pod."""

    FINISHED = "finished"  # the build succeeded or failed
    UNSTARTABLE = "unstartable"  # the pod can never start
    STOPPED = "stopped"  # our consumer was cancelled (client or shutdown)
    ABANDONED = "abandoned"  # the API failed under us; the pod may still finish


class KubernetesBuilder(Builder):
    """repo2docker in build pods, on the Docker daemons of a builder DaemonSet."""

    # Builds run on the builder DaemonSet's daemons: no local engine needed.
    needs_local_engine = False

    # --- where and what --------------------------------------------------------
    kubeconfig = Unicode(
        "",
        config=True,
        help="Path of a kubeconfig file for the Kubernetes API. Empty: the in-cluster "
        "service account when running in a pod, else $KUBECONFIG or ~/.kube/config.",
    )
    build_namespace = Unicode(
        config=True,
        help="Namespace of build pods. Default: the namespace binderbuild runs in "
        "($POD_NAMESPACE or the service account's), else 'default'.",
    )
    instance_name = Unicode(
        "binderbuild",
        config=True,
        help="Value of the app.kubernetes.io/instance label of build pods. Deployments "
        "sharing a namespace must differ here (the Helm chart uses the release name).",
    )
    build_image = Unicode(
        f"binderbuild/builder:{__version__}",
        config=True,
        help="Image of build pods: repo2docker plus binderbuild (for its Docker-API "
        "engine), as built from images/builder/Dockerfile and pushed to a registry the "
        "nodes pull from. binderbuild's images are not published: the default names "
        "no real image; set it (the Helm chart sets it from build.image).",
    )
    build_image_pull_policy = CaselessStrEnum(
        ["Always", "IfNotPresent", "Never"],
        "IfNotPresent",
        config=True,
        help="imagePullPolicy of the builder container.",
    )
    build_image_pull_secrets = List(
        Unicode(), config=True, help="Names of Secrets used to pull the builder image."
    )
    build_python = Unicode(
        "python",
        config=True,
        help="Python interpreter inside the builder image that has repo2docker.",
    )

    # --- the build daemon ------------------------------------------------------------
    build_docker_host = Unicode(
        config=True,
        help="Path *on the node* of the Docker socket that builds use: the socket of the "
        "builder DaemonSet (its own directory, mounted into build pods). Never the "
        "node's own /var/run/docker.sock unless you accept that builds control every "
        "container on the node. A unix:// prefix is accepted. Default: where the Helm "
        "chart's daemon puts it, /var/run/binderbuild-dind/<build_namespace>/"
        "<instance_name>/docker.sock, so two releases on one node never share a daemon.",
    )
    build_docker_socket_gid = Integer(
        2375,
        config=True,
        help="Group owning the builder daemon's socket (dockerd --group). Build pods run "
        "as a non-root user with this supplementary group.",
    )
    build_network = Unicode(
        "bridge",
        config=True,
        help="Docker network of build steps inside the builder daemon. 'bridge' lets steps "
        "download packages through the daemon pod, whose NetworkPolicy keeps them off "
        "private ranges and the metadata address; 'none' cuts them off entirely.",
    )

    # --- scheduling and resources ----------------------------------------------------
    build_node_selector = Dict(
        value_trait=Unicode(),
        config=True,
        help="nodeSelector of build pods; use the same as the builder DaemonSet's.",
    )
    build_tolerations = List(Dict(), config=True, help="Tolerations of build pods.")
    build_node_affinity = Dict(
        config=True,
        help="nodeAffinity of build pods (a Kubernetes NodeAffinity object: "
        "requiredDuringSchedulingIgnoredDuringExecution and/or "
        "preferredDuringSchedulingIgnoredDuringExecution). Sticky builds and "
        "build_user_nodes add their terms to it. The builder DaemonSet must run "
        "wherever its required terms allow.",
    )
    build_user_nodes = CaselessStrEnum(
        list(pm.USER_NODES_MODES),
        "",
        config=True,
        help="Build pods on Zero to JupyterHub's dedicated user nodes (tainted "
        "hub.jupyter.org/dedicated=user:NoSchedule, or hub.jupyter.org_dedicated, and "
        "labelled hub.jupyter.org/node-purpose=user). '': no (the taint keeps them "
        "away); 'tolerate': tolerate both taints, so builds may land there; 'prefer': "
        "also prefer those nodes; 'require': only those nodes. The builder DaemonSet "
        "needs the same (the chart's build.userNodes does both).",
    )
    build_cpu_request = Unicode("", config=True, help="CPU request of a build pod, e.g. '1'.")
    build_cpu_limit = Unicode("", config=True, help="CPU limit of a build pod's container.")
    build_memory_request = Unicode(
        "",
        config=True,
        help="Memory request of a build pod, e.g. '1Gi'. The build itself runs in the "
        "builder daemon; the request reserves room for it on the node.",
    )
    build_scratch_size_limit = Unicode(
        "",
        config=True,
        help="sizeLimit of each of the build pod's two work emptyDirs: the sandbox's "
        "(the repository checkout and the build context) and the builder's (its copy of "
        "the build context). Empty: no limit.",
    )
    build_priority_class_name = Unicode("", config=True, help="priorityClassName of build pods.")
    build_active_deadline_seconds = Integer(
        7200,
        config=True,
        help="activeDeadlineSeconds of build pods: the kubelet stops a build pod after this "
        "even if no binderbuild replica is left to do it. Keep it above BinderBuild.build_timeout.",
    )
    build_service_account = Unicode(
        "",
        config=True,
        help="Service account of build pods: one with no Role (the chart creates it). Its "
        "token is never mounted.",
    )
    build_pod_uid = Integer(
        1000,
        config=True,
        help="UID (and GID) the trusted builder container of build pods runs as (it "
        "holds the build daemon's socket group and the push Secret).",
    )
    sandbox_uid = Integer(
        1000,
        config=True,
        help="UID (and GID) the sandbox container of build pods runs as: repo2docker's "
        "fetch and detection of the repository. Choose one that owns nothing on your "
        "nodes; it never gets the Docker socket or the push credentials. 0 is refused.",
    )

    @validate("sandbox_uid", "build_pod_uid")
    def _valid_uid(self, proposal: Any) -> int:
        if int(proposal["value"]) <= 0:
            raise TraitError(f"KubernetesBuilder.{proposal['trait'].name} must be positive")
        return int(proposal["value"])

    sandbox_memory_limit = Union(
        [Integer(), Unicode()],
        default_value="2G",
        config=True,
        help="Memory limit of the sandbox container of build pods (fetch and "
        "detection), e.g. '2G'; 0: none.",
    )
    allowed_registries = List(
        Unicode(),
        config=True,
        help="""Registries a repository's Dockerfile may name in FROM and COPY --from
        (host or host:port; 'docker.io' covers names without a registry host). Empty:
        every registry on a public address. The same as DockerBuilder.allowed_registries;
        a fixed list of well-known registries also closes the daemon's second DNS lookup
        (docs/security.md).""",
    )
    allowed_internal_registries = List(
        Unicode(),
        config=True,
        help="""Registries on internal addresses a repository's Dockerfile may still name
        in FROM or COPY --from (e.g. an in-cluster registry). Default: none.""",
    )
    build_pod_labels = Dict(value_trait=Unicode(), config=True, help="Extra labels of build pods.")
    build_pod_annotations = Dict(
        value_trait=Unicode(), config=True, help="Extra annotations of build pods."
    )

    # --- credentials --------------------------------------------------------------------
    push_secret = Unicode(
        "",
        config=True,
        help="Name of a Secret holding the registry credentials build pods push with, under "
        "push_secret_key, as JSON {registry, username, password}. Empty: push anonymously.",
    )
    push_secret_key = Unicode("credentials.json", config=True, help="Key of push_secret to use.")

    # --- repo2docker -----------------------------------------------------------------
    user_id = Integer(1000, config=True, help="UID of the notebook user in built images.")
    user_name = Unicode("jovyan", config=True, help="Name of the notebook user in built images.")
    extra_args = List(Unicode(), config=True, help="Extra command-line arguments for repo2docker.")
    extra_env = Dict(
        value_trait=Unicode(),
        config=True,
        help="Extra environment of the builder container (e.g. HTTPS_PROXY). Visible to "
        "anyone who can read pods: no secrets.",
    )

    # --- behaviour -----------------------------------------------------------------------
    sticky_builds = Bool(
        False,
        config=True,
        help="Prefer the same builder node for the same repository (rendezvous hashing over "
        "the nodes running the builder DaemonSet), so its layer cache is reused.",
    )
    builder_daemon_selector = Unicode(
        "app.kubernetes.io/name=binderbuild,app.kubernetes.io/component=image-builder",
        config=True,
        help="Label selector of the builder DaemonSet's pods (for sticky builds).",
    )
    sticky_nodes_ttl = Float(60.0, config=True, help="Seconds the list of builder nodes is reused.")
    log_tail_lines = Integer(
        100,
        config=True,
        help="Lines of log shown when attaching to a build already running elsewhere.",
    )
    build_max_age = Float(
        4 * 3600.0,
        config=True,
        help="Seconds after which any build pod is deleted, running or not.",
    )
    finished_pod_max_age = Float(
        120.0,
        config=True,
        help="Seconds a finished build pod is kept before the sweep deletes it (its creator "
        "deletes it at once; this catches pods whose creator went away).",
    )
    build_cleanup_interval = Float(60.0, config=True, help="Seconds between cleanup sweeps.")
    log_resume_attempts = Integer(
        5, config=True, help="Times a broken log stream of a running build is resumed."
    )
    log_resume_delay = Float(
        1.0,
        config=True,
        help="Seconds before the first resumption of a broken log stream (doubling, up to 10).",
    )
    log_end_grace = Float(
        15.0,
        config=True,
        help="Seconds to wait, after a build log ends, for the pod status to say how it ended.",
    )
    log_read_timeout = Float(
        120.0,
        config=True,
        help="Seconds a build log stream may send nothing before it is requested again "
        "from the last line seen. Catches half-open connections (control-plane "
        "upgrades, load balancers dropping idle flows, lost nodes); a quiet build step "
        "costs one request per period. How a build ends is decided by the pod watch, "
        "never by this.",
    )
    pending_timeout = Float(
        300.0,
        config=True,
        help="Seconds, from its creation, a build pod may stay Pending (unscheduled, or "
        "its container not started) before the build fails with the scheduler's reason "
        "and the pod is deleted. activeDeadlineSeconds only counts once a pod is on a "
        "node. Includes pulling the builder image on a fresh node. 0: no limit.",
    )
    image_pull_error_grace = Float(
        30.0,
        config=True,
        help="Seconds the builder container may wait in ErrImagePull (a failed pull the "
        "kubelet will retry) before the build fails like ImagePullBackOff.",
    )
    replica_name = Unicode(
        config=True,
        help="Name of this replica's pod (it names the owner of the build pods it creates). "
        "Default: $POD_NAME (the chart sets it), else the host name. Must differ between "
        "processes that share build_namespace and instance_name: a pod naming this "
        "replica with another process id counts as left by a previous, dead process.",
    )
    replica_namespace = Unicode(
        config=True,
        help="Namespace of this replica's pod. Default: $POD_NAMESPACE, the service "
        "account's namespace, else build_namespace.",
    )
    adopt_orphaned_pods = Bool(
        True,
        config=True,
        help="At start-up and at every cleanup sweep, adopt build pods whose creating "
        "replica is gone (its pod no longer exists, or it is this pod's previous "
        "process): follow each to its end, record the outcome (logged, stored in the "
        "build history like any build, and passed to the builder's on_adopted hooks) "
        "and delete the pod, instead of leaving it until someone asks for the image.",
    )
    request_timeout = Float(
        30.0, config=True, help="Seconds before a Kubernetes API request fails."
    )
    api_retry_deadline = Float(
        30.0,
        config=True,
        help="Seconds a Kubernetes API call is retried for while the API server answers "
        "429 (waiting at least its Retry-After), 500, 503 or 504 (backing off). A wait "
        "that would end later fails the call at once, with the server's message.",
    )
    old_pod_delete_timeout = Float(
        60.0,
        config=True,
        help="Seconds to wait for a finished build pod of the same image to go before "
        "its replacement is created. A pod held by a finalizer that nobody removes "
        "fails the build after this, naming the finalizer.",
    )
    watch_timeout = Integer(300, config=True, help="Server-side timeout of one pod watch request.")
    startup_timeout = Float(
        30.0, config=True, help="Seconds to wait for the first listing of build pods."
    )

    @default("build_namespace")
    def _default_namespace(self) -> str:
        return current_namespace()

    @default("build_docker_host")
    def _default_docker_host(self) -> str:
        return pm.default_docker_socket(self.build_namespace, self.instance_name)

    @default("replica_name")
    def _default_replica_name(self) -> str:
        return os.environ.get("POD_NAME") or os.environ.get("HOSTNAME") or socket.gethostname()

    @default("replica_namespace")
    def _default_replica_namespace(self) -> str:
        return current_namespace(self.build_namespace)

    @validate("build_docker_host")
    def _valid_socket(self, proposal: Any) -> str:
        value = str(proposal["value"]).strip()
        if value.startswith("unix://"):
            value = value[len("unix://") :]
        if not value.startswith("/") or value.endswith("/"):
            raise ValueError(
                f"build_docker_host must be the path of a socket on the node, got {value!r}"
            )
        return value

    def __init__(
        self,
        *,
        resources: BuildResources | None = None,
        k8s_api: Any = None,
        **kwargs: Any,
    ) -> None:
        """``k8s_api``: a ``kubernetes_asyncio`` ``CoreV1Api`` (or an object with
        the same methods). Default: one made at first use from the in-cluster
        service account or the kubeconfig, and closed by ``close()``.

        Of ``resources``, build pods use the scrubber, the memory limit and
        ``docker_host`` (see below); never the docker client: the build runs
        on a node's builder daemon, and pushes with ``push_secret``."""
        super().__init__(resources=resources, **kwargs)
        # BinderHub configured the socket as BinderHub.build_docker_host (which
        # reaches us as resources.docker_host); our own option, when set, wins.
        docker_host = self.resources.docker_host
        if docker_host and not self._configured("build_docker_host"):
            if docker_host.startswith(("unix://", "/")):
                self.build_docker_host = docker_host
            else:
                self.log.warning(
                    "Ignoring build docker host %r: build pods need a unix socket path on the node",
                    docker_host,
                )
        if self.resources.registry_credentials.get("username") and not self.push_secret:
            self.log.warning(
                "Registry credentials are configured but KubernetesBuilder.push_secret is "
                "empty: build pods will push without credentials."
            )
        self._core = k8s_api
        self._owns_core = k8s_api is None
        self._api: PodAPI | None = None
        self._watcher: PodWatcher | None = None
        self._cleanup_task: asyncio.Task[None] | None = None
        self._start_lock = asyncio.Lock()
        self._started = False
        self._shutting_down = False
        self._sticky_nodes: tuple[float, list[str]] = (0.0, [])
        # This process, as named in the pods it creates (ANNOTATION_OWNER).
        self.instance_id = uuid.uuid4().hex[:16]
        # Build pods this process follows for a build() right now.
        self._following: Counter[str] = Counter()
        # Orphaned pods being followed to their end, and how adopted ones ended.
        self.adopting: dict[str, asyncio.Task[None]] = {}
        self.adopted: OrderedDict[str, AdoptedBuild] = OrderedDict()
        self.on_adopted: list[Callable[[AdoptedBuild], None]] = []
        self._adopt_task: asyncio.Task[None] | None = None

    def _configured(self, trait: str) -> bool:
        section = self.config[type(self).__name__] if type(self).__name__ in self.config else {}
        return trait in section

    # --- lifecycle ----------------------------------------------------------------

    @property
    def namespace(self) -> str:
        return self.build_namespace

    @property
    def watcher(self) -> PodWatcher | None:
        return self._watcher

    def pod_config(self) -> pm.BuildPodConfig:
        """The current traitlet values as the manifest functions' settings."""
        return pm.BuildPodConfig(
            namespace=self.namespace,
            build_image=self.build_image,
            instance=self.instance_name,
            image_pull_policy=self.build_image_pull_policy,
            image_pull_secrets=tuple(self.build_image_pull_secrets),
            node_selector=dict(self.build_node_selector),
            tolerations=tuple(dict(t) for t in self.build_tolerations),
            node_affinity=dict(self.build_node_affinity),
            user_nodes=self.build_user_nodes.lower(),
            docker_socket=self.build_docker_host,
            docker_socket_gid=self.build_docker_socket_gid,
            build_network=self.build_network,
            push_secret=self.push_secret,
            push_secret_key=self.push_secret_key,
            service_account=self.build_service_account,
            cpu_request=self.build_cpu_request,
            cpu_limit=self.build_cpu_limit,
            memory_request=self.build_memory_request,
            memory_limit=int(self.resources.memory_limit or 0),
            scratch_size_limit=self.build_scratch_size_limit,
            active_deadline_seconds=self.build_active_deadline_seconds,
            priority_class_name=self.build_priority_class_name,
            pod_uid=self.build_pod_uid,
            sandbox_uid=self.sandbox_uid,
            sandbox_memory_limit=parse_bytes(self.sandbox_memory_limit),
            allowed_registries=tuple(self.allowed_registries),
            allowed_internal_registries=tuple(self.allowed_internal_registries),
            python=self.build_python,
            user_id=self.user_id,
            user_name=self.user_name,
            extra_args=tuple(self.extra_args),
            extra_env=dict(self.extra_env),
            extra_labels=dict(self.build_pod_labels),
            extra_annotations=dict(self.build_pod_annotations),
            owner=self.owner,
        )

    @property
    def owner(self) -> str:
        """This process as the owner of the pods it creates."""
        return f"{self.replica_namespace}/{self.replica_name}/{self.instance_id}"

    async def start(self) -> None:
        """Connect, list build pods and start the watch and the cleanup sweep.

        Called by the first build or health check; idempotent."""
        if self._started:
            return
        async with self._start_lock:
            if self._started:
                return
            if self._core is None:
                self._core = await make_core_api(self.kubeconfig or None)
            if self._api is None:
                self._api = PodAPI(
                    self._core,
                    request_timeout=self.request_timeout,
                    retry_deadline=self.api_retry_deadline,
                )
            if self._watcher is None:
                self._watcher = PodWatcher(
                    self._api,
                    self.namespace,
                    pm.build_selector(self.instance_name),
                    watch_timeout=self.watch_timeout,
                )
                self._watcher.start()
            await self._watcher.wait_ready(self.startup_timeout)
            if self._cleanup_task is None:
                self._cleanup_task = asyncio.create_task(
                    self._cleanup_loop(), name="build pod cleanup"
                )
            if self.adopt_orphaned_pods and self._adopt_task is None:
                # The start-up sweep: pods left by a replica that died are
                # followed to their end now, not when someone asks again.
                self._adopt_task = asyncio.create_task(
                    self._adopt_quietly(), name="adopt orphaned build pods"
                )
            self._started = True

    async def begin_shutdown(self) -> None:
        """From now on, cancelled builds leave their pods running, so the next
        instance of the service can re-attach to them."""
        self._shutting_down = True

    async def close(self) -> None:
        self._shutting_down = True
        tasks = [self._cleanup_task, self._adopt_task, *self.adopting.values()]
        self._cleanup_task = self._adopt_task = None
        for task in tasks:
            if task is not None:
                task.cancel()
        for task in tasks:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._watcher is not None:
            await self._watcher.stop()
            self._watcher = None
        if self._owns_core and self._core is not None:
            await close_core_api(self._core)
            self._core = None
        self._api = None
        self._started = False

    async def check(self) -> dict[str, Any]:
        await self.start()
        assert self._watcher is not None
        failing = self._watcher.failing_since
        if failing is not None and time.monotonic() - failing > 2 * self.request_timeout:
            raise BuildBackendError(f"Kubernetes pod watch failing: {self._watcher.last_error}")
        return {
            "engine": "kubernetes",
            "namespace": self.namespace,
            "build_pods": len(self._watcher.pods),
        }

    # --- one build -------------------------------------------------------------------

    async def build(self, job: BuildJob) -> AsyncIterator[ProgressEvent]:
        name = job.image.build_name
        # Registered before the pod exists (and before start() runs the first
        # adoption sweep), so this process never adopts a pod it is about to
        # create or follow.
        self._following[name] += 1
        try:
            await self.start()
            api, watcher = self._parts()
            async for ev in self._build(api, watcher, name, job):
                yield ev
        finally:
            self._following[name] -= 1
            if self._following[name] <= 0:
                del self._following[name]

    async def _build(
        self, api: PodAPI, watcher: PodWatcher, name: str, job: BuildJob
    ) -> AsyncIterator[ProgressEvent]:
        preferred = await self._preferred_node(job.ref.repo_url) if self.sticky_builds else None
        try:
            manifest = pm.build_pod_manifest(job, self.pod_config(), preferred_node=preferred)
        except ValueError as exc:
            raise BuildBackendError(f"Invalid build pod settings: {exc}") from None
        pod, owner = await self._create_or_attach(api, watcher, name, manifest, job)
        pod_uid = uid(pod)
        if owner:
            where = f" (preferring node {preferred})" if preferred else ""
            yield event(Phase.WAITING, f"Build pod {name} created{where}.\n")
        else:
            yield event(
                Phase.WAITING,
                f"This image is already being built by pod {name}; following it "
                f"(showing up to its last {self.log_tail_lines} log lines).\n",
            )
        ended = FollowEnd.ABANDONED
        try:
            async for ev in self._follow(
                api, watcher, name, pod_uid, pod, None if owner else self.log_tail_lines
            ):
                yield ev
            ended = FollowEnd.FINISHED
        except BuildFailed:
            ended = FollowEnd.FINISHED
            raise
        except _Unstartable as exc:
            ended = FollowEnd.UNSTARTABLE
            raise BuildBackendError(str(exc)) from None
        except (asyncio.CancelledError, GeneratorExit):
            ended = FollowEnd.STOPPED
            raise
        finally:
            if _should_delete(ended, owner=owner, shutting_down=self._shutting_down):
                await self._delete_quietly(api, name, pod_uid, why=ended.value)

    def _parts(self) -> tuple[PodAPI, PodWatcher]:
        if self._api is None or self._watcher is None:
            raise BuildBackendError("The Kubernetes build backend is closed.")
        return self._api, self._watcher

    async def _create_or_attach(
        self,
        api: PodAPI,
        watcher: PodWatcher,
        name: str,
        manifest: dict[str, Any],
        job: BuildJob,
    ) -> tuple[dict[str, Any], bool]:
        for _ in range(3):
            created = await api.create_pod(self.namespace, manifest)
            if created is not None:
                self.log.info("Created build pod %s for %s", name, job.image.name)
                return created, True
            existing = await api.read_pod(self.namespace, name)
            if existing is None:
                continue  # deleted between our create and read: create again
            meta = existing.get("metadata") or {}
            image = (meta.get("annotations") or {}).get(pm.ANNOTATION_IMAGE)
            if (meta.get("annotations") or {}).get(pm.ANNOTATION_OWNER) == self.owner and (
                not is_terminating(existing)
            ):
                # Our own create, answered with an error (a 500 or 504 whose
                # outcome was unknown) but done: the retry met the pod it made.
                self.log.info("Created build pod %s for %s (found on retry)", name, job.image.name)
                return existing, True
            labels = meta.get("labels") or {}
            ours = pm.build_labels(self.instance_name).items() <= labels.items()
            if not ours or (image and image != job.image.name):
                # Not a pod our watch sees, or one building something else:
                # following it could never end well.
                raise BuildBackendError(
                    f"Pod {name} exists but is not this deployment's build of "
                    f"{job.image.name} (it builds {image or 'something unknown'}): do two "
                    "deployments share this namespace and KubernetesBuilder.instance_name?"
                )
            if phase(existing) == "Succeeded" and not is_terminating(existing):
                # Another replica's build of this image has just succeeded (and
                # pushed); following it costs nothing, rebuilding would.
                return existing, False
            if is_finished(existing) or is_terminating(existing):
                old = uid(existing)
                self.log.info("Replacing old build pod %s (%s)", name, phase(existing))
                await api.delete_pod(self.namespace, name, uid=old)
                if not await watcher.wait_for(
                    functools.partial(_gone, watcher, name, old),
                    timeout=self.old_pod_delete_timeout,
                ):
                    held = (watcher.current(name, old) or existing).get("metadata") or {}
                    finalizers = ", ".join(str(f) for f in held.get("finalizers") or [])
                    raise BuildBackendError(
                        f"Old build pod {name} is still being deleted after "
                        f"{self.old_pod_delete_timeout:g} s"
                        + (f": finalizers {finalizers} hold it." if finalizers else ".")
                    )
                continue
            self.log.info("Attaching to running build pod %s", name)
            return existing, False
        raise BuildBackendError(f"Could not create or attach to build pod {name}.")

    async def _follow(
        self,
        api: PodAPI,
        watcher: PodWatcher,
        name: str,
        pod_uid: str,
        pod: dict[str, Any],
        tail: int | None,
    ) -> AsyncIterator[ProgressEvent]:
        # 1. Until the container runs (or the pod ended without running).
        async for ev in self._until_started(watcher, name, pod_uid, pod):
            yield ev
        pod = watcher.current(name, pod_uid) or pod

        # 2. The log, if the container ever ran, raced against the watch.
        log = R2dLogReader(self.resources.scrubber)
        if _container_started(pod) or _container_ran(pod):
            async for line in self._race_log(api, watcher, name, pod_uid, tail):
                yield log.read(line)

        # 3. The verdict, from the pod status.
        final = await self._final_state(api, watcher, name, pod_uid)
        result = outcome(final, pm.CONTAINER_NAME) if final is not None else None
        if result is True:
            return
        if result is None or final is None:
            raise BuildFailed("The build pod was deleted before the build finished.")
        why = failure_reason(final, pm.CONTAINER_NAME)
        if is_terminating(final):
            # Stopped because someone deleted it (kubectl delete, a drain):
            # the exit code alone would read like the build's own failure.
            why = f"The build pod was deleted before the build finished ({why.rstrip('.')})."
        raise status_failure(why, log)

    async def _until_started(
        self, watcher: PodWatcher, name: str, pod_uid: str, pod: dict[str, Any]
    ) -> AsyncIterator[ProgressEvent]:
        """Scheduling news as events until the container runs or the pod ended;
        ``_Unstartable`` when it never will: a fatal waiting reason, a failed
        pull past its grace, or still Pending at the deadline."""
        loop = asyncio.get_running_loop()
        # From the pod's creation (the API server's clock), so every replica
        # following it gives up at the same time, however late it attached.
        created = created_at(pod) or time.time()
        last_message = ""
        pull_error_since: float | None = None
        while True:
            changed = watcher.changed
            pod = watcher.current(name, pod_uid) or pod
            if outcome(pod, pm.CONTAINER_NAME) is not None or _container_started(pod):
                return
            if watcher.deleted(pod_uid) is not None:
                raise BuildFailed("The build pod was deleted before it started.")
            problem = pending_problem(pod, pm.CONTAINER_NAME)
            if problem is not None:
                raise _Unstartable(problem)
            waits: list[float] = []
            if is_pull_error(pod, pm.CONTAINER_NAME):
                if pull_error_since is None:
                    pull_error_since = loop.time()
                left = self.image_pull_error_grace - (loop.time() - pull_error_since)
                if left <= 0:
                    raise _Unstartable(
                        pending_problem(pod, pm.CONTAINER_NAME, pull_errors=True)
                        or "Cannot pull the builder image."
                    )
                waits.append(left)
            else:
                pull_error_since = None
            if self.pending_timeout > 0:
                left = self.pending_timeout - (time.time() - created)
                if left <= 0:
                    raise _Unstartable(
                        pending_timeout_reason(pod, self.pending_timeout, pm.CONTAINER_NAME)
                    )
                waits.append(left)
            message = pending_message(pod)
            if message != last_message:
                last_message = message
                yield event(Phase.WAITING, message + "\n")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(waits) if waits else None)

    def _over(self, watcher: PodWatcher, name: str, pod_uid: str) -> bool:
        """The build container has ended (or the pod is gone): the watch knows
        the outcome, whatever the log stream is doing."""
        pod = watcher.current(name, pod_uid)
        return (
            pod is None
            or watcher.deleted(pod_uid) is not None
            or outcome(pod, pm.CONTAINER_NAME) is not None
        )

    async def _race_log(
        self,
        api: PodAPI,
        watcher: PodWatcher,
        name: str,
        pod_uid: str,
        tail: int | None,
    ) -> AsyncIterator[str]:
        """The log, followed until it ends or, once the watch says the
        container ended, for at most ``log_end_grace`` more seconds; then the
        follow is cancelled and the rest is read once without following.

        The log never decides the outcome: a half-open stream cannot hold a
        finished build, and a stream that breaks while the container runs is
        resumed (``_log_lines``)."""
        loop = asyncio.get_running_loop()
        position = _LogPosition()
        queue: asyncio.Queue[str | _EndOfLog] = asyncio.Queue()
        reader = asyncio.create_task(
            _pump(self._log_lines(api, watcher, name, pod_uid, tail, position), queue),
            name=f"log of build pod {name}",
        )
        try:
            grace_until: float | None = None
            while True:
                item: str | _EndOfLog | None = None
                if not queue.empty():
                    item = queue.get_nowait()
                else:
                    changed = watcher.changed
                    if grace_until is None and self._over(watcher, name, pod_uid):
                        grace_until = loop.time() + self.log_end_grace
                    timeout = None if grace_until is None else grace_until - loop.time()
                    if timeout is not None and timeout <= 0:
                        self.log.info(
                            "Build pod %s ended but its log did not; reading the rest once", name
                        )
                        break
                    getter = asyncio.ensure_future(queue.get())
                    waiters: set[asyncio.Future[Any]] = {getter}
                    if grace_until is None:
                        waiters.add(asyncio.ensure_future(changed.wait()))
                    try:
                        done, _ = await asyncio.wait(
                            waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                        )
                    finally:
                        for waiter in waiters:
                            if not waiter.done():
                                waiter.cancel()
                    if getter in done:
                        item = getter.result()
                if item is None:
                    continue
                if isinstance(item, _EndOfLog):
                    if item.error is None:
                        return
                    if self._over(watcher, name, pod_uid):
                        break  # the verdict is known: finish the log below
                    raise item.error
                yield item
        finally:
            if not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
        # The outcome is known and the follow was given up: lines read but not
        # delivered yet, then the rest of the log from one read.
        while not queue.empty():
            item = queue.get_nowait()
            if isinstance(item, str):
                yield item
        kwargs: dict[str, Any] = {}
        since = position.since_seconds()
        if since is not None:
            kwargs["since_seconds"] = since
        elif tail is not None:
            kwargs["tail_lines"] = tail
        try:
            async for line in self._read_log(
                api, name, kwargs, position, position.snapshot(), follow=False
            ):
                yield line
        except BuildBackendError as exc:
            self.log.warning("Could not read the end of build pod %s's log: %s", name, exc)

    async def _final_state(
        self, api: PodAPI, watcher: PodWatcher, name: str, pod_uid: str
    ) -> dict[str, Any] | None:
        """The pod once its outcome is known; None when it vanished without one."""
        await watcher.wait_for(
            functools.partial(self._over, watcher, name, pod_uid), timeout=self.log_end_grace
        )
        pod = watcher.current(name, pod_uid)
        if pod is not None and outcome(pod, pm.CONTAINER_NAME) is not None:
            return pod
        # The watch has nothing conclusive (it may be reconnecting): ask once.
        fresh = await api.read_pod(self.namespace, name)
        if fresh is not None and uid(fresh) == pod_uid:
            return fresh
        return pod if pod is not None and watcher.deleted(pod_uid) is not None else None

    async def _log_lines(
        self,
        api: PodAPI,
        watcher: PodWatcher,
        name: str,
        pod_uid: str,
        tail: int | None,
        position: _LogPosition,
    ) -> AsyncIterator[str]:
        """The container's log lines, followed and resumed across broken or
        stalled streams.

        Lines are requested with kubelet timestamps. After a break the log is
        requested again from a little before the last line seen, and lines up
        to and including that one are skipped: its timestamp (to the
        nanosecond) and how many lines carried it mark the position.

        A stream that sends nothing for ``log_read_timeout`` is requested
        again at once and never counts as a failure: it opened fine and may
        just be quiet. Streams that break or cannot be opened count towards
        ``log_resume_attempts``.
        """
        failures = 0
        first = True
        while True:
            kwargs: dict[str, Any] = {}
            if first and tail is not None:
                kwargs["tail_lines"] = tail
            elif not first and position.last is not None:
                kwargs["since_seconds"] = position.since_seconds()
            skip = None if first else position.snapshot()
            first = False
            error: BuildBackendError | None = None
            try:
                async for text in self._read_log(api, name, kwargs, position, skip, follow=True):
                    failures = 0
                    yield text
            except StreamStalled as exc:
                if self._over(watcher, name, pod_uid):
                    # Lines may be missing after a half-open stream: the
                    # caller reads the rest once, without following.
                    raise
                self.log.info(
                    "Log stream of build pod %s went quiet (%s); reading again", name, exc
                )
                failures = 0
                continue
            except BuildBackendError as exc:
                error = exc

            # The stream ended. Over if the container ended (or the pod went).
            if await watcher.wait_for(
                functools.partial(self._over, watcher, name, pod_uid), timeout=self.log_end_grace
            ):
                return
            failures += 1
            if failures > self.log_resume_attempts:
                why = f": {error}" if error else ""
                pod = watcher.current(name, pod_uid) or {}
                if phase(pod) == "Unknown":
                    node = (pod.get("spec") or {}).get("nodeName") or "its node"
                    raise BuildBackendError(
                        f"The node of build pod {name} ({node}) stopped reporting (phase "
                        f"Unknown) and its log cannot be read{why}. The pod is kept: it "
                        "may still finish if the node comes back."
                    )
                raise BuildBackendError(f"Lost the log stream of build pod {name}{why}")
            self.log.info("Log stream of build pod %s ended early (%s); resuming", name, error)
            await asyncio.sleep(min(self.log_resume_delay * 2.0 ** (failures - 1), 10.0))

    async def _read_log(
        self,
        api: PodAPI,
        name: str,
        kwargs: dict[str, Any],
        position: _LogPosition,
        skip: tuple[tuple[int, int] | None, int] | None,
        *,
        follow: bool,
    ) -> AsyncIterator[str]:
        """One log request; lines up to ``skip`` (timestamp, count at it) are
        dropped, ``position`` advances with every line delivered."""
        resume_from, to_skip = skip if skip is not None else (None, 0)
        async for raw in api.pod_log_lines(
            self.namespace,
            name,
            container=pm.CONTAINER_NAME,
            follow=follow,
            timestamps=True,
            read_timeout=self.log_read_timeout,
            **kwargs,
        ):
            stamp, text = _split_timestamp(raw)
            if stamp is not None:
                if resume_from is not None:
                    if stamp < resume_from:
                        continue
                    if stamp == resume_from and to_skip > 0:
                        to_skip -= 1
                        continue
                    resume_from = None
                position.advance(stamp)
            yield text

    async def _delete_quietly(self, api: PodAPI, name: str, pod_uid: str, *, why: str) -> None:
        try:
            deleted = await api.delete_pod(self.namespace, name, uid=pod_uid)
        except BuildBackendError as exc:
            self.log.warning("Could not delete build pod %s (%s): %s", name, why, exc)
            return
        if deleted:
            self.log.info("Deleted build pod %s (%s)", name, why)

    # --- sticky builds ---------------------------------------------------------------

    async def _preferred_node(self, key: str) -> str | None:
        nodes = await self.builder_nodes()
        ranked = pm.rendezvous_rank(nodes, key)
        return ranked[0] if ranked else None

    async def builder_nodes(self) -> list[str]:
        """Nodes whose builder DaemonSet pod is running and ready (cached briefly).

        Failures only cost the stickiness, never the build."""
        expires, nodes = self._sticky_nodes
        if time.monotonic() < expires:
            return nodes
        api, _ = self._parts()
        try:
            pods, _version = await api.list_pods(self.namespace, self.builder_daemon_selector)
        except BuildBackendError as exc:
            self.log.warning("Cannot list builder daemon pods for sticky builds: %s", exc)
            return nodes
        nodes = sorted(
            {
                str(p.get("spec", {}).get("nodeName"))
                for p in pods
                if p.get("spec", {}).get("nodeName") and _is_ready(p)
            }
        )
        self._sticky_nodes = (time.monotonic() + self.sticky_nodes_ttl, nodes)
        return nodes

    # --- cleanup ------------------------------------------------------------------

    async def _cleanup_loop(self) -> None:
        while True:
            await asyncio.sleep(self.build_cleanup_interval)
            if self.adopt_orphaned_pods:
                await self._adopt_quietly()
            try:
                await self.cleanup_once()
            except Exception:
                self.log.exception("Build pod cleanup failed")

    # --- pods whose creator went away ------------------------------------------------

    async def _adopt_quietly(self) -> None:
        try:
            await self.adopt_orphans()
        except asyncio.CancelledError:
            raise
        except Exception:
            self.log.exception("Adopting orphaned build pods failed")

    async def adopt_orphans(self) -> list[str]:
        """Adopt the build pods whose owner is gone; returns their names.

        An owner is gone when its pod no longer exists or is being deleted,
        or when it names this replica's pod with another process id (this
        container restarted). Pods with no owner annotation (made by an
        older version) count as orphans too. Pods this process builds,
        follows or adopted already are left alone. When the owner's pod
        cannot be read (e.g. RBAC in another namespace) nothing is done.

        Several replicas may adopt the same pod; each follows it, the deletes
        carry the pod's uid, so that costs only a log stream.
        """
        if self._shutting_down:
            return []
        api, watcher = self._parts()
        alive: dict[str, bool] = {}
        taken: list[str] = []
        for name, pod in list(watcher.pods.items()):
            if name in self.adopting or self._following.get(name) or is_terminating(pod):
                continue
            owner = str(
                ((pod.get("metadata") or {}).get("annotations") or {}).get(pm.ANNOTATION_OWNER)
                or ""
            )
            if owner == self.owner:
                continue
            if owner not in alive:
                alive[owner] = await self._owner_alive(api, owner)
            if alive[owner]:
                continue
            self.log.info("Adopting build pod %s (its owner %s is gone)", name, owner or "unknown")
            self.adopting[name] = asyncio.create_task(
                self._adopt(api, watcher, name, pod), name=f"adopted build pod {name}"
            )
            taken.append(name)
        return taken

    async def _owner_alive(self, api: PodAPI, owner: str) -> bool:
        namespace, _, rest = owner.partition("/")
        pod_name, _, instance = rest.partition("/")
        if not namespace or not pod_name:
            return False  # no owner recorded
        if namespace == self.replica_namespace and pod_name == self.replica_name:
            # This pod: alive only if it is this very process.
            return instance == self.instance_id
        try:
            pod = await api.read_pod(namespace, pod_name)
        except BuildBackendError as exc:
            self.log.debug("Cannot tell whether %s is alive: %s", owner, exc)
            return True
        return pod is not None and not is_terminating(pod)

    async def _adopt(
        self, api: PodAPI, watcher: PodWatcher, name: str, pod: dict[str, Any]
    ) -> None:
        """Follow an orphaned pod to its end as its new owner: record how it
        ended and delete it."""
        pod_uid = uid(pod)
        ended = FollowEnd.ABANDONED
        result, reason = "abandoned", ""
        events: list[ProgressEvent] = []
        try:
            async for ev in self._follow(api, watcher, name, pod_uid, pod, self.log_tail_lines):
                if len(events) < _ADOPTED_EVENTS_KEPT:
                    events.append(ev)
            ended, result = FollowEnd.FINISHED, "succeeded"
        except BuildFailed as exc:
            ended, result, reason = FollowEnd.FINISHED, "failed", str(exc)
        except _Unstartable as exc:
            ended, result, reason = FollowEnd.UNSTARTABLE, "unstartable", str(exc)
        except BuildBackendError as exc:
            reason = str(exc)
        except asyncio.CancelledError:
            ended = FollowEnd.STOPPED
            raise
        finally:
            self.adopting.pop(name, None)
            # Adopted pods are never deleted for a shutdown (STOPPED): the
            # next replica adopts them again.
            if ended in (FollowEnd.FINISHED, FollowEnd.UNSTARTABLE):
                await self._delete_quietly(api, name, pod_uid, why=f"adopted, {result}")
        last = watcher.current(name, pod_uid) or pod
        self._record_adopted(name, last, result, reason, events)

    def _record_adopted(
        self,
        name: str,
        pod: Mapping[str, Any],
        result: str,
        reason: str,
        events: Sequence[ProgressEvent] = (),
    ) -> None:
        """Remember how an adopted pod ended, tell the on_adopted hooks and,
        once it has an outcome, the on_external_build hooks (build history)."""
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        adopted = AdoptedBuild(
            name=name,
            image=str(annotations.get(pm.ANNOTATION_IMAGE) or ""),
            repo_url=str(annotations.get(pm.ANNOTATION_REPO) or ""),
            ref=str(annotations.get(pm.ANNOTATION_REF) or ""),
            outcome=result,
            reason=self.resources.scrubber.scrub(reason),
            finished=time.time(),
        )
        self.adopted[name] = adopted
        self.adopted.move_to_end(name)
        while len(self.adopted) > _ADOPTED_KEPT:
            self.adopted.popitem(last=False)
        self.log.info(
            "Adopted build pod %s (%s) ended: %s%s",
            name,
            adopted.image,
            result,
            f": {adopted.reason}" if adopted.reason else "",
        )
        for hook in list(self.on_adopted):
            try:
                hook(adopted)
            except Exception:
                self.log.exception("on_adopted hook failed")
        if result == "abandoned":
            return  # no outcome yet: the pod is adopted again later
        external = self._external_build(pod, adopted, events)
        for external_hook in self.resources.on_external_build:
            try:
                external_hook(external)
            except Exception:
                self.log.exception("on_external_build hook failed")

    def _external_build(
        self, pod: Mapping[str, Any], adopted: AdoptedBuild, events: Sequence[ProgressEvent]
    ) -> ExternalBuild:
        """An adopted pod's build as the BuildManager would have recorded it:
        its log and a final event, named by the pod's annotations."""
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        succeeded = adopted.outcome == "succeeded"
        error: BuildBackendError | BuildFailed | None = None
        if adopted.outcome == "failed":
            error = BuildFailed(adopted.reason)
        elif not succeeded:
            error = BuildBackendError(adopted.reason)
        if error is None:
            final = event(Phase.BUILT, "Built image.\n", imageName=adopted.image)
        else:
            final = event(Phase.FAILED, f"Build failed: {error.message}\n")
        created = created_at(pod)
        started = parse_timestamp(str((pod.get("status") or {}).get("startTime") or ""))
        pod_uid = uid(pod) or adopted.name
        return ExternalBuild(
            # Stable per pod: replicas that adopt the same pod make one record.
            id=hashlib.sha256(f"adopted:{pod_uid}".encode()).hexdigest()[:16],
            ref=pm.ref_from_annotations(annotations),
            image=adopted.image,
            build_name=adopted.name,
            succeeded=succeeded,
            failure=None if error is None else error.message,
            failure_type=None if error is None else error_code(error),
            created=created if created is not None else adopted.finished,
            started=float(started[0]) if started is not None else None,
            finished=adopted.finished,
            events=(*events, final),
        )

    async def cleanup_once(self, now: float | None = None) -> list[str]:
        """Delete finished pods older than finished_pod_max_age and any pod older
        than build_max_age; returns the names deleted."""
        api, watcher = self._parts()
        now = time.time() if now is None else now
        deleted: list[str] = []
        for name, pod in list(watcher.pods.items()):
            if is_terminating(pod):
                continue
            if is_finished(pod):
                ended = finished_at(pod, pm.CONTAINER_NAME)
                if ended is None or now - ended < self.finished_pod_max_age:
                    continue
                why = f"finished ({phase(pod)})"
            else:
                created = created_at(pod)
                if created is None or now - created < self.build_max_age:
                    continue
                why = f"older than {self.build_max_age:g} s"
            try:
                if await api.delete_pod(self.namespace, name, uid=uid(pod)):
                    self.log.info("Cleanup: deleted build pod %s, %s", name, why)
                    deleted.append(name)
            except BuildBackendError as exc:
                self.log.warning("Cleanup: could not delete build pod %s: %s", name, exc)
        return deleted


def _should_delete(ended: FollowEnd, *, owner: bool, shutting_down: bool) -> bool:
    """Who removes a build pod when following it ends.

    Its owner (the process that created or adopted it) once it is over, and
    when the owner's build is cancelled (its clients left, or a timeout),
    unless the service is shutting down and the build should outlive it.
    Anyone when it can never start. A replica that only follows someone
    else's build never deletes it on cancel: that stops only its own
    following, and the owner's build (and its other clients) carry on.
    ABANDONED (the API failed under us) keeps it: it may still finish and
    push, and the sweep removes it later.
    """
    if ended is FollowEnd.UNSTARTABLE:
        return True
    if not owner:
        return False
    return ended is FollowEnd.FINISHED or (ended is FollowEnd.STOPPED and not shutting_down)


async def _pump(lines: AsyncIterator[str], queue: asyncio.Queue[str | _EndOfLog]) -> None:
    """Move log lines into ``queue``, then one ``_EndOfLog`` (with the error
    that ended the log, if any)."""
    try:
        async for line in lines:
            queue.put_nowait(line)
    except BuildBackendError as exc:
        queue.put_nowait(_EndOfLog(exc))
        return
    except Exception as exc:  # a bug must still end the build, with a reason
        queue.put_nowait(_EndOfLog(BuildBackendError(f"Reading the build log failed: {exc!r}")))
        return
    queue.put_nowait(_EndOfLog())


def _gone(watcher: PodWatcher, name: str, old_uid: str) -> bool:
    if watcher.deleted(old_uid) is not None:
        return True
    pod = watcher.get(name)
    return pod is not None and uid(pod) != old_uid


def _container_started(pod: Mapping[str, Any]) -> bool:
    state = container_status(pod, pm.CONTAINER_NAME).get("state") or {}
    return "running" in state or "terminated" in state


def _container_ran(pod: Mapping[str, Any]) -> bool:
    """The container has a log to read (it ran, perhaps before being killed)."""
    status = container_status(pod, pm.CONTAINER_NAME)
    last = status.get("lastState") or {}
    return bool(status.get("containerID")) or "terminated" in last


def _is_ready(pod: Mapping[str, Any]) -> bool:
    if phase(pod) != "Running" or is_terminating(pod):
        return False
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    return False


def _split_timestamp(raw: str) -> tuple[tuple[int, int] | None, str]:
    """'2024-05-01T10:00:00.5Z text' -> ((seconds, nanos), 'text')."""
    head, sep, rest = raw.partition(" ")
    stamp = parse_timestamp(head) if sep or head else None
    if stamp is None:
        return None, raw
    return stamp, rest
