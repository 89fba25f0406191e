"""Committees of ANN potentials: members with different seeds on one shared split.

:meth:`ANNCommittee.train` draws the training/validation split once (with
``config.split_seed``, default ``config.seed``) and trains member ``m`` with
seed ``config.seed + m`` (weights, batch order and force subsets differ; the
data do not).  Predictions are the members' mean with their spread: the
population standard deviation over members of each energy (eV) and force
component (eV/Å), a common uncertainty estimate
(:func:`nnpflow.models.prediction_result.committee_mean`, the one committee rule).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ConfigError
from ..evaluation.metrics import prediction_metrics
from ..models.ann_model import as_structure_list, is_feature_dataset
from ..models.prediction_result import PredictionResult, committee_mean
from .potential import TorchANNPotential


class ANNCommittee:
    """A list of trained :class:`TorchANNPotential` members with one descriptor."""

    def __init__(self, members: Sequence[TorchANNPotential]):
        members = list(members)
        if not members:
            raise ConfigError("a committee needs at least one member")
        fp = members[0].descriptor.fingerprint
        for k, m in enumerate(members[1:], start=1):
            if m.descriptor.fingerprint != fp:
                raise ConfigError(f"committee member {k} uses another descriptor "
                                  f"({m.descriptor.config()} vs {members[0].descriptor.config()})")
        self.members = members

    def __len__(self) -> int:
        return len(self.members)

    @property
    def descriptor(self):
        return self.members[0].descriptor

    # -------------------------------------------------------------- training
    @classmethod
    def train(cls, arch: Mapping[str, Sequence], descriptor: Any, n_members: int, *,
              structures: Any = None, dataset: Any = None, train_dataset: Any = None,
              test_dataset: Any = None, config: Any = None) -> "ANNCommittee":
        """Train ``n_members`` potentials on one split (see the module docstring).

        Inputs as :meth:`TorchANNPotential.train`.  With ``config.checkpoint_dir``
        member ``m`` checkpoints to ``<checkpoint_dir>/member_<m>``.
        """
        from .config import TorchTrainingConfig
        if isinstance(n_members, bool) or not isinstance(n_members, int) or n_members < 1:
            raise ConfigError(f"n_members must be a positive integer, got {n_members!r}")
        cfg = config if config is not None else TorchTrainingConfig()
        first = TorchANNPotential(arch, descriptor)
        train, validation = first._training_data(structures, dataset, train_dataset,
                                                 test_dataset, cfg)
        members = []
        for m in range(n_members):
            pot = first if m == 0 else TorchANNPotential(arch, descriptor)
            changes: dict = {"seed": cfg.seed + m, "split_seed": cfg.effective_split_seed}
            if cfg.checkpoint_dir is not None:
                changes["checkpoint_dir"] = str(Path(cfg.checkpoint_dir) / f"member_{m}")
            pot.train(train_dataset=train, test_dataset=validation,
                      config=cfg.replace(**changes, testpercent=0))
            members.append(pot)
        return cls(members)

    # ------------------------------------------------------------ prediction
    def predict(self, structures: Any, eval_forces: bool = True, batch_size: int = 32
                ) -> PredictionResult:
        """Mean energies (eV) and forces (eV/Å) with ``energy_std``/``forces_std``."""
        structs = as_structure_list(structures, self.descriptor)
        return committee_mean([m.model.predict_structures(structs, eval_forces, batch_size)
                               for m in self.members])

    def predict_dataset(self, dataset: Any, eval_forces: bool = True, batch_size: int = 64
                        ) -> PredictionResult:
        return committee_mean([m.predict_dataset(dataset, eval_forces, batch_size)
                               for m in self.members])

    def evaluate(self, data: Any, batch_size: int = 64) -> dict:
        """Metrics of the mean prediction (see :func:`prediction_metrics`) plus
        ``energy_std_mean`` (eV/atom: mean committee spread of E/N) and
        ``force_std_mean`` (eV/Å)."""
        result = (self.predict_dataset(data, batch_size=batch_size) if is_feature_dataset(data)
                  else self.predict(data, batch_size=batch_size))
        out = prediction_metrics(result)
        out["energy_std_mean"] = float(np.mean(result.energy_std / result.n_atoms))
        if result.forces_std:
            out["force_std_mean"] = float(np.mean(np.concatenate(
                [s.reshape(-1) for s in result.forces_std])))
        return out

    # ------------------------------------------------------------------ files
    def save(self, directory: str | os.PathLike) -> list[Path]:
        """Write ``member_<m>.pt`` model files into ``directory``; returns the paths."""
        folder = Path(directory)
        paths = []
        for m, pot in enumerate(self.members):
            path = folder / f"member_{m}.pt"
            pot.save(path)
            paths.append(path)
        return paths

    @classmethod
    def from_files(cls, paths: Sequence[str | os.PathLike], device: str = "cpu"
                   ) -> "ANNCommittee":
        return cls([TorchANNPotential.from_file(p, device=device) for p in paths])
