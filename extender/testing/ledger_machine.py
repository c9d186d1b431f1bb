"""A hypothesis state machine that drives the core like the extender does and checks docs/design.md's invariants.

Rules add and change nodes, filter-and-bind random pods, bind again, adopt again, and release. After every
step the invariants are checked against :class:`ReferenceCluster`, a brute-force model:

1. capacity: Σ units ≤ unitsPerGpu and Σ MiB ≤ usable, on every GPU, and the ledger's sums equal the model's;
2. pools: no GPU holds pods of two pools, no pod sits on a node of another pool;
3. filter ⇔ bind: a node evaluate() calls fitting is one place() finds GPUs on, and the model agrees;
4. rebuild: a ledger built from the pods' annotations equals the live one;
5. release returns everything; a second bind of a bound pod changes nothing;
6. determinism: evaluating the same state twice gives the same fits, scores and GPUs.
"""

from __future__ import annotations

from hypothesis import note
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ..core import CoreSettings, Ledger, LedgerConflict, evaluate, make_policy, parse_pod, place
from ..core.assignment import to_annotation
from ..core.loading import build_ledger
from ..core.inventory import parse_node
from ..core.evaluation import Placement
from ..core.policies import POLICIES
from ..core.settings import ASSIGNMENT_ANNOTATION
from .factories import container, gpu_node, gpu_pod
from .reference import ReferenceCluster

UNITS = 10
MODELS = ("A100", "T4")
POOLS = (None, "a")
NODE_NAMES = ("n0", "n1", "n2", "n3")


@st.composite
def pod_specs(draw):
    """Pods with 1-2 app containers and maybe an init container (no sidecars: the model is exact without)."""
    def one(name: str) -> dict:
        whole = draw(st.booleans()) and draw(st.booleans())
        units = UNITS * draw(st.integers(2, 3)) if whole else draw(st.integers(1, UNITS))
        memory = draw(st.one_of(st.none(), st.integers(1, 12_000)))
        return container(name, units=units, memory_mib=memory, settings=SETTINGS)

    count = draw(st.one_of(st.none(), st.integers(1, 2)))
    main = one("main")
    extra = [one("side")] if draw(st.integers(0, 3)) == 0 else []
    init = [one("init")] if draw(st.integers(0, 4)) == 0 else []
    for c in (main, *extra, *init):  # fracgpu.io/gpu-count applies to every GPU container of the pod
        units = int(c["resources"]["limits"]["fracgpu.io/vgpu"])
        if count is not None and (units % count or units // count > UNITS):
            count = None
    return {
        "main": main, "extra": extra, "init": init, "count": count,
        "models": draw(st.sampled_from((None, "A100", "A100|T4", "T4"))),
        "pool": draw(st.sampled_from(POOLS)),
    }


SETTINGS = CoreSettings(units_per_gpu=UNITS, reserve_mib=256, reserve_percent=2.0)
WORKLOAD = [(0, 1, 3, None, 0.5), (0, 1, UNITS, None, 0.3), (0, 2, UNITS, None, 0.2)]  # FGD's target workload


class LedgerMachine(RuleBasedStateMachine):
    policy_name = "binpack"

    def __init__(self) -> None:
        super().__init__()
        self.ledger = Ledger(SETTINGS, rows=2, width=2)  # small, so growing and widening are exercised
        self.model = ReferenceCluster(SETTINGS)
        self.node_dicts: dict[str, dict] = {}
        self.pods: dict[str, dict] = {}
        self.counter = 0
        # GPUs re-published (smaller, unhealthy, relabelled) while pods held them: the cluster may then read as
        # over-committed there until those pods leave. Placement itself must never cause that.
        self.degraded: set[tuple[str, int]] = set()

    @initialize(policy=st.sampled_from(sorted(POLICIES)), gpus=st.integers(1, 4))
    def start(self, policy: str, gpus: int) -> None:
        self.policy = make_policy(policy, seed=7, workload=WORKLOAD)
        self.policy_name = policy
        note(f"policy {self.policy.describe()}")
        self.set_node(name="n0", gpus=gpus, memory=16_000, model="A100", pool=None, unhealthy=set(), observed=0,
                      links=gpus > 2)

    @rule(name=st.sampled_from(NODE_NAMES), gpus=st.integers(1, 4), memory=st.sampled_from((8_000, 16_000)),
          model=st.sampled_from(MODELS), pool=st.sampled_from(POOLS), unhealthy=st.sets(st.integers(0, 3)),
          observed=st.integers(0, 6_000), links=st.booleans())
    def set_node(self, name, gpus, memory, model, pool, unhealthy, observed, links) -> None:
        matrix = None
        if links:
            matrix = [["X" if i == j else ("NV2" if (i < 2) == (j < 2) else "SYS") for j in range(gpus)]
                      for i in range(gpus)]
        node = gpu_node(name, gpus=gpus, memory_mib=memory, model=model, pool=pool, units_per_gpu=UNITS,
                        unhealthy=sorted(u for u in unhealthy if u < gpus), used_memory_mib={0: observed},
                        links=matrix)
        self.node_dicts[name] = node
        if name in self.model.nodes:
            for gpu in self.model.nodes[name].gpus:
                if any(self.model.charged(name, gpu.index)[:2]) or self.model.charged(name, gpu.index)[2]:
                    self.degraded.add((name, gpu.index))
        inventory = parse_node(node, SETTINGS)
        self.ledger.upsert_node(inventory)
        self.model.set_node(inventory)

    @precondition(lambda self: self.node_dicts)
    @rule(spec=pod_specs())
    def filter_and_bind(self, spec) -> None:
        self.counter += 1
        name = f"p{self.counter}"
        pod = gpu_pod(name, gpu_count=spec["count"], models=spec["models"], pool=spec["pool"], settings=SETTINGS,
                      extra_containers=spec["extra"], init_containers=spec["init"])
        pod["spec"]["containers"][0] = spec["main"]
        request = parse_pod(pod, SETTINGS)
        nodes = sorted(self.node_dicts) + ["ghost"]
        evaluation = evaluate(self.ledger, request, nodes, self.policy)
        note(f"{name}: {[(c.units, c.count, c.memory_mib, c.kind) for c in request.containers]} pool={request.pool} "
             f"models={request.models} fits={evaluation.fits}")
        for node in nodes:
            expected = self.model.fits(request, node)
            assert (node in evaluation.fits) == expected, (
                f"invariant 3: evaluate says {node in evaluation.fits} for {node}, the model says {expected}; "
                f"{evaluation.failed.get(node) or evaluation.unresolvable.get(node)}")
            placed = place(self.ledger, request, node, self.policy)
            assert isinstance(placed, Placement) == expected, f"invariant 3: place() disagrees on {node}"
        again = evaluate(self.ledger, request, nodes, self.policy)
        assert again.fits == evaluation.fits and list(again.scores) == list(evaluation.scores), "invariant 6"
        fresh = evaluate(self.ledger, request, nodes, make_policy(self.policy_name, seed=7, workload=WORKLOAD))
        assert list(fresh.scores) == list(evaluation.scores), "what the policy kept per node is stale"
        best = evaluation.best()
        if best is None:
            return
        placement = evaluation.placement(best)
        assert placement == place(self.ledger, request, best, self.policy), "invariant 6: GPU choice differs"
        assignment = placement.assignment(request, self.policy.name)
        self.ledger.reserve(assignment)
        self.ledger.commit(assignment.pod_uid)
        self.model.held[assignment.pod_uid] = assignment
        node_pool = self.model.nodes[best].pool
        assert assignment.pool == node_pool, f"invariant 2: pod of pool {assignment.pool} bound to {best} ({node_pool})"
        for index in assignment.charges():
            gpu = next(g for g in self.model.nodes[best].gpus if g.index == index)
            units, memory, pools = self.model.charged(best, index)
            assert pools == {request.pool}, f"invariant 2: {best} GPU {index} now holds pools {pools}"
            assert units <= UNITS and memory <= self.model.usable(gpu), f"invariant 1: bind over-committed {best} GPU {index}"
        pod["spec"]["nodeName"] = best
        pod["metadata"]["annotations"][ASSIGNMENT_ANNOTATION] = to_annotation(assignment, timestamp="t")
        self.pods[assignment.pod_uid] = pod

    @precondition(lambda self: self.pods)
    @rule(data=st.data())
    def bind_again(self, data) -> None:
        uid = data.draw(st.sampled_from(sorted(self.pods)))
        before = self.ledger.snapshot()
        try:
            self.ledger.reserve(self.ledger.assignment(uid))
        except LedgerConflict:
            pass
        else:
            raise AssertionError("invariant 5: a second reservation for a bound pod was accepted")
        self.ledger.adopt(self.ledger.assignment(uid))  # the informer seeing our own binding: a no-op
        assert self.ledger.snapshot() == before, "invariant 5: a repeated bind changed the ledger"

    @rule()
    def warm_policy(self) -> None:
        self.policy.warm(self.ledger)  # as the extender does once synced: no decision may change

    @precondition(lambda self: self.pods)
    @rule(data=st.data())
    def release(self, data) -> None:
        uid = data.draw(st.sampled_from(sorted(self.pods)))
        released = self.ledger.release(uid)
        assert released == self.model.held.pop(uid)
        del self.pods[uid]
        assert self.ledger.release(uid) is None

    @invariant()
    def invariant_1_capacity(self) -> None:
        for name in self.node_dicts:
            row = self.ledger.row_of(name)
            for pos, gpu in enumerate(self.model.nodes[name].gpus):
                units, memory, _ = self.model.charged(name, gpu.index)
                assert (int(self.ledger.used_units[row, pos]), int(self.ledger.used_mem[row, pos])) == (units, memory)
                # Nodes can be re-published smaller (less memory, a GPU unhealthy) under running pods; only
                # what the core placed since must respect capacity, and free must then read as <= 0.
                if not units and not memory:
                    self.degraded.discard((name, gpu.index))
                if units > (UNITS if gpu.offered else 0) or memory > self.model.usable(gpu):
                    assert (name, gpu.index) in self.degraded, f"invariant 1: {name} GPU {gpu.index} over-committed"

    @invariant()
    def invariant_2_pools(self) -> None:
        for name in self.node_dicts:
            for gpu in self.model.nodes[name].gpus:
                _, _, pools = self.model.charged(name, gpu.index)
                assert len(pools) <= 1 or (name, gpu.index) in self.degraded, f"invariant 2: {name} GPU {gpu.index}: {pools}"

    @invariant()
    def invariant_4_rebuild(self) -> None:
        rebuilt, report = build_ledger(SETTINGS, self.node_dicts.values(), self.pods.values())
        live = self.ledger.snapshot()
        assert rebuilt.snapshot() == live, "invariant 4: the ledger rebuilt from annotations differs"
