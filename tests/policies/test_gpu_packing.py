"""gpu-packing: shared GPUs first, then idle GPUs of used nodes, idle nodes last (the paper's integer scores)."""

import pytest

from support import score_and_gpu


@pytest.mark.parametrize("used, units, score, gpu", [
    # case 1 (shared GPU taken, 50% free): max(100 - 50/10, 50) = 95 -> 9.5
    (True, 30, 9.5, 0),
    # case 2 (60 units do not fit GPU 0's 50, one idle GPU taken): max(50 - 1, 33) = 49 -> 4.9
    (True, 60, 4.9, 1),
    # case 3 (whole node idle, 2 idle GPUs): max(33 - 2, 2) = 31 -> 3.1
    (False, 30, 3.1, 0),
])
def test_the_three_cases(used, units, score, gpu):
    assert score_and_gpu("gpu-packing", used, units, 2000) == (pytest.approx(score), gpu)
