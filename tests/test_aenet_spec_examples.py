"""The examples of the aenet PyTorch dataset specification (aenet-python's
"PyTorch Dataset Options" page, ../shared/spec/aenet-torch-datasets.txt) run as
written, with only the module names mapped (:data:`MODULES`).

Each doctest and code block of the page is transcribed below in aenet's own
spelling and mapped by :func:`nnpflow_names` -- nothing else is changed.  The
doctests run through :mod:`doctest` and must print exactly what the page prints;
the code blocks run with the names the page leaves to the reader (``descriptor``,
``arch``, ``pot``, ...) defined beforehand, on small generated H clusters (so the
page's ``descriptor`` for H and ``atomic_energies={"H": 0.0}`` fit) and, for the
page's ``xsf-TiO2`` folder, on the shared TiO2 data read in place.
"""

from __future__ import annotations

import ast
import doctest
import io
import json
import logging
import re
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from nnpflow.errors import ConfigError
from nnpflow.io.xsf import format_xsf
from nnpflow.structure import Structure

#: the module mapping of issue 15 (longest aenet name first)
MODULES = (("aenet.torch_training.dataset", "nnpflow.datasets"),
           ("aenet.torch_training.sources", "nnpflow.sources"),
           ("aenet.torch_training", "nnpflow.training"),
           ("aenet.torch_featurize", "nnpflow.descriptors"))


def nnpflow_names(source: str) -> str:
    """``source`` with the aenet module names replaced by nnpflow's (only that)."""
    for aenet, ours in MODULES:
        source = source.replace(aenet, ours)
    return source


# --------------------------------------------------------------------------------
# The page's doctests, verbatim
# --------------------------------------------------------------------------------
_DESCRIPTOR_AND_STRUCTURES = '''
>>> descriptor = ChebyshevDescriptor(
...     species=["H"],
...     rad_order=1,
...     rad_cutoff=2.0,
...     ang_order=0,
...     ang_cutoff=2.0,
...     min_cutoff=0.1,
...     device="cpu",
... )
>>> structures = [
...     Structure(
...         positions=np.array(
...             [[0.0, 0.0, 0.0], [0.9, 0.0, 0.0], [0.0, 0.9, 0.0]]
...         ),
...         species=["H", "H", "H"],
...         energy=0.0,%(forces)s
...     ),
...     Structure(
...         positions=np.array(
...             [[0.1, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
...         ),
...         species=["H", "H", "H"],
...         energy=0.5,%(forces)s
...     ),
... ]
'''
_WITH_FORCES = _DESCRIPTOR_AND_STRUCTURES % {"forces": "\n...         forces=np.zeros((3, 3)),"}
_WITHOUT_FORCES = _DESCRIPTOR_AND_STRUCTURES % {"forces": ""}

DOCTESTS = {
    "StructureDataset: Basic Usage": '''
>>> import numpy as np
>>> from aenet.torch_featurize import ChebyshevDescriptor
>>> from aenet.torch_training import Structure
>>> from aenet.torch_training.dataset import StructureDataset
''' + _WITH_FORCES + '''>>> dataset = StructureDataset(
...     structures=structures,
...     descriptor=descriptor,
... )
>>> len(dataset)
2
>>> sample = dataset[0]
>>> sample["features"].shape
torch.Size([3, 3])
>>> sample["use_forces"]
True
''',
    "Manual Dataset Splitting": '''
>>> import numpy as np
>>> from aenet.torch_featurize import ChebyshevDescriptor
>>> from aenet.torch_training import Structure
>>> from aenet.torch_training.dataset import StructureDataset, train_test_split
''' + _WITH_FORCES + '''>>> dataset = StructureDataset(structures=structures, descriptor=descriptor)
>>> train_ds, test_ds = train_test_split(
...     dataset,
...     test_fraction=0.5,
...     seed=42,
... )
>>> (len(train_ds), len(test_ds))
(1, 1)
''',
    "CachedStructureDataset": '''
>>> import numpy as np
>>> from aenet.torch_featurize import ChebyshevDescriptor
>>> from aenet.torch_training import Structure
>>> from aenet.torch_training.dataset import CachedStructureDataset
''' + _WITHOUT_FORCES + '''>>> dataset = CachedStructureDataset(
...     structures=structures,
...     descriptor=descriptor,
...     show_progress=False,
... )
>>> dataset[0]["features"].shape
torch.Size([3, 3])
>>> dataset[0]["use_forces"]
False
''',
}

# --------------------------------------------------------------------------------
# The page's code blocks, verbatim
# --------------------------------------------------------------------------------
STRUCTURE_INPUT_FORMATS = '''
from pathlib import Path

from aenet.geometry import AtomicStructure
from aenet.torch_training import Structure
from aenet.torch_training.dataset import StructureDataset

descriptor = ...  # Reuse your configured ChebyshevDescriptor

# Option 1: file paths (simplest for real training runs)
structure_paths = sorted(Path("xsf-TiO2").glob("*.xsf"))
dataset = StructureDataset(structures=structure_paths, descriptor=descriptor)

# Option 2: AtomicStructure objects (when you want to inspect or edit them)
atomic_structures = [
    AtomicStructure.from_file(path)
    for path in structure_paths[:2]
]
dataset = StructureDataset(
    structures=atomic_structures,
    descriptor=descriptor,
)

# Option 3: torch Structure objects (advanced / fully explicit)
torch_structures = [
    structure
    for atomic in atomic_structures
    for structure in atomic.to_TorchStructure()
]
dataset = StructureDataset(structures=torch_structures, descriptor=descriptor)
'''

#: the same page block in nnpflow's equivalents of aenet.geometry (documented in
#: docs/aenet-datasets.md): ``AtomicStructure.from_file`` -> ``ase.Atoms`` from
#: ``nnpflow.io.read_structures`` (which keeps the XSF energy comment that
#: ``ase.io.read`` drops), ``to_TorchStructure()`` -> ``Structure.from_ase``
STRUCTURE_INPUT_FORMATS_NNPFLOW = '''
from pathlib import Path

from nnpflow.io import read_structures
from nnpflow.training import Structure
from nnpflow.datasets import StructureDataset

# Option 1: file paths (simplest for real training runs)
structure_paths = sorted(Path("xsf-TiO2").glob("*.xsf"))
dataset = StructureDataset(structures=structure_paths, descriptor=descriptor)

# Option 2: ase.Atoms objects (when you want to inspect or edit them)
atomic_structures = [
    [s.to_ase() for s in read_structures(path)]
    for path in structure_paths[:2]
]
dataset = StructureDataset(
    structures=[atoms for frames in atomic_structures for atoms in frames],
    descriptor=descriptor,
)

# Option 3: Structure objects (advanced / fully explicit)
torch_structures = [
    Structure.from_ase(atoms)
    for frames in atomic_structures
    for atoms in frames
]
dataset = StructureDataset(structures=torch_structures, descriptor=descriptor)
'''

RUNTIME_TRAINING_OPTIONS = '''
from aenet.torch_training import TorchTrainingConfig

config = TorchTrainingConfig(
    force_weight=0.1,
    force_fraction=0.3,       # Use 30% of force-labeled structures
    force_sampling="random",  # Resample each epoch
    cache_features=True,      # Cache energy-view features
    cache_neighbors=True,     # Cache neighbor data when helpful
)
'''

STRUCTURE_DATASET_FILTERING = '''
dataset = StructureDataset(
    structures=structures,
    descriptor=descriptor,
    max_energy=0.2,
    atomic_energies={"H": 0.0},
)
'''

CACHED_AUTOMATIC = '''
from aenet.torch_training import TorchTrainingConfig

config = TorchTrainingConfig(
    iterations=100,
    force_weight=0.0,      # Energy-only required
    cache_features=True,   # Triggers CachedStructureDataset
)
'''

CACHED_FILTERING = '''
dataset = CachedStructureDataset(
    structures=structures,
    descriptor=descriptor,
    max_energy=0.2,
    atomic_energies={"H": 0.0},
    show_progress=False,
)
'''

CACHED_FIXED_SPLITS = '''
from aenet.torch_training import Adam, TorchANNPotential, TorchTrainingConfig
from aenet.torch_training.dataset import CachedStructureDataset

train_ds = CachedStructureDataset(
    structures=train_structures,
    descriptor=descriptor,
    atomic_energies={"H": 0.0},
    show_progress=False,
)
test_ds = CachedStructureDataset(
    structures=test_structures,
    descriptor=descriptor,
    atomic_energies={"H": 0.0},
    show_progress=False,
)

config = TorchTrainingConfig(
    iterations=100,
    method=Adam(mu=0.001, batchsize=32),
    force_weight=0.0,
    testpercent=0,  # split is already explicit
)

pot = TorchANNPotential(arch=arch, descriptor=descriptor)
pot.train(train_dataset=train_ds, test_dataset=test_ds, config=config)
'''

HDF5_BUILD = '''
from aenet.torch_training.dataset import HDF5StructureDataset
from glob import glob

# Build HDF5 database (do this once)
file_list = glob("data/**/*.xsf", recursive=True)
db = HDF5StructureDataset(
    descriptor=descriptor,
    database_file="datasets/training.h5",
    sources=file_list,
    mode="build",                  # Build mode
    max_energy=0.2,                # optional build-time filter
    atomic_energies={"H": 0.0},    # dataset-owned reference energies
    in_memory_cache_size=2048,     # LRU cache for unpickled structures
    compression="zlib",
    compression_level=5,
)
db.build_database(
    show_progress=True,
    build_workers=8,                 # optional build-time worker threads
    persist_descriptor=True,         # optional descriptor recovery step
    persist_features=True,           # optional persisted raw features
    persist_force_derivatives=True,  # optional sparse derivative cache
)
# ``db`` is immediately reusable after build_database(); reopening the
# file is only needed in a later session or when you want a separate handle.
'''

HDF5_FROM_TAR = '''
from aenet.torch_training.sources import TarArchiveXSFSourceCollection

db = HDF5StructureDataset(
    descriptor=descriptor,
    database_file="datasets/training_from_tar.h5",
    sources=TarArchiveXSFSourceCollection("data/training.tar.bz2"),
    mode="build",
)
db.build_database(show_progress=True)
'''

HDF5_TRAINING = '''
from aenet.torch_training.dataset import HDF5StructureDataset
from aenet.torch_training import TorchTrainingConfig, Adam

# Load existing database later (read-only, lazy access)
# Reopening is optional if you still have the build-time ``db`` instance.
dataset = HDF5StructureDataset(
    descriptor=None,                 # recover from persisted manifest
    database_file="datasets/training.h5",
    mode="load",                     # Read-only mode
)

# Train with automatic splitting
config = TorchTrainingConfig(
    iterations=100,
    method=Adam(mu=0.001, batchsize=32),
    testpercent=10,
    force_weight=0.1,
    force_fraction=0.3,
    force_sampling="random",
    cache_features=True,
    cache_feature_max_entries=1024,
    cache_neighbors=True,
    cache_neighbor_max_entries=512,
    num_workers=8,                   # Parallel workers (each opens own handle)
    prefetch_factor=4,
    persistent_workers=True,
)

pot.train(dataset=dataset, config=config)
'''

AUTOMATIC_SPLITTING = '''
# Trainer handles split automatically
pot.train(dataset=my_dataset, config=config)  # Uses testpercent
'''

MANUAL_SPLITTING = '''
from aenet.torch_training.dataset import train_test_split_dataset

# Generic splitter for any Dataset (returns Subset objects)
train_ds, test_ds = train_test_split_dataset(
    dataset, test_fraction=0.1, seed=42
)

pot.train(train_dataset=train_ds, test_dataset=test_ds, config=config)
'''

CUSTOM_SPLITS = '''
from torch.utils.data import Subset

# Custom indices (e.g., stratified by composition)
train_indices = [0, 2, 4, 6, 8, ...]
test_indices = [1, 3, 5, 7, 9, ...]

train_ds = Subset(dataset, train_indices)
test_ds = Subset(dataset, test_indices)

pot.train(train_dataset=train_ds, test_dataset=test_ds, config=config)
'''

LARGE_DATASETS = '''
# Efficient large-scale training
dataset = HDF5StructureDataset(
    descriptor=descriptor,
    database_file="large_dataset.h5",
    mode="load",
    in_memory_cache_size=4096,  # Larger cache for workers
)

config = TorchTrainingConfig(
    force_fraction=0.3,
    cache_neighbors=True,
    num_workers=16,            # More workers for I/O
    prefetch_factor=8,         # More prefetching
    persistent_workers=True,   # Keep workers alive
)
'''

#: every block of the page (for the import check)
CODE_BLOCKS = (STRUCTURE_INPUT_FORMATS, RUNTIME_TRAINING_OPTIONS, STRUCTURE_DATASET_FILTERING,
               CACHED_AUTOMATIC, CACHED_FILTERING, CACHED_FIXED_SPLITS, HDF5_BUILD,
               HDF5_FROM_TAR, HDF5_TRAINING, AUTOMATIC_SPLITTING, MANUAL_SPLITTING,
               CUSTOM_SPLITS, LARGE_DATASETS)


def run_block(block: str, namespace: dict, name: str = "<spec block>") -> dict:
    """Execute a page block (module names mapped) in ``namespace``."""
    exec(compile(nnpflow_names(textwrap.dedent(block)), name, "exec"), namespace)
    return namespace


def spec_imports() -> set[tuple[str, str]]:
    """``(aenet module, name)`` for every ``from aenet... import name`` of the page
    whose module the mapping covers."""
    found = set()
    sources = list(CODE_BLOCKS) + [
        "\n".join(line[4:] for line in text.splitlines() if line.startswith((">>> ", "... ")))
        for text in DOCTESTS.values()]
    for source in sources:
        for node in ast.walk(ast.parse(textwrap.dedent(source))):
            if isinstance(node, ast.ImportFrom) and any(node.module == a for a, _ in MODULES):
                found.update((node.module, alias.name) for alias in node.names)
    return found


# --------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------
def h_cluster(rng: np.random.Generator, n: int, stretch: float, name: str) -> Structure:
    """An isolated H_n cluster with a harmonic pair energy E = sum k (r - 0.9)^2
    (k = 0.1 eV/Å^2, r in Å) and its exact forces (eV/Å); ``stretch`` scales the
    positions (larger is mostly higher in energy)."""
    while True:
        pos = rng.normal(scale=0.6, size=(n, 3)) * stretch
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
        if d[np.triu_indices(n, 1)].min() > 0.5:
            break
    energy, forces = 0.0, np.zeros((n, 3))
    for i in range(n):
        for j in range(i + 1, n):
            r = d[i, j]
            energy += 0.1 * (r - 0.9) ** 2
            g = 0.2 * (r - 0.9) * (pos[i] - pos[j]) / r   # dE/dpos_i
            forces[i] -= g
            forces[j] += g
    return Structure(positions=pos, species=["H"] * n, energy=energy, forces=forces,
                     name=name)


@pytest.fixture(scope="module")
def h_clusters() -> list[Structure]:
    rng = np.random.default_rng(7)
    return [h_cluster(rng, 3 + k % 3, 1.0 + 0.03 * k, f"h{k:02d}") for k in range(24)]


@pytest.fixture
def h_descriptor():
    from nnpflow.descriptors import ChebyshevDescriptor
    return ChebyshevDescriptor(species=["H"], rad_order=3, rad_cutoff=3.0, ang_order=1,
                               ang_cutoff=2.5, min_cutoff=0.1, device="cpu")


@pytest.fixture
def page_dir(tmp_path, h_clusters, monkeypatch):
    """A working folder laid out as the page assumes: ``data/**/*.xsf`` (the H
    clusters, in two subfolders), ``data/training.tar.bz2`` (the same files) and
    ``datasets/``; the current directory during the test."""
    for k, s in enumerate(h_clusters):
        sub = tmp_path / "data" / ("a" if k % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{s.name}.xsf").write_text(format_xsf(s))
    with tarfile.open(tmp_path / "data" / "training.tar.bz2", "w:bz2") as tar:
        for path in sorted((tmp_path / "data").rglob("*.xsf")):
            tar.add(path, arcname=path.name)
    (tmp_path / "datasets").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def per_atom(structures) -> np.ndarray:
    return np.array([s.energy / s.n_atoms for s in structures])


# --------------------------------------------------------------------------------
# names
# --------------------------------------------------------------------------------
def test_every_name_the_page_imports_is_importable_from_the_mapped_module_lazily(tmp_path):
    imports = spec_imports()
    # the page's imports (a transcription slip would show here)
    assert imports == {
        ("aenet.torch_featurize", "ChebyshevDescriptor"),
        ("aenet.torch_training", "Structure"), ("aenet.torch_training", "TorchTrainingConfig"),
        ("aenet.torch_training", "Adam"), ("aenet.torch_training", "TorchANNPotential"),
        ("aenet.torch_training.dataset", "StructureDataset"),
        ("aenet.torch_training.dataset", "train_test_split"),
        ("aenet.torch_training.dataset", "CachedStructureDataset"),
        ("aenet.torch_training.dataset", "HDF5StructureDataset"),
        ("aenet.torch_training.dataset", "train_test_split_dataset"),
        ("aenet.torch_training.sources", "TarArchiveXSFSourceCollection")}
    wanted = sorted({(nnpflow_names(m), n) for m, n in imports}
                    | {("nnpflow.training", n) for n in
                       ("Adam", "SGD", "TorchANNPotential", "TorchTrainingConfig", "Structure")})
    # in a fresh interpreter: importing the packages loads no torch; the names do
    probe = textwrap.dedent(f"""
        import importlib, json, sys
        wanted = {wanted!r}
        for module in sorted({{m for m, _ in wanted}}):
            importlib.import_module(module)
        light = "torch" not in sys.modules
        found = {{}}
        for module, name in wanted:
            value = getattr(sys.modules[module], name)
            found[module + "." + name] = value.__module__ + "." + value.__qualname__
            assert name in sys.modules[module].__all__, (module, name)
        print(json.dumps({{"light": light, "found": found}}))
        """)
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["light"] is True
    assert result["found"]["nnpflow.training.Structure"] == "nnpflow.structure.Structure"
    assert result["found"]["nnpflow.training.Adam"] == "nnpflow.training.config.Adam"
    assert result["found"]["nnpflow.datasets.HDF5StructureDataset"] == \
        "nnpflow.datasets.hdf5.HDF5StructureDataset"
    assert len(result["found"]) == len(wanted)

    import nnpflow.training
    with pytest.raises(AttributeError, match="has no attribute 'Adamm'"):
        nnpflow.training.Adamm  # noqa: B018
    assert {"Adam", "SGD", "TorchANNPotential", "Structure"} <= set(dir(nnpflow.training))


# --------------------------------------------------------------------------------
# doctests
# --------------------------------------------------------------------------------
@pytest.mark.parametrize("section", list(DOCTESTS))
def test_page_doctests_print_what_the_page_prints(section):
    text = nnpflow_names(DOCTESTS[section])
    assert "aenet" not in text
    test = doctest.DocTestParser().get_doctest(text, {}, section, None, 0)
    assert len(test.examples) >= 8
    report = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=0)   # exact output, as on the page
    result = runner.run(test, out=report.write)
    assert result.failed == 0, report.getvalue()
    assert result.attempted == len(test.examples)


# --------------------------------------------------------------------------------
# code blocks
# --------------------------------------------------------------------------------
def rutile_cells(folder: Path, n: int) -> None:
    """``n`` distorted rutile TiO2 cells as aenet XSF files (energy comment line,
    forces) in ``folder``: the stand-in for the page's ``xsf-TiO2`` folder when the
    shared TiO2 data is not available (labels are arbitrary numbers)."""
    rng = np.random.default_rng(3)
    a, c, u = 4.59, 2.96, 0.305
    frac = np.array([[0, 0, 0], [0.5, 0.5, 0.5], [u, u, 0], [1 - u, 1 - u, 0],
                     [0.5 + u, 0.5 - u, 0.5], [0.5 - u, 0.5 + u, 0.5]])
    folder.mkdir()
    for k in range(n):
        cell = np.diag([a, a, c]) * (1 + 0.01 * k)
        pos = frac @ cell + rng.normal(scale=0.03, size=frac.shape)
        s = Structure(positions=pos, species=["Ti", "Ti", "O", "O", "O", "O"], cell=cell,
                      energy=-19517.0 - 0.1 * k, forces=rng.normal(size=(6, 3)))
        (folder / f"structure-{k + 1:03d}.xsf").write_text(format_xsf(s))


def test_structure_input_formats(tmp_path, monkeypatch):
    """The page's first block: Option 1 runs as written; aenet.geometry has no
    nnpflow module (not in the mapping), so Options 2 and 3 run in their documented
    nnpflow equivalents, and all three give the same samples.  ``xsf-TiO2`` is the
    shared TiO2 data (read in place) when available."""
    from conftest import shared_data_dir

    from nnpflow.descriptors import ChebyshevDescriptor
    shared = shared_data_dir()
    if shared is not None and (shared / "xsf-TiO2").is_dir():
        (tmp_path / "xsf-TiO2").symlink_to(shared / "xsf-TiO2")
        n_files = 100
    else:
        rutile_cells(tmp_path / "xsf-TiO2", 3)
        n_files = 3
    monkeypatch.chdir(tmp_path)
    descriptor = ChebyshevDescriptor(species=["O", "Ti"], rad_order=4, rad_cutoff=4.0,
                                     ang_order=2, ang_cutoff=3.0, device="cpu")
    with pytest.raises(ModuleNotFoundError, match="aenet"):
        run_block(STRUCTURE_INPUT_FORMATS, {})
    ns = run_block(STRUCTURE_INPUT_FORMATS_NNPFLOW, {"descriptor": descriptor})
    assert len(ns["structure_paths"]) == n_files
    option3 = ns["dataset"]
    option1 = ns["StructureDataset"](structures=ns["structure_paths"], descriptor=descriptor)
    option2 = ns["StructureDataset"](
        structures=[a for frames in ns["atomic_structures"] for a in frames],
        descriptor=descriptor)
    assert len(option1) == n_files and len(option2) == len(option3) == 2
    for k in range(2):
        a, b, c = option1[k], option2[k], option3[k]
        assert a["energy"] == b["energy"] == c["energy"] < -1000  # eV, from the XSF comment
        torch.testing.assert_close(a["features"], b["features"], rtol=0, atol=0)
        torch.testing.assert_close(a["features"], c["features"], rtol=0, atol=0)
        torch.testing.assert_close(a["forces"], c["forces"], rtol=0, atol=0)
        assert a["use_forces"] and c["use_forces"]


@pytest.fixture
def fresh_no_effect_log(monkeypatch):
    """Forget which no-effect notes this process already logged."""
    from nnpflow.training import config
    monkeypatch.setattr(config, "_LOGGED", set())


def test_runtime_training_options_are_accepted(caplog, fresh_no_effect_log):
    with caplog.at_level(logging.INFO, logger="nnpflow.training.config"):
        config = run_block(RUNTIME_TRAINING_OPTIONS, {})["config"]
        run_block(RUNTIME_TRAINING_OPTIONS, {})                  # a second config
        config.replace(iterations=5)                             # and a derived one
    assert (config.force_weight, config.force_fraction, config.force_sampling) == \
        (0.1, 0.3, "random")
    assert config.cache_features is True and config.cache_neighbors is True
    notes = [r for r in caplog.records if "cache_neighbors" in r.getMessage()]
    assert len(notes) == 1 and notes[0].levelno == logging.INFO     # logged once
    assert "no effect" in notes[0].getMessage()
    assert "neighbour searches happen inside featurisation" in notes[0].getMessage()
    # it is a runtime option: no part of what a resume compares
    assert "cache_neighbors" not in config.identity()
    assert config.identity() == config.replace(cache_neighbors=False).identity()


def test_page_config_trains_like_one_without_caches(h_clusters, h_descriptor):
    """The page's runtime options change how a run is carried out, not its result:
    the page's configuration trains to the same weights as one without caches."""
    from nnpflow.datasets import StructureDataset
    from nnpflow.training import Adam, TorchANNPotential
    config = run_block(RUNTIME_TRAINING_OPTIONS, {})["config"].replace(
        iterations=3, method=Adam(batchsize=8))
    plain = config.replace(cache_features=False, cache_neighbors=False)
    weights = []
    for cfg in (config, plain):
        pot = TorchANNPotential(arch={"H": [(4, "tanh")]}, descriptor=h_descriptor)
        history = pot.train(dataset=StructureDataset(h_clusters, h_descriptor), config=cfg)
        assert {row["force_structures"] for row in history} == {round(0.3 * 22)}
        weights.append(pot.net.state_dict())
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name


def test_options_without_effect_are_logged_not_refused_and_bad_ones_still_refused(
        caplog, fresh_no_effect_log):
    from nnpflow.training import TorchTrainingConfig
    with caplog.at_level(logging.INFO, logger="nnpflow.training.config"):
        cfg = TorchTrainingConfig(force_fraction=0.3, force_sampling="fixed")
        TorchTrainingConfig(force_fraction=0.5)
    assert cfg.force_weight == 0.0 and cfg.force_fraction == 0.3
    notes = [r for r in caplog.records if "force_fraction" in r.getMessage()]
    assert len(notes) == 1 and notes[0].levelno == logging.WARNING
    assert "no effect with force_weight=0" in notes[0].getMessage()
    # nnpflow's own strictness stays: unknown names, ranges, a bound of a disabled cache
    with pytest.raises(ConfigError, match="cache_neighbours.*did you mean 'cache_neighbors'"):
        TorchTrainingConfig(cache_neighbours=True)
    with pytest.raises(ConfigError, match="cache_neighbor_max_entries=100 bounds a cache"):
        TorchTrainingConfig(cache_neighbor_max_entries=100)
    with pytest.raises(ConfigError, match="cache_neighbor_max_entries: must be >= 1"):
        TorchTrainingConfig(cache_neighbors=True, cache_neighbor_max_entries=0)
    with pytest.raises(ConfigError, match="force_fraction: must be > 0"):
        TorchTrainingConfig(force_weight=0.1, force_fraction=0.0)
    # nnpflow's own grammar (workflow, train.yaml) refuses the no-effect combination
    from nnpflow.training.settings import TrainingSettings
    with pytest.raises(ConfigError, match=r"training\.force_fraction/.*with "
                                          r"training\.force_weight=0 no forces do"):
        TorchTrainingConfig.from_settings(
            TrainingSettings(force_weight=0.0, force_fraction=0.5, where="training"))


def test_filtering_blocks_filter_on_referenced_energy_per_atom(h_clusters, h_descriptor):
    from nnpflow.datasets import CachedStructureDataset, StructureDataset
    structures = h_clusters
    e = per_atom(structures)
    assert 0 < (e <= 0.2).sum() < len(e)           # the threshold matters here
    ns = {"structures": structures, "descriptor": h_descriptor,
          "StructureDataset": StructureDataset, "CachedStructureDataset": CachedStructureDataset}
    kept = run_block(STRUCTURE_DATASET_FILTERING, ns)["dataset"]
    assert [s.name for s in kept.structures] == [s.name for s, x in zip(structures, e)
                                                 if x <= 0.2]
    cached = run_block(CACHED_FILTERING, ns)["dataset"]
    assert len(cached) == int((e <= 0.2).sum()) and not cached[0]["use_forces"]
    # references shift the threshold: (E - N * E_H) / N
    shifted = StructureDataset(structures, h_descriptor, max_energy=0.2,
                               atomic_energies={"H": 0.05})
    assert len(shifted) == int((e - 0.05 <= 0.2).sum()) > len(kept)


def test_cached_features_path_and_explicit_fixed_split(h_clusters, h_descriptor, monkeypatch):
    import nnpflow.datasets
    from nnpflow.training import TorchANNPotential
    built = []
    original = nnpflow.datasets.CachedStructureDataset

    class Spy(original):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    structures = [s.copy(forces=None) for s in h_clusters]
    arch = {"H": [(4, "tanh")]}
    # automatic path: structures + cache_features + force_weight=0 -> CachedStructureDataset
    config = run_block(CACHED_AUTOMATIC, {})["config"]
    monkeypatch.setattr(nnpflow.datasets, "CachedStructureDataset", Spy)
    pot = TorchANNPotential(arch=arch, descriptor=h_descriptor)
    history = pot.train(structures=structures, config=config)
    assert len(built) == 1 and len(built[0]) == len(structures)
    assert len(history) == 100 and history[-1]["epoch"] == 100
    # and without cache_features: a StructureDataset
    pot.train(structures=structures, config=config.replace(cache_features=False, iterations=1))
    assert len(built) == 1

    ns = {"train_structures": structures[:18], "test_structures": structures[18:],
          "descriptor": h_descriptor, "arch": arch}
    run_block(CACHED_FIXED_SPLITS, ns)
    history = ns["pot"].history
    assert len(history) == 100
    first, last = history[0], history[-1]
    assert {"val_loss", "train_loss"} <= set(last)
    assert last["val_loss"] < first["val_loss"]            # it learned something
    assert len(ns["train_ds"]) == 18 and len(ns["test_ds"]) == 6


@pytest.mark.filterwarnings("ignore:This DataLoader will create 8 worker processes")
def test_hdf5_blocks_build_train_and_split(page_dir, h_clusters, h_descriptor):
    """The HDF5 section end to end: build (8 build workers, zlib level 5, the
    max_energy filter), the tar source, loading with the recovered descriptor, the
    training configuration with 8 DataLoader workers, the splitting blocks and the
    large-dataset configuration."""
    from nnpflow.datasets import HDF5StructureDataset
    from nnpflow.training import TorchANNPotential, TorchTrainingConfig
    descriptor = h_descriptor
    e = per_atom(h_clusters)
    ns = run_block(HDF5_BUILD, {"descriptor": descriptor})
    db = ns["db"]
    assert len(ns["file_list"]) == 24
    assert len(db) == int((e <= 0.2).sum()) < 24            # filtered when built
    assert db[0]["features"].shape[1] == descriptor.n_features   # usable at once
    assert db.reader.has_features and db.reader.has_force_derivatives
    db.close()

    ns = run_block(HDF5_FROM_TAR, ns)
    assert len(ns["db"]) == 24                               # no filter given
    assert ns["db"][0]["name"].startswith("data/training.tar.bz2:h")
    ns["db"].close()

    pot = TorchANNPotential(arch={"H": [(4, "tanh")]}, descriptor=descriptor)
    ns = run_block(HDF5_TRAINING, {"pot": pot})
    dataset, config = ns["dataset"], ns["config"]
    assert dataset.descriptor.fingerprint == descriptor.fingerprint   # recovered
    assert config.num_workers == 8 and config.prefetch_factor == 4
    assert len(pot.history) == 100
    last = pot.history[-1]
    assert np.isfinite([row["val_loss"] for row in pot.history]).all()
    n_train = len(dataset) - round(0.1 * len(dataset))     # testpercent=10
    assert {row["force_structures"] for row in pot.history} == {round(0.3 * n_train)}
    assert last["train_force_rmse"] is not None and last["val_force_rmse"] is not None

    quick = config.replace(iterations=2, num_workers=0, prefetch_factor=2)
    run_block(AUTOMATIC_SPLITTING, {"pot": pot, "my_dataset": dataset, "config": quick})
    ns = run_block(MANUAL_SPLITTING, {"pot": pot, "dataset": dataset,
                                      "config": quick.replace(testpercent=0)})
    assert len(ns["train_ds"]) + len(ns["test_ds"]) == len(dataset)
    assert set(ns["train_ds"].indices).isdisjoint(ns["test_ds"].indices)

    # the page's custom split has literal ``...`` placeholders in its index lists
    with pytest.raises(TypeError):
        run_block(CUSTOM_SPLITS, {"pot": pot, "dataset": dataset, "config": quick})
    concrete = CUSTOM_SPLITS.replace("[0, 2, 4, 6, 8, ...]", "[0, 2, 4, 6, 8]").replace(
        "[1, 3, 5, 7, 9, ...]", "[1, 3, 5, 7, 9]")
    ns = run_block(concrete, {"pot": pot, "dataset": dataset,
                              "config": quick.replace(testpercent=0)})
    assert list(ns["test_ds"].indices) == [1, 3, 5, 7, 9]
    dataset.close()

    import shutil
    shutil.copy("datasets/training.h5", "large_dataset.h5")
    ns = run_block(LARGE_DATASETS, {"descriptor": descriptor,
                                    "HDF5StructureDataset": HDF5StructureDataset,
                                    "TorchTrainingConfig": TorchTrainingConfig})
    with ns["dataset"] as large:
        assert len(large) == len(db) and large.in_memory_cache_size == 4096
    assert ns["config"].num_workers == 16 and ns["config"].force_weight == 0.0


# --------------------------------------------------------------------------------
# docs
# --------------------------------------------------------------------------------
#: TorchTrainingConfig options the page names in its prose only
PROSE_CONFIG_OPTIONS = ("cache_force_triplets", "cache_force_triplet_max_entries",
                        "cache_warmup", "use_scheduler", "save_best")


def page_keywords() -> dict[str, set[str]]:
    """``{callable: keyword names}`` of every call in the page's code blocks."""
    found: dict[str, set[str]] = {}
    for block in CODE_BLOCKS:
        for node in ast.walk(ast.parse(textwrap.dedent(block))):
            if isinstance(node, ast.Call) and node.keywords:
                f = node.func
                name = f.id if isinstance(f, ast.Name) else getattr(f, "attr", "?")
                found.setdefault(name, set()).update(k.arg for k in node.keywords)
    return found


def test_docs_list_every_option_of_the_page_with_the_code_defaults(repo_root):
    from nnpflow.training import TorchTrainingConfig
    doc = (repo_root / "docs" / "aenet-datasets.md").read_text()
    # the table rows "| `name` (default) | what nnpflow does |"
    rows = dict(re.findall(r"^\| `(\w+)` \((.*?)\) \|", doc, flags=re.M))
    keywords = page_keywords()
    config_options = keywords["TorchTrainingConfig"] | set(PROSE_CONFIG_OPTIONS)
    assert config_options <= set(rows), sorted(config_options - set(rows))
    defaults = TorchTrainingConfig()
    for name in config_options - {"method"}:
        assert ast.literal_eval(rows[name]) == getattr(defaults, name), name
    assert rows["method"] == "`Adam()`" and defaults.method == TorchTrainingConfig().method
    # every keyword the page passes to a dataset, a source or build_database is named
    for func in ("StructureDataset", "CachedStructureDataset", "HDF5StructureDataset",
                 "build_database", "train_test_split_dataset"):
        for name in keywords[func] - {"structures", "descriptor", "dataset"}:
            assert f"`{name}`" in doc or f"{name}," in doc or f"{name})" in doc, (func, name)
    for name in ("AtomicStructure.from_file", "to_TorchStructure()", "read_structures",
                 "Structure.from_ase", "to_ase()"):
        assert name in doc
