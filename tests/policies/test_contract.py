"""What every policy must do, and the registry that builds them."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extender.core import Ledger, evaluate, make_policy, parse_pod
from extender.core.loading import build_ledger
from extender.core.policies import POLICIES, GpuTake, Need, NoTake, OneGpuTake, View
from extender.core.policies.base import cpu_left
from extender.core.resources import ContainerNeed
from extender.testing.factories import gpu_node, gpu_pod
from simulator.policy_specs import resolve
from simulator.trace import SETTINGS, sim_node
from support import S

WORKLOAD = [(0, 1, 20, None, 0.5), (0, 1, 100, None, 0.5)]


def test_registry_and_parameters():
    assert {"first-fit", "best-fit", "binpack", "spread", "random", "dot-product", "gpu-packing", "gpu-clustering",
            "fgd"} <= set(POLICIES)
    with pytest.raises(ValueError, match="unknown policy 'fastest'; known policies: best-fit, binpack"):
        make_policy("fastest")
    with pytest.raises(ValueError, match="policy 'binpack' takes no parameter\\(s\\) dims; it takes: none"):
        make_policy("binpack", dims="cpu+units")
    with pytest.raises(ValueError, match="takes no parameter"):
        resolve("gpu-packing:dims=cpu+units")
    assert resolve("best-fit:dims=cpu+units").build(0, []).describe() == "best-fit(dims=cpu+units)"
    assert make_policy("best-fit", dims="units+memory").describe() == "best-fit"  # defaults are not named
    assert make_policy("gpu-clustering", affinity="kind").describe() == "gpu-clustering(affinity=kind)"


def test_make_policy_passes_seed_and_workload_to_the_policies_that_take_them():
    assert make_policy("random", seed=9).seed == 9
    assert make_policy("fgd", workload=WORKLOAD).workload == [tuple(w) for w in WORKLOAD]
    make_policy("binpack", seed=9, workload=WORKLOAD)  # a policy that takes neither ignores both


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_scores_stay_in_range_on_a_crowded_cluster(policy):
    # observed memory above charged, a full GPU, an unhealthy GPU: scores remain within 0..10
    node = gpu_node("n", gpus=3, memory_mib=16000, used_memory_mib={0: 15000}, unhealthy=[2])
    ledger, _ = build_ledger(S, [node, gpu_node("m", gpus=1, memory_mib=8000)], [])
    request = parse_pod(gpu_pod("p", units=20, memory_mib=500), S)
    evaluation = evaluate(ledger, request, ["n", "m"], make_policy(policy, seed=5, workload=WORKLOAD))
    assert set(evaluation.fits) == {"n", "m"}
    assert all(0.0 <= s <= 10.0 for s in evaluation.scores)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 6), st.integers(1, 8), st.integers(0, 1000), st.data())
def test_one_gpu_and_empty_takes_read_as_takes_given_per_gpu(nodes, width, units, data):
    """OneGpuTake and NoTake work their arrays out when read; each must equal the take given per GPU."""
    memory = np.array(data.draw(st.lists(st.lists(st.integers(0, 80_000), min_size=width, max_size=width),
                                         min_size=nodes, max_size=nodes)), dtype=np.int64)
    positions = np.array(data.draw(st.lists(st.integers(0, width - 1), min_size=nodes, max_size=nodes)))
    per_gpu_units = np.zeros((nodes, width), dtype=np.int64)
    per_gpu_mem = np.zeros((nodes, width), dtype=np.int64)
    per_gpu_units[np.arange(nodes), positions] = units
    per_gpu_mem[np.arange(nodes), positions] = memory[np.arange(nodes), positions]
    given, one = GpuTake(per_gpu_units, per_gpu_mem), OneGpuTake(positions, units, memory)
    zeros = np.zeros((nodes, width), dtype=np.int64)
    nothing, none_given = NoTake(nodes, width), GpuTake(zeros, zeros)
    for name in ("units_sum", "mem_sum", "charged", "units", "mem"):
        assert np.array_equal(getattr(one, name), getattr(given, name)), name
        assert np.array_equal(getattr(nothing, name), getattr(none_given, name)), name


def test_cpu_left_is_zero_on_nodes_without_host_capacity_beside_nodes_with_it():
    """cpu_left skips its mask while every node accounts CPU: the ledger must know when one stops doing so."""
    from dataclasses import replace

    ledger = Ledger(SETTINGS)
    accounted = sim_node("a", cpu_milli=4000, memory_mib=8192, gpus=1, model="T4")
    ledger.upsert_node(accounted)
    assert ledger.accounts_cpu()
    ledger.upsert_node(replace(sim_node("g", cpu_milli=1, memory_mib=1, gpus=1, model="T4"), cpu_milli=None))
    assert not ledger.accounts_cpu()
    need = Need(ContainerNeed("main", "app", 100, 1, None), "p", 1000)
    assert cpu_left(View(ledger, np.array([ledger.row_of("a"), ledger.row_of("g")])), need).tolist() == [3000, 0]
    ledger.remove_node("g")
    assert ledger.accounts_cpu()
    ledger.upsert_node(replace(accounted, cpu_milli=None))  # the same node, no longer accounting CPU
    assert not ledger.accounts_cpu()
    assert cpu_left(View(ledger, np.array([ledger.row_of("a")])), need).tolist() == [0]
    ledger.upsert_node(accounted)  # and again accounting it
    assert ledger.accounts_cpu()
