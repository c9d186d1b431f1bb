"""FGD: fragmentation for a target workload, its incremental forms, and the workload it follows."""

import random

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from extender.core import Ledger, evaluate, make_policy
from extender.core.policies.fgd import Fgd
from extender.core.workload import RecentShapes, distance, target_workload
from simulator.trace import SETTINGS, sim_node
from support import sim_pod


def test_fragmentation_worked_example():
    # One shape: 1 GPU with 500 units, p = 1. Node: GPUs with 300 and 1000 free: the pod fits (GPU 1),
    # GPU 0's 300 units are stranded. Without CPU room the whole 1300 free units are fragmented.
    fgd = Fgd([(1000, 1, 500, None, 1.0)])
    free = np.array([[300, 1000]])
    access = np.ones((1, 1), dtype=bool)
    assert fgd.fragmentation(free, np.array([4000]), access).tolist() == [300.0]
    assert fgd.fragmentation(free, np.array([500]), access).tolist() == [1300.0]


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_fragmentation_after_one_gpu_equals_summing_again(data):
    # the incremental update FGD scores one-GPU pods with must equal fragmentation() of the changed node
    shapes = data.draw(st.lists(st.tuples(st.integers(0, 8000), st.integers(0, 3), st.integers(0, 1000)),
                                min_size=1, max_size=6))
    fgd = Fgd([(cpu, count, units, None, 1.0 / len(shapes)) for cpu, count, units in shapes])
    n, width = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 8))
    free = np.array(data.draw(st.lists(st.lists(st.integers(-100, 1000), min_size=width, max_size=width),
                                       min_size=n, max_size=n)))
    cpu = np.array(data.draw(st.lists(st.integers(0, 16000), min_size=n, max_size=n)))
    access = np.array(data.draw(st.lists(st.lists(st.booleans(), min_size=len(shapes), max_size=len(shapes)),
                                         min_size=n, max_size=n)))
    units, cpu_milli = data.draw(st.integers(1, 1000)), data.draw(st.integers(0, 8000))
    before, after = fgd.fragmentation_after_one(free, cpu, access, units, cpu_milli)
    assert np.array_equal(before, fgd.fragmentation(free, cpu, access))
    for g in range(width):
        changed = np.maximum(free, 0)
        changed[:, g] -= units
        assert np.array_equal(after[:, g], fgd.fragmentation(changed, cpu - cpu_milli, access))


def test_prefers_the_gpu_whose_leftover_the_workload_can_still_use():
    ledger = Ledger(SETTINGS)
    ledger.upsert_node(sim_node("n", cpu_milli=64000, memory_mib=10**6, gpus=2, model="T4"))
    first = sim_pod("a", 1000, gpus=1, milli=500).request()
    ledger.reserve(evaluate(ledger, first, ["n"], make_policy("best-fit")).placement("n").assignment(first, "x"))
    fgd = Fgd([(1000, 1, 500, None, 1.0)])
    pod = sim_pod("b", 1000, gpus=1, milli=500).request()
    placement = evaluate(ledger, pod, ["n"], fgd).placement("n")
    assert placement.containers[0].gpus[0].index == 0  # filling the half-used GPU strands nothing


def test_kept_scores_equal_scores_computed_afresh():
    rng = random.Random(3)
    nodes = [sim_node(f"n{i}", cpu_milli=32000, memory_mib=10**6, gpus=rng.choice([1, 2, 4, 8]), model="T4")
             for i in range(12)]
    pods = [sim_pod(f"p{i}", rng.choice([1000, 4000, 8000]), gpus=1, milli=rng.choice([250, 500, 1000]))
            for i in range(80)]
    workload = target_workload(p.shape for p in pods)
    kept = Fgd(workload)
    ledger = Ledger(SETTINGS)
    for node in nodes:
        ledger.upsert_node(node)
    names = [n.name for n in nodes]
    for pod in pods:
        request = pod.request()
        a = evaluate(ledger, request, names, kept)
        b = evaluate(ledger, request, names, Fgd(workload))
        assert a.fits == b.fits and np.array_equal(a.scores, b.scores)
        if a.fits:
            node = a.fits[int(np.argmax(a.scores))]
            ledger.reserve(a.placement(node).assignment(request, "fgd"))


def test_target_workload_covers_95_percent_and_renormalises():
    shapes = [(1, 1, 500, None)] * 60 + [(1, 1, 1000, None)] * 36 + [(2, 0, 0, None)] * 4
    workload = target_workload(shapes)
    assert [w[:4] for w in workload] == [(1, 1, 500, None), (1, 1, 1000, None)]
    assert sum(w[4] for w in workload) == pytest.approx(1.0) and workload[0][4] == pytest.approx(60 / 96)


def test_recent_shapes_move_only_when_the_window_has_moved_past_the_tolerance():
    recent = RecentShapes(window=100, units_per_gpu=100, tolerance=0.05)
    assert recent.shapes() == [(0, 1, 100, None, 1.0)]  # before any pod: whole GPUs
    seen, last, current, moves = [], 0, [(0, 1, 100, None, 1.0)], []
    stream = [(0, 1, (25, 50, 75)[n % 3], None) for n in range(1, 201)] + [(0, 1, 100, None)] * 60
    for n, shape in enumerate(stream, 1):
        seen.append(shape)
        version = recent.version
        recent.observe(shape)
        if n - last >= max(1, min(n, 100) // 10):  # checked after every pod at first, every 10 pods once 100 are in
            last = n
            fresh = target_workload(seen[-100:])
            if distance(fresh, current) > 0.05:
                current = fresh
                moves.append(n)
        assert recent.version == version + (moves[-1:] == [n]), n
        assert recent.shapes() == current, n
    # the three shares in turn: the estimate settles within the first pods, then stands
    assert moves[0] == 1 and all(n < 30 for n in moves if n <= 200)
    # then whole-GPU pods only: checked at 202 (2 of 100: under the 95% coverage cut, no change) and at 212 (12
    # of 100: moved), and it keeps following while they fill the window
    assert min(n for n in moves if n > 200) == 212 and len([n for n in moves if n > 200]) >= 4
    assert recent.shapes()[0][:4] == (0, 1, 100, None)


def test_the_distance_between_workloads_is_their_total_variation():
    a = [(0, 1, 25, None, 0.5), (0, 1, 50, None, 0.5)]
    b = [(0, 1, 25, None, 0.4), (0, 1, 100, None, 0.6)]
    assert distance(a, b) == pytest.approx((0.1 + 0.5 + 0.6) / 2)
    assert distance(a, a) == 0 and distance(a, []) == pytest.approx(0.5)


def test_fgd_follows_a_live_workload_and_drops_scores_of_the_old_one():
    ledger = Ledger(SETTINGS)
    ledger.upsert_node(sim_node("n", cpu_milli=64000, memory_mib=10**6, gpus=2, model="T4"))
    recent = RecentShapes(window=1, units_per_gpu=1000)
    fgd = make_policy("fgd", workload=recent)
    pod = sim_pod("p", 0, gpus=1, milli=500).request()
    recent.observe((0, 1, 500, None))
    under_halves = evaluate(ledger, pod, ["n"], fgd).scores.tolist()
    recent.observe((0, 1, 1000, None))  # the window now holds one whole-GPU pod
    under_wholes = evaluate(ledger, pod, ["n"], fgd).scores.tolist()
    assert under_wholes == evaluate(ledger, pod, ["n"], Fgd([(0, 1, 1000, None, 1.0)])).scores.tolist()
    assert under_halves == evaluate(ledger, pod, ["n"], Fgd([(0, 1, 500, None, 1.0)])).scores.tolist()
    assert under_halves != under_wholes


def test_fgd_needs_a_workload():
    with pytest.raises(ValueError, match="fgd needs a target workload"):
        make_policy("fgd")
