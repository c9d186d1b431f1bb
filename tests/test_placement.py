"""Filter, score and GPU choice: misfit reasons, pools, models, multi-GPU topology, several containers."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from types import SimpleNamespace

from extender.core import CoreSettings, Misfit, Placement, evaluate, make_policy, parse_node, parse_pod, place
from extender.core.checks import GpuChecks, MisfitCode, any_gpu
from extender.core.loading import build_ledger
from extender.core.policies import POLICIES
from extender.core.resources import ContainerNeed
from extender.testing.factories import container, gpu_node, gpu_pod

S = CoreSettings()
BINPACK = make_policy("binpack")


def cluster(*nodes, pods=()):
    ledger, report = build_ledger(S, nodes, pods)
    assert not report.warnings
    return ledger


def bind(ledger, pod_dict, node=None, policy=BINPACK):
    request = parse_pod(pod_dict, S)
    evaluation = evaluate(ledger, request, ledger.node_names(), policy)
    chosen = node or evaluation.best()
    placement = evaluation.placement(chosen)
    ledger.reserve(placement.assignment(request, policy.name))
    ledger.commit(request.uid)
    return placement


def gpus_of(placement):
    return [(s.index, s.units, s.memory_mib) for c in placement.containers for s in c.gpus]


def test_misfit_codes_worked_out_late_describe_the_state_that_was_evaluated():
    # Codes and messages are worked out only when read; they must still describe the ledger as evaluated.
    ledger = cluster(gpu_node("a", gpus=1), gpu_node("b", gpus=1))
    bind(ledger, gpu_pod("holder", units=60, uid="u-holder"), node="a")
    request = parse_pod(gpu_pod("late", units=50, uid="u-late"), S)
    at_once = evaluate(ledger, request, ["a", "b"], BINPACK)
    expected = (dict(at_once.failed), dict(at_once.rejections), at_once.outcome()[1].tolist())
    late = evaluate(ledger, request, ["a", "b"], BINPACK)
    ledger.release("u-holder")  # now "a" would fit
    assert evaluate(ledger, request, ["a", "b"], BINPACK).fits == ["a", "b"]
    assert (dict(late.failed), dict(late.rejections), late.outcome()[1].tolist()) == expected
    assert list(expected[0]) == ["a"] and expected[2][1] == MisfitCode.FIT



def test_candidates_skip_the_name_lookup_only_while_their_rows_hold():
    # Candidates carry rows looked up once; evaluate must trust them only for their ledger, before nodes change.
    ledger = cluster(gpu_node("a", gpus=1), gpu_node("b", gpus=1), gpu_node("c", gpus=1))
    names = ["a", "b", "c"]
    candidates = ledger.candidates(names)
    pod = parse_pod(gpu_pod("p", units=60, memory_mib=1000), S)

    def answer(evaluation):
        return evaluation.fits, evaluation.scores.tolist(), sorted(evaluation.unresolvable)

    subset = candidates.subset(np.array([2, 0]))
    assert subset.names == ["c", "a"]
    assert answer(evaluate(ledger, pod, subset, BINPACK)) == answer(evaluate(ledger, pod, ["c", "a"], BINPACK))
    # another ledger holds the same names in other rows, and "a" there is too small for the pod
    other = cluster(gpu_node("c", gpus=1), gpu_node("b", gpus=1), gpu_node("a", gpus=1, memory_mib=512))
    assert answer(evaluate(other, pod, candidates, BINPACK)) == answer(evaluate(other, pod, names, BINPACK))
    assert evaluate(other, pod, candidates, BINPACK).fits == ["b", "c"]
    # a node leaves and another takes its row: the candidates' rows no longer hold
    ledger.remove_node("a")
    ledger.upsert_node(parse_node(gpu_node("d", gpus=1), S))
    assert evaluate(ledger, pod, candidates, BINPACK).fits == ["b", "c"]
    assert "a" in evaluate(ledger, pod, candidates, BINPACK).unresolvable
    with pytest.raises(KeyError, match="node a has no GPU inventory"):
        ledger.candidates(names)

def test_misfit_messages_aggregate_and_reasons_are_detailed():
    ledger = cluster(gpu_node("a", gpus=2, memory_mib=16000), gpu_node("b", gpus=2, memory_mib=16000))
    for node in ("a", "b"):
        for i in range(2):
            bind(ledger, gpu_pod(f"{node}{i}", units=70, memory_mib=2000), node=node)
    request = parse_pod(gpu_pod("big", units=40, memory_mib=1000), S)
    evaluation = evaluate(ledger, request, ["a", "b", "ghost"], BINPACK)
    assert evaluation.fits == []
    message = "fracgpu: insufficient GPU units; needs 1 GPU(s) with 40 units and 1000 MiB each"
    assert evaluation.failed == {"a": message, "b": message}  # identical: kube-scheduler counts them
    assert evaluation.unresolvable == {"ghost": "fracgpu: node has no GPU inventory"}
    reasons = [str(r) for r in evaluation.misfit("a").reasons]
    assert reasons == ["node a GPU 0: units: asked 40, free 30", "node a GPU 1: units: asked 40, free 30",
                       "node a: GPUs: asked 1, free 0"]
    assert not evaluation.misfit("a").unresolvable and evaluation.misfit("ghost").unresolvable


@pytest.mark.parametrize(
    "pod, code_text, unresolvable",
    [
        (gpu_pod("p", units=10, pool="train"), "node is not in the pod's pool (train)", True),
        (gpu_pod("p", units=10, models="T4"), "no GPU of model T4", True),
        (gpu_pod("p", units=300), "fewer than 3 usable GPUs", True),
        (gpu_pod("p", units=10, memory_mib=20000), "GPUs too small (memory)", True),
        (gpu_pod("p", units=10, memory_mib=15000), "insufficient GPU memory", False),
    ],
)
def test_misfit_kinds(pod, code_text, unresolvable):
    # node: 2 x 16000 MiB H100, 2000 MiB observed in use on each
    ledger = cluster(gpu_node("n", gpus=2, memory_mib=16000, used_memory_mib={0: 2000, 1: 2000}))
    evaluation = evaluate(ledger, parse_pod(pod, S), ["n"], BINPACK)
    bucket = evaluation.unresolvable if unresolvable else evaluation.failed
    assert code_text in bucket["n"]


def test_pool_isolation_at_node_level():
    ledger = cluster(gpu_node("plain", gpus=1), gpu_node("train", gpus=1, pool="train"))
    nodes = ["plain", "train"]
    assert evaluate(ledger, parse_pod(gpu_pod("p", units=10), S), nodes, BINPACK).fits == ["plain"]
    assert evaluate(ledger, parse_pod(gpu_pod("p", units=10, pool="train"), S), nodes, BINPACK).fits == ["train"]


def test_model_restriction():
    ledger = cluster(gpu_node("h", gpus=1, model="NVIDIA H100 80GB HBM3"), gpu_node("t", gpus=1, model="Tesla T4"))
    request = parse_pod(gpu_pod("p", units=10, models="T4|L4"), S)
    assert evaluate(ledger, request, ["h", "t"], BINPACK).fits == ["t"]


def test_memory_defaults_to_the_proportional_share():
    # 25 of 100 units on a 16000 MiB GPU with a 400 MiB reserve: floor(25 * 15600 / 100) = 3900 MiB
    ledger, _ = build_ledger(CoreSettings(reserve_mib=400), [gpu_node("n", gpus=1, memory_mib=16000)], [])
    request = parse_pod(gpu_pod("p", units=25), ledger.settings)
    placement = place(ledger, request, "n", BINPACK)
    assert gpus_of(placement) == [(0, 25, 3900)]


def test_proportional_shares_that_fit_by_units_fit_by_memory():
    # 16384 MiB: 30 units -> 4915.2 and 10 -> 1638.4 MiB. Rounded up, 50+30+10+10 units would need 16386 MiB.
    ledger = cluster(gpu_node("n", gpus=1, memory_mib=16384))
    for name, units in (("a", 50), ("b", 30), ("c", 10), ("d", 10)):
        bind(ledger, gpu_pod(name, units=units))
    table = ledger.gpu_table("n")[0]
    assert (table["unitsUsed"], table["memoryChargedMiB"]) == (100, 8192 + 4915 + 1638 + 1638)


def test_binpack_shares_a_gpu_and_spread_does_not():
    ledger = cluster(gpu_node("n", gpus=2, memory_mib=16000))
    first = bind(ledger, gpu_pod("p1", units=30))
    second_binpack = place(ledger, parse_pod(gpu_pod("p2", units=30), S), "n", BINPACK)
    second_spread = place(ledger, parse_pod(gpu_pod("p2", units=30), S), "n", make_policy("spread"))
    assert gpus_of(first)[0][0] == 0
    assert gpus_of(second_binpack)[0][0] == 0 and gpus_of(second_spread)[0][0] == 1


def test_multi_gpu_prefers_nvlink_connected_sets():
    # 4 GPUs: {0, 3} and {1, 2} are NVLink pairs, everything else crosses sockets
    nv = {(0, 3), (3, 0), (1, 2), (2, 1)}
    links = [["X" if i == j else ("NV4" if (i, j) in nv else "SYS") for j in range(4)] for i in range(4)]
    ledger = cluster(gpu_node("n", gpus=4, memory_mib=16000, links=links))
    placement = place(ledger, parse_pod(gpu_pod("p", units=200), S), "n", make_policy("first-fit"))
    assert [g for g, _, _ in gpus_of(placement)] == [0, 3]
    # without links first-fit would take 0 and 1
    plain = cluster(gpu_node("n", gpus=4, memory_mib=16000))
    assert [g for g, _, _ in gpus_of(place(plain, parse_pod(gpu_pod("p", units=200), S), "n",
                                           make_policy("first-fit")))] == [0, 1]


def test_gpu_count_spreads_over_distinct_gpus():
    ledger = cluster(gpu_node("n", gpus=2, memory_mib=16000))
    placement = place(ledger, parse_pod(gpu_pod("p", units=80, memory_mib=8000, gpu_count=2), S), "n", BINPACK)
    assert gpus_of(placement) == [(0, 40, 4000), (1, 40, 4000)]


def test_containers_are_placed_together_by_search():
    # one GPU with 100 units: two containers of 60 cannot share it; 60 + 40 can
    ledger = cluster(gpu_node("n", gpus=1, memory_mib=16000))
    two_sixties = gpu_pod("p", units=60, extra_containers=[container("b", units=60)])
    result = place(ledger, parse_pod(two_sixties, S), "n", BINPACK)
    assert isinstance(result, Misfit) and "do not fit together" in result.message
    sixty_forty = gpu_pod("q", units=60, extra_containers=[container("b", units=40)])
    assert gpus_of(place(ledger, parse_pod(sixty_forty, S), "n", BINPACK)) == [(0, 60, 9600), (0, 40, 6400)]


def test_init_container_reuses_the_pods_own_capacity():
    # init 90 then main 50 on one GPU: charged max(90, 50) = 90 units, not 140
    ledger = cluster(gpu_node("n", gpus=1, memory_mib=10000))
    pod = gpu_pod("p", units=50, memory_mib=1000, init_containers=[container("warm", units=90, memory_mib=2000)])
    placement = bind(ledger, pod)
    assert ledger.gpu_table("n")[0]["unitsUsed"] == 90 and ledger.gpu_table("n")[0]["memoryChargedMiB"] == 2000
    assert {c.name: c.kind for c in placement.containers} == {"warm": "init", "main": "app"}


def test_pods_without_gpu_requests_pass_everywhere():
    ledger = cluster(gpu_node("n", gpus=1))
    evaluation = evaluate(ledger, parse_pod(gpu_pod("cpu"), S), ["n", "cpu-node"], BINPACK)
    assert evaluation.fits == ["n", "cpu-node"] and not evaluation.failed


def test_place_and_evaluate_agree_on_a_misfit():
    ledger = cluster(gpu_node("n", gpus=1, memory_mib=16000))
    bind(ledger, gpu_pod("p1", units=90))
    result = place(ledger, parse_pod(gpu_pod("p2", units=20), S), "n", BINPACK)
    assert isinstance(result, Misfit) and "insufficient GPU units" in result.message
    assert "node n GPU 0: units: asked 20, free 10" in result.explain()


def test_best_tie_breaks_by_name_or_order():
    ledger = cluster(gpu_node("b", gpus=1), gpu_node("a", gpus=1))
    evaluation = evaluate(ledger, parse_pod(gpu_pod("p", units=10), S), ["b", "a"], make_policy("first-fit"))
    assert evaluation.best() == "a" and evaluation.best(tie_break="order") == "b"
    assert isinstance(evaluation.placement("a"), Placement)
    with pytest.raises(KeyError):
        evaluation.misfit("a")


def test_pool_isolation_at_gpu_level():
    # node relabelled from pool a to b while a pool-a pod runs on GPU 0: pool b may use GPU 1 only
    ledger = cluster(gpu_node("n", gpus=2, memory_mib=16000, pool="a"))
    bind(ledger, gpu_pod("old", units=10, pool="a"))
    ledger.upsert_node(parse_node(gpu_node("n", gpus=2, memory_mib=16000, pool="b"), S))
    placement = place(ledger, parse_pod(gpu_pod("new", units=10, pool="b"), S), "n", BINPACK)
    assert gpus_of(placement)[0][0] == 1  # binpack would prefer the used GPU 0, but it belongs to pool a
    bind(ledger, gpu_pod("fill", units=100, pool="b"))
    result = place(ledger, parse_pod(gpu_pod("more", units=10, pool="b"), S), "n", BINPACK)
    assert isinstance(result, Misfit) and "insufficient GPU units, GPU memory and GPUs free of other pools" in result.message
    assert "node n GPU 0: gpu-pool: asked b, free held by pool a" in result.explain()


def test_rejections_are_counted_by_category():
    ledger = cluster(gpu_node("a", gpus=1, memory_mib=16000), gpu_node("b", gpus=1, memory_mib=16000, pool="x"))
    bind(ledger, gpu_pod("full", units=100), node="a")
    evaluation = evaluate(ledger, parse_pod(gpu_pod("p", units=10), S), ["a", "b", "ghost"], BINPACK)
    assert evaluation.rejections == {"units+memory": 1, "pool": 1, "no-inventory": 1}


def test_evaluating_a_pod_of_an_unseen_pool_changes_nothing():
    ledger = cluster(gpu_node("n", gpus=1))
    before = (ledger.snapshot(), dict(ledger._pool_ids), ledger.generation)
    evaluation = evaluate(ledger, parse_pod(gpu_pod("p", units=10, pool="nobody-has-this"), S), ["n"], BINPACK)
    assert evaluation.fits == [] and "not in the pod's pool (nobody-has-this)" in evaluation.unresolvable["n"]
    assert (ledger.snapshot(), dict(ledger._pool_ids), ledger.generation) == before


# ------------------------------------------------------------------ misfit codes, node by node
@settings(max_examples=300, deadline=None)
@given(st.data())
def test_misfit_codes_follow_the_documented_precedence(data):
    # The vectorised codes against the rule written out per node: node pool, then model, too few usable GPUs,
    # too few big enough, fits, else the capacity flags of the checks that blocked otherwise usable GPUs.
    n, width, k = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 8)), data.draw(st.integers(1, 3))

    def grid():
        return np.array(data.draw(st.lists(st.lists(st.booleans(), min_size=width, max_size=width),
                                           min_size=n, max_size=n)))

    pooled, has_models = data.draw(st.booleans()), data.draw(st.booleans())
    node_pool_ok = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    model_ok = grid()
    checks = object.__new__(GpuChecks)  # every check given, none worked out
    checks.container = ContainerNeed("c", "app", 10, k, None)
    # without pools (no pool named anywhere) every GPU and node passes the pool checks
    checks.scope = SimpleNamespace(pooled=pooled, model_ok=model_ok if has_models else None,
                                   node_pool_ok=node_pool_ok if pooled else None)
    checks.static = grid() & model_ok
    checks.sized = checks.static if data.draw(st.booleans()) else checks.static & grid()
    checks.units_ok, checks.memory_ok = grid(), grid()
    checks.pool_ok = grid() if pooled else np.ones((n, width), dtype=bool)
    checks.eligible = checks.sized & checks.units_ok & checks.memory_ok & checks.pool_ok
    codes = checks.codes().tolist()
    for i in range(n):
        if pooled and not node_pool_ok[i]:
            expected = MisfitCode.POOL
        elif has_models and not model_ok[i].any():
            expected = MisfitCode.MODEL
        elif checks.static[i].sum() < k:
            expected = MisfitCode.TOO_FEW
        elif checks.sized[i].sum() < k:
            expected = MisfitCode.TOO_BIG
        elif checks.eligible[i].sum() >= k:
            expected = MisfitCode.FIT
        else:
            sized = checks.sized[i]
            expected = sum(flag for flag, ok in ((MisfitCode.UNITS, checks.units_ok[i]),
                                                 (MisfitCode.MEMORY, checks.memory_ok[i]),
                                                 (MisfitCode.GPU_POOL, checks.pool_ok[i])) if (sized & ~ok).any())
            assert expected, "a node with enough sized GPUs that does not fit has a blocked check"
        assert codes[i] == expected, (i, codes, expected)


# ------------------------------------------------------------------ one-GPU choice: the evaluation's pick, re-derived
@settings(max_examples=60, deadline=None)
@given(data=st.data(), policy=st.sampled_from(sorted(POLICIES)))
def test_one_gpu_choice_is_the_highest_preference_lowest_position(data, policy):
    # placement() reads the GPU vectorised() took; it must be the first of the eligible GPUs ordered by
    # (highest preference, lowest position), the order the general path sorts by.
    chosen_policy = make_policy(policy, workload=[(0, 1, 50, None, 1.0)])
    nodes = [gpu_node(f"n{i}", gpus=data.draw(st.integers(1, 4)), memory_mib=16000) for i in range(3)]
    pods = []
    for j in range(data.draw(st.integers(0, 6))):
        pods.append((f"p{j}", data.draw(st.integers(1, 100)), data.draw(st.sampled_from(["n0", "n1", "n2"]))))
    ledger = cluster(*nodes)
    for name, units, node in pods:
        evaluation = evaluate(ledger, parse_pod(gpu_pod(name, units=units, uid=f"u-{name}"), S), [node], BINPACK)
        if evaluation.fits:
            placement = evaluation.placement(node)
            ledger.reserve(placement.assignment(evaluation.pod, "binpack"))
    request = parse_pod(gpu_pod("x", units=data.draw(st.integers(1, 100)), uid="u-x"), S)
    evaluation = evaluate(ledger, request, ["n0", "n1", "n2"], chosen_policy)
    path = evaluation._path
    for node in evaluation.fits:
        i = path.candidates.names.index(node)
        eligible = np.flatnonzero(path.checks[0].eligible[i]).tolist()
        expected = sorted(eligible, key=lambda p: (-path.preference[i][p], p))[0]
        got = evaluation.placement(node).containers[0].gpus[0].index
        assert got == path.candidates.inventory(i).gpus[expected].index


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 40), st.integers(1, 17), st.booleans(), st.data())
def test_any_gpu_per_node_equals_numpys_any(nodes, width, transposed, data):
    # any_gpu reads a row of 1, 2, 4 or 8 booleans as one word; every width and layout must agree with numpy
    cells = data.draw(st.lists(st.booleans(), min_size=nodes * width, max_size=nodes * width))
    mask = np.array(cells, dtype=bool).reshape(nodes, width)
    if transposed:  # not C-contiguous
        mask = np.asfortranarray(mask)
    assert np.array_equal(any_gpu(mask), mask.any(axis=1))
