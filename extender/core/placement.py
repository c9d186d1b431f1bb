"""Filter, score and choose GPUs: one evaluation that Filter, Prioritize, Bind and the simulator all use.

``evaluate(ledger, pod, nodes, policy)`` answers, for every candidate node, either a fit with a score in
[0, 10] and the GPUs the pod would get, or a misfit. A misfit's ``message`` is the same text for every node
that fails the same way (kube-scheduler counts identical reasons in its event: "0/500 nodes are available:
480 fracgpu: insufficient GPU memory ..."), and ``Evaluation.misfit(node)`` lists every reason (node, GPU,
resource, asked, free). Unresolvable misfits (pool, model, too few or too small GPUs, no inventory) are those
preemption cannot cure.

Two paths, one answer:

* a pod with a single GPU container (nearly all pods) is evaluated for all candidates at once with numpy: a
  node fits iff at least ``count`` of its GPUs each pass every check;
* a pod with several GPU containers (or init phases) is placed per node by an exact, bounded backtracking
  search in policy order (:func:`_search_row`).

``place`` is ``evaluate`` on one node, so "Filter says it fits" ⇔ "Bind finds a placement" on the same state
(DESIGN.md invariant 3) holds by construction, and property tests check it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from itertools import combinations, repeat
from typing import Callable, Literal, Sequence

import numpy as np

from .assignment import Assignment, ContainerAssignment, GpuShare
from .inventory import NodeInventory
from .ledger import EMPTY_POOL, NO_POOL, Candidates, Ledger
from .policies import Need, Policy, Take, View
from .resources import ContainerNeed, PodRequest, model_matches
from .topology import best_connected, connectivity, link_graph

# Misfit codes. Below RESOLVABLE: preemption cannot help. RESOLVABLE + bits: 1 units, 2 memory, 4 GPU pool.
FIT, UNKNOWN, EXCLUDED, POOL, MODEL, TOO_FEW, TOO_BIG = 0, 1, 2, 3, 4, 5, 6
RESOLVABLE = 8
JOINT = 16
HOST_CPU, HOST_MEM, HOST_BOTH = 32, 33, 34  # node CPU / memory, checked where the inventory carries them
CODES = HOST_BOTH + 1  # every misfit code is below this
SEARCH_BUDGET = 20_000
_HOST_CODES = np.array([HOST_BOTH, HOST_MEM, HOST_CPU, FIT], dtype=np.int64)  # by cpu ok + 2 * memory ok
_NO_GPU = ContainerNeed("host", "app", 0, 0, 0)  # what policies see of a pod that asks for host resources only
# what the GPU checks read of every candidate: gathered with the view, at once
_GATHER = ("free_units", "free_mem", "offered_units", "mem_usable", "cpu_room")
_NO_NODES = np.zeros(0, dtype=bool)
_NO_NODES.flags.writeable = False


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


@dataclass(frozen=True, slots=True)
class Placement:
    node: str
    score: float
    containers: tuple[ContainerAssignment, ...]

    def assignment(self, pod: PodRequest, policy: str) -> Assignment:
        # positional: a frozen dataclass takes keywords a third slower, and Bind builds one per pod
        return Assignment(pod.uid, pod.namespace, pod.name, self.node, pod.pool, policy, self.containers,
                          pod.cpu_milli, pod.memory_mib)


class Evaluation:
    """The answer for one pod over a list of candidate nodes (see module docstring).

    The misfit codes, and from them ``failed``, ``unresolvable`` (node -> message) and ``rejections`` (misfit
    category -> number of nodes, for metrics), are worked out when first read, from the arrays the evaluation
    gathered (so later ledger changes do not alter them): a simulator's pod that fits somewhere never needs them.
    """

    def __init__(self, pod: PodRequest, fits: list[str] | np.ndarray, scores: np.ndarray, explainer: "_Explainer",
                 codes: np.ndarray | Callable[[], np.ndarray] | None = None,
                 absent: dict[str, tuple[str, str]] | None = None) -> None:
        self.pod = pod
        self._fits = fits  # names, or the fitting candidates' positions: named when first read
        self.scores = scores
        self._explainer = explainer
        self._codes = codes if codes is not None else np.zeros(0, dtype=np.int64)  # per evaluated node, or a thunk
        self._absent = absent or {}  # candidate without an inventory -> (category, message)

    @property
    def fits(self) -> list[str]:
        """The fitting nodes, in candidate order (``scores`` holds each one's score, in the same order)."""
        fits = self._fits
        if not isinstance(fits, list):
            names = self._explainer.names
            fits = self._fits = list(names) if len(fits) == len(names) else [names[i] for i in fits.tolist()]
        return fits

    def _all_codes(self) -> np.ndarray:
        if callable(self._codes):
            self._codes = self._codes()
        return self._codes

    @cached_property
    def rejections(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for label, _ in self._absent.values():
            out[label] = out.get(label, 0) + 1
        codes = self._all_codes()
        for label, count in misfit_counts(codes[~self._explainer.fit] if len(codes) else codes):
            out[label] = out.get(label, 0) + count
        return out

    @cached_property
    def _messages(self) -> tuple[dict[str, str], dict[str, str]]:
        failed: dict[str, str] = {}
        unresolvable = {name: message for name, (_, message) in self._absent.items()}
        names, codes = self.misfit_codes()
        if names:
            messages = _Messages(self.pod)
            texts = {code: messages.text(code) for code in set(codes.tolist())}
            for name, code in zip(names, codes.tolist()):
                (failed if code >= RESOLVABLE else unresolvable)[name] = texts[code]
        return failed, unresolvable

    @property
    def failed(self) -> dict[str, str]:
        """Nodes that do not fit now but could once pods leave (capacity), each with its message."""
        return self._messages[0]

    @property
    def unresolvable(self) -> dict[str, str]:
        """Nodes that cannot take the pod whatever leaves (pool, model, size, no inventory), with messages."""
        return self._messages[1]

    def score_of(self, node: str) -> float:
        return self._score_at(self._fitting(node))

    def _fitting(self, node: str) -> int:
        """The candidate position of a fitting ``node``; KeyError if it was not evaluated or does not fit."""
        i = self._explainer.find(node)
        if i is None or not self._explainer.fit[i]:
            raise KeyError(f"node {node} does not fit pod {self.pod.key}")
        return i

    def _score_at(self, i: int) -> float:
        return float(self.scores[np.count_nonzero(self._explainer.fit[:i])])  # fits keep candidate order

    def best(self, tie_break: Literal["name", "order"] = "name") -> str | None:
        """The fitting node with the highest score; ties go to the smallest name (or the first candidate)."""
        if not self.fits:
            return None
        top = self.scores.max()
        tied = [n for n, s in zip(self.fits, self.scores) if s == top]
        return min(tied) if tie_break == "name" else tied[0]

    def placement(self, node: str) -> Placement:
        """The GPUs the pod gets on a fitting node."""
        i = self._fitting(node)
        return self._explainer.placement(i, node, self._score_at(i))

    def misfit_codes(self) -> tuple[list[str], np.ndarray]:
        """The known candidate nodes that do not fit and each one's misfit code (:func:`misfit_category` names it)."""
        codes = self._all_codes()
        if not len(codes):
            return [], codes
        misfits = np.flatnonzero(~self._explainer.fit)
        return [self._explainer.names[i] for i in misfits.tolist()], codes[misfits]

    @property
    def fit_mask(self) -> np.ndarray:
        """Per evaluated candidate (those with an inventory, in candidate order): whether it fits."""
        return self._explainer.fit

    def outcome(self) -> tuple[np.ndarray, np.ndarray]:
        """:attr:`fit_mask`, and each evaluated candidate's misfit code (``FIT`` where it fits;
        :func:`misfit_category` names the others)."""
        codes = self._all_codes()
        if not len(codes):
            codes = np.zeros(len(self._explainer.fit), dtype=np.int64)
        return self._explainer.fit, codes

    def evaluated(self, node: str) -> bool:
        """Whether this evaluation looked at ``node`` (a candidate with an inventory)."""
        return self._explainer.find(node) is not None

    def misfit(self, node: str) -> Misfit:
        """Every reason this node does not fit."""
        message = self.failed.get(node) or self.unresolvable.get(node)
        if message is None:
            raise KeyError(f"node {node} fits pod {self.pod.key}")
        return self._explainer.misfit(node, message, node in self.unresolvable)


def evaluate(ledger: Ledger, pod: PodRequest, nodes: Sequence[str] | Candidates, policy: Policy) -> Evaluation:
    """Filter and score ``nodes`` (names, or :class:`~extender.core.ledger.Candidates` whose rows were looked
    up before) for ``pod`` under ``policy`` (see module docstring)."""
    rows = None
    if isinstance(nodes, Candidates):
        rows = nodes.rows_for(ledger)
        nodes = nodes.names
    elif not isinstance(nodes, list):
        nodes = list(nodes)
    if not pod.wants_gpu and not pod.wants_host:
        return Evaluation(pod, list(nodes), np.zeros(len(nodes)), _Explainer(ledger, pod, [], None))
    absent: dict[str, tuple[str, str]] = {}
    known = nodes
    try:
        if rows is None:
            rows = np.fromiter(map(ledger._rows.__getitem__, nodes), dtype=np.int64, count=len(nodes))
    except KeyError:  # some candidates have no inventory
        rows = np.fromiter(map(ledger._rows.get, nodes, repeat(-1)), dtype=np.int64, count=len(nodes))
        for name, row in zip(nodes, rows.tolist()):
            if row < 0:
                problem = ledger.problem(name)
                absent[name] = (("excluded-node", f"fracgpu: node excluded: {problem}") if problem
                                else ("no-inventory", "fracgpu: node has no GPU inventory"))
        known = [n for n, r in zip(nodes, rows.tolist()) if r >= 0]
        rows = rows[rows >= 0]
    explainer = _Explainer(ledger, pod, known, rows, policy.reads)
    if not known:
        return Evaluation(pod, [], np.zeros(0), explainer, absent=absent)
    if not pod.wants_gpu:
        fit, codes, scores = explainer.host_only(policy)
    elif pod.single is not None:
        fit, codes, scores = explainer.vectorised(policy)
    else:
        fit, codes, scores = explainer.searched(policy)
    explainer.fit = fit
    where = fit.nonzero()[0]
    return Evaluation(pod, where, scores[where], explainer, codes, absent)


def _all_true(shape: int | tuple[int, ...]) -> np.ndarray:
    out = np.empty(shape, dtype=bool)  # np.ones' Python wrapper costs twice as much on small arrays
    out.fill(True)
    return out


def _at_least(mask: np.ndarray, k: int) -> np.ndarray:
    """Per node (row), whether at least ``k`` GPUs pass ``mask`` (for one GPU, whether any does: cheaper)."""
    return _any(mask) if k == 1 else np.add.reduce(mask, axis=1) >= k


_ROW_WORDS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}  # a row of that many booleans as one word


def _any(mask: np.ndarray) -> np.ndarray:
    """Per node (row), whether any GPU passes ``mask``: ``mask.any(axis=1)``. A contiguous row of 8 (or 1, 2, 4)
    booleans is read as one machine word, non-zero iff one is True: numpy reduces short rows one at a time,
    about 12x slower on a cluster of a thousand 8-GPU nodes."""
    word = _ROW_WORDS.get(mask.shape[1])
    if word is not None and mask.flags.c_contiguous:
        return mask.view(word)[:, 0].astype(bool)  # a cast to bool is "!= 0", without converting a 0 each time
    return np.logical_or.reduce(mask, axis=1)


def _bounded(scores: np.ndarray) -> np.ndarray:
    """Scores held to [0, 10], the policies' scale (np.clip's Python wrapper costs more than the two ufuncs on
    small arrays). Clipping 10 * x to [0, 10] gives bit for bit what 10 * (x clipped to [0, 1]) does."""
    return np.minimum(np.maximum(scores, 0.0), 10.0)


def misfit_counts(codes: np.ndarray) -> list[tuple[str, int]]:
    """(category, number of nodes) for misfit codes (FIT entries are not counted), in code order."""
    return category_counts(np.bincount(codes, minlength=1))  # codes are small non-negative integers


def category_counts(counts: np.ndarray) -> list[tuple[str, int]]:
    """:func:`misfit_counts` from the number of nodes per code (``counts[code]``; FIT is not counted)."""
    out: dict[str, int] = {}
    for code in np.flatnonzero(counts).tolist():
        if code != FIT:
            label = misfit_category(code)
            out[label] = out.get(label, 0) + int(counts[code])
    return list(out.items())


def misfit_category(code: int) -> str:
    """A short, bounded label per misfit code (a metrics label: no node names, no numbers)."""
    label = _CATEGORIES.get(code)
    return label if label is not None else _category(code)


def _category(code: int) -> str:
    fixed = {POOL: "pool", MODEL: "model", TOO_FEW: "too-few-gpus", TOO_BIG: "gpu-too-small", JOINT: "containers",
             HOST_CPU: "cpu", HOST_MEM: "host-memory", HOST_BOTH: "cpu+host-memory"}
    if code in fixed:
        return fixed[code]
    bits = code - RESOLVABLE
    return "+".join(label for bit, label in ((1, "units"), (2, "memory"), (4, "gpu-pool")) if bits & bit)


_CATEGORIES = {code: _category(code) for code in (POOL, MODEL, TOO_FEW, TOO_BIG, JOINT, HOST_CPU, HOST_MEM, HOST_BOTH,
                                                  *range(RESOLVABLE + 1, RESOLVABLE + 8))}


def place(ledger: Ledger, pod: PodRequest, node: str, policy: Policy) -> Placement | Misfit:
    """Choose GPUs for ``pod`` on ``node`` from the current ledger: the same evaluation Filter runs."""
    evaluation = evaluate(ledger, pod, [node], policy)
    if evaluation.fits:
        return evaluation.placement(node)
    return evaluation.misfit(node)


class _Messages:
    """Aggregatable misfit texts for one request."""

    def __init__(self, pod: PodRequest) -> None:
        self.pod = pod
        single = pod.single
        self.what = single.describe() if single else f"{len(pod.containers)} GPU containers"
        self.count = max((c.count for c in pod.containers), default=0)

    def text(self, code: int) -> str:
        pod = self.pod
        if code == POOL:
            return f"fracgpu: node is not in the pod's pool ({pod.pool or 'no pool'})"
        if code == MODEL:
            return f"fracgpu: no GPU of model {'|'.join(pod.models or ())}"
        if code == TOO_FEW:
            return f"fracgpu: fewer than {self.count} usable GPUs (healthy, allowed model, MIG off); needs {self.what}"
        if code == TOO_BIG:
            return f"fracgpu: GPUs too small (memory); needs {self.what}"
        if code == JOINT:
            return f"fracgpu: the pod's {self.what} do not fit together"
        if code in (HOST_CPU, HOST_MEM, HOST_BOTH):
            short = {HOST_CPU: "CPU", HOST_MEM: "memory", HOST_BOTH: "CPU and memory"}[code]
            return f"fracgpu: insufficient node {short}; needs {pod.cpu_milli}m CPU and {pod.memory_mib} MiB"
        bits = code - RESOLVABLE
        parts = [label for bit, label in ((1, "GPU units"), (2, "GPU memory"), (4, "GPUs free of other pools"))
                 if bits & bit]
        listed = parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"
        return f"fracgpu: insufficient {listed}; needs {self.what}"


class _Checks:
    """Per-GPU checks of one container against gathered rows, shape (nodes, GPUs).

    ``eligible`` (every check passes), ``units_ok`` and ``memory_ok`` are worked out at once; ``model_ok``,
    ``static`` (offered and of an allowed model), ``sized`` (and big enough) and ``pool_ok``, which only explain
    misfits, when first read, from arrays gathered at evaluation time.
    """

    _LAZY = frozenset({"model_ok", "static", "sized", "pool_ok"})

    def __init__(self, view: View, gpu_pool: np.ndarray | None, model: np.ndarray, pool: int, container: ContainerNeed,
                 pod_key: str, model_lut: np.ndarray | None, cpu_milli: int = 0) -> None:
        self.need = Need(container, pod_key, cpu_milli)
        self.memory = self.need.memory(view)
        self._offered = view.offered_units  # gathered now: what the lazy checks read
        self._mem_usable = view.mem_usable
        self._gpu_pool, self._model, self._pool, self._model_lut = gpu_pool, model, pool, model_lut
        self.pooled = gpu_pool is not None
        self._memory_given = container.memory_mib is not None
        self.units_ok = view.free_units >= container.units
        self.memory_ok = view.free_mem >= self.memory
        if model_lut is None and not self._memory_given and container.units > 0:
            # sized is "offered" here, and a GPU that offers nothing has free units <= 0 < units: units_ok says it
            eligible = self.units_ok & self.memory_ok
        else:
            eligible = self.sized & self.units_ok & self.memory_ok
        self.eligible = eligible if gpu_pool is None else eligible & self.pool_ok

    def __getattr__(self, name: str) -> np.ndarray:
        # called only while the attribute is not yet set
        if name not in _Checks._LAZY:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        if name == "pool_ok":
            gpu_pool = self._gpu_pool
            # gpu_pool is None when no pool is named anywhere (see _Explainer): every GPU is in the pod's
            value = _all_true(self.units_ok.shape) if gpu_pool is None else (gpu_pool == EMPTY_POOL) | (gpu_pool == self._pool)
        elif name == "model_ok":
            value = self._offered > 0 if self._model_lut is None else self._model_lut[self._model]
        elif name == "static":
            value = self._offered > 0 if self._model_lut is None else (self._offered > 0) & self.model_ok
        else:  # sized; memory derived from units (floor(units * usable / unitsPerGpu)) is never above usable
            value = self.static & (self.memory <= self._mem_usable) if self._memory_given else self.static
        setattr(self, name, value)
        return value

    def codes(self, node_pool_ok: np.ndarray | None, has_models: bool) -> np.ndarray:
        """Misfit code per node (``FIT`` where it fits); ``node_pool_ok`` None: every node is in the pod's pool."""
        k = self.need.count
        sized = self.sized
        # which checks blocked the GPUs that are otherwise usable (sized > ok: sized and not ok): every one is
        # named in the message
        bits = _any(sized > self.units_ok) + _any(sized > self.memory_ok) * 2
        if self.pooled:  # else no GPU is held by another pool
            bits += _any(sized > self.pool_ok) * 4
        # the first that holds wins: node pool, model, too few GPUs, too small GPUs, fit, else the blocking bits
        codes = RESOLVABLE + bits
        codes[_at_least(self.eligible, k)] = FIT
        if sized is not self.static:  # else "too small" is "too few", which follows
            codes[~_at_least(sized, k)] = TOO_BIG
        codes[~_at_least(self.static, k)] = TOO_FEW
        if has_models:
            codes[~_any(self.model_ok)] = MODEL
        if node_pool_ok is not None:
            codes[~node_pool_ok] = POOL
        return codes


class _Explainer:
    """Gathers the candidate rows once, runs either path, and keeps what placements and reasons need.

    Everything kept is a copy taken at evaluation time, so explaining later is not confused by later changes.
    """

    def __init__(self, ledger: Ledger, pod: PodRequest, names: list[str], rows: np.ndarray | None,
                 reads: tuple[str, ...] = ()) -> None:
        self.ledger = ledger
        self.pod = pod
        self.names = names
        self.rows = rows
        self.generation = ledger.generation
        self.fit = _NO_NODES  # set by evaluate once a path has run
        self._scans = 0
        if rows is None:
            return
        self.view = View(ledger, rows, _GATHER + reads if pod.wants_gpu else reads)
        self.model = ledger.model.take(rows, axis=0) if pod.models is not None else None
        self.pool = ledger.find_pool_id(pod.pool)  # a lookup: evaluating never adds to the ledger
        # With no pool named by any node or pod, every node and GPU is in the pod's (no) pool: nothing to compare.
        self.pooled = self.pool != NO_POOL or ledger.pools_named()
        self.gpu_pool = ledger.gpu_pool.take(rows, axis=0) if self.pooled else None
        if self.pooled:
            self.node_pool_ok = ledger.node_pool.take(rows) == self.pool
        self.pod_key = pod.uid or pod.key
        self.model_lut = None
        if pod.models is not None:
            names_ = ledger.model_names()
            self.model_lut = np.array([model_matches(pod.models, m) for m in names_] + [False], dtype=bool)
        self.searched_rows: dict[int, dict[int, tuple[int, ...]]] = {}
        self.checks: list[_Checks] = []

    def __getattr__(self, name: str) -> np.ndarray:
        # called only while the attribute is not yet set
        if name == "node_pool_ok":  # not pooled (see __init__): every node is in the pod's (no) pool
            self.node_pool_ok = _all_true(len(self.names))
            return self.node_pool_ok
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def pool_mask(self) -> np.ndarray | None:
        """Per node, whether it is in the pod's pool; None when no pool is named anywhere (all are)."""
        return self.node_pool_ok if self.pooled else None

    @cached_property
    def index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}

    def find(self, name: str) -> int | None:
        """The position of candidate ``name``, None if it was not evaluated. A short list is scanned, and a long
        one the first two times (the simulator asks twice): cheaper than building its index."""
        if len(self.names) <= 32 or ("index" not in self.__dict__ and self._scans < 2):
            self._scans += 1
            try:
                return self.names.index(name)
            except ValueError:
                return None
        return self.index.get(name)

    def inventory(self, i: int) -> NodeInventory:
        """The inventory of candidate ``i``, read only while the ledger is as it was at evaluation time."""
        if self.ledger.generation != self.generation:
            raise RuntimeError(
                f"evaluation of pod {self.pod.key} is stale: the ledger changed since; evaluate again"
            )
        return self.ledger.inventory_at(int(self.rows[i]))

    def _position(self, name: str) -> int:
        i = self.find(name)
        if i is None:
            raise KeyError(name)
        return i

    def _checks(self, container: ContainerNeed) -> _Checks:
        return _Checks(self.view, self.gpu_pool, self.model, self.pool, container, self.pod_key, self.model_lut,
                       self.pod.cpu_milli)

    def host_room(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Per node, whether its host CPU and its host memory can take the pod (the ledger's rooms are unlimited
        where the inventory does not carry host capacity); None when the pod asks for neither."""
        pod = self.pod
        if not pod.wants_host:
            return None
        ledger = self.ledger
        return self.view.cpu_room >= pod.cpu_milli, ledger.host_mem_room.take(self.rows) >= pod.memory_mib

    @staticmethod
    def host_codes(room: tuple[np.ndarray, np.ndarray] | None, nodes: int) -> np.ndarray:
        """FIT, or which host resource the node lacks, from :meth:`host_room`."""
        if room is None:
            return np.zeros(nodes, dtype=np.int64)
        cpu_ok, memory_ok = room
        return _HOST_CODES.take(cpu_ok + memory_ok * 2)

    def _with_host(self, fit: np.ndarray,
                   codes: Callable[[], np.ndarray]) -> tuple[np.ndarray, Callable[[], np.ndarray]]:
        """(fit, misfit codes when first asked for) from the GPU checks' ``fit`` and ``codes()``, and host room."""
        room = self.host_room()
        if room is not None:
            fit = fit & room[0] & room[1]

        def all_codes() -> np.ndarray:
            host = self.host_codes(room, len(fit))
            if np.count_nonzero(fit) == len(fit):
                return host  # all FIT
            gpu = codes()
            return np.where(gpu == FIT, host, gpu)

        return fit, all_codes

    # -------------------------------------------------------------- no GPU: host resources only (simulator)
    def host_only(self, policy: Policy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        room = self.host_room()
        cpu_ok, memory_ok = room  # a pod on this path asks for host resources
        fit = cpu_ok & memory_ok
        if not np.count_nonzero(fit):
            return fit, self.host_codes(room, len(fit)), np.zeros(len(fit))
        need = Need(_NO_GPU, self.pod_key, self.pod.cpu_milli)
        take = Take.nothing(len(fit), self.ledger.free_units.shape[1])
        return fit, lambda: self.host_codes(room, len(fit)), _bounded(policy.node_score(self.view, need, take))

    # -------------------------------------------------------------- single container, all nodes at once
    def vectorised(self, policy: Policy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        container = self.pod.single
        assert container is not None
        checks = self._checks(container)
        self.checks = [checks]
        fit = _at_least(checks.eligible, container.count)
        fit, codes = self._with_host(fit & self.node_pool_ok if self.pooled else fit,
                                     lambda: checks.codes(self.pool_mask, self.pod.models is not None))
        if not np.count_nonzero(fit):  # nothing to choose GPUs on or score (count_nonzero: cheaper than any())
            return fit, codes, np.zeros(len(fit))
        preference = policy.gpu_preference(self.view, checks.need, checks.memory)
        self.preference = np.where(checks.eligible, preference, -np.inf)
        k = container.count
        if k == 1:  # the best GPU of each node (a node that does not fit gets one too: its score is dropped)
            self.best_gpu = self.preference.argmax(axis=1)  # the first of the best: the order placement() uses
            take = Take.one_each(self.best_gpu, container.units, checks.memory)
        else:  # its k best GPUs
            taken = np.zeros(checks.memory.shape, dtype=bool)
            row_ix = np.nonzero(fit)[0][:, None]
            taken[row_ix, np.argsort(-self.preference[fit], axis=1, kind="stable")[:, :k]] = True
            take = Take(taken * container.units, np.where(taken, checks.memory, 0))
        return fit, codes, _bounded(policy.node_score(self.view, checks.need, take))

    # -------------------------------------------------------------- several containers, node by node
    def searched(self, policy: Policy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pod = self.pod
        self.checks = [self._checks(c) for c in pod.containers]
        has_models = pod.models is not None
        per_container = [c.codes(self.pool_mask, has_models) for c in self.checks]
        # A node is statically out if any container is; otherwise search it.
        codes = np.zeros(len(self.names), dtype=np.int64)
        for container_codes in per_container:
            bad = (container_codes != FIT) & (codes == FIT)
            codes[bad] = container_codes[bad]
        codes = self._with_host(codes == FIT, lambda: codes)[1]()
        preferences = [
            np.where(c.eligible, policy.gpu_preference(self.view, c.need, c.memory), -np.inf) for c in self.checks
        ]
        largest = max(range(len(pod.containers)), key=lambda i: (pod.containers[i].units * pod.containers[i].count, -i))
        scores = np.zeros(len(self.names))
        for i in np.nonzero(codes == FIT)[0]:
            found = _search_row(self, int(i), preferences)
            if found is None:
                codes[i] = JOINT
                continue
            self.searched_rows[int(i)] = found
            take_units, take_mem = self._take(int(i), found)
            sub = View(self.ledger, self.rows[i : i + 1])
            scores[i] = policy.node_score(sub, self.checks[largest].need, Take(take_units[None], take_mem[None]))[0]
        return codes == FIT, codes, _bounded(scores)

    def _take(self, i: int, found: dict[int, tuple[int, ...]]) -> tuple[np.ndarray, np.ndarray]:
        width = self.view.free_units.shape[1]
        take_units = np.zeros(width, dtype=np.int64)
        take_mem = np.zeros(width, dtype=np.int64)
        inventory = self.inventory(i)
        by_index = {g.index: pos for pos, g in enumerate(inventory.gpus)}
        for index, (units, memory) in self._shares(i, found).items():
            take_units[by_index[index]] = units
            take_mem[by_index[index]] = memory
        return take_units, take_mem

    def _shares(self, i: int, found: dict[int, tuple[int, ...]]) -> dict[int, tuple[int, int]]:
        return Assignment("", "", "", "", None, "", self._containers(i, found)).charges()

    def _containers(self, i: int, found: dict[int, tuple[int, ...]]) -> tuple[ContainerAssignment, ...]:
        gpus = self.inventory(i).gpus
        return tuple([
            ContainerAssignment(name=container.name, kind=container.kind, gpus=tuple([
                GpuShare(index=gpus[p].index, uuid=gpus[p].uuid, units=container.units,
                         memory_mib=checks.memory.item(i, p))  # a Python int
                for p in sorted(found[c_ix])
            ]))
            for c_ix, (container, checks) in enumerate(zip(self.pod.containers, self.checks))
        ])

    # -------------------------------------------------------------- answers after evaluation
    def placement(self, i: int, node: str, score: float) -> Placement:
        """The placement on candidate ``i`` (named ``node``), which fits."""
        if not self.pod.wants_gpu:
            return Placement(node=node, score=score, containers=())
        if self.pod.single is None:
            return Placement(node=node, score=score, containers=self._containers(i, self.searched_rows[i]))
        container = self.pod.single
        if container.count == 1:  # the GPU vectorised() took: highest preference, lowest position among equals
            best = self.best_gpu.item(i)
            checks = self.checks[0]
            if checks.eligible.item(i, best):  # (unless a policy ranked every usable GPU -inf)
                gpu = self.inventory(i).gpus[best]
                share = GpuShare(gpu.index, gpu.uuid, container.units, checks.memory.item(i, best))
                return Placement(node, score, (ContainerAssignment(container.name, container.kind, (share,)),))
        eligible = self.checks[0].eligible[i].nonzero()[0].tolist()
        preference = self.preference[i].tolist()  # Python floats: the same order, cheaper to compare
        inventory: NodeInventory = self.inventory(i)
        if container.count > 1 and inventory.links is not None:
            chosen = best_connected(link_graph(inventory.links), eligible, container.count,
                                    {p: preference[p] for p in eligible})
        else:
            chosen = tuple(sorted(eligible, key=lambda p: (-preference[p], p))[: container.count])
        return Placement(node=node, score=score, containers=self._containers(i, {0: chosen}))

    def misfit(self, node: str, message: str, unresolvable: bool) -> Misfit:
        if self.find(node) is None:
            problem = self.ledger.problem(node)
            reason = Reason(node, None, "inventory", "a GPU inventory", problem or "none published", True)
            return Misfit(node, message, True, (reason,))
        i = self._position(node)
        reasons: list[Reason] = []
        pod = self.pod
        if not self.node_pool_ok[i]:
            reasons.append(Reason(node, None, "pool", pod.pool or "no pool", self.inventory(i).pool or "no pool", True))
        if pod.wants_host:
            row = int(self.rows[i])
            ledger = self.ledger
            for what, asked, total, used in (("cpu (milli)", pod.cpu_milli, ledger.cpu_total, ledger.cpu_used),
                                             ("memoryMiB (node)", pod.memory_mib, ledger.host_mem_total,
                                              ledger.host_mem_used)):
                free = int(total[row] - used[row])
                if total[row] >= 0 and asked > free:
                    reasons.append(Reason(node, None, what, asked, free, False))
        for c_ix, checks in enumerate(self.checks):
            container = pod.containers[c_ix]
            label = "" if len(self.checks) == 1 else f"container {container.name}: "
            reasons.extend(self._gpu_reasons(node, i, checks, container, label))
            usable = int(checks.eligible[i].sum())
            if usable < container.count:
                reasons.append(Reason(node, None, f"{label}GPUs", container.count, usable,
                                      int(checks.sized[i].sum()) < container.count))
        if not reasons:
            reasons.append(Reason(node, None, "GPUs", "all GPU containers together", "no combination fits", False))
        return Misfit(node, message, unresolvable, tuple(reasons))

    def _gpu_reasons(self, node: str, i: int, checks: _Checks, container: ContainerNeed, label: str) -> list[Reason]:
        reasons = []
        view = self.view
        for pos, gpu in enumerate(self.inventory(i).gpus):
            def add(resource: str, asked: object, free: object, unresolvable: bool) -> None:
                reasons.append(Reason(node, gpu.index, label + resource, asked, free, unresolvable))

            if not gpu.healthy:
                add("health", "healthy", "unhealthy", True)
                continue
            if gpu.mig:
                add("mig", "MIG off", "MIG enabled", True)
                continue
            if not checks.model_ok[i, pos]:
                add("model", "|".join(self.pod.models or ()), gpu.model, True)
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
                holder = self.ledger.pool_name(int(self.gpu_pool[i, pos])) if self.gpu_pool[i, pos] >= 0 else "mixed"
                add("gpu-pool", self.pod.pool or "no pool", f"held by pool {holder or 'no pool'}", False)
        return reasons


def _search_row(ex: _Explainer, i: int, preferences: list[np.ndarray]) -> dict[int, tuple[int, ...]] | None:
    """Exact placement of every GPU container of the pod on candidate ``i``, phase by phase.

    Within a phase, containers are placed largest first, each trying GPU sets in policy order (best connected
    first when the node publishes links), backtracking when a later container cannot be placed. Sidecars keep
    the GPUs they got in the first phase they run in. Bounded by SEARCH_BUDGET steps: past it the node counts
    as a misfit, the same way in Filter and in Bind.
    """
    pod = ex.pod
    containers = pod.containers
    view = ex.view
    inventory = ex.inventory(i)
    graph = link_graph(inventory.links) if inventory.links is not None else None
    free_units = view.free_units[i].astype(np.int64)
    free_mem = view.free_mem[i].astype(np.int64)
    static = [c.sized[i] & c.pool_ok[i] for c in ex.checks]
    memory = [c.memory[i] for c in ex.checks]
    budget = [SEARCH_BUDGET]
    fixed: dict[int, tuple[int, ...]] = {}

    def subsets(c_ix: int, candidates: list[int]) -> list[tuple[int, ...]]:
        k = containers[c_ix].count
        preference = preferences[c_ix][i]
        if k == 1:
            return [(p,) for p in sorted(candidates, key=lambda p: (-preference[p], p))]
        if graph is not None:
            return sorted(combinations(candidates, k),
                          key=lambda s: (tuple(-x for x in connectivity(graph, s)), -sum(preference[p] for p in s), s))
        return sorted(combinations(candidates, k), key=lambda s: (-sum(preference[p] for p in s), s))

    def place(todo: list[int], units: np.ndarray, mem: np.ndarray) -> dict[int, tuple[int, ...]] | None:
        if not todo:
            return {}
        c_ix, rest = todo[0], todo[1:]
        container = containers[c_ix]
        ok = static[c_ix] & (units >= container.units) & (mem >= memory[c_ix])
        candidates = np.nonzero(ok)[0].tolist()
        if len(candidates) < container.count:
            return None
        for subset in subsets(c_ix, candidates):
            budget[0] -= 1
            if budget[0] < 0:
                return None
            idx = list(subset)
            units[idx] -= container.units
            mem[idx] -= memory[c_ix][idx]
            found = place(rest, units, mem)
            units[idx] += container.units
            mem[idx] += memory[c_ix][idx]
            if found is not None:
                found[c_ix] = subset
                return found
        return None

    for phase in pod.phases:
        units = free_units.copy()
        mem = free_mem.copy()
        for c_ix in phase:
            if c_ix in fixed:
                idx = list(fixed[c_ix])
                units[idx] -= containers[c_ix].units
                mem[idx] -= memory[c_ix][idx]
        todo = sorted((c for c in phase if c not in fixed),
                      key=lambda c: (-containers[c].units * containers[c].count, -containers[c].count, c))
        found = place(todo, units, mem)
        if found is None:
            return None
        fixed.update(found)
    return fixed
