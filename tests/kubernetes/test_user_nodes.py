"""Build pods on Zero to JupyterHub's dedicated user nodes (issue 18).

Zero to JupyterHub taints its user node pool with
``hub.jupyter.org/dedicated=user:NoSchedule`` (and, where a provider does
not accept a "/" in taint keys, ``hub.jupyter.org_dedicated``) and labels it
``hub.jupyter.org/node-purpose=user``. Builds that should run there need both
tolerations, and may prefer or require the label, like the hub's own
``scheduling.userPods.nodeAffinity.matchNodePurpose``."""

from __future__ import annotations

import copy

import pytest

from binderbuild.builders import pod_manifests as pm
from tests.kubernetes import k8s_schema
from tests.kubernetes.conftest import make_job
from tests.kubernetes.test_builder import begin, with_builder
from tests.kubernetes.test_pod_manifests import config

Z2JH_TOLERATIONS = [
    {
        "key": "hub.jupyter.org/dedicated",
        "operator": "Equal",
        "value": "user",
        "effect": "NoSchedule",
    },
    {
        "key": "hub.jupyter.org_dedicated",
        "operator": "Equal",
        "value": "user",
        "effect": "NoSchedule",
    },
]
PURPOSE = {"key": "hub.jupyter.org/node-purpose", "operator": "In", "values": ["user"]}


def spec_for(preferred_node: str | None = None, **overrides) -> dict:
    pod = pm.build_pod_manifest(make_job(), config(**overrides), preferred_node=preferred_node)
    assert k8s_schema.problems(pod) == []
    return pod["spec"]


def test_by_default_build_pods_stay_off_user_nodes():
    spec = spec_for()
    assert "tolerations" not in spec
    assert "nodeAffinity" not in spec["affinity"]


def test_tolerate_adds_both_spellings_of_the_taint_and_keeps_the_operators():
    own = {"key": "pool", "operator": "Equal", "value": "build", "effect": "NoSchedule"}
    spec = spec_for(user_nodes="tolerate", tolerations=(own,))
    assert spec["tolerations"] == [own, *Z2JH_TOLERATIONS]
    # Tolerating is not preferring: the scheduler may still use any node.
    assert "nodeAffinity" not in spec["affinity"]


def test_tolerations_the_operator_already_lists_are_not_repeated():
    spec = spec_for(user_nodes="tolerate", tolerations=(Z2JH_TOLERATIONS[0],))
    assert spec["tolerations"] == Z2JH_TOLERATIONS


def test_prefer_user_nodes_keeps_builds_spreading_out():
    spec = spec_for(user_nodes="prefer")
    assert spec["tolerations"] == Z2JH_TOLERATIONS
    node = spec["affinity"]["nodeAffinity"]
    (term,) = node["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term == {"weight": 100, "preference": {"matchExpressions": [PURPOSE]}}
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in node
    assert "podAntiAffinity" in spec["affinity"]


def test_prefer_together_with_a_sticky_node():
    spec = spec_for("node-7", user_nodes="prefer")
    terms = spec["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    expressions = [t["preference"]["matchExpressions"] for t in terms]
    assert [PURPOSE] in expressions
    assert [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-7"]}] in (
        expressions
    )


def test_require_user_nodes():
    spec = spec_for(user_nodes="require")
    assert spec["tolerations"] == Z2JH_TOLERATIONS
    required = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert required == {"nodeSelectorTerms": [{"matchExpressions": [PURPOSE]}]}


def test_require_is_added_to_every_term_of_the_operators_node_affinity():
    """nodeSelectorTerms are alternatives (OR), the expressions of one term
    all hold (AND): "user nodes" must hold whichever term matches."""
    zone_a = {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a"]}
    big = {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["big"]}
    preferred = {"weight": 5, "preference": {"matchExpressions": [big]}}
    own = {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [zone_a]}, {"matchExpressions": [big]}]
        },
        "preferredDuringSchedulingIgnoredDuringExecution": [preferred],
    }
    before = copy.deepcopy(own)
    spec = spec_for(user_nodes="require", node_affinity=own)
    node = spec["affinity"]["nodeAffinity"]
    assert node["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"] == [
        {"matchExpressions": [zone_a, PURPOSE]},
        {"matchExpressions": [big, PURPOSE]},
    ]
    assert node["preferredDuringSchedulingIgnoredDuringExecution"] == [preferred]
    assert own == before, "the configured affinity must not be changed in place"


def test_a_node_affinity_of_its_own_is_passed_through():
    own = {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["build"]}]}
            ]
        }
    }
    spec = spec_for(node_affinity=own)
    assert spec["affinity"]["nodeAffinity"] == own
    assert "tolerations" not in spec


def test_unknown_user_nodes_setting_is_refused():
    with pytest.raises(ValueError, match="user_nodes"):
        pm.build_pod_manifest(make_job(), config(user_nodes="sometimes"))


def test_builder_traits_reach_the_pods(api):
    own = {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {
                "weight": 10,
                "preference": {
                    "matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]
                },
            }
        ]
    }

    async def body(builder):
        b = await begin(api, builder, start=False)
        spec = api.pod(b.name)["spec"]
        assert spec["tolerations"] == Z2JH_TOLERATIONS
        node = spec["affinity"]["nodeAffinity"]
        assert node["requiredDuringSchedulingIgnoredDuringExecution"] == {
            "nodeSelectorTerms": [{"matchExpressions": [PURPOSE]}]
        }
        assert (
            node["preferredDuringSchedulingIgnoredDuringExecution"]
            == (own["preferredDuringSchedulingIgnoredDuringExecution"])
        )
        api.start(b.name)
        await b.succeeded()

    with_builder(api, body, build_user_nodes="require", build_node_affinity=own)


def test_builder_refuses_an_unknown_user_nodes_value(api):
    from traitlets import TraitError

    from tests.kubernetes.conftest import make_builder

    with pytest.raises(TraitError):
        make_builder(api, build_user_nodes="always")
