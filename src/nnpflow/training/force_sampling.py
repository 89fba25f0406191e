"""Which training structures have their forces in the loss in an epoch.

``force_fraction`` f and ``force_sampling`` (the aenet PyTorch training docs): of the ``n`` training
structures with reference forces, ``k = max(1, round(f * n))`` are *force
structures* of an epoch; the others contribute their energies only.

* ``'random'``: a new subset every epoch, drawn from
  ``numpy.random.default_rng([seed, epoch, 7919])``;
* ``'fixed'``: one subset for the whole run (the draw of epoch 0).

With ``f = 1`` every force-labelled structure is selected in every epoch.  The
draws depend only on the seed and the epoch, so a resumed run selects exactly
what the uninterrupted run selected.
"""

from __future__ import annotations

import numpy as np

_STREAM = 7919  # separates these draws from the batch-order draws of the same seed


def force_count(n_with_forces: int, fraction: float) -> int:
    """Force structures per epoch: ``max(1, round(fraction * n))`` (0 when n = 0)."""
    n = int(n_with_forces)
    if n == 0:
        return 0
    return min(n, max(1, int(round(float(fraction) * n))))


def force_subset(candidates: np.ndarray, fraction: float, sampling: str, seed: int,
                 epoch: int) -> np.ndarray:
    """The sorted force structures of ``epoch`` among ``candidates`` (indices of
    training structures with forces)."""
    candidates = np.asarray(candidates, dtype=np.int64)
    k = force_count(len(candidates), fraction)
    if k == len(candidates):
        return np.sort(candidates)
    if sampling not in ("random", "fixed"):
        raise ValueError(f"force_sampling must be 'random' or 'fixed', got {sampling!r}")
    draw_epoch = int(epoch) if sampling == "random" else 0
    rng = np.random.default_rng([int(seed), draw_epoch, _STREAM])
    return np.sort(rng.choice(candidates, size=k, replace=False))
