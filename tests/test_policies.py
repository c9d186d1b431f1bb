"""Every policy's score and GPU choice, with the arithmetic written out.

Cluster for the single-node rows: node n, 2 GPUs x 16000 MiB, no reserve. "used" is one pod of 50 units and
4000 MiB already on GPU 0. unitsPerGpu = 100. The node has 200 units and 32000 MiB in all.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extender.core import CoreSettings, evaluate, make_policy, parse_pod, place
from extender.core.cluster import build_ledger
from extender.core.policies import POLICIES, WORKLOAD_POLICIES, Take, View
from extender.testing.factories import gpu_node, gpu_pod

S = CoreSettings()


def node_with_used_gpu0(used: bool):
    ledger, _ = build_ledger(S, [gpu_node("n", gpus=2, memory_mib=16000)], [])
    if used:
        request = parse_pod(gpu_pod("used", units=50, memory_mib=4000), S)
        placement = place(ledger, request, "n", make_policy("first-fit"))
        ledger.reserve(placement.assignment(request, "first-fit"))
    return ledger


CASES = [
    # policy, used?, ask (units, MiB), expected score, expected GPU
    # binpack: 10 * ((50 + 30) / 200 + (4000 + 2000) / 32000) / 2 = 10 * (0.4 + 0.1875) / 2 = 2.9375; fullest GPU
    ("binpack", True, (30, 2000), 2.9375, 0),
    # spread: 10 - 2.9375 = 7.0625; emptiest GPU
    ("spread", True, (30, 2000), 7.0625, 1),
    # first-fit: flat 10, lowest index that fits
    ("first-fit", True, (30, 2000), 10.0, 0),
    # best-fit (largest node 200 / 32000): left 150 - 30 = 120 units, 28000 - 2000 = 26000 MiB:
    #   10 * (1 - 0.5 * 120/200 - 0.5 * 26000/32000) = 10 * (1 - 0.3 - 0.40625) = 2.9375; tightest GPU: GPU 0
    ("best-fit", True, (30, 2000), 2.9375, 0),
    # dot-product: GPU 0 free (0.5, 12000/16000 = 0.75) . ask (0.3, 0.125) = 0.15 + 0.09375 = 0.24375
    #   -> 1 - 0.24375 / 2 = 0.878125; GPU 1: 1 - (0.3 + 0.125) / 2 = 0.7875; GPU 0 wins, 10 * 0.878125
    ("dot-product", True, (30, 2000), 8.78125, 0),
    # gpu-packing case 1 (shared GPU taken, 50% free): max(100 - 50/10, 50) = 95 -> 9.5
    ("gpu-packing", True, (30, 2000), 9.5, 0),
    # gpu-packing case 2 (60 units do not fit GPU 0's 50, one idle GPU taken): max(50 - 1, 33) = 49 -> 4.9
    ("gpu-packing", True, (60, 2000), 4.9, 1),
    # gpu-packing case 3 (whole node idle, 2 idle GPUs): max(33 - 2, 2) = 31 -> 3.1
    ("gpu-packing", False, (30, 2000), 3.1, 0),
    # gpu-clustering: base 2.5 * (200 - 150) / 200 = 0.625; the node holds only 50-unit shares: + 7.5 = 8.125
    ("gpu-clustering", True, (50, 2000), 8.125, 0),
    # ... a 30-unit ask finds only other shares: band 0 -> 0.625; GPU choice: tightest, GPU 0
    ("gpu-clustering", True, (30, 2000), 0.625, 0),
    # ... an idle node: 2.5 * 0 / 200 + 2.5 = 2.5
    ("gpu-clustering", False, (30, 2000), 2.5, 0),
]


@pytest.mark.parametrize("policy, used, ask, score, gpu", CASES, ids=[f"{c[0]}-{c[2][0]}-{c[1]}" for c in CASES])
def test_policy_arithmetic(policy, used, ask, score, gpu):
    ledger = node_with_used_gpu0(used)
    request = parse_pod(gpu_pod("p", units=ask[0], memory_mib=ask[1]), S)
    evaluation = evaluate(ledger, request, ["n"], make_policy(policy))
    assert evaluation.score_of("n") == pytest.approx(score)
    assert [s.index for c in evaluation.placement("n").containers for s in c.gpus] == [gpu]


def test_best_fit_prefers_the_small_node_left_full_unlike_spread():
    # small: 1 GPU; big: 2 GPUs; largest node 200 units / 32000 MiB; ask 30 units / 2000 MiB
    # best-fit small: 10 * (1 - 0.5 * 70/200 - 0.5 * 14000/32000) = 6.0625
    # best-fit big:   10 * (1 - 0.5 * 170/200 - 0.5 * 30000/32000) = 1.0625
    ledger, _ = build_ledger(S, [gpu_node("small", gpus=1, memory_mib=16000), gpu_node("big", gpus=2, memory_mib=16000)], [])
    request = parse_pod(gpu_pod("p", units=30, memory_mib=2000), S)
    evaluation = evaluate(ledger, request, ["small", "big"], make_policy("best-fit"))
    assert evaluation.score_of("small") == pytest.approx(6.0625)
    assert evaluation.score_of("big") == pytest.approx(1.0625)
    assert evaluate(ledger, request, ["small", "big"], make_policy("spread")).best() == "big"


def test_random_is_seeded_and_reproducible():
    nodes = [gpu_node(f"n{i:02d}", gpus=4) for i in range(40)]
    ledger, _ = build_ledger(S, nodes, [])
    request = parse_pod(gpu_pod("p", units=10), S)
    names = ledger.node_names()

    def decisions(seed):
        evaluation = evaluate(ledger, request, names, make_policy("random", seed=seed))
        best = evaluation.best()
        return list(evaluation.scores), best, evaluation.placement(best)

    assert decisions(1) == decisions(1)
    assert decisions(1)[0] != decisions(2)[0]
    assert all(0.0 <= s <= 10.0 for s in decisions(3)[0])
    # not constant: over 40 nodes the scores spread across the range
    assert max(decisions(1)[0]) - min(decisions(1)[0]) > 5


def test_registry_and_parameters():
    assert sorted(POLICIES) == sorted(
        ["first-fit", "best-fit", "binpack", "spread", "random", "dot-product", "gpu-packing", "gpu-clustering"])
    with pytest.raises(ValueError, match="unknown policy 'fastest'; known policies: best-fit, binpack"):
        make_policy("fastest")
    with pytest.raises(ValueError, match="policy 'binpack' takes no parameter\\(s\\) seed"):
        make_policy("binpack", seed=1)


@pytest.mark.parametrize("policy", sorted({**POLICIES, **WORKLOAD_POLICIES}.values(), key=lambda p: p.name))
def test_what_a_policy_reads_at_once_is_a_view_array(policy):
    assert set(policy.reads) <= View._GATHERED  # else evaluate would gather some other ledger array


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_scores_stay_in_range_on_a_crowded_cluster(policy):
    # observed memory above charged, a full GPU, an unhealthy GPU: scores remain within 0..10
    node = gpu_node("n", gpus=3, memory_mib=16000, used_memory_mib={0: 15000}, unhealthy=[2])
    ledger, _ = build_ledger(S, [node, gpu_node("m", gpus=1, memory_mib=8000)], [])
    request = parse_pod(gpu_pod("p", units=20, memory_mib=500), S)
    kwargs = {"seed": 5} if policy == "random" else {}
    evaluation = evaluate(ledger, request, ["n", "m"], make_policy(policy, **kwargs))
    assert set(evaluation.fits) == {"n", "m"}
    assert all(0.0 <= s <= 10.0 for s in evaluation.scores)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 6), st.integers(1, 8), st.integers(0, 1000), st.data())
def test_lazy_takes_read_as_the_takes_given_per_gpu(nodes, width, units, data):
    """Take.one_each and Take.nothing work their arrays out lazily; each must equal the take built from the
    per-GPU charges."""
    memory = np.array(data.draw(st.lists(st.lists(st.integers(0, 80_000), min_size=width, max_size=width),
                                         min_size=nodes, max_size=nodes)), dtype=np.int64)
    positions = np.array(data.draw(st.lists(st.integers(0, width - 1), min_size=nodes, max_size=nodes)))
    per_gpu_units = np.zeros((nodes, width), dtype=np.int64)
    per_gpu_mem = np.zeros((nodes, width), dtype=np.int64)
    per_gpu_units[np.arange(nodes), positions] = units
    per_gpu_mem[np.arange(nodes), positions] = memory[np.arange(nodes), positions]
    given, lazy = Take(per_gpu_units, per_gpu_mem), Take.one_each(positions, units, memory)
    zeros = np.zeros((nodes, width), dtype=np.int64)
    nothing, none_given = Take.nothing(nodes, width), Take(zeros, zeros)
    for name in ("units_sum", "mem_sum", "charged", "units", "mem"):
        assert np.array_equal(getattr(lazy, name), getattr(given, name)), name
        assert np.array_equal(getattr(nothing, name), getattr(none_given, name)), name
