"""HTML pages: home (launch form), loading page, about, badges, legacy redirect.

The pages are Jinja2 templates (BinderHub's engine, so an operator's
BinderHub templates need few changes) under the top-level ``templates/``;
their JavaScript (plain ES modules) and styles are under ``static/``.

Branding without forking: the options of :class:`PageOptions` keep BinderHub's
names (``template_path``, ``extra_static_path``, ``banner_message``,
``about_message``, ``extra_footer_scripts``, ``template_variables``) and are
options of ``BinderBuild`` itself (it inherits them).

What the loading page is handed is computed here once: a short-lived build
token for its own event stream, and the ``urlpath``/``labpath``/``filepath``
parameters, each already checked by :func:`check_open_path` (the page checks
them again before it navigates; see ``static/js/redirect.js``).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, unquote, urlencode

import jinja2
from tornado.web import HTTPError, StaticFileHandler
from traitlets import Dict, HasTraits, List, Unicode, validate

from binderbuild import __version__
from binderbuild.errors import BinderBuildError
from binderbuild.handlers.base import BaseHandler
from binderbuild.handlers.build import PROFILE_NAME
from binderbuild.models import BuildRequest

if TYPE_CHECKING:
    pass

ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_TEMPLATES = ROOT / "templates"
DEFAULT_STATIC = ROOT / "static"

# Request parameters of /v2 that name what to open inside the server.
OPEN_PARAMS = ("urlpath", "labpath", "filepath")


class PageOptions(HasTraits):
    """Options of the pages. ``BinderBuild`` inherits them, so they are set as
    ``c.BinderBuild.<name>`` (or ``c.BinderHub.<name>`` in a BinderHub config)."""

    template_path = Unicode(
        "",
        config=True,
        help="""Directory searched for page templates before the built-in ones, so an
        operator can replace any page (home: index.html, loading page: loading.html,
        about.html, error.html, the layout: page.html). A custom template can extend
        the built-in one of the same name as "templates/<name>", e.g.
        {% extends "templates/page.html" %}, and override its blocks.""",
    )
    extra_static_path = Unicode(
        "",
        config=True,
        help="Directory of extra static files (logos, styles) served under "
        "extra_static_url_prefix; templates link to them with extra_static_url('name').",
    )
    extra_static_url_prefix = Unicode(
        "extra_static/",
        config=True,
        help="URL prefix (relative to base_url) of the files in extra_static_path.",
    )
    banner_message = Unicode(
        "",
        config=True,
        help="HTML shown in a banner at the top of every page (announcements, outages). "
        "Trusted operator input: it is not escaped.",
    )
    about_message = Unicode(
        "",
        config=True,
        help="HTML added to the about page (who runs this service, policies, contact). "
        "Trusted operator input: it is not escaped.",
    )
    extra_footer_scripts = Dict(
        value_trait=Unicode(),
        config=True,
        help="""Name -> JavaScript source of scripts added at the end of every page
        (analytics, say), in order of their names. They run with the page's
        Content-Security-Policy nonce; scripts they load must be allowed by it.""",
    )
    template_variables = Dict(
        config=True,
        help="""Extra variables for the templates. The built-in templates use:
        site_title (name shown in titles and the header, default "binderbuild"),
        logo_url (header logo; a URL, or a path under extra_static_path),
        logo_alt, logo_width (pixels), header_html and footer_html (extra trusted
        HTML after the header and in the footer), og_image_url (OpenGraph preview
        image), docs_url (link in the footer).""",
    )
    badge_base_url = Unicode(
        "",
        config=True,
        help="Base URL of the badge images in the snippets the home page generates. "
        "Default: this service's launch URL (BinderBuild.launch_host or the request's).",
    )
    launch_profiles = List(
        Dict(),
        config=True,
        help="""Resource profiles the home page offers (signed-in Binder): [{'name':
        'small', 'display_name': 'Small: 1 CPU, 2 GB'}, ...], the names of the hub
        spawner's BinderSpawnerMixin.profiles. The pick is sent as ?profile=NAME, and
        the spawner decides (docs/persistent-servers.md). Empty: no picker.""",
    )
    content_security_policy = Unicode(
        "default-src 'self'; script-src 'self' 'nonce-{nonce}' 'strict-dynamic'; "
        "style-src 'self' 'unsafe-inline'; img-src * data:; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'self'; form-action 'self'",
        config=True,
        help="Content-Security-Policy header of the HTML pages ({nonce} is replaced by the "
        "per-request nonce that the page's own scripts carry). Empty: no header.",
    )

    @validate("extra_static_url_prefix")
    def _valid_static_prefix(self, proposal: Any) -> str:
        return str(proposal["value"]).strip("/") + "/"


@dataclass(frozen=True)
class PageConfig:
    """Plain values read once from configuration; handlers never see traitlets."""

    env: jinja2.Environment
    banner_message: str = ""
    about_message: str = ""
    extra_footer_scripts: tuple[str, ...] = ()
    template_variables: Mapping[str, Any] = field(default_factory=dict)
    badge_base_url: str = ""
    extra_static_path: str = ""
    extra_static_url_prefix: str = ""
    content_security_policy: str = ""
    # (name, label) of the profiles the home page offers.
    launch_profiles: tuple[tuple[str, str], ...] = ()


def make_template_env(template_path: str = "") -> jinja2.Environment:
    """Custom directory first, then the built-in templates, which are also
    reachable as "templates/<name>" so a custom page can extend its original."""
    loaders: list[jinja2.BaseLoader] = []
    if template_path:
        loaders.append(jinja2.FileSystemLoader(template_path))
    builtin = jinja2.FileSystemLoader(str(DEFAULT_TEMPLATES))
    loaders += [jinja2.PrefixLoader({"templates": builtin}), builtin]
    return jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        autoescape=True,
        undefined=jinja2.Undefined,
    )


def page_config(options: PageOptions) -> PageConfig:
    scripts = tuple(options.extra_footer_scripts[k] for k in sorted(options.extra_footer_scripts))
    return PageConfig(
        env=make_template_env(options.template_path),
        banner_message=options.banner_message,
        about_message=options.about_message,
        extra_footer_scripts=scripts,
        template_variables=dict(options.template_variables),
        badge_base_url=options.badge_base_url,
        extra_static_path=options.extra_static_path,
        extra_static_url_prefix=(
            options.extra_static_url_prefix if options.extra_static_path else ""
        ),
        content_security_policy=options.content_security_policy,
        launch_profiles=tuple(
            (str(p["name"]), str(p.get("display_name") or p["name"]))
            for p in options.launch_profiles
            if isinstance(p, dict) and PROFILE_NAME.fullmatch(str(p.get("name", "")))
        ),
    )


def page_settings(options: PageOptions) -> dict[str, Any]:
    """Tornado settings the pages need (merged into the application's)."""
    return {
        "binderbuild_pages": page_config(options),
        "static_handler_class": StaticHandler,
    }


def page_handlers(base_url: str, options: PageOptions) -> list[tuple[Any, ...]]:
    """The pages' routes, to append to the application's handlers."""
    base = base_url
    routes: list[tuple[Any, ...]] = [
        (rf"{base}", HomeHandler),
        (rf"{base}v2/(?P<provider_id>[^/]+)/(?P<spec>.+)", LoadingHandler),
        (rf"{base}about", AboutHandler),
        (rf"{base}(?P<name>badge|badge_logo)\.svg", BadgeHandler),
        # mybinder.org's first badge URL, still in old READMEs (BinderHub serves it too).
        (rf"{base}assets/images/(?P<name>badge)\.svg", BadgeHandler),
        (
            rf"{base}repo/(?P<user>[^/]+)/(?P<repo>[^/]+)(?P<urlpath>/.*)?",
            LegacyRepoRedirectHandler,
        ),
    ]
    if options.extra_static_path:
        prefix = options.extra_static_url_prefix.strip("/")
        routes.append(
            (rf"{base}{prefix}/(.*)", StaticHandler, {"path": options.extra_static_path})
        )
    return routes


# ---------------------------------------------------------------- open paths

# Control characters, and the Unicode ones that reorder or hide text.
_UNSAFE_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
# Characters left readable in re-encoded path segments: the same set as
# encodeURIComponent plus these in static/js/redirect.js.
_SEGMENT_SAFE = "@:!$'()*+,;=&~"
_MAX_DECODE_ROUNDS = 3
_MAX_OPEN_PATH = 2000


class UnsafePath(ValueError):
    """An urlpath/labpath/filepath that could lead outside the server."""


def _decode_fully(value: str) -> str:
    """Percent-decode until stable, so %2e%2e and %252e%252e are seen as '..'."""
    for _ in range(_MAX_DECODE_ROUNDS):
        decoded = unquote(value, errors="strict")
        if decoded == value:
            return value
        value = decoded
    if "%" in value and unquote(value) != value:
        raise UnsafePath("too many layers of percent-encoding")
    return value


def _check_chars(value: str) -> None:
    if _UNSAFE_CHARS.search(value) or "\\" in value:
        raise UnsafePath("control characters or backslashes")


def _check_text(value: str) -> None:
    """The whole path: no unsafe characters, and not an absolute URL."""
    _check_chars(value)
    if _SCHEME.match(value) or value.startswith("//"):
        raise UnsafePath("an absolute URL")


def clean_path(path: str) -> str:
    """A path inside the server, re-encoded; raises UnsafePath.

    Leading '/' is allowed (paths are relative to the server's own URL), '.'
    segments and empty segments are dropped, '..' anywhere (also encoded) is
    refused. A trailing '/' is kept.
    """
    if len(path) > _MAX_OPEN_PATH:
        raise UnsafePath("too long")
    try:
        _check_text(path)
        decoded_whole = _decode_fully(path)
    except UnicodeDecodeError:
        raise UnsafePath("invalid percent-encoding") from None
    _check_text(decoded_whole)
    segments: list[str] = []
    for raw in path.split("/"):
        try:
            segment = _decode_fully(raw)
        except UnicodeDecodeError:
            raise UnsafePath("invalid percent-encoding") from None
        if segment in ("", "."):
            continue
        if segment == ".." or "/" in segment:
            raise UnsafePath("'..' or an encoded '/' in a segment")
        _check_chars(segment)
        segments.append(quote(segment, safe=_SEGMENT_SAFE))
    cleaned = "/".join(segments)
    if cleaned and path.endswith("/"):
        cleaned += "/"
    return cleaned


def clean_urlpath(urlpath: str) -> str:
    """An urlpath (path, optional ?query and #fragment) made safe; raises UnsafePath.

    The query keeps its parameters except ``token``: the server token is
    added by the page and must not be replaced by a link's.
    """
    if len(urlpath) > _MAX_OPEN_PATH:
        raise UnsafePath("too long")
    rest, _, fragment = urlpath.partition("#")
    path, _, query = rest.partition("?")
    cleaned = clean_path(path)
    if _UNSAFE_CHARS.search(query) or _UNSAFE_CHARS.search(fragment):
        raise UnsafePath("control characters")
    pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "token"]
    if pairs:
        cleaned += "?" + urlencode(pairs, quote_via=quote)
    if fragment:
        try:
            cleaned += "#" + quote(_decode_fully(fragment), safe=_SEGMENT_SAFE + "/?")
        except UnicodeDecodeError:
            raise UnsafePath("invalid percent-encoding") from None
    return cleaned


def open_path(urlpath: str | None, labpath: str | None, filepath: str | None) -> str:
    """The path inside the server to open: urlpath wins, then labpath
    (JupyterLab: lab/tree/{labpath}), then filepath (tree/{filepath}).
    Raises UnsafePath; the empty string is the server's default page."""
    if urlpath:
        return clean_urlpath(urlpath)
    if labpath:
        return "lab/tree/" + clean_path(labpath)
    if filepath:
        return "tree/" + clean_path(filepath)
    return ""


def check_open_params(args: Mapping[str, str | None]) -> tuple[dict[str, str | None], list[str]]:
    """Each of urlpath/labpath/filepath kept when safe, else dropped and named."""
    kept: dict[str, str | None] = {}
    rejected: list[str] = []
    for name in OPEN_PARAMS:
        value = args.get(name)
        if not value:
            kept[name] = None
            continue
        try:
            open_path(**{n: (value if n == name else None) for n in OPEN_PARAMS})
        except UnsafePath:
            kept[name] = None
            rejected.append(name)
        else:
            kept[name] = value
    return kept, rejected


def script_json(data: Any) -> str:
    """JSON that is safe inside <script type="application/json">: no '<', '>'
    or '&' can end the element or open a comment."""
    text = json.dumps(data, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# ---------------------------------------------------------------- handlers


class StaticHandler(StaticFileHandler):
    """Static files: versioned URLs (?v=hash) are cached for long; plain ones,
    like the modules that ES imports fetch, are revalidated every time so an
    upgrade never mixes old and new modules."""

    def set_extra_headers(self, path: str) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        if not self.get_argument("v", None):
            self.set_header("Cache-Control", "no-cache")

    def get_content_type(self) -> str:
        if self.absolute_path and self.absolute_path.endswith((".js", ".mjs")):
            return "text/javascript; charset=UTF-8"
        return super().get_content_type()


class PageHandler(BaseHandler):
    """Renders templates with the shared namespace; errors become HTML pages."""

    async def login_redirect(self) -> bool:
        """With hub login on (``Services.hub_auth``), send an anonymous
        browser to the hub's login and back; True when it did."""
        hub_auth = self.ctx.hub_auth
        if hub_auth is None or await self.ctx.current_user_name(self):
            return False
        from binderbuild.auth import hub_login_url

        self.redirect(hub_login_url(self, hub_auth))
        return True

    def signed_in_stream_url(self, url: str) -> str:
        """With hub login on, ``url`` (the page's own event stream) with the
        page's XSRF token: JupyterHub's login cookie counts for a script's
        request (EventSource) only with it, so without it a signed-in
        person's launch was refused with "Log in first"."""
        if self.ctx.hub_auth is None:
            return url
        from tornado.httputil import url_concat

        token: bytes | str = self.xsrf_token  # JupyterHub's, once hub_auth has seen the handler
        text = token.decode() if isinstance(token, bytes) else token
        return url_concat(url, {"_xsrf": text})

    @property
    def pages(self) -> PageConfig:
        return self.settings["binderbuild_pages"]  # type: ignore[no-any-return]  # Tornado settings are untyped

    @property
    def nonce(self) -> str:
        """One nonce per response: the CSP header and the page's scripts share
        it. Made on first use, so error pages rendered before ``prepare``
        (an undecodable path) have one too."""
        if self._nonce is None:
            self._nonce = secrets.token_urlsafe(18)
        return self._nonce

    _nonce: str | None = None

    def extra_static_url(self, path: str) -> str:
        prefix = self.pages.extra_static_url_prefix
        if not prefix:
            raise HTTPError(500, "extra_static_url() used but extra_static_path is not set")
        return f"{self.ctx.settings.base_url}{prefix}{path.lstrip('/')}"

    @property
    def origin(self) -> str:
        return self.public_origin

    def template_namespace(self) -> dict[str, Any]:
        variables = dict(self.pages.template_variables)
        base_url = self.ctx.settings.base_url
        logo_url = variables.get("logo_url") or self.static_url("images/logo.svg")
        if (
            self.pages.extra_static_url_prefix
            and not _SCHEME.match(logo_url)
            and not logo_url.startswith("/")
        ):
            logo_url = self.extra_static_url(logo_url)
        namespace: dict[str, Any] = {
            "site_title": "binderbuild",
            "logo_alt": variables.get("site_title", "binderbuild"),
            "logo_width": 200,
            "header_html": "",
            "footer_html": "",
            "docs_url": "",
            "og_image_url": self.origin + self.static_url("images/og-image.png"),
        }
        namespace.update(variables)
        namespace.update(
            base_url=base_url,
            static_url=self.static_url,
            extra_static_url=self.extra_static_url,
            banner=self.pages.banner_message,
            extra_footer_scripts=self.pages.extra_footer_scripts,
            nonce=self.nonce,
            logo_url=logo_url,
            launch_host=self.launch_host,
            page_url=self.origin + self.request.uri,
            version=__version__,
        )
        return namespace

    def render_page(self, name: str, status: int = 200, **extra: Any) -> None:
        namespace = self.template_namespace()
        namespace.update(extra)
        html = self.pages.env.get_template(name).render(**namespace)
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        policy = self.pages.content_security_policy
        if policy and "Content-Security-Policy" not in self.settings.get("extra_headers", {}):
            self.set_header("Content-Security-Policy", policy.replace("{nonce}", self.nonce))
        self.finish(html)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        status_code, message = self.error_answer(status_code, kwargs)
        exc = (kwargs.get("exc_info") or (None, None))[1]
        if not isinstance(exc, BinderBuildError | HTTPError):
            message = ""  # an unexpected crash: the page's reason phrase says enough
        self.render_error(status_code, message)

    def render_error(self, status_code: int, message: str) -> None:
        try:
            reason = HTTPStatus(status_code).phrase
        except ValueError:
            reason = "Error"
        self.render_page(
            "error.html", status=status_code, status_code=status_code, reason=reason, message=message
        )


class HomeHandler(PageHandler):
    async def get(self) -> None:
        if await self.login_redirect():
            return
        providers = [p.describe() for p in self.ctx.providers.values()]
        config = {
            "baseUrl": self.ctx.settings.base_url,
            "launchHost": self.launch_host,
            "badgeBaseUrl": self.pages.badge_base_url or self.launch_host,
            "providers": providers,
        }
        self.render_page(
            "index.html",
            profiles=self.pages.launch_profiles,
            providers=providers,
            page_config=script_json(config),
            badge_url=self.static_url("images/badge_logo.svg"),
        )


class LoadingHandler(PageHandler):
    """``/v2/{provider}/{spec}``: the page that follows a build and opens the server.

    With ``Accept: application/json`` the same URL answers the page's
    configuration only: the page asks for it to get a fresh build token when
    it reconnects after the first one expired.
    """

    async def get(self, provider_id: str, spec: str) -> None:
        if not self._wants_json() and await self.login_redirect():
            return
        provider_id, spec = self.raw_provider_and_spec("v2/")
        # UnknownProvider, SpecError, Forbidden...: answered by write_error,
        # as JSON or as an HTML page (see _wants_json).
        target = self.ctx.pipeline.validate(
            BuildRequest(provider_id=provider_id, spec=spec, launch_host=self.launch_host)
        )
        provider, parsed = target.provider, target.parsed
        params, rejected = check_open_params(
            {name: self.get_argument(name, None) for name in OPEN_PARAMS}
        )
        try:
            opens = open_path(**params)
        except UnsafePath:  # pragma: no cover - every value was checked alone
            opens = ""
        base_url = self.ctx.settings.base_url
        token = self.ctx.build_tokens.issue(provider_id, spec, self.origin)
        # ?profile=: a resource profile of the hub's spawner, passed on to the
        # launch (docs/persistent-servers.md); the spawner validates it.
        profile = self.get_argument("profile", "")
        build_query = f"?profile={profile}" if PROFILE_NAME.fullmatch(profile) else ""
        config = {
            "baseUrl": base_url,
            "provider": provider_id,
            "spec": spec,
            "buildUrl": self.signed_in_stream_url(f"{base_url}build/{provider_id}/{spec}{build_query}"),
            "buildToken": token,
            "open": params,
            "rejected": rejected,
            "buildOnly": self.ctx.settings.require_build_only,
            "favicons": {
                state: self.static_url(f"images/favicon-{state}.svg")
                for state in ("progress", "failed", "ready")
            },
        }
        self.set_header("Cache-Control", "no-store")
        self.set_header("Vary", "Accept")
        if self._wants_json():
            self.write_json(config)
            return
        repo_name = parsed.repo
        self.render_page(
            "loading.html",
            provider=provider.describe(),
            repo=repo_name,
            ref=parsed.ref,
            spec=spec,
            opens=opens,
            rejected=rejected,
            launch_url=f"{self.launch_host}v2/{provider_id}/{spec}",
            build_only=self.ctx.settings.require_build_only,
            page_config=script_json(config),
        )

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if self._wants_json():
            BaseHandler.write_error(self, status_code, **kwargs)
        else:
            super().write_error(status_code, **kwargs)

    def _wants_json(self) -> bool:
        accept = self.request.headers.get("Accept", "")
        return "application/json" in accept and "text/html" not in accept


class AboutHandler(PageHandler):
    def get(self) -> None:
        self.render_page(
            "about.html",
            about_message=self.pages.about_message,
            version_info=dict(self.ctx.settings.version_info),
        )


class BadgeHandler(PageHandler):
    """The launch badges, at the URLs READMEs have linked to for years.

    Served from extra_static_path when it has a file of the same name, so an
    operator can rebrand them."""

    def get(self, name: str) -> None:
        filename = f"{name}.svg"
        candidates = []
        extra = self.pages.extra_static_path
        if extra:
            candidates.append(Path(extra) / filename)
        candidates.append(DEFAULT_STATIC / "images" / filename)
        for path in candidates:
            if path.is_file():
                body = path.read_bytes()
                break
        else:  # pragma: no cover - the built-in badges ship with the package
            raise HTTPError(404)
        self.set_header("Content-Type", "image/svg+xml")
        # Badges are fetched (and proxied by GitHub's camo) a lot; an hour is
        # short enough for a rebrand to show up.
        self.set_header("Cache-Control", "public, max-age=3600")
        self.finish(body)


class LegacyRepoRedirectHandler(PageHandler):
    """``/repo/{user}/{repo}[/{path}]`` -> ``/v2/gh/{user}/{repo}/master?urlpath=/{path}``
    (the very first Binder's URLs, still in old READMEs).

    As BinderHub builds it: the rest of the path, percent-decoded, becomes
    ``urlpath`` (form-encoded: ``/`` as ``%2F``, space as ``+``), and nothing
    when it is empty or only slashes. Unlike BinderHub, the request's own
    query parameters are kept after it, so ``?filepath=`` links still open
    their file; a ``urlpath`` among them gives way to the path's. The loading
    page checks the path like any other ``urlpath``.
    """

    def get(self, user: str, repo: str, urlpath: str | None = None) -> None:
        target = f"{self.ctx.settings.base_url}v2/gh/{quote(user, safe='')}/{quote(repo, safe='')}/master"
        query: list[str] = []
        has_path = bool(urlpath and urlpath.strip("/"))
        if has_path:
            query.append(urlencode({"urlpath": urlpath}))
        for part in self.request.query.split("&"):
            if part and not (has_path and part.split("=", 1)[0] == "urlpath"):
                query.append(part)
        if query:
            target += "?" + "&".join(query)
        self.redirect(target, permanent=False)
