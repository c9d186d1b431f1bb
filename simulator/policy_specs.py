"""The policies the simulator compares, by label, each a registered core policy with its parameters.

``PAPER`` holds the six policies of the FGD paper's evaluation as its simulator defines them (the core's
classes, with the parameters that make them weigh what the paper weighs: host CPU beside GPU units for best-fit
and dot-product, one "share" kind for GPU-clustering); ``CORE`` the extender's own definitions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from extender.core.policies import POLICIES, Policy, make_policy


@dataclass(frozen=True)
class PolicySpec:
    label: str
    policy: str
    params: dict[str, Any] = field(default_factory=dict)

    def build(self, seed: int, workload: list) -> Policy:
        return make_policy(self.policy, seed=seed, workload=workload, **self.params)

    def __call__(self, seed: int, workload: list) -> Policy:  # a PolicyFactory
        return self.build(seed, workload)


PAPER = {
    spec.label: spec for spec in (
        PolicySpec("random", "random"),
        PolicySpec("dot-product", "dot-product", {"dims": "cpu+units"}),
        PolicySpec("gpu-clustering", "gpu-clustering", {"affinity": "kind"}),
        PolicySpec("gpu-packing", "gpu-packing"),
        PolicySpec("best-fit", "best-fit", {"dims": "cpu+units"}),
        PolicySpec("fgd", "fgd"),
    )
}
# the published simulator's figures (unallocated GPUs, % at 100% arrived load, 1.3x inflation, 10 seeds)
PAPER_UNALLOCATED = {"random": 13.70, "dot-product": 9.38, "gpu-clustering": 8.35, "gpu-packing": 8.22,
                     "best-fit": 7.14, "fgd": 4.77}
CORE = {name: PolicySpec(f"core:{name}", name) for name in POLICIES}


def resolve(label: str) -> PolicySpec:
    """A label of ``PAPER``, ``core:<name>`` for the extender's definition, or ``<name>:k=v,k=v``."""
    if label in PAPER:
        return PAPER[label]
    if label in CORE:
        return CORE[label]
    name, _, rest = label.partition(":")
    if name == "core" and rest in POLICIES:
        return CORE[rest]
    params: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"policy {label!r}: parameter {item!r} is not key=value")
        params[key] = value
    spec = PolicySpec(label, name, params)
    spec.build(0, [(0, 1, 1000, None, 1.0)])  # unknown names and parameters fail here, with what exists
    return spec
