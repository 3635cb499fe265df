"""What a build leaves behind, and how a restarted service finds it (issue 12).

Without Docker: owner tokens (which process a leftover belongs to, and
whether it is still alive), work directories with their process groups, the
local builder's cleanup on every end of a build, repo2docker dying with the
service (PR_SET_PDEATHSIG), and the history's write-ahead record that a
restart turns into an interrupted build. The real thing (a service killed
with SIGKILL mid-build) is tests/chaos/test_build_crash.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from binderbuild import owners
from binderbuild.builders import leftovers
from binderbuild.builders.docker import DockerBuilder
from binderbuild.builds import Build, BuildState
from binderbuild.errors import BuildFailed
from binderbuild.events import Phase, event
from binderbuild.history import BuildHistory, BuildRecord, history_write_ahead
from binderbuild.models import BuildJob, ImageSpec, ResolvedRef


def dead_token() -> str:
    """The owner token of a process that has exited."""
    proc = subprocess.Popen(["true"])
    start = owners.start_time(proc.pid)
    proc.wait()
    boot, ns, _, _ = owners.current().split(":")
    return f"{boot}:{ns}:{proc.pid}:{start}"


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


# --- owner tokens -------------------------------------------------------------


def test_this_process_is_alive_and_an_exited_one_is_not() -> None:
    assert owners.alive(owners.current()) is True
    assert owners.alive(dead_token()) is False


def test_a_reused_pid_is_not_the_owner() -> None:
    boot, ns, pid, start = owners.current().split(":")
    assert owners.alive(f"{boot}:{ns}:{pid}:{int(start) + 1}") is False


def test_another_boot_is_dead_and_another_pid_namespace_is_unknown() -> None:
    _, ns, pid, start = owners.current().split(":")
    assert owners.alive(f"00000000-0000-0000-0000-000000000000:{ns}:{pid}:{start}") is False
    boot = owners.current().split(":")[0]
    assert owners.alive(f"{boot}:pid-[1]:{pid}:{start}") is None
    assert owners.alive("garbage") is None


# --- work directories and their process groups ----------------------------------


def test_a_dead_owners_workdir_and_process_group_are_swept(tmp_path: Path) -> None:
    workdir = leftovers.make_workdir(str(tmp_path), image="127.0.0.1:5000/b:1")
    # A process group as repo2docker leaves it: the leader and a child.
    proc = subprocess.Popen(
        ["sh", "-c", "sleep 300 & exec sleep 300"], start_new_session=True
    )
    try:
        leftovers.note_process(workdir, proc.pid)
        info = json.loads((workdir / leftovers.OWNER_FILE).read_text())
        assert info["owner"] == owners.current()
        assert info["image"] == "127.0.0.1:5000/b:1"
        assert info["groups"][0]["pgid"] == proc.pid

        # Its owner alive: left alone.
        assert leftovers.sweep_workdirs(str(tmp_path)) == []
        assert workdir.exists() and group_alive(proc.pid)

        # Its owner gone: the group is killed and the directory removed.
        info["owner"] = dead_token()
        (workdir / leftovers.OWNER_FILE).write_text(json.dumps(info))
        found = leftovers.sweep_workdirs(str(tmp_path))
        assert [f.image for f in found] == ["127.0.0.1:5000/b:1"]
        assert found[0].killed_groups == 1
        assert not workdir.exists()
        proc.wait(10)
        deadline = time.monotonic() + 10
        while group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not group_alive(proc.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_process_group_id_reused_later_is_not_killed(tmp_path: Path) -> None:
    workdir = leftovers.make_workdir(str(tmp_path), image="x:1")
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        # Recorded with a start time after the group's: the group is someone else's.
        info = json.loads((workdir / leftovers.OWNER_FILE).read_text())
        info["owner"] = dead_token()
        info["groups"] = [{"pgid": proc.pid, "start": owners.start_time(proc.pid) + 10_000}]
        (workdir / leftovers.OWNER_FILE).write_text(json.dumps(info))
        found = leftovers.sweep_workdirs(str(tmp_path))
        assert found[0].killed_groups == 0
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_only_binderbuild_workdirs_are_touched(tmp_path: Path) -> None:
    other = tmp_path / "binderbuild-not-ours"
    other.mkdir()
    (tmp_path / "unrelated").mkdir()
    assert leftovers.sweep_workdirs(str(tmp_path)) == []
    assert other.exists()


# --- the local builder: cleanup, checkouts, dying with the service ----------------


def job() -> BuildJob:
    ref = ResolvedRef(
        provider_id="git",
        spec="https%3A%2F%2Fexample.org%2Fr.git/main",
        unresolved_ref="main",
        resolved_ref="0" * 40,
        resolved_spec="https%3A%2F%2Fexample.org%2Fr.git/" + "0" * 40,
        repo_url="https://example.org/r.git",
        ref_url="",
        slug_source="example.org/r",
    )
    return BuildJob(image=ImageSpec("x", "1", "build-x"), ref=ref, push=False)


def fake_python(tmp_path: Path, body: str) -> str:
    script = tmp_path / "fake-python"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return str(script)


def builder(python: str, root: Path) -> DockerBuilder:
    return DockerBuilder(
        repo2docker_python=python, egress_filter=False, sandbox=False, work_root=str(root)
    )


def test_repo2docker_checks_out_into_the_workdir_and_it_is_removed(tmp_path: Path) -> None:
    root = tmp_path / "work"
    root.mkdir()
    # repo2docker puts its checkout in TMPDIR (tempfile.mkdtemp).
    body = 'd=$(mktemp -d "$TMPDIR/repo2docker-XXXX"); echo "checkout=$d"; exit 1\n'
    b = builder(fake_python(tmp_path, body), root)

    async def consume() -> list[str]:
        messages: list[str] = []
        with pytest.raises(BuildFailed):
            async for ev in b.build(job()):
                messages.append(ev.message)
        return messages

    messages = asyncio.run(consume())
    checkout = next(m for m in messages if m.startswith("checkout=")).strip().split("=", 1)[1]
    assert checkout.startswith(str(root))
    assert list(root.iterdir()) == []


def test_a_cancelled_build_leaves_no_process_or_directory(tmp_path: Path) -> None:
    root = tmp_path / "work"
    root.mkdir()
    pidfile = tmp_path / "pids"
    body = (
        f'sleep 300 & echo $! >> {shlex.quote(str(pidfile))}\n'
        f'echo $$ >> {shlex.quote(str(pidfile))}\n'
        'echo started\nwait\n'
    )
    b = builder(fake_python(tmp_path, body), root)
    b.kill_grace = 1.0

    async def run() -> None:
        async def consume() -> None:
            async for _ in b.build(job()):
                pass

        task = asyncio.ensure_future(consume())
        for _ in range(400):
            if task.done() or (pidfile.exists() and len(pidfile.read_text().split()) >= 2):
                break
            await asyncio.sleep(0.05)
        assert not task.done(), task
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    for pid in map(int, pidfile.read_text().split()):
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), pid
    assert list(root.iterdir()) == []


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_repo2docker_dies_with_the_service(tmp_path: Path) -> None:
    """The build's process gets PR_SET_PDEATHSIG: SIGKILL when its parent dies."""
    probe = (
        "import ctypes, signal; libc = ctypes.CDLL(None, use_errno=True); "
        "v = ctypes.c_int(); libc.prctl(2, ctypes.byref(v), 0, 0, 0); print(f'pdeathsig={v.value}')"
    )
    body = f"exec {shlex.quote(sys.executable)} -c {shlex.quote(probe)}\n"
    b = builder(fake_python(tmp_path, body), tmp_path)

    async def consume() -> list[str]:
        return [ev.message async for ev in b.build(job())]

    messages = asyncio.run(consume())
    assert f"pdeathsig={int(signal.SIGKILL)}\n" in messages


# --- history: write-ahead, then interrupted ----------------------------------------


def build_of(state: BuildState = BuildState.RUNNING) -> Build:
    build = Build(job=job())
    build.state = state
    build.started = time.time()
    build.append(event(Phase.BUILDING, "Step 1/3\n"))
    return build


def test_a_started_build_is_recorded_and_a_restart_marks_it_interrupted(tmp_path: Path) -> None:
    async def scenario() -> None:
        history = BuildHistory(tmp_path)
        build = build_of()
        history_write_ahead(history, lambda ref: "r")(build)
        await history.flush()
        stored = await history.get(build.id)
        assert stored is not None and stored.state == "running"
        # The same process looks: its own running build is not interrupted.
        assert await history.mark_interrupted() == []
        await history.close()

        # The next process: the owner of the record is gone.
        history = BuildHistory(tmp_path)
        marked = await history.mark_interrupted(alive=lambda token: False)
        assert [r.id for r in marked] == [build.id]
        record = await history.get(build.id)
        assert record is not None
        assert record.state == "failed"
        assert record.failure_type == "BuildInterrupted"
        assert record.failure is not None and "interrupted" in record.failure
        assert record.finished is not None
        events = await history.events(build.id)
        assert events is not None and events[-1].phase is Phase.FAILED
        assert "interrupted" in events[-1].message
        # Once only.
        assert await history.mark_interrupted(alive=lambda token: False) == []
        await history.close()

    asyncio.run(scenario())


def test_a_finished_build_replaces_its_write_ahead_record(tmp_path: Path) -> None:
    async def scenario() -> None:
        history = BuildHistory(tmp_path)
        build = build_of()
        history_write_ahead(history, lambda ref: "r")(build)
        build.finish(BuildState.SUCCEEDED, event(Phase.BUILT, "Built.\n"), None)
        await history.record(BuildRecord.from_build(build, "r"), build.events)
        assert await history.mark_interrupted(alive=lambda token: False) == []
        record = await history.get(build.id)
        assert record is not None and record.state == "succeeded"
        await history.close()

    asyncio.run(scenario())


# --- the sandbox dies with the service -----------------------------------------------


def test_the_sandbox_is_labelled_with_its_owner_and_holds_a_lifeline() -> None:
    from docker.models.containers import _create_container_args
    from docker.types import ContainerConfig

    from binderbuild.builders import sandbox

    args = sandbox.container_args(
        image="binderbuild/builder:local",
        r2d_args=["--json-logs"],
        env={"BINDERBUILD_SANDBOX_LIFELINE": "off"},
        work_dir="/var/lib/x/box",
        egress_dir=None,
        network="none",
        memory_limit=1 << 30,
        pids_limit=64,
        image_name="127.0.0.1:5000/b:1",
        build="binderbuild-abc",
    )
    assert args["labels"] == {
        "binderbuild.role": "build-sandbox",
        "binderbuild.image": "127.0.0.1:5000/b:1",
        "binderbuild.build": "binderbuild-abc",
        "binderbuild.owner": owners.current(),
    }
    assert args["environment"]["BINDERBUILD_SANDBOX_LIFELINE"] == "stdin"
    # What docker-py sends: stdin open, closed when the one client (the service) leaves.
    create = _create_container_args({**args, "version": "1.41"})
    create.pop("host_config")
    config = ContainerConfig("1.41", **{k: v for k, v in create.items() if k != "name"})
    assert (config["OpenStdin"], config["StdinOnce"]) == (True, True)


def test_the_sandbox_entry_exits_when_its_stdin_ends() -> None:
    code = (
        "from binderbuild.builders.sandbox_entry import watch_lifeline\n"
        "import time\nwatch_lifeline()\nprint('watching', flush=True)\ntime.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline() == b"watching\n"
    assert proc.poll() is None
    proc.stdin.close()
    assert proc.wait(20) == 137
