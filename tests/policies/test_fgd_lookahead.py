"""fgd-lookahead: FGD's fragmentation with a gap's expected final waste and the GPU units host CPU will strand."""

import numpy as np
import pytest

from extender.core import Ledger, evaluate, make_policy
from extender.core.assignment import Assignment, ContainerAssignment, GpuShare
from extender.core.policies.fgd import Fgd
from extender.core.policies.fgd_lookahead import FgdLookahead
from simulator.trace import SETTINGS, sim_node
from support import sim_pod

# shares of one GPU (1000 units): 470 and 320 shared, 1000 whole; no CPU
WORKLOAD = [(0, 1, 470, None, 0.3), (0, 1, 320, None, 0.2), (0, 1, 1000, None, 0.5)]


def test_final_waste_worked_example():
    policy = FgdLookahead(WORKLOAD, tau=0.003, theta=0.05)
    final = policy._final_waste(1000)
    # nothing shared fits 60 or 210 units: they stay
    assert final[60] == 60 and final[210] == 210
    # 360: a 320 pod fits (mass 0.2, filled with probability 0.2 / 0.203), leaving 40, which stays
    b = 0.2 / 0.203
    assert final[360] == pytest.approx((1 - b) * 360 + b * 40)
    # 530: 470 (0.3) leaves 60, 320 (0.2) leaves 210
    b = 0.5 / 0.503
    assert final[530] == pytest.approx((1 - b) * 530 + b * (0.3 * 60 + 0.2 * 210) / 0.5)
    # FGD's own term for 530: the shapes asking more (the whole GPU, p 0.5) strand it; the correction is the
    # difference, 0 at an empty and at a full GPU
    correction = policy.correction(1000)
    assert correction[530] == pytest.approx(final[530] - 530 * 0.5)
    assert correction[0] == correction[1000] == 0


def test_a_gap_only_rare_shapes_fit_is_charged_whole():
    # 160-unit pods are 1% of the workload: fewer than theta (5%) of the shared pods' mass fit a 190-unit gap
    workload = [(0, 1, 160, None, 0.01), (0, 1, 810, None, 0.49), (0, 1, 1000, None, 0.5)]
    assert FgdLookahead(workload, theta=0.05)._final_waste(1000)[190] == 190
    assert FgdLookahead(workload, theta=0.0)._final_waste(1000)[190] < 100  # counted as filled otherwise


def test_a_pod_without_gpus_goes_where_it_strands_no_gpu():
    # Shape: 1 GPU with 4000 mCPU, so each free GPU needs 4000 mCPU. Node a: 2 free GPUs and 8000 mCPU, node b:
    # 2 free GPUs and 64000. A 2000 mCPU pod without GPUs leaves a able to feed 1.5 GPUs (500 units
    # stranded) and b all of its. FGD sees no change on either (4000 still fits both) and scores them alike.
    workload = [(4000, 1, 1000, None, 1.0)]
    ledger = Ledger(SETTINGS)
    for name, cpu in (("a", 8000), ("b", 64000)):
        ledger.upsert_node(sim_node(name, cpu_milli=cpu, memory_mib=10**6, gpus=2, model="T4"))
    pod = sim_pod("cpu-only", 2000).request()
    fgd = evaluate(ledger, pod, ["a", "b"], Fgd(workload))
    assert fgd.score_of("a") == fgd.score_of("b")
    ahead = evaluate(ledger, pod, ["a", "b"], FgdLookahead(workload))
    assert ahead.best() == "b" and ahead.score_of("a") < ahead.score_of("b")
    # the same count, by hand: lam (2) x 500 units stranded, on FGD's sigmoid score
    assert ahead.score_of("a") == np.floor(100 / (1 + np.exp(2 * 500 / 1000))) / 10


def test_a_shared_pod_leaves_the_gap_a_common_shape_will_fill():
    # A 320 pod; GPU 0 has 530 free, GPU 1 has 680. FGD counts 530 free units as stranded for the whole-GPU
    # shape and takes GPU 0, leaving 210 that nothing fills. fgd-lookahead expects a 470 pod to fill GPU 0
    # (60 left) and takes GPU 1, leaving 360, which the next 320 pod fills (40 left).
    ledger = Ledger(SETTINGS)
    ledger.upsert_node(sim_node("n", cpu_milli=64000, memory_mib=10**6, gpus=2, model="T4"))
    for name, gpu, units in (("x", 0, 470), ("y", 1, 320)):
        ledger.reserve(Assignment(pod_uid=name, namespace="sim", name=name, node="n", pool=None, policy="test",
                                  containers=(ContainerAssignment(name="main", kind="app",
                                                                  gpus=(GpuShare(gpu, None, units, 0),)),)))
    pod = sim_pod("p", 0, gpus=1, milli=320).request()
    chosen = {policy.name: evaluate(ledger, pod, ["n"], policy).placement("n").containers[0].gpus[0].index
              for policy in (Fgd(WORKLOAD), FgdLookahead(WORKLOAD))}
    assert chosen == {"fgd": 0, "fgd-lookahead": 1}


@pytest.mark.parametrize("bad", [{"tau": -1}, {"theta": "x"}, {"lam": float("nan")}, {"lam": "inf"}])
def test_bad_parameters_are_refused_naming_them(bad):
    with pytest.raises(ValueError, match=f"fgd-lookahead: {next(iter(bad))}"):
        make_policy("fgd-lookahead", workload=WORKLOAD, **bad)
