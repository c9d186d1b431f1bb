"""What every node offers: its GPUs' capacity in the row arrays, and the names and ids around them.

:class:`NodeTable` adds, replaces and removes nodes (from their inventories), keeps each node's free capacity
(what is offered less what is charged: the charges are the :class:`~extender.core.ledger.Ledger`'s, built on
this table), and the cluster-wide scales policies read (the largest node, each share's derived memory).
"""

from __future__ import annotations

from itertools import repeat

import numpy as np

from .assignment import GpuShare
from .hashing import stable_hash
from .inventory import NodeInventory
from .rows import UNACCOUNTED, UNLIMITED, RowArrays
from .settings import CoreSettings

NO_POOL = 0  # pool id of "no pool"
UNKNOWN_POOL = -3  # a pod's pool that no node or pod has: it fits nowhere


class NodeTable(RowArrays):
    """The nodes' rows: inventories, capacity, and free capacity once charges are applied."""

    def __init__(self, settings: CoreSettings, *, rows: int, width: int) -> None:
        self.settings = settings
        self.units_per_gpu = settings.units_per_gpu
        self._rows: dict[str, int] = {}
        self._inventory: list[NodeInventory | None] = []
        self._by_index: list[dict[int, int]] = []
        self._by_uuid: list[dict[str, int]] = []
        self._pool_ids: dict[str | None, int] = {None: NO_POOL}
        self._pool_names: list[str | None] = [None]
        self._model_ids: dict[str, int] = {}
        self._model_names: list[str] = []
        self._problems: dict[str, str] = {}
        self._max_node: tuple[int, int, int] | None = None
        self._cpu_unaccounted: set[int] = set()  # rows of live nodes whose inventory does not carry host CPU
        self._share_memory: dict[int, np.ndarray] = {}  # units -> MiB of that share on every GPU (see share_memory)
        self.generation = 0
        self.nodes_version = 0  # bumped when a node is added or removed: rows looked up before may be stale
        super().__init__(rows, width)

    def upsert_node(self, inventory: NodeInventory) -> None:
        """Add or replace a node's GPUs; the pods already charged to it are charged again on the new GPUs."""
        name = inventory.name
        self._problems.pop(name, None)
        if len(inventory.gpus) > self._width:
            self._widen(len(inventory.gpus))
        row = self._rows.get(name)
        if row is None:
            row = self._rows[name] = self._take_row()
            self.nodes_version += 1
        else:
            self._clear_rows(row)
        self._share_memory.clear()  # the usable memory may change
        self._inventory[row] = inventory
        self.live[row] = True
        self.node_pool[row] = self.pool_id(inventory.pool)
        self.node_hash[row] = np.uint64(stable_hash(name))
        self.gpu_count[row] = len(inventory.gpus)
        self.cpu_total[row] = UNACCOUNTED if inventory.cpu_milli is None else inventory.cpu_milli
        self.host_mem_total[row] = UNACCOUNTED if inventory.memory_mib is None else inventory.memory_mib
        if inventory.cpu_milli is None:
            self._cpu_unaccounted.add(row)
        else:
            self._cpu_unaccounted.discard(row)
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
        self._by_index[row] = {gpu.index: pos for pos, gpu in enumerate(gpus)}
        self._by_uuid[row] = {gpu.uuid: pos for pos, gpu in enumerate(gpus) if gpu.uuid}
        self._max_node = None
        self._recompute_row(name, row)

    def remove_node(self, name: str) -> None:
        """Forget a node's GPUs. Its pods keep their assignments (they still exist) until they are released."""
        row = self._rows.pop(name, None)
        if row is None:
            return
        self.nodes_version += 1
        self._clear_rows(row)
        self._share_memory.clear()
        self._cpu_unaccounted.discard(row)
        self._inventory[row] = None
        self._by_index[row] = {}
        self._by_uuid[row] = {}
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

    def rows_of(self, names: list[str]) -> np.ndarray:
        """The rows of ``names``, -1 for a name without an inventory."""
        # map over dict.get: 24 against 29 us for 500 names with a generator expression
        return np.fromiter(map(self._rows.get, names, repeat(-1)), dtype=np.int64, count=len(names))

    def candidates(self, names: list[str]) -> "Candidates":
        """``names`` with their rows, looked up once (see :class:`Candidates`); KeyError names a node without an
        inventory."""
        rows = self.rows_of(names)
        if (rows < 0).any():
            raise KeyError(f"node {names[int(np.argmin(rows))]} has no GPU inventory")
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
        floor(units * usable / unitsPerGpu). Kept per share until a node is added, replaced or removed (the
        usable memory changes only then; each of those clears it)."""
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

    # ---------------------------------------------------------------- internals
    def _recompute_row(self, name: str, row: int) -> None:
        """Work a row's free capacity out again (the ledger charges its pods first)."""
        self._refresh_free(row)

    def _position(self, row: int, charge: GpuShare) -> int | None:
        if charge.uuid:
            return self._by_uuid[row].get(charge.uuid)
        return self._by_index[row].get(charge.index)

    def _refresh_free(self, row: int) -> None:
        self.free_units[row] = self.offered_units[row] - self.used_units[row]
        self.free_mem[row] = self.mem_usable[row] - np.maximum(self.used_mem[row], self.observed[row])
        self.free_units_sum[row] = np.maximum(self.free_units[row], 0).sum()
        cpu, memory = int(self.cpu_total[row]), int(self.host_mem_total[row])
        self.cpu_room[row] = UNLIMITED if cpu == UNACCOUNTED else cpu - int(self.cpu_used[row])
        self.host_mem_room[row] = UNLIMITED if memory == UNACCOUNTED else memory - int(self.host_mem_used[row])
        self._changed(row)

    def _changed(self, row: int) -> None:
        self.generation += 1
        self.row_version[row] = self.generation  # monotonic: a RowMemo's value is valid while it matches

    def _grow(self, rows: int) -> None:
        super()._grow(rows)
        added = rows - len(self._inventory)
        self._inventory.extend([None] * added)
        self._by_index.extend({} for _ in range(added))
        self._by_uuid.extend({} for _ in range(added))

    def _widen(self, width: int) -> None:
        super()._widen(width)
        self._share_memory.clear()



class Candidates:
    """Node names with their ledger rows, looked up once, for a caller that evaluates subsets of the same nodes
    again and again (the simulator): ``evaluate`` takes one in place of a list of names and skips looking the
    names up. Valid for its ledger while no node is added or removed; after that, ``evaluate`` looks the names up
    again."""

    def __init__(self, ledger: NodeTable, names: list[str], rows: np.ndarray, nodes_version: int) -> None:
        self.ledger = ledger
        self.names = names
        self.rows = rows
        self.nodes_version = nodes_version
        self._array: np.ndarray | None = None  # the names as an array, to pick subsets from

    def rows_for(self, ledger: NodeTable) -> np.ndarray | None:
        """The rows, if they still hold in ``ledger``; None if it is another ledger or its nodes changed since."""
        return self.rows if ledger is self.ledger and ledger.nodes_version == self.nodes_version else None

    def subset(self, positions: np.ndarray) -> "Candidates":
        """The candidates at ``positions`` (integer indices), in that order."""
        if self._array is None:
            self._array = np.array(self.names, dtype=object)
        return Candidates(self.ledger, self._array[positions].tolist(), self.rows[positions], self.nodes_version)


