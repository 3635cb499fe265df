"""The builds API: a build is a resource with an id.

    POST   /api/builds                      start (or join) the build of an image
    GET    /api/builds?provider=&repo=      a repository's builds, newest first
    GET    /api/builds/{id}                 status (JSON)
    DELETE /api/builds/{id}                 cancel (authorized callers)
    GET    /api/builds/{id}/events          event stream with ids; resumable (Last-Event-ID)
    GET    /api/builds/{id}/log             the build log as plain text
    GET    /api/images/{provider}/{spec}    does the image exist? (no build)
    GET    /api/openapi.yaml|json           the OpenAPI description of all this

The handlers reuse what ``/build/{provider}/{spec}`` runs on: the pipeline's
validate/resolve/image stages and the ``BuildManager``, whose dedup by image
is what makes ``POST`` idempotent. Finished builds are read back from the
``BuildHistory`` store once the manager has forgotten them (or after a
restart). docs/api.md is the reference for clients; binderbuild/openapi.yaml
the machine-readable one.
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from traitlets import Float
from traitlets.config import LoggingConfigurable

from binderbuild.auth import ApiTokens, api_caller
from binderbuild.builds import Build, BuildState
from binderbuild.errors import (
    BinderBuildError,
    Conflict,
    Forbidden,
    NotFound,
    RateLimited,
    SpecError,
    UnsupportedMediaType,
)
from binderbuild.events import ProgressEvent
from binderbuild.handlers.base import BaseHandler
from binderbuild.handlers.build import EventStreamHandler
from binderbuild.history import BuildHistory, BuildRecord
from binderbuild.models import BuildJob, BuildRequest, ResolvedRef
from binderbuild.pipeline import lookup_provider

if TYPE_CHECKING:
    from binderbuild.providers.base import RepoProvider

OPENAPI_PATH = Path(__file__).resolve().parent.parent / "openapi.yaml"
MAX_LIST = 200
_BUILD_FIELDS = {"provider", "spec", "build_only", "force_rebuild"}
# Same pattern as the Last-Event-ID parameter in openapi.yaml.
_EVENT_ID = re.compile(r"-1|0|[1-9][0-9]{0,11}")


class BuildsAPI(LoggingConfigurable):
    """Settings and shared state of the builds API."""

    rebuild_cooldown = Float(
        600.0,
        config=True,
        help="Seconds after a forced rebuild of a repository before another forced "
        "rebuild of the same repository is accepted (429 with Retry-After until then).",
    )

    def __init__(
        self,
        *,
        providers: Mapping[str, RepoProvider],
        history: BuildHistory,
        api_tokens: ApiTokens,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.providers = providers
        self.history = history
        # Holders of BinderBuild.api_tokens are the "authorized callers".
        self.api_tokens = api_tokens
        self._last_forced: dict[tuple[str, str], float] = {}  # (provider, repo) -> monotonic

    def repo_of(self, ref: ResolvedRef) -> str:
        """The repository a build belongs to: its spec without the ref."""
        try:
            return self.repo_of_spec(ref.provider_id, ref.spec)
        except BinderBuildError:
            return ref.repo_url

    def repo_of_spec(self, provider_id: str, spec: str) -> str:
        return lookup_provider(self.providers, provider_id).parse(spec).repo

    def claim_forced_rebuild(self, provider_id: str, repo: str) -> None:
        """Raise RateLimited while the repository's cooldown runs, else start it."""
        key = (provider_id, repo)
        now = time.monotonic()
        last = self._last_forced.get(key)
        if last is not None and now - last < self.rebuild_cooldown:
            wait = self.rebuild_cooldown - (now - last)
            raise RateLimited(
                f"This repository was force-rebuilt recently; try again in {wait:.0f} seconds.",
                retry_after=wait,
            )
        self._last_forced[key] = now


def api_handlers(base_url: str) -> list[tuple[str, type[BaseHandler]]]:
    b = base_url
    return [
        (rf"{b}api/builds", BuildsHandler),
        (rf"{b}api/builds/(?P<build_id>[^/]+)", BuildResourceHandler),
        (rf"{b}api/builds/(?P<build_id>[^/]+)/events", BuildEventsHandler),
        (rf"{b}api/builds/(?P<build_id>[^/]+)/log", BuildLogHandler),
        (rf"{b}api/images/(?P<provider_id>[^/]+)/(?P<spec>.+)", ImageHandler),
        (rf"{b}api/openapi\.(?P<fmt>yaml|json)", OpenAPIHandler),
    ]


# --- authorization ------------------------------------------------------------

# Authorized callers (may cancel and force rebuilds) are the holders of
# BinderBuild.api_tokens, checked with binderbuild.auth.
def caller_authorized(handler: BaseHandler) -> bool | None:
    """True (authorized), False (credentials given but refused) or None (no
    credentials)."""
    if not handler.request.headers.get("Authorization"):
        return None
    return api_caller(handler, handler.ctx.api_tokens) is not None


# --- helpers --------------------------------------------------------------------


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _seconds(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return round(max(0.0, end - start), 3)


def build_json(record: BuildRecord, base_url: str, live: Build | None = None) -> dict[str, Any]:
    """The JSON status of a build (schema ``Build`` in openapi.yaml)."""
    now = time.time()
    link = f"{base_url}api/builds/{record.id}"
    end = record.finished if record.finished is not None else now
    return {
        "id": record.id,
        "state": record.state,
        "phase": record.phase,
        "provider": record.provider,
        "spec": record.spec,
        "repo": record.repo,
        "ref": record.unresolved_ref,
        "resolved_ref": record.resolved_ref,
        "resolved_spec": record.resolved_spec,
        "repo_url": record.repo_url,
        "ref_url": record.ref_url,
        "image": record.image,
        "build_name": record.build_name,
        "queue_position": live.queue_position if live is not None else None,
        "watchers": live.followers if live is not None else 0,
        "forced": bool(record.forced),
        "found_existing": bool(record.found_existing),
        "failure": (
            {"reason": record.failure, "type": record.failure_type}
            if record.failure is not None
            else None
        ),
        "timings": {
            "created": _iso(record.created),
            "started": _iso(record.started),
            "finished": _iso(record.finished),
            "queued_seconds": _seconds(
                record.created, record.started or (None if record.finished else now)
            ),
            "build_seconds": _seconds(record.started, end if record.started else None),
            "total_seconds": _seconds(record.created, end),
        },
        "event_count": record.event_count,
        "links": {
            "self": link,
            "events": f"{link}/events",
            "log": f"{link}/log",
            "image": f"{base_url}api/images/{record.provider}/{record.spec}",
        },
    }


_MISSING = object()


def _parse_bool(value: Any, name: str, default: bool) -> bool:
    if value is _MISSING:
        return default
    if not isinstance(value, bool):  # null too: the schema says boolean
        raise SpecError(f"'{name}' must be true or false.")
    return value


def _parse_build_body(handler: BaseHandler) -> dict[str, Any]:
    content_type = handler.request.headers.get("Content-Type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise UnsupportedMediaType(
            "Send the build request as JSON (Content-Type: application/json)."
        )
    try:
        body = json.loads(handler.request.body or b"null")
    except (ValueError, UnicodeDecodeError):
        raise SpecError("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise SpecError('The request body must be a JSON object: {"provider": ..., "spec": ...}.')
    unknown = sorted(set(body) - _BUILD_FIELDS)
    if unknown:
        raise SpecError(f"Unknown field(s) in the request body: {', '.join(unknown)}.")
    for name, limit in (("provider", 64), ("spec", 2048)):
        value = body.get(name)
        if not isinstance(value, str) or not value:
            raise SpecError(f"'{name}' is required and must be a non-empty string.")
        if len(value) > limit:
            raise SpecError(f"'{name}' is longer than {limit} characters.")
    build_only = _parse_bool(body.get("build_only", _MISSING), "build_only", True)
    if not build_only:
        raise SpecError(
            "The builds API builds images only (build_only must be true); "
            "to launch a server use /build/{provider}/{spec}."
        )
    return {
        "provider": body["provider"],
        "spec": body["spec"],
        "force_rebuild": _parse_bool(body.get("force_rebuild", _MISSING), "force_rebuild", False),
    }


def _event_index(value: str | None) -> int:
    """The index of the last event a client saw (Last-Event-ID); -1: none."""
    if value is None or value == "":
        return -1
    if not _EVENT_ID.fullmatch(value):
        raise SpecError("Last-Event-ID must be the integer id of an event of this build (or -1).")
    return int(value)


# --- handlers --------------------------------------------------------------------


class ApiHandler(BaseHandler):
    """JSON errors for every failure (``BaseHandler.write_error``)."""

    @property
    def api(self) -> BuildsAPI:
        return self.ctx.builds_api

    @property
    def history(self) -> BuildHistory:
        return self.api.history

    def require_authorized(self, action: str) -> bool:
        """Write 401/403 and return False unless the caller is authorized."""
        verdict = caller_authorized(self)
        if verdict:
            return True
        if verdict is None:
            self.set_header("WWW-Authenticate", 'Bearer realm="binderbuild"')
            self.write_json(
                {"message": f"Authentication required to {action}.", "status_code": 401}, 401
            )
        else:
            self.write_json(
                {"message": f"These credentials may not {action}.", "status_code": 403}, 403
            )
        return False

    def log_gone(self, build_id: str) -> None:
        """410: the build is known, its log was dropped (BuildHistory.max_log_bytes)."""
        message = (
            f"The log of build {build_id} was pruned to keep the stored logs within "
            f"their byte budget; its outcome is still at "
            f"{self.ctx.settings.base_url}api/builds/{build_id}."
        )
        self.write_json({"message": message, "status_code": 410}, 410)

    async def find(self, build_id: str) -> tuple[BuildRecord, Build | None]:
        """A build by id: live from the manager, else from the history store."""
        live = self.ctx.builds.get(build_id)
        if live is not None:
            return BuildRecord.from_build(live, self.api.repo_of(live.job.ref)), live
        record = await self.history.get(build_id) if _plausible_id(build_id) else None
        if record is None:
            raise NotFound(f"No build with id {build_id!r}.")
        return record, None


def _plausible_id(build_id: str) -> bool:
    return 0 < len(build_id) <= 64 and build_id.isascii() and build_id.isalnum()


class BuildsHandler(ApiHandler):
    async def post(self) -> None:
        body = _parse_build_body(self)
        force = body["force_rebuild"]
        # Other credentials (a hub user's token) are the admission checks'
        # business; only forcing and build-only-when-disallowed need ours.
        if force and not self.require_authorized("force a rebuild"):
            return
        if not self.ctx.settings.allow_build_only and not caller_authorized(self):
            raise Forbidden(
                "This deployment does not build images on request without launching them."
            )
        request = BuildRequest(
            provider_id=body["provider"],
            spec=body["spec"],
            build_only=True,
            client_ip=self.client_ip,
            user=await self.ctx.current_user_name(self),
            force_rebuild=force,
            launch_host=self.launch_host,
        )
        pipeline = self.ctx.pipeline
        target = pipeline.validate(request)
        await self.ctx.admit(self, request)
        located = await pipeline.locate(target)
        image = located.image
        builds = self.ctx.builds
        # No await between this check, the cooldown claim and ensure_build's
        # submit: a forced POST that joins a running build claims nothing.
        if force and builds.active_for(image.build_name) is None:
            self.api.claim_forced_rebuild(located.ref.provider_id, self.api.repo_of(located.ref))
        build, created = await pipeline.ensure_build(located, force=force)
        if build is not None:
            if created:
                # The write-ahead row (queued or running) is on disk before
                # the caller hears of the build: a crash right after the
                # answer still leaves it in the history, marked interrupted.
                await self.ctx.history.flush()
            return self._respond(build, created)

        # The image exists. Give the caller a build id for it: the running
        # (forced) build, else the last one remembered or stored, else a
        # record that it was found.
        active = builds.active_for(image.build_name)
        if active is not None:
            return self._respond(active, created=False)
        known = builds.latest_for(image.build_name)
        if known is not None and known.state is BuildState.SUCCEEDED:
            return self._respond(known, created=False)
        stored = await self.history.latest_success(image.build_name)
        # Re-checked after the await: a build may have started or finished meanwhile.
        known = builds.latest_for(image.build_name)
        if known is not None and known.state in (
            BuildState.SUCCEEDED,
            BuildState.RUNNING,
            BuildState.QUEUED,
        ):
            return self._respond(known, created=False)
        if stored is not None:
            self.set_header("Location", f"{self.ctx.settings.base_url}api/builds/{stored.id}")
            self.write_json(build_json(stored, self.ctx.settings.base_url))
            return None
        job = BuildJob(image=image, ref=located.ref, push=self.ctx.image_store.pushes)
        return self._respond(builds.record_existing(job), created=True)

    def _respond(self, build: Build, created: bool) -> None:
        build.touch()
        record = BuildRecord.from_build(build, self.api.repo_of(build.job.ref))
        self.set_header("Location", f"{self.ctx.settings.base_url}api/builds/{build.id}")
        self.write_json(
            build_json(record, self.ctx.settings.base_url, build), 201 if created else 200
        )

    async def get(self) -> None:
        given = {
            name: self.get_query_argument(name, None)
            for name in ("provider", "repo", "spec", "limit")
        }
        for name, value in given.items():
            if value == "":  # present but empty is a mistake, not "absent"
                raise SpecError(f"'{name}' must not be empty.")
        provider_id = given["provider"] or ""
        repo = given["repo"] or ""
        spec = given["spec"] or ""
        limit_text = given["limit"] or "50"
        if not provider_id:
            raise SpecError("Name the repository: ?provider=...&repo=... (or &spec=...).")
        if bool(repo) == bool(spec):
            raise SpecError("Give exactly one of 'repo' and 'spec'.")
        if (
            not limit_text.isascii()
            or not limit_text.isdigit()
            or not 1 <= int(limit_text) <= MAX_LIST
        ):
            raise SpecError(f"'limit' must be an integer from 1 to {MAX_LIST}.")
        limit = int(limit_text)
        if spec:
            repo = self.api.repo_of_spec(provider_id, spec)
        base = self.ctx.settings.base_url
        live = {
            b.id: b
            for b in self.ctx.builds.builds()
            if b.job.ref.provider_id == provider_id and self.api.repo_of(b.job.ref) == repo
        }
        items: dict[str, dict[str, Any]] = {}
        for build in live.values():
            items[build.id] = build_json(BuildRecord.from_build(build, repo), base, build)
        for record in await self.history.list_for_repo(provider_id, repo, limit):
            items.setdefault(record.id, build_json(record, base))
        ordered = sorted(items.values(), key=lambda b: b["timings"]["created"], reverse=True)
        self.write_json({"provider": provider_id, "repo": repo, "builds": ordered[:limit]})


class BuildResourceHandler(ApiHandler):
    async def get(self, build_id: str) -> None:
        record, live = await self.find(build_id)
        if live is not None:
            live.touch()  # a status poll counts as watching (abandoned-build policy)
        self.write_json(build_json(record, self.ctx.settings.base_url, live))

    async def delete(self, build_id: str) -> None:
        if not self.require_authorized("cancel builds"):
            return
        record, live = await self.find(build_id)
        if live is None or live.state.finished:
            raise Conflict(f"Build {build_id} has already finished ({record.state}).")
        await self.ctx.builds.cancel(build_id, "Build cancelled by an API caller.")
        record = BuildRecord.from_build(live, self.api.repo_of(live.job.ref))
        self.write_json(build_json(record, self.ctx.settings.base_url, live))


class BuildLogHandler(ApiHandler):
    async def get(self, build_id: str) -> None:
        _, live = await self.find(build_id)
        if live is None and await self.history.log_pruned(build_id):
            return self.log_gone(build_id)
        events = list(live.events) if live is not None else await self.history.events(build_id)
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.finish(log_text(events or []))


def log_text(events: Sequence[ProgressEvent]) -> str:
    """A build's events as a plain-text log: one message per line (a message
    without its own newline, such as a last log line cut off by a failure,
    does not run into the next)."""
    return "".join(
        ev.message if ev.message.endswith("\n") else ev.message + "\n"
        for ev in events
        if ev.message
    )


class BuildEventsHandler(ApiHandler, EventStreamHandler):
    """The events of one build with ``id:`` = their index, from ``Last-Event-ID`` + 1.

    A client that reconnects with the id of the last event it received gets
    exactly the events after it, then the live ones: the build's event list
    is append-only, and the index is the id.
    """

    async def get(self, build_id: str) -> None:
        after = _event_index(
            self.request.headers.get("Last-Event-ID")
            if "Last-Event-ID" in self.request.headers
            else self.get_query_argument("last_event_id", None)
        )
        _, live = await self.find(build_id)
        if live is None and await self.history.log_pruned(build_id):
            return self.log_gone(build_id)
        if live is not None:
            total = len(live.events)
            events: AsyncIterator[tuple[int | None, ProgressEvent]] = _live(live, after)
        else:
            stored = await self.history.events(build_id) or []
            total = len(stored)
            events = _replay(stored, after)
        if after >= total and (live is None or live.state.finished):
            raise SpecError(f"Last-Event-ID {after} is past the last event ({total - 1}).")
        self.start_stream()
        await self.stream(events)


async def _live(build: Build, after: int) -> AsyncIterator[tuple[int | None, ProgressEvent]]:
    async for index, ev in build.follow(after):
        yield index, ev


async def _replay(
    events: Sequence[ProgressEvent], after: int
) -> AsyncIterator[tuple[int | None, ProgressEvent]]:
    for index in range(after + 1, len(events)):
        yield index, events[index]


class ImageHandler(ApiHandler):
    async def get(self, *_route_args: str, **_route_kwargs: str) -> None:
        # The spec is read from the raw path: Tornado would decode the %2F of
        # a url-encoded git URL inside it.
        provider_id, spec = self.raw_provider_and_spec("api/images/")
        request = BuildRequest(
            provider_id=provider_id,
            spec=spec,
            build_only=True,
            client_ip=self.client_ip,
            user=await self.ctx.current_user_name(self),
            launch_host=self.launch_host,
        )
        pipeline = self.ctx.pipeline
        target = pipeline.validate(request)
        await self.ctx.admit(self, request)
        located = await pipeline.locate(target)
        ref, image = located.ref, located.image
        digest = await self.ctx.image_store.image_digest(image)
        found = {
            "provider": provider_id,
            "spec": spec,
            "resolved_ref": ref.resolved_ref,
            "resolved_spec": ref.resolved_spec,
            "image": image.name,
        }
        if digest is None:
            message = f"Image {image.name} does not exist (yet)."
            self.write_json({"message": message, "status_code": 404, **found}, 404)
        else:
            self.write_json({**found, "digest": digest})


@cache
def _openapi_document() -> dict[str, Any]:
    return yaml.safe_load(OPENAPI_PATH.read_text())  # type: ignore[no-any-return]  # YAML is untyped


def openapi_document(base_url: str) -> dict[str, Any]:
    """The OpenAPI description, its server set to this deployment's base URL."""
    doc = copy.deepcopy(_openapi_document())
    doc["servers"] = [{"url": base_url.rstrip("/") or "/", "description": "this service"}]
    return doc


class OpenAPIHandler(ApiHandler):
    def get(self, fmt: str) -> None:
        doc = openapi_document(self.ctx.settings.base_url)
        if fmt == "json":
            self.write_json(doc)
            return
        self.set_header("Content-Type", "application/yaml; charset=UTF-8")
        self.finish(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
