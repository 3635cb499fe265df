"""Check Kubernetes objects (plain dicts) against the API's own field names.

Each object is read into the kubernetes_asyncio model of its kind and
written back: a misspelt or misplaced field (``nodeSelecter``, ``readonly``,
``securityContext`` at the wrong level) does not survive the round trip, so
it shows up as a difference instead of being silently ignored by a cluster.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

from kubernetes_asyncio.client import ApiClient

MODELS = {
    ("v1", "Pod"): "V1Pod",
    ("v1", "Service"): "V1Service",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("v1", "Secret"): "V1Secret",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("apps/v1", "DaemonSet"): "V1DaemonSet",
    ("rbac.authorization.k8s.io/v1", "Role"): "V1Role",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "V1RoleBinding",
    ("networking.k8s.io/v1", "NetworkPolicy"): "V1NetworkPolicy",
    ("networking.k8s.io/v1", "Ingress"): "V1Ingress",
    ("policy/v1", "PodDisruptionBudget"): "V1PodDisruptionBudget",
}


def _diff(a: Any, b: Any, path: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in b:
                out.append(f"unknown field {path}/{key}")
            elif key not in a:
                out.append(f"added {path}/{key}")
            else:
                _diff(a[key], b[key], f"{path}/{key}", out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _diff(x, y, f"{path}[{i}]", out)
    elif a != b:
        out.append(f"changed {path}: {a!r} -> {b!r}")


def problems(obj: dict[str, Any]) -> list[str]:
    """Differences after a round trip through the object's API model."""
    model = MODELS.get((obj.get("apiVersion", ""), obj.get("kind", "")))
    if model is None:
        return [f"no model known for {obj.get('apiVersion')}/{obj.get('kind')}"]

    async def roundtrip() -> Any:
        client = ApiClient()
        try:
            typed = client.deserialize(SimpleNamespace(data=json.dumps(obj)), model)
            return client.sanitize_for_serialization(typed)
        finally:
            await client.close()

    found: list[str] = []
    _diff(obj, asyncio.run(roundtrip()), "", found)
    return found
