"""Exact, bounded placement of a pod's several GPU containers on one node.

Phase by phase (see :func:`extender.core.resources.phases_of`): within a phase, containers are placed largest
first, each trying GPU sets in policy order (best connected first when the node publishes links), backtracking
when a later container cannot be placed. Sidecars keep the GPUs they got in the first phase they run in.

Bounded by a :class:`Budget` of steps: each GPU set tried is a step, and so is each set listed to be sorted.
Past the budget the node counts as a misfit, the same way in Filter and in Bind (both run this search on the
same state), so "Filter fits" still implies "Bind finds GPUs". The search keeps its own stack: a pod of many
containers does not recurse.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from math import comb
from typing import Iterator

import numpy as np

from .topology import Weights, connectivity

SEARCH_BUDGET = 20_000  # steps per node
SORTED_SETS = 2_000  # up to this many GPU sets of one container are sorted by connectivity; beyond, taken in order


class Budget:
    def __init__(self, steps: int = SEARCH_BUDGET) -> None:
        self.left = steps

    def spend(self, steps: int = 1) -> bool:
        """Take ``steps``; False once the budget is gone."""
        self.left -= steps
        return self.left >= 0


@dataclass(frozen=True, slots=True)
class ContainerRow:
    """One GPU container as the search sees it on one node: per GPU position, whether it may take the
    container at all (``usable``), the MiB it needs there and the policy's preference."""

    units: int
    count: int
    usable: np.ndarray
    memory: np.ndarray
    preference: np.ndarray


def search(free_units: np.ndarray, free_mem: np.ndarray, containers: list[ContainerRow],
           phases: tuple[tuple[int, ...], ...], weights: Weights | None,
           budget: Budget) -> dict[int, tuple[int, ...]] | None:
    """GPU positions per container (by its position in ``containers``), or None if they do not fit together
    (or the budget ran out)."""
    fixed: dict[int, tuple[int, ...]] = {}
    for phase in phases:
        units = free_units.astype(np.int64)
        mem = free_mem.astype(np.int64)
        for c_ix in phase:
            if c_ix in fixed:  # a sidecar placed in an earlier phase
                _charge(containers[c_ix], fixed[c_ix], units, mem, -1)
        todo = sorted((c for c in phase if c not in fixed),
                      key=lambda c: (-containers[c].units * containers[c].count, -containers[c].count, c))
        found = _place_phase(todo, containers, units, mem, weights, budget)
        if found is None:
            return None
        fixed.update(found)
    return fixed


def _place_phase(todo: list[int], containers: list[ContainerRow], units: np.ndarray, mem: np.ndarray,
                 weights: Weights | None, budget: Budget) -> dict[int, tuple[int, ...]] | None:
    """Depth-first over ``todo``'s containers with an explicit stack; ``units`` and ``mem`` are what is free,
    charged while a set is tried and given back on backtracking."""
    if not todo:
        return {}
    chosen: list[tuple[int, ...] | None] = [None] * len(todo)
    sets: list[Iterator[tuple[int, ...]]] = [iter(())] * len(todo)
    sets[0] = _gpu_sets(containers[todo[0]], units, mem, weights, budget)
    depth = 0
    while depth >= 0:
        container = containers[todo[depth]]
        if chosen[depth] is not None:  # the set tried last at this depth did not lead to a placement
            _charge(container, chosen[depth], units, mem, +1)
            chosen[depth] = None
        subset = next(sets[depth], None)
        if subset is None:
            depth -= 1
            continue
        if not budget.spend():
            return None
        _charge(container, subset, units, mem, -1)
        chosen[depth] = subset
        if depth + 1 == len(todo):
            return {c_ix: subset for c_ix, subset in zip(todo, chosen)}
        depth += 1
        sets[depth] = _gpu_sets(containers[todo[depth]], units, mem, weights, budget)
    return None


def _charge(container: ContainerRow, subset: tuple[int, ...], units: np.ndarray, mem: np.ndarray,
            sign: int) -> None:
    idx = list(subset)
    units[idx] += sign * container.units
    mem[idx] += sign * container.memory[idx]


def _gpu_sets(container: ContainerRow, units: np.ndarray, mem: np.ndarray, weights: Weights | None,
              budget: Budget) -> Iterator[tuple[int, ...]]:
    """The GPU sets that can take ``container`` now, in policy order."""
    ok = container.usable & (units >= container.units) & (mem >= container.memory)
    candidates = np.flatnonzero(ok).tolist()
    k = container.count
    preference = container.preference
    if len(candidates) < k:
        return iter(())
    if k == 1:
        return iter([(p,) for p in sorted(candidates, key=lambda p: (-preference[p], p))])
    by_preference = sorted(candidates, key=lambda p: (-preference[p], p))
    listed = comb(len(candidates), k)
    if listed > SORTED_SETS or not budget.spend(listed):
        # too many to list and sort: take them in order of preference (the first set is the k best GPUs)
        return (tuple(sorted(s)) for s in combinations(by_preference, k))
    if weights is not None:
        return iter(sorted(combinations(candidates, k), key=lambda s: (
            tuple(-x for x in connectivity(weights, s)), -sum(preference[p] for p in s), s)))
    return iter(sorted(combinations(candidates, k), key=lambda s: (-sum(preference[p] for p in s), s)))
