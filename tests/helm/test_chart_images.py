"""The chart's images (issue 18, finding 6): binderbuild's own images are not
published anywhere, so the chart has no default for them. It refuses to
render until the operator names the images they built and pushed
(docs/kubernetes.md, "Build and push the images"), with a message that says
so, and the images named are the ones the pods use."""

from __future__ import annotations

import subprocess

import pytest

from tests.helm.conftest import CHART, IMAGE_SETS, NAMESPACE, RELEASE, run_helm
from tests.helm.test_chart import load, write_config

SERVICE = {"repository": "reg.example.org/team/binderbuild", "tag": "2026.12.1"}
BUILDER = {"repository": "reg.example.org/team/binderbuild-builder", "tag": "2026.12.1"}
BOTH = {"image": SERVICE, "build": {"image": BUILDER}}


def template(helm, tmp_path, values):
    return run_helm(
        helm,
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        values=values,
        tmp=tmp_path,
        images=False,
    )


@pytest.mark.parametrize(
    ("values", "missing"),
    [
        ({}, "image.repository"),
        ({"image": SERVICE}, "build.image.repository"),
        ({"build": {"image": BUILDER}}, "image.repository"),
        (
            {"image": {"repository": SERVICE["repository"]}, "build": {"image": BUILDER}},
            "image.tag",
        ),
        ({"image": SERVICE, "build": {"image": {"repository": "r.example/b"}}}, "build.image.tag"),
    ],
)
def test_the_chart_refuses_to_render_without_the_operators_images(helm, tmp_path, values, missing):
    result = template(helm, tmp_path, values)
    assert result.returncode != 0
    assert f"{missing} is not set" in result.stderr, result.stderr
    # The message says why and where to read how to make the images.
    assert "not published" in result.stderr
    assert "docs/kubernetes.md" in result.stderr


def test_install_refuses_too(helm, tmp_path):
    result = run_helm(
        helm,
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--dry-run=client",
        values={},
        tmp=tmp_path,
        images=False,
    )
    assert result.returncode != 0
    assert "image.repository is not set" in result.stderr


def test_lint_without_images_fails_and_with_them_passes(helm):
    bare = subprocess.run(
        [helm, "lint", "--strict", str(CHART)], capture_output=True, text=True, check=False
    )
    assert bare.returncode != 0
    assert "image.repository is not set" in bare.stdout + bare.stderr
    good = subprocess.run(
        [helm, "lint", "--strict", str(CHART), *IMAGE_SETS],
        capture_output=True,
        text=True,
        check=False,
    )
    assert good.returncode == 0, good.stdout + good.stderr


def test_the_images_set_are_the_ones_used(render, tmp_path):
    objs = render(BOTH, images=False)
    (container,) = objs.one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "reg.example.org/team/binderbuild:2026.12.1"
    config = load(write_config(objs, tmp_path))
    assert config.KubernetesBuilder.build_image == (
        "reg.example.org/team/binderbuild-builder:2026.12.1"
    )


def test_a_digest_pins_an_image(render, tmp_path):
    digest = "sha256:" + "ab" * 32
    objs = render(
        {"image": {**SERVICE, "tag": digest}, "build": {"image": {**BUILDER, "tag": digest}}},
        images=False,
    )
    (container,) = objs.one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"reg.example.org/team/binderbuild@{digest}"
    config = load(write_config(objs, tmp_path))
    assert config.KubernetesBuilder.build_image == (
        f"reg.example.org/team/binderbuild-builder@{digest}"
    )


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        # The names the chart once defaulted to: nobody publishes them.
        ({"image": {"repository": "binderbuild/binderbuild"}}, "/image/repository"),
        ({"build": {"image": {"repository": "binderbuild/builder"}}}, "/build/image/repository"),
        ({"image": {"repository": "docker.io/binderbuild/binderbuild"}}, "/image/repository"),
        # Not image references at all.
        ({"image": {"repository": "reg.example.org/Team/x"}}, "/image/repository"),
        ({"image": {"repository": "reg.example.org/x:1.0"}}, "/image/repository"),
        ({"build": {"image": {"repository": "has space"}}}, "/build/image/repository"),
        ({"image": {"tag": "-leading-dash"}}, "/image/tag"),
        ({"build": {"image": {"tag": "sha256:short"}}}, "/build/image/tag"),
    ],
)
def test_schema_rejects_unpublished_and_malformed_images(helm, tmp_path, values, complaint):
    result = run_helm(helm, "template", RELEASE, str(CHART), values=values, tmp=tmp_path)
    assert result.returncode != 0
    assert "schema" in result.stderr and complaint in result.stderr, result.stderr


def test_the_builder_daemon_keeps_its_published_default(render):
    """docker:27-dind is published (Docker Hub): it needs no setting."""
    containers = render().one("DaemonSet")["spec"]["template"]["spec"]["containers"]
    (dind,) = [c for c in containers if c["name"] == "dockerd"]
    assert dind["image"] == "docker:27-dind"
