"""What every policy sees and must answer.

A policy answers two questions with arrays, for many candidate nodes at once:

* ``gpu_preference(view, need, memory)`` -> (nodes, GPUs) floats: which GPUs to take first on each node
  (higher first; ties go to the lower GPU index). GPUs that cannot take the request are masked by the caller.
* ``node_score(view, need, take)`` -> (nodes,) floats: how good each node is on a 0..10 scale, given what the
  pod would be charged there (a :class:`Take`). The caller holds scores to [0, 10], so a policy need not clip.

Node score and GPU choice come from the same policy object, so the extender and the simulator place alike.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, ClassVar, Mapping, TypeVar

import numpy as np

from ..hashing import stable_hash
from ..lazy import lazy
from ..resources import ContainerNeed

if TYPE_CHECKING:
    from ..ledger import Ledger


MAX_SCORE = 10.0


class _Gathered:
    """A :class:`View` array: the ledger's array of the same name, for the view's rows, gathered when first read
    and then kept on the view (a non-data descriptor, so the next read finds the kept value first)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, view: "View", owner: type | None = None) -> np.ndarray:
        value = view._rows_of(getattr(view.ledger, self.name))
        view.__dict__[self.name] = value
        return value


class View:
    """The candidate nodes' rows of the ledger (``rows``): a policy scores this one state of the ledger.

    Per GPU (nodes, GPUs): ``free_units``, ``free_mem``, ``offered_units``, ``mem_usable``, ``used_units``,
    ``used_mem``, ``pods``, ``positions`` (the GPU's column). Per node: ``cpu_total`` (host CPU in milli-cores,
    -1 where the core does not account it: the extender's nodes), ``cpu_free``, ``cpu_room`` (``cpu_free``, or
    ``ledger.UNLIMITED`` where CPU is not accounted) and ``free_units_sum`` (free units, a GPU's negative free
    counted as 0).

    Each array is gathered from the ledger when first read: most policies read two or three of them, and
    gathering all eleven for 500 candidates costs about 40 us a call. That is right only while the ledger is
    in the state the view was made of, which the gathering asserts.
    """

    def __init__(self, ledger: "Ledger", rows: np.ndarray) -> None:
        self.ledger = ledger
        self.rows = rows
        self.units_per_gpu = ledger.units_per_gpu
        self.generation = ledger.generation
        # a policy's scratch space for this one evaluation
        self.memo: dict = {}

    def __len__(self) -> int:
        return len(self.rows)

    def _rows_of(self, array: np.ndarray) -> np.ndarray:
        assert self.ledger.generation == self.generation, "a view read after its ledger changed"
        return array.take(self.rows, axis=0)

    free_units = _Gathered()
    free_mem = _Gathered()
    offered_units = _Gathered()
    mem_usable = _Gathered()
    used_units = _Gathered()
    used_mem = _Gathered()
    pods = _Gathered()
    cpu_total = _Gathered()
    cpu_room = _Gathered()
    free_units_sum = _Gathered()

    @lazy
    def cpu_free(self) -> np.ndarray:
        return self.cpu_total - self._rows_of(self.ledger.cpu_used)

    @property
    def positions(self) -> np.ndarray:
        return np.broadcast_to(np.arange(self.free_units.shape[1]), self.free_units.shape)


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


class Take(ABC):
    """What the pod would be charged on each candidate node, given the GPUs it would get there: per GPU
    ``units`` and ``mem`` (nodes, GPUs) and ``charged`` (``units > 0``); per node ``units_sum`` and ``mem_sum``.
    Each is worked out when first read, so a policy that weighs node totals never pays for per-GPU arrays.
    A node that does not fit may carry any take: its score is dropped."""

    @property
    @abstractmethod
    def units(self) -> np.ndarray: ...

    @property
    @abstractmethod
    def mem(self) -> np.ndarray: ...

    @lazy
    def charged(self) -> np.ndarray:
        return self.units > 0

    @lazy
    def units_sum(self) -> np.ndarray:
        return self.units.sum(axis=1)

    @lazy
    def mem_sum(self) -> np.ndarray:
        return self.mem.sum(axis=1)


class GpuTake(Take):
    """A take given per GPU (several GPUs per node, or the multi-container search's)."""

    def __init__(self, units: np.ndarray, mem: np.ndarray) -> None:
        self._units = units
        self._mem = mem

    @property
    def units(self) -> np.ndarray:
        return self._units

    @property
    def mem(self) -> np.ndarray:
        return self._mem


class OneGpuTake(Take):
    """One GPU per node: column ``positions[i]`` of node i, charged ``units`` and ``memory[i, positions[i]]``
    (nearly every pod). Its per-node sums need no per-GPU array."""

    def __init__(self, positions: np.ndarray, units: int, memory: np.ndarray) -> None:
        self.positions = positions
        self.share_units = units
        self.memory = memory

    @lazy
    def _one_hot(self) -> np.ndarray:
        return _one_hot(self.memory.shape[1]).take(self.positions, axis=0)

    @lazy
    def units(self) -> np.ndarray:
        return self._one_hot * self.share_units

    @lazy
    def mem(self) -> np.ndarray:
        return np.where(self._one_hot, self.memory, 0)

    @lazy
    def units_sum(self) -> np.ndarray:
        return np.full(len(self.positions), self.share_units, dtype=np.int64)

    @lazy
    def mem_sum(self) -> np.ndarray:
        return self.memory[np.arange(len(self.positions)), self.positions]


class NoTake(Take):
    """No GPU on any node (a pod that asks for host resources only)."""

    def __init__(self, nodes: int, width: int) -> None:
        self.shape = (nodes, width)

    @lazy
    def units(self) -> np.ndarray:
        return np.zeros(self.shape, dtype=np.int64)

    @lazy
    def mem(self) -> np.ndarray:
        return np.zeros(self.shape, dtype=np.int64)

    @lazy
    def units_sum(self) -> np.ndarray:
        return np.zeros(self.shape[0], dtype=np.int64)

    @lazy
    def mem_sum(self) -> np.ndarray:
        return np.zeros(self.shape[0], dtype=np.int64)


@lru_cache(maxsize=None)
def _one_hot(width: int) -> np.ndarray:
    """Row p: True at column p alone (read-only; shared)."""
    out = np.eye(width, dtype=bool)
    out.flags.writeable = False
    return out


class Policy(ABC):
    """A placement policy: one scoring rule used for both the node score and the GPU choice.

    A policy's constructor takes its parameters as keywords and keeps each as the attribute of the same name;
    :func:`~extender.core.policies.make_policy` also passes ``seed`` and ``workload`` to a policy whose
    constructor names them.
    """

    name: ClassVar[str]
    # True when a node's score and GPU choice depend only on that node's ledger row, cluster-wide constants and
    # the pod's shape (not its identity): the simulator may then reuse a node's answer until its row changes.
    node_local: ClassVar[bool] = True
    # True when the published simulator scores this policy in integer steps of its 0..100 scale (0.1 here) and
    # its ties decide: the simulator then compares scores in those steps.
    integer_scores: ClassVar[bool] = True

    @abstractmethod
    def gpu_preference(self, view: View, need: Need, memory: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def node_score(self, view: View, need: Need, take: Take) -> np.ndarray: ...

    def warm(self, ledger: "Ledger") -> None:
        """Work out now what the policy keeps per node (its :class:`~extender.core.rows.RowMemo`), for every node
        of ``ledger``, so that the first evaluations do not pay for it: the extender calls this once its ledger
        holds the whole cluster. A policy that keeps nothing per node does nothing."""

    def describe(self) -> str:
        """The name, with the parameters that differ from the constructor's defaults: ``best-fit(dims=cpu+units)``."""
        changed = [f"{key}={getattr(self, key)}" for key, p in inspect.signature(type(self)).parameters.items()
                   if key not in ("seed", "workload") and getattr(self, key) != p.default]
        return f"{self.name}({', '.join(changed)})" if changed else self.name


T = TypeVar("T")


def named(strategies: Mapping[str, T], choice: str, *, policy: str, parameter: str) -> T:
    """The strategy ``choice`` names in ``strategies``; ValueError listing the names otherwise."""
    try:
        return strategies[choice]
    except (KeyError, TypeError):
        raise ValueError(f"{policy}: {parameter} must be one of {', '.join(strategies)}, not {choice!r}") from None


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
    return np.clip((units + memory) / 2.0, 0.0, 1.0)


def gpu_allocated_fraction(view: View) -> np.ndarray:
    """Per GPU, the mean over {units, memory} of charged / capacity, in [0, 1]."""
    units = ratio(view.used_units, view.offered_units)
    memory = ratio(view.used_mem, view.mem_usable)
    return np.clip((units + memory) / 2.0, 0.0, 1.0)
