"""Where built images live, and how to ask whether one exists.

``RegistryClient`` speaks the Docker Registry HTTP API v2 (anonymous, HTTP
basic, or a bearer token fetched from the realm a 401 names).
``LocalImageStore`` is the single-machine default: the local Docker engine's
image store is the cache and nothing is pushed.

For the registry lifecycle (``binderbuild.lifecycle``) the client also lists
repositories and tags, reads manifests and image configs, and deletes
manifests by digest (the registry must allow deletes).

Rule: only a definite 404 means "missing". Any other answer (401 after auth,
5xx, timeouts, garbage) raises ``RegistryError``: a registry outage must never
start a rebuild storm.

One deadline per operation (issue 12): each call of the client (an image
check with its token fetch and retry after a 401, a health check, a manifest
read) runs under one deadline, ``unresponsive_timeout`` from its start, and
every request's own timeout is cut to the time left. A request that timed
out is tried again while time is left (a fresh connection may get an
answer); one that failed at once (connection refused: the registry is down)
is not, so a down registry is reported at once. ``wait_unresponsive`` probes
the registry while a build pushes: its answer (any status) restarts the
deadline, its silence for the whole deadline ends the push (a hung registry
would otherwise keep the engine's push waiting forever).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import re
import time
from base64 import b64encode
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any
from urllib.parse import quote, urljoin

from binderbuild.errors import RegistryError, TransportError
from binderbuild.http import HttpClient, HttpResponse, redact_url
from binderbuild.models import ImageSpec

MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)

# The deadline (monotonic time) of the registry operation this task is in.
_DEADLINE: ContextVar[float | None] = ContextVar("registry_deadline", default=None)
# Where the unresponsive deadline is configured, named in messages.
UNRESPONSIVE_OPTION = "DockerRegistry.unresponsive_timeout"

_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
_NEXT_LINK = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


def repository_path(repository: str) -> str:
    """Strip a registry host from an image repository (Docker's rule: the first
    component is a host when it has a '.' or ':' or is 'localhost')."""
    first, sep, rest = repository.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return rest
    return repository


_PUSHING = re.compile(r"\bpush", re.IGNORECASE)
# How the engine reports a registry's 5xx answer during a push: "received
# unexpected HTTP status: 500 Internal Server Error" (docker), "... status
# code 503" and the like.
_SERVER_ERROR = re.compile(
    r"(?:HTTP status|status code)[: ]+(5\d\d)\b"
    r"|\b(5\d\d) (?:Internal Server Error|Bad Gateway|Service Unavailable|Gateway Timeout)",
    re.IGNORECASE,
)


def push_server_error(message: str) -> int | None:
    """The 5xx status a failed push's message reports, None when it is not a
    push that the registry answered with a server error. The distribution
    registry answers a push it cannot store (its disk is full) with a bare
    500; only its own log says why (``binderbuild.lifecycle`` decides)."""
    if not _PUSHING.search(message):
        return None
    found = _SERVER_ERROR.search(message)
    if found is None:
        return None
    return int(found.group(1) or found.group(2))


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, params = header.strip().partition(" ")
    return scheme.lower(), dict(_CHALLENGE_PARAM.findall(params))


class ImageStore(abc.ABC):
    """Answers "is this image already built?"."""

    #: whether builds push to this store (False: the image stays on the engine)
    pushes = True

    @abc.abstractmethod
    async def image_digest(self, image: ImageSpec) -> str | None:
        """Digest (or id) of the image, None when it definitely does not exist.

        Raises RegistryError for anything that is not a definite answer.
        """

    async def image_exists(self, image: ImageSpec) -> bool:
        return await self.image_digest(image) is not None

    @abc.abstractmethod
    async def check(self) -> dict[str, Any]:
        """Health probe; raises RegistryError when unreachable."""


class RegistryClient(ImageStore):
    def __init__(
        self,
        http: HttpClient,
        url: str,
        username: str = "",
        password: str = "",
        timeout: float = 10.0,
        unresponsive_timeout: float = 30.0,
    ) -> None:
        """``timeout`` bounds one request, ``unresponsive_timeout`` one
        operation (all its requests and retries) and a push's silence."""
        self.http = http
        self.url = url.rstrip("/")
        self.username = username
        self.password = password
        self.timeout = timeout
        self.unresponsive_timeout = unresponsive_timeout
        self._tokens: dict[str, tuple[str, float]] = {}  # scope -> (token, expiry)

    @contextlib.contextmanager
    def _operation(self) -> Iterator[None]:
        """One deadline for the requests made inside (nested operations keep
        the outer one)."""
        if _DEADLINE.get() is not None:
            yield
            return
        token = _DEADLINE.set(time.monotonic() + self.unresponsive_timeout)
        try:
            yield
        finally:
            _DEADLINE.reset(token)

    def _unresponsive(self, what: str) -> RegistryError:
        return RegistryError(
            f"The container registry at {self.url} did not answer within "
            f"{self.unresponsive_timeout:g} seconds ({UNRESPONSIVE_OPTION}) {what}."
        )

    def _basic(self) -> str | None:
        if not self.username:
            return None
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + b64encode(raw).decode()

    async def _get(self, url: str, headers: dict[str, str]) -> HttpResponse:
        return await self._request("GET", url, headers)

    async def _request(self, method: str, url: str, headers: dict[str, str]) -> HttpResponse:
        """One request under the operation's deadline: each attempt's timeout
        is cut to the time left; an attempt that timed out is made again
        while time is left, one that failed at once is not."""
        deadline = _DEADLINE.get()
        what = f"to {method} {redact_url(url)}"
        while True:
            left = self.timeout if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise self._unresponsive(what)
            attempt = min(self.timeout, left)
            try:
                return await self.http.request(method, url, headers=headers, timeout=attempt)
            except TransportError as exc:
                if not _timed_out(exc):
                    raise RegistryError(
                        f"The container registry at {self.url} is unreachable: {exc}"
                    ) from None
                if deadline is None:
                    raise RegistryError(
                        f"The container registry at {self.url} did not answer within "
                        f"{attempt:g} seconds {what}."
                    ) from None

    async def _bearer_token(self, challenge: dict[str, str], scope_key: str) -> str:
        cached = self._tokens.get(scope_key)
        if cached and cached[1] > time.monotonic():
            return cached[0]
        realm = challenge.get("realm")
        if not realm:
            raise RegistryError("Registry asked for a bearer token but named no realm.")
        query = "&".join(
            f"{k}={v}"
            for k, v in (("service", challenge.get("service")), ("scope", scope_key))
            if v
        )
        headers: dict[str, str] = {}
        if basic := self._basic():
            headers["Authorization"] = basic
        resp = await self._get(f"{realm}?{query}" if query else realm, headers)
        if resp.status != 200:
            raise RegistryError(
                f"Registry token service {redact_url(realm)} answered {resp.status}."
            )
        try:
            body = resp.json()
            token = body.get("token") or body["access_token"]
        except (ValueError, KeyError, AttributeError):
            raise RegistryError("Registry token service returned no token.") from None
        if not isinstance(token, str):
            # A non-string would fail later as a TypeError in "Bearer " + token.
            raise RegistryError("Registry token service returned no token.")
        expires_in = float(body.get("expires_in", 60))
        # Renew a little early so a token never expires between check and use.
        self._tokens[scope_key] = (token, time.monotonic() + max(expires_in - 10, 5))
        return token

    async def _authorized_get(self, url: str, scope: str, accept: str = "") -> HttpResponse:
        return await self._authorized("GET", url, scope, accept)

    async def _authorized(
        self, method: str, url: str, scope: str, accept: str = ""
    ) -> HttpResponse:
        """``method url`` with the credentials the registry asks for, under
        one deadline (the caller's, or ``unresponsive_timeout`` from now)."""
        with self._operation():
            return await self._authorized_once(method, url, scope, accept)

    async def _authorized_once(
        self, method: str, url: str, scope: str, accept: str
    ) -> HttpResponse:
        headers = {"Accept": accept} if accept else {}
        cached = self._tokens.get(scope)
        if cached and cached[1] > time.monotonic():
            headers["Authorization"] = f"Bearer {cached[0]}"
        elif basic := self._basic():
            headers["Authorization"] = basic
        resp = await self._request(method, url, headers)
        if resp.status != 401:
            return resp
        scheme, params = parse_challenge(resp.header("WWW-Authenticate"))
        if scheme == "bearer":
            headers["Authorization"] = "Bearer " + await self._bearer_token(params, scope)
        elif scheme == "basic" and (basic := self._basic()):
            if headers.get("Authorization") == basic:
                raise RegistryError("Registry refused the configured credentials (401).")
            headers["Authorization"] = basic
        else:
            raise RegistryError("Registry requires authentication and none is configured (401).")
        resp = await self._request(method, url, headers)
        if resp.status == 401:
            raise RegistryError("Registry refused the configured credentials (401).")
        return resp

    async def image_digest(self, image: ImageSpec) -> str | None:
        name = repository_path(image.repository)
        url = f"{self.url}/v2/{name}/manifests/{image.tag}"
        try:
            with self._operation():
                resp = await self._authorized_get(url, f"repository:{name}:pull", MANIFEST_TYPES)
        except RegistryError as exc:
            raise RegistryError(
                f"{exc.message.rstrip('.')}; not building {image.name} until the registry "
                "gives a definite answer."
            ) from None
        if resp.status == 200:
            return resp.header("Docker-Content-Digest") or "present"
        if resp.status == 404:
            return None
        raise RegistryError(
            f"Container registry answered {resp.status} when asked for {image.name}; "
            "not building until it gives a definite answer."
        )

    # --- inventory and deletes (the registry lifecycle) -------------------------

    async def _json(
        self, url: str, scope: str, what: str, missing_ok: bool = False
    ) -> tuple[Any, HttpResponse]:
        resp = await self._authorized_get(url, scope)
        if resp.status == 404 and missing_ok:
            return None, resp
        if resp.status != 200:
            raise RegistryError(f"Container registry answered {resp.status} for {what}.")
        try:
            return json.loads(resp.body), resp
        except ValueError:
            raise RegistryError(f"Container registry sent no JSON for {what}.") from None

    async def _paged(self, path: str, key: str, scope: str, missing_ok: bool = False) -> list[str]:
        """Every item of a paginated list (``_catalog``, ``tags/list``), following
        the ``Link: <...>; rel="next"`` headers."""
        url = f"{self.url}{path}?n=1000"
        items: list[str] = []
        for _ in range(10_000):  # a registry that loops forever is not followed forever
            body, resp = await self._json(url, scope, path, missing_ok)
            items += [str(v) for v in (body or {}).get(key) or []]
            link = _NEXT_LINK.search(resp.header("Link"))
            if not link:
                return items
            url = urljoin(self.url + "/", link.group(1))
        return items

    async def repositories(self) -> list[str]:
        """Repository paths the registry holds (``GET /v2/_catalog``)."""
        return await self._paged("/v2/_catalog", "repositories", "registry:catalog:*")

    async def tags(self, repository: str) -> list[str]:
        """Tags of a repository (none when it has no tags left)."""
        path = f"/v2/{repository}/tags/list"
        return await self._paged(path, "tags", f"repository:{repository}:pull", missing_ok=True)

    async def manifest(self, repository: str, reference: str) -> tuple[str, dict[str, Any]] | None:
        """``(digest, manifest)`` of a tag or digest, None when it does not exist."""
        url = f"{self.url}/v2/{repository}/manifests/{quote(reference, safe=':@')}"
        resp = await self._authorized_get(url, f"repository:{repository}:pull", MANIFEST_TYPES)
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise RegistryError(
                f"Container registry answered {resp.status} for manifest {repository}:{reference}."
            )
        try:
            body = json.loads(resp.body)
        except ValueError:
            raise RegistryError(f"Manifest {repository}:{reference} is not JSON.") from None
        if not isinstance(body, dict):
            raise RegistryError(f"Manifest {repository}:{reference} is not a JSON object.")
        return resp.header("Docker-Content-Digest") or reference, body

    async def blob_json(self, repository: str, digest: str) -> Any:
        """A small JSON blob (an image config)."""
        body, _ = await self._json(
            f"{self.url}/v2/{repository}/blobs/{digest}",
            f"repository:{repository}:pull",
            f"blob {repository}@{digest}",
        )
        return body

    async def delete_manifest(self, repository: str, digest: str) -> bool:
        """Delete a manifest (every tag pointing at it). False when it was
        already gone. The blobs stay until the registry's garbage collection."""
        url = f"{self.url}/v2/{repository}/manifests/{digest}"
        resp = await self._authorized(
            "DELETE", url, f"repository:{repository}:delete", MANIFEST_TYPES
        )
        if resp.status in (200, 202):
            return True
        if resp.status == 404:
            return False
        if resp.status == 405:
            raise RegistryError(
                "The registry does not allow deletes (405): enable storage.delete in its "
                "configuration (scripts/services.sh: BINDERBUILD_REGISTRY_DELETES=1)."
            )
        raise RegistryError(
            f"Container registry answered {resp.status} when deleting {repository}@{digest}."
        )

    async def check(self) -> dict[str, Any]:
        started = time.monotonic()
        resp = await self._authorized_get(f"{self.url}/v2/", "registry:catalog:*")
        if resp.status != 200:
            raise RegistryError(f"Container registry /v2/ answered {resp.status}.")
        return {"url": self.url, "latency_ms": round((time.monotonic() - started) * 1000, 1)}

    async def wait_unresponsive(self, interval: float = 5.0) -> RegistryError:
        """Probe the registry (``GET /v2/``; any status is an answer) until it
        has not answered for ``unresponsive_timeout``, and return the error
        that says so. Runs while a build pushes (``BuildManager.push_watch``);
        it is cancelled when the push ends."""
        interval = min(interval, self.unresponsive_timeout / 4)
        last_answer = time.monotonic()
        while True:
            deadline = last_answer + self.unresponsive_timeout
            token = _DEADLINE.set(deadline)
            try:
                await self._request("GET", f"{self.url}/v2/", {})
                last_answer = time.monotonic()
            except RegistryError:
                pass  # down or silent: the deadline decides
            finally:
                _DEADLINE.reset(token)
            left = last_answer + self.unresponsive_timeout - time.monotonic()
            if left <= 0:
                return RegistryError(
                    f"The container registry at {self.url} did not answer for "
                    f"{self.unresponsive_timeout:g} seconds ({UNRESPONSIVE_OPTION}) while the "
                    "image was pushed; the push was stopped. Ask again once the registry "
                    "answers."
                )
            await asyncio.sleep(min(interval, left))


def _timed_out(exc: TransportError) -> bool:
    """Whether a transport failure was a timeout (Tornado: "Timeout while
    connecting", "Timeout during request"), not a refusal or a reset."""
    return "timeout" in exc.message.rsplit(": ", 1)[-1].lower()


class LocalImageStore(ImageStore):
    """The local Docker engine's image store (single machine, no registry)."""

    pushes = False

    def __init__(self, docker_client: Any) -> None:
        self.docker = docker_client

    async def image_digest(self, image: ImageSpec) -> str | None:
        import docker.errors

        def inspect() -> str | None:
            try:
                return str(self.docker.images.get(image.name).id)
            except docker.errors.ImageNotFound:
                return None

        try:
            return await asyncio.to_thread(inspect)
        except docker.errors.DockerException as exc:
            raise RegistryError(f"Docker engine image store unavailable: {exc}") from None
        except OSError as exc:
            raise RegistryError(f"Docker engine unreachable: {exc}") from None

    async def check(self) -> dict[str, Any]:
        import docker.errors

        try:
            await asyncio.to_thread(self.docker.ping)
        except (docker.errors.DockerException, OSError) as exc:
            raise RegistryError(f"Docker engine unreachable: {exc}") from None
        return {"store": "local docker engine"}
