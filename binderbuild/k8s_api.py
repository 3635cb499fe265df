"""The few pod operations binderbuild needs, over a ``CoreV1Api``-like object.

``PodAPI`` wraps a ``kubernetes_asyncio.client.CoreV1Api`` (or any object
with the same method names: tests pass a small fake) and speaks plain JSON
dicts, the same shape the manifest functions produce. Every call is made
with ``_preload_content=False``: the response is read here, so

* no model classes are built (watch events and logs stay cheap, and tests
  compare dicts),
* HTTP statuses come back as values and are translated in one place: 404 and
  409 are answers (``None``/``False``), 410 is ``ResourceExpired`` (relist),
  anything else is ``BuildBackendError`` with the API's own message;
* 429, 500, 503 and 504 are retried, as the API conventions ask ("HTTP
  Status codes": wait at least ``Retry-After``; otherwise back off
  exponentially), for at most ``retry_deadline`` seconds per call. A wait
  that would end past the deadline is not started: the call fails at once,
  naming the status and the wait asked for. Other errors (400, 403, 422
  ...) are never retried: "Do not retry. Fix the request.";
* streamed bodies (watches, logs) are split into lines here, with no line
  length limit from aiohttp's ``readline`` (a repo2docker JSON log line can
  be longer than its 64 KiB buffer).

The response objects used are aiohttp's: ``status``, ``reason``,
``await read()``, ``content.readany()``, ``close()``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from binderbuild.errors import BuildBackendError, ResourceExpired

log = logging.getLogger("binderbuild.k8s")

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class StreamStalled(BuildBackendError):
    """A streamed response sent nothing for longer than its read timeout. The
    connection may be half-open (a control-plane upgrade, a load balancer
    that dropped the flow, a lost node) or the stream merely quiet: the
    caller decides, from the pod's status, whether to read again."""


# Answers worth repeating the request for (API conventions, "HTTP Status
# codes"): too many requests, an internal error or an unavailable or
# timed-out server. A create answered 500/504 may have happened anyway: the
# retry then gets 409, which the builder reads by the pod's owner.
RETRY_STATUSES = frozenset({429, 500, 503, 504})

# A log line longer than this is cut: one runaway line (a progress bar
# without newlines) must not hold megabytes in the service.
MAX_LINE_BYTES = 1 << 20


def current_namespace(
    default: str = "default",
    *,
    environ: Mapping[str, str] | None = None,
    namespace_file: Path = SERVICE_ACCOUNT_NAMESPACE,
) -> str:
    """The namespace this process runs in: $POD_NAMESPACE (downward API),
    the service account's namespace file, or ``default``."""
    env = (os.environ if environ is None else environ).get("POD_NAMESPACE", "").strip()
    if env:
        return env
    try:
        text = namespace_file.read_text().strip()
    except OSError:
        text = ""
    return text or default


async def make_core_api(kubeconfig: str | None = None) -> Any:
    """A real ``CoreV1Api`` with its own client configuration (never the
    library's global one): from ``kubeconfig`` when given; otherwise the
    in-cluster service account when running in a pod, else $KUBECONFIG /
    ~/.kube/config. Close it with ``close_core_api``."""
    try:
        from kubernetes_asyncio import client, config
    except ImportError as exc:  # the dependency is declared; this is a broken install
        raise BuildBackendError(f"kubernetes_asyncio is not installed: {exc}") from None
    configuration = client.Configuration()
    if kubeconfig is None:
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]  # unannotated in kubernetes_asyncio
        except config.ConfigException:
            pass
        else:
            return client.CoreV1Api(client.ApiClient(configuration))
    try:
        await config.load_kube_config(
            config_file=kubeconfig, client_configuration=configuration, persist_config=False
        )
    except (config.ConfigException, OSError, TypeError, ValueError) as exc:
        raise BuildBackendError(
            f"No Kubernetes credentials: not in a pod and no usable kubeconfig ({exc})"
        ) from None
    return client.CoreV1Api(client.ApiClient(configuration))


async def close_core_api(core: Any) -> None:
    api_client = getattr(core, "api_client", None)
    if api_client is not None:
        await api_client.close()


class PodAPI:
    """Pod calls on one ``CoreV1Api``-like object, JSON in and out."""

    def __init__(
        self,
        core: Any,
        *,
        request_timeout: float = 30.0,
        max_line_bytes: int = MAX_LINE_BYTES,
        retry_deadline: float = 30.0,
        retry_backoff: float = 0.25,
        max_retry_wait: float = 10.0,
    ) -> None:
        self.core = core
        self.request_timeout = request_timeout
        self.max_line_bytes = max_line_bytes
        self.retry_deadline = retry_deadline
        self.retry_backoff = retry_backoff
        self.max_retry_wait = max_retry_wait

    # --- single requests ---------------------------------------------------

    async def create_pod(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """The created pod, or None when a pod of that name already exists."""
        resp = await self._request("create pod", "create_namespaced_pod", namespace, dict(body))
        data = await self._json(resp, "create pod", ok_missing=False, ok_conflict=True)
        return data

    async def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        resp = await self._request(f"read pod {name}", "read_namespaced_pod", name, namespace)
        return await self._json(resp, f"read pod {name}", ok_missing=True)

    async def delete_pod(
        self, namespace: str, name: str, *, uid: str = "", grace_seconds: int = 0
    ) -> bool:
        """Delete a pod; False when it is already gone or (with ``uid``) has been
        replaced by a new pod of the same name.

        The uid precondition matters because build pods are named by what they
        build: a late cleanup must not delete the next build of the same image.
        """
        body: dict[str, Any] = {"gracePeriodSeconds": grace_seconds}
        if uid:
            body["preconditions"] = {"uid": uid}
        resp = await self._request(
            f"delete pod {name}",
            "delete_namespaced_pod",
            name,
            namespace,
            body=body,
            grace_period_seconds=grace_seconds,
        )
        data = await self._json(resp, f"delete pod {name}", ok_missing=True, ok_conflict=True)
        return data is not None

    async def list_pods(
        self, namespace: str, label_selector: str
    ) -> tuple[list[dict[str, Any]], str]:
        """(pods, resourceVersion of the list)."""
        resp = await self._request(
            "list pods", "list_namespaced_pod", namespace, label_selector=label_selector
        )
        data = await self._json(resp, "list pods", ok_missing=False) or {}
        items = [item for item in data.get("items") or [] if isinstance(item, dict)]
        version = str((data.get("metadata") or {}).get("resourceVersion") or "")
        return items, version

    # --- streams -----------------------------------------------------------

    async def watch_pods(
        self,
        namespace: str,
        label_selector: str,
        resource_version: str,
        *,
        timeout_seconds: int = 300,
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Yield (event type, object) from one watch request until the server
        ends it (after about ``timeout_seconds``). BOOKMARK events are yielded
        too: their object carries only the newest resourceVersion."""
        kwargs: dict[str, Any] = {
            "label_selector": label_selector,
            "watch": True,
            "allow_watch_bookmarks": True,
            "timeout_seconds": timeout_seconds,
            # The server ends the watch after timeout_seconds; a read timeout a
            # little longer catches a connection that died silently.
            "_request_timeout": (self.request_timeout, timeout_seconds + 30),
        }
        if resource_version:
            kwargs["resource_version"] = resource_version
        resp = await self._request("watch pods", "list_namespaced_pod", namespace, **kwargs)
        try:
            await self._raise_for_status(resp, "watch pods")
            async for line in _lines(resp, self.max_line_bytes):
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    raise BuildBackendError("Kubernetes watch sent a malformed event") from None
                if not isinstance(event, dict) or "type" not in event or "object" not in event:
                    # E.g. a proxy that dropped the watch parameter and sent a list.
                    raise BuildBackendError("Kubernetes watch sent something that is not an event")
                kind = str(event["type"])
                obj = event["object"] or {}
                if kind == "ERROR":
                    code = obj.get("code")
                    text = obj.get("message") or obj.get("reason") or "watch error"
                    if code == 410:
                        raise ResourceExpired(f"watch expired: {text}")
                    raise BuildBackendError(f"Kubernetes watch error {code}: {text}")
                yield kind, obj
        finally:
            resp.close()

    async def pod_log_lines(
        self,
        namespace: str,
        name: str,
        *,
        container: str,
        follow: bool = True,
        timestamps: bool = True,
        tail_lines: int | None = None,
        since_seconds: int | None = None,
        read_timeout: float | None = None,
    ) -> AsyncIterator[str]:
        """Yield the container's log lines (without newline) until it ends.

        Raises ``BuildBackendError`` when the log cannot be opened or the
        stream breaks, and ``StreamStalled`` when nothing arrives for
        ``read_timeout`` seconds; the caller decides whether to resume.
        """
        kwargs: dict[str, Any] = {
            "container": container,
            "follow": follow,
            "timestamps": timestamps,
            # Without a read timeout a half-open connection is read forever.
            # A quiet build step also trips it: the caller reads again from
            # the last line seen, which costs one request.
            "_request_timeout": (self.request_timeout, read_timeout),
        }
        if tail_lines is not None:
            kwargs["tail_lines"] = tail_lines
        if since_seconds is not None:
            kwargs["since_seconds"] = since_seconds
        resp = await self._request(
            f"read log of pod {name}", "read_namespaced_pod_log", name, namespace, **kwargs
        )
        try:
            await self._raise_for_status(resp, f"read log of pod {name}")
            async for line in _lines(resp, self.max_line_bytes, read_timeout):
                yield line
        finally:
            resp.close()

    # --- plumbing ------------------------------------------------------------

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("_request_timeout", self.request_timeout)
        try:
            return await getattr(self.core, method)(*args, _preload_content=False, **kwargs)
        except BuildBackendError:
            raise
        except Exception as exc:
            # aiohttp.ClientError, OSError, TimeoutError, ApiException (raised
            # for bad arguments even without preloading): the API is
            # unreachable or the call is wrong; either way the backend is down.
            raise BuildBackendError(
                f"Kubernetes API {method} failed: {type(exc).__name__}: {exc}"
            ) from None

    async def _request(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """``_call``, repeated while the answer is 429/500/503/504 and the
        wait (Retry-After, else exponential backoff) ends within
        ``retry_deadline``. Raises ``BuildBackendError`` when it gives up."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        tries = 0
        while True:
            resp = await self._call(method, *args, **kwargs)
            tries += 1
            status = int(resp.status)
            if status not in RETRY_STATUSES:
                return resp
            try:
                body = await resp.read()
            except Exception:
                body = b""
            finally:
                resp.close()
            asked = retry_after(getattr(resp, "headers", None), body)
            backoff = min(self.retry_backoff * 2.0 ** (tries - 1), self.max_retry_wait)
            wait = max(asked or 0.0, backoff)
            elapsed = loop.time() - started
            if elapsed + wait > self.retry_deadline:
                error = _status_error(what, status, getattr(resp, "reason", ""), body)
                parts = [f"retried {tries - 1} times in {elapsed:.1f} s"] if tries > 1 else []
                if asked is not None:
                    parts.append(f"the server asked for Retry-After {asked:g} s")
                parts.append(
                    f"waiting more would pass the retry deadline of {self.retry_deadline:g} s"
                )
                raise BuildBackendError(f"{error.message} ({'; '.join(parts)})")
            log.info("Kubernetes API: %s answered HTTP %s; retrying in %.2f s", what, status, wait)
            await asyncio.sleep(wait)

    async def _json(
        self, resp: Any, what: str, *, ok_missing: bool, ok_conflict: bool = False
    ) -> dict[str, Any] | None:
        try:
            status = int(resp.status)
            body = await resp.read()
        except Exception as exc:
            raise BuildBackendError(f"Kubernetes API: {what}: {exc}") from None
        finally:
            resp.close()
        if (status == 404 and ok_missing) or (status == 409 and ok_conflict):
            return None
        if not 200 <= status < 300:
            raise _status_error(what, status, getattr(resp, "reason", ""), body)
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            raise BuildBackendError(f"Kubernetes API: {what}: response is not JSON") from None
        return data if isinstance(data, dict) else {}

    async def _raise_for_status(self, resp: Any, what: str) -> None:
        status = int(resp.status)
        if 200 <= status < 300:
            return
        try:
            body = await resp.read()
        except Exception:
            body = b""
        if status == 410:
            raise ResourceExpired(f"{what}: resource version expired")
        raise _status_error(what, status, getattr(resp, "reason", ""), body)


def retry_after(headers: Mapping[str, str] | None, body: bytes) -> float | None:
    """Seconds the server asked to wait: the Retry-After header (seconds), or
    the Status object's details.retryAfterSeconds. The header wins (API
    conventions, "Response Status Kind")."""
    value = (headers or {}).get("Retry-After")
    if value is not None:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass  # an HTTP date: kube-apiserver sends seconds; fall back to the body
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        return None
    seconds = ((data.get("details") or {}) if isinstance(data, dict) else {}).get(
        "retryAfterSeconds"
    )
    return float(seconds) if isinstance(seconds, int | float) and seconds >= 0 else None


def _status_error(what: str, status: int, reason: str, body: bytes) -> BuildBackendError:
    message = ""
    causes: list[str] = []
    try:
        data = json.loads(body)
        if isinstance(data, dict):
            message = str(data.get("message") or data.get("reason") or "")
            for cause in (data.get("details") or {}).get("causes") or []:
                if isinstance(cause, dict):
                    text = ": ".join(str(cause[k]) for k in ("field", "message") if cause.get(k))
                    if text and text not in message:
                        causes.append(text)
    except ValueError:
        message = body[:200].decode(errors="replace")
    if causes:
        message += (" (" if message else "(") + "; ".join(causes) + ")"
    hint = ""
    creating = what == "create pod"
    if status == 401 or (status == 403 and (" cannot " in message or not creating)):
        # The usual cause: the chart's Role was not installed or names another
        # namespace than KubernetesBuilder.build_namespace.
        hint = " (check the service account's Role for pods in this namespace)"
    elif creating and status in (403, 422):
        # Allowed by RBAC, refused by admission: a ResourceQuota, LimitRange,
        # Pod Security admission or a validating webhook, or an invalid pod.
        return BuildBackendError(
            f"The cluster refused the build pod (HTTP {status}): {message or reason}. "
            "An admission policy of the namespace (ResourceQuota, LimitRange, Pod "
            "Security admission, a webhook) or the pod's settings are at fault: "
            "see docs/kubernetes.md."
        )
    return BuildBackendError(
        f"Kubernetes API: {what}: HTTP {status} {reason or ''}".rstrip()
        + (f": {message}" if message else "")
        + hint
    )


async def _lines(resp: Any, max_line: int, read_timeout: float | None = None) -> AsyncIterator[str]:
    """Split a streamed body into lines; cut (not fail) overlong lines.

    ``read_timeout`` is enforced here as well as by the client (aiohttp's
    ``sock_read``), so it holds whatever the response object is."""
    buffer = b""
    skipping = False  # inside an overlong line whose start was already yielded
    while True:
        try:
            async with asyncio.timeout(read_timeout):
                chunk = await resp.content.readany()
        except BuildBackendError:
            raise
        except TimeoutError:
            # aiohttp's ServerTimeoutError is a TimeoutError too.
            raise StreamStalled(
                f"Kubernetes API stream sent nothing for {read_timeout:g} s"
                if read_timeout
                else "Kubernetes API stream timed out"
            ) from None
        except Exception as exc:
            raise BuildBackendError(
                f"Kubernetes API stream broke: {type(exc).__name__}: {exc}"
            ) from None
        if not chunk:
            break
        buffer += chunk
        while True:
            cut = buffer.find(b"\n")
            if cut < 0:
                break
            line, buffer = buffer[:cut], buffer[cut + 1 :]
            if skipping:
                skipping = False
                continue
            yield line.decode(errors="replace").rstrip("\r")
        if len(buffer) > max_line and not skipping:
            yield buffer[:max_line].decode(errors="replace") + " [line truncated]"
            buffer = b""
            skipping = True
        elif skipping:
            buffer = b""
    if buffer and not skipping:
        yield buffer.decode(errors="replace").rstrip("\r")
