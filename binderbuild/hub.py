"""Launch a built image on JupyterHub through its REST API.

One launch, in order (docs/launching.md has the whole story)::

    quota check (no hub call when the count is cached)
    anonymous:     POST /users/{temporary user}
    authenticated: GET  /users/{user}      (per-user server limit)
    POST /users/{user}/tokens              token for this one server
    POST /users/{user}/servers/{name}      user_options: image, token, repo_url, binder_*
    GET  /users/{user}/server[s/{name}]/progress   relayed as ``launching`` events

Everything runs under one deadline (``launch_timeout``), and every hub
operation under its own, shorter one (``hub_unresponsive_timeout``): a hub that
is down or hung fails the launch within that bound. Hub calls are retried in
exactly one place (``HubClient.call``). A spawn that a hub restart cancelled
is requested once more; ``ready`` is reported only for a server the hub's own
model says is ready and not stopping. A launch that fails, times out or
is abandoned by its client leaves nothing behind: a background cleanup stops
the server and deletes the temporary user (or the named server), retrying
until the hub answers or ``cleanup_timeout`` passes.

Options that BinderHub has on its application (``hub_url``,
``hub_url_local``, ``hub_api_token``, ``auth_enabled``, ``use_named_servers``,
``named_server_limit_per_user``, ``per_repo_quota``, ``per_repo_quota_higher``,
``pod_quota``) live on ``BinderBuild`` and are read from the parent
application; BinderHub's ``Launcher`` options (``retries``, ``retry_delay``,
``launch_timeout``) live here, and ``c.Launcher.*`` is read as well.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
import os
import random
import re
import string
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

from traitlets import Float, Integer, Unicode
from traitlets.config import LoggingConfigurable
from traitlets.traitlets import MetaHasTraits
from traitlets.utils.importstring import import_item

from binderbuild.errors import (
    BinderBuildError,
    ConfigError,
    Forbidden,
    HubError,
    LaunchFailed,
    LaunchTimeout,
    QuotaExceeded,
)
from binderbuild.events import Phase, ProgressEvent, event
from binderbuild.http import HttpClient, HttpResponse
from binderbuild.hub_client import HubClient, RetryPolicy, hub_reason, server_path, user_path
from binderbuild.launcher import Launcher
from binderbuild.models import LaunchRequest, LaunchResult
from binderbuild.providers.base import RepoProvider
from binderbuild.quota import HubServerCounter, LaunchQuota, Reservation, ServerCounter

# Random suffix of generated names: 36**8 ~ 2**41 combinations.
_SUFFIX_CHARS = string.ascii_lowercase + string.digits
_NOT_NAME = re.compile(r"[^a-z0-9]+")


def unique_name_from_repo(repo_url: str, max_prefix: int = 32) -> str:
    """``owner-repo-<8 random>`` from a repository URL (BinderHub's scheme),
    lowercase and limited to [a-z0-9-] so it is a valid hub user name, server
    name, container name and DNS label."""
    return f"{_repo_prefix(repo_url, max_prefix)}-{''.join(random.choices(_SUFFIX_CHARS, k=8))}"


def server_name_for_repo(repo_url: str, max_prefix: int = 21) -> str:
    """``owner-repo-<8 hex>``: the named server of a signed-in user for this
    repository, the same at every launch, so a launch of a repository the
    user has a server for resumes that server (docs/persistent-servers.md).
    The suffix is a digest of the URL (without a trailing ``/`` or ``.git``):
    two repositories with the same short name get different servers.
    JupyterHub (>= 6) wants a "safe slug": at most 30 characters of [a-z0-9-],
    starting with a letter, no "--"."""
    key = repo_url.strip().rstrip("/")
    key = key[:-4] if key.endswith(".git") else key
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    prefix = re.sub("-+", "-", _repo_prefix(repo_url, max_prefix))
    if not prefix[0].isalpha():
        prefix = ("r" + prefix)[:max_prefix].rstrip("-")
    return f"{prefix}-{digest}"


def _repo_prefix(repo_url: str, max_prefix: int) -> str:
    if "://" not in repo_url and ":" in repo_url and "@" in repo_url:
        path = repo_url.split(":", 1)[1]  # git@host:owner/repo
    else:
        path = urlsplit(repo_url).path or repo_url
    path = path.strip("/")
    if path.endswith(".git"):
        path = path[:-4]
    prefix = _NOT_NAME.sub("-", path.lower()).strip("-") or "binder"
    if len(prefix) > max_prefix:
        half = (max_prefix - 1) // 2
        prefix = f"{prefix[:half].rstrip('-')}-{prefix[-half:].lstrip('-')}"
    return prefix


@dataclass(frozen=True, slots=True)
class HubSettings:
    """The hub-related options of the application (BinderHub's names)."""

    hub_url: str
    hub_url_local: str = ""
    hub_api_token: str = ""
    auth_enabled: bool = False
    use_named_servers: bool = False
    named_server_limit_per_user: int = 0
    per_repo_quota: int = 0
    per_repo_quota_higher: int = 0
    pod_quota: int | None = None

    @classmethod
    def from_app(cls, app: Any) -> HubSettings:
        names = [f for f in cls.__dataclass_fields__ if f != "hub_url"]
        values = {n: getattr(app, n) for n in names if hasattr(app, n)}
        return cls(hub_url=getattr(app, "hub_url", ""), **values)

    @property
    def api_url(self) -> str:
        # Like BinderHub: a hub-managed service gets JUPYTERHUB_API_URL from
        # the hub, which wins over the public URL; hub_url_local wins over both.
        if self.hub_url_local:
            return self.hub_url_local.rstrip("/") + "/hub/api/"
        env = os.environ.get("JUPYTERHUB_API_URL", "")
        if env:
            return env.rstrip("/") + "/"
        return self.hub_url.rstrip("/") + "/hub/api/"


@dataclass(frozen=True, slots=True)
class _Plan:
    user: str
    server_name: str
    anonymous: bool
    repo_url: str
    repo_quota: int

    @property
    def full_name(self) -> str:
        return f"{self.user}/{self.server_name}"


@dataclass(slots=True)
class _Traces:
    """What one launch may have left on the hub, for its cleanup."""

    user: bool = False  # a temporary user (anonymous)
    server: bool = False  # a server requested for a real user (authenticated)
    # The signed-in user's server existed before this launch (stopped or
    # running): a failure stops it, never deletes it (its storage stays).
    keep_server: bool = False
    token_id: str = ""  # the launch token of a real user
    # POSTs the hub has not answered yet (it may be frozen): the cleanup
    # waits for them, or a request still queued in the hub's socket would
    # create again what the cleanup removed.
    inflight: set[asyncio.Task[HttpResponse]] = field(default_factory=set)

    @property
    def any(self) -> bool:
        return self.user or self.server or bool(self.token_id)


@dataclass(frozen=True, slots=True)
class PooledServer:
    """A server started ahead of any launch (``binderbuild.warmpool``), as
    the default server of a fresh temporary user that has no token yet:
    nobody can use it until ``HubLauncher.hand_out`` mints one."""

    user: str
    url: str  # the server on the hub's public URL
    image: str
    repo_url: str
    ready_at: float = field(default_factory=time.monotonic)

    @property
    def full_name(self) -> str:
        return f"{self.user}/"


class _LauncherMeta(MetaHasTraits, abc.ABCMeta):
    """traitlets' metaclass combined with the ABCMeta of the Launcher contract."""


class HubLauncher(LoggingConfigurable, Launcher, metaclass=_LauncherMeta):
    """JupyterHub REST API launcher (anonymous temporary users, or named
    servers of authenticated users)."""

    retries = Integer(
        6,
        config=True,
        help="Attempts per hub API request (the first included) when the hub is "
        "unreachable or answers 429/502/503/504. Never beyond launch_timeout.",
    )
    retry_delay = Float(
        1.0,
        config=True,
        help="Seconds before the first retry of a hub API request; doubles with each retry.",
    )
    retry_delay_max = Float(8.0, config=True, help="Upper bound of the delay between retries.")
    launch_timeout = Float(
        600.0,
        config=True,
        help="Seconds a launch may take in total, from the quota check to the server "
        "being ready. A launch that takes longer fails and is cleaned up.",
    )
    request_timeout = Float(
        20.0,
        config=True,
        help="Seconds a single hub API request may take (cut to the time left of its "
        "operation, see hub_unresponsive_timeout).",
    )
    hub_unresponsive_timeout = Float(
        30.0,
        config=True,
        help="Seconds a hub that is down or hung (accepts connections, answers nothing) "
        "may keep one launch step waiting, retries included; then the launch fails "
        "saying JupyterHub did not answer. Also how long a server's progress stream may "
        "stay silent (the hub sends a keepalive every 8 s) before the hub is asked "
        "whether it is alive.",
    )
    cleanup_timeout = Float(
        3600.0,
        config=True,
        help="Seconds binderbuild keeps trying to remove what a failed launch left "
        "on the hub (e.g. while the hub is down). The idle culler catches the rest.",
    )
    token_expires_in = Integer(
        0,
        config=True,
        help="Lifetime in seconds of the per-launch server token. 0: until the temporary "
        "user is deleted (anonymous) or the token is revoked.",
    )
    server_counter_class = Unicode(
        "",
        config=True,
        help="Import string of the server counter used for launch quotas: a class taking "
        "(parent=, log=) whose count(repo_url=None) returns the running servers. "
        "Empty: count from the hub's REST API (HubServerCounter).",
    )

    @classmethod
    def section_names(cls) -> list[str]:
        # BinderHub's c.Launcher.retries etc. apply too (lowest priority).
        return ["Launcher", *super().section_names()]

    def __init__(
        self,
        *,
        http: HttpClient,
        providers: Mapping[str, RepoProvider] | None = None,
        settings: HubSettings,
        **kwargs: Any,
    ) -> None:
        """``settings``: the application's launch options (BinderHub's names),
        given explicitly; ``HubSettings.from_app`` reads them off the app."""
        super().__init__(**kwargs)
        self.settings = settings
        if not self.settings.hub_url:
            raise ConfigError("HubLauncher needs BinderBuild.hub_url (the hub's public URL).")
        if not self.settings.hub_api_token:
            raise ConfigError(
                "HubLauncher needs BinderBuild.hub_api_token (or JUPYTERHUB_API_TOKEN): "
                "the API token of binderbuild's hub service."
            )
        self.providers = dict(providers or {})
        self._stream_http = HttpClient(user_agent=http.user_agent, max_clients=1000)
        self._stream_http.observers = http.observers  # the same metrics
        self.hub = HubClient(
            http,
            self.settings.api_url,
            self.settings.hub_api_token,
            retry=RetryPolicy(self.retries, self.retry_delay, self.retry_delay_max),
            request_timeout=self.request_timeout,
            unresponsive_timeout=self.hub_unresponsive_timeout,
            linger_timeout=self.cleanup_timeout,
            stream_http=self._stream_http,
        )
        self.quota = LaunchQuota(self._make_counter(), self.settings.pod_quota)
        if self.settings.pod_quota is not None or self._any_repo_quota():
            with contextlib.suppress(RuntimeError):  # no running loop: start lazily
                self.quota.start()
        self._cleanups: set[asyncio.Task[None]] = set()
        # "user/" names of pooled servers not handed out yet: they take a place
        # of the total quota, not of their repository's (see hand_out).
        self._pooled: set[str] = set()

    def _any_repo_quota(self) -> bool:
        s = self.settings
        return bool(
            s.per_repo_quota
            or s.per_repo_quota_higher
            or any(
                "quota" in entry.get("config", {})
                for p in self.providers.values()
                for entry in getattr(p, "spec_config", [])
            )
        )

    def _make_counter(self) -> ServerCounter:
        if self.server_counter_class:
            klass = import_item(self.server_counter_class)
            return klass(parent=self, log=self.log)  # type: ignore[no-any-return]  # import_item is untyped
        return HubServerCounter(self.hub.get_json, parent=self, log=self.log)

    # --- the contract ---------------------------------------------------------

    async def launch(
        self, request: LaunchRequest
    ) -> AsyncGenerator[ProgressEvent | LaunchResult, None]:
        # The work runs in its own task and talks to this generator through a
        # queue: the deadline then never cancels the consumer's code, and a
        # consumer that goes away cancels exactly this launch.
        queue: asyncio.Queue[ProgressEvent | LaunchResult | BaseException] = asyncio.Queue()
        task = asyncio.ensure_future(self._run(request, queue.put_nowait))
        try:
            yield event(Phase.LAUNCHING, "Launching server...\n")
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, LaunchResult):
                    return
        finally:
            # The client went away (or the launch ended): a running launch
            # is cancelled, and cancelling it schedules its cleanup.
            if not task.done():
                task.cancel()

    def launch_quota(self) -> LaunchQuota:
        return self.quota

    async def check(self) -> dict[str, Any]:
        deadline = time.monotonic() + min(4.5, self.hub_unresponsive_timeout)
        resp = await self.hub.call("GET", "", attempts=1, deadline=deadline)
        if resp.status != 200:
            raise HubError(f"JupyterHub answered {resp.status}: {hub_reason(resp)}")
        info: dict[str, Any] = {"version": resp.json().get("version", "")}
        if self.settings.pod_quota is not None:
            info["quota"] = self.settings.pod_quota
        info["launches_in_flight"] = len(self.quota.inflight())
        return info

    async def close(self) -> None:
        if self._cleanups:
            # Give cleanups a moment to finish; the idle culler gets the rest.
            await asyncio.wait(list(self._cleanups), timeout=5)
            for task in list(self._cleanups):
                task.cancel()
        await self.hub.close()
        await self.quota.close()
        self._stream_http.close()

    # --- one launch --------------------------------------------------------------

    def _plan(self, request: LaunchRequest) -> _Plan:
        s = self.settings
        repo_url = request.ref.repo_url
        if s.auth_enabled:
            if not request.user:
                raise Forbidden("Log in to launch servers on this Binder.")
            if request.server_name:
                server_name = request.server_name
            elif s.use_named_servers:
                # One server per user and repository: launching it again resumes it.
                server_name = server_name_for_repo(repo_url)
            else:
                server_name = ""
            user, anonymous = request.user, False
        else:
            user, server_name, anonymous = unique_name_from_repo(repo_url), "", True
        return _Plan(user, server_name, anonymous, repo_url, self._repo_quota(request))

    def _repo_quota(self, request: LaunchRequest) -> int:
        s = self.settings
        provider = self.providers.get(request.ref.provider_id)
        if provider is not None:
            configured = provider.repo_config(request.ref.spec).get("quota")
            if configured is not None:
                return int(configured)
            if s.per_repo_quota_higher and provider.has_higher_quota(request.ref.spec):
                return s.per_repo_quota_higher
        return s.per_repo_quota

    async def _run(
        self,
        request: LaunchRequest,
        emit: Callable[[ProgressEvent | LaunchResult | BaseException], None],
    ) -> None:
        started = time.monotonic()
        deadline = started + self.launch_timeout
        last_message = [""]
        traces = _Traces()  # what a failure must remove again
        reservation: Reservation | None = None
        plan: _Plan | None = None
        try:
            plan = self._plan(request)
            async with asyncio.timeout_at(_loop_time(deadline)):
                reservation = await self.quota.check_and_reserve(
                    plan.repo_url,
                    plan.repo_quota,
                    plan.full_name,
                    not_in_repo=frozenset(self._pooled),
                )
                existing = "new"
                if plan.anonymous:
                    await self._create_user(plan, deadline, traces)
                else:
                    existing = await self._check_user_servers(plan, request, deadline)
                    traces.keep_server = existing != "new"
                token, token_id = await self._create_token(plan, deadline, traces)
                if not plan.anonymous:
                    # Tokens of temporary users go with the user.
                    traces.token_id = token_id
                if existing == "running":
                    # The same repository and image, already running: resume it.
                    emit(event(Phase.LAUNCHING, "Resuming your running server\n"))
                    url = urljoin(self.settings.hub_url, self._server_url_path(plan))
                    reservation.succeeded()
                    self.log.info("resumed %s for %s", plan.full_name, request.image)
                    emit(
                        LaunchResult(
                            url=url, token=token, user=plan.user, server_name=plan.server_name
                        )
                    )
                    return
                if existing == "other image":
                    emit(
                        event(
                            Phase.LAUNCHING,
                            "Restarting your server with the new image (your files stay)\n",
                        )
                    )
                    await self._stop_server(plan, deadline)
                elif existing == "stopped":
                    emit(event(Phase.LAUNCHING, "Starting your stopped server again\n"))
                if existing != "starting":
                    await self._start_server(plan, request, token, deadline, traces)
                else:
                    traces.server = True

                def relay(ev: dict[str, Any]) -> None:
                    message = str(ev.get("message") or "").strip()
                    if message:
                        last_message[0] = message
                        emit(event(Phase.LAUNCHING, message + "\n"))

                async def request_again() -> None:
                    relay({"message": "JupyterHub lost the starting server; asking again"})
                    await self._start_server(plan, request, token, deadline, traces)

                ready = await self._follow(plan, relay, deadline, request_again)
            url = urljoin(self.settings.hub_url, ready.get("url") or self._server_url_path(plan))
            reservation.succeeded()
            self.log.info(
                "launched %s as %s in %.2fs",
                request.image,
                plan.full_name,
                time.monotonic() - started,
            )
            emit(LaunchResult(url=url, token=token, user=plan.user, server_name=plan.server_name))
        except TimeoutError:
            reason = f" Last message from JupyterHub: {last_message[0]}" if last_message[0] else ""
            emit(
                LaunchTimeout(
                    f"The server did not start within {self.launch_timeout:g} seconds.{reason}"
                )
            )
            self._after_failure(plan, traces, reservation)
        except asyncio.CancelledError:
            if plan is not None:
                self.log.info("launch of %s as %s abandoned", request.image, plan.full_name)
            self._after_failure(plan, traces, reservation)
            raise
        except BinderBuildError as exc:
            emit(exc)
            self._after_failure(plan, traces, reservation)
        except Exception as exc:  # a bug: still clean up and say something useful
            self.log.exception("launch of %s crashed", request.image)
            emit(LaunchFailed(f"Launch failed: {type(exc).__name__}: {exc}"))
            self._after_failure(plan, traces, reservation)

    def _server_url_path(self, plan: _Plan) -> str:
        base = urlsplit(self.settings.hub_url).path.rstrip("/")
        server = f"{quote(plan.server_name, safe='')}/" if plan.server_name else ""
        return f"{base}/user/{quote(plan.user, safe='@~')}/{server}"

    async def _create_user(self, plan: _Plan, deadline: float, traces: _Traces) -> None:
        # Set before the call: a POST whose answer got lost (timeout, hub
        # restart) may still have created the user.
        traces.user = True
        resp = await self.hub.call(
            "POST",
            user_path(plan.user),
            deadline=deadline,
            conflict_ok_on_retry=True,
            inflight=traces.inflight,
        )
        if resp.status == 409:
            # A fresh random name that already exists (on the first attempt):
            # someone else's user, neither ours to reuse nor to delete.
            traces.user = False
            raise HubError("JupyterHub already has a user with the generated name; try again.")
        if resp.status not in (200, 201):
            raise HubError(f"JupyterHub refused to create a user: {hub_reason(resp)}")

    async def _check_user_servers(
        self, plan: _Plan, request: LaunchRequest, deadline: float
    ) -> str:
        """What the signed-in user already has for this launch's server:
        "new" (nothing), "stopped" (kept with its storage), "running" (ready,
        same image: resumed), "other image" (running an older build: restarted
        with the new one), "starting" (a spawn is pending: followed). Raises
        QuotaExceeded when starting one more would pass the servers-per-user
        limit (servers running or starting; stopped ones do not count)."""
        model = await self.hub.get_json(
            user_path(plan.user) + "?include_stopped_servers=1", deadline
        )
        servers = {
            name: server
            for name, server in (model.get("servers") or {}).items()
            if isinstance(server, dict)
        }
        active = {name for name, server in servers.items() if not server.get("stopped")}
        if plan.server_name == "":
            if "" in active:
                raise QuotaExceeded(
                    f"{plan.user} already has a running server. Stop it before launching another."
                )
            return "new"
        mine = servers.get(plan.server_name)
        if mine is not None and plan.server_name in active:
            if mine.get("pending") == "stop":
                await self._wait_stopped(plan, deadline)
                return "stopped"
            if mine.get("pending"):
                return "starting"
            image = (mine.get("user_options") or {}).get("image")
            return "running" if mine.get("ready") and image == request.image else "other image"
        limit = self.settings.named_server_limit_per_user
        named = [name for name in active if name]
        if limit > 0 and len(named) >= limit:
            raise QuotaExceeded(
                f"{plan.user} already has {len(named)} of at most {limit} servers running. "
                "Stop one before launching another."
            )
        return "new" if mine is None else "stopped"

    async def _stop_server(self, plan: _Plan, deadline: float) -> None:
        """Stop (never delete) the user's server and wait until it is stopped."""
        resp = await self.hub.call(
            "DELETE", server_path(plan.user, plan.server_name), deadline=deadline
        )
        if resp.status not in (202, 204, 404):
            raise HubError(f"JupyterHub refused to stop {plan.full_name}: {hub_reason(resp)}")
        await self._wait_stopped(plan, deadline)

    async def _wait_stopped(self, plan: _Plan, deadline: float) -> None:
        for _ in range(100_000):  # bounded by the deadline of the launch
            state, _server = await self._server_state(plan, deadline)
            if state in ("gone", "no user"):
                return
            await asyncio.sleep(0.25)

    async def _create_token(
        self, plan: _Plan, deadline: float, traces: _Traces
    ) -> tuple[str, str]:
        # A hub token of the launch's user that can access only this server:
        # jupyterhub-singleuser accepts it, and it dies with the temporary user.
        body: dict[str, Any] = {
            "note": f"binder launch {plan.full_name}",
            "scopes": [f"access:servers!server={plan.full_name}"],
        }
        if self.token_expires_in > 0:
            body["expires_in"] = self.token_expires_in
        resp = await self.hub.call(
            "POST",
            f"{user_path(plan.user)}/tokens",
            json_body=body,
            deadline=deadline,
            inflight=traces.inflight,
        )
        if resp.status not in (200, 201):
            raise HubError(f"JupyterHub refused to create a server token: {hub_reason(resp)}")
        model = resp.json()
        token = model.get("token")
        if not isinstance(token, str) or not token:
            raise HubError("JupyterHub created a token but did not return it.")
        return token, str(model.get("id", ""))

    def user_options(self, request: LaunchRequest, token: str | None) -> dict[str, Any]:
        """The spawner's ``user_options`` for ``request``: BinderHub's keys.
        ``token`` None: a pooled server, whose token is minted at hand-out."""
        options: dict[str, Any] = {"image": request.image}
        if token is not None:
            options["token"] = token
        if request.profile:
            options["profile"] = request.profile
        options.update(
            repo_url=request.ref.repo_url,
            binder_ref_url=request.ref.ref_url,
            binder_launch_host=request.launch_host,
            binder_request=request.request_path,
            binder_persistent_request=request.persistent_request_path,
        )
        return options

    async def _start_server(
        self,
        plan: _Plan,
        request: LaunchRequest,
        token: str | None,
        deadline: float,
        traces: _Traces,
    ) -> None:
        options = self.user_options(request, token)
        path = server_path(plan.user, plan.server_name)
        # A real user's server is stopped again on failure only if this
        # launch may have started it (set before the call: an answer can get
        # lost), never when the hub refused because one was already there.
        traces.server = not plan.anonymous
        # A 500 here is a spawn that failed within the hub's slow_spawn_timeout:
        # a real answer, not something to retry.
        resp = await self.hub.call(
            "POST",
            path,
            json_body=options,
            deadline=deadline,
            conflict_ok_on_retry=True,
            retry_500=False,
            inflight=traces.inflight,
        )
        if resp.status in (200, 201, 202):
            return
        if 400 <= resp.status < 500:
            traces.server = False
        reason = hub_reason(resp)
        if (
            not plan.anonymous
            and resp.status in (400, 409)
            and ("already" in reason or "maximum" in reason)
        ):
            # The hub's own per-user limits (a running default server, its
            # named_server_limit_per_user) refused.
            raise QuotaExceeded(f"Could not start the server: {reason}")
        raise LaunchFailed(f"Could not start the server: {reason}")

    async def _follow(
        self,
        plan: _Plan,
        relay: Callable[[dict[str, Any]], None],
        deadline: float,
        request_again: Callable[[], Awaitable[None]],
    ) -> dict[str, Any]:
        """Follow the spawn until the server is ready, and make sure it is.

        A hub that restarts cancels its pending spawns (the stream is cut,
        then the progress answers 404 or "Spawn cancelled"): the server is
        then requested again, once. ``ready`` is returned only when the
        hub's model of the server says ready and not pending (a server
        that is being stopped is not ready).
        """
        path = server_path(plan.user, plan.server_name) + "/progress"
        asked_again = False
        not_starting = 0
        while True:
            outcome = await self.hub.follow_progress(path, relay, deadline=deadline)
            final = outcome.final
            reason = ""
            if final is not None and not final.get("ready"):
                reason = str(final.get("message") or "")
                if "cancel" not in reason.lower():
                    why = reason or "the hub gave no reason"
                    raise LaunchFailed(f"Could not start the server: {why}")
            elif final is None and outcome.status == 400 and not_starting < 20:
                # "not starting": a spawn that failed at once is still being
                # stopped by the hub, and its reason is only on the progress
                # stream once that is done. Ask again shortly.
                not_starting += 1
                await asyncio.sleep(0.25)
                continue
            state, server = await self._server_state(plan, deadline)
            if state == "ready":
                return {**(final or {}), "url": (final or {}).get("url") or server.get("url")}
            if state == "spawn":
                await asyncio.sleep(0.25)
                continue  # a spawn is pending (again): follow it
            if state == "stop":
                await asyncio.sleep(0.5)  # being stopped: look again once it is gone
                continue
            # No server. A restart (or anything that cancelled or lost the
            # spawn, as opposed to a spawn that failed) gets one more try.
            lost = bool(reason) or outcome.status in (0, 200, 404)
            if lost and not asked_again and state == "gone":
                asked_again = True
                self.log.info(
                    "server of %s is gone (%s); requesting it again",
                    plan.full_name,
                    reason or outcome.cut or outcome.error or f"progress {outcome.status}",
                )
                await request_again()
                continue
            if state == "no user":
                raise LaunchFailed(
                    "Could not start the server: its JupyterHub user was removed while it started."
                )
            why = reason or outcome.error or outcome.cut or "the server is no longer starting"
            raise LaunchFailed(f"Could not start the server: {why}.")

    async def _server_state(self, plan: _Plan, deadline: float) -> tuple[str, dict[str, Any]]:
        """The launch's server as the hub sees it: "ready", "spawn" (pending
        start), "stop" (pending stop), "gone" (no such server) or "no user"."""
        resp = await self.hub.call("GET", user_path(plan.user), deadline=deadline)
        if resp.status == 404:
            return "no user", {}
        if resp.status != 200:
            raise HubError(f"JupyterHub refused GET {user_path(plan.user)}: {hub_reason(resp)}")
        model = resp.json() or {}
        server = (model.get("servers") or {}).get(plan.server_name)
        if not isinstance(server, dict) or server.get("stopped"):
            return "gone", {}
        pending = server.get("pending")
        if pending == "stop":
            return "stop", server
        if pending:
            return "spawn", server
        if server.get("ready"):
            return "ready", server
        return "gone", server

    # --- warm pools (binderbuild.warmpool) ---------------------------------------

    async def start_pooled(self, request: LaunchRequest) -> PooledServer:
        """Start a server for a warm pool: a fresh temporary user, its default
        server started with exactly the ``user_options`` of a cold launch of
        ``request`` less the token. No token of that user exists, so nothing
        can reach the server before ``hand_out``. It takes a place of the
        total quota (``pod_quota``) from now on. Raises what a launch raises;
        whatever it made is removed again."""
        if self.settings.auth_enabled:
            raise ConfigError("Warm pools start servers of temporary users: anonymous Binder only.")
        deadline = time.monotonic() + self.launch_timeout
        traces = _Traces()
        reservation: Reservation | None = None
        plan = _Plan(unique_name_from_repo(request.ref.repo_url), "", True, request.ref.repo_url, 0)
        last_message = [""]

        def relay(ev: dict[str, Any]) -> None:
            message = str(ev.get("message") or "").strip()
            if message:
                last_message[0] = message

        async def request_again() -> None:
            await self._start_server(plan, request, None, deadline, traces)

        try:
            async with asyncio.timeout_at(_loop_time(deadline)):
                # A place of the total only: reserved under no repository, so
                # pooled servers starting never count against their repository.
                reservation = await self.quota.check_and_reserve("", 0, plan.full_name)
                self._pooled.add(plan.full_name)
                await self._create_user(plan, deadline, traces)
                await self._start_server(plan, request, None, deadline, traces)
                ready = await self._follow(plan, relay, deadline, request_again)
        except TimeoutError:
            self._pooled.discard(plan.full_name)
            self._after_failure(plan, traces, reservation)
            reason = f" Last message from JupyterHub: {last_message[0]}" if last_message[0] else ""
            raise LaunchTimeout(
                f"The server did not start within {self.launch_timeout:g} seconds.{reason}"
            ) from None
        except BaseException:
            self._pooled.discard(plan.full_name)
            self._after_failure(plan, traces, reservation)
            raise
        reservation.succeeded()
        url = urljoin(self.settings.hub_url, ready.get("url") or self._server_url_path(plan))
        return PooledServer(user=plan.user, url=url, image=request.image, repo_url=plan.repo_url)

    async def hand_out(self, server: PooledServer, request: LaunchRequest) -> LaunchResult:
        """Give a pooled server to the launch ``request``: check its
        repository's quota (handed-out servers count there, pooled ones do
        not), then mint the launch token, the server's first credential.
        Takes at most ``hub_unresponsive_timeout``; raises QuotaExceeded
        (the server stays pooled) or HubError (the caller removes it)."""
        plan = _Plan(server.user, "", True, server.repo_url, self._repo_quota(request))
        reservation: Reservation | None = None
        if plan.repo_quota:
            reservation = await self.quota.check_and_reserve(
                plan.repo_url,
                plan.repo_quota,
                plan.full_name,
                count_total=False,
                not_in_repo=frozenset(self._pooled),
            )
        try:
            deadline = time.monotonic() + self.hub_unresponsive_timeout
            async with asyncio.timeout_at(_loop_time(deadline)):
                token, _ = await self._create_token(plan, deadline, _Traces())
        except TimeoutError:
            if reservation is not None:
                reservation.failed()
            raise HubError(
                f"JupyterHub did not create the launch token within "
                f"{self.hub_unresponsive_timeout:g} seconds."
            ) from None
        except BaseException:
            if reservation is not None:
                reservation.failed()
            raise
        self._pooled.discard(plan.full_name)
        if reservation is not None:
            reservation.succeeded()
        return LaunchResult(url=server.url, token=token, user=server.user, warm=True)

    async def touch(self, servers: list[PooledServer]) -> None:
        """Report activity of pooled servers, so the idle culler (which reads
        the hub's ``last_activity``) does not cull them while they wait.
        Needs the ``users:activity`` scope (part of ``admin:users``)."""
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        deadline = time.monotonic() + min(10.0, self.hub_unresponsive_timeout)
        for server in servers:
            resp = await self.hub.call(
                "POST",
                f"{user_path(server.user)}/activity",
                json_body={"last_activity": now, "servers": {"": {"last_activity": now}}},
                deadline=deadline,
                attempts=1,
            )
            if resp.status not in (200, 204, 404):
                raise HubError(
                    f"JupyterHub refused the activity of pooled server {server.user}: "
                    f"{hub_reason(resp)}"
                )

    async def remove_pooled(self, server: PooledServer) -> None:
        """Stop a pooled server and delete its temporary user (retried like
        the cleanup of a failed launch, until ``cleanup_timeout``)."""
        self._pooled.discard(server.full_name)
        plan = _Plan(server.user, "", True, server.repo_url, 0)
        task = asyncio.ensure_future(self._cleanup(plan, _Traces(user=True), "pooled server"))
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
        await asyncio.shield(task)

    # --- leaving nothing behind ---------------------------------------------------

    def _after_failure(
        self, plan: _Plan | None, traces: _Traces, reservation: Reservation | None
    ) -> None:
        if plan is not None and traces.any:
            task = asyncio.ensure_future(self._cleanup(plan, traces))
            self._cleanups.add(task)

            def done(t: asyncio.Task[None]) -> None:
                self._cleanups.discard(t)
                # Only now is the place free again: the server is gone.
                if reservation is not None:
                    reservation.failed()

            task.add_done_callback(done)
        elif reservation is not None:
            reservation.failed()

    async def _cleanup(self, plan: _Plan, traces: _Traces, what: str = "failed launch") -> None:
        deadline = time.monotonic() + self.cleanup_timeout
        delay = self.retry_delay
        if traces.inflight:
            # Removing first would lose to a request the hub has not handled
            # yet (a frozen hub runs what is queued in its socket on resume).
            self.log.info(
                "cleanup of %s waits for %d unanswered hub request(s)",
                plan.full_name,
                len(traces.inflight),
            )
            await asyncio.wait(list(traces.inflight), timeout=self.cleanup_timeout)
        while True:
            try:
                if await self._remove(plan, deadline, traces):
                    self.log.info("cleaned up %s %s", what, plan.full_name)
                    return
            except HubError as exc:
                self.log.warning("cleanup of %s: %s", plan.full_name, exc.message)
            if time.monotonic() + delay > deadline:
                self.log.error(
                    "gave up cleaning up %s after %gs; the idle culler will remove it",
                    plan.full_name,
                    self.cleanup_timeout,
                )
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_delay_max)

    async def _remove(self, plan: _Plan, deadline: float, traces: _Traces) -> bool:
        """One pass at removing a launch's traces; True when nothing is left."""
        if traces.token_id:
            # A real user's tokens outlive the server: revoke this launch's.
            resp = await self.hub.call(
                "DELETE",
                f"{user_path(plan.user)}/tokens/{traces.token_id}",
                deadline=deadline,
                attempts=1,
            )
            if resp.status not in (204, 404):
                return False
            traces.token_id = ""
        if not plan.anonymous and not traces.server:
            return True
        if plan.anonymous:
            # Stop first: deleting a user whose server is starting is refused.
            stop = await self.hub.call(
                "DELETE", server_path(plan.user, ""), deadline=deadline, attempts=1
            )
            if stop.status == 404:
                return True  # no such user (never created, or already gone)
            resp = await self.hub.call(
                "DELETE", user_path(plan.user), deadline=deadline, attempts=1
            )
            return resp.status in (204, 404)
        if plan.server_name:
            resp = await self.hub.call(
                "DELETE",
                server_path(plan.user, plan.server_name),
                # A server the user had before this launch keeps its storage.
                json_body={"remove": not traces.keep_server},
                deadline=deadline,
                attempts=1,
            )
            return resp.status in (202, 204, 404)
        resp = await self.hub.call(
            "DELETE", server_path(plan.user, ""), deadline=deadline, attempts=1
        )
        return resp.status in (202, 204, 404)


def _loop_time(deadline: float) -> float:
    """A time.monotonic() deadline on the running loop's clock."""
    loop = asyncio.get_running_loop()
    return loop.time() + (deadline - time.monotonic())
