"""best-fit: the tightest fit in absolute leftover, scaled by the largest node."""

import pytest

from extender.core import evaluate, make_policy, parse_pod
from extender.core.loading import build_ledger
from extender.testing.factories import gpu_node, gpu_pod
from simulator.trace import sim_node
from support import S, score_and_gpu, sim_hold, sim_ledger, sim_pod, sim_score


def test_units_and_memory_worked_example():
    # largest node 200 / 32000: left 150 - 30 = 120 units, 28000 - 2000 = 26000 MiB:
    #   10 * (1 - 0.5 * 120/200 - 0.5 * 26000/32000) = 10 * (1 - 0.3 - 0.40625) = 2.9375; tightest GPU: 0
    assert score_and_gpu("best-fit", True, 30, 2000) == (pytest.approx(2.9375), 0)


def test_prefers_the_small_node_left_full():
    # small: 1 GPU; big: 2 GPUs; largest node 200 units / 32000 MiB; ask 30 units / 2000 MiB
    # small: 10 * (1 - 0.5 * 70/200 - 0.5 * 14000/32000) = 6.0625
    # big:   10 * (1 - 0.5 * 170/200 - 0.5 * 30000/32000) = 1.0625
    ledger, _ = build_ledger(S, [gpu_node("small", gpus=1, memory_mib=16000), gpu_node("big", gpus=2, memory_mib=16000)], [])
    request = parse_pod(gpu_pod("p", units=30, memory_mib=2000), S)
    evaluation = evaluate(ledger, request, ["small", "big"], make_policy("best-fit"))
    assert evaluation.score_of("small") == pytest.approx(6.0625)
    assert evaluation.score_of("big") == pytest.approx(1.0625)


def test_cpu_and_units_worked_example():
    big = sim_node("big", cpu_milli=128000, memory_mib=1 << 20, gpus=8, model="G2")
    node = sim_node("n", cpu_milli=32000, memory_mib=1 << 20, gpus=2, model="G2")
    ledger = sim_ledger(big, node)
    sim_hold(ledger, sim_pod("x", 0, gpus=1, milli=500), "n", make_policy("best-fit"))  # 1500 units left
    pod = sim_pod("p", 8000, gpus=1, milli=500)
    # 10 * (1 - 0.5 * 24000/128000 - 0.5 * 1000/8000) = 8.4375 (the docstring's example)
    assert sim_score(ledger, pod, make_policy("best-fit", dims="cpu+units"), "n") == pytest.approx(8.4375)
    assert sim_score(ledger, pod, make_policy("best-fit"), "n") != pytest.approx(8.4375)  # GPU memory, not CPU


def test_an_unknown_strategy_is_named_with_those_that_exist():
    with pytest.raises(ValueError, match="best-fit: dims must be one of units\\+memory, cpu\\+units, not 'cpu'"):
        make_policy("best-fit", dims="cpu")
