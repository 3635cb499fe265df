"""What BinderHub's own readers see: /health as mybinder.org's federation
tools read it, /api/repoproviders as front ends read it, /versions' keys.

Expected values are BinderHub's, written out from its code and docs:

- ``binderhub/health.py``: checks named ``Docker registry``, ``JupyterHub API``
  and ``Pod quota`` (the last with ``total_pods``, ``build_pods``,
  ``user_pods``, ``quota``; ``quota`` null when there is none); the pod quota
  is soft (never makes the answer 503).
- mybinder.org-deploy ``docs/source/operation_guide/federation.rst`` (the
  federation status page): reads ``checks`` by *position* as
  ``[registry, hub, quota]``, prints ``user_pods/build_pods`` and ``quota``;
  a non-2xx answer shows the member as failed.
- mybinder.org-deploy ``images/federation-redirect/app.py`` (the
  redirector): a member whose /health is not 200, or whose first
  ``Pod quota`` check is not ok, is taken out of the rotation.
- ``binderhub/static/js`` (LinkGenerator, App): providers carry ``id``,
  ``displayName``, ``repo.label``, ``repo.placeholder``, ``repo.urlEncode``,
  ``ref.enabled``, ``ref.default``, optional ``detect.regex``; front ends that
  build images also check a spec against ``spec.validateRegex``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.hubservice import HubService, HubUnavailable
from tests.ops.helpers import Response, build_url, http, new_repo, registry_config, wait_for_health
from tests.realservices import GitServer, RegistryServer
from tests.service import BinderBuildService
from tests.sse import read_events

pytestmark = [pytest.mark.docker]

BINDERHUB_CHECKS = ["Docker registry", "JupyterHub API", "Pod quota"]
POD_QUOTA_KEYS = {"total_pods", "build_pods", "user_pods", "quota"}
PREFIX = "bbops-compat-"


def _js(value: object) -> str:
    """A value as JavaScript's template literal prints it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass
class FederationView:
    """A member's row on the federation status page, and the redirector's verdict."""

    response: str
    registry: str
    hub: str
    pods: str
    quota: str
    in_rotation: bool


def federation_view(resp: Response) -> FederationView:
    if not 200 <= resp.status < 300:
        # $.getJSON(...).fail(): only the Response column is set.
        status_page = ("Fail", "", "", "", "")
    else:
        body = resp.json()
        registry, hub, quota = body["checks"][:3]
        status_page = (
            "Fail" if body["ok"] is False else "Success",
            "Success" if registry["ok"] else "Fail",
            "Success" if hub["ok"] else "Fail",
            f"{_js(quota.get('user_pods'))}/{_js(quota.get('build_pods'))}",
            _js(quota.get("quota")),
        )
    in_rotation = resp.status == 200
    if in_rotation:
        for check in resp.json()["checks"]:
            if check["service"] == "Pod quota":
                in_rotation = bool(check["ok"])
                break
    return FederationView(*status_page, in_rotation=in_rotation)


def binderhub_checks(resp: Response) -> list[dict]:
    checks = resp.json()["checks"]
    assert [c["service"] for c in checks[:3]] == BINDERHUB_CHECKS, checks
    return checks[:3]


# --- /health, registry only (no hub) ----------------------------------------


def test_health_speaks_binderhub_with_a_registry_healthy_and_degraded(
    module_services: Callable[..., BinderBuildService], module_dir: Path, docker_client
) -> None:
    registry = RegistryServer(module_dir / "compat-registry")
    registry.start()
    try:
        service = module_services(registry_config(registry) + "c.BinderBuild.health_check_ttl = 1\n")
        healthy = wait_for_health(service, 200)
        registry_check, hub_check, quota_check = binderhub_checks(healthy)
        assert registry_check["ok"] is True
        # No hub: launches are off, nothing to be unhealthy.
        assert hub_check["ok"] is True
        assert POD_QUOTA_KEYS <= set(quota_check)
        assert quota_check == {
            **quota_check,
            "ok": True,
            "quota": None,
            "user_pods": 0,
            "build_pods": 0,
            "total_pods": 0,
        }
        # binderbuild's own checks are still there, after BinderHub's.
        own = {c["service"] for c in healthy.json()["checks"][3:]}
        assert {"registry", "build-backend", "queue"} <= own
        assert federation_view(healthy) == FederationView(
            "Success", "Success", "Success", "0/0", "null", in_rotation=True
        )

        registry.stop()
        down = wait_for_health(service, 503, timeout=15)
        registry_check, hub_check, _ = binderhub_checks(down)
        assert registry_check["ok"] is False
        assert registry_check["message"]
        assert hub_check["ok"] is True
        assert federation_view(down) == FederationView("Fail", "", "", "", "", in_rotation=False)

        registry.start()
        back = wait_for_health(service, 200, timeout=15)
        assert binderhub_checks(back)[0]["ok"] is True
        assert federation_view(back).in_rotation is True
    finally:
        registry.stop()


def test_health_without_a_registry_still_puts_binderhubs_checks_first(
    module_services: Callable[..., BinderBuildService],
) -> None:
    # The status page reads the first three checks by position, so the local
    # image store stands where BinderHub's registry check stands.
    service = module_services(
        "c.BinderBuild.allowed_internal_networks = ['127.0.0.0/8']\n"
        "c.BinderBuild.image_prefix = 'bbops-compat-local-'\n"
    )
    healthy = wait_for_health(service, 200)
    registry_check, _, _ = binderhub_checks(healthy)
    assert registry_check["ok"] is True
    assert http(f"{service.url}/health", method="HEAD").status == 200


# --- /health with a real hub: healthy, full, degraded ------------------------


@pytest.fixture(scope="module")
def compat_hub(module_dir: Path, docker_client) -> Iterator[HubService]:
    try:
        hub = HubService(module_dir / "compat-hub", [PREFIX]).start()
    except HubUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    yield hub
    hub.stop()
    hub.remove_containers(docker_client)


def hub_service(
    module_services: Callable[..., BinderBuildService], hub: HubService, pod_quota: int | None
) -> BinderBuildService:
    return module_services(
        "c.BinderBuild.allowed_internal_networks = ['127.0.0.0/8']\n"
        f"c.BinderBuild.image_prefix = {PREFIX!r}\n"
        "c.DockerBuilder.build_network = 'none'\n"
        "c.BinderBuild.health_check_ttl = 1\n"
        "c.HubLauncher.retries = 1\n"
        f"c.BinderBuild.pod_quota = {pod_quota!r}\n" + hub.binderbuild_config()
    )


@pytest.mark.hub
def test_pod_quota_shows_healthy_full_and_degraded_members(
    module_services: Callable[..., BinderBuildService],
    compat_hub: HubService,
    git_server: GitServer,
) -> None:
    # A member with room for one server launches one: it is then full.
    full = hub_service(module_services, compat_hub, pod_quota=1)
    roomy = hub_service(module_services, compat_hub, pod_quota=3)
    maintenance = hub_service(module_services, compat_hub, pod_quota=0)

    before = wait_for_health(full, 200)
    _, hub_check, quota_check = binderhub_checks(before)
    assert hub_check["ok"] is True
    assert (quota_check["user_pods"], quota_check["build_pods"], quota_check["quota"]) == (0, 0, 1)
    assert federation_view(before).in_rotation is True

    repo = new_repo(git_server)
    launched = read_events(build_url(full, repo.spec("main")), timeout=600)
    assert launched.final["phase"] == "ready", launched.events[-5:]

    # Full: every server it may run is running. Still healthy (200: the pod
    # quota is soft, as in BinderHub), but out of the redirector's rotation.
    at_quota = wait_for_health(full, 200)
    quota_check = binderhub_checks(at_quota)[2]
    assert quota_check["ok"] is False
    assert (quota_check["user_pods"], quota_check["build_pods"]) == (1, 0)
    assert (quota_check["total_pods"], quota_check["quota"]) == (1, 1)
    assert federation_view(at_quota) == FederationView(
        "Success", "Success", "Success", "1/0", "1", in_rotation=False
    )
    # ...and a launch there is refused, which is why it must leave the rotation.
    refused = read_events(build_url(full, repo.spec("main")), timeout=120)
    assert refused.final["phase"] == "failed"

    # Another member on the same hub with room to spare counts the same server.
    healthy = wait_for_health(roomy, 200)
    assert federation_view(healthy) == FederationView(
        "Success", "Success", "Success", "1/0", "3", in_rotation=True
    )

    # pod_quota 0 (maintenance): nothing may launch, so it is full too.
    closed = wait_for_health(maintenance, 200)
    assert binderhub_checks(closed)[2]["ok"] is False
    assert federation_view(closed).in_rotation is False

    # Degraded: the hub is down. 503; the status page shows the member failed.
    compat_hub.stop()
    try:
        down = wait_for_health(roomy, 503, timeout=15)
        registry_check, hub_check, quota_check = binderhub_checks(down)
        assert hub_check["ok"] is False and hub_check["message"]
        assert registry_check["ok"] is True
        assert POD_QUOTA_KEYS <= set(quota_check)
        assert federation_view(down) == FederationView("Fail", "", "", "", "", in_rotation=False)
    finally:
        compat_hub.start()
    back = wait_for_health(roomy, 200, timeout=30)
    assert federation_view(back).in_rotation is True


# --- /api/repoproviders and /versions ---------------------------------------

# Specs each provider accepts, to check its validateRegex against.
EXAMPLE_SPECS = {
    "gh": "binderhub-ci-repos/requirements/HEAD",
    "gist": "someone/0123456789abcdef",
    "gl": "group%2Fproject/HEAD",
    "git": quote("https://git.example.org/repo.git", safe="") + "/HEAD",
    "zenodo": "10.5281/zenodo.3242074",
    "figshare": "10.6084/m9.figshare.9782777.v1",
    "dataverse": "10.7910/DVN/TJCLKP",
    "hydroshare": "b8f6eae9d89241cf8b5904033460af61",
    "ckan": quote("https://demo.ckan.org/dataset/sample-dataset-1", safe=""),
    "swh": "swh:1:dir:" + "0" * 40,
    "doi": "10.5281/zenodo.3242074",
}

# BinderHub's display_config values for the providers both have.
BINDERHUB_VALIDATE_REGEX = {
    "gh": r"[^/]+/[^/]+/.+",
    "gl": r"[^/]+/.+",
    "git": r"[^/]+/.+",
}
URL_ENCODED = {"gl", "git", "ckan"}
WITH_REF = {"gh", "gl", "gist", "git"}


@pytest.fixture(scope="module")
def plain_service(module_services: Callable[..., BinderBuildService]) -> BinderBuildService:
    return module_services(
        "c.BinderBuild.allowed_internal_networks = ['127.0.0.0/8']\n"
        "c.BinderBuild.image_prefix = 'bbops-compat-local-'\n"
    )


def test_repoproviders_carry_the_fields_binderhub_front_ends_read(
    plain_service: BinderBuildService,
) -> None:
    resp = http(f"{plain_service.url}/api/repoproviders")
    assert resp.status == 200
    providers = {p["id"]: p for p in resp.json()}
    assert set(EXAMPLE_SPECS) <= set(providers)
    for pid, provider in providers.items():
        assert isinstance(provider["displayName"], str) and provider["displayName"], pid
        assert provider["repo"]["label"], pid
        assert isinstance(provider["repo"]["placeholder"], str), pid
        assert provider["repo"]["urlEncode"] is (pid in URL_ENCODED), pid
        assert provider["ref"]["enabled"] is (pid in WITH_REF), pid
        if provider["ref"]["enabled"]:
            assert provider["ref"]["default"] == "HEAD", pid
        regex = provider["spec"]["validateRegex"]
        # JavaScript's RegExp(...).test(spec): unanchored search.
        assert re.search(regex, EXAMPLE_SPECS[pid]), (pid, regex)
    for pid, regex in BINDERHUB_VALIDATE_REGEX.items():
        assert providers[pid]["spec"]["validateRegex"] == regex
    # A GitHub spec needs its ref, as BinderHub's pattern says.
    assert not re.search(providers["gh"]["spec"]["validateRegex"], "owner/repo")
    assert providers["gh"]["displayName"] == "GitHub"
    assert providers["gl"]["displayName"] == "GitLab.com"
    assert providers["git"]["displayName"] == "Git repository"
    # Optional detect.regex: BinderHub's UI runs it on what was typed and takes
    # its named group "repo" (JavaScript syntax: "(?<repo>").
    for pid, pasted, repo in [
        ("gh", "https://github.com/binder-examples/requirements/", "binder-examples/requirements"),
        ("gh", "binder-examples/requirements", "binder-examples/requirements"),
        ("gl", "https://gitlab.com/group/sub/project", "group/sub/project"),
        ("gist", "https://gist.github.com/someone/0123456789abcdef", "someone/0123456789abcdef"),
    ]:
        js = providers[pid]["detect"]["regex"]
        assert "(?<repo>" in js, js
        found = re.search(js.replace("(?<repo>", "(?P<repo>"), pasted)
        assert found and found.group("repo") == repo, (pid, js, pasted)


def test_versions_keys(plain_service: BinderBuildService) -> None:
    versions = http(f"{plain_service.url}/versions").json()
    # BinderHub's keys that describe the builder, same shapes.
    assert isinstance(versions["builder"], str) and versions["builder"]
    assert isinstance(versions["builder_info"], dict) and versions["builder_info"]
    # binderbuild names itself; it does not claim a BinderHub version
    # (docs/migrating-from-binderhub.md says why).
    assert versions["binderbuild"]
    assert "binderhub" not in versions
