"""Sign-in for the embedded hub: the authenticator block of jupyterhub_config.py.

``HubConfig.login`` picks how people sign in when ``auth_enabled`` is on
(anonymous deployments keep ``NullAuthenticator``, written by
:func:`binderbuild.hubconfig.render`):

- :class:`NativeLogin`: accounts kept in the hub's own database by
  jupyterhub-nativeauthenticator: a login page, a sign-up page, and an admin
  who approves sign-ups at ``/hub/authorize``. The first admin's account is
  made by :func:`ensure_admin` before the hub starts (``scripts/run.sh
  --auth`` does it), so nobody can take the admin name by signing up first.
- :class:`OAuthLogin`: oauthenticator's ``GenericOAuthenticator`` against an
  OpenID Connect / OAuth2 provider (Keycloak, or any other): the hub's login
  page sends people to the provider; only members of ``allowed_groups`` (a
  claim of the provider's user info) may sign in, others get
  ``forbidden_message``. :func:`discover` reads the provider's endpoints from
  its ``/.well-known/openid-configuration``.

Either way binderbuild itself is an OAuth client of the hub
(:func:`service_oauth`): its pages send anonymous visitors to the hub's login
and back to ``{binderbuild}/oauth_callback``.
"""

from __future__ import annotations

import argparse
import json
import secrets
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NATIVE_AUTHENTICATOR = "binderbuild.hubconfig.native.NativeAuthenticator"
GENERIC_OAUTHENTICATOR = "oauthenticator.generic.GenericOAuthenticator"
LOGIN_MODES = ("native", "oauth")

DEFAULT_FORBIDDEN = (
    "You are signed in at {service}, but your account is not in a group allowed to use "
    "this Binder ({groups}). Ask the people who run it to add you to one of these groups."
)


class LoginConfigError(ValueError):
    """A sign-in configuration that cannot work (said before the hub starts)."""


@dataclass(frozen=True)
class NativeLogin:
    """Accounts in the hub's database (jupyterhub-nativeauthenticator)."""

    admin_users: tuple[str, ...] = ("admin",)
    # False: a sign-up waits for an admin's approval at /hub/authorize.
    open_signup: bool = False
    minimum_password_length: int = 10
    # Failed logins before a user name is locked out for a while.
    allowed_failed_logins: int = 5
    seconds_before_next_try: int = 300


@dataclass(frozen=True)
class OAuthLogin:
    """GenericOAuthenticator against an OpenID Connect / OAuth2 provider."""

    client_id: str
    # A file holding the client secret, read by the hub when it starts (the
    # config file then carries no secret of the provider's).
    client_secret_file: str
    authorize_url: str
    token_url: str
    userdata_url: str
    login_service: str = "your organisation's account"
    scopes: tuple[str, ...] = ("openid", "profile", "email", "groups")
    username_claim: str = "preferred_username"
    # The user-info claim listing the user's groups (Keycloak: a "groups"
    # mapper on the client; other providers name it in their docs).
    groups_claim: str = "groups"
    allowed_groups: tuple[str, ...] = ()
    admin_groups: tuple[str, ...] = ()
    # True: every account of the provider may sign in (no group check).
    allow_all: bool = False
    forbidden_message: str = ""
    logout_redirect_url: str = ""
    tls_verify: bool = True


Login = NativeLogin | OAuthLogin


def service_oauth(service_name: str, service_url: str) -> dict[str, object]:
    """The OAuth client entries of binderbuild's hub service: the callback
    under its public URL (``make_hub_auth`` derives the same one from
    ``launch_host``), no confirmation page (it is part of this Binder)."""
    return {
        "oauth_client_id": f"service-{service_name}",
        "oauth_redirect_uri": service_url.rstrip("/") + "/oauth_callback",
        "oauth_no_confirm": True,
    }


def user_role(service_name: str) -> dict[str, object]:
    """Signed-in users may use their own servers and log in to binderbuild."""
    return {"name": "user", "scopes": ["self", f"access:services!service={service_name}"]}


def _check_oauth(login: OAuthLogin) -> None:
    missing = [
        name
        for name in (
            "client_id",
            "client_secret_file",
            "authorize_url",
            "token_url",
            "userdata_url",
        )
        if not getattr(login, name)
    ]
    if missing:
        raise LoginConfigError(f"OAuth sign-in needs {', '.join(missing)}")
    if not login.allow_all and not login.allowed_groups:
        raise LoginConfigError(
            "OAuth sign-in needs allowed groups (or allow_all: every account of the provider)"
        )
    if login.groups_claim and "." in login.groups_claim:
        raise LoginConfigError("groups_claim is one claim name, without dots")


# binderbuild usually starts after the hub; JupyterHub 6 holds its own start
# up to a service's `timeout` (30 s) waiting for a service with a URL.
_NO_WAIT_FOR_SERVICE = [
    "import jupyterhub as _jupyterhub",
    "if int(_jupyterhub.__version__.split('.')[0]) >= 6:",
    "    for _service in c.JupyterHub.services:",
    "        if _service.get('oauth_redirect_uri'):",
    "            _service.setdefault('timeout', 1)",
    "del _jupyterhub",
]


def render_login(login: Login | None, *, public_url: str) -> list[str]:
    """Lines of jupyterhub_config.py for ``login`` (None: the hub's default
    authenticator, left to the operator's extra lines)."""
    if login is None:
        return []
    return [
        "",
        "# binderbuild starts after the hub: the hub does not wait for it.",
        *_NO_WAIT_FOR_SERVICE,
        *_authenticator_lines(login, public_url),
    ]


def _authenticator_lines(login: Login, public_url: str) -> list[str]:
    if isinstance(login, NativeLogin):
        return [
            "",
            "# --- sign-in: accounts kept by the hub (jupyterhub-nativeauthenticator) ---",
            "# Login page /hub/login, sign-up /hub/signup; an admin approves sign-ups",
            "# at /hub/authorize (docs/signed-in.md). The first admin's account is",
            "# made before the hub starts (python -m binderbuild.hubconfig.admin).",
            f"c.JupyterHub.authenticator_class = {NATIVE_AUTHENTICATOR!r}",
            f"c.Authenticator.admin_users = {set(login.admin_users)!r}",
            "# Who may sign in is NativeAuthenticator's approval, not an allow list.",
            "c.NativeAuthenticator.allow_all = True",
            f"c.NativeAuthenticator.open_signup = {login.open_signup!r}",
            f"c.NativeAuthenticator.minimum_password_length = {int(login.minimum_password_length)}",
            "c.NativeAuthenticator.check_common_password = True",
            f"c.NativeAuthenticator.allowed_failed_logins = {int(login.allowed_failed_logins)}",
            f"c.NativeAuthenticator.seconds_before_next_try = {int(login.seconds_before_next_try)}",
        ]
    _check_oauth(login)
    callback = public_url.rstrip("/") + "/hub/oauth_callback"
    message = login.forbidden_message or DEFAULT_FORBIDDEN.format(
        service=login.login_service, groups=", ".join(sorted(login.allowed_groups)) or "none"
    )
    lines = [
        "",
        "# --- sign-in: an OpenID Connect / OAuth2 provider (oauthenticator) ---",
        f"c.JupyterHub.authenticator_class = {GENERIC_OAUTHENTICATOR!r}",
        f"c.GenericOAuthenticator.login_service = {login.login_service!r}",
        f"c.GenericOAuthenticator.client_id = {login.client_id!r}",
        "# The client secret, read when the hub starts (not kept in this file).",
        f"with open({login.client_secret_file!r}) as _f:",
        "    c.GenericOAuthenticator.client_secret = _f.read().strip()",
        "del _f",
        f"c.GenericOAuthenticator.oauth_callback_url = {callback!r}",
        f"c.GenericOAuthenticator.authorize_url = {login.authorize_url!r}",
        f"c.GenericOAuthenticator.token_url = {login.token_url!r}",
        f"c.GenericOAuthenticator.userdata_url = {login.userdata_url!r}",
        f"c.GenericOAuthenticator.scope = {list(login.scopes)!r}",
        f"c.GenericOAuthenticator.username_claim = {login.username_claim!r}",
        f"c.GenericOAuthenticator.validate_server_cert = {login.tls_verify!r}",
        "# Groups come from the provider at each sign-in and become hub groups.",
        "c.GenericOAuthenticator.manage_groups = True",
        f"c.GenericOAuthenticator.auth_state_groups_key = {'oauth_user.' + login.groups_claim!r}",
        f"c.GenericOAuthenticator.allowed_groups = {set(login.allowed_groups) or set()!r}",
        f"c.GenericOAuthenticator.admin_groups = {set(login.admin_groups) or set()!r}",
        f"c.GenericOAuthenticator.allow_all = {login.allow_all!r}",
        "# Shown (403) to someone the provider knows but no allowed group lists.",
        f"c.GenericOAuthenticator.custom_403_message = {message!r}",
    ]
    if login.logout_redirect_url:
        lines.append(f"c.GenericOAuthenticator.logout_redirect_url = {login.logout_redirect_url!r}")
    return lines


# ---------------------------------------------------------------- providers


def discover(issuer: str, timeout: float = 10.0) -> dict[str, str]:
    """The authorize, token and user-info endpoints of an OpenID Connect
    provider, read from ``{issuer}/.well-known/openid-configuration``.

    Keycloak's issuer is ``https://<host>/realms/<realm>``."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            document: Any = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise LoginConfigError(
            f"could not read the provider's configuration at {url}: {exc}"
        ) from None
    keys = {
        "authorize_url": "authorization_endpoint",
        "token_url": "token_endpoint",
        "userdata_url": "userinfo_endpoint",
    }
    if not isinstance(document, dict):
        raise LoginConfigError(f"{url} is not an OpenID Connect configuration")
    found = {ours: document.get(theirs) for ours, theirs in keys.items()}
    missing = [theirs for ours, theirs in keys.items() if not isinstance(found[ours], str)]
    if missing:
        raise LoginConfigError(f"{url} names no {', '.join(missing)}")
    return {k: str(v) for k, v in found.items()}


# ---------------------------------------------------------------- command line


def add_login_arguments(parser: argparse.ArgumentParser) -> None:
    """The sign-in options of ``python -m binderbuild.hubconfig``."""
    group = parser.add_argument_group("sign-in (docs/signed-in.md)")
    group.add_argument(
        "--login",
        choices=LOGIN_MODES,
        default="",
        help="how people sign in (implies --auth-enabled): 'native' (accounts kept by "
        "the hub, sign-up with admin approval) or 'oauth' (an OpenID Connect / OAuth2 "
        "provider). Default with --auth-enabled: the hub's own default",
    )
    group.add_argument(
        "--admin-user",
        action="append",
        default=[],
        help="hub admin (repeatable); native: approves sign-ups (default: admin)",
    )
    group.add_argument("--open-signup", action="store_true", help="native: no approval needed")
    group.add_argument(
        "--oidc-issuer",
        default="",
        help="oauth: the provider's issuer URL; its endpoints are read from "
        "/.well-known/openid-configuration (Keycloak: https://HOST/realms/REALM)",
    )
    group.add_argument("--oauth-authorize-url", default="", help="oauth: without --oidc-issuer")
    group.add_argument("--oauth-token-url", default="", help="oauth: without --oidc-issuer")
    group.add_argument("--oauth-userdata-url", default="", help="oauth: without --oidc-issuer")
    group.add_argument("--oauth-client-id", default="", help="oauth: the hub's client id")
    group.add_argument(
        "--oauth-client-secret-file", default="", help="oauth: file with the client secret"
    )
    group.add_argument(
        "--oauth-allowed-group",
        action="append",
        default=[],
        help="oauth: group whose members may sign in (repeatable)",
    )
    group.add_argument(
        "--oauth-admin-group", action="append", default=[], help="oauth: hub admins' group"
    )
    group.add_argument(
        "--oauth-allow-all",
        action="store_true",
        help="oauth: every account of the provider may sign in",
    )
    group.add_argument("--oauth-username-claim", default="preferred_username")
    group.add_argument("--oauth-groups-claim", default="groups")
    group.add_argument(
        "--oauth-scope",
        action="append",
        default=[],
        help="oauth: scope to ask for (repeatable; default openid profile email groups)",
    )
    group.add_argument("--oauth-login-service", default="", help="oauth: name on the login button")


def login_from_args(args: argparse.Namespace) -> Login | None:
    """The ``Login`` the options ask for (None: no --login)."""
    admins = tuple(args.admin_user)
    if args.login == "native":
        return NativeLogin(admin_users=admins or ("admin",), open_signup=args.open_signup)
    if args.login != "oauth":
        return None
    endpoints = {
        "authorize_url": args.oauth_authorize_url,
        "token_url": args.oauth_token_url,
        "userdata_url": args.oauth_userdata_url,
    }
    if args.oidc_issuer:
        endpoints = {**discover(args.oidc_issuer), **{k: v for k, v in endpoints.items() if v}}
    extra: dict[str, Any] = {}
    if args.oauth_scope:
        extra["scopes"] = tuple(args.oauth_scope)
    if args.oauth_login_service:
        extra["login_service"] = args.oauth_login_service
    login = OAuthLogin(
        client_id=args.oauth_client_id,
        client_secret_file=args.oauth_client_secret_file,
        allowed_groups=tuple(args.oauth_allowed_group),
        admin_groups=tuple(args.oauth_admin_group),
        allow_all=args.oauth_allow_all,
        username_claim=args.oauth_username_claim,
        groups_claim=args.oauth_groups_claim,
        **endpoints,
        **extra,
    )
    _check_oauth(login)
    return login


# ---------------------------------------------------------------- first admin


def ensure_admin(db_url: str, username: str, password_file: Path) -> str | None:
    """Make ``username`` an approved NativeAuthenticator account in the hub's
    database (created when missing, with the hub's own schema), its password
    the one in ``password_file``.

    When the file does not exist a password is generated, written there
    (mode 0600) and returned, so the caller can show it once; otherwise the
    account's password is set from the file and None is returned. Deleting
    the file and running this again resets the admin's password. Run it
    while the hub is stopped."""
    from jupyterhub import orm
    from nativeauthenticator import NativeAuthenticator  # type: ignore[import-untyped]
    from nativeauthenticator.orm import UserInfo  # type: ignore[import-untyped]

    created: str | None = None
    password_file = Path(password_file)
    if password_file.exists():
        password = password_file.read_text().strip()
    else:
        password = secrets.token_urlsafe(18)
        password_file.parent.mkdir(parents=True, exist_ok=True)
        password_file.touch(mode=0o600)
        password_file.chmod(0o600)
        password_file.write_text(password + "\n")
        created = password
    session = orm.new_session_factory(db_url)()
    try:
        authenticator = NativeAuthenticator(db=session, admin_users={username})
        if not authenticator.is_password_strong(password):
            raise LoginConfigError(
                f"{password_file}: the admin password is too short or too common "
                f"(at least {authenticator.minimum_password_length} characters)"
            )
        info = UserInfo.find(session, authenticator.normalize_username(username))
        if info is not None:
            # A new password (the file was deleted): the account is made again.
            session.delete(info)
            session.commit()
        if authenticator.create_user(username, password) is None:
            raise LoginConfigError(f"could not create the hub account {username!r}")
    finally:
        session.close()
    return created
