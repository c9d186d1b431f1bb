"""The placement policies, one module each, and the one explicit registry that names them.

A policy that needs data beyond the ledger (FGD's target workload) takes it as a constructor parameter;
:func:`make_policy` passes ``params`` through and says which ones a policy does not accept.
"""

from __future__ import annotations

import inspect

from .base import MAX_SCORE, Need, Policy, Take, View
from .best_fit import BestFit
from .binpack import Binpack
from .dot_product import DotProduct
from .fgd import Fgd, RecentShapes, target_workload
from .first_fit import FirstFit
from .gpu_clustering import GpuClustering
from .gpu_packing import GpuPacking
from .random import Random
from .spread import Spread

POLICIES: dict[str, type[Policy]] = {
    policy.name: policy
    for policy in (FirstFit, BestFit, Binpack, Spread, Random, DotProduct, GpuPacking, GpuClustering)
}

DEFAULT_POLICY = "binpack"
# Policies that need a target workload to be built: the simulator passes the trace's, the extender the shapes of
# the pods it saw last (RecentShapes).
WORKLOAD_POLICIES: dict[str, type[Policy]] = {Fgd.name: Fgd}


def make_policy(name: str, **params: object) -> Policy:
    """Build a registered policy by name. Unknown names and parameters raise ``ValueError`` saying what exists."""
    cls = POLICIES.get(name) or WORKLOAD_POLICIES.get(name)
    if cls is None:
        known = ", ".join(sorted({*POLICIES, *WORKLOAD_POLICIES}))
        raise ValueError(f"unknown policy {name!r}; known policies: {known}")
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ValueError(
            f"policy {name!r} takes no parameter(s) {', '.join(unknown)}; it takes: {', '.join(sorted(accepted)) or 'none'}"
        )
    return cls(**params)


__all__ = ["MAX_SCORE", "POLICIES", "WORKLOAD_POLICIES", "DEFAULT_POLICY", "Need", "Policy", "RecentShapes", "Take", "View",
           "make_policy", "target_workload"]
