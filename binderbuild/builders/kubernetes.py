"""Build in Kubernetes pods: one build pod per image, shared by every replica.

How one ``build(job)`` goes:

1. **Create or attach.** The pod is named by the job's build name, so
   creating it is a cluster-wide lock: 201 means this process owns the
   build; 409 AlreadyExists means another replica (or this service before a
   restart) already runs it, and this process follows that pod instead,
   starting from the last ``log_tail_lines`` lines of its log. A leftover
   pod that failed or is being deleted is removed and created afresh; one
   that just succeeded is followed (its image has just been pushed).
2. **Wait for it to start**, from the process-wide watch (``PodWatcher``):
   one list+watch of all build pods per process, never one per request.
   Scheduling news becomes ``waiting`` events; a pod that can never start
   (builder image cannot be pulled, push Secret missing) ends the build at
   once instead of waiting for the deadline.
3. **Stream its log.** One log reader per build per process; the
   ``BuildManager`` fans its events out to every client. Lines are
   repo2docker's JSON logs, read by ``r2d_log.R2dLogReader`` as the local
   backend reads its subprocess's output.
   If the stream breaks while the container still runs, it is resumed from
   the last timestamp seen, skipping lines already delivered.
4. **Read the outcome from the pod status**: success returns; a failure
   raises ``BuildFailed`` with the reason from the status (out of memory,
   evicted, deadline exceeded, exit code) plus repo2docker's own failure
   message (``r2d_log.status_failure``).

Cleanup: the creating process deletes its pod when the build ends (and when
its build is cancelled); a sweep in every replica deletes finished pods
after ``finished_pod_max_age`` (pods whose creator went away) and any pod
older than ``build_max_age``. Deletions carry the pod's uid as a
precondition, so a late cleanup never removes the next build of the same
image.

Service restarts: at shutdown the app awaits ``begin_shutdown()`` before it
cancels its builds, so cancelled builds leave their pods running. After the
restart a client asking for the same image gets 409 and re-attaches.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from traitlets import Bool, CaselessStrEnum, Dict, Float, Integer, List, Unicode, default, validate

from binderbuild import __version__
from binderbuild.builders import pod_manifests as pm
from binderbuild.builders.base import Builder, BuildResources
from binderbuild.builders.r2d_log import R2dLogReader, status_failure
from binderbuild.errors import BuildBackendError, BuildFailed
from binderbuild.events import Phase, ProgressEvent, event
from binderbuild.k8s_api import PodAPI, close_core_api, current_namespace, make_core_api
from binderbuild.k8s_status import (
    container_status,
    created_at,
    failure_reason,
    finished_at,
    is_finished,
    is_terminating,
    outcome,
    parse_timestamp,
    pending_message,
    pending_problem,
    phase,
    uid,
)
from binderbuild.k8s_watch import PodWatcher
from binderbuild.models import BuildJob

DEFAULT_SOCKET = "/var/run/binderbuild-dind/docker.sock"


class _Unstartable(Exception):
    """The pod can never start; carries the reason."""


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
        "engine), as built from images/builder/Dockerfile.",
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
        DEFAULT_SOCKET,
        config=True,
        help="Path *on the node* of the Docker socket that builds use: the socket of the "
        "builder DaemonSet (its own directory, mounted into build pods). Never the "
        "node's own /var/run/docker.sock unless you accept that builds control every "
        "container on the node. A unix:// prefix is accepted.",
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
        help="sizeLimit of the build pod's /tmp emptyDir (the repository checkout).",
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
    build_pod_uid = Integer(1000, config=True, help="UID (and GID) the builder container runs as.")
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
    request_timeout = Float(
        30.0, config=True, help="Seconds before a Kubernetes API request fails."
    )
    watch_timeout = Integer(300, config=True, help="Server-side timeout of one pod watch request.")
    startup_timeout = Float(
        30.0, config=True, help="Seconds to wait for the first listing of build pods."
    )

    @default("build_namespace")
    def _default_namespace(self) -> str:
        return current_namespace()

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
            python=self.build_python,
            user_id=self.user_id,
            user_name=self.user_name,
            extra_args=tuple(self.extra_args),
            extra_env=dict(self.extra_env),
            extra_labels=dict(self.build_pod_labels),
            extra_annotations=dict(self.build_pod_annotations),
        )

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
                self._api = PodAPI(self._core, request_timeout=self.request_timeout)
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
            self._started = True

    async def begin_shutdown(self) -> None:
        """From now on, cancelled builds leave their pods running, so the next
        instance of the service can re-attach to them."""
        self._shutting_down = True

    async def close(self) -> None:
        self._shutting_down = True
        task, self._cleanup_task = self._cleanup_task, None
        if task is not None:
            task.cancel()
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
        await self.start()
        api, watcher = self._parts()
        name = job.image.build_name
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
            # Who removes the pod: its creator once it is over; anyone when it
            # can never start; anyone who stops (cancels) it, unless the
            # service is shutting down and the build should outlive it.
            # ABANDONED (the API failed under us) keeps it: it may still
            # finish and push, and the sweep removes it later.
            if (
                (ended is FollowEnd.FINISHED and owner)
                or ended is FollowEnd.UNSTARTABLE
                or (ended is FollowEnd.STOPPED and not self._shutting_down)
            ):
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
                    functools.partial(_gone, watcher, name, old), timeout=60.0
                ):
                    raise BuildBackendError(f"Old build pod {name} was not deleted within 60 s.")
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
        last_message = ""
        while True:
            changed = watcher.changed
            pod = watcher.current(name, pod_uid) or pod
            if outcome(pod, pm.CONTAINER_NAME) is not None or _container_started(pod):
                break
            if watcher.deleted(pod_uid) is not None:
                raise BuildFailed("The build pod was deleted before it started.")
            problem = pending_problem(pod, pm.CONTAINER_NAME)
            if problem is not None:
                raise _Unstartable(problem)
            message = pending_message(pod)
            if message != last_message:
                last_message = message
                yield event(Phase.WAITING, message + "\n")
            await changed.wait()

        # 2. The log, if the container ever ran.
        log = R2dLogReader(self.resources.scrubber)
        if _container_started(pod) or _container_ran(pod):
            async for line in self._log_lines(api, watcher, name, pod_uid, tail):
                yield log.read(line)

        # 3. The verdict, from the pod status.
        final = await self._final_state(api, watcher, name, pod_uid)
        result = outcome(final, pm.CONTAINER_NAME) if final is not None else None
        if result is True:
            return
        if result is None or final is None:
            raise BuildFailed("The build pod was deleted before the build finished.")
        raise status_failure(failure_reason(final, pm.CONTAINER_NAME), log)

    async def _final_state(
        self, api: PodAPI, watcher: PodWatcher, name: str, pod_uid: str
    ) -> dict[str, Any] | None:
        """The pod once its outcome is known; None when it vanished without one."""

        def known() -> bool:
            pod = watcher.current(name, pod_uid)
            return (
                pod is None
                or watcher.deleted(pod_uid) is not None
                or outcome(pod, pm.CONTAINER_NAME) is not None
            )

        await watcher.wait_for(known, timeout=self.log_end_grace)
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
    ) -> AsyncIterator[str]:
        """The container's log lines, resumed across broken streams.

        Lines are requested with kubelet timestamps. After a break the log is
        requested again from a little before the last line seen, and lines up
        to and including that one are skipped: its timestamp (to the
        nanosecond) and how many lines carried it mark the position.
        """
        last: tuple[int, int] | None = None
        at_last = 0  # lines delivered that carry the timestamp `last`
        failures = 0
        first = True
        while True:
            kwargs: dict[str, Any] = {}
            if first and tail is not None:
                kwargs["tail_lines"] = tail
            elif not first and last is not None:
                # Wall clocks of node and service differ a little; the overlap
                # is removed below, so err on the early side.
                kwargs["since_seconds"] = max(1, int(time.time() - last[0]) + 30)
            resume_from, to_skip = (None, 0) if first else (last, at_last)
            first = False
            error: Exception | None = None
            try:
                async for raw in api.pod_log_lines(
                    self.namespace, name, container=pm.CONTAINER_NAME, timestamps=True, **kwargs
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
                        if stamp == last:
                            at_last += 1
                        else:
                            last, at_last = stamp, 1
                    failures = 0
                    yield text
            except BuildBackendError as exc:
                error = exc

            # The stream ended. Over if the container ended (or the pod went).
            def over() -> bool:
                pod = watcher.current(name, pod_uid)
                return (
                    pod is None
                    or watcher.deleted(pod_uid) is not None
                    or outcome(pod, pm.CONTAINER_NAME) is not None
                )

            if await watcher.wait_for(over, timeout=self.log_end_grace):
                return
            failures += 1
            if failures > self.log_resume_attempts:
                why = f": {error}" if error else ""
                raise BuildBackendError(f"Lost the log stream of build pod {name}{why}")
            self.log.info("Log stream of build pod %s ended early (%s); resuming", name, error)
            await asyncio.sleep(min(self.log_resume_delay * 2.0 ** (failures - 1), 10.0))

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
            try:
                await self.cleanup_once()
            except Exception:
                self.log.exception("Build pod cleanup failed")

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
