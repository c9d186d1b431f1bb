"""dot-product: alignment of the free vector with the request."""

import pytest

from extender.core import make_policy
from simulator.trace import sim_node
from support import score_and_gpu, sim_ledger, sim_pod, sim_score


def test_per_gpu_worked_example():
    # GPU 0 free (0.5, 12000/16000 = 0.75) . ask (0.3, 0.125) = 0.15 + 0.09375 = 0.24375
    #   -> 1 - 0.24375 / 2 = 0.878125; GPU 1: 1 - (0.3 + 0.125) / 2 = 0.7875; GPU 0 wins, 10 * 0.878125
    assert score_and_gpu("dot-product", True, 30, 2000) == (pytest.approx(8.78125), 0)


def test_cpu_and_units_worked_example():
    big = sim_node("big", cpu_milli=128000, memory_mib=1 << 20, gpus=8, model="G2")
    node = sim_node("n", cpu_milli=64000, memory_mib=1 << 20, gpus=4, model="G2")
    ledger = sim_ledger(big, node)
    pod = sim_pod("p", 16000, gpus=1, milli=1000)
    # free (64000, 4000) over (128000, 8000) = (0.5, 0.5); ask (0.125, 0.125): 10 * (1 - 0.125/2) = 9.375
    assert sim_score(ledger, pod, make_policy("dot-product", dims="cpu+units"), "n") == pytest.approx(9.375)


def test_an_unknown_strategy_is_named_with_those_that_exist():
    with pytest.raises(ValueError, match="dot-product: dims must be one of units\\+memory, cpu\\+units"):
        make_policy("dot-product", dims="memory")
