"""The three ways of evaluating a pod on its candidate nodes (see :mod:`extender.core.evaluation`).

* :class:`OneContainer`: a pod with one GPU container (nearly all pods), all candidates at once with numpy: a
  node fits iff at least ``count`` of its GPUs each pass every check (:mod:`extender.core.checks`);
* :class:`SeveralContainers`: several GPU containers (or init phases), static checks for all candidates, then
  an exact, bounded search node by node (:mod:`extender.core.search`);
* :class:`HostOnly`: a pod without GPUs (the simulator's CPU-only pods), host room alone.

Each gives ``fit`` and ``scores`` per evaluated candidate, the misfit codes when asked for, the checks of each
GPU container (for reasons) and the GPUs a fitting candidate would give each container.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .assignment import ContainerAssignment, GpuShare, phase_charges
from .checks import GpuChecks, MisfitCode, PodScope, at_least, host_codes, host_room
from .inventory import GpuInfo, NodeInventory
from .ledger import NO_POOL, Ledger
from .policies import GpuTake, Need, NoTake, OneGpuTake, Policy, View
from .resources import ContainerNeed, PodRequest, model_matches
from .search import Budget, ContainerRow, search
from .topology import best_connected, link_weights

_NO_GPU = ContainerNeed("host", "app", 0, 0, 0)  # what policies see of a pod that asks for host resources only


class CandidateRows:
    """The evaluated candidates (those with an inventory) as one evaluation read them: names, ledger rows, the
    view of their rows and the pod's pool and model scope."""

    def __init__(self, ledger: Ledger, pod: PodRequest, names: list[str], rows: np.ndarray) -> None:
        self.ledger = ledger
        self.pod = pod
        self.names = names
        self.rows = rows
        self.generation = ledger.generation
        self.view = View(ledger, rows)
        pool = ledger.find_pool_id(pod.pool)  # a lookup: evaluating never adds to the ledger
        lut = None
        if pod.models is not None:
            lut = np.array([model_matches(pod.models, m) for m in ledger.model_names()] + [False], dtype=bool)
        self.scope = PodScope(self.view, pool, pool != NO_POOL or ledger.pools_named(), pod.models, lut)
        self.pod_key = pod.uid or pod.key

    def inventory(self, i: int) -> NodeInventory:
        """The inventory of candidate ``i``, read only while the ledger is as it was at evaluation time."""
        if self.ledger.generation != self.generation:
            raise RuntimeError(f"evaluation of pod {self.pod.key} is stale: the ledger changed since; evaluate again")
        return self.ledger.inventory_at(int(self.rows[i]))

    def checks(self, container: ContainerNeed) -> GpuChecks:
        return GpuChecks(self.view, self.scope, container, Need(container, self.pod_key, self.pod.cpu_milli))

    def with_host(self, fit: np.ndarray, gpu_codes: Callable[[], np.ndarray]) -> tuple[np.ndarray, Callable]:
        """(fit, misfit codes when asked for) from the GPU checks' ``fit`` and ``gpu_codes()``, and host room."""
        room = host_room(self.view, self.pod.cpu_milli, self.pod.memory_mib)
        if room is not None:
            fit = fit & room[0] & room[1]

        def codes() -> np.ndarray:
            host = host_codes(room, len(fit))
            if fit.all():
                return host
            gpu = gpu_codes()
            return np.where(gpu == MisfitCode.FIT.value, host, gpu)

        return fit, codes


class Path:
    """One way of evaluating (see the module docstring)."""

    fit: np.ndarray
    scores: np.ndarray
    checks: list[GpuChecks]
    codes: Callable[[], np.ndarray]

    def containers(self, i: int) -> tuple[ContainerAssignment, ...]:
        return ()


class HostOnly(Path):
    def __init__(self, candidates: CandidateRows, policy: Policy) -> None:
        view, pod = candidates.view, candidates.pod
        room = host_room(view, pod.cpu_milli, pod.memory_mib)
        assert room is not None  # a pod on this path asks for host resources
        self.checks = []
        self.fit = room[0] & room[1]
        self.codes = lambda: host_codes(room, len(self.fit))
        self.scores = np.zeros(len(self.fit))
        if self.fit.any():
            need = Need(_NO_GPU, candidates.pod_key, pod.cpu_milli)
            self.scores = policy.node_score(view, need, NoTake(len(self.fit), view.free_units.shape[1]))


class OneContainer(Path):
    """A single GPU container, all candidates at once."""

    def __init__(self, candidates: CandidateRows, policy: Policy) -> None:
        self.candidates = candidates
        container = candidates.pod.single
        assert container is not None
        checks = candidates.checks(container)
        self.checks = [checks]
        fit = at_least(checks.eligible, container.count)
        if candidates.scope.node_pool_ok is not None:
            fit = fit & candidates.scope.node_pool_ok
        self.fit, self.codes = candidates.with_host(fit, checks.codes)
        self.scores = np.zeros(len(self.fit))
        if not self.fit.any():  # nothing to choose GPUs on or score
            return
        view = candidates.view
        preference = np.where(checks.eligible, policy.gpu_preference(view, checks.need, checks.memory), -np.inf)
        self.preference = preference
        k = container.count
        if k == 1:  # the best GPU of each node (a node that does not fit gets one too: its score is dropped)
            self.best_gpu = preference.argmax(axis=1)  # the first of the best: the order containers() uses
            take = OneGpuTake(self.best_gpu, container.units, checks.memory)
        else:  # its k best GPUs
            taken = np.zeros(checks.memory.shape, dtype=bool)
            rows = np.flatnonzero(self.fit)[:, None]
            taken[rows, np.argsort(-preference[self.fit], axis=1, kind="stable")[:, :k]] = True
            take = GpuTake(taken * container.units, np.where(taken, checks.memory, 0))
        self.scores = policy.node_score(view, checks.need, take)

    def containers(self, i: int) -> tuple[ContainerAssignment, ...]:
        container = self.candidates.pod.single
        checks = self.checks[0]
        gpus = self.candidates.inventory(i).gpus
        if container.count == 1:  # the GPU the scoring took: highest preference, lowest position among equals
            chosen = (self.best_gpu.item(i),)
            assert checks.eligible.item(i, chosen[0])  # (a policy ranking every usable GPU -inf would break it)
        else:
            eligible = np.flatnonzero(checks.eligible[i]).tolist()
            preference = self.preference[i].tolist()
            links = self.candidates.inventory(i).links
            if links is not None:
                chosen = best_connected(link_weights(links), eligible, container.count,
                                        {p: preference[p] for p in eligible})
            else:
                chosen = tuple(sorted(eligible, key=lambda p: (-preference[p], p))[: container.count])
        return _assigned(self.candidates.pod, [checks], gpus, i, {0: chosen})


class SeveralContainers(Path):
    """Several GPU containers (or init phases): static checks for all candidates, then a search per node."""

    def __init__(self, candidates: CandidateRows, policy: Policy) -> None:
        self.candidates = candidates
        pod = candidates.pod
        self.checks = [candidates.checks(c) for c in pod.containers]
        codes = np.zeros(len(candidates.names), dtype=np.int64)
        for container_codes in (c.codes() for c in self.checks):  # a node is out if any container is
            codes = np.where(codes == MisfitCode.FIT.value, container_codes, codes)
        codes = candidates.with_host(codes == MisfitCode.FIT.value, lambda: codes)[1]()
        view = candidates.view
        preferences = [np.where(c.eligible, policy.gpu_preference(view, c.need, c.memory), -np.inf)
                       for c in self.checks]
        largest = max(range(len(pod.containers)),
                      key=lambda c: (pod.containers[c].units * pod.containers[c].count, -c))
        self.found: dict[int, dict[int, tuple[int, ...]]] = {}
        scores = np.zeros(len(candidates.names))
        for i in np.flatnonzero(codes == MisfitCode.FIT.value).tolist():
            found = self._search(i, preferences)
            if found is None:
                codes[i] = MisfitCode.CONTAINERS.value
                continue
            self.found[i] = found
            take = self._take(i, found)
            sub = View(candidates.ledger, candidates.rows[i: i + 1])
            scores[i] = policy.node_score(sub, self.checks[largest].need, take)[0]
        self.fit = codes == MisfitCode.FIT.value
        self.codes = lambda: codes
        self.scores = scores

    def _search(self, i: int, preferences: list[np.ndarray]) -> dict[int, tuple[int, ...]] | None:
        view = self.candidates.view
        rows = [ContainerRow(units=c.container.units, count=c.container.count, usable=c.sized[i] & c.pool_ok[i],
                             memory=c.memory[i], preference=p[i].tolist()) for c, p in zip(self.checks, preferences)]
        links = self.candidates.inventory(i).links
        return search(view.free_units[i], view.free_mem[i], rows, self.candidates.pod.phases,
                      link_weights(links) if links is not None else None, Budget())

    def _take(self, i: int, found: dict[int, tuple[int, ...]]) -> GpuTake:
        width = self.candidates.view.free_units.shape[1]
        units = np.zeros((1, width), dtype=np.int64)
        mem = np.zeros((1, width), dtype=np.int64)
        inventory = self.candidates.inventory(i)
        by_index = {g.index: pos for pos, g in enumerate(inventory.gpus)}
        containers = self.containers(i)
        for index, (charged_units, charged_mem) in phase_charges(containers).items():
            units[0, by_index[index]] = charged_units
            mem[0, by_index[index]] = charged_mem
        return GpuTake(units, mem)

    def containers(self, i: int) -> tuple[ContainerAssignment, ...]:
        return _assigned(self.candidates.pod, self.checks, self.candidates.inventory(i).gpus, i, self.found[i])


def _assigned(pod: PodRequest, checks: list[GpuChecks], gpus: tuple[GpuInfo, ...], i: int,
              found: dict[int, tuple[int, ...]]) -> tuple[ContainerAssignment, ...]:
    """The containers' GPUs from the positions ``found`` for each, on candidate ``i``."""
    return tuple(
        ContainerAssignment(name=container.name, kind=container.kind, gpus=tuple(
            GpuShare(index=gpus[p].index, uuid=gpus[p].uuid, units=container.units,
                     memory_mib=container_checks.memory.item(i, p))  # a Python int
            for p in sorted(found[c_ix])))
        for c_ix, (container, container_checks) in enumerate(zip(pod.containers, checks)))
