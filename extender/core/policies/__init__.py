"""The placement policies, one module each, and the one explicit registry that names them.

:func:`make_policy` builds one by name. Besides its own parameters, a policy gets what its constructor names of
what the caller knows: ``seed`` (the random policy's) and ``workload`` (FGD's target workload: the trace's in
the simulator, the pods seen last in the extender). A policy whose constructor names neither ignores both.
"""

from __future__ import annotations

import inspect

from ..workload import Workload
from .base import MAX_SCORE, GpuTake, Need, NoTake, OneGpuTake, Policy, Take, View
from .best_fit import BestFit
from .binpack import Binpack
from .dot_product import DotProduct
from .fgd import Fgd
from .fgd_lookahead import FgdLookahead
from .first_fit import FirstFit
from .gpu_clustering import GpuClustering
from .gpu_packing import GpuPacking
from .random import Random
from .spread import Spread

POLICIES: dict[str, type[Policy]] = {
    policy.name: policy
    for policy in (FirstFit, BestFit, Binpack, Spread, Random, DotProduct, GpuPacking, GpuClustering, Fgd,
                   FgdLookahead)
}
DEFAULT_POLICY = "binpack"
_CONTEXT = ("seed", "workload")  # what make_policy passes to a policy whose constructor names it


def make_policy(name: str, *, seed: int = 0, workload: Workload | list | None = None, **params: object) -> Policy:
    """Build a registered policy by name. Unknown names and parameters raise ``ValueError`` saying what exists."""
    cls = POLICIES.get(name)
    if cls is None:
        raise ValueError(f"unknown policy {name!r}; known policies: {', '.join(sorted(POLICIES))}")
    accepted = {name for name, p in inspect.signature(cls).parameters.items() if p.kind is p.KEYWORD_ONLY
                or p.kind is p.POSITIONAL_OR_KEYWORD}
    unknown = sorted(set(params) - (accepted - set(_CONTEXT)))
    if unknown:
        takes = ", ".join(sorted(accepted - set(_CONTEXT))) or "none"
        raise ValueError(f"policy {name!r} takes no parameter(s) {', '.join(unknown)}; it takes: {takes}")
    context = {"seed": seed, "workload": workload}
    return cls(**{key: context[key] for key in _CONTEXT if key in accepted}, **params)


__all__ = ["DEFAULT_POLICY", "MAX_SCORE", "POLICIES", "GpuTake", "Need", "NoTake", "OneGpuTake", "Policy",
           "Take", "View", "make_policy"]
