"""`bench/packed_union.py`'s regrouped tile unions, on selections with a known best grouping."""

import numpy as np
import pytest

from tests import bench_util


@pytest.fixture(scope="module")
def packed_union():
    return bench_util.load_bench_script("packed_union")


def test_regrouping_separates_interleaved_selections(packed_union):
    # Tokens alternate between two selections of 3 blocks that share block 0: consecutive
    # 16-token tiles hold both (union 5); regrouped tiles hold one kind each (union 3).
    bits = np.zeros((1, 1, 64, 12), bool)
    bits[0, 0, 0::2, [0, 1, 2]] = True
    bits[0, 0, 1::2, [0, 7, 9]] = True
    assert packed_union.regrouped_union(bits, window=16, tokens=16, how="greedy") == 5.0
    for how in ("greedy", "sorted"):
        assert packed_union.regrouped_union(bits, window=32, tokens=16, how=how) == 3.0


def test_regrouping_needs_whole_windows(packed_union):
    with pytest.raises(SystemExit, match="must divide T=40"):
        packed_union.regrouped_union(
            np.zeros((1, 1, 40, 4), bool), window=32, tokens=16, how="greedy"
        )
