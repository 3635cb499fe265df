"""Real services on loopback for binderbuild's tests.

Plain classes and functions; the pytest fixtures that use them live in the
conftest files. Everything binds to 127.0.0.1 on a free port and is started
as a subprocess of the test run, so a test talks to the same programs a
deployment does (the Docker distribution registry, ``git daemon``,
``git http-backend``) and nothing leaves the machine.

The programs come from Debian packages that ``scripts/setup.sh`` installs:
docker-registry, apache2-utils (htpasswd) and git. Docker itself is started
by setup.sh too; :func:`docker_available` fails loudly when it is not.

This module is also run as a script by :class:`GitServer` to serve git's
smart HTTP protocol (``python realservices.py git-http-backend ROOT PORT``).
"""

from __future__ import annotations

import atexit
import base64
import io
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
BASE_IMAGE = "binderbuild/base:bookworm"
NOTEBOOK_BASE_IMAGE = "binderbuild/notebook-base:bookworm"

# Printed by the failing step of dockerfile_repo_files(fail=True). The RUN
# line assembles it at run time, so finding it in a build log proves the
# step's output was streamed (the Dockerfile text alone never contains it).
FAILURE_MESSAGE = "binderbuild-test-build-failure"
# Where dockerfile_repo_files() writes its marker inside the image.
MARKER_PATH = "/srv/binderbuild-marker"

# Accept headers a registry needs to return Docker v2 / OCI manifests (it
# answers 404 for a manifest whose media type the client does not accept).
MANIFEST_MEDIA_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
)

# Fixed identity and dates make commits reproducible: the same files give
# the same SHA on every machine. The user's and system git config are kept
# out (signing, hooks, default branch names would change the result).
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "binderbuild tests",
    "GIT_AUTHOR_EMAIL": "tests@binderbuild.invalid",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00+0000",
    "GIT_COMMITTER_NAME": "binderbuild tests",
    "GIT_COMMITTER_EMAIL": "tests@binderbuild.invalid",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00+0000",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
}

# urllib would send loopback requests to a proxy named in http_proxy.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# Processes still running when the interpreter exits (a test that forgot to
# stop a service, or an interrupted run) are terminated, so nothing is left
# listening for the next run.
_LIVE: set[subprocess.Popen[bytes]] = set()


class ServiceUnavailable(AssertionError):
    """A real service the tests need is missing: a failure, never a skip."""


def free_port(ip: str = LOOPBACK) -> int:
    """A TCP port on ``ip`` (loopback, or the host's own address on the
    servers' Docker network) that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _spawn(
    argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            # Own process group: stop() can end the service together with
            # any children it forked (git daemon forks per connection), and
            # a Ctrl-C aimed at pytest does not race our own shutdown.
            start_new_session=True,
        )
    _LIVE.add(proc)
    return proc


def _terminate(proc: subprocess.Popen[bytes] | None, timeout: float = 10) -> None:
    if proc is None:
        return
    if proc.poll() is None:
        # The group was created for this process (start_new_session), so
        # its id is the process's own pid: only what we started is hit.
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout)
    _LIVE.discard(proc)


@atexit.register
def _terminate_leftovers() -> None:
    for proc in list(_LIVE):
        _terminate(proc, timeout=5)


def _wait_until(
    ready: Callable[[], bool],
    *,
    what: str,
    proc: subprocess.Popen[bytes],
    log_path: Path,
    timeout: float = 30,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _LIVE.discard(proc)
            raise ServiceUnavailable(
                f"{what} exited with code {proc.returncode}; log {log_path}:\n{_log_tail(log_path)}"
            )
        if ready():
            return
        time.sleep(0.05)
    _terminate(proc)
    raise ServiceUnavailable(
        f"{what} did not answer within {timeout} s; log {log_path}:\n{_log_tail(log_path)}"
    )


def _http_status(url: str, headers: Mapping[str, str] | None = None, method: str = "GET") -> int:
    """HTTP status of a loopback URL; 0 when nothing answers."""
    request = urllib.request.Request(url, headers=dict(headers or {}), method=method)
    try:
        with _OPENER.open(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return 0


# ---------------------------------------------------------------- registry


class RegistryServer:
    """The Docker distribution registry (``docker-registry serve``) on loopback.

    Storage is a directory under ``workdir`` that survives :meth:`stop`, so
    ``stop()`` then ``start()`` simulates an outage and comes back on the
    same port with the same images. Deletes are enabled. With ``htpasswd``
    (user, password) the registry requires basic auth (bcrypt entry made by
    ``htpasswd -Bbn``); dockerd talks plain HTTP to it because loopback
    registries are trusted as insecure registries.
    """

    def __init__(
        self,
        workdir: Path,
        htpasswd: tuple[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.htpasswd = htpasswd
        self.port = port or free_port()
        self.log_path = self.workdir / "registry.log"
        self._proc: subprocess.Popen[bytes] | None = None
        # One secret for the life of this object: upload sessions stay
        # valid across a stop()/start().
        self._http_secret = secrets.token_hex(16)

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, the registry part of image names."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def credentials(self) -> dict[str, str] | None:
        """``{"registry", "username", "password"}`` as repo2docker's engines take them."""
        if self.htpasswd is None:
            return None
        user, password = self.htpasswd
        return {"registry": self.url, "username": user, "password": password}

    def auth_headers(self) -> dict[str, str]:
        if self.htpasswd is None:
            return {}
        token = base64.b64encode(":".join(self.htpasswd).encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def _write_config(self) -> Path:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        auth = ""
        if self.htpasswd is not None:
            user, password = self.htpasswd
            entry = subprocess.run(
                ["htpasswd", "-Bbn", user, password],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            htpasswd_file = self.workdir / "htpasswd"
            htpasswd_file.write_text(entry + "\n")
            auth = f"auth:\n  htpasswd:\n    realm: binderbuild-tests\n    path: {htpasswd_file}\n"
        config = self.workdir / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n"
            "  level: info\n"
            "  accesslog:\n"
            "    disabled: false\n"
            "storage:\n"
            "  filesystem:\n"
            f"    rootdirectory: {data}\n"
            "  delete:\n"
            "    enabled: true\n"
            "http:\n"
            f"  addr: {self.host}\n"
            f"  secret: {self._http_secret}\n" + auth
        )
        return config

    def _answers(self) -> bool:
        # 401 counts: with auth on, /v2/ asks for credentials once it is up.
        return _http_status(f"{self.url}/v2/") in (200, 401)

    def start(self, timeout: float = 30) -> None:
        """Start (or restart after stop()) and wait until ``/v2/`` answers."""
        if self.is_running():
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        if _port_open(self.port):
            raise ServiceUnavailable(f"port {self.port} is already in use")
        self._proc = _spawn(["docker-registry", "serve", str(config)], self.log_path)
        _wait_until(
            self._answers,
            what=f"registry on {self.host}",
            proc=self._proc,
            log_path=self.log_path,
            timeout=timeout,
        )

    def stop(self) -> None:
        """Stop the registry process; its storage stays for a later start()."""
        _terminate(self._proc)
        self._proc = None
        # The port must be free before a restart can bind it again.
        deadline = time.monotonic() + 10
        while _port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def manifest_status(self, repository: str, reference: str) -> int:
        """HTTP status of ``GET /v2/<repository>/manifests/<reference>``."""
        headers = {"Accept": ", ".join(MANIFEST_MEDIA_TYPES), **self.auth_headers()}
        return _http_status(f"{self.url}/v2/{repository}/manifests/{reference}", headers)

    def __enter__(self) -> RegistryServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------- git


class GitServer:
    """Serves the bare repositories under ``root`` over git:// and smart HTTP.

    ``git daemon`` (read-only, every repository exported) for
    ``git://127.0.0.1:PORT/NAME.git``, and ``git http-backend`` behind a small
    HTTP/CGI bridge (this module run as a script) for
    ``http://127.0.0.1:PORT2/NAME.git``. Repositories created after start()
    are served too.
    """

    def __init__(
        self, root: Path, git_port: int | None = None, http_port: int | None = None
    ) -> None:
        self.root = Path(root)
        self.git_port = git_port or free_port()
        self.http_port = http_port or free_port()
        self._daemon: subprocess.Popen[bytes] | None = None
        self._http: subprocess.Popen[bytes] | None = None

    @property
    def daemon_log(self) -> Path:
        return self.root.parent / f"{self.root.name}-git-daemon.log"

    @property
    def http_log(self) -> Path:
        return self.root.parent / f"{self.root.name}-git-http.log"

    def git_url(self, name: str) -> str:
        return f"git://{LOOPBACK}:{self.git_port}/{name}.git"

    def http_url(self, name: str) -> str:
        return f"http://{LOOPBACK}:{self.http_port}/{name}.git"

    def start(self, timeout: float = 30) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self._daemon is None or self._daemon.poll() is not None:
            self._daemon = _spawn(
                [
                    "git",
                    "daemon",
                    "--reuseaddr",
                    "--export-all",
                    "--verbose",
                    "--informative-errors",
                    f"--base-path={self.root}",
                    f"--listen={LOOPBACK}",
                    f"--port={self.git_port}",
                    # Whitelist: only paths under root, even via tricks.
                    str(self.root),
                ],
                self.daemon_log,
                env={**os.environ, **_GIT_ENV},
            )
            _wait_until(
                lambda: _port_open(self.git_port),
                what=f"git daemon on port {self.git_port}",
                proc=self._daemon,
                log_path=self.daemon_log,
                timeout=timeout,
            )
        if self._http is None or self._http.poll() is not None:
            self._http = _spawn(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "git-http-backend",
                    str(self.root),
                    str(self.http_port),
                ],
                self.http_log,
                env={**os.environ, **_GIT_ENV},
            )
            _wait_until(
                lambda: _port_open(self.http_port),
                what=f"git http server on port {self.http_port}",
                proc=self._http,
                log_path=self.http_log,
                timeout=timeout,
            )

    def stop(self) -> None:
        _terminate(self._daemon)
        _terminate(self._http)
        self._daemon = self._http = None

    def is_running(self) -> bool:
        return all(p is not None and p.poll() is None for p in (self._daemon, self._http))

    def __enter__(self) -> GitServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _git(*args: str, cwd: Path | str | None = None) -> str:
    proc = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**os.environ, **_GIT_ENV},
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"git {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}"
        )
    return proc.stdout


def _write_files(work: Path, files: Mapping[str, str | bytes]) -> None:
    for rel, content in files.items():
        rel_path = Path(rel)
        # Test data should never write outside its work tree.
        if rel_path.is_absolute() or ".." in rel_path.parts or rel_path.parts[:1] == (".git",):
            raise ValueError(f"bad file name in test repository: {rel!r}")
        target = work / rel_path
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)


def bare_repo_path(root: Path, name: str) -> Path:
    return Path(root) / f"{name}.git"


def make_repo(
    root: Path,
    name: str,
    files: dict[str, str],
    branch: str = "main",
    prepare: Callable[[Path, Callable[..., str]], None] | None = None,
) -> str:
    """Create bare repository ``root/NAME.git`` with one commit of ``files``.

    ``prepare(work, git)`` may change the work tree before the commit (a
    symlink, a gitlink); ``git(*args, cwd=work)`` runs git as this module does.
    Returns the commit SHA, which is the same for the same files and branch
    (fixed author, committer and dates).
    """
    bare = bare_repo_path(root, name)
    if bare.exists():
        raise FileExistsError(bare)
    bare.parent.mkdir(parents=True, exist_ok=True)
    _git("init", "--quiet", "--bare", f"--initial-branch={branch}", str(bare))
    with tempfile.TemporaryDirectory(prefix="binderbuild-repo-") as tmp:
        work = Path(tmp)
        _git("init", "--quiet", f"--initial-branch={branch}", str(work))
        _write_files(work, files)
        if prepare is not None:
            prepare(work, _git)
        _git("add", "--all", cwd=work)
        _git("commit", "--quiet", "-m", f"Create {name}", cwd=work)
        _git("push", "--quiet", str(bare), f"HEAD:refs/heads/{branch}", cwd=work)
        return _git("rev-parse", "HEAD", cwd=work).strip()


def add_commit(
    root: Path,
    name: str,
    files: dict[str, str],
    message: str,
    branch: str = "main",
) -> str:
    """Commit ``files`` (added or replaced) on top of ``branch``; returns the new SHA.

    An empty ``files`` still makes a commit, so a test can always move a
    branch.
    """
    bare = bare_repo_path(root, name)
    with tempfile.TemporaryDirectory(prefix="binderbuild-repo-") as tmp:
        work = Path(tmp) / "work"
        _git("clone", "--quiet", f"--branch={branch}", str(bare), str(work))
        _write_files(work, files)
        _git("add", "--all", cwd=work)
        _git("commit", "--quiet", "--allow-empty", "-m", message, cwd=work)
        _git("push", "--quiet", "origin", f"HEAD:refs/heads/{branch}", cwd=work)
        return _git("rev-parse", "HEAD", cwd=work).strip()


# ---------------------------------------------------------------- fixtures' content

_MARKER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def dockerfile_repo_files(marker: str, fail: bool = False) -> dict[str, str]:
    """Files of a repository that repo2docker builds with its Dockerfile buildpack.

    ``FROM`` the local notebook base image, so the build needs no network.
    The marker is written to ``MARKER_PATH`` in the image and to
    ``marker.txt`` in the repository (copied to the user's home), so images
    of different markers differ. With ``fail=True`` a step prints
    ``FAILURE_MESSAGE`` and exits 1.

    repo2docker passes ``NB_USER`` and ``NB_UID`` as build args and its
    Dockerfile contract wants them declared, a user with uid 1000 and its
    ``HOME``; the final ``USER`` must not be root.
    """
    if not _MARKER_RE.fullmatch(marker):
        # The marker goes into a shell command: keep it to safe characters.
        raise ValueError(f"marker must match {_MARKER_RE.pattern}: {marker!r}")
    lines = [
        "# Test repository for repo2docker's Dockerfile buildpack (binderbuild tests).",
        f"FROM {NOTEBOOK_BASE_IMAGE}",
        "ARG NB_USER=jovyan",
        "ARG NB_UID=1000",
        "ENV USER=${NB_USER} HOME=/home/${NB_USER}",
        "USER root",
        f"RUN echo {marker} > {MARKER_PATH}",
        "COPY --chown=1000:1000 . ${HOME}",
    ]
    if fail:
        prefix, _, last = FAILURE_MESSAGE.rpartition("-")
        # printf assembles the message when the step runs.
        lines.append(f"RUN printf '%s-%s %s\\n' {prefix} {last} {marker}; exit 1")
    lines += [
        "USER 1000",
        "WORKDIR ${HOME}",
    ]
    return {
        "Dockerfile": "\n".join(lines) + "\n",
        "marker.txt": marker + "\n",
        "README.md": f"# binderbuild test repository {marker}\n",
    }


def _docker_client():  # -> docker.DockerClient, imported lazily
    import docker

    base_url = os.environ.get("BINDERBUILD_DOCKER_HOST", "").strip()
    if base_url:
        return docker.DockerClient(base_url=base_url, version="auto", timeout=30)
    return docker.from_env(version="auto", timeout=30)


def docker_available(images: Sequence[str] = (BASE_IMAGE, NOTEBOOK_BASE_IMAGE)) -> None:
    """Fail (never skip) with advice when Docker or the local base images are missing."""
    try:
        import docker.errors

        client = _docker_client()
        client.ping()
    except Exception as e:  # any failure means the same thing to the reader
        raise ServiceUnavailable(
            f"The Docker engine is not reachable ({e}). These tests use a real dockerd: "
            "run `scripts/setup.sh` as root (it installs Docker, starts dockerd with "
            "--bridge=none --iptables=false and builds the local base images)."
        ) from None
    try:
        for image in images:
            try:
                client.images.get(image)
            except docker.errors.ImageNotFound:
                raise ServiceUnavailable(
                    f"Docker image {image} is missing: run `scripts/setup.sh` as root "
                    "to build the local base images (nothing can be pulled here)."
                ) from None
    finally:
        client.close()
    ensure_builder_image()


_BUILDER_IMAGE_CHECKED = False


def builder_image_script() -> Any:
    """scripts/builder_image.py as a module (scripts/ is not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "scripts" / "builder_image.py"
    spec = importlib.util.spec_from_file_location("_builder_image", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ensure_builder_image() -> None:
    """The build sandbox's image must hold this checkout's binderbuild: rebuild
    it when stale (scripts/builder_image.py; a hash comparison when current).
    Once per process."""
    global _BUILDER_IMAGE_CHECKED
    if _BUILDER_IMAGE_CHECKED:
        return
    try:
        builder_image_script().ensure(quiet=True)
    except SystemExit as exc:
        raise ServiceUnavailable(f"The build sandbox image: {exc}") from None
    _BUILDER_IMAGE_CHECKED = True


# ---------------------------------------------------------------- git smart HTTP


def build_context_image(docker_client: Any, tag: str, files: Mapping[str, bytes]) -> str:
    """Build ``tag`` from an in-memory context (a ``Dockerfile`` and its
    files) with no network, as repo2docker's Dockerfile buildpack would;
    returns the image id. Fails the test on a build error."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for filename, data in files.items():
            info = tarfile.TarInfo(filename)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    for chunk in docker_client.api.build(
        fileobj=buf, custom_context=True, tag=tag, network_mode="none", rm=True, decode=True
    ):
        assert "error" not in chunk, chunk
    return str(docker_client.images.get(tag).id)


def _serve_git_http_backend(root: str, port: int) -> None:
    """HTTP server that runs ``git http-backend`` as CGI for each request."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import unquote

    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.0: one request per connection and the body delimited by
        # Content-Length, which git's client handles and keeps this simple.
        protocol_version = "HTTP/1.0"

        def do_GET(self) -> None:
            self._cgi()

        def do_POST(self) -> None:
            self._cgi()

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                # git sends large pushes chunked (bigger than http.postBuffer).
                body = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        # Trailer section ends with an empty line.
                        while self.rfile.readline().strip():
                            pass
                        return bytes(body)
                    body += self.rfile.read(size)
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _cgi(self) -> None:
            path, _, query = self.path.partition("?")
            body = self._read_body()
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                **{k: v for k, v in os.environ.items() if k.startswith("GIT_")},
                "GIT_PROJECT_ROOT": root,
                "GIT_HTTP_EXPORT_ALL": "1",
                "GATEWAY_INTERFACE": "CGI/1.1",
                "SERVER_PROTOCOL": "HTTP/1.0",
                "REQUEST_METHOD": self.command,
                "PATH_INFO": unquote(path),
                "QUERY_STRING": query,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
                "REMOTE_ADDR": self.client_address[0],
            }
            # Protocol v2 and gzip-compressed requests are announced in
            # headers that http-backend reads as CGI variables.
            for header, var in (
                ("Git-Protocol", "HTTP_GIT_PROTOCOL"),
                ("Content-Encoding", "HTTP_CONTENT_ENCODING"),
            ):
                if self.headers.get(header):
                    env[var] = self.headers[header]
            proc = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True)
            if proc.stderr:
                sys.stderr.write(proc.stderr.decode(errors="replace"))
            out = proc.stdout
            sep = out.find(b"\r\n\r\n")
            if sep >= 0:
                head, payload = out[:sep], out[sep + 4 :]
            else:
                head, _, payload = out.partition(b"\n\n")
            status, reason = 200, "OK"
            headers: list[tuple[str, str]] = []
            for line in head.decode("latin-1").splitlines():
                key, _, value = line.partition(":")
                if key.lower() == "status":
                    code, _, reason = value.strip().partition(" ")
                    status = int(code)
                elif key:
                    headers.append((key, value.strip()))
            self.send_response(status, reason)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            sys.stderr.write(f"git-http: {self.address_string()} {format % args}\n")

    server = ThreadingHTTPServer((LOOPBACK, port), Handler)
    # SIGTERM from GitServer.stop(): leave serve_forever cleanly.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "git-http-backend":
        _serve_git_http_backend(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(f"usage: {sys.argv[0]} git-http-backend ROOT PORT")
