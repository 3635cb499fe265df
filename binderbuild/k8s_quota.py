"""Count running user servers on Kubernetes from a watch-backed cache.

The launch quota (``binderbuild.quota``) asks before every launch how many
servers run in total and for one repository. BinderHub listed every user
pod on each launch; here one ``PodWatcher`` keeps the hub's user pods in
memory and ``count`` is a dictionary walk, so a launch storm costs the API
server nothing.

The interface the quota code relies on (``binderbuild.quota.ServerCounter``)::

    count(repo_url: str | None = None, exclude: frozenset[str] = frozenset()) -> int
    supports_exclude = True

``count()`` is every user server that is not finished (pending, running or
unknown phase, and not being deleted); ``count(repo_url)`` only those
launched from that repository; ``exclude`` names servers ("user/server", as
KubeSpawner's ``hub.jupyter.org/username`` and ``hub.jupyter.org/servername``
pod annotations give them) not to count. It is synchronous and never
blocks; call
``await cache.start()`` once at startup: it returns after the first listing,
so counts are never made from an empty cache. If the watch later breaks,
counts come from the last known state while it reconnects (``stale`` says
so).

Which repository a pod runs: the pod annotation ``repo_url_annotation``
(set it from the spawner, see docs/kubernetes.md), else the
``BINDER_REPO_URL`` environment variable that BinderHub-style spawner mixins
put into the notebook container.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from traitlets import Float, Integer, Unicode, default
from traitlets.config import LoggingConfigurable

from binderbuild.k8s_api import PodAPI, close_core_api, current_namespace, make_core_api
from binderbuild.k8s_status import is_finished, is_terminating
from binderbuild.k8s_watch import PodWatcher

REPO_URL_ENV = "BINDER_REPO_URL"


def pod_repo_url(pod: Mapping[str, Any], annotation: str) -> str:
    """The repository a user pod was launched from, or ''."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    if annotations.get(annotation):
        return str(annotations[annotation])
    for container in (pod.get("spec") or {}).get("containers") or []:
        for var in container.get("env") or []:
            if var.get("name") == REPO_URL_ENV and var.get("value"):
                return str(var["value"])
    return ""


def pod_server_name(pod: Mapping[str, Any]) -> str:
    """ "user/server" of a KubeSpawner pod (its unescaped annotations), or ''."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    user = annotations.get("hub.jupyter.org/username")
    if not user:
        return ""
    return f"{user}/{annotations.get('hub.jupyter.org/servername') or ''}"


def counts_as_running(pod: Mapping[str, Any]) -> bool:
    return not is_finished(pod) and not is_terminating(pod)


class PodCountCache(LoggingConfigurable):
    """Counts of the hub's user pods, kept current by one watch."""

    namespace = Unicode(
        config=True,
        help="Namespace of the hub's user pods. Default: the namespace binderbuild runs in.",
    )
    label_selector = Unicode(
        "component=singleuser-server",
        config=True,
        help="Label selector of user server pods (KubeSpawner and Zero to JupyterHub label "
        "them component=singleuser-server).",
    )
    repo_url_annotation = Unicode(
        "binderbuild/repo-url",
        config=True,
        help="Pod annotation that names the repository a server was launched from; pods "
        "without it are matched by their BINDER_REPO_URL environment variable.",
    )
    kubeconfig = Unicode(
        "",
        config=True,
        help="Path of a kubeconfig file. Empty: the in-cluster service account, else "
        "$KUBECONFIG or ~/.kube/config.",
    )
    request_timeout = Float(
        30.0, config=True, help="Seconds before a Kubernetes API request fails."
    )
    watch_timeout = Integer(300, config=True, help="Server-side timeout of one pod watch request.")
    startup_timeout = Float(30.0, config=True, help="Seconds to wait for the first listing.")

    @default("namespace")
    def _default_namespace(self) -> str:
        return current_namespace()

    def __init__(self, *, k8s_api: Any = None, **kwargs: Any) -> None:
        """``k8s_api``: a ``CoreV1Api``-like object; default: made at ``start``."""
        super().__init__(**kwargs)
        self._core = k8s_api
        self._owns_core = k8s_api is None
        self._watcher: PodWatcher | None = None

    async def start(self) -> None:
        """Start the watch; returns once the first listing is in the cache."""
        if self._watcher is None:
            if self._core is None:
                self._core = await make_core_api(self.kubeconfig or None)
            api = PodAPI(self._core, request_timeout=self.request_timeout)
            self._watcher = PodWatcher(
                api, self.namespace, self.label_selector, watch_timeout=self.watch_timeout
            )
            self._watcher.start()
        await self._watcher.wait_ready(self.startup_timeout)

    async def close(self) -> None:
        if self._watcher is not None:
            await self._watcher.stop()
            self._watcher = None
        if self._owns_core and self._core is not None:
            await close_core_api(self._core)
            self._core = None

    @property
    def ready(self) -> bool:
        return self._watcher is not None and self._watcher.ready

    @property
    def stale(self) -> bool:
        """The watch is reconnecting: counts are from the last known state."""
        return self._watcher is None or self._watcher.failing_since is not None

    # binderbuild.quota: count() takes ``exclude``.
    supports_exclude = True

    def count(self, repo_url: str | None = None, exclude: frozenset[str] = frozenset()) -> int:
        """Servers that are not finished; only those of ``repo_url`` when given;
        never those whose "user/server" name is in ``exclude``."""
        if self._watcher is None:
            raise RuntimeError("PodCountCache.count() called before start()")
        total = 0
        for pod in self._watcher.pods.values():
            if not counts_as_running(pod):
                continue
            if repo_url is not None and pod_repo_url(pod, self.repo_url_annotation) != repo_url:
                continue
            if exclude and pod_server_name(pod) in exclude:
                continue
            total += 1
        return total
