"""The datasets of the aenet PyTorch dataset specification (aenet-python's torch_training docs),
on nnpflow's database.

* :class:`StructureDataset` — structures in memory, on-the-fly features, force capable;
* :class:`CachedStructureDataset` — eager in-memory features, energy-only;
* :class:`HDF5StructureDataset` — lazy HDF5 database with persisted features and
  compact force derivatives, per-worker read-only handles;
* :func:`train_test_split`, :func:`train_test_split_dataset` — seeded ``Subset`` splits;
* :func:`collate_samples` / :class:`Batch` — one vectorised batch per step;
  :func:`batch_loader` / :class:`BatchView` — a DataLoader of whole batches
  assembled by the dataset (fast energy-only path);
* :func:`configure_runtime_caches` — the trainer-owned runtime caches;
* :func:`feature_statistics` — exact per-species feature statistics of a
  dataset or split.

Sample dicts, views and the force selection are described in
:mod:`nnpflow.datasets.base`.
"""

from __future__ import annotations

from .base import FeatureDataset
from .cached import CachedStructureDataset
from .collate import Batch, BatchView, batch_loader, collate_samples
from .hdf5 import HDF5StructureDataset
from .runtime_cache import RuntimeCaches, configure_runtime_caches
from .split import (feature_statistics, fit_reference_energies, split_indices,
                    subset_indices, train_test_split, train_test_split_dataset)
from .structure_dataset import StructureDataset

__all__ = ["StructureDataset", "CachedStructureDataset", "HDF5StructureDataset",
           "FeatureDataset", "train_test_split", "train_test_split_dataset", "split_indices",
           "subset_indices", "feature_statistics", "fit_reference_energies", "collate_samples", "Batch", "BatchView", "batch_loader",
           "configure_runtime_caches", "RuntimeCaches"]
