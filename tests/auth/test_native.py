"""``scripts/run.sh --auth``: accounts kept by the hub (jupyterhub-nativeauthenticator).

The hub's configuration is the one run.sh writes (``python -m
binderbuild.hubconfig --login native --service-url ...``), its first admin
made the way run.sh makes it (``python -m binderbuild.hubconfig.admin``)
before the hub starts. Then, against the real hub and binderbuild: the admin
signs in through binderbuild's home page and comes back to it; a sign-up
waits for the admin's approval; once approved, that person signs in too.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from binderbuild.hubconfig.auth import NativeLogin, ensure_admin
from tests.auth.conftest import (
    ROOT,
    Browser,
    LoginHub,
    Page,
    binderbuild_config,
    new_secret,
    start_or_fail,
)
from tests.realservices import free_port
from tests.service import BinderBuildService

pytestmark = [pytest.mark.hub, pytest.mark.docker]


@dataclass
class NativeSetup:
    hub: LoginHub
    service: BinderBuildService
    admin_password: str
    password_file: Path


@pytest.fixture(scope="module")
def native(module_dir: Path, docker_client: Any) -> Iterator[NativeSetup]:
    port = free_port()
    hub = LoginHub(module_dir / "native-hub", service_url=f"http://127.0.0.1:{port}/")
    hub.use_login(NativeLogin(admin_users=("admin",)))
    password_file = module_dir / "hub-admin-password"
    # As run.sh does it: the command line, before the hub's first start.
    made = subprocess.run(
        [sys.executable, "-m", "binderbuild.hubconfig.admin", "--db-url", hub.db_url,
         "--user", "admin", "--password-file", str(password_file)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    password = made.stdout.strip()
    service: BinderBuildService | None = None
    try:
        start_or_fail(hub)
        service = BinderBuildService(
            module_dir / "native-bb", binderbuild_config(hub, port), port=port
        ).start()
        yield NativeSetup(hub, service, password, password_file)
    finally:
        if service is not None:
            service.stop()
        hub.stop()
        hub.remove_containers(docker_client)


def login(browser: Browser, page: Page, username: str, password: str) -> Page:
    assert "/hub/login" in page.url, page.url
    return browser.submit(page, {"username": username, "password": password})


def test_run_sh_knows_auth() -> None:
    script = ROOT / "scripts" / "run.sh"
    shown = subprocess.run(
        ["bash", str(script), "--auth", "--help"], capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    assert "--auth" in shown.stdout and "docs/signed-in.md" in shown.stdout
    wrong = subprocess.run(
        ["bash", str(script), "--auth", "--no-such-option"], capture_output=True, text=True
    )
    assert wrong.returncode == 2 and "unknown argument --no-such-option" in wrong.stderr


def test_first_admin_password_is_generated_once_and_kept_private(native: NativeSetup) -> None:
    assert len(native.admin_password) >= 20
    assert native.password_file.read_text().strip() == native.admin_password
    assert stat.S_IMODE(os.stat(native.password_file).st_mode) == 0o600


def test_admin_signs_in_through_binderbuilds_home_page(native: NativeSetup) -> None:
    browser = Browser()
    home = native.service.url + "/"
    # Anonymous: the home page sends the browser to the hub's login page.
    login_page = browser.open(home)
    assert login_page.status == 200 and "/hub/login" in login_page.url
    assert 'name="password"' in login_page.text and "signup" in login_page.text
    wrong = login(browser, login_page, "admin", "not-the-password")
    assert "Invalid username or password" in wrong.text
    back = login(browser, browser.open(home), "admin", native.admin_password)
    # Hub login -> binderbuild authorized -> its home page again.
    assert back.status == 200, (back.url, back.text[:800])
    assert back.url == home
    assert "service-binder" in browser.cookie_names()
    assert native.hub.user("admin")["admin"] is True


def test_sign_up_waits_for_the_admins_approval(native: NativeSetup) -> None:
    name, password = "carol", new_secret()
    visitor = Browser()
    signup = visitor.open(native.hub.url + "hub/signup")
    assert signup.status == 200
    sent = visitor.submit(
        signup,
        {"username": name, "signup_password": password, "signup_password_confirmation": password},
    )
    assert sent.status == 200 and "sent to the admin" in sent.text, sent.text[:2000]
    # Not yet approved: the login page says so, and binderbuild stays closed.
    waiting = login(visitor, visitor.open(native.service.url + "/"), name, password)
    assert "has not been authorized" in waiting.text
    assert "service-binder" not in visitor.cookie_names()

    admin = Browser()
    login(admin, admin.open(native.service.url + "/"), "admin", native.admin_password)
    area = admin.open(native.hub.url + "hub/authorize")
    assert area.status == 200 and name in area.text
    approved = admin.open(native.hub.url + f"hub/authorize/{name}")
    assert approved.status == 200

    landed = login(visitor, visitor.open(native.service.url + "/"), name, password)
    assert landed.url == native.service.url + "/", landed.url
    assert "service-binder" in visitor.cookie_names()


def test_ensure_admin_resets_a_forgotten_password(tmp_path: Path) -> None:
    db_url = "sqlite:///" + str(tmp_path / "jupyterhub.sqlite")
    password_file = tmp_path / "pw"
    first = ensure_admin(db_url, "admin", password_file)
    assert first is not None
    assert ensure_admin(db_url, "admin", password_file) is None  # kept
    password_file.unlink()
    second = ensure_admin(db_url, "admin", password_file)
    assert second is not None and second != first

    from jupyterhub import orm
    from nativeauthenticator.orm import UserInfo

    session = orm.new_session_factory(db_url)()
    try:
        infos = session.query(UserInfo).filter(UserInfo.username == "admin").all()
        assert len(infos) == 1 and infos[0].is_authorized
        assert infos[0].is_valid_password(second) and not infos[0].is_valid_password(first)
    finally:
        session.close()
