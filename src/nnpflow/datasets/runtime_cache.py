"""Trainer-owned runtime caches of a dataset instance (the ``cache_*`` options of
the aenet PyTorch training configuration, aenet-python's torch_training docs).

The trainer sets them from ``TorchTrainingConfig`` with
:func:`configure_runtime_caches`; datasets are passive and never enable them on
their own.  The caches live in the dataset instance of each process: DataLoader
workers each fill their own (they start empty in a worker), and nothing is
written back to disk.

* ``features`` (``cache_features`` / ``cache_feature_max_entries``): the
  energy-view features of a structure, keyed by the base dataset's index.
  Energy-view samples look here first, then at compatible persisted features,
  then featurise on the fly.
* ``force_payloads`` (``cache_force_triplets`` /
  ``cache_force_triplet_max_entries``): on-the-fly ``(features,
  DescriptorDerivatives)`` of force-view samples, so neighbour lists and
  triplets are built once per structure.  Persisted derivatives do not need it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..database.block_cache import LRUCache


@dataclass
class RuntimeCaches:
    """The runtime caches of one dataset instance (``None`` = disabled)."""

    features: LRUCache | None = None
    force_payloads: LRUCache | None = None
    settings: dict = field(default_factory=dict)

    def clear(self) -> None:
        for cache in (self.features, self.force_payloads):
            if cache is not None:
                cache.clear()

    def fresh(self) -> "RuntimeCaches":
        """Same settings, empty caches (what a pickled copy in a worker gets)."""
        return RuntimeCaches(
            None if self.features is None else LRUCache(self.features.maxsize),
            None if self.force_payloads is None else LRUCache(self.force_payloads.maxsize),
            dict(self.settings))


def _size(enabled: bool, max_entries: int | None, name: str) -> LRUCache | None:
    if not enabled:
        if max_entries is not None:
            # a bound for a disabled cache is meaningless; say so instead of ignoring it
            raise ValueError(f"{name}_max_entries={max_entries} given but the {name} cache "
                             "is disabled")
        return None
    if max_entries is not None and int(max_entries) < 1:
        raise ValueError(f"{name}_max_entries must be >= 1 or None (unbounded), "
                         f"got {max_entries}")
    return LRUCache(None if max_entries is None else int(max_entries))


def base_dataset(dataset: Any) -> Any:
    """The dataset under any nesting of ``torch.utils.data.Subset``."""
    from torch.utils.data import Subset
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


def configure_runtime_caches(dataset: Any, *, cache_features: bool = False,
                             cache_feature_max_entries: int | None = None,
                             cache_force_triplets: bool = False,
                             cache_force_triplet_max_entries: int | None = None
                             ) -> RuntimeCaches:
    """Enable/disable the runtime caches of ``dataset`` (or of the dataset under
    a ``Subset``; splits of one dataset share its caches).  ``None`` as a max
    means unbounded.  Replaces (and so empties) existing caches; returns them."""
    base = base_dataset(dataset)
    if not hasattr(base, "runtime_caches"):
        raise TypeError(f"{type(base).__name__} has no runtime caches")
    caches = RuntimeCaches(
        _size(cache_features, cache_feature_max_entries, "cache_feature"),
        _size(cache_force_triplets, cache_force_triplet_max_entries, "cache_force_triplet"),
        {"cache_features": bool(cache_features),
         "cache_feature_max_entries": cache_feature_max_entries,
         "cache_force_triplets": bool(cache_force_triplets),
         "cache_force_triplet_max_entries": cache_force_triplet_max_entries})
    base.runtime_caches = caches
    return caches
