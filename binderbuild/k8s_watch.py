"""One list-and-watch loop per pod selector, shared by everything in the process.

BinderHub opened a watch (and a thread) per build request; popular builds
exhausted its thread pool. Here one ``PodWatcher`` keeps a cache of the pods
matching a label selector, and any number of coroutines read the cache and
wait for the next change. The build backend uses one for build pods, the
launch quota one for user pods.

The loop: list (gives a resourceVersion), then watch from it; when the
watch times out, watch again from the last version seen (bookmarks keep it
fresh); when the version is too old (410) or anything fails, list again
after a backoff. Pods that vanish between a watch and a relist are reported
as deleted like watched deletions, so no waiter hangs on a pod that is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from binderbuild.errors import BuildBackendError, ResourceExpired
from binderbuild.k8s_api import PodAPI
from binderbuild.k8s_status import uid

log = logging.getLogger("binderbuild.k8s")

Pod = dict[str, Any]

# Deleted pods are remembered by uid (with their last state) so that a build
# still following one learns how it ended. Bounded: only recent deletions
# matter.
_TOMBSTONES = 2000


class PodWatcher:
    """A live cache of the pods in ``namespace`` matching ``label_selector``."""

    def __init__(
        self,
        api: PodAPI,
        namespace: str,
        label_selector: str,
        *,
        watch_timeout: int = 300,
        max_backoff: float = 30.0,
        on_change: Callable[[str, Pod], None] | None = None,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.label_selector = label_selector
        self.watch_timeout = watch_timeout
        self.max_backoff = max_backoff
        self.on_change = on_change
        self.pods: dict[str, Pod] = {}
        self._tombstones: OrderedDict[str, Pod] = OrderedDict()
        self._changed = asyncio.Event()
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.resource_version = ""
        self.last_error: str = ""
        self.failing_since: float | None = None
        self.events_seen = 0

    # --- reading ------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """The first list has completed; the cache reflects the cluster."""
        return self._ready.is_set()

    @property
    def changed(self) -> asyncio.Event:
        """Set at the next change. Take it *before* reading the cache, then
        await it: no change between the read and the wait can be missed."""
        return self._changed

    def get(self, name: str) -> Pod | None:
        return self.pods.get(name)

    def deleted(self, pod_uid: str) -> Pod | None:
        """The last state of a deleted pod, or None if it was not seen deleted."""
        return self._tombstones.get(pod_uid)

    def current(self, name: str, pod_uid: str) -> Pod | None:
        """The newest known state of exactly this pod (name *and* uid), or None.

        A pod of the same name with another uid is a newer build and is not
        returned; a deleted pod is returned in its last state.
        """
        gone = self._tombstones.get(pod_uid)
        if gone is not None:
            return gone
        pod = self.pods.get(name)
        if pod is not None and uid(pod) == pod_uid:
            return pod
        return None

    async def wait_ready(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            why = f": {self.last_error}" if self.last_error else ""
            raise BuildBackendError(
                f"Could not list pods ({self.label_selector}) in namespace "
                f"{self.namespace} within {timeout:g} s{why}"
            ) from None

    async def wait_for(self, predicate: Callable[[], bool], timeout: float | None = None) -> bool:
        """Wait until ``predicate()`` (re-checked at every change) is true;
        False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            changed = self._changed
            if predicate():
                return True
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                return predicate()

    # --- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(
                self._run(), name=f"pod watcher {self.namespace}/{self.label_selector}"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # --- the loop -------------------------------------------------------------

    async def _run(self) -> None:
        backoff = 1.0
        expired = 0  # 410s in a row, with no event in between
        seen = -1
        while True:
            try:
                await self._list()
                backoff = 1.0
                while True:
                    started = time.monotonic()
                    seen = self.events_seen
                    await self._watch_once()
                    if self.events_seen == seen and time.monotonic() - started < 1.0:
                        # A watch that ends at once with nothing in it (a proxy
                        # closing idle streams) must not become a busy loop.
                        await asyncio.sleep(1.0)
            except asyncio.CancelledError:
                raise
            except ResourceExpired:
                # Normal after a long disconnection: the version we hold is
                # compacted away. Relist at once, but not in a tight loop if
                # the server keeps refusing fresh versions too.
                expired = expired + 1 if self.events_seen == seen else 1
                log.info("pod watch %s expired; listing again", self.label_selector)
                if expired > 1:
                    await asyncio.sleep(min(self.max_backoff, float(expired)))
                continue
            except Exception as exc:  # keep watching whatever happens
                self.last_error = str(exc)
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                level = logging.WARNING if isinstance(exc, BuildBackendError) else logging.ERROR
                log.log(
                    level,
                    "pod watch %s failed (%s); retrying in %.0f s",
                    self.label_selector,
                    exc,
                    backoff,
                    exc_info=level == logging.ERROR,
                )
                await asyncio.sleep(backoff)
                backoff = min(self.max_backoff, backoff * 2)

    async def _list(self) -> None:
        items, version = await self.api.list_pods(self.namespace, self.label_selector)
        fresh = {str(item.get("metadata", {}).get("name", "")): item for item in items}
        for name, old in list(self.pods.items()):
            new = fresh.get(name)
            if new is None or uid(new) != uid(old):
                self._bury(old)
        self.pods = fresh
        self.resource_version = version
        self.last_error = ""
        self.failing_since = None
        self._ready.set()
        self._notify("LIST", {})

    async def _watch_once(self) -> None:
        async for kind, obj in self.api.watch_pods(
            self.namespace,
            self.label_selector,
            self.resource_version,
            timeout_seconds=self.watch_timeout,
        ):
            self.events_seen += 1
            version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
            if version:
                self.resource_version = version
            if kind == "BOOKMARK":
                continue
            name = str((obj.get("metadata") or {}).get("name") or "")
            if not name:
                continue
            if kind == "DELETED":
                self.pods.pop(name, None)
                self._bury(obj)
            elif kind in ("ADDED", "MODIFIED"):
                old = self.pods.get(name)
                if old is not None and uid(old) != uid(obj):
                    # Deleted and recreated while we were not looking.
                    self._bury(old)
                self.pods[name] = obj
            else:
                continue
            self._notify(kind, obj)

    def _bury(self, pod: Pod) -> None:
        key = uid(pod)
        if not key:
            return
        self._tombstones[key] = pod
        self._tombstones.move_to_end(key)
        while len(self._tombstones) > _TOMBSTONES:
            self._tombstones.popitem(last=False)

    def _notify(self, kind: str, pod: Pod) -> None:
        # Wake every waiter, then arm a fresh event for the next change.
        self._changed.set()
        self._changed = asyncio.Event()
        if self.on_change is not None:
            try:
                self.on_change(kind, pod)
            except Exception:
                log.exception("pod watcher callback failed")
