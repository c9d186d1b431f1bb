"""A trivially correct model of fractional GPU placement, for property tests to compare the core against.

Plain dicts and loops, no numpy and no code shared with the ledger's arithmetic: a GPU's free capacity is
recomputed from the list of what each pod holds, and "does the pod fit on this node" is decided by trying
every combination of GPUs. Only for small clusters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations, product

from ..core.assignment import Assignment
from ..core.inventory import NodeInventory
from ..core.resources import ContainerNeed, PodRequest
from ..core.settings import CoreSettings


@dataclass
class RefGpu:
    index: int
    model: str
    memory_mib: int
    observed_mib: int
    offered: bool


@dataclass
class RefNode:
    name: str
    pool: str | None
    gpus: list[RefGpu]


@dataclass
class ReferenceCluster:
    settings: CoreSettings
    nodes: dict[str, RefNode] = field(default_factory=dict)
    held: dict[str, Assignment] = field(default_factory=dict)

    def set_node(self, inventory: NodeInventory) -> None:
        self.nodes[inventory.name] = RefNode(
            inventory.name, inventory.pool,
            [RefGpu(g.index, g.model, g.memory_mib, g.used_memory_mib, g.healthy and not g.mig) for g in inventory.gpus],
        )

    def usable(self, gpu: RefGpu) -> int:
        return gpu.memory_mib - self.settings.reserve_for(gpu.memory_mib) if gpu.offered else 0

    def charged(self, node: str, index: int) -> tuple[int, int, set]:
        """(units, MiB, pools) charged to one GPU: the max over each pod's phases, summed over pods."""
        units = memory = 0
        pools = set()
        for a in self.held.values():
            if a.node != node:
                continue
            per_phase = []
            kinds = [c.kind for c in a.containers]
            phases = _phases(kinds)
            for phase in phases:
                u = sum(s.units for p in phase for s in a.containers[p].gpus if s.index == index)
                m = sum(s.memory_mib for p in phase for s in a.containers[p].gpus if s.index == index)
                per_phase.append((u, m))
            pu = max((u for u, _ in per_phase), default=0)
            pm = max((m for _, m in per_phase), default=0)
            if pu or pm or any(s.index == index for c in a.containers for s in c.gpus):
                pools.add(a.pool)
            units += pu
            memory += pm
        return units, memory, pools

    def free(self, node: str, gpu: RefGpu) -> tuple[int, int, set]:
        units, memory, pools = self.charged(node, gpu.index)
        offered_units = self.settings.units_per_gpu if gpu.offered else 0
        return offered_units - units, self.usable(gpu) - max(memory, gpu.observed_mib), pools

    def need_memory(self, container: ContainerNeed, gpu: RefGpu) -> int:
        if container.memory_mib is not None:
            return container.memory_mib
        return container.units * self.usable(gpu) // self.settings.units_per_gpu

    def fits(self, pod: PodRequest, node_name: str) -> bool:
        """Brute force over every GPU combination of every container, phase by phase.

        Exact for pods whose phases share no container (no sidecars): phases never overlap in time.
        """
        node = self.nodes.get(node_name)
        if node is None or node.pool != pod.pool:
            return False
        free = {g.index: self.free(node_name, g) for g in node.gpus}
        gpus = {g.index: g for g in node.gpus}

        def allowed(container: ContainerNeed, g: RefGpu) -> bool:
            pools = free[g.index][2]
            return (g.offered and (pod.models is None or g.model in pod.models)
                    and self.need_memory(container, g) <= self.usable(g)
                    and (not pools or pools == {pod.pool}))

        for phase in pod.phases:
            members = [pod.containers[p] for p in phase]
            options = [
                list(combinations([i for i, g in gpus.items() if allowed(c, g)], c.count)) for c in members
            ]
            if not any(self._fits_together(members, choice, free, gpus) for choice in product(*options)):
                return False
        return True

    def _fits_together(self, members, choice, free, gpus) -> bool:
        units: dict[int, int] = {}
        memory: dict[int, int] = {}
        for container, subset in zip(members, choice):
            for index in subset:
                units[index] = units.get(index, 0) + container.units
                memory[index] = memory.get(index, 0) + self.need_memory(container, gpus[index])
        return all(units[i] <= free[i][0] and memory[i] <= free[i][1] for i in units)


def _phases(kinds: list[str]) -> list[list[int]]:
    phases, sidecars, apps = [], [], []
    for i, kind in enumerate(kinds):
        if kind == "init":
            phases.append([*sidecars, i])
        elif kind == "sidecar":
            sidecars.append(i)
        else:
            apps.append(i)
    if sidecars or apps:
        phases.append([*sidecars, *apps])
    return phases
