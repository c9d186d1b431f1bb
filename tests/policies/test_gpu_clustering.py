"""gpu-clustering: four bands by whether the node holds the pod's kind, the fuller node first within a band."""

import pytest

from extender.core import evaluate, make_policy, parse_pod
from extender.testing.factories import gpu_pod
from simulator.trace import sim_node
from support import S, node_with_used_gpu0, score_and_gpu, sim_hold, sim_ledger, sim_pod, sim_score


@pytest.mark.parametrize("used, units, score", [
    # base 2.5 * (200 - 150) / 200 = 0.625; the node holds only 50-unit shares: + 7.5 = 8.125
    (True, 50, 8.125),
    # a 30-unit ask finds only other shares: band 0 -> 0.625
    (True, 30, 0.625),
    # an idle node: 2.5 * 0 / 200 + 2.5 = 2.5
    (False, 30, 2.5),
])
def test_bands_by_share(used, units, score):
    assert score_and_gpu("gpu-clustering", used, units, 2000) == (pytest.approx(score), 0)


def test_the_kinds_on_a_node_follow_its_pods():
    # the counts are kept per node by row version: a pod leaving must be seen at the next scoring
    ledger = node_with_used_gpu0(True)
    policy = make_policy("gpu-clustering")
    request = parse_pod(gpu_pod("p", units=50, memory_mib=2000), S)
    assert evaluate(ledger, request, ["n"], policy).score_of("n") == pytest.approx(8.125)
    ledger.release(next(ledger.assignments()).pod_uid)
    assert evaluate(ledger, request, ["n"], policy).score_of("n") == pytest.approx(2.5)  # idle again


def test_by_kind_counts_every_share_as_one_kind():
    a = sim_node("a", cpu_milli=64000, memory_mib=1 << 20, gpus=8, model="G2")
    b = sim_node("b", cpu_milli=64000, memory_mib=1 << 20, gpus=8, model="G2")
    ledger = sim_ledger(a, b)
    packing = make_policy("gpu-packing")
    sim_hold(ledger, sim_pod("s", 0, gpus=1, milli=250), "a", packing)  # a: one shared-GPU pod
    sim_hold(ledger, sim_pod("w", 0, gpus=2, milli=1000), "b", packing)  # b: one 2-GPU pod
    by_kind, by_share = make_policy("gpu-clustering", affinity="kind"), make_policy("gpu-clustering")
    share = sim_pod("p", 0, gpus=1, milli=500)
    # kind: a 500-unit pod joins the 250-unit pod's kind -> top band (7.5 + fullness); by share: other share -> 0
    assert sim_score(ledger, share, by_kind, "a") == pytest.approx(7.5 + 2.5 * 250 / 8000)
    assert sim_score(ledger, share, by_share, "a") == pytest.approx(2.5 * 250 / 8000)
    two = sim_pod("q", 0, gpus=2, milli=1000)
    assert sim_score(ledger, two, by_kind, "b") == pytest.approx(7.5 + 2.5 * 2000 / 8000)
    assert sim_score(ledger, sim_pod("c", 1000), by_kind, "b") == 0.0  # no GPU: 0 everywhere, as in the paper
    ledger.release("w")
    assert sim_score(ledger, two, by_kind, "b") == pytest.approx(2.5)  # b idle again: the empty band


def test_an_unknown_affinity_is_named_with_those_that_exist():
    with pytest.raises(ValueError, match="gpu-clustering: affinity must be one of share, kind, not 'size'"):
        make_policy("gpu-clustering", affinity="size")


@pytest.mark.parametrize("affinity", ["share", "kind"])
def test_warm_counts_every_node_so_that_evaluations_count_only_nodes_that_changed(affinity):
    nodes = [sim_node(n, cpu_milli=64000, memory_mib=1 << 20, gpus=4, model="G2") for n in "abc"]
    ledger = sim_ledger(*nodes)
    packing = make_policy("gpu-packing")
    for i, node in enumerate("aab"):
        sim_hold(ledger, sim_pod(f"p{i}", 0, gpus=1, milli=250 * (i + 1)), node, packing)
    warmed, cold = make_policy("gpu-clustering", affinity=affinity), make_policy("gpu-clustering", affinity=affinity)
    memo = warmed._kinds.memo
    counted = []
    compute = memo._compute
    memo._compute = lambda ledger, rows: counted.append(len(rows)) or compute(ledger, rows)
    warmed.warm(ledger)
    assert counted == [3]
    request = parse_pod(gpu_pod("q", units=25, memory_mib=100), ledger.settings)
    scores = evaluate(ledger, request, ["a", "b", "c"], warmed).scores
    assert counted == [3] and list(scores) == list(evaluate(ledger, request, ["a", "b", "c"], cold).scores)
    sim_hold(ledger, sim_pod("p9", 0, gpus=1, milli=500), "c", packing)
    evaluate(ledger, request, ["a", "b", "c"], warmed)
    assert counted == [3, 1]  # only "c", which changed
