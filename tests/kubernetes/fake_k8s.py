"""An in-memory stand-in for ``kubernetes_asyncio``'s ``CoreV1Api``.

It implements the five methods binderbuild calls, with the same names and
arguments, and answers the way the API server does when called with
``_preload_content=False``: an aiohttp-like response (``status``,
``read()``, ``content.readany()``, ``close()``) whose body is the API's JSON,
streamed line by line for watches and followed logs. Pods only change when a
test says so (``schedule``, ``start``, ``log``, ``finish``, ``evict`` ...),
like a kubelet that takes orders.

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


class FakeResponse:
    def __init__(
        self,
        status: int,
        body: Any = None,
        *,
        content: FakeContent | None = None,
        on_close: Any = None,
    ) -> None:
        self.status = status
        self.reason = {200: "OK", 201: "Created", 404: "Not Found", 409: "Conflict"}.get(status, "")
        self._body = b"" if body is None else json.dumps(body).encode()
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
        self.calls: list[Call] = []
        self.fail_with: dict[str, BaseException] = {}  # method -> exception to raise once
        self.status_for: dict[str, int] = {}  # method -> HTTP status to answer once
        self.created_uids: list[str] = []
        self._log_clock: dict[str, int] = {}

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
        return FakeResponse(201, pod)

    async def read_namespaced_pod(self, name: str, namespace: str, **kwargs: Any) -> FakeResponse:
        self._record("read_namespaced_pod", (name, namespace), kwargs)
        pod = self.pods.get((namespace, name))
        if pod is None:
            return pod_not_found(name)
        return FakeResponse(200, pod)

    async def delete_namespaced_pod(self, name: str, namespace: str, **kwargs: Any) -> FakeResponse:
        self._record("delete_namespaced_pod", (name, namespace), kwargs)
        pod = self.pods.get((namespace, name))
        if pod is None:
            return pod_not_found(name)
        wanted = ((kwargs.get("body") or {}).get("preconditions") or {}).get("uid")
        if wanted and wanted != pod["metadata"]["uid"]:
            return FakeResponse(409, status_body(409, "Conflict", "Precondition failed: UID"))
        self.remove(name, namespace)
        return FakeResponse(200, pod)

    async def list_namespaced_pod(self, namespace: str, **kwargs: Any) -> FakeResponse:
        self._record("list_namespaced_pod", (namespace,), kwargs)
        forced = self.status_for.pop("list_namespaced_pod", None)
        if forced is not None:
            return FakeResponse(forced, status_body(forced, "Forced", "forced by the test"))
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
        watch = _Watch(namespace, selector, content)
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
        pod = self.pods.get((namespace, name))
        if pod is None:
            return pod_not_found(name)
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

    def end_watches(self) -> None:
        """The server ends every watch (its timeout), as it does every few minutes."""
        for watch in list(self.watches):
            watch.content.end()
        self.watches.clear()

    def compact(self) -> None:
        """Forget history: a watch from any version seen so far now gets 410."""
        self.resource_version = next(self._rv)
        self.compacted_before = self.resource_version


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
