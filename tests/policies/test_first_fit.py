"""first-fit: a flat score; the lowest GPU index that fits."""

import pytest

from extender.core import evaluate, make_policy, parse_pod
from extender.core.loading import build_ledger
from extender.testing.factories import gpu_node, gpu_pod
from support import S, score_and_gpu


def test_flat_ten_and_the_lowest_index_that_fits():
    assert score_and_gpu("first-fit", True, 30, 2000) == (pytest.approx(10.0), 0)
    assert score_and_gpu("first-fit", True, 60, 2000) == (pytest.approx(10.0), 1)  # GPU 0 has 50 units free


def test_the_node_tie_break_makes_it_an_ordered_scan():
    ledger, _ = build_ledger(S, [gpu_node("b", gpus=1), gpu_node("a", gpus=1)], [])
    evaluation = evaluate(ledger, parse_pod(gpu_pod("p", units=10), S), ["b", "a"], make_policy("first-fit"))
    assert evaluation.best() == "a" and evaluation.best(tie_break="order") == "b"
