"""The pages over HTTP, without a browser: what binderbuild serves, its
headers, the configuration each page hands its script, errors, badges,
the legacy redirect and an operator's branding."""

from __future__ import annotations

import base64
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.pages.conftest import _start, get
from tests.service import BinderBuildService

GIT_URL = "git://127.0.0.1:9/some/repo.git"  # never fetched: pages do no I/O
SPEC = f"{quote(GIT_URL, safe='')}/main"


def jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    payload += "=" * (-len(payload) % 4)
    return json.loads(base64.urlsafe_b64decode(payload))  # type: ignore[no-any-return]


def meta(html: str, prop: str) -> str:
    match = re.search(rf'<meta (?:property|name)="{re.escape(prop)}" content="([^"]*)"', html)
    assert match, f"no {prop} meta tag"
    return match.group(1)


def test_home_page(pages_service: BinderBuildService) -> None:
    resp = get(pages_service.url + "/")
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/html")
    policy = resp.headers["content-security-policy"]
    nonce = re.search(r"'nonce-([^']+)'", policy).group(1)  # type: ignore[union-attr]
    assert f'nonce="{nonce}"' in resp.text
    assert "object-src 'none'" in policy and "base-uri 'none'" in policy
    # Every script the page runs carries the nonce; the JSON one runs nothing.
    for tag in re.findall(r"<script[^>]*>", resp.text):
        assert 'type="application/json"' in tag or f'nonce="{nonce}"' in tag, tag
    config = resp.page_config()
    ids = [p["id"] for p in config["providers"]]
    assert "git" in ids
    assert config["launchHost"] == pages_service.url + "/"
    assert config["badgeBaseUrl"] == pages_service.url + "/"
    assert '<option value="git">' in resp.text
    # Labels for every form control.
    for control in ("provider", "repository", "ref", "path-type", "path", "launch-url", "badge-markdown", "badge-rst"):
        assert f'<label for="{control}"' in resp.text, control
    assert meta(resp.text, "og:title")
    assert meta(resp.text, "og:url") == pages_service.url + "/"
    image = meta(resp.text, "og:image")
    assert image.startswith(pages_service.url + "/static/images/og-image.png")
    png = get(image)
    assert png.status == 200 and png.body.startswith(b"\x89PNG")
    assert '<html lang="en">' in resp.text
    assert 'name="viewport"' in resp.text


def test_static_modules_are_revalidated_and_versioned_urls_cached(pages_service: BinderBuildService) -> None:
    plain = get(pages_service.url + "/static/js/redirect.js")
    assert plain.status == 200
    assert plain.headers["content-type"].startswith("text/javascript")
    assert plain.headers["cache-control"] == "no-cache"
    home = get(pages_service.url + "/").text
    versioned = re.search(r'src="(/static/js/home\.js\?v=[^"]+)"', home).group(1)  # type: ignore[union-attr]
    resp = get(pages_service.url + versioned.replace("&amp;", "&"))
    assert resp.status == 200
    assert "max-age" in resp.headers["cache-control"] and resp.headers["cache-control"] != "no-cache"


def test_loading_page_config_and_build_token(pages_service: BinderBuildService) -> None:
    resp = get(f"{pages_service.url}/v2/git/{SPEC}?labpath=notebooks/intro.ipynb")
    assert resp.status == 200
    assert resp.headers["cache-control"] == "no-store"
    config = resp.page_config()
    assert config["provider"] == "git"
    assert config["spec"] == SPEC
    assert config["buildUrl"] == f"/build/git/{SPEC}"
    assert config["open"] == {"urlpath": None, "labpath": "notebooks/intro.ipynb", "filepath": None}
    assert config["rejected"] == []
    # Without a hub every build stops at the image.
    assert config["buildOnly"] is True
    claims = jwt_claims(config["buildToken"])
    assert claims["aud"] == f"git/{SPEC}"
    assert claims["origin"] == pages_service.url
    assert 0 < claims["exp"] - claims["iat"] <= 3600
    assert "lab/tree/notebooks/intro.ipynb" in resp.text
    # Shared links preview with the repository's name.
    assert GIT_URL in meta(resp.text, "og:title")
    assert GIT_URL in meta(resp.text, "og:description")
    assert f"<title>Starting {GIT_URL}" in resp.text


def test_loading_page_json_gives_a_fresh_token(pages_service: BinderBuildService) -> None:
    resp = get(f"{pages_service.url}/v2/git/{SPEC}", headers={"Accept": "application/json"})
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.headers["vary"] == "Accept"
    assert jwt_claims(resp.json()["buildToken"])["aud"] == f"git/{SPEC}"


@pytest.mark.parametrize(
    "query, rejected",
    [
        ("urlpath=//evil.example/x", ["urlpath"]),
        ("urlpath=https%3A%2F%2Fevil.example", ["urlpath"]),
        ("urlpath=javascript:alert(1)", ["urlpath"]),
        ("labpath=..%2F..%2Fhub%2Fadmin", ["labpath"]),
        ("filepath=%252e%252e/x&urlpath=lab", ["filepath"]),
    ],
)
def test_hostile_open_paths_are_dropped_server_side(
    pages_service: BinderBuildService, query: str, rejected: list[str]
) -> None:
    resp = get(f"{pages_service.url}/v2/git/{SPEC}?{query}")
    assert resp.status == 200
    config = resp.page_config()
    assert config["rejected"] == rejected
    for name in rejected:
        assert config["open"][name] is None
    assert 'id="rejected-params"' in resp.text
    assert "evil.example" not in json.dumps(config["open"])


def test_unknown_provider_is_a_404_page(pages_service: BinderBuildService) -> None:
    resp = get(f"{pages_service.url}/v2/nope/a/b")
    assert resp.status == 404
    assert resp.headers["content-type"].startswith("text/html")
    assert "Unknown provider" in resp.text
    assert "404" in resp.text


def test_invalid_spec_is_a_400_page_with_the_reason_escaped(pages_service: BinderBuildService) -> None:
    bad = quote("ftp://<script>alert(1)</script>", safe="")
    resp = get(f"{pages_service.url}/v2/git/{bad}/main")
    assert resp.status == 400
    assert "<script>alert(1)</script>" not in resp.text
    assert "scheme" in resp.text.lower()
    json_resp = get(f"{pages_service.url}/v2/git/{bad}/main", headers={"Accept": "application/json"})
    assert json_resp.status == 400
    assert json_resp.json()["status_code"] == 400


# BinderHub's badge URLs, including the very old mybinder.org one that READMEs
# still embed (BinderHub's app.py serves /assets/images/badge.svg too).
@pytest.mark.parametrize("name", ["badge.svg", "badge_logo.svg", "assets/images/badge.svg"])
def test_badges(pages_service: BinderBuildService, name: str) -> None:
    resp = get(f"{pages_service.url}/{name}")
    assert resp.status == 200
    assert resp.headers["content-type"] == "image/svg+xml"
    assert "max-age" in resp.headers["cache-control"]
    root = ET.fromstring(resp.body)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert "launch" in resp.text and "binder" in resp.text


# Expected locations as BinderHub's LegacyRedirectHandler builds them (its
# tests/test_legacy.py): the rest of the path becomes ``urlpath``, encoded by
# tornado's url_concat (urlencode: '/' as %2F, ' ' as '+'); nothing for an
# empty rest. binderbuild also keeps the request's own query parameters
# (BinderHub drops them), so ?filepath= links still open their file.
@pytest.mark.parametrize(
    "path, location",
    [
        ("/repo/someone/project", "/v2/gh/someone/project/master"),
        ("/repo/someone/project/", "/v2/gh/someone/project/master"),
        (
            "/repo/binderhub-ci-repos/requirements/notebooks/index.ipynb",
            "/v2/gh/binderhub-ci-repos/requirements/master?urlpath=%2Fnotebooks%2Findex.ipynb",
        ),
        ("/repo/someone/project/tree/x", "/v2/gh/someone/project/master?urlpath=%2Ftree%2Fx"),
        (
            "/repo/someone/project/notebooks/my%20analysis.ipynb",
            "/v2/gh/someone/project/master?urlpath=%2Fnotebooks%2Fmy+analysis.ipynb",
        ),
        ("/repo/someone/project?filepath=a.ipynb", "/v2/gh/someone/project/master?filepath=a.ipynb"),
        (
            "/repo/someone/project/notebooks/a.ipynb?kernel=python3",
            "/v2/gh/someone/project/master?urlpath=%2Fnotebooks%2Fa.ipynb&kernel=python3",
        ),
        # The path names what to open; a urlpath in the query does not override it.
        (
            "/repo/someone/project/notebooks/a.ipynb?urlpath=lab",
            "/v2/gh/someone/project/master?urlpath=%2Fnotebooks%2Fa.ipynb",
        ),
    ],
)
def test_legacy_repo_redirect(pages_service: BinderBuildService, path: str, location: str) -> None:
    resp = get(pages_service.url + path)
    assert resp.status == 302
    assert resp.headers["location"] == location


def test_legacy_redirect_lands_on_a_page_that_opens_the_path(pages_service: BinderBuildService) -> None:
    moved = get(pages_service.url + "/repo/someone/project/notebooks/my%20analysis.ipynb")
    page = get(pages_service.url + moved.headers["location"])
    assert page.status == 200
    config = page.page_config()
    assert config["spec"] == "someone/project/master"
    assert config["open"]["urlpath"] == "/notebooks/my analysis.ipynb"
    assert config["rejected"] == []


def test_about_page(pages_service: BinderBuildService) -> None:
    resp = get(pages_service.url + "/about")
    assert resp.status == 200
    versions = get(pages_service.url + "/versions").json()
    assert versions["binderbuild"] in resp.text
    assert "<h1>About binderbuild</h1>" in resp.text


@pytest.fixture(scope="module")
def branded_service(tmp_path_factory: pytest.TempPathFactory, docker_client: Any):
    """An operator's branding, half of it written as a BinderHub config."""
    root = tmp_path_factory.mktemp("branded")
    templates = root / "templates"
    templates.mkdir()
    (templates / "page.html").write_text(
        '{% extends "templates/page.html" %}\n'
        "{% block footer %}<footer id=\"custom-footer\">Run by the Example Institute</footer>"
        "{{ super() }}{% endblock footer %}\n"
    )
    static = root / "static"
    static.mkdir()
    (static / "institute-logo.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'
    )
    (static / "badge.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><title>institute badge</title></svg>'
    )
    extra = "\n".join(
        [
            f"c.BinderHub.template_path = {str(templates)!r}",
            f"c.BinderHub.extra_static_path = {str(static)!r}",
            "c.BinderHub.banner_message = '<strong id=\"banner\">Maintenance on Friday</strong>'",
            "c.BinderHub.about_message = '<p id=\"about-extra\">Operated by the Example Institute.</p>'",
            "c.BinderHub.extra_footer_scripts = {'b': 'window.footerB = 2;', 'a': 'window.footerA = 1;'}",
            "c.BinderBuild.template_variables = {'site_title': 'Example Binder', "
            "'logo_url': 'institute-logo.svg', 'logo_alt': 'Example Institute', "
            "'header_html': '<p id=\"header-extra\">Beta</p>', 'docs_url': 'https://docs.example.org/'}",
        ]
    )
    service = _start(root / "svc", extra, base_url="/binder/")
    yield service
    service.stop()


def test_branding(branded_service: BinderBuildService) -> None:
    url = branded_service.origin  # type: ignore[attr-defined]
    home = get(url + "/binder/")
    assert home.status == 200
    html = home.text
    assert "<title>Example Binder</title>" in html
    assert '<strong id="banner">Maintenance on Friday</strong>' in html
    assert '<p id="header-extra">Beta</p>' in html
    assert '<footer id="custom-footer">Run by the Example Institute</footer>' in html
    assert "Example Binder · powered by binderbuild" in html  # the built-in footer, via super()
    assert 'href="https://docs.example.org/"' in html
    logo = re.search(r'<img id="logo" src="([^"]+)" alt="Example Institute"', html)
    assert logo and logo.group(1) == "/binder/extra_static/institute-logo.svg"
    assert get(url + logo.group(1)).status == 200
    # Footer scripts in the order of their names, allowed by the page's CSP nonce.
    nonce = re.search(r"'nonce-([^']+)'", home.headers["content-security-policy"]).group(1)  # type: ignore[union-attr]
    a_at = html.index(f'<script nonce="{nonce}">window.footerA = 1;</script>')
    b_at = html.index(f'<script nonce="{nonce}">window.footerB = 2;</script>')
    assert a_at < b_at
    # base_url everywhere.
    assert 'src="/binder/static/js/home.js' in html
    assert home.page_config()["baseUrl"] == "/binder/"
    assert home.page_config()["launchHost"] == url + "/binder/"
    loading = get(f"{url}/binder/v2/git/{SPEC}")
    assert loading.page_config()["buildUrl"] == f"/binder/build/git/{SPEC}"
    about = get(url + "/binder/about")
    assert '<p id="about-extra">Operated by the Example Institute.</p>' in about.text
    # The operator's badge replaces the built-in one; the other stays.
    assert "institute badge" in get(url + "/binder/badge.svg").text
    assert "launch" in get(url + "/binder/badge_logo.svg").text
    assert get(url + "/binder/repo/a/b").headers["location"] == "/binder/v2/gh/a/b/master"
    assert get(url + "/").status == 404


def test_templates_directory_can_replace_a_page(tmp_path: Path, docker_client: Any) -> None:
    templates = tmp_path / "t"
    templates.mkdir()
    (templates / "about.html").write_text(
        '{% extends "page.html" %}{% block main %}<h1 id="own-about">{{ site_title }} by us</h1>{% endblock %}'
    )
    service = _start(tmp_path / "svc", f"c.BinderBuild.template_path = {str(templates)!r}")
    try:
        resp = get(service.url + "/about")
        assert '<h1 id="own-about">binderbuild by us</h1>' in resp.text
        assert "<h1>About binderbuild</h1>" not in resp.text
        # Other pages keep the built-in templates.
        assert 'id="launch-form"' in get(service.url + "/").text
    finally:
        service.stop()
