"""One rounding rule for split sizes (issue 14): a fraction of n structures is the
nearest count, an exact half going to the even neighbour (the workflow's rule
before), in the workflow's split, train.yaml's Splitter and the API's
testpercent alike."""

from __future__ import annotations

import pytest

from nnpflow.datasets.split import split_indices
from nnpflow.splitting import fraction_count, part_size
from nnpflow.training.splitter import part_sizes


@pytest.mark.parametrize("fraction, n, expected", [
    (0.5, 5, 2), (0.25, 10, 2), (0.25, 6, 2), (0.5, 3, 2), (0.2, 12, 2), (0.0, 7, 0),
    (0.3, 10, 3), (0.7, 10, 7)])
def test_fraction_count_is_the_nearest_count_halves_to_even(fraction, n, expected):
    # exact halves: 2.5 -> 2, 1.5 -> 2
    assert fraction_count(fraction, n) == expected


def test_every_surface_uses_the_same_rule():
    for n in range(4, 60):
        for fraction in (0.05, 0.1, 0.15, 0.25, 0.3, 0.5):
            want = fraction_count(fraction, n)
            assert part_size(fraction, n) == want
            sizes = part_sizes(n, ["training", "validation"], [0.4, fraction])
            assert sizes["validation"] == want
            train, test = split_indices(n, fraction, seed=0)
            assert len(test) == min(max(want, 1 if n >= 2 else 0), n - 1)
            assert len(train) + len(test) == n
