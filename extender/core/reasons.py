"""Why a node does not fit, for people: one message per misfit code, and every reason in detail.

The message is the same text for every node that fails the same way, because kube-scheduler counts identical
reasons in its event ("0/500 nodes are available: 480 fracgpu: insufficient GPU memory ..."). The reasons name
the node, the GPU, the resource, what was asked and what was free.
"""

from __future__ import annotations

from dataclasses import dataclass

from .checks import GpuChecks, MisfitCode, PodScope
from .inventory import NodeInventory
from .ledger import Ledger
from .resources import ContainerNeed, PodRequest


@dataclass(frozen=True, slots=True)
class Reason:
    """One reason a node or one of its GPUs cannot take the request."""

    node: str
    gpu: int | None
    resource: str
    asked: object
    free: object
    unresolvable: bool

    def __str__(self) -> str:
        where = f"node {self.node}" + (f" GPU {self.gpu}" if self.gpu is not None else "")
        return f"{where}: {self.resource}: asked {self.asked}, free {self.free}"


@dataclass(frozen=True, slots=True)
class Misfit:
    node: str
    message: str
    unresolvable: bool
    reasons: tuple[Reason, ...]

    def explain(self) -> str:
        return self.message + "".join(f"\n  - {r}" for r in self.reasons)


def misfit_message(code: int, pod: PodRequest) -> str:
    """The aggregatable text of a misfit code for this pod."""
    single = pod.single
    what = single.describe() if single else f"{len(pod.containers)} GPU containers"
    if code == MisfitCode.POOL:
        return f"fracgpu: node is not in the pod's pool ({pod.pool or 'no pool'})"
    if code == MisfitCode.MODEL:
        return f"fracgpu: no GPU of model {'|'.join(pod.models or ())}"
    if code == MisfitCode.TOO_FEW:
        count = max((c.count for c in pod.containers), default=0)
        return f"fracgpu: fewer than {count} usable GPUs (healthy, allowed model, MIG off); needs {what}"
    if code == MisfitCode.TOO_BIG:
        return f"fracgpu: GPUs too small (memory); needs {what}"
    if code == MisfitCode.CONTAINERS:
        return f"fracgpu: the pod's {what} do not fit together"
    host = {MisfitCode.HOST_CPU: "CPU", MisfitCode.HOST_MEMORY: "memory",
            MisfitCode.HOST_CPU | MisfitCode.HOST_MEMORY: "CPU and memory"}
    if code in host:
        return f"fracgpu: insufficient node {host[code]}; needs {pod.cpu_milli}m CPU and {pod.memory_mib} MiB"
    parts = [label for flag, label in ((MisfitCode.UNITS, "GPU units"), (MisfitCode.MEMORY, "GPU memory"),
                                       (MisfitCode.GPU_POOL, "GPUs free of other pools")) if code & flag]
    listed = parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"
    return f"fracgpu: insufficient {listed}; needs {what}"


def no_inventory(node: str, message: str, problem: str | None) -> Misfit:
    reason = Reason(node, None, "inventory", "a GPU inventory", problem or "none published", True)
    return Misfit(node, message, True, (reason,))


def node_reasons(ledger: Ledger, pod: PodRequest, node: str, row: int, i: int, scope: PodScope,
                 checks: list[GpuChecks]) -> list[Reason]:
    """Every reason candidate ``i`` (node ``node`` at ledger ``row``) cannot take ``pod``, from its evaluation's
    scope and checks."""
    reasons: list[Reason] = []
    inventory = ledger.inventory_at(row)
    if scope.node_pool_ok is not None and not scope.node_pool_ok[i]:
        reasons.append(Reason(node, None, "pool", pod.pool or "no pool", inventory.pool or "no pool", True))
    if pod.wants_host:
        for what, asked, total, used in (("cpu (milli)", pod.cpu_milli, ledger.cpu_total, ledger.cpu_used),
                                         ("memoryMiB (node)", pod.memory_mib, ledger.host_mem_total,
                                          ledger.host_mem_used)):
            free = int(total[row] - used[row])
            if total[row] >= 0 and asked > free:
                reasons.append(Reason(node, None, what, asked, free, False))
    for container_checks in checks:
        container = container_checks.container
        label = "" if len(checks) == 1 else f"container {container.name}: "
        reasons.extend(_gpu_reasons(ledger, pod, node, i, inventory, container_checks, label))
        usable = int(container_checks.eligible[i].sum())
        if usable < container.count:
            reasons.append(Reason(node, None, f"{label}GPUs", container.count, usable,
                                  int(container_checks.sized[i].sum()) < container.count))
    if not reasons:
        reasons.append(Reason(node, None, "GPUs", "all GPU containers together", "no combination fits", False))
    return reasons


def _gpu_reasons(ledger: Ledger, pod: PodRequest, node: str, i: int, inventory: NodeInventory, checks: GpuChecks,
                 label: str) -> list[Reason]:
    container: ContainerNeed = checks.container
    view = checks.view  # its arrays were read when the pod was evaluated
    reasons = []
    for pos, gpu in enumerate(inventory.gpus):
        def add(resource: str, asked: object, free: object, unresolvable: bool) -> None:
            reasons.append(Reason(node, gpu.index, label + resource, asked, free, unresolvable))

        if not gpu.healthy:
            add("health", "healthy", "unhealthy", True)
            continue
        if gpu.mig:
            add("mig", "MIG off", "MIG enabled", True)
            continue
        if checks.scope.model_ok is not None and not checks.scope.model_ok[i, pos]:
            add("model", "|".join(pod.models or ()), gpu.model, True)
            continue
        memory = int(checks.memory[i, pos])
        if not checks.sized[i, pos]:
            add("memoryMiB", memory, f"{int(view.mem_usable[i, pos])} usable in all", True)
            continue
        if not checks.units_ok[i, pos]:
            add("units", container.units, int(view.free_units[i, pos]), False)
        if not checks.memory_ok[i, pos]:
            add("memoryMiB", memory, int(view.free_mem[i, pos]), False)
        if not checks.pool_ok[i, pos]:
            gpu_pool = checks.scope.gpu_pool
            assert gpu_pool is not None  # pool_ok is all True without pools
            holder = ledger.pool_name(int(gpu_pool[i, pos])) if gpu_pool[i, pos] >= 0 else "mixed"
            add("gpu-pool", pod.pool or "no pool", f"held by pool {holder or 'no pool'}", False)
    return reasons
