"""An in-memory stand-in for ``kubernetes_asyncio``'s ``CoreV1Api``.

It implements the five methods binderbuild calls, with the same names and
arguments, and answers the way the API server does when called with
``_preload_content=False``: an aiohttp-like response (``status``,
``read()``, ``content.readany()``, ``close()``) whose body is the API's JSON,
streamed line by line for watches and followed logs. Pods only change when a
test says so (``schedule``, ``start``, ``log``, ``finish``, ``evict`` ...),
like a kubelet that takes orders. Connections misbehave when a test says so
too: ``break_logs`` resets them, ``stall_logs`` leaves them half-open (open,
but nothing more arrives, not even their end).

What a real API server does and a naive fake would not, each from the
Kubernetes API conventions
(https://github.com/kubernetes/community/blob/master/contributors/devel/sig-architecture/api-conventions.md,
"the conventions" below) or the API concepts and pod lifecycle pages it
points to:

* errors are ``Status`` objects with ``code``, ``reason`` and ``message``
  (conventions, "Response Status Kind");
* ``answer`` makes the next calls fail with 429 TooManyRequests, 500
  InternalError, 503 or 504 ServerTimeout, with a ``Retry-After`` header and
  ``details.retryAfterSeconds`` (conventions, "HTTP Status codes": 429 "Read
  the Retry-After HTTP header ... and wait at least that long before
  retrying", 500/503/504 "retry with exponential backoff"; "Response Status
  Kind": Timeout and ServerTimeout "should set the Retry-After HTTP header").
  With ``commit=True`` the write happens before the error, as it may for a
  500 whose "outcome of the call is unknown";
* ``reject_creates`` refuses new pods as admission does: 403 Forbidden
  (quota, PodSecurity, a webhook) or 422 Invalid with ``details.causes``
  (conventions, "HTTP Status codes" and the ``Invalid`` reason: "Do not
  retry. Fix the request.");
* watches send BOOKMARK events when asked (``bookmark``): an object of the
  watched kind carrying only its ``resourceVersion`` (API concepts, "Watch
  bookmarks");
* deletes are graceful: a pod on a node with a grace period, or with
  finalizers, stays with ``deletionTimestamp`` (and
  ``deletionGracePeriodSeconds``) set until the kubelet has stopped it and
  every finalizer is gone (conventions, "Metadata": deletionTimestamp "...
  except when the object has a finalizer set"); unscheduled and finished
  pods go at once, as the pod registry does;
* a pod's phase may be ``Unknown`` (its node stopped reporting; log reads
  then fail with 500, the API server cannot reach the kubelet), and may go
  from Pending straight to Succeeded or Failed when the container ran
  between two status reports (pod lifecycle, "Pod phase").

Several builders (replicas) may share one ``FakeCoreV1Api``: it is the
cluster.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

CONTAINER = "builder"


def rfc3339(seconds: float, nanos: int | None = None) -> str:
    """Go's RFC3339Nano: trailing zeros of the fraction trimmed."""
    whole = int(seconds)
    if nanos is None:
        nanos = int(round((seconds - whole) * 1e9))
    base = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    frac = f"{nanos:09d}".rstrip("0")
    return f"{base}.{frac}Z" if frac else f"{base}Z"


def matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


class FakeContent:
    """aiohttp's StreamReader, as much as binderbuild reads of it."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[bytes | BaseException] = asyncio.Queue()
        self.ended = False

    def feed(self, data: bytes) -> None:
        if not self.ended:
            self._queue.put_nowait(data)

    def end(self) -> None:
        if not self.ended:
            self._queue.put_nowait(b"")
            self.ended = True

    def fail(self, exc: BaseException) -> None:
        if not self.ended:
            self._queue.put_nowait(exc)
            self.ended = True

    async def readany(self) -> bytes:
        item = await self._queue.get()
        if isinstance(item, BaseException):
            raise item
        if item == b"":
            # Stay at EOF for later reads.
            self._queue.put_nowait(b"")
        return item


REASONS = {
    200: "OK",
    201: "Created",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

# The Status reason of each retryable code (conventions, "Response Status Kind").
RETRY_REASONS = {
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "ServerTimeout",
}


class FakeResponse:
    def __init__(
        self,
        status: int,
        body: Any = None,
        *,
        content: FakeContent | None = None,
        on_close: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.reason = REASONS.get(status, "")
        self._body = b"" if body is None else json.dumps(body).encode()
        self.headers: dict[str, str] = dict(headers or {})
        self.content = content or FakeContent()
        self._on_close = on_close
        self.closed = False

    async def read(self) -> bytes:
        return self._body

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self._on_close is not None:
                self._on_close()


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }


def pod_not_found(name: str) -> FakeResponse:
    return FakeResponse(404, status_body(404, "NotFound", f'pods "{name}" not found'))


@dataclass
class _Watch:
    namespace: str
    selector: str
    content: FakeContent
    bookmarks: bool = False


@dataclass
class _Answer:
    """An error the next call of a method gets instead of its answer."""

    status: int
    retry_after: str | None
    message: str
    commit: bool  # do the work first (a create or delete that happened anyway)

    def response(self) -> FakeResponse:
        body = status_body(self.status, RETRY_REASONS.get(self.status, "Forced"), self.message)
        headers: dict[str, str] = {}
        if self.retry_after is not None:
            headers["Retry-After"] = self.retry_after
            body["details"] = {"retryAfterSeconds": int(float(self.retry_after))}
        return FakeResponse(self.status, body, headers=headers)


@dataclass
class _LogStream:
    uid: str
    timestamps: bool
    content: FakeContent


@dataclass
class Call:
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)


class FakeCoreV1Api:
    def __init__(self) -> None:
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self._rv = itertools.count(1000)
        self.resource_version = 999
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []
        self.compacted_before = 0  # watches from an older version get 410
        self.watches: list[_Watch] = []
        self.logs: dict[str, list[tuple[str, str]]] = {}  # uid -> [(timestamp, text)]
        self.log_streams: list[_LogStream] = []
        self.stalled_streams: list[_LogStream] = []  # half-open: never fed nor ended
        self.calls: list[Call] = []
        self.fail_with: dict[str, BaseException] = {}  # method -> exception to raise once
        self.status_for: dict[str, int] = {}  # method -> HTTP status to answer once
        self.created_uids: list[str] = []
        self._log_clock: dict[str, int] = {}
        self.answers: dict[str, list[_Answer]] = {}  # method -> errors to answer next
        self.admission: FakeResponse | None = None  # answer to every create, if set

    # ------------------------------------------------------------ misbehaving

    def answer(
        self,
        method: str,
        status: int,
        *,
        retry_after: str | None = None,
        times: int = 1,
        commit: bool = False,
        message: str = "",
    ) -> None:
        """The next ``times`` calls of ``method`` answer ``status`` (429, 500,
        503, 504) with a Status body and, with ``retry_after``, the
        Retry-After header and details.retryAfterSeconds."""
        text = message or {
            429: "Too many requests, please try again later.",
            500: "Internal error occurred: etcdserver: leader changed",
            503: "the server is currently unable to handle the request",
            504: "Timeout: request did not complete within requested timeout",
        }.get(status, "forced by the test")
        queue = self.answers.setdefault(method, [])
        queue.extend(_Answer(status, retry_after, text, commit) for _ in range(times))

    def _forced(self, method: str) -> _Answer | None:
        queue = self.answers.get(method)
        return queue.pop(0) if queue else None

    def reject_creates(self, status: int, reason: str, message: str, **details: Any) -> None:
        """Admission refuses every new pod (until ``accept_creates``)."""
        body = status_body(status, reason, message)
        if details:
            body["details"] = details
        self.admission = FakeResponse(status, body)

    def accept_creates(self) -> None:
        self.admission = None

    # ------------------------------------------------------------ helpers

    def _record(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        assert kwargs.get("_preload_content") is False, f"{method} must not preload content"
        self.calls.append(Call(method, args, kwargs))
        if method in self.fail_with:
            raise self.fail_with.pop(method)

    def calls_to(self, method: str, **match: Any) -> list[Call]:
        return [
            c
            for c in self.calls
            if c.method == method and all(c.kwargs.get(k) == v for k, v in match.items())
        ]

    def _bump(self, namespace: str, kind: str, pod: dict[str, Any]) -> None:
        version = next(self._rv)
        self.resource_version = version
        pod.setdefault("metadata", {})["resourceVersion"] = str(version)
        snapshot = copy.deepcopy(pod)
        self.history.append((version, namespace, kind, snapshot))
        line = (json.dumps({"type": kind, "object": snapshot}) + "\n").encode()
        for watch in list(self.watches):
            labels = snapshot["metadata"].get("labels") or {}
            if watch.namespace == namespace and matches(labels, watch.selector):
                watch.content.feed(line)

    def pod(self, name: str, namespace: str = "ns") -> dict[str, Any]:
        return self.pods[(namespace, name)]

    def _change(self, name: str, namespace: str = "ns") -> dict[str, Any]:
        return self.pods[(namespace, name)]

    # ------------------------------------------------------------ API methods

    async def create_namespaced_pod(
        self, namespace: str, body: dict[str, Any], **kwargs: Any
    ) -> FakeResponse:
        self._record("create_namespaced_pod", (namespace, body), kwargs)
        forced = self._forced("create_namespaced_pod")
        if forced is not None and not forced.commit:
            return forced.response()
        if self.admission is not None:
            return FakeResponse(self.admission.status, json.loads(await self.admission.read()))
        name = body["metadata"]["name"]
        if (namespace, name) in self.pods:
            return FakeResponse(
                409, status_body(409, "AlreadyExists", f'pods "{name}" already exists')
            )
        pod = copy.deepcopy(body)
        pod_uid = str(uuid.uuid4())
        pod["metadata"].update(
            {
                "namespace": namespace,
                "uid": pod_uid,
                "creationTimestamp": rfc3339(int(time.time())),
            }
        )
        pod["status"] = {"phase": "Pending"}
        self.pods[(namespace, name)] = pod
        self.logs[pod_uid] = []
        self.created_uids.append(pod_uid)
        self._bump(namespace, "ADDED", pod)
        if forced is not None:
            return forced.response()  # created all the same
        return FakeResponse(201, pod)

    async def read_namespaced_pod(self, name: str, namespace: str, **kwargs: Any) -> FakeResponse:
        self._record("read_namespaced_pod", (name, namespace), kwargs)
        forced = self._forced("read_namespaced_pod")
        if forced is not None:
            return forced.response()
        pod = self.pods.get((namespace, name))
        if pod is None:
            return pod_not_found(name)
        return FakeResponse(200, pod)

    async def delete_namespaced_pod(self, name: str, namespace: str, **kwargs: Any) -> FakeResponse:
        self._record("delete_namespaced_pod", (name, namespace), kwargs)
        forced = self._forced("delete_namespaced_pod")
        if forced is not None and not forced.commit:
            return forced.response()
        pod = self.pods.get((namespace, name))
        if pod is None:
            return pod_not_found(name)
        options = kwargs.get("body") or {}
        wanted = (options.get("preconditions") or {}).get("uid")
        if wanted and wanted != pod["metadata"]["uid"]:
            return FakeResponse(409, status_body(409, "Conflict", "Precondition failed: UID"))
        meta = pod["metadata"]
        grace = options.get("gracePeriodSeconds", kwargs.get("grace_period_seconds"))
        if grace is None:
            grace = pod.get("spec", {}).get("terminationGracePeriodSeconds", 30)
        # The pod registry deletes unscheduled and finished pods at once,
        # whatever grace period was asked for.
        if not pod.get("spec", {}).get("nodeName") or pod["status"].get("phase") in (
            "Succeeded",
            "Failed",
        ):
            grace = 0
        if grace > 0 or meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                meta["deletionTimestamp"] = rfc3339(int(time.time() + grace))
                meta["deletionGracePeriodSeconds"] = int(grace)
                self._bump(namespace, "MODIFIED", pod)
            if grace <= 0:
                self._stop_containers(pod, namespace)
        else:
            self.remove(name, namespace)
        if forced is not None:
            return forced.response()
        return FakeResponse(200, pod)

    async def list_namespaced_pod(self, namespace: str, **kwargs: Any) -> FakeResponse:
        self._record("list_namespaced_pod", (namespace,), kwargs)
        forced = self.status_for.pop("list_namespaced_pod", None)
        if forced is not None:
            return FakeResponse(forced, status_body(forced, "Forced", "forced by the test"))
        answer = self._forced("watch" if kwargs.get("watch") else "list_namespaced_pod")
        if answer is not None:
            return answer.response()
        selector = kwargs.get("label_selector", "")
        if not kwargs.get("watch"):
            items = [
                copy.deepcopy(p)
                for (ns, _), p in self.pods.items()
                if ns == namespace and matches(p["metadata"].get("labels") or {}, selector)
            ]
            return FakeResponse(
                200,
                {
                    "kind": "PodList",
                    "items": items,
                    "metadata": {"resourceVersion": str(self.resource_version)},
                },
            )
        since = int(kwargs.get("resource_version") or 0)
        content = FakeContent()
        watch = _Watch(namespace, selector, content, bool(kwargs.get("allow_watch_bookmarks")))
        if since and since < self.compacted_before:
            gone = status_body(410, "Expired", "too old resource version")
            content.feed((json.dumps({"type": "ERROR", "object": gone}) + "\n").encode())
            content.end()
            return FakeResponse(200, content=content)
        for version, ns, kind, obj in self.history:
            labels = obj["metadata"].get("labels") or {}
            if version > since and ns == namespace and matches(labels, selector):
                content.feed((json.dumps({"type": kind, "object": obj}) + "\n").encode())
        self.watches.append(watch)

        def closed() -> None:
            if watch in self.watches:
                self.watches.remove(watch)

        return FakeResponse(200, content=content, on_close=closed)

    async def read_namespaced_pod_log(
        self, name: str, namespace: str, **kwargs: Any
    ) -> FakeResponse:
        self._record("read_namespaced_pod_log", (name, namespace), kwargs)
        forced = self.status_for.pop("read_namespaced_pod_log", None)
        if forced is not None:
            return FakeResponse(forced, status_body(forced, "Forced", "forced by the test"))
        answer = self._forced("read_namespaced_pod_log")
        if answer is not None:
            return answer.response()
        pod = self.pods.get((namespace, name))
        if pod is None:
            return pod_not_found(name)
        if pod["status"].get("phase") == "Unknown":
            # The API server proxies log reads to the kubelet, which is gone.
            node = pod.get("spec", {}).get("nodeName", "")
            return FakeResponse(
                500,
                status_body(
                    500,
                    "InternalError",
                    f'Get "https://{node}:10250/containerLogs/{namespace}/{name}/{CONTAINER}": '
                    "dial tcp 10.0.0.9:10250: i/o timeout",
                ),
            )
        state = self._container_state(pod)
        if "running" not in state and "terminated" not in state:
            return FakeResponse(
                400,
                status_body(
                    400,
                    "BadRequest",
                    f'container "{CONTAINER}" in pod "{name}" is waiting to start',
                ),
            )
        pod_uid = pod["metadata"]["uid"]
        lines = list(self.logs[pod_uid])
        since = kwargs.get("since_seconds")
        if since is not None:
            cutoff = time.time() - since
            lines = [(ts, text) for ts, text in lines if _seconds(ts) >= cutoff]
        tail = kwargs.get("tail_lines")
        if tail is not None:
            lines = lines[-tail:] if tail else []
        content = FakeContent()
        stamps = bool(kwargs.get("timestamps"))
        for ts, text in lines:
            content.feed(_log_line(ts, text, stamps))
        if kwargs.get("follow") and "terminated" not in state:
            stream = _LogStream(pod_uid, stamps, content)
            self.log_streams.append(stream)

            def closed() -> None:
                if stream in self.log_streams:
                    self.log_streams.remove(stream)

            return FakeResponse(200, content=content, on_close=closed)
        content.end()
        return FakeResponse(200, content=content)

    # ------------------------------------------------------------ the "kubelet"

    @staticmethod
    def _container_state(pod: dict[str, Any]) -> dict[str, Any]:
        for status in pod.get("status", {}).get("containerStatuses") or []:
            if status.get("name") == CONTAINER:
                return status.get("state") or {}
        return {}

    def add_pod(self, pod: dict[str, Any], namespace: str = "ns") -> dict[str, Any]:
        """Put a pod in the cluster as if someone else created it."""
        pod = copy.deepcopy(pod)
        meta = pod.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("namespace", namespace)
        meta.setdefault("creationTimestamp", rfc3339(int(time.time())))
        pod.setdefault("status", {"phase": "Pending"})
        self.pods[(namespace, meta["name"])] = pod
        self.logs.setdefault(meta["uid"], [])
        self._bump(namespace, "ADDED", pod)
        return pod

    def modify(self, name: str, namespace: str = "ns", **status: Any) -> None:
        pod = self.pods[(namespace, name)]
        pod["status"].update(status)
        self._bump(namespace, "MODIFIED", pod)

    def schedule(self, name: str, node: str = "node-1", namespace: str = "ns") -> None:
        pod = self.pods[(namespace, name)]
        pod["spec"]["nodeName"] = node
        pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "True"}]
        self._bump(namespace, "MODIFIED", pod)

    def unschedulable(self, name: str, message: str, namespace: str = "ns") -> None:
        self.modify(
            name,
            namespace,
            conditions=[
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": message,
                }
            ],
        )

    def waiting(self, name: str, reason: str, message: str = "", namespace: str = "ns") -> None:
        self.modify(
            name,
            namespace,
            containerStatuses=[
                {
                    "name": CONTAINER,
                    "ready": False,
                    "state": {"waiting": {"reason": reason, "message": message}},
                }
            ],
        )

    def start(self, name: str, namespace: str = "ns") -> None:
        now = rfc3339(time.time())
        self.modify(
            name,
            namespace,
            phase="Running",
            startTime=now,
            containerStatuses=[
                {
                    "name": CONTAINER,
                    "ready": True,
                    "containerID": "containerd://" + uuid.uuid4().hex,
                    "state": {"running": {"startedAt": now}},
                }
            ],
        )

    def log(
        self, name: str, *texts: str, same_timestamp: bool = False, namespace: str = "ns"
    ) -> None:
        pod = self.pods[(namespace, name)]
        pod_uid = pod["metadata"]["uid"]
        # Kubelet timestamps only move forward within one container's log.
        clock = max(time.time_ns(), self._log_clock.get(pod_uid, 0) + 1000)
        for i, text in enumerate(texts):
            stamp = clock if same_timestamp else clock + i * 1000
            self._log_clock[pod_uid] = stamp
            ts = rfc3339(stamp // 10**9, stamp % 10**9)
            self.logs[pod_uid].append((ts, text))
            for stream in self.log_streams:
                if stream.uid == pod_uid:
                    stream.content.feed(_log_line(ts, text, stream.timestamps))

    def log_json(self, name: str, phase: str, message: str, **extra: Any) -> None:
        self.log(name, json.dumps({"phase": phase, "message": message, **extra}))

    def _end_logs(self, pod_uid: str) -> None:
        for stream in list(self.log_streams):
            if stream.uid == pod_uid:
                stream.content.end()

    def break_logs(self, name: str, namespace: str = "ns") -> int:
        """Cut every open log stream of the pod as a dropped connection would."""
        pod_uid = self.pods[(namespace, name)]["metadata"]["uid"]
        broken = 0
        for stream in list(self.log_streams):
            if stream.uid == pod_uid:
                stream.content.fail(ConnectionResetError("connection reset by peer"))
                self.log_streams.remove(stream)
                broken += 1
        return broken

    def stall_logs(self, name: str, namespace: str = "ns") -> int:
        """Make every open log stream of the pod half-open: the connection stays
        up but nothing more arrives on it, not even its end (a control-plane
        upgrade, a load balancer that forgot the flow, a lost node). New
        requests for the log are answered normally."""
        pod_uid = self.pods[(namespace, name)]["metadata"]["uid"]
        stalled = [s for s in self.log_streams if s.uid == pod_uid]
        for stream in stalled:
            self.log_streams.remove(stream)
        self.stalled_streams.extend(stalled)
        return len(stalled)

    def finish(
        self,
        name: str,
        exit_code: int = 0,
        *,
        reason: str | None = None,
        namespace: str = "ns",
        pod_phase: str | None = None,
    ) -> None:
        pod = self.pods[(namespace, name)]
        terminated = {
            "exitCode": exit_code,
            "reason": reason or ("Completed" if exit_code == 0 else "Error"),
            "finishedAt": rfc3339(time.time()),
        }
        # The kubelet reports the container first and the phase a moment later.
        pod["status"]["containerStatuses"] = [
            {
                "name": CONTAINER,
                "ready": False,
                "containerID": "containerd://x",
                "state": {"terminated": terminated},
            }
        ]
        self._end_logs(pod["metadata"]["uid"])
        self._bump(namespace, "MODIFIED", pod)
        pod["status"]["phase"] = pod_phase or ("Succeeded" if exit_code == 0 else "Failed")
        self._bump(namespace, "MODIFIED", pod)

    def fail_pod(self, name: str, reason: str, message: str = "", namespace: str = "ns") -> None:
        """Phase Failed with a pod-level reason (Evicted, DeadlineExceeded)."""
        pod = self.pods[(namespace, name)]
        self._end_logs(pod["metadata"]["uid"])
        pod["status"].update({"phase": "Failed", "reason": reason, "message": message})
        self._bump(namespace, "MODIFIED", pod)

    def remove(self, name: str, namespace: str = "ns") -> dict[str, Any]:
        pod = self.pods.pop((namespace, name))
        pod["metadata"]["deletionTimestamp"] = rfc3339(time.time())
        self._end_logs(pod["metadata"]["uid"])
        self._bump(namespace, "DELETED", pod)
        return pod

    def _stop_containers(self, pod: dict[str, Any], namespace: str) -> None:
        """The kubelet has stopped a terminating pod's container (SIGTERM, or
        SIGKILL after the grace period): exit 137, phase Failed."""
        state = self._container_state(pod)
        if "running" in state or "waiting" in state:
            pod["status"]["containerStatuses"] = [
                {
                    "name": CONTAINER,
                    "ready": False,
                    "containerID": "containerd://x",
                    "state": {
                        "terminated": {
                            "exitCode": 137,
                            "reason": "Error",
                            "finishedAt": rfc3339(time.time()),
                        }
                    },
                }
            ]
            pod["status"]["phase"] = "Failed"
            self._end_logs(pod["metadata"]["uid"])
            self._bump(namespace, "MODIFIED", pod)

    def kubelet_stops(self, name: str, namespace: str = "ns") -> None:
        """The kubelet ends a terminating pod: its container is killed and,
        unless finalizers remain, the pod is removed from the API."""
        pod = self.pods[(namespace, name)]
        assert pod["metadata"].get("deletionTimestamp"), "only terminating pods are stopped"
        self._stop_containers(pod, namespace)
        pod["metadata"]["deletionGracePeriodSeconds"] = 0
        if not pod["metadata"].get("finalizers"):
            self.remove(name, namespace)

    def remove_finalizers(self, name: str, namespace: str = "ns") -> None:
        """Whoever holds the finalizers lets go; a terminating pod whose
        containers have stopped (or that never ran) then disappears."""
        pod = self.pods[(namespace, name)]
        pod["metadata"]["finalizers"] = []
        if pod["metadata"].get("deletionTimestamp") and (
            pod["metadata"].get("deletionGracePeriodSeconds") == 0
            or pod["status"].get("phase") in ("Succeeded", "Failed")
            or not pod.get("spec", {}).get("nodeName")
        ):
            self.remove(name, namespace)
        else:
            self._bump(namespace, "MODIFIED", pod)

    def bookmark(self, namespace: str = "ns") -> int:
        """A BOOKMARK to every watch of the namespace that asked for them:
        only the newest resourceVersion, in an otherwise empty Pod."""
        version = next(self._rv)
        self.resource_version = version
        line = (
            json.dumps(
                {
                    "type": "BOOKMARK",
                    "object": {
                        "kind": "Pod",
                        "apiVersion": "v1",
                        "metadata": {"resourceVersion": str(version)},
                    },
                }
            )
            + "\n"
        ).encode()
        sent = 0
        for watch in self.watches:
            if watch.namespace == namespace and watch.bookmarks:
                watch.content.feed(line)
                sent += 1
        return sent

    def end_watches(self) -> None:
        """The server ends every watch (its timeout), as it does every few minutes."""
        for watch in list(self.watches):
            watch.content.end()
        self.watches.clear()

    def compact(self, before: int | None = None) -> None:
        """Forget history: a watch from a version older than ``before``
        (default: any version seen so far) now gets 410."""
        if before is None:
            self.resource_version = next(self._rv)
            before = self.resource_version
        self.compacted_before = before


def _seconds(ts: str) -> float:
    base, _, rest = ts.partition(".")
    whole = datetime.strptime(base.rstrip("Z"), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    frac = rest.rstrip("Z")
    return whole + (int(frac.ljust(9, "0")) / 1e9 if frac else 0.0)


def _log_line(ts: str, text: str, stamps: bool) -> bytes:
    return ((f"{ts} {text}" if stamps else text) + "\n").encode()


async def settle(rounds: int = 20) -> None:
    """Let every ready task run (watch events travel through queues)."""
    for _ in range(rounds):
        await asyncio.sleep(0)
