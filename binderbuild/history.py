"""Finished builds, kept: outcome and full log, by id and per repository.

The in-memory ``BuildManager`` forgets builds when the service restarts (and
old ones sooner); this store keeps every finished build in one SQLite file
under ``BinderBuild.data_dir`` so that ``/api/builds/{id}``, its event stream
and its log stay readable, and a repository's build history can be listed.

SQLite (standard library) because the data is small, written once per build
and read rarely; one file is easy to back up or put on a volume. All database
work runs on one dedicated thread, so the event loop never blocks on disk and
the connection is never used from two threads at once.

Retention: at most ``max_builds`` builds, none older than ``max_age_days``
(by finish time; with ``keep_latest_success`` each image's newest successful
build is spared by the age limit), and logs within ``max_log_bytes`` (the
oldest builds lose their log first, stored as an empty blob, and keep their
outcome: ``log_pruned``); pruned when the store opens and after every write.

Image use (issue 16): ``image_usage`` holds ``last_used`` per image name,
written in batches by ``binderbuild.lifecycle.UsageTracker`` and read by the
image cleaners (least recently used first). The table is created when the
store opens, so a database written by an older version gains it in place;
the schema version is not bumped for an added table, so an older version
can still open the file (it ignores the table).

Write-ahead (issue 12): a build is stored as ``queued`` when it has to wait
for a slot and as ``running`` when it starts (``history_write_ahead``, an
on_queued and on_started hook), with the owner token of this
process (``binderbuild.owners``) in ``running_builds``; its final record
replaces it. A service that was killed leaves such rows behind: the next
start (``mark_interrupted``, from ``services.start`` after the builder swept
the build's leftovers) stores them as failed with the failure type
``BuildInterrupted``, so ``/api/builds`` says what happened. Rows of a live
owner (another service on the same data directory) are left alone. Another
added table, like ``image_usage``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sqlite3
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from traitlets import Bool, Float, Integer, Unicode
from traitlets.config import LoggingConfigurable

from binderbuild import owners
from binderbuild.builders.base import ExternalBuild
from binderbuild.builds import Build, BuildState
from binderbuild.errors import ConfigError, error_code
from binderbuild.events import Phase, ProgressEvent, event
from binderbuild.models import ResolvedRef
from binderbuild.units import parse_bytes

log = logging.getLogger("binderbuild.history")

T = TypeVar("T")

DB_NAME = "build-history.sqlite3"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS builds (
    id TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    repo TEXT NOT NULL,
    build_name TEXT NOT NULL,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    finished REAL NOT NULL,
    record TEXT NOT NULL,
    events BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS builds_by_repo ON builds (provider, repo, created);
CREATE INDEX IF NOT EXISTS builds_by_name ON builds (build_name, finished);
CREATE INDEX IF NOT EXISTS builds_by_finished ON builds (finished);
CREATE TABLE IF NOT EXISTS image_usage (
    image TEXT PRIMARY KEY,
    last_used REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS running_builds (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL
);
"""

# The failure type (failure.type in the builds API) of a build whose service
# stopped under it (killed, crashed) and that the next start found.
INTERRUPTED = "BuildInterrupted"
INTERRUPTED_REASON = (
    "Build interrupted: binderbuild stopped while this build was running (it was killed "
    "or crashed). The build was stopped and its leftovers removed; ask for the image "
    "again to build it."
)
# A build that was still waiting in the queue (written ahead when queued).
INTERRUPTED_QUEUED_REASON = (
    "Build interrupted: binderbuild stopped while this build was waiting in the queue "
    "(it was killed or crashed); it never started. Ask for the image again to build it."
)
# The same for backends whose builds run elsewhere (build pods), which this
# process neither stopped nor cleaned up.
INTERRUPTED_ELSEWHERE_REASON = (
    "Build interrupted: the binderbuild process that followed this build stopped "
    "(it was killed or crashed). Ask for the image again."
)


@dataclass(frozen=True)
class BuildRecord:
    """What is known about one build, live or stored: the builds API's view."""

    id: str
    provider: str
    spec: str
    repo: str  # the provider's repository identity (a spec without its ref)
    unresolved_ref: str
    resolved_ref: str
    resolved_spec: str
    repo_url: str
    ref_url: str
    image: str
    build_name: str
    state: str  # BuildState value
    phase: str  # Phase value of the newest event
    failure: str | None
    failure_type: str | None
    forced: bool
    found_existing: bool
    created: float  # unix time
    started: float | None
    finished: float | None
    event_count: int

    @classmethod
    def from_build(cls, build: Build, repo: str) -> BuildRecord:
        ref: ResolvedRef = build.job.ref
        if build.events:
            phase = build.events[-1].phase.value
        else:
            phase = Phase.WAITING.value
        failure = failure_type = None
        if build.error is not None and build.state in (BuildState.FAILED, BuildState.CANCELLED):
            failure, failure_type = build.error.message, error_code(build.error)
        return cls(
            id=build.id,
            provider=ref.provider_id,
            spec=ref.spec,
            repo=repo,
            unresolved_ref=ref.unresolved_ref,
            resolved_ref=ref.resolved_ref,
            resolved_spec=ref.resolved_spec,
            repo_url=ref.repo_url,
            ref_url=ref.ref_url,
            image=build.job.image.name,
            build_name=build.job.image.build_name,
            state=build.state.value,
            phase=phase,
            failure=failure,
            failure_type=failure_type,
            forced=build.forced,
            found_existing=build.found_existing,
            created=build.created,
            started=build.started,
            finished=build.finished,
            event_count=len(build.events),
        )

    @classmethod
    def from_external(cls, build: ExternalBuild, repo: str) -> BuildRecord:
        """A build the backend saw end without the BuildManager (an adopted
        build pod, issue 18)."""
        ref = build.ref
        return cls(
            id=build.id,
            provider=ref.provider_id,
            spec=ref.spec,
            repo=repo,
            unresolved_ref=ref.unresolved_ref,
            resolved_ref=ref.resolved_ref,
            resolved_spec=ref.resolved_spec,
            repo_url=ref.repo_url,
            ref_url=ref.ref_url,
            image=build.image,
            build_name=build.build_name,
            state=(BuildState.SUCCEEDED if build.succeeded else BuildState.FAILED).value,
            phase=build.events[-1].phase.value if build.events else Phase.WAITING.value,
            failure=build.failure,
            failure_type=build.failure_type,
            forced=False,
            found_existing=False,
            created=build.created,
            started=build.started,
            finished=build.finished,
            event_count=len(build.events),
        )

    @classmethod
    def from_json(cls, text: str) -> BuildRecord:
        data = json.loads(text)
        names = cls.__dataclass_fields__
        # Tolerate fields added or dropped by other versions of the service.
        return cls(**{k: data.get(k) for k in names})

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


def encode_events(events: Iterable[ProgressEvent]) -> bytes:
    """JSON lines of event payloads, compressed: logs are repetitive text."""
    lines = "\n".join(json.dumps(ev.payload(), separators=(",", ":")) for ev in events)
    return zlib.compress(lines.encode(), 6)


def decode_events(blob: bytes) -> list[ProgressEvent]:
    if not blob:  # a log pruned by max_log_bytes
        return []
    text = zlib.decompress(blob).decode()
    result: list[ProgressEvent] = []
    for line in text.split("\n") if text else []:
        data = json.loads(line)
        try:
            phase = Phase(data.pop("phase"))
        except ValueError:
            phase = Phase.UNKNOWN
        message = data.pop("message", "")
        result.append(event(phase, message, **data))
    return result


def _store_build(
    db: sqlite3.Connection, record: BuildRecord, blob: bytes, finished: float
) -> None:
    """Insert or replace one build's row (``finished`` orders pruning)."""
    db.execute(
        "INSERT OR REPLACE INTO builds "
        "(id, provider, repo, build_name, state, created, finished, record, events) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            record.id,
            record.provider,
            record.repo,
            record.build_name,
            record.state,
            record.created,
            finished,
            record.to_json(),
            blob,
        ),
    )


class BuildHistory(LoggingConfigurable):
    """SQLite store of finished builds with a retention limit."""

    max_builds = Integer(
        10_000,
        config=True,
        help="Finished builds kept in the history store; the oldest are dropped first. "
        "0: no limit by count.",
    )
    max_age_days = Float(
        30.0,
        config=True,
        help="Days a finished build's log and outcome are kept. 0: no limit by age.",
    )
    max_log_bytes = Unicode(
        "2G",
        config=True,
        help="Byte budget of all stored build logs (as stored: compressed). Past it the "
        "logs of the oldest finished builds are dropped (their outcome stays); the builds "
        "API answers 410 for such a log. Empty or '0': no limit.",
    )
    keep_latest_success = Bool(
        False,
        config=True,
        help="Spare each image's newest successful build (outcome and log) from "
        "max_age_days, so the build that made an image stays readable however old it "
        "is. max_builds still applies.",
    )

    def __init__(self, directory: str | Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path = Path(directory) / DB_NAME
        # One thread owns the connection: SQLite work is serialised there.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="build-history")
        self._pending: set[asyncio.Future[Any]] = set()
        self._db = self._open()

    # --- setup ------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Created here, then used only on the executor's thread.
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ConfigError(
                    f"{self.path} was written by a newer binderbuild (schema {version})."
                )
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"Cannot open the build history at {self.path}: {exc}") from None
        self._prune(db)
        return db

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, self._db)

    # --- writing ----------------------------------------------------------

    async def record(self, record: BuildRecord, events: Sequence[ProgressEvent]) -> None:
        blob = encode_events(events)

        def write(db: sqlite3.Connection) -> None:
            _store_build(db, record, blob, record.finished or time.time())
            # A finished build's record replaces its write-ahead one.
            db.execute("DELETE FROM running_builds WHERE id = ?", (record.id,))
            self._prune(db)

        await self._run(write)

    def write_ahead(self, record: BuildRecord, events: Sequence[ProgressEvent]) -> None:
        """Store a build that is starting as running, owned by this process.

        Handed to the database thread at once (not on the next loop turn), so
        it is written before anything the build does next, and before its
        final record, which replaces it."""
        blob = encode_events(events)
        owner = owners.current()

        def write(db: sqlite3.Connection) -> None:
            with db:
                db.execute("BEGIN")
                _store_build(db, record, blob, time.time())
                db.execute(
                    "INSERT OR REPLACE INTO running_builds (id, owner) VALUES (?, ?)",
                    (record.id, owner),
                )

        future = asyncio.wrap_future(self._executor.submit(write, self._db))
        self._pending.add(future)
        future.add_done_callback(self._written)

    async def mark_interrupted(
        self,
        alive: Callable[[str], bool | None] = owners.alive,
        reason: str = INTERRUPTED_REASON,
    ) -> list[BuildRecord]:
        """Store the running builds of dead owners (a killed service) as failed,
        interrupted (``reason``); return them. Run at start, once the builder
        has removed their leftovers."""

        def read(db: sqlite3.Connection) -> list[tuple[str, str, str | None, bytes | None]]:
            rows = db.execute(
                "SELECT r.id, r.owner, b.record, b.events FROM running_builds r "
                "LEFT JOIN builds b ON b.id = r.id"
            ).fetchall()
            return [(str(a), str(b), c, d) for a, b, c, d in rows]

        marked: list[BuildRecord] = []
        for build_id, owner, text, blob in await self._run(read):
            if alive(owner) is not False:
                continue
            if text is None or blob is None:
                # Its record was pruned meanwhile: nothing to say.
                await self._run(functools.partial(_forget_running, build_id))
                continue
            old = BuildRecord.from_json(text)
            why = INTERRUPTED_QUEUED_REASON if old.state == BuildState.QUEUED.value else reason
            events = decode_events(blob)
            events.append(event(Phase.FAILED, f"Build failed: {why}\n"))
            record = replace(
                old,
                state=BuildState.FAILED.value,
                phase=Phase.FAILED.value,
                failure=why,
                failure_type=INTERRUPTED,
                finished=time.time(),
                event_count=len(events),
            )
            await self.record(record, events)
            log.warning(
                "build %s of %s was interrupted by the service stopping; marked as failed",
                record.id,
                record.image,
            )
            marked.append(record)
        return marked

    async def flush(self) -> None:
        """Wait for the writes handed over so far."""
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    def record_soon(self, record: BuildRecord, events: Sequence[ProgressEvent]) -> None:
        """Record from synchronous code (a BuildManager callback); ``close`` waits for it."""
        future = asyncio.ensure_future(self.record(record, list(events)))
        self._pending.add(future)
        future.add_done_callback(self._written)

    def _written(self, future: asyncio.Future[Any]) -> None:
        self._pending.discard(future)
        if not future.cancelled() and future.exception() is not None:
            # A full disk must not break builds: the record is lost, loudly.
            log.error("could not store a build in the history: %s", future.exception())

    def _prune(self, db: sqlite3.Connection) -> None:
        if self.max_age_days > 0:
            cutoff = time.time() - self.max_age_days * 86400
            if self.keep_latest_success:
                # Uses builds_by_name (build_name, finished) for the inner query.
                db.execute(
                    "DELETE FROM builds WHERE finished < ? AND NOT ("
                    "state = ? AND finished = (SELECT MAX(b.finished) FROM builds b "
                    "WHERE b.build_name = builds.build_name AND b.state = ?))",
                    (cutoff, BuildState.SUCCEEDED.value, BuildState.SUCCEEDED.value),
                )
            else:
                db.execute("DELETE FROM builds WHERE finished < ?", (cutoff,))
        if self.max_builds > 0:
            db.execute(
                "DELETE FROM builds WHERE id NOT IN "
                "(SELECT id FROM builds ORDER BY finished DESC LIMIT ?)",
                (self.max_builds,),
            )
        budget = parse_bytes(self.max_log_bytes) if self.max_log_bytes else 0
        if budget > 0:
            self._prune_logs(db, budget)

    def _prune_logs(self, db: sqlite3.Connection, budget: int) -> None:
        """Drop the logs of the oldest finished builds until all fit in ``budget``."""
        total = int(db.execute("SELECT COALESCE(SUM(LENGTH(events)), 0) FROM builds").fetchone()[0])
        if total <= budget:
            return
        dropped: list[str] = []
        rows = db.execute(
            "SELECT id, LENGTH(events) FROM builds WHERE LENGTH(events) > 0 "
            "AND id NOT IN (SELECT id FROM running_builds) ORDER BY finished"
        )
        for build_id, size in rows.fetchall():
            if total <= budget:
                break
            dropped.append(str(build_id))
            total -= int(size)
        db.executemany("UPDATE builds SET events = X'' WHERE id = ?", [(i,) for i in dropped])
        log.info("dropped the logs of %d old builds (max_log_bytes)", len(dropped))

    async def record_usage(self, used: Mapping[str, float]) -> None:
        """Note when images were last used (image name -> unix time), in one
        transaction. A time older than the stored one never replaces it."""
        rows = list(used.items())
        if not rows:
            return

        def write(db: sqlite3.Connection) -> None:
            with db:
                db.execute("BEGIN")
                db.executemany(
                    "INSERT INTO image_usage (image, last_used) VALUES (?, ?) "
                    "ON CONFLICT(image) DO UPDATE SET "
                    "last_used = MAX(last_used, excluded.last_used)",
                    rows,
                )

        await self._run(write)

    async def last_used(self) -> dict[str, float]:
        """Image name -> when it was last used (unix time), for every image seen."""

        def read(db: sqlite3.Connection) -> dict[str, float]:
            return {
                str(image): float(when)
                for image, when in db.execute("SELECT image, last_used FROM image_usage")
            }

        return await self._run(read)

    # --- reading ----------------------------------------------------------

    async def get(self, build_id: str) -> BuildRecord | None:
        def read(db: sqlite3.Connection) -> str | None:
            row = db.execute("SELECT record FROM builds WHERE id = ?", (build_id,)).fetchone()
            return row[0] if row else None

        text = await self._run(read)
        return BuildRecord.from_json(text) if text else None

    async def events(self, build_id: str) -> list[ProgressEvent] | None:
        def read(db: sqlite3.Connection) -> bytes | None:
            row = db.execute("SELECT events FROM builds WHERE id = ?", (build_id,)).fetchone()
            return row[0] if row else None

        blob = await self._run(read)
        return decode_events(blob) if blob is not None else None

    async def log_pruned(self, build_id: str) -> bool:
        """Whether the build is stored without its log (dropped by max_log_bytes)."""

        def read(db: sqlite3.Connection) -> bool:
            row = db.execute(
                "SELECT LENGTH(events) FROM builds WHERE id = ?", (build_id,)
            ).fetchone()
            return row is not None and int(row[0]) == 0

        return await self._run(read)

    async def list_for_repo(self, provider: str, repo: str, limit: int = 50) -> list[BuildRecord]:
        """Newest first."""

        def read(db: sqlite3.Connection) -> list[str]:
            rows = db.execute(
                "SELECT record FROM builds WHERE provider = ? AND repo = ? "
                "ORDER BY created DESC LIMIT ?",
                (provider, repo, limit),
            ).fetchall()
            return [r[0] for r in rows]

        return [BuildRecord.from_json(t) for t in await self._run(read)]

    async def latest_success(self, build_name: str) -> BuildRecord | None:
        """The newest succeeded build of an image (by its build name)."""

        def read(db: sqlite3.Connection) -> str | None:
            row = db.execute(
                "SELECT record FROM builds WHERE build_name = ? AND state = ? "
                "ORDER BY finished DESC LIMIT 1",
                (build_name, BuildState.SUCCEEDED.value),
            ).fetchone()
            return row[0] if row else None

        text = await self._run(read)
        return BuildRecord.from_json(text) if text else None

    async def count(self) -> int:
        return await self._run(
            lambda db: int(db.execute("SELECT COUNT(*) FROM builds").fetchone()[0])
        )

    # --- lifecycle ----------------------------------------------------------

    async def close(self) -> None:
        """Wait for pending writes, then close the database."""
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
        await self._run(lambda db: db.close())
        self._executor.shutdown(wait=True)


def history_recorder(
    history: BuildHistory, repo_of: Callable[[ResolvedRef], str]
) -> Callable[[Build], None]:
    """A ``BuildManager`` on_finished hook that stores every finished build
    (``repo_of`` names its repository)."""

    def on_finished(build: Build) -> None:
        history.record_soon(BuildRecord.from_build(build, repo_of(build.job.ref)), build.events)

    return on_finished


def _forget_running(build_id: str, db: sqlite3.Connection) -> None:
    db.execute("DELETE FROM running_builds WHERE id = ?", (build_id,))


def history_write_ahead(
    history: BuildHistory, repo_of: Callable[[ResolvedRef], str]
) -> Callable[[Build], None]:
    """A ``BuildManager`` on_started hook: the build is stored as running
    before the backend starts it, so a service killed mid-build leaves a
    record the next start marks interrupted (``mark_interrupted``)."""

    def on_started(build: Build) -> None:
        history.write_ahead(BuildRecord.from_build(build, repo_of(build.job.ref)), build.events)

    return on_started


def external_build_recorder(
    history: BuildHistory, repo_of: Callable[[ResolvedRef], str]
) -> Callable[[ExternalBuild], None]:
    """A ``BuildResources.on_external_build`` hook that stores builds the
    backend saw end without the BuildManager (adopted build pods). Builds
    whose spec is unknown (pods of older versions) are filed under their
    repository URL."""

    def on_external_build(build: ExternalBuild) -> None:
        repo = repo_of(build.ref) if build.ref.spec else build.ref.repo_url
        history.record_soon(BuildRecord.from_external(build, repo), build.events)

    return on_external_build
