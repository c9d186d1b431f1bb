"""The ledger: what every GPU offers, what is charged to it, and which pod holds what.

State is kept as numpy arrays with one row per node and one column per GPU position (GPUs sorted by index,
:mod:`extender.core.rows`), so that filtering hundreds of nodes is a handful of vector operations; the nodes'
side (inventories, capacity) is :class:`~extender.core.nodes.NodeTable`. Pods are kept by UID with a reverse
index per node, so a release touches one row.

Free capacity of a GPU (docs/design.md, "Headroom"):

    free units  = unitsPerGpu - Σ units charged                         (0 offered if unhealthy or MIG)
    free memory = (memoryMiB - reserve) - max(Σ MiB charged, MiB observed in use by the agent)

Two ways in: :meth:`Ledger.reserve` checks that the pod fits (invariant 1 can never be broken through it);
:meth:`Ledger.adopt` records what already runs in the cluster, as the pods' annotations say, even when that is
over-committed (the truth is not dropped), and returns a warning that says so.
"""

from __future__ import annotations

from contextlib import contextmanager
from operator import attrgetter
from typing import Iterable, Iterator

from .assignment import Assignment, GpuShare, phase_charges
from .errors import LedgerConflict
from .nodes import NO_POOL, UNKNOWN_POOL, Candidates, NodeTable
from .rows import EMPTY_POOL, UNACCOUNTED, UNLIMITED
from .settings import CoreSettings

MIXED_POOL = -2  # gpu_pool: pods of two pools on one GPU (only through adopt); no pool may add to it

__all__ = ["EMPTY_POOL", "MIXED_POOL", "NO_POOL", "UNACCOUNTED", "UNKNOWN_POOL", "UNLIMITED", "Candidates", "Ledger"]


class Ledger(NodeTable):
    """Per-GPU capacity and charges for every node, and every pod's assignment."""

    def __init__(self, settings: CoreSettings, *, rows: int = 64, width: int = 8) -> None:
        self._assignments: dict[str, Assignment] = {}
        self._charges: dict[str, tuple[GpuShare, ...]] = {}  # per GPU: what is charged
        self._reserved: set[str] = set()
        self._by_node: dict[str, set[str]] = {}
        self._orphans: dict[str, str] = {}
        super().__init__(settings, rows=rows, width=width)

    # ---------------------------------------------------------------- pods
    def reserve(self, assignment: Assignment) -> None:
        """Hold the assignment's GPUs for a pod that is being bound. Raises :class:`LedgerConflict` (and
        changes nothing) when the pod already holds GPUs or the assignment does not fit right now."""
        uid = assignment.pod_uid
        if not uid:
            raise LedgerConflict(f"pod {assignment.key}: cannot reserve GPUs without a pod UID")
        if uid in self._assignments:
            held = self._assignments[uid]
            raise LedgerConflict(f"pod {assignment.key} ({uid}) already holds GPUs on node {held.node}")
        row = self._rows.get(assignment.node)
        if row is None:
            why = self._problems.get(assignment.node, "no GPU inventory is known for it")
            raise LedgerConflict(f"pod {assignment.key}: node {assignment.node} cannot take pods: {why}")
        pool = self.pool_id(assignment.pool)
        problem = self._host_problem(row, assignment)
        charges = _charges_of(assignment)
        for charge in charges:
            if problem is not None:
                break
            problem = self._gpu_problem(row, pool, charge)
        if problem is not None:
            raise LedgerConflict(f"pod {assignment.key}: node {assignment.node}{problem}")
        self._record(assignment, charges)
        self._reserved.add(uid)
        self._apply(row, assignment.node, uid)

    def _host_problem(self, row: int, assignment: Assignment) -> str | None:
        node_pool = self.node_pool.item(row)
        if node_pool != self.find_pool_id(assignment.pool):
            return f" is in pool {self.pool_name(node_pool)!r}, the pod in pool {assignment.pool!r}"
        # the rooms are unlimited where the node does not account host resources
        for what, asked, room in (("CPU (milli)", assignment.cpu_milli, self.cpu_room),
                                  ("memory MiB", assignment.memory_mib, self.host_mem_room)):
            if asked and asked > room.item(row):
                return f": asks {asked} {what}, {room.item(row)} free"
        return None

    def _gpu_problem(self, row: int, pool: int, charge: GpuShare) -> str | None:
        pos = self._position(row, charge)
        if pos is None:
            return f" GPU {charge.index}: no such GPU (uuid {charge.uuid})"
        if charge.units > self.free_units.item(row, pos):
            return f" GPU {charge.index}: asks {charge.units} units, {self.free_units.item(row, pos)} free"
        if charge.memory_mib > self.free_mem.item(row, pos):
            return f" GPU {charge.index}: asks {charge.memory_mib} MiB, {self.free_mem.item(row, pos)} MiB free"
        if self.gpu_pool.item(row, pos) not in (EMPTY_POOL, pool):
            return f" GPU {charge.index}: held by pods of another pool"
        return None

    def commit(self, uid: str) -> None:
        """The reservation became a binding: the pod keeps its GPUs until released."""
        if uid not in self._reserved:
            raise LedgerConflict(f"pod UID {uid} has no reservation to commit")
        self._reserved.discard(uid)
        self.generation += 1

    def adopt(self, assignment: Assignment) -> str | None:
        """Record an assignment that already exists in the cluster (a bound pod's annotation).

        Adopting the same assignment again is a no-op; a different one for the same UID replaces it. Returns a
        warning when the node is unknown, a GPU is missing or the GPU is over-committed, else ``None``.
        """
        uid = assignment.pod_uid
        current = self._assignments.get(uid)
        if current == assignment:
            # Seeing our own binding (the watch can report it before the bind call returns): it is bound now.
            self._reserved.discard(uid)
            return self._orphans.get(uid)
        if current is not None:
            self.release(uid)
        self._record(assignment, _charges_of(assignment))
        row = self._rows.get(assignment.node)
        if row is None:
            self._orphans[uid] = f"pod {assignment.key}: node {assignment.node} is not known (yet)"
            self.generation += 1
            return self._orphans[uid]
        self._apply(row, assignment.node, uid)
        return self._orphans.get(uid) or self._overcommit(row, assignment)

    def release(self, uid: str) -> Assignment | None:
        """Return every unit and MiB the pod held (invariant 5). Unknown UIDs are a no-op returning None."""
        assignment = self._assignments.pop(uid, None)
        if assignment is None:
            return None
        self._charges.pop(uid, None)
        self._reserved.discard(uid)
        self._orphans.pop(uid, None)
        holders = self._by_node.get(assignment.node)
        if holders is not None:
            holders.discard(uid)
            if not holders:
                del self._by_node[assignment.node]
        row = self._rows.get(assignment.node)
        if row is not None:
            self._recompute_row(assignment.node, row)
        else:
            self.generation += 1
        return assignment

    @contextmanager
    def without(self, uids: Iterable[str]) -> Iterator[None]:
        """Evaluate as if these pods held nothing, then put back exactly what they held (for preemption)."""
        held = [(uid, self._assignments[uid], uid in self._reserved) for uid in sorted(set(uids))
                if uid in self._assignments]
        for uid, _, _ in held:
            self.release(uid)
        try:
            yield
        finally:
            for uid, assignment, reserved in held:
                self._record(assignment, _charges_of(assignment))
                if reserved:
                    self._reserved.add(uid)
                row = self._rows.get(assignment.node)
                if row is None:
                    self._orphans[uid] = f"pod {assignment.key}: node {assignment.node} is not known (yet)"
                else:
                    self._apply(row, assignment.node, uid)

    def assignment(self, uid: str) -> Assignment | None:
        return self._assignments.get(uid)

    def is_reserved(self, uid: str) -> bool:
        return uid in self._reserved

    def assignments(self) -> Iterator[Assignment]:
        return iter(self._assignments.values())

    def pods_on(self, node: str) -> list[Assignment]:
        return [self._assignments[uid] for uid in sorted(self._by_node.get(node, ()))]

    def charges_at(self, row: int) -> list[list[tuple[int, GpuShare]]]:
        """Per pod on the node at ``row`` (by UID), its charged shares with their GPU positions (those the node
        has): what a policy's :class:`~extender.core.rows.RowMemo` counts."""
        pods = []
        for uid in sorted(self._by_node.get(self.inventory_at(row).name, ())):
            placed = [(self._position(row, share), share) for share in self._charges[uid]]
            pods.append([(pos, share) for pos, share in placed if pos is not None])
        return pods

    def orphans(self) -> dict[str, str]:
        return dict(self._orphans)

    # ---------------------------------------------------------------- reading
    def gpu_table(self, name: str) -> list[dict]:
        """One dict per GPU of a node: capacity, charged, free and holders (for people and /inspect)."""
        row = self._rows.get(name)
        if row is None:
            return []
        holders: dict[int, list[str]] = {}
        for assignment in self.pods_on(name):
            for charge in self._charges[assignment.pod_uid]:
                holders.setdefault(charge.index, []).append(assignment.key)
        table = []
        for pos, gpu in enumerate(self.inventory_at(row).gpus):
            pool = int(self.gpu_pool[row, pos])
            table.append({
                "index": gpu.index, "uuid": gpu.uuid, "model": gpu.model, "healthy": gpu.healthy, "mig": gpu.mig,
                "unitsOffered": int(self.offered_units[row, pos]), "unitsUsed": int(self.used_units[row, pos]),
                "unitsFree": int(self.free_units[row, pos]), "memoryMiB": gpu.memory_mib,
                "memoryUsableMiB": int(self.mem_usable[row, pos]), "memoryChargedMiB": int(self.used_mem[row, pos]),
                "memoryObservedMiB": int(self.observed[row, pos]), "memoryFreeMiB": int(self.free_mem[row, pos]),
                "pool": None if pool == EMPTY_POOL else ("<mixed>" if pool == MIXED_POOL else self.pool_name(pool)),
                "pods": sorted(holders.get(gpu.index, [])),
            })
        return table

    def snapshot(self, *, include_reserved: bool = True) -> dict:
        """A canonical, comparable picture of the ledger (invariant 4 compares two of these)."""
        uids = sorted(u for u in self._assignments if include_reserved or u not in self._reserved)
        nodes = {}
        for name in sorted(self._rows):
            row = self._rows[name]
            count = int(self.gpu_count[row])
            nodes[name] = [
                (int(self.used_units[row, p]), int(self.used_mem[row, p]), int(self.pods[row, p]),
                 int(self.gpu_pool[row, p]), int(self.free_units[row, p]), int(self.free_mem[row, p]))
                for p in range(count)
            ] + [(int(self.cpu_room[row]), int(self.host_mem_room[row]), int(self.free_units_sum[row]))]
        return {"nodes": nodes, "assignments": {u: self._assignments[u] for u in uids}}

    # ---------------------------------------------------------------- internals
    def _record(self, assignment: Assignment, charges: tuple[GpuShare, ...]) -> None:
        uid = assignment.pod_uid
        self._assignments[uid] = assignment
        self._charges[uid] = charges
        self._by_node.setdefault(assignment.node, set()).add(uid)

    def _apply(self, row: int, node: str, uid: str) -> None:
        """Charge pod ``uid``'s shares to ``row``, updating each GPU's free capacity as :meth:`_refresh_free`
        works it out for the whole row (one GPU at a time: a placement touches one or a few)."""
        assignment = self._assignments[uid]
        pool = self.pool_id(assignment.pool)
        self._apply_host(row, assignment.cpu_milli, assignment.memory_mib)
        for charge in self._charges[uid]:
            pos = self._position(row, charge)
            if pos is None:
                self._orphans[uid] = f"pod {assignment.key}: node {node} has no GPU {charge.index} (uuid {charge.uuid})"
                continue
            # .item() reads a Python int: Bind and the simulator run this for every pod
            used_units = self.used_units.item(row, pos) + charge.units
            used_mem = self.used_mem.item(row, pos) + charge.memory_mib
            self.used_units[row, pos] = used_units
            self.used_mem[row, pos] = used_mem
            pods = self.pods.item(row, pos)
            if pods == 0:
                self.gpu_pool[row, pos] = pool
            elif self.gpu_pool.item(row, pos) != pool:
                self.gpu_pool[row, pos] = MIXED_POOL
            self.pods[row, pos] = pods + 1
            free_units = self.offered_units.item(row, pos) - used_units
            self.free_units_sum[row] += max(free_units, 0) - max(self.free_units.item(row, pos), 0)
            self.free_units[row, pos] = free_units
            self.free_mem[row, pos] = self.mem_usable.item(row, pos) - max(used_mem, self.observed.item(row, pos))
        self._changed(row)

    def _apply_host(self, row: int, cpu: int, memory: int) -> None:
        if cpu:
            self.cpu_used[row] += cpu
            if self.cpu_total.item(row) != UNACCOUNTED:
                self.cpu_room[row] -= cpu
        if memory:
            self.host_mem_used[row] += memory
            if self.host_mem_total.item(row) != UNACCOUNTED:
                self.host_mem_room[row] -= memory

    def _recompute_row(self, name: str, row: int) -> None:
        """Charge the row's pods again, from nothing, then work its free capacity out."""
        for array in (self.used_units, self.used_mem, self.pods):
            array[row] = 0
        self.gpu_pool[row] = EMPTY_POOL
        self.cpu_used[row] = 0
        self.host_mem_used[row] = 0
        for uid in sorted(self._by_node.get(name, ())):
            self._orphans.pop(uid, None)
            self._apply(row, name, uid)
        self._refresh_free(row)

    def _overcommit(self, row: int, assignment: Assignment) -> str | None:
        bad = [
            f"GPU {self.inventory_at(row).gpus[p].index}"
            for p in range(int(self.gpu_count[row]))
            if self.used_units[row, p] > self.offered_units[row, p] or self.used_mem[row, p] > self.mem_usable[row, p]
            or self.gpu_pool[row, p] == MIXED_POOL
        ]
        if not bad:
            return None
        return f"pod {assignment.key}: node {assignment.node} is over-committed on {', '.join(bad)} (adopted as found)"

def _charges_of(assignment: Assignment) -> tuple[GpuShare, ...]:
    """What the pod is charged per GPU (a share each, by index): :func:`phase_charges`."""
    if len(assignment.containers) == 1:
        # one container is one phase: phase_charges() gives its shares as they are, by index, without the search
        # for the largest phase (cheaper; Bind and the simulator run this for every pod)
        shares = assignment.containers[0].gpus
        return shares if len(shares) == 1 else tuple(sorted(shares, key=attrgetter("index")))
    uuids = {s.index: s.uuid for c in assignment.containers for s in c.gpus}
    return tuple(GpuShare(index=index, uuid=uuids[index], units=units, memory_mib=memory)
                 for index, (units, memory) in phase_charges(assignment.containers).items())
