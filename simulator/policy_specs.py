"""The policies the simulator compares, by label, each a registered core policy with its parameters.

``PAPER`` holds the six policies of the FGD paper's evaluation as its simulator defines them (the core's
classes, with the parameters that make them weigh what the paper weighs: host CPU beside GPU units for best-fit
and dot-product, one "share" kind for GPU-clustering); ``CORE`` the extender's own definitions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
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
# The published simulator's figures per openb trace (unallocated GPUs, % at 100% arrived load, 1.3x inflation,
# mean of seeds 42-51; Weng et al., USENIX ATC '23), by the trace's file name openb_pod_list_<trace>.csv.
# gpushare20 has no published figure.
_PAPER_COLUMNS = ("random", "dot-product", "gpu-clustering", "gpu-packing", "best-fit", "fgd")
PAPER_UNALLOCATED = {trace: dict(zip(_PAPER_COLUMNS, figures)) for trace, figures in {
    "default": (13.70, 9.38, 8.35, 8.22, 7.14, 4.77),
    "gpushare40": (15.14, 10.70, 10.24, 10.23, 8.56, 6.04),
    "gpushare60": (17.19, 13.18, 13.10, 12.85, 10.94, 8.75),
    "gpushare80": (19.38, 15.86, 15.50, 15.35, 13.34, 10.92),
    "gpushare100": (21.10, 18.02, 17.78, 17.87, 15.38, 13.36),
    "multigpu20": (13.08, 8.15, 6.66, 6.50, 6.27, 4.47),
    "multigpu30": (13.37, 6.89, 5.45, 5.30, 5.43, 3.64),
    "multigpu40": (14.62, 5.96, 4.65, 4.41, 4.90, 3.09),
    "multigpu50": (18.72, 5.27, 4.31, 3.94, 4.38, 2.91),
}.items()}


def paper_figures(pods: str | None) -> dict[str, float]:
    """The published figures for a pod trace (None: the embedded default), by its file name; none for others."""
    if pods is None:
        return PAPER_UNALLOCATED["default"]
    name = Path(pods).name
    prefix, suffix = "openb_pod_list_", ".csv"
    if name.startswith(prefix) and name.endswith(suffix):
        return PAPER_UNALLOCATED.get(name[len(prefix):-len(suffix)], {})
    return {}
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
