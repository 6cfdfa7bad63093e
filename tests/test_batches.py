"""The trainer's batch draws: foreground items, and slices without foreground at ``empty_slice_fraction``."""
from types import SimpleNamespace

import numpy as np
import pytest

from desam_nnu.errors import DeSAMInputError
from desam_nnu.trainers.batches import _Batches
from desam_nnu.trainers.slices import ItemIndex

DRAWS = 20000


def _batches(foreground: int, empty: int, fraction: float, seed: int = 0) -> _Batches:
    """A split of two cases: ``foreground`` items with foreground, then ``empty`` without, alternating cases."""
    n = foreground + empty
    items = ItemIndex(cases=("a", "b"), case_of_item=np.arange(n) % 2, local_index=np.arange(n) // 2,
                      position=np.zeros((n, 3), np.int32), has_foreground=np.arange(n) < foreground)
    trainer = SimpleNamespace(items=items, use_cache=False, empty_slice_fraction=fraction)
    return _Batches(trainer, dataset=None, keys=["a", "b"], rng=np.random.default_rng(seed))


@pytest.mark.parametrize("fraction", [0.2, 0.5])
def test_slices_without_foreground_come_at_the_fraction(fraction):
    b = _batches(foreground=30, empty=70, fraction=fraction)
    drawn = b._draw(DRAWS)
    share = float(np.mean(drawn >= 30))  # items 30.. are the empty ones
    assert abs(share - fraction) < 4 * np.sqrt(fraction * (1 - fraction) / DRAWS)  # four standard errors
    assert set(np.unique(drawn)) == set(range(100))  # every item of both kinds is drawn


def test_only_one_kind_draws_that_kind():
    assert _batches(foreground=10, empty=0, fraction=0.2)._draw(500).max() < 10
    no_foreground = _batches(foreground=0, empty=10, fraction=0.2)._draw(500)  # draws empties, does not fail
    assert len(no_foreground) == 500 and set(no_foreground) == set(range(10))
    assert set(_batches(foreground=10, empty=5, fraction=0.0)._draw(2000)) == set(range(10))


def test_a_split_without_items_is_refused():
    trainer = _batches(foreground=1, empty=1, fraction=0.2).trainer
    with pytest.raises(DeSAMInputError, match="no training slices"):
        _Batches(trainer, dataset=None, keys=["c"], rng=np.random.default_rng(0))
