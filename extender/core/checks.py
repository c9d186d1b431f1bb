"""Per-GPU checks of one container on the candidate nodes, and the misfit codes they give.

A GPU can take a container when it is *offered* (healthy, MIG off), of an allowed *model*, *sized* (its usable
memory holds the container's share), free of other *pools*, and has the *units* and *memory* free. A node fits
when at least ``count`` of its GPUs can. A node that does not fit gets a :class:`MisfitCode` saying which check
stopped it; kube-scheduler counts equal messages, so the code, not the node, picks the message.
"""

from __future__ import annotations

import enum
from functools import lru_cache

import numpy as np

from .lazy import lazy
from .ledger import EMPTY_POOL
from .policies import Need, View
from .resources import ContainerNeed


class MisfitCode(enum.IntFlag):
    """Why a node cannot take a pod; ``FIT`` (0) when it can.

    Capacity flags (preemption can help) combine: GPUs that could take the container lacked free units, or
    memory, or were held by another pool. A *static* code (nothing that leaves can help) is one flag alone, the
    first that holds of: node pool, model, too few usable GPUs, GPUs too small.

    Array arithmetic takes a member's ``.value`` (a plain int): numpy handles an IntFlag operand about 2 us slower
    per operation, 5% of a simulator run where many pods fit nowhere.
    """

    FIT = 0
    UNITS = 1
    MEMORY = 2
    GPU_POOL = 4
    CONTAINERS = 8  # every GPU container fits alone, not all of them together
    HOST_CPU = 16  # node CPU and memory: checked where the inventory carries them (the simulator's nodes)
    HOST_MEMORY = 32
    POOL = 64
    MODEL = 128
    TOO_FEW = 256
    TOO_BIG = 512


# a plain int: ``code & STATIC`` with an IntFlag builds a flag member, 0.6 us for every misfit Filter answers
STATIC = (MisfitCode.POOL | MisfitCode.MODEL | MisfitCode.TOO_FEW | MisfitCode.TOO_BIG).value
CODES = 1024  # every code is below this (the length of a count per code)
_LABELS = {MisfitCode.UNITS: "units", MisfitCode.MEMORY: "memory", MisfitCode.GPU_POOL: "gpu-pool",
           MisfitCode.CONTAINERS: "containers", MisfitCode.HOST_CPU: "cpu", MisfitCode.HOST_MEMORY: "host-memory",
           MisfitCode.POOL: "pool", MisfitCode.MODEL: "model", MisfitCode.TOO_FEW: "too-few-gpus",
           MisfitCode.TOO_BIG: "gpu-too-small"}


def is_static(code: int) -> bool:
    return bool(code & STATIC)


@lru_cache(maxsize=None)
def misfit_category(code: int) -> str:
    """A short, bounded label per misfit code (a metrics label: no node names, no numbers): its flags' labels
    joined by "+", e.g. ``units+memory``."""
    return "+".join(label for flag, label in _LABELS.items() if code & flag)


def misfit_counts(codes: np.ndarray) -> list[tuple[str, int]]:
    """(category, number of nodes) for misfit codes (FIT entries are not counted), in code order."""
    return category_counts(np.bincount(codes, minlength=1))


def category_counts(counts: np.ndarray) -> list[tuple[str, int]]:
    """:func:`misfit_counts` from the number of nodes per code (``counts[code]``; FIT is not counted)."""
    return [(misfit_category(code), int(counts[code])) for code in np.flatnonzero(counts).tolist() if code]


_ROW_WORDS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}  # a row of that many booleans as one word


def any_gpu(mask: np.ndarray) -> np.ndarray:
    """Per node (row), whether any GPU passes ``mask``: ``mask.any(axis=1)``. A contiguous row of 8 (or 1, 2, 4)
    booleans is read as one machine word, non-zero iff one is True: numpy reduces short rows one at a time,
    about 12x slower on a cluster of a thousand 8-GPU nodes."""
    word = _ROW_WORDS.get(mask.shape[1])
    if word is not None and mask.flags.c_contiguous:
        assert mask.dtype == np.bool_
        return mask.view(word)[:, 0].astype(bool)
    return mask.any(axis=1)


def at_least(mask: np.ndarray, k: int) -> np.ndarray:
    """Per node (row), whether at least ``k`` GPUs pass ``mask``."""
    return any_gpu(mask) if k == 1 else mask.sum(axis=1) >= k


class PodScope:
    """What an evaluation reads once for the pod and its candidate rows: pools and models.

    ``pooled`` is False when no node or pod names a pool anywhere: every node and GPU is then in the pod's (no)
    pool and nothing is compared.
    """

    def __init__(self, view: View, pool: int, pooled: bool, models: tuple[str, ...] | None,
                 model_lut: np.ndarray | None) -> None:
        ledger, rows = view.ledger, view.rows
        self.pool = pool
        self.pooled = pooled
        self.models = models
        self.gpu_pool = ledger.gpu_pool.take(rows, axis=0) if pooled else None
        self.node_pool_ok = ledger.node_pool.take(rows) == pool if pooled else None
        self.model_ok = model_lut[ledger.model.take(rows, axis=0)] if model_lut is not None else None


class GpuChecks:
    """The checks of one container against the candidate rows, each (nodes, GPUs).

    ``eligible`` (every check passes), ``units_ok`` and ``memory_ok`` are worked out at once; the checks that only
    explain misfits (``offered``, ``static``, ``sized``, ``pool_ok``) when first read, from the view's copy of
    the rows, so that they describe the state that was evaluated.
    """

    def __init__(self, view: View, scope: PodScope, container: ContainerNeed, need: Need) -> None:
        self.container = container
        self.need = need
        self.scope = scope
        self.view = view
        self.memory = need.memory(view)
        self.units_ok = view.free_units >= container.units
        self.memory_ok = view.free_mem >= self.memory
        if scope.model_ok is None and container.memory_mib is None:
            # sized is offered here, and a GPU that offers nothing has free units <= 0 (offered 0 - used), below
            # any share: units_ok already says it
            assert container.units > 0
            eligible = self.units_ok & self.memory_ok
        else:
            eligible = self.sized & self.units_ok & self.memory_ok
        self.eligible = eligible if scope.gpu_pool is None else eligible & self.pool_ok

    @lazy
    def offered(self) -> np.ndarray:
        return self.view.offered_units > 0

    @lazy
    def static(self) -> np.ndarray:
        """Offered and of an allowed model."""
        model_ok = self.scope.model_ok
        return self.offered if model_ok is None else self.offered & model_ok

    @lazy
    def sized(self) -> np.ndarray:
        """Static and big enough: the share's memory is within the GPU's usable memory. Memory derived from
        units (floor(units * usable / unitsPerGpu)) is never above usable: then sized is static."""
        if self.container.memory_mib is None:
            return self.static
        return self.static & (self.memory <= self.view.mem_usable)

    @lazy
    def pool_ok(self) -> np.ndarray:
        gpu_pool = self.scope.gpu_pool
        if gpu_pool is None:
            return np.ones(self.units_ok.shape, dtype=bool)
        return (gpu_pool == EMPTY_POOL) | (gpu_pool == self.scope.pool)

    def codes(self) -> np.ndarray:
        """Misfit code per node (``FIT`` where it fits), by the precedence of :class:`MisfitCode`."""
        k = self.container.count
        sized = self.sized
        # which checks blocked GPUs that are otherwise usable (sized > ok: sized and not ok): each one is named
        codes = (any_gpu(sized > self.units_ok) * MisfitCode.UNITS.value
                 + any_gpu(sized > self.memory_ok) * MisfitCode.MEMORY.value)
        if self.scope.pooled:
            codes += any_gpu(sized > self.pool_ok) * MisfitCode.GPU_POOL.value
        codes[at_least(self.eligible, k)] = MisfitCode.FIT.value
        codes[~at_least(sized, k)] = MisfitCode.TOO_BIG.value
        codes[~at_least(self.static, k)] = MisfitCode.TOO_FEW.value
        if self.scope.model_ok is not None:
            codes[~any_gpu(self.scope.model_ok)] = MisfitCode.MODEL.value
        if self.scope.node_pool_ok is not None:
            codes[~self.scope.node_pool_ok] = MisfitCode.POOL.value
        return codes


def host_room(view: View, cpu_milli: int, memory_mib: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Per node, whether its host CPU and its host memory can take the pod (the ledger's rooms are unlimited
    where the inventory does not carry host capacity); None when the pod asks for neither."""
    if not cpu_milli and not memory_mib:
        return None
    return view.cpu_room >= cpu_milli, view.ledger.host_mem_room.take(view.rows) >= memory_mib


def host_codes(room: tuple[np.ndarray, np.ndarray] | None, nodes: int) -> np.ndarray:
    """FIT, or which host resources the node lacks, from :func:`host_room`."""
    if room is None:
        return np.zeros(nodes, dtype=np.int64)
    cpu_ok, memory_ok = room
    return (~cpu_ok) * MisfitCode.HOST_CPU.value + (~memory_ok) * MisfitCode.HOST_MEMORY.value
