"""Message-passing batches read lazily from the database (LazyGraphs): the same
batches as the packed in-memory set, and a training that gives the same history
and weights, whatever the cache size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnpflow.database import DatabaseReader, write_database
from nnpflow.errors import InputError
from nnpflow.models.batch import PackedGraphs
from nnpflow.models.lazy_graphs import LazyGraphs
from nnpflow.structure import Structure


def mixed_structures(n: int, seed: int = 11) -> list[Structure]:
    """Periodic Cu/Au cells (cubic and skewed) and isolated molecules, with energies,
    forces, charges and dipoles."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        n_atoms = int(rng.integers(2, 7))
        periodic = k % 3 != 2
        if periodic:
            cell = np.diag(rng.uniform(4.0, 6.0, 3))
            if k % 3 == 1:
                cell[1, 0] = rng.uniform(0.5, 1.5)  # skewed
            positions = rng.uniform(0, 1, (n_atoms, 3)) @ cell
        else:
            cell = None
            positions = rng.uniform(0, 3.0, (n_atoms, 3))
        species = list(rng.choice(["Cu", "Au", "H"], n_atoms))
        out.append(Structure(positions=positions, species=species, cell=cell,
                             pbc=np.array([periodic] * 3), energy=float(rng.normal()),
                             forces=rng.normal(size=(n_atoms, 3)),
                             charges=rng.normal(size=n_atoms), total_charge=float(k % 2),
                             dipole=rng.normal(size=3), name=f"s{k}"))
    return out


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    structures = mixed_structures(40)
    db = tmp_path_factory.mktemp("lazy") / "db.h5"
    write_database(db, structures)
    with DatabaseReader(db) as reader:  # what the database gives back
        structures = list(reader.iter_structures())
    return db, structures


@pytest.mark.parametrize("cache", [0, 5, 2048])
def test_batches_equal_packed_batches(database, cache):
    db, structures = database
    kw = dict(cutoff_sr=3.0, cutoff_lr=4.5, targets=("E", "Fa", "Qa", "M2"), total_charge=True)
    packed = PackedGraphs(structures, **kw)
    lazy = LazyGraphs(db, cache_structures=cache, **kw)
    assert len(lazy) == len(packed) == 40
    rng = np.random.default_rng(0)
    batches = [rng.permutation(40)[:b] for b in (1, 3, 8, 17, 40)] + [np.array([2, 5, 8])]
    for dtype in (torch.float32, torch.float64):
        for idx in batches * 2:  # the second round reads from the cache
            pin, ptg = packed.batch(idx, dtype=dtype)
            lin, ltg = lazy.batch(idx, dtype=dtype)
            assert set(ltg) == set(ptg) == {"E", "Fa", "Qa", "M2"}
            for name in ptg:
                assert ltg[name].dtype == ptg[name].dtype
                assert torch.equal(ltg[name], ptg[name]), name
            for name, value in pin.items():
                if name.startswith("offsets") and name not in lin:
                    # only molecules in the batch: zero offsets in the packed set
                    assert all(s.cell is None for s in (structures[i] for i in idx))
                    assert not value.any()
                    continue
                assert lin[name].dtype == value.dtype, name
                assert torch.equal(lin[name], value), name
            assert set(lin) <= set(pin)
    assert len(lazy._records) == min(cache, 40)


def test_errors_name_the_structure(database, tmp_path):
    db, _ = database
    lazy = LazyGraphs(db, cutoff_sr=3.0, targets=("E",), max_Za=29)  # Au (79) is too heavy
    with pytest.raises(InputError, match="max_Za 29"):
        lazy.batch(np.arange(40))
    s = mixed_structures(1)[0]
    s.energy = None
    write_database(tmp_path / "no_energy.h5", [s])
    with pytest.raises(InputError, match="target E .* is missing"):
        LazyGraphs(tmp_path / "no_energy.h5", cutoff_sr=3.0, targets=("E",)).batch([0])


def _train(data, split, out_dir, workers=0):
    from nnpflow.training.losses import parse_terms
    from nnpflow.training.message_passing import ModelJob, train_model
    from nnpflow.training.modelhub import resolve_layer_stack_entry
    layers = [{"name": "RangeSeparation"}, {"name": "GaussianSmearing"},
              {"name": "RandomAtomEmbedding"},
              {"name": "Core", "params": {"num_interactions": 1, "hidden_channels": 8}},
              {"name": "AtomicAffine"}, {"name": "EnergyReduce"}, {"name": "Force"}]
    entry = resolve_layer_stack_entry(
        {"architecture": "SchNet", "layers": layers, "active": True, "suffix": None,
         "build_params": {"dim_embedding": 8, "num_rbf": 8, "max_Za": 80, "cutoff_sr": 3.5},
         "loss": parse_terms({"rmse": {"E": 0.5, "Fa": 0.5}}, "t")}, "t")
    trainer = {"batch_size": 4, "cuda": False, "dtype": "float32", "schedule": "linear",
               "schedule_params": {}, "learning_rate": 0.005, "max_epochs": 3,
               "num_workers": workers, "patience": None, "seed": 5, "warmup_ratio": 0.0,
               "ema_decay": 0.9, "max_grad_norm": None}
    report = train_model(ModelJob(name="m", entry=entry, trainer=trainer, metrics={}, data=data,
                                  split=split, split_key="k", out_dir=out_dir, force=True))
    history = (out_dir / "history.csv").read_text().splitlines()
    weights = torch.load(out_dir / "model_best.pt", weights_only=True)["state_dict"]
    return report, history, weights


def test_lazy_training_equals_in_memory_training(database, tmp_path):
    """Same seed: the same history (time column aside), weights and test metrics
    from the database read per batch (small cache) as from the structures in memory."""
    from nnpflow.models import lazy_graphs
    from nnpflow.training.datahub import ProcessedData
    db, structures = database
    split = {"training": np.arange(0, 28), "validation": np.arange(28, 34),
             "test": np.arange(34, 40)}
    common = dict(directory=tmp_path, hash="h", n_structures=40, targets=["E", "Fa"],
                  features=["N", "Ra", "Za"], reused=True)
    in_memory = ProcessedData(**common, _structures=structures)
    on_disk = ProcessedData(**common, database_file=db)
    assert in_memory.in_memory and not on_disk.in_memory
    packed = _train(in_memory, split, tmp_path / "packed")
    default = lazy_graphs.DEFAULT_CACHE_STRUCTURES
    lazy_graphs.DEFAULT_CACHE_STRUCTURES = 7  # far fewer than the data set: reads every epoch
    try:
        lazy = _train(on_disk, split, tmp_path / "lazy")
    finally:
        lazy_graphs.DEFAULT_CACHE_STRUCTURES = default
    assert {k: v for k, v in packed[0].items() if k != "model"} == \
        {k: v for k, v in lazy[0].items() if k != "model"}

    def drop_time(lines):
        col = lines[0].split(",").index("time_s")
        return [",".join(c for k, c in enumerate(line.split(",")) if k != col) for line in lines]
    assert drop_time(packed[1]) == drop_time(lazy[1])
    assert packed[2].keys() == lazy[2].keys()
    for name in packed[2]:
        assert torch.equal(packed[2][name], lazy[2][name]), name


def test_lazy_training_in_worker_processes(database, tmp_path):
    """Batches assembled in a DataLoader worker (its own database handle) give the
    same training as in the main process."""
    from nnpflow.training.datahub import ProcessedData
    db, _ = database
    split = {"training": np.arange(0, 20), "validation": np.arange(20, 26)}
    data = ProcessedData(directory=tmp_path, hash="h", n_structures=40, targets=["E", "Fa"],
                         features=["N", "Ra", "Za"], reused=True, database_file=db)
    main = _train(data, split, tmp_path / "main")
    worker = _train(data, split, tmp_path / "worker", workers=1)
    for name in main[2]:
        assert torch.equal(main[2][name], worker[2][name]), name
