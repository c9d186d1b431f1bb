"""binpack (MostAllocated): node n of 200 units / 32000 MiB, 50 units and 4000 MiB used on GPU 0."""

import pytest

from support import score_and_gpu


def test_score_is_the_mean_allocated_fraction_and_the_fullest_gpu_is_taken():
    # 10 * ((50 + 30) / 200 + (4000 + 2000) / 32000) / 2 = 10 * (0.4 + 0.1875) / 2 = 2.9375; fullest GPU: 0
    assert score_and_gpu("binpack", True, 30, 2000) == (pytest.approx(2.9375), 0)


def test_an_idle_node_scores_what_the_pod_takes():
    # 10 * (30 / 200 + 2000 / 32000) / 2 = 10 * (0.15 + 0.0625) / 2 = 1.0625
    assert score_and_gpu("binpack", False, 30, 2000) == (pytest.approx(1.0625), 0)
