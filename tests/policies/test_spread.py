"""spread (LeastAllocated): node n of 200 units / 32000 MiB, 50 units and 4000 MiB used on GPU 0."""

import pytest

from extender.core import evaluate, make_policy, parse_pod
from extender.core.loading import build_ledger
from extender.testing.factories import gpu_node, gpu_pod
from support import S, score_and_gpu


def test_score_is_ten_minus_binpack_and_the_emptiest_gpu_is_taken():
    # 10 - 2.9375 = 7.0625; emptiest GPU: 1
    assert score_and_gpu("spread", True, 30, 2000) == (pytest.approx(7.0625), 1)


def test_spread_takes_the_big_node_best_fit_the_small():
    # small: 1 GPU; big: 2 GPUs; ask 30 units / 2000 MiB
    ledger, _ = build_ledger(S, [gpu_node("small", gpus=1, memory_mib=16000), gpu_node("big", gpus=2, memory_mib=16000)], [])
    request = parse_pod(gpu_pod("p", units=30, memory_mib=2000), S)
    assert evaluate(ledger, request, ["small", "big"], make_policy("spread")).best() == "big"
    assert evaluate(ledger, request, ["small", "big"], make_policy("best-fit")).best() == "small"
