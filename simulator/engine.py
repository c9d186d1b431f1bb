"""The discrete-event engine and the simulated cluster, over ``extender/core``'s own ledger, placement and policies.

* :class:`EventQueue`: a heap of ``(time, priority, sequence, event)``; time is simulated seconds (no wall
  clock), ``priority`` orders events at the same instant (completions free capacity before arrivals are
  placed, and retries come last), ``sequence`` keeps insertion order among equals.
* :class:`SimCluster`: a :class:`~extender.core.Ledger` of the cluster's nodes; :meth:`SimCluster.place` runs
  :func:`~extender.core.evaluate` over every node, picks the best score with the configured tie-break, takes the
  GPUs :meth:`~extender.core.evaluation.Evaluation.placement` chose and reserves them: the same steps as the
  extender's Filter, Prioritize and Bind. For ``node_local`` policies it keeps, per pod shape, every node's last
  answer and the ledger generation when the shape was last evaluated, and evaluates again only the nodes whose
  row changed since (their row version is newer), with the best unchanged node among them so that the chosen
  node's GPUs come from that one call (``cache=False`` evaluates every node at every pod; both decide alike, as
  a test checks for every policy).

Tie-break (reported with every result, since published numbers depend on it):

* ``random`` (default): scores are first cut to ``resolution`` (0.1 on the 0..10 scale is the published
  simulator's integer 0..100 score; not for policies whose ``integer_scores`` is false, the random policy),
  then one of the tied nodes is drawn with the run's seeded RNG, as kube-scheduler's ``selectHost`` does;
* ``first``: the first tied node in cluster order; ``name``: the smallest name.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass
from typing import Any, Iterable, Literal

import numpy as np

from extender.core import Ledger, evaluate
from extender.core.checks import CODES, MisfitCode, category_counts
from extender.core.evaluation import Evaluation
from extender.core.inventory import NodeInventory
from extender.core.policies import Policy

from .trace import SETTINGS, SimPod

TieBreak = Literal["random", "first", "name"]
COMPLETE, ARRIVE, RETRY = 0, 1, 2  # event priorities at the same instant


class EventQueue:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int, Any]] = []  # plain tuples: compared in C, the sequence decides
        self._sequence = 0
        self.now = 0.0

    def push(self, time: float, priority: int, event: Any) -> None:
        if time < self.now:
            raise ValueError(f"event at {time} is before now ({self.now})")
        heapq.heappush(self._heap, (time, priority, self._sequence, event))
        self._sequence += 1

    def pop(self) -> tuple[float, int, Any]:
        time, priority, _, event = heapq.heappop(self._heap)
        self.now = time
        return time, priority, event

    def __len__(self) -> int:
        return len(self._heap)


class _ShapeEntry:
    """One pod shape's last answer per node. Every node was answered again when the shape was last evaluated
    if its row had changed, so all answers hold as of ``generation`` (the ledger's then): a node whose row version
    is above it has changed since."""

    def __init__(self, nodes: int) -> None:
        self.generation = -1
        self.scores = np.full(nodes, -np.inf)  # the score as compared (cut); -inf where the node does not fit
        # misfit code per node (FIT where it fits) and the row version it was worked out at: codes are worked out
        # only when a pod of the shape fits nowhere (the failure's reason), for the nodes whose code is stale
        self.code = np.full(nodes, MisfitCode.FIT.value, dtype=np.int64)
        self.code_versions = np.full(nodes, -1, dtype=np.int64)
        self.counts = np.bincount(self.code, minlength=CODES)  # nodes per code, kept with ``code``
        self._reason: str | None = None  # the commonest misfit of ``counts``, while they have not changed

    def set_codes(self, positions: np.ndarray, codes: np.ndarray, versions: np.ndarray) -> None:
        """The codes of the nodes at ``positions`` (distinct), worked out at row ``versions``."""
        change = np.bincount(codes, minlength=CODES) - np.bincount(self.code[positions], minlength=CODES)
        if np.count_nonzero(change):  # often a node's code is what it was
            self.counts += change
            self._reason = None
        self.code[positions] = codes
        self.code_versions[positions] = versions

    def misfit_counts(self) -> dict[str, int]:
        return dict(category_counts(self.counts))

    def reason(self) -> str:
        """:func:`_commonest` of the tally, worked out again only after the tally changed."""
        if self._reason is None:
            self._reason = _commonest(self.misfit_counts())
        return self._reason


def _commonest(counts: dict[str, int]) -> str:
    """The category of the commonest misfit (ties: the smallest label); ``no-nodes`` when there is none."""
    return max(sorted(counts), key=counts.get) if counts else "no-nodes"


@dataclass(frozen=True, slots=True)
class Outcome:
    node: str | None
    reason: str | None = None  # why it did not fit: the category of the commonest misfit


class SimCluster:
    def __init__(self, nodes: Iterable[NodeInventory], policy: Policy, *, rng: random.Random,
                 tie_break: TieBreak = "random", resolution: float = 0.1, cache: bool = True) -> None:
        if tie_break not in ("random", "first", "name"):
            raise ValueError(f"tie_break must be random, first or name, not {tie_break!r}")
        if resolution < 0:
            raise ValueError(f"resolution must be >= 0, not {resolution}")
        self.nodes = list(nodes)
        self.ledger = Ledger(SETTINGS, rows=max(len(self.nodes), 1))  # sized once: no growing while loading
        for node in self.nodes:
            self.ledger.upsert_node(node)
        self.names = [n.name for n in self.nodes]
        self.policy = policy
        self.rng = rng
        self.tie_break = tie_break
        self.resolution = resolution
        self.gpu_capacity = sum(len(n.gpus) for n in self.nodes) * SETTINGS.units_per_gpu
        self.allocated = 0  # GPU units held by placed pods
        self._held: dict[str, int] = {}
        self._position = {name: i for i, name in enumerate(self.names)}
        if len(self._position) != len(self.names):
            raise ValueError("node names must be unique")
        self._candidates = self.ledger.candidates(self.names)  # names and rows, looked up once
        self._rows = self._candidates.rows
        # a fresh ledger gives the nodes rows 0..n-1 in order: then a slice reads them without copying
        in_order = np.array_equal(self._rows, np.arange(len(self._rows)))
        self._row_index: slice | np.ndarray = slice(0, len(self._rows)) if in_order else self._rows
        self.cache = cache
        self._shapes: dict[tuple, _ShapeEntry] = {}

    def place(self, pod: SimPod, uid: str) -> Outcome:
        request = pod.request(uid)
        if self.cache and self.policy.node_local:
            node, evaluation, reason = self._decide_cached(pod, request)
        else:
            node, evaluation, reason = self._decide(request)
        if node is None:
            return Outcome(None, reason)
        placement = evaluation.placement(node)
        self.ledger.reserve(placement.assignment(request, self.policy.name))
        self.ledger.commit(uid)
        self._held[uid] = pod.total_milli
        self.allocated += pod.total_milli
        return Outcome(node)

    def _decide(self, request) -> tuple[str | None, Evaluation, str | None]:
        evaluation = evaluate(self.ledger, request, self._candidates, self.policy)
        if not evaluation.fits:
            return None, evaluation, _commonest(evaluation.rejections)
        return self._choose(evaluation.fits, evaluation.scores), evaluation, None

    def _decide_cached(self, pod: SimPod, request) -> tuple[str | None, Evaluation, str | None]:
        """As :meth:`_decide`, re-evaluating only the nodes whose ledger row changed since this pod shape was
        last evaluated (valid for ``node_local`` policies: a node's answer depends on its row and the shape)."""
        entry = self._shapes.get(pod.shape_key)
        if entry is None:
            entry = self._shapes[pod.shape_key] = _ShapeEntry(len(self.names))
        versions = self.ledger.row_version[self._row_index]
        stale = (versions > entry.generation).nonzero()[0]
        evaluation = None
        scores = entry.scores
        if len(stale):
            # The best node that did not change is evaluated with those that did: when it wins, the GPUs come
            # from this one evaluation (its answer equals the kept one, its row being unchanged).
            scores[stale] = -np.inf  # answered again below
            top = int(scores.argmax())
            if scores[top] > -np.inf:
                stale = np.concatenate((stale, (top,)))
            evaluation = evaluate(self.ledger, request, self._candidates.subset(stale), self.policy)
            scores[stale[evaluation.fit_mask]] = self._cut(evaluation.scores)  # every node has an inventory
            entry.generation = self.ledger.generation
        first = int(scores.argmax())
        best = scores[first]
        if best == -np.inf:
            return None, evaluation, self._reason(entry, request, versions, stale, evaluation)
        node = self.names[first] if self.tie_break == "first" else self._tied(np.flatnonzero(scores == best))
        # with "first", the winner is a changed node or the best unchanged one, both evaluated above; another
        # tie-break may pick an unchanged node that ties with it
        if evaluation is None or (self.tie_break != "first" and not evaluation.evaluated(node)):
            evaluation = evaluate(self.ledger, request, [node], self.policy)
        return node, evaluation, None

    def _reason(self, entry: _ShapeEntry, request, versions: np.ndarray, stale: np.ndarray,
                evaluation: Evaluation | None) -> str:
        """Why a pod fits on no node: the commonest misfit. Codes not known for a node's current row are worked
        out now; every node's row is as it was when its answer was kept, so evaluating it again gives that answer."""
        if evaluation is not None:
            entry.set_codes(stale, evaluation.outcome()[1], versions[stale])
        unknown = np.flatnonzero(entry.code_versions != versions)
        if len(unknown):
            again = evaluate(self.ledger, request, self._candidates.subset(unknown), self.policy)
            entry.set_codes(unknown, again.outcome()[1], versions[unknown])
        return entry.reason()

    def remove(self, uid: str) -> None:
        if self.ledger.release(uid) is not None:
            self.allocated -= self._held.pop(uid)

    def _cut(self, scores: np.ndarray) -> np.ndarray:
        if self.resolution and self.policy.integer_scores:
            return np.floor(scores / self.resolution + 1e-9)
        return scores

    def _choose(self, fits: list[str], scores: np.ndarray) -> str:
        positions = np.fromiter((self._position[n] for n in fits), dtype=np.int64, count=len(fits))
        scores = self._cut(scores)
        return self._tied(positions[scores == scores.max()])

    def _tied(self, tied: np.ndarray) -> str:
        """One of the fitting nodes with the best score (positions in cluster order, ascending), by ``tie_break``."""
        if len(tied) == 1 or self.tie_break == "first":
            return self.names[int(tied[0])]
        if self.tie_break == "name":
            return min(self.names[i] for i in tied.tolist())
        return self.names[int(tied[self.rng.randrange(len(tied))])]

    def free_units_by_node(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(free units per GPU (nodes, GPUs), free CPU per node (``UNLIMITED`` where not accounted), rows) for
        metrics."""
        rows = self._rows
        free = np.where(self.ledger.offered_units[rows] > 0, self.ledger.free_units[rows], 0)
        return free, self.ledger.cpu_room[rows], rows


def percent(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole else math.nan
