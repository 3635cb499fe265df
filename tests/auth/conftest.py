"""Sign-in against real parts: a JupyterHub (with its proxy) whose login is
rendered by ``binderbuild.hubconfig.auth``, binderbuild as the hub's OAuth
client, and for identity providers a real OpenID Connect provider on
loopback: the npm package oidc-provider (installed by scripts/setup.sh under
var/node) run by ``oidc/provider.mjs`` with a client, test users and a
``groups`` claim.

Browsers are played by an HTTP client that keeps cookies (``Browser``): the
sign-ins are redirects and two forms, where Chromium would add nothing but
time; the pages' own redirect to the login is what is under test.
"""

from __future__ import annotations

import json
import re
import secrets
import selectors
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin

import pytest

from binderbuild.hubconfig import write
from binderbuild.hubconfig.auth import Login
from tests.hubservice import HubService, HubUnavailable
from tests.realservices import free_port

ROOT = Path(__file__).resolve().parent.parent.parent
PROVIDER_SCRIPT = Path(__file__).resolve().parent / "oidc" / "provider.mjs"
START_TIMEOUT = 30.0  # seconds for the provider to print READY
START_ATTEMPTS = 3
OIDC_PACKAGE = ROOT / "var" / "node" / "node_modules" / "oidc-provider" / "package.json"
OIDC_VERSION = "9.13.3"  # the version scripts/setup.sh installs

# Images binderbuild builds in these tests, and the only ones their hubs run.
PREFIX = "bbauth-"


@dataclass(frozen=True)
class Account:
    username: str
    password: str
    groups: tuple[str, ...]


class OIDCProvider:
    """``node oidc/provider.mjs`` on a free loopback port."""

    def __init__(self, workdir: Path, clients: list[dict[str, Any]], users: list[Account]) -> None:
        node = shutil.which("node")
        if node is None:
            raise AssertionError("node is not installed: run scripts/setup.sh")
        if not OIDC_PACKAGE.is_file():
            raise AssertionError(f"oidc-provider is missing ({OIDC_PACKAGE}): run scripts/setup.sh")
        version = json.loads(OIDC_PACKAGE.read_text())["version"]
        assert version == OIDC_VERSION, (
            f"oidc-provider {version} installed, tests expect {OIDC_VERSION}"
        )
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "oidc-provider.log"
        self._log = self.log_path.open("ab")
        self._command = [node, str(PROVIDER_SCRIPT)]
        self._workdir = workdir
        self._clients = clients
        self._users = users
        # Once in a CI run the provider hung before listening (a Node 20
        # deadlock exporting a freshly generated key, see provider.mjs; it
        # starts in well under a second otherwise): each start gets a
        # deadline, and a hung one is replaced.
        for attempt in range(1, START_ATTEMPTS + 1):
            line = self._start()
            if line.startswith("READY "):
                return
            self._kill()
            self._log.write(f"-- start {attempt} failed: {line!r}\n".encode())
            self._log.flush()
        self._log.close()
        raise AssertionError(f"the OIDC provider did not start:\n{self.log()}")

    def _start(self) -> str:
        """Start the provider; its first line (READY ...), or what went wrong."""
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        params = {
            "host": "127.0.0.1",
            "port": self.port,
            "clients": self._clients,
            "users": [
                {"username": u.username, "password": u.password, "groups": list(u.groups)}
                for u in self._users
            ],
        }
        self.proc = subprocess.Popen(
            [*self._command, json.dumps(params)],
            cwd=self._workdir,
            stdout=subprocess.PIPE,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            if not selector.select(START_TIMEOUT):
                return f"no READY line within {START_TIMEOUT:g}s"
        # The script prints one line, READY, or dies (EOF: an empty line).
        return self.proc.stdout.readline()

    def _kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class LoginHub(HubService):
    """A HubService whose config has a sign-in method and binderbuild as its
    OAuth client (what ``python -m binderbuild.hubconfig --login`` writes)."""

    def __init__(self, workdir: Path, *, service_url: str, **kwargs: Any) -> None:
        super().__init__(workdir, [PREFIX], auth_enabled=True, **kwargs)
        self.config.service_url = service_url

    def use_login(self, login: Login) -> None:
        self.config.login = login
        self.config_path = write(self.config, self.config_path)

    @property
    def oauth_callback(self) -> str:
        return self.url + "hub/oauth_callback"

    @property
    def db_url(self) -> str:
        return "sqlite:///" + str(self.workdir.resolve() / "jupyterhub.sqlite")


def start_or_fail(hub: HubService) -> HubService:
    try:
        return hub.start()
    except HubUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


def binderbuild_config(hub: HubService, port: int, extra: str = "") -> str:
    return (
        "c.BinderBuild.allowed_internal_networks = ['127.0.0.0/8']\n"
        f"c.BinderBuild.image_prefix = {PREFIX!r}\n"
        "c.DockerBuilder.build_network = 'none'\n"
        "c.BinderBuild.auth_enabled = True\n"
        "c.BinderBuild.use_named_servers = True\n"
        # Its public URL: the OAuth callback the hub sends browsers to is under it.
        f"c.BinderBuild.launch_host = 'http://127.0.0.1:{port}/'\n"
        + hub.binderbuild_config()
        + extra
    )


# ---------------------------------------------------------------- a browser


@dataclass
class Page:
    status: int
    url: str
    text: str
    headers: dict[str, str] = field(default_factory=dict)


class Browser:
    """Cookies and redirects, like a browser (no proxies: loopback only)."""

    def __init__(self) -> None:
        self.jar = CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPCookieProcessor(self.jar)
        )

    def open(
        self, url: str, form: dict[str, str] | None = None, headers: dict[str, str] | None = None
    ) -> Page:
        data = urlencode(form).encode() if form is not None else None
        request = urllib.request.Request(url, data=data, headers=headers or {})
        try:
            with self.opener.open(request, timeout=120) as resp:
                return Page(
                    resp.status, resp.url, resp.read().decode(errors="replace"), dict(resp.headers)
                )
        except urllib.error.HTTPError as exc:
            return Page(
                exc.code, exc.url or url, exc.read().decode(errors="replace"), dict(exc.headers)
            )

    def cookie_names(self) -> set[str]:
        return {c.name for c in self.jar}

    def submit(self, page: Page, fields: dict[str, str], form_index: int = 0) -> Page:
        """Fill the page's form (hidden fields such as _xsrf kept) and post it."""
        forms = re.findall(r"<form\b(.*?)>(.*?)</form>", page.text, re.S | re.I)
        assert forms, f"no form on {page.url}:\n{page.text[:2000]}"
        attrs, body = forms[form_index]
        action = re.search(r'action="([^"]*)"', attrs)
        target = urljoin(page.url, _unescape(action.group(1)) if action else page.url)
        values = {
            name: _unescape(value)
            for name, value in re.findall(
                r'<input[^>]*type="hidden"[^>]*name="([^"]+)"[^>]*value="([^"]*)"', body, re.I
            )
        }
        values.update(fields)
        return self.open(target, values)


def _unescape(text: str) -> str:
    import html

    return html.unescape(text)


# ---------------------------------------------------------------- shared parts


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("auth")


@pytest.fixture(scope="module")
def cleanup_images(docker_client: Any) -> Iterator[None]:
    """Images built under PREFIX are removed after the module."""
    yield
    # The raw list: other tests may remove images meanwhile.
    for image in docker_client.api.images():
        for tag in image.get("RepoTags") or ():
            if tag.startswith(PREFIX):
                try:
                    docker_client.api.remove_image(tag, force=True)
                except Exception:
                    pass


def new_secret() -> str:
    return secrets.token_urlsafe(24)
