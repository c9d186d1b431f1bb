"""Filter, score and choose GPUs: one evaluation that Filter, Prioritize, Bind and the simulator all use.

``evaluate(ledger, pod, nodes, policy)`` answers, for every candidate node, either a fit with a score in
[0, 10] and the GPUs the pod would get (:mod:`extender.core.paths`), or a misfit with a message
(:mod:`extender.core.reasons`). Misfits with a static code (pool, model, too few or too small GPUs, no
inventory) are those preemption cannot cure. What only explains misfits (their codes, messages and reasons) is
worked out when first read, from what the evaluation read: a simulated pod that fits somewhere never needs it.

``place`` is ``evaluate`` on one node, so "Filter says it fits" ⇔ "Bind finds a placement" on the same state
(invariant 3) holds by construction, and property tests check it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from .assignment import Assignment, ContainerAssignment
from .checks import MisfitCode, is_static, misfit_counts
from .lazy import lazy
from .ledger import Candidates, Ledger
from .paths import CandidateRows, HostOnly, OneContainer, Path, SeveralContainers
from .policies import MAX_SCORE, Policy
from .reasons import Misfit, misfit_message, no_inventory, node_reasons
from .resources import PodRequest


@dataclass(frozen=True, slots=True)
class Placement:
    node: str
    score: float
    containers: tuple[ContainerAssignment, ...]

    def assignment(self, pod: PodRequest, policy: str) -> Assignment:
        return Assignment(pod_uid=pod.uid, namespace=pod.namespace, name=pod.name, node=self.node, pool=pod.pool,
                          policy=policy, containers=self.containers, cpu_milli=pod.cpu_milli,
                          memory_mib=pod.memory_mib)


class _Everywhere(Path):
    """A pod that asks for neither GPUs nor host resources fits every candidate, inventory or not."""

    def __init__(self, nodes: int) -> None:
        self.fit = np.ones(nodes, dtype=bool)
        self.scores = np.zeros(nodes)
        self.checks = []
        self.codes = lambda: np.zeros(nodes, dtype=np.int64)


class Evaluation:
    """The answer for one pod over a list of candidate nodes (see the module docstring).

    ``fits`` names the fitting nodes in candidate order and ``scores`` holds their scores in that order;
    ``failed`` and ``unresolvable`` map each misfit to its message; ``rejections`` counts misfits by category
    (for metrics).
    """

    def __init__(self, ledger: Ledger, pod: PodRequest, names: list[str], path: Path, *,
                 candidates: CandidateRows | None = None, absent: dict[str, tuple[str, str]] | None = None) -> None:
        self.ledger = ledger
        self.pod = pod
        self._names = names  # the evaluated candidates: those with an inventory
        self._path = path
        self._candidates = candidates
        self._absent = absent or {}  # candidate without an inventory -> (category, message)
        self.fit_mask = path.fit  # per evaluated candidate, in candidate order: whether it fits
        self._scores = np.minimum(np.maximum(path.scores, 0.0), MAX_SCORE)  # policies need not clip
        self.scores = self._scores[path.fit]

    @lazy
    def fits(self) -> list[str]:
        return [self._names[i] for i in self.fit_mask.nonzero()[0].tolist()]

    @lazy
    def codes(self) -> np.ndarray:
        """Each evaluated candidate's misfit code (``FIT`` where it fits)."""
        return self._path.codes()

    @lazy
    def rejections(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for label, _ in self._absent.values():
            out[label] = out.get(label, 0) + 1
        for label, count in misfit_counts(self.codes[~self.fit_mask]):
            out[label] = out.get(label, 0) + count
        return out

    @lazy
    def _messages(self) -> tuple[dict[str, str], dict[str, str]]:
        failed: dict[str, str] = {}
        unresolvable = {name: message for name, (_, message) in self._absent.items()}
        names, codes = self.misfit_codes()
        texts = {code: misfit_message(code, self.pod) for code in set(codes.tolist())}
        for name, code in zip(names, codes.tolist()):
            (unresolvable if is_static(code) else failed)[name] = texts[code]
        return failed, unresolvable

    @property
    def failed(self) -> dict[str, str]:
        """Nodes that do not fit now but could once pods leave (capacity), each with its message."""
        return self._messages[0]

    @property
    def unresolvable(self) -> dict[str, str]:
        """Nodes that cannot take the pod whatever leaves (pool, model, size, no inventory), with messages."""
        return self._messages[1]

    def _position(self, node: str) -> int | None:
        try:
            return self._names.index(node)
        except ValueError:
            return None

    def _fitting(self, node: str) -> int:
        """The candidate position of a fitting ``node``; KeyError if it was not evaluated or does not fit."""
        i = self._position(node)
        if i is None or not self.fit_mask[i]:
            raise KeyError(f"node {node} does not fit pod {self.pod.key}")
        return i

    def score_of(self, node: str) -> float:
        return float(self._scores[self._fitting(node)])

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
        return Placement(node=node, score=float(self._scores[i]), containers=self._path.containers(i))

    def misfit_codes(self) -> tuple[list[str], np.ndarray]:
        """The evaluated candidates that do not fit and each one's misfit code."""
        misfits = (~self.fit_mask).nonzero()[0]
        return [self._names[i] for i in misfits.tolist()], self.codes[misfits]

    def outcome(self) -> tuple[np.ndarray, np.ndarray]:
        """:attr:`fit_mask`, and each evaluated candidate's misfit code (``FIT`` where it fits)."""
        return self.fit_mask, self.codes

    def evaluated(self, node: str) -> bool:
        """Whether this evaluation looked at ``node`` (a candidate with an inventory)."""
        return self._position(node) is not None

    def misfit(self, node: str) -> Misfit:
        """Every reason this node does not fit."""
        message = self.failed.get(node) or self.unresolvable.get(node)
        if message is None:
            raise KeyError(f"node {node} fits pod {self.pod.key}")
        i = self._position(node)
        candidates = self._candidates
        if i is None or candidates is None:
            return no_inventory(node, message, self.ledger.problem(node))
        reasons = node_reasons(self.ledger, self.pod, node, int(candidates.rows[i]), i, candidates.scope,
                               self._path.checks)
        return Misfit(node, message, node in self.unresolvable, tuple(reasons))


def evaluate(ledger: Ledger, pod: PodRequest, nodes: Sequence[str] | Candidates, policy: Policy) -> Evaluation:
    """Filter and score ``nodes`` (names, or :class:`~extender.core.ledger.Candidates` whose rows were looked
    up before) for ``pod`` under ``policy`` (see module docstring)."""
    rows = None
    if isinstance(nodes, Candidates):
        rows = nodes.rows_for(ledger)
        nodes = nodes.names
    else:
        nodes = list(nodes)
    if not pod.wants_gpu and not pod.wants_host:
        return Evaluation(ledger, pod, nodes, _Everywhere(len(nodes)))
    absent: dict[str, tuple[str, str]] = {}
    if rows is None:  # (rows kept in Candidates are all known: Ledger.candidates refuses others)
        rows = ledger.rows_of(nodes)
        known = rows >= 0
        if not known.all():
            for name in (n for n, k in zip(nodes, known.tolist()) if not k):
                problem = ledger.problem(name)
                absent[name] = (("excluded-node", f"fracgpu: node excluded: {problem}") if problem
                                else ("no-inventory", "fracgpu: node has no GPU inventory"))
            nodes = [n for n, k in zip(nodes, known.tolist()) if k]
            rows = rows[known]
    if not nodes:
        return Evaluation(ledger, pod, nodes, _Everywhere(0), absent=absent)
    candidates = CandidateRows(ledger, pod, nodes, rows)
    path: Path
    if not pod.wants_gpu:
        path = HostOnly(candidates, policy)
    elif pod.single is not None:
        path = OneContainer(candidates, policy)
    else:
        path = SeveralContainers(candidates, policy)
    return Evaluation(ledger, pod, nodes, path, candidates=candidates, absent=absent)


def place(ledger: Ledger, pod: PodRequest, node: str, policy: Policy) -> Placement | Misfit:
    """Choose GPUs for ``pod`` on ``node`` from the current ledger: the same evaluation Filter runs."""
    evaluation = evaluate(ledger, pod, [node], policy)
    if evaluation.fits:
        return evaluation.placement(node)
    return evaluation.misfit(node)


__all__ = ["Evaluation", "Misfit", "MisfitCode", "Placement", "evaluate", "place"]
