"""The bundled example data set: EMT-labelled Cu/Au/Pt cells, no download needed.

Structures are fcc supercells of 8 to 108 atoms (2x1x1 ... 3x3x3 conventional
cells) of pure Cu, Au, Pt and random binary/ternary alloys (lattice constant by
Vegard's rule from EMT's own: Cu 3.58, Au 4.06, Pt 3.92 Å), some with a vacancy,
sampled three ways (a third each):

* ``strained``: random symmetric strain (2 % standard deviation per component)
  plus a 0.01 Å rattle;
* ``rattled``: Gaussian displacements of 0.03 to 0.12 Å;
* ``md``: short Langevin runs (5 fs steps, 300 to 1200 K) sampled every 4 steps,
  up to 8 snapshots per run.

Total energies (eV) and forces (eV/Å) come from ASE's EMT calculator.  The
first part of the set is written as single XSF files ``xsf/example-0000.xsf``
..., the rest as XSF members ``example-NNNN.xsf`` of ``archive.tar.bz2`` (member
names unique).  The output is deterministic for a seed (the archive too: fixed
member metadata).

Config (the workflow's ``example`` block; defaults in brackets):

``enabled`` [true]
    Whether the workflow generates (and by default trains on) the example.
``n_structures`` [240]
    Number of structures (>= 1).
``seed`` [0]
    Seed of the random choices.
``archive_fraction`` [0.5]
    Fraction of the structures packed into ``archive.tar.bz2`` (0 to 1); the file
    is left out when no structure goes there.

The default set takes about 10 s on one core.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from .errors import ConfigError
from .io.xsf import format_xsf, write_xsf
from .safe_write import atomic_path
from .structure import Structure

__all__ = ["DEFAULTS", "example_config", "example_files", "generate_example",
           "example_structures", "ARCHIVE_NAME"]

log = logging.getLogger(__name__)

DEFAULTS = {"enabled": True, "n_structures": 240, "seed": 0, "archive_fraction": 0.5}
ARCHIVE_NAME = "archive.tar.bz2"

_LATTICE = {"Cu": 3.58, "Au": 4.06, "Pt": 3.92}  # EMT's fcc lattice constants, Å
_ELEMENTS = ("Cu", "Au", "Pt")
_REPEATS = ((2, 1, 1), (2, 2, 1), (2, 2, 2), (3, 2, 2), (3, 3, 2), (3, 3, 3))
_REPEAT_WEIGHTS = np.array([0.25, 0.25, 0.2, 0.12, 0.1, 0.08])
_MD_SNAPSHOTS = 8
_MD_INTERVAL = 4


def example_config(config: Mapping | None = None) -> dict:
    """The example block with defaults filled in; unknown keys or bad values raise
    :class:`ConfigError`."""
    cfg = dict(DEFAULTS)
    config = dict(config or {})
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"example: unknown key(s) {', '.join(unknown)}; allowed: "
                          f"{', '.join(DEFAULTS)}")
    cfg.update({k: v for k, v in config.items() if v is not None})
    if not isinstance(cfg["enabled"], bool):
        raise ConfigError(f"example.enabled must be true or false, got {cfg['enabled']!r}")
    n = cfg["n_structures"]
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"example.n_structures must be an integer >= 1, got {n!r}")
    seed = cfg["seed"]
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"example.seed must be an integer >= 0, got {seed!r}")
    frac = cfg["archive_fraction"]
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 <= frac <= 1:
        raise ConfigError(f"example.archive_fraction must be between 0 and 1, got {frac!r}")
    cfg["n_structures"], cfg["seed"], cfg["archive_fraction"] = int(n), int(seed), float(frac)
    return cfg


def _split(cfg: dict) -> tuple[int, int, int]:
    """(number of single files, number of archive members, name width)."""
    n = cfg["n_structures"]
    n_archive = int(round(n * cfg["archive_fraction"]))
    return n - n_archive, n_archive, max(4, len(str(n - 1)))


def _name(i: int, width: int) -> str:
    return f"example-{i:0{width}d}.xsf"


def example_files(config: Mapping | None = None) -> list[str]:
    """Relative paths :func:`generate_example` writes for ``config`` (known before
    generating, as the workflow needs them when it builds its DAG)."""
    cfg = example_config(config)
    n_files, n_archive, width = _split(cfg)
    files = [f"xsf/{_name(i, width)}" for i in range(n_files)]
    if n_archive:
        files.append(ARCHIVE_NAME)
    return files


def _base_cell(rng: np.random.Generator):
    from ase.build import bulk

    repeat = _REPEATS[rng.choice(len(_REPEATS), p=_REPEAT_WEIGHTS)]
    n_elements = rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2])
    elements = list(rng.choice(_ELEMENTS, size=n_elements, replace=False))
    n_sites = 4 * int(np.prod(repeat))
    if n_elements == 1:
        symbols = elements * n_sites
    else:
        weights = rng.dirichlet(np.full(n_elements, 2.0))
        symbols = list(rng.choice(elements, size=n_sites, p=weights))
    counts = {e: symbols.count(e) for e in sorted(set(symbols))}  # fixed order: exact sums
    a = sum(_LATTICE[e] * c for e, c in counts.items()) / n_sites
    atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat(repeat)
    atoms.set_chemical_symbols(symbols)
    if n_sites >= 16 and rng.random() < 0.2:
        del atoms[int(rng.integers(n_sites))]
    return atoms


def _labelled(atoms) -> Structure:
    energy = float(atoms.get_potential_energy())
    forces = np.array(atoms.get_forces())
    return Structure(positions=atoms.get_positions(), species=atoms.get_chemical_symbols(),
                     cell=np.array(atoms.cell[:]), pbc=(True, True, True), energy=energy,
                     forces=forces)


def _min_distance(s: Structure) -> float:
    from .structure_checks import closest_pair

    hit = closest_pair(s, 1.2)
    return np.inf if hit is None else hit[0]


def example_structures(n_structures: int = DEFAULTS["n_structures"],
                       seed: int = DEFAULTS["seed"]) -> Iterator[Structure]:
    """Yield the example structures in order (positions Å, energy eV, forces eV/Å)."""
    from ase.calculators.emt import EMT
    from ase.md.langevin import Langevin
    from ase.md import velocitydistribution

    # ASE >= 3.29 names it thermalize_momenta (same draw); older versions only have the old name
    thermalize = getattr(velocitydistribution, "thermalize_momenta",
                         velocitydistribution.MaxwellBoltzmannDistribution)
    from ase.units import fs

    rng = np.random.default_rng(seed)
    made = 0
    # a third of each kind: 8 strained and 8 rattled cells per MD run of 8 snapshots
    kinds = ("strained", "rattled") * _MD_SNAPSHOTS + ("md",)
    k = 0
    while made < n_structures:
        kind = kinds[k % len(kinds)]
        k += 1
        atoms = _base_cell(rng)
        atoms.calc = EMT()
        if kind == "strained":
            eps = rng.normal(0.0, 0.02, size=(3, 3))
            eps = 0.5 * (eps + eps.T)
            atoms.set_cell(atoms.cell[:] @ (np.eye(3) + eps), scale_atoms=True)
            atoms.positions += rng.normal(0.0, 0.01, size=atoms.positions.shape)
            snapshots = [atoms]
        elif kind == "rattled":
            atoms.positions += rng.normal(0.0, rng.uniform(0.03, 0.12), size=atoms.positions.shape)
            snapshots = [atoms]
        else:
            temperature = float(rng.uniform(300.0, 1200.0))
            thermalize(atoms, temperature_K=temperature, rng=rng)
            dyn = Langevin(atoms, 5.0 * fs, temperature_K=temperature, friction=0.02,
                           fixcm=False, rng=rng)
            snapshots = []
            for _ in range(min(_MD_SNAPSHOTS, n_structures - made)):
                dyn.run(_MD_INTERVAL)
                snapshots.append(_labelled(atoms))  # the step's EMT results, no recomputation
        for snap in snapshots:
            if made >= n_structures:
                break
            if not isinstance(snap, Structure):
                snap = _labelled(snap)
            if _min_distance(snap) < 1.2:  # never happens at these amplitudes; keep data clean
                continue
            snap.info["example_kind"] = kind
            made += 1
            yield snap


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def generate_example(out_dir: str | os.PathLike, config: Mapping | None = None,
                     show_progress: bool = False) -> list[Path]:
    """Generate the example set under ``out_dir``; returns the written paths
    (exactly ``example_files(config)``, in that order).  Every file is written
    atomically."""
    cfg = example_config(config)
    out = Path(out_dir)
    n_files, n_archive, width = _split(cfg)
    structures = example_structures(cfg["n_structures"], cfg["seed"])
    if show_progress:
        from tqdm.auto import tqdm

        structures = tqdm(structures, total=cfg["n_structures"], desc="example (EMT)")
    written: list[Path] = []
    members: list[tuple[str, bytes]] = []
    for i, s in enumerate(structures):
        s.info.clear()
        if i < n_files:
            path = out / "xsf" / _name(i, width)
            write_xsf(path, s)
            written.append(path)
        else:
            members.append((_name(i, width), format_xsf(s).encode()))
    if n_archive:
        path = out / ARCHIVE_NAME
        with atomic_path(path) as tmp:
            with tarfile.open(tmp, "w:bz2") as tf:
                for name, data in members:
                    tf.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
        written.append(path)
    log.info("example: wrote %d XSF files and %d archive members under %s",
             n_files, n_archive, out)
    return written
