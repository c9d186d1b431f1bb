"""The ledger: what every GPU offers, what is charged to it, and which pod holds what.

State is kept as numpy arrays with one row per node and one column per GPU position (GPUs sorted by index),
so that filtering hundreds of nodes is a handful of vector operations. Pods are kept by UID with a reverse
index per node, so a release touches one row.

Free capacity of a GPU (DESIGN.md, "Headroom"):

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

import numpy as np

from .assignment import Assignment, GpuShare
from .errors import LedgerConflict
from .hashing import stable_hash
from .inventory import NodeInventory
from .settings import CoreSettings

EMPTY_POOL = -1  # gpu_pool: no pod on the GPU
MIXED_POOL = -2  # gpu_pool: pods of two pools on one GPU (only through adopt); no pool may add to it
NO_POOL = 0  # pool id of "no pool"
UNKNOWN_POOL = -3  # a pod's pool that no node or pod has: it fits nowhere
UNACCOUNTED = -1  # cpu_total / host_mem_total of a node whose host resources the core does not check
UNLIMITED = np.iinfo(np.int64).max // 4  # cpu_room / host_mem_room of such a node: any request fits
KIND_SLOTS = 17  # kind_count columns: 0 = pods sharing a GPU, n = pods of n whole GPUs (16: 16 or more)


class Ledger:
    """Per-GPU capacity and charges for every node, and every pod's assignment."""

    _GPU_ARRAYS = (
        ("present", np.bool_), ("healthy", np.bool_), ("mig", np.bool_), ("model", np.int32),
        ("offered_units", np.int64), ("mem_total", np.int64), ("mem_usable", np.int64), ("observed", np.int64),
        ("used_units", np.int64), ("used_mem", np.int64), ("pods", np.int32), ("gpu_pool", np.int32),
        ("gpu_shape", np.int64), ("free_units", np.int64), ("free_mem", np.int64),
    )
    _ROW_ARRAYS = (("live", np.bool_), ("node_pool", np.int32), ("node_hash", np.uint64), ("gpu_count", np.int32),
                   ("shape_kinds", np.int32), ("cpu_total", np.int64), ("cpu_used", np.int64),
                   ("host_mem_total", np.int64), ("host_mem_used", np.int64), ("cpu_room", np.int64),
                   ("host_mem_room", np.int64), ("free_units_sum", np.int64), ("row_version", np.int64))
    # cpu_total / host_mem_total = UNACCOUNTED where the inventory does not say (the extender's nodes); there,
    # cpu_room / host_mem_room (what is free, kept with every change: one comparison filters) are UNLIMITED;
    # free_units_sum is the node's free units, a GPU's negative free (over-committed, adopted) counted as 0

    def __init__(self, settings: CoreSettings, *, rows: int = 64, width: int = 8) -> None:
        self.settings = settings
        self.units_per_gpu = settings.units_per_gpu
        self._width = width
        self._capacity = 0
        self._rows: dict[str, int] = {}
        self._free_rows: list[int] = []
        self._inventory: list[NodeInventory | None] = []
        self._by_index: list[dict[int, int]] = []
        self._by_uuid: list[dict[str, int]] = []
        self._pool_ids: dict[str | None, int] = {None: NO_POOL}
        self._pool_names: list[str | None] = [None]
        self._model_ids: dict[str, int] = {}
        self._model_names: list[str] = []
        self._assignments: dict[str, Assignment] = {}
        self._charges: dict[str, tuple[GpuShare, ...]] = {}  # per GPU: what is charged
        self._reserved: set[str] = set()
        self._by_node: dict[str, set[str]] = {}
        self._problems: dict[str, str] = {}
        self._orphans: dict[str, str] = {}
        self._max_node: tuple[int, int, int] | None = None
        self._cpu_unaccounted: set[int] = set()  # rows of live nodes whose inventory does not carry host CPU
        self._share_memory: dict[int, np.ndarray] = {}  # units -> MiB of that share on every GPU (see share_memory)
        self.generation = 0
        self.nodes_version = 0  # bumped when a node is added or removed: rows looked up before may be stale
        self._grow(rows)

    # ---------------------------------------------------------------- nodes
    def upsert_node(self, inventory: NodeInventory) -> None:
        """Add or replace a node's GPUs; the pods already charged to it are charged again on the new GPUs."""
        name = inventory.name
        self._problems.pop(name, None)
        if len(inventory.gpus) > self._width:
            self._widen(len(inventory.gpus))
        row = self._rows.get(name)
        if row is None:
            if not self._free_rows:
                self._grow(self._capacity * 2)
            row = self._free_rows.pop()  # free rows are kept cleared
            self._rows[name] = row
            self.nodes_version += 1
        else:
            self._clear_row(row)
        self._inventory[row] = inventory
        self.live[row] = True
        self.node_pool[row] = self.pool_id(inventory.pool)
        self.node_hash[row] = np.uint64(stable_hash(name))
        self.gpu_count[row] = len(inventory.gpus)
        self.cpu_total[row] = UNACCOUNTED if inventory.cpu_milli is None else inventory.cpu_milli
        if inventory.cpu_milli is None:
            self._cpu_unaccounted.add(row)
        else:
            self._cpu_unaccounted.discard(row)
        self.host_mem_total[row] = UNACCOUNTED if inventory.memory_mib is None else inventory.memory_mib
        gpus = inventory.gpus
        n = len(gpus)
        self.present[row, :n] = True
        self.healthy[row, :n] = [gpu.healthy for gpu in gpus]
        self.mig[row, :n] = [gpu.mig for gpu in gpus]
        self.model[row, :n] = [self.model_id(gpu.model) for gpu in gpus]
        self.mem_total[row, :n] = [gpu.memory_mib for gpu in gpus]
        self.observed[row, :n] = [gpu.used_memory_mib for gpu in gpus]
        self.offered_units[row, :n] = [self.units_per_gpu if gpu.offered else 0 for gpu in gpus]
        self.mem_usable[row, :n] = [gpu.memory_mib - self.settings.reserve_for(gpu.memory_mib) if gpu.offered else 0
                                    for gpu in gpus]
        self._share_memory.clear()  # the usable memory changed
        self._by_index[row] = {gpu.index: pos for pos, gpu in enumerate(inventory.gpus)}
        self._by_uuid[row] = {gpu.uuid: pos for pos, gpu in enumerate(inventory.gpus) if gpu.uuid}
        self._max_node = None
        self._recompute_row(name, row)

    def remove_node(self, name: str) -> None:
        """Forget a node's GPUs. Its pods keep their assignments (they still exist) until they are released."""
        row = self._rows.pop(name, None)
        if row is None:
            return
        self.nodes_version += 1
        self._clear_row(row)
        self._cpu_unaccounted.discard(row)
        self._inventory[row] = None
        self._free_rows.append(row)
        self._max_node = None
        self.generation += 1

    def exclude_node(self, name: str, reason: str) -> None:
        """Take a node out of placement with a reason (a corrupt inventory), without losing its pods."""
        self.remove_node(name)
        self._problems[name] = reason
        self.generation += 1

    def problem(self, name: str) -> str | None:
        return self._problems.get(name)

    def problems(self) -> dict[str, str]:
        return dict(self._problems)

    def row_of(self, name: str) -> int | None:
        return self._rows.get(name)

    def candidates(self, names: list[str]) -> "Candidates":
        """``names`` with their rows, looked up once (see :class:`Candidates`); KeyError names a node without an
        inventory."""
        rows = np.empty(len(names), dtype=np.int64)
        for i, name in enumerate(names):
            row = self._rows.get(name)
            if row is None:
                raise KeyError(f"node {name} has no GPU inventory")
            rows[i] = row
        return Candidates(self, list(names), rows, self.nodes_version)

    def inventory_at(self, row: int) -> NodeInventory:
        inventory = self._inventory[row]
        assert inventory is not None, f"row {row} holds no node"
        return inventory

    def node_names(self) -> list[str]:
        return sorted(self._rows)

    def max_node_capacity(self) -> tuple[int, int]:
        """(units, usable MiB) of the largest node: the fixed scale of best-fit and GPU-clustering scores."""
        return self._max_sizes()[:2]

    def max_node_cpu(self) -> int:
        """Host CPU (milli-cores) of the largest node that accounts it; 0 where none does."""
        return self._max_sizes()[2]

    def _max_sizes(self) -> tuple[int, int, int]:
        if self._max_node is None:
            live = self.live[: self._capacity]
            units = self.offered_units[: self._capacity].sum(axis=1)[live]
            memory = self.mem_usable[: self._capacity].sum(axis=1)[live]
            cpu = self.cpu_total[: self._capacity][live]
            self._max_node = (int(units.max(initial=0)), int(memory.max(initial=0)), int(cpu.max(initial=0)))
        return self._max_node

    def share_memory(self, units: int) -> np.ndarray:
        """(rows, GPUs): the MiB a share of ``units`` takes on each GPU when the pod states no memory,
        floor(units * usable / unitsPerGpu). Worked out once per share while no node is added, replaced or
        removed (the usable memory changes only then)."""
        memory = self._share_memory.get(units)
        if memory is None:
            memory = self._share_memory[units] = (units * self.mem_usable) // self.units_per_gpu
        return memory

    def accounts_cpu(self) -> bool:
        """Whether every node's inventory carries its host CPU (the simulator's do; the extender's do not)."""
        return not self._cpu_unaccounted

    def pool_id(self, pool: str | None) -> int:
        if pool not in self._pool_ids:
            self._pool_ids[pool] = len(self._pool_names)
            self._pool_names.append(pool)
        return self._pool_ids[pool]

    def pools_named(self) -> bool:
        """Whether any node or pod has ever named a pool (ids are never dropped): if not, every node and GPU is
        in "no pool"."""
        return len(self._pool_names) > 1

    def find_pool_id(self, pool: str | None) -> int:
        """The pool's id, or UNKNOWN_POOL (held by no node and no GPU) for a pool the ledger has never seen."""
        return self._pool_ids.get(pool, UNKNOWN_POOL)

    def pool_name(self, pool_id: int) -> str | None:
        return self._pool_names[pool_id]

    def model_id(self, model: str) -> int:
        if model not in self._model_ids:
            self._model_ids[model] = len(self._model_names)
            self._model_names.append(model)
        return self._model_ids[model]

    def model_names(self) -> list[str]:
        return list(self._model_names)

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
        # .item() reads a Python int: cheaper than a numpy scalar here, and Bind runs this for every pod
        if self.node_pool.item(row) != pool:
            raise LedgerConflict(
                f"pod {assignment.key}: node {assignment.node} is in pool {self.pool_name(self.node_pool.item(row))!r}, "
                f"the pod in pool {assignment.pool!r}"
            )
        # the rooms are unlimited where the node does not account host resources
        cpu, memory = assignment.cpu_milli, assignment.memory_mib
        if (cpu and cpu > self.cpu_room.item(row)) or (memory and memory > self.host_mem_room.item(row)):
            for what, asked, room in (("CPU (milli)", cpu, self.cpu_room), ("memory MiB", memory, self.host_mem_room)):
                if asked and asked > room.item(row):
                    raise LedgerConflict(f"pod {assignment.key}: node {assignment.node}: asks {asked} {what}, "
                                         f"{room.item(row)} free")
        charges = _charges_of(assignment)
        for charge in charges:
            pos = self._position(row, charge)
            problem = None
            if pos is None:
                problem = f"no such GPU (uuid {charge.uuid})"
            elif charge.units > self.free_units.item(row, pos):
                problem = f"asks {charge.units} units, {self.free_units.item(row, pos)} free"
            elif charge.memory_mib > self.free_mem.item(row, pos):
                problem = f"asks {charge.memory_mib} MiB, {self.free_mem.item(row, pos)} MiB free"
            elif self.gpu_pool.item(row, pos) not in (EMPTY_POOL, pool):
                problem = "held by pods of another pool"
            if problem:
                raise LedgerConflict(f"pod {assignment.key}: node {assignment.node} GPU {charge.index}: {problem}")
        self._record(assignment, charges)
        self._reserved.add(uid)
        self._apply(row, assignment.node, uid)

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

    def _position(self, row: int, charge: GpuShare) -> int | None:
        if charge.uuid:
            return self._by_uuid[row].get(charge.uuid)
        return self._by_index[row].get(charge.index)

    def _apply(self, row: int, node: str, uid: str) -> None:
        assignment = self._assignments[uid]
        pool = self.pool_id(assignment.pool)
        cpu, memory = assignment.cpu_milli, assignment.memory_mib
        if cpu:
            self.cpu_used[row] += cpu
            if self.cpu_total.item(row) != UNACCOUNTED:
                self.cpu_room[row] -= cpu
        if memory:
            self.host_mem_used[row] += memory
            if self.host_mem_total.item(row) != UNACCOUNTED:
                self.host_mem_room[row] -= memory
        shapes = self.shape_count[row]
        charges = self._charges[uid]
        for charge in charges:
            pos = self._position(row, charge)
            if pos is None:
                self._orphans[uid] = (
                    f"pod {self._assignments[uid].key}: node {node} has no GPU {charge.index} (uuid {charge.uuid})"
                )
                continue
            units = charge.units
            used_units = self.used_units.item(row, pos) + units
            used_mem = self.used_mem.item(row, pos) + charge.memory_mib
            self.used_units[row, pos] = used_units
            self.used_mem[row, pos] = used_mem
            pods = self.pods.item(row, pos)
            if pods == 0:
                self.gpu_pool[row, pos] = pool
                self.gpu_shape[row, pos] = units
            else:
                if self.gpu_pool.item(row, pos) != pool:
                    self.gpu_pool[row, pos] = MIXED_POOL
                if self.gpu_shape.item(row, pos) != units:
                    self.gpu_shape[row, pos] = -1
            self.pods[row, pos] = pods + 1
            # free capacity of this GPU, as _refresh_free works it out for the whole row
            free_units = self.offered_units.item(row, pos) - used_units
            self.free_units_sum[row] += max(free_units, 0) - max(self.free_units.item(row, pos), 0)
            self.free_units[row, pos] = free_units
            self.free_mem[row, pos] = self.mem_usable.item(row, pos) - max(used_mem, self.observed.item(row, pos))
            shape = units if units < self.units_per_gpu else self.units_per_gpu
            same = shapes.item(shape)
            if same == 0:
                self.shape_kinds[row] += 1  # distinct shares on the node (shape_count is cleared with it)
            shapes[shape] = same + 1
        kind = pod_kind(charges, self.units_per_gpu)
        if kind is not None:
            self.kind_count[row, kind] += 1
        self._changed(row)

    def _recompute_row(self, name: str, row: int) -> None:
        for array in (self.used_units, self.used_mem, self.pods, self.gpu_shape):
            array[row] = 0
        self.gpu_pool[row] = EMPTY_POOL
        self.shape_count[row] = 0
        self.kind_count[row] = 0
        self.shape_kinds[row] = 0
        self.cpu_used[row] = 0
        self.host_mem_used[row] = 0
        for uid in sorted(self._by_node.get(name, ())):
            self._orphans.pop(uid, None)
            self._apply(row, name, uid)
        self._refresh_free(row)

    def _refresh_free(self, row: int) -> None:
        self.free_units[row] = self.offered_units[row] - self.used_units[row]
        self.free_mem[row] = self.mem_usable[row] - np.maximum(self.used_mem[row], self.observed[row])
        self.free_units_sum[row] = np.add.reduce(np.maximum(self.free_units[row], 0))
        cpu, memory = int(self.cpu_total[row]), int(self.host_mem_total[row])
        self.cpu_room[row] = UNLIMITED if cpu == UNACCOUNTED else cpu - int(self.cpu_used[row])
        self.host_mem_room[row] = UNLIMITED if memory == UNACCOUNTED else memory - int(self.host_mem_used[row])
        self._changed(row)

    def _changed(self, row: int) -> None:
        self.generation += 1
        self.row_version[row] = self.generation  # monotonic: a policy's per-row cache is valid while it matches

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

    def _clear_row(self, row: int | slice) -> None:
        """Empty one row, or a slice of rows (``_by_index`` and ``_by_uuid`` only for one row)."""
        self._share_memory.clear()
        for name, _ in self._GPU_ARRAYS:
            getattr(self, name)[row] = 0
        self.model[row] = -1
        self.gpu_pool[row] = EMPTY_POOL
        for name, _ in self._ROW_ARRAYS:
            getattr(self, name)[row] = 0
        self.cpu_total[row] = UNACCOUNTED
        self.host_mem_total[row] = UNACCOUNTED
        self.cpu_room[row] = UNLIMITED
        self.host_mem_room[row] = UNLIMITED
        self.shape_count[row] = 0
        self.kind_count[row] = 0
        if not isinstance(row, slice):
            self._by_index[row] = {}
            self._by_uuid[row] = {}

    def _grow(self, rows: int) -> None:
        old = self._capacity
        for name, dtype in self._GPU_ARRAYS:
            array = np.zeros((rows, self._width), dtype=dtype)
            if old:
                array[:old] = getattr(self, name)
            setattr(self, name, array)
        for name, dtype in self._ROW_ARRAYS:
            array = np.zeros(rows, dtype=dtype)
            if old:
                array[:old] = getattr(self, name)
            setattr(self, name, array)
        shape_count = np.zeros((rows, self.units_per_gpu + 1), dtype=np.int32)
        if old:
            shape_count[:old] = self.shape_count
        self.shape_count = shape_count
        kind_count = np.zeros((rows, KIND_SLOTS), dtype=np.int32)
        if old:
            kind_count[:old] = self.kind_count
        self.kind_count = kind_count
        self._inventory.extend([None] * (rows - old))
        self._by_index.extend({} for _ in range(rows - old))
        self._by_uuid.extend({} for _ in range(rows - old))
        self._clear_row(slice(old, rows))
        self._free_rows.extend(range(rows - 1, old - 1, -1))
        self._capacity = rows

    def _widen(self, width: int) -> None:
        for name, dtype in self._GPU_ARRAYS:
            array = np.zeros((self._capacity, width), dtype=dtype)
            array[:, : self._width] = getattr(self, name)
            if name == "model":
                array[:, self._width:] = -1
            if name == "gpu_pool":
                array[:, self._width:] = EMPTY_POOL
            setattr(self, name, array)
        self._width = width
        self._share_memory.clear()


class Candidates:
    """Node names with their ledger rows, looked up once, for a caller that evaluates subsets of the same nodes
    again and again (the simulator): ``evaluate`` takes one in place of a list of names and skips looking the
    names up. Valid for its ledger while no node is added or removed; after that, ``evaluate`` looks the names up
    again."""

    def __init__(self, ledger: Ledger, names: list[str], rows: np.ndarray, nodes_version: int) -> None:
        self.ledger = ledger
        self.names = names
        self.rows = rows
        self.nodes_version = nodes_version
        self._array: np.ndarray | None = None  # the names as an array, to pick subsets from

    def rows_for(self, ledger: Ledger) -> np.ndarray | None:
        """The rows, if they still hold in ``ledger``; None if it is another ledger or its nodes changed since."""
        return self.rows if ledger is self.ledger and ledger.nodes_version == self.nodes_version else None

    def subset(self, positions: np.ndarray) -> "Candidates":
        """The candidates at ``positions`` (integer indices), in that order."""
        if self._array is None:
            self._array = np.array(self.names, dtype=object)
        return Candidates(self.ledger, self._array[positions].tolist(), self.rows[positions], self.nodes_version)


def pod_kind(charges: Iterable[GpuShare], units_per_gpu: int) -> int | None:
    """A GPU pod's kind for GPU clustering: 0 = shares a GPU, n = n whole GPUs (the last slot takes more); None
    for a pod without GPUs."""
    charges = charges if isinstance(charges, tuple) else tuple(charges)
    if not charges:
        return None
    for charge in charges:
        if charge.units < units_per_gpu:
            return 0
    return min(len(charges), KIND_SLOTS - 1)


def _charges_of(assignment: Assignment) -> tuple[GpuShare, ...]:
    """What the pod is charged per GPU (a share each, by index): :meth:`Assignment.charges`."""
    if not assignment.containers:  # a pod that holds host resources only
        return ()
    if len(assignment.containers) == 1:  # one phase: Assignment.charges() is the container's shares, as they are
        shares = assignment.containers[0].gpus
        return shares if len(shares) == 1 else tuple(sorted(shares, key=attrgetter("index")))
    uuids = {s.index: s.uuid for c in assignment.containers for s in c.gpus}
    return tuple(
        GpuShare(index=index, uuid=uuids[index], units=units, memory_mib=memory)
        for index, (units, memory) in assignment.charges().items()
    )
