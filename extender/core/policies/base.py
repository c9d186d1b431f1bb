"""What every policy sees and must answer.

A policy answers two questions with arrays, for many candidate nodes at once:

* ``gpu_preference(view, need, memory)`` -> (nodes, GPUs) floats: which GPUs to take first on each node
  (higher first; ties go to the lower GPU index). GPUs that cannot take the request are masked by the caller.
* ``node_score(view, need, take)`` -> (nodes,) floats: how good each node is on a 0..10 scale, given what the
  pod would be charged there (:class:`Take`: per GPU, or per node, each worked out when first read; most
  policies need the per-node sums alone). The caller holds scores to [0, 10], so a policy need not clip them.

Node score and GPU choice come from the same policy object, so the extender and the simulator place alike.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ..hashing import stable_hash
from ..resources import ContainerNeed

if TYPE_CHECKING:
    from ..ledger import Ledger


MAX_SCORE = 10.0


class View:
    """Per-GPU arrays of the candidate nodes (rows of the ledger), each gathered on first use.

    ``free_units``, ``free_mem``, ``offered_units``, ``mem_usable``, ``used_units``, ``used_mem``, ``pods``,
    ``gpu_shape`` (nodes, GPUs); ``cpu_total`` (nodes: host CPU in milli-cores, -1 where the core does not
    account it, the extender's nodes), ``cpu_free`` (nodes), ``cpu_room`` (nodes: ``cpu_free``, or
    ``ledger.UNLIMITED`` where CPU is not accounted), ``free_units_sum`` (nodes: free units, a GPU's negative
    free counted as 0) and ``positions`` (nodes, GPUs: the GPU's column). ``gather`` names arrays the caller
    knows it will read: gathered at once, which costs less than one by one.
    """

    _GATHERED = frozenset({"free_units", "free_mem", "offered_units", "mem_usable", "used_units", "used_mem", "pods",
                           "gpu_shape", "cpu_total", "cpu_room", "free_units_sum"})

    def __init__(self, ledger: "Ledger", rows: np.ndarray, gather: tuple[str, ...] = ()) -> None:
        self.ledger = ledger
        self.rows = rows
        self.units_per_gpu = ledger.units_per_gpu
        # a policy's scratch space for this one evaluation (the ledger does not change while a view is in use)
        self.memo: dict = {}
        for name in gather:
            self.__dict__[name] = getattr(ledger, name).take(rows, axis=0)

    def __len__(self) -> int:
        return len(self.rows)

    def __getattr__(self, name: str) -> np.ndarray:
        # called only while the attribute is not yet set: gather it once (cheaper than cached_property's lock)
        if name in View._GATHERED:
            value = getattr(self.ledger, name).take(self.rows, axis=0)
        elif name == "cpu_free":
            value = self.cpu_total - self.ledger.cpu_used.take(self.rows)
        elif name == "positions":
            value = np.broadcast_to(np.arange(self.free_units.shape[1]), self.free_units.shape)
        else:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        self.__dict__[name] = value
        return value


@dataclass(frozen=True, slots=True)
class Need:
    """One container's request as policies see it, with a stable per-pod hash for seeded randomness."""

    container: ContainerNeed
    pod_key: str  # the pod's UID (else namespace/name): what the hash is of
    cpu_milli: int = 0  # the pod's host CPU request (simulator)

    @property
    def pod_hash(self) -> int:
        """A stable 63-bit hash of the pod (the same in every process); computed when a policy asks for it."""
        return stable_hash(self.pod_key)

    @property
    def units(self) -> int:
        return self.container.units

    @property
    def count(self) -> int:
        return self.container.count

    def memory(self, view: View) -> np.ndarray:
        """MiB this container needs on each GPU: as asked, or floor(units * usable / unitsPerGpu)."""
        if self.container.memory_mib is not None:
            return np.full(view.free_units.shape, self.container.memory_mib, dtype=np.int64)
        return view.ledger.share_memory(self.container.units).take(view.rows, axis=0)


class Take:
    """What the pod would be charged on each candidate node, given the GPUs it would get there: per GPU ``units``
    and ``mem`` (nodes, GPUs) and ``charged`` (``units > 0``), per node ``units_sum`` and ``mem_sum`` (nodes).
    What is not given is worked out when first read. A node that does not fit may carry any take: its score is
    dropped.
    """

    def __init__(self, units: np.ndarray, mem: np.ndarray) -> None:
        self.units = units
        self.mem = mem

    @classmethod
    def one_each(cls, positions: np.ndarray, units: int, memory: np.ndarray) -> "Take":
        """One GPU per node, column ``positions[i]`` of node i, charged ``units`` and ``memory[i, positions[i]]``."""
        take = cls.__new__(cls)
        take._one = (positions, units, memory)
        return take

    @classmethod
    def nothing(cls, nodes: int, width: int) -> "Take":
        """No GPU on any node (a pod that asks for host resources only)."""
        take = cls.__new__(cls)
        take._shape = (nodes, width)
        take.units_sum = take.mem_sum = np.zeros(nodes, dtype=np.int64)
        return take

    def __getattr__(self, name: str) -> np.ndarray:
        # called only while the attribute is not yet set: work it out once
        given = self.__dict__
        if name == "charged":
            value = self.units > 0
        elif "_one" in given:
            positions, units, memory = given["_one"]
            if name == "units":
                value = _one_hot(memory.shape[1]).take(positions, axis=0) * units
            elif name == "mem":
                value = np.where(_one_hot(memory.shape[1]).take(positions, axis=0), memory, 0)
            elif name == "units_sum":
                value = _filled(len(positions), units)
            elif name == "mem_sum":
                value = memory[np.arange(len(positions)), positions]
            else:
                raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        elif "_shape" in given and name in ("units", "mem"):
            value = np.zeros(given["_shape"], dtype=np.int64)
        elif name == "units_sum":
            value = np.add.reduce(self.units, axis=1)
        elif name == "mem_sum":
            value = np.add.reduce(self.mem, axis=1)
        else:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        given[name] = value
        return value


def _filled(n: int, value: int) -> np.ndarray:
    out = np.empty(n, dtype=np.int64)  # np.full's Python wrapper costs more on small arrays
    out.fill(value)
    return out


@lru_cache(maxsize=None)
def _one_hot(width: int) -> np.ndarray:
    """Row p: True at column p alone (read-only; shared)."""
    out = np.eye(width, dtype=bool)
    out.flags.writeable = False
    return out


class Policy(ABC):
    """A placement policy: one scoring rule used for both the node score and the GPU choice."""

    name: ClassVar[str]
    # True when a node's score and GPU choice depend only on that node's ledger row, cluster-wide constants and
    # the pod's shape (not its identity): the simulator may then reuse a node's answer until its row changes.
    node_local: ClassVar[bool] = True
    # True when the published simulator scores this policy in integer steps of its 0..100 scale (0.1 here) and
    # its ties decide: the simulator then compares scores in those steps.
    integer_scores: ClassVar[bool] = True
    # View arrays the policy reads at every scoring: gathered with the evaluation's own, at once (cheaper than
    # one by one when first read; a name the evaluation gathers anyway need not be listed)
    reads: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def gpu_preference(self, view: View, need: Need, memory: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def node_score(self, view: View, need: Need, take: Take) -> np.ndarray: ...

    def describe(self) -> str:
        return self.name


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (a node without usable memory, say)."""
    if isinstance(denominator, (int, float, np.integer, np.floating)):  # a cluster-wide scale
        if denominator > 0:
            return np.true_divide(numerator, float(denominator))  # int arrays become float64 first, as below
        return np.zeros(np.shape(numerator))
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    if denominator.ndim == 0:
        return numerator / denominator if denominator > 0 else np.zeros(numerator.shape)
    shape = numerator.shape if numerator.shape == denominator.shape else np.broadcast(numerator, denominator).shape
    return np.divide(numerator, denominator, out=np.zeros(shape), where=denominator > 0)


def cpu_left(view: View, need: Need) -> np.ndarray:
    """Per node, host CPU left after placing the pod; 0 where the core does not account CPU (extender nodes)."""
    if view.ledger.accounts_cpu():  # every node does (the simulator's): the room is what is free
        return view.cpu_room - need.cpu_milli
    return np.where(view.cpu_total >= 0, view.cpu_room - need.cpu_milli, 0)


def allocated_fraction(view: View, take: Take) -> np.ndarray:
    """Per node, the mean over {units, memory} of (charged + requested) / capacity, in [0, 1]."""
    units = ratio(view.used_units.sum(axis=1) + take.units_sum, view.offered_units.sum(axis=1))
    memory = ratio(view.used_mem.sum(axis=1) + take.mem_sum, view.mem_usable.sum(axis=1))
    return np.minimum(np.maximum((units + memory) / 2.0, 0.0), 1.0)


def gpu_allocated_fraction(view: View) -> np.ndarray:
    """Per GPU, the mean over {units, memory} of charged / capacity, in [0, 1]."""
    units = ratio(view.used_units, view.offered_units)
    memory = ratio(view.used_mem, view.mem_usable)
    return np.minimum(np.maximum((units + memory) / 2.0, 0.0), 1.0)
