"""fracgpu's pure placement core: no Kubernetes client, no server, no I/O, no clock.

The extender and the simulator both call exactly this code (docs/design.md: "the simulator and the live
extender call the same placement code").
"""

from .assignment import Assignment, ContainerAssignment, GpuShare, from_annotation, to_annotation
from .errors import CorruptAnnotation, FracGpuError, InvalidRequest, LedgerConflict
from .inventory import GpuInfo, NodeInventory, inventory_annotation, parse_node
from .ledger import Ledger
from .evaluation import Evaluation, Placement, evaluate, place
from .reasons import Misfit, Reason
from .policies import DEFAULT_POLICY, POLICIES, Policy, make_policy
from .resources import ContainerNeed, PodRequest, parse_pod
from .settings import CoreSettings

__all__ = [
    "Assignment", "ContainerAssignment", "ContainerNeed", "CoreSettings", "CorruptAnnotation", "DEFAULT_POLICY",
    "Evaluation", "FracGpuError", "GpuInfo", "GpuShare", "InvalidRequest", "Ledger", "LedgerConflict", "Misfit",
    "NodeInventory", "POLICIES", "Placement", "PodRequest", "Policy", "Reason", "evaluate", "from_annotation",
    "inventory_annotation", "make_policy", "parse_node", "parse_pod", "place", "to_annotation",
]
