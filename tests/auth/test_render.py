"""The sign-in block of the hub's configuration, as written: loaded the way
JupyterHub loads it, and the command line that writes it (its OIDC discovery
against the real provider)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from traitlets.config import Config, PyFileConfigLoader

from binderbuild.hubconfig import HubConfig, render
from binderbuild.hubconfig.auth import (
    GENERIC_OAUTHENTICATOR,
    NATIVE_AUTHENTICATOR,
    LoginConfigError,
    NativeLogin,
    OAuthLogin,
    discover,
)
from tests.auth.conftest import OIDCProvider

ENDPOINTS = {
    "authorize_url": "https://idp.example.org/auth",
    "token_url": "https://idp.example.org/token",
    "userdata_url": "https://idp.example.org/userinfo",
}


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "jupyterhub_config.py"
    path.write_text(text)
    loader = PyFileConfigLoader(path.name, str(tmp_path))
    return loader.load_config()


def config(tmp_path: Path, **kwargs: Any) -> HubConfig:
    return HubConfig(tmp_path, "t" * 64, ["x-"], hub_ip="10.9.0.1", **kwargs)


def test_anonymous_hub_is_unchanged(tmp_path: Path) -> None:
    c = load(tmp_path, render(config(tmp_path)))
    assert c.JupyterHub.authenticator_class == "jupyterhub.auth.NullAuthenticator"
    binder = c.JupyterHub.services[0]
    assert "oauth_redirect_uri" not in binder
    assert [r["name"] for r in c.JupyterHub.load_roles if r["name"] == "user"] == []


def test_native_login_and_binderbuild_as_oauth_client(tmp_path: Path) -> None:
    cfg = config(
        tmp_path, auth_enabled=True, login=NativeLogin(), service_url="http://127.0.0.1:8585/"
    )
    c = load(tmp_path, render(cfg))
    assert c.JupyterHub.authenticator_class == NATIVE_AUTHENTICATOR
    assert c.Authenticator.admin_users == {"admin"}
    assert c.NativeAuthenticator.open_signup is False
    binder = c.JupyterHub.services[0]
    assert binder["oauth_client_id"] == "service-binder"
    assert binder["oauth_redirect_uri"] == "http://127.0.0.1:8585/oauth_callback"
    assert binder["oauth_no_confirm"] is True
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles["user"]["scopes"] == ["self", "access:services!service=binder"]


def test_oauth_login_block(tmp_path: Path) -> None:
    login = OAuthLogin(
        client_id="hub",
        client_secret_file=str(tmp_path / "secret"),
        allowed_groups=("binder-users",),
        admin_groups=("binder-admins",),
        **ENDPOINTS,
    )
    (tmp_path / "secret").write_text("s3cret\n")
    c = load(tmp_path, render(config(tmp_path, auth_enabled=True, login=login)))
    g = c.GenericOAuthenticator
    assert c.JupyterHub.authenticator_class == GENERIC_OAUTHENTICATOR
    assert g.client_secret == "s3cret"  # read from the file when the hub loads it
    assert g.oauth_callback_url == "http://127.0.0.1:8000/hub/oauth_callback"
    assert g.allowed_groups == {"binder-users"} and g.admin_groups == {"binder-admins"}
    assert g.manage_groups is True and g.auth_state_groups_key == "oauth_user.groups"
    assert g.allow_all is False
    assert "binder-users" in g.custom_403_message
    assert "s3cret" not in render(config(tmp_path, auth_enabled=True, login=login))


def test_configurations_that_cannot_work_are_refused(tmp_path: Path) -> None:
    nobody = OAuthLogin(client_id="hub", client_secret_file="/s", **ENDPOINTS)
    with pytest.raises(LoginConfigError, match="allowed groups"):
        render(config(tmp_path, auth_enabled=True, login=nobody))
    no_token_url = OAuthLogin(
        client_id="hub", client_secret_file="/s", allow_all=True, **{**ENDPOINTS, "token_url": ""}
    )
    with pytest.raises(LoginConfigError, match="token_url"):
        render(config(tmp_path, auth_enabled=True, login=no_token_url))
    with pytest.raises(ValueError, match="needs auth_enabled"):
        render(config(tmp_path, login=NativeLogin()))


def test_cli_discovers_the_providers_endpoints(tmp_path: Path) -> None:
    provider = OIDCProvider(tmp_path / "oidc", clients=[], users=[])
    try:
        out = tmp_path / "hub" / "jupyterhub_config.py"
        secret = tmp_path / "secret"
        secret.write_text("x\n")
        argv = [
            sys.executable, "-m", "binderbuild.hubconfig", "--out", str(out),
            "--data-dir", str(tmp_path / "hub"), "--token-file", str(tmp_path / "token"),
            "--image-prefix", "binder-", "--hub-ip", "10.9.0.1",
            "--service-url", "http://127.0.0.1:8585/",
            "--login", "oauth", "--oidc-issuer", provider.issuer,
            "--oauth-client-id", "binder-hub", "--oauth-client-secret-file", str(secret),
            "--oauth-allowed-group", "binder-users",
        ]  # fmt: skip
        subprocess.run(argv, check=True, capture_output=True)
        c = load(out.parent, out.read_text())
        assert c.GenericOAuthenticator.authorize_url == provider.issuer + "/auth"
        assert c.GenericOAuthenticator.token_url == provider.issuer + "/token"
        assert c.GenericOAuthenticator.userdata_url == provider.issuer + "/me"
        assert c.BinderSpawnerMixin.auth_enabled is True  # --login implies it
    finally:
        provider.stop()


def test_cli_says_why_a_login_cannot_work(tmp_path: Path) -> None:
    argv = [
        sys.executable, "-m", "binderbuild.hubconfig", "--out", str(tmp_path / "c.py"),
        "--data-dir", str(tmp_path), "--token-file", str(tmp_path / "token"),
        "--image-prefix", "binder-", "--hub-ip", "10.9.0.1", "--login", "oauth",
        "--oauth-client-id", "hub", "--oauth-client-secret-file", "/s",
        "--oidc-issuer", "http://127.0.0.1:1/",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 2
    assert "could not read the provider's configuration" in done.stderr
    with pytest.raises(LoginConfigError):
        discover("http://127.0.0.1:1/")
