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
:mod:`nnpflow.datasets.base`; docs/aenet-datasets.md maps every option of the
specification to what nnpflow does with it.

``aenet.torch_training.dataset`` of the specification maps to this package.  The
names are imported on first use (module ``__getattr__``): importing one submodule
(e.g. :mod:`nnpflow.datasets.split`) does not load the HDF5 dataset.
"""

from __future__ import annotations

from ..lazy_exports import lazy_exports

#: public name -> module it lives in (imported on first access)
_EXPORTS = {
    "StructureDataset": ".structure_dataset",
    "CachedStructureDataset": ".cached",
    "HDF5StructureDataset": ".hdf5",
    "FeatureDataset": ".base",
    "train_test_split": ".split",
    "train_test_split_dataset": ".split",
    "split_indices": ".split",
    "subset_indices": ".split",
    "feature_statistics": ".split",
    "fit_reference_energies": ".split",
    "collate_samples": ".collate",
    "Batch": ".collate",
    "BatchView": ".collate",
    "batch_loader": ".collate",
    "configure_runtime_caches": ".runtime_cache",
    "RuntimeCaches": ".runtime_cache",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
