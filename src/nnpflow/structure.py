"""The :class:`Structure` record: one atomic configuration with its labels.

Units inside nnpflow: positions and cells in Å, energies in eV, forces in eV/Å,
charges in e, dipoles in e·Å.  Readers convert other units before building a
``Structure``.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Sequence

import numpy as np
from ase.data import atomic_numbers as _ATOMIC_NUMBERS
from ase.data import chemical_symbols as _SYMBOLS

from .errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import ase

#: Element symbols nnpflow accepts (H..Og), as in ASE.
ELEMENTS: frozenset[str] = frozenset(_SYMBOLS[1:])


def element_symbol(token: str | int) -> str:
    """Return the element symbol for a symbol or atomic number (``"8"`` -> ``"O"``).

    Raises ``InputError`` (without location) for anything else.
    """
    if isinstance(token, (int, np.integer)):
        z = int(token)
        if 1 <= z < len(_SYMBOLS):
            return _SYMBOLS[z]
        raise InputError(f"unknown atomic number {z}")
    text = str(token).strip()
    if text.isdigit():
        return element_symbol(int(text))
    if text in ELEMENTS:
        return text
    cap = text.capitalize()
    if cap in ELEMENTS:
        return cap
    raise InputError(f"unknown element symbol {text!r}")


def atomic_number(symbol: str) -> int:
    """Atomic number of an element symbol."""
    return _ATOMIC_NUMBERS[symbol]


@dataclass(eq=False)
class Structure:
    """One atomic structure and its reference labels.

    Attributes
    ----------
    positions : ndarray, shape (N, 3), float64
        Cartesian positions in Å.
    species : list[str], length N
        Element symbols.
    cell : ndarray, shape (3, 3), or None
        Lattice vectors as rows, Å.  ``None`` for an isolated structure.
    pbc : ndarray, shape (3,), bool
        Periodicity along each lattice vector; all True when a cell is given and
        ``pbc`` is not.
    energy : float or None
        Total energy in eV.
    forces : ndarray, shape (N, 3), or None
        Forces in eV/Å.
    charges : ndarray, shape (N,), or None
        Atomic partial charges in e.
    total_charge : float or None
        Total charge in e.
    dipole : ndarray, shape (3,), or None
        Dipole moment in e·Å.
    name : str
        Source label: a file path, ``archive.tar.bz2:member`` for archive members,
        with ``@frame`` appended for frames of multi-frame sources.
    frame : int or None
        Frame index within a multi-frame source, else ``None``.
    """

    positions: np.ndarray
    species: list[str]
    cell: np.ndarray | None = None
    pbc: np.ndarray | Sequence[bool] | None = None
    energy: float | None = None
    forces: np.ndarray | None = None
    charges: np.ndarray | None = None
    total_charge: float | None = None
    dipole: np.ndarray | None = None
    name: str = ""
    frame: int | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.positions = np.ascontiguousarray(self.positions, dtype=np.float64).reshape(-1, 3)
        self.species = [str(s) for s in self.species]
        if self.cell is not None:
            self.cell = np.ascontiguousarray(self.cell, dtype=np.float64).reshape(3, 3)
        if self.pbc is None:
            self.pbc = np.full(3, self.cell is not None)
        else:
            pbc = np.asarray(self.pbc, dtype=bool).reshape(-1)
            self.pbc = np.repeat(pbc, 3) if pbc.size == 1 else pbc.reshape(3)
        if self.energy is not None:
            self.energy = float(self.energy)
        if self.forces is not None:
            self.forces = np.ascontiguousarray(self.forces, dtype=np.float64).reshape(-1, 3)
        if self.charges is not None:
            self.charges = np.ascontiguousarray(self.charges, dtype=np.float64).reshape(-1)
        if self.total_charge is not None:
            self.total_charge = float(self.total_charge)
        if self.dipole is not None:
            self.dipole = np.ascontiguousarray(self.dipole, dtype=np.float64).reshape(3)

    # ------------------------------------------------------------------ basics
    @property
    def n_atoms(self) -> int:
        return int(self.positions.shape[0])

    def __len__(self) -> int:
        return self.n_atoms

    @property
    def is_periodic(self) -> bool:
        return self.cell is not None and bool(np.any(self.pbc))

    @property
    def atomic_numbers(self) -> np.ndarray:
        """Atomic numbers, shape (N,), int64."""
        return np.array([_ATOMIC_NUMBERS[s] for s in self.species], dtype=np.int64)

    def composition(self) -> Counter:
        """Species counts, e.g. ``Counter({'Cu': 4, 'Au': 4})``."""
        return Counter(self.species)

    @property
    def has_forces(self) -> bool:
        return self.forces is not None

    def copy(self, **changes) -> "Structure":
        """A deep copy, optionally with fields replaced."""
        arrays = {k: (None if getattr(self, k) is None else np.array(getattr(self, k)))
                  for k in ("positions", "cell", "pbc", "forces", "charges", "dipole")}
        arrays["species"] = list(self.species)
        arrays["info"] = dict(self.info)
        arrays.update(changes)
        return replace(self, **arrays)

    # -------------------------------------------------------------- validation
    def validate(self, require_energy: bool = False, require_forces: bool = False) -> "Structure":
        """Check shapes, finiteness, elements and the cell; return ``self``.

        Raises :class:`InputError` naming ``self.name`` and the problem.
        """
        def fail(reason: str) -> None:
            raise InputError(reason, source=self.name or None)

        n = self.n_atoms
        if n == 0:
            fail("structure has no atoms")
        if len(self.species) != n:
            fail(f"{len(self.species)} species for {n} positions")
        for s in self.species:
            if s not in ELEMENTS:
                fail(f"unknown element symbol {s!r}")
        if not np.all(np.isfinite(self.positions)):
            bad = int(np.argwhere(~np.isfinite(self.positions))[0, 0])
            fail(f"non-finite position for atom {bad + 1}")
        if self.cell is not None:
            if not np.all(np.isfinite(self.cell)):
                fail("non-finite lattice vectors")
            if np.any(self.pbc) and abs(np.linalg.det(self.cell)) < 1e-8:
                fail("singular cell: the lattice vectors are linearly dependent")
        elif np.any(self.pbc):
            fail("periodic boundary conditions without a cell")
        if self.energy is None:
            if require_energy:
                fail("no total energy")
        elif not np.isfinite(self.energy):
            fail(f"non-finite total energy {self.energy!r}")
        if self.forces is None:
            if require_forces:
                fail("no forces")
        else:
            if self.forces.shape != (n, 3):
                fail(f"forces have shape {self.forces.shape}, expected ({n}, 3)")
            if not np.all(np.isfinite(self.forces)):
                bad = int(np.argwhere(~np.isfinite(self.forces))[0, 0])
                fail(f"non-finite force on atom {bad + 1}")
        if self.charges is not None and self.charges.shape != (n,):
            fail(f"charges have shape {self.charges.shape}, expected ({n},)")
        for label, value in (("charges", self.charges), ("total charge", self.total_charge),
                             ("dipole", self.dipole)):
            if value is not None and not np.all(np.isfinite(value)):
                fail(f"non-finite {label}")
        return self

    # ------------------------------------------------------------------ hashes
    def content_hash(self) -> str:
        """SHA-256 (hex) of the structure's physical content and labels.

        Covers positions, species, cell, pbc, energy, forces, charges, total
        charge and dipole (not ``name``), so two files with the same data hash
        equally.
        """
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.positions, dtype="<f8").tobytes())
        h.update(("\0".join(self.species)).encode())
        for key in ("cell", "forces", "charges", "dipole"):
            value = getattr(self, key)
            h.update(key.encode())
            if value is not None:
                h.update(np.ascontiguousarray(value, dtype="<f8").tobytes())
        h.update(np.asarray(self.pbc, dtype=np.uint8).tobytes())
        for key in ("energy", "total_charge"):
            value = getattr(self, key)
            h.update(f"{key}={value!r}".encode())
        return h.hexdigest()

    # --------------------------------------------------------------- ASE glue
    @classmethod
    def from_ase(cls, atoms: "ase.Atoms", name: str = "", frame: int | None = None,
                 energy: float | None = None, forces: np.ndarray | None = None) -> "Structure":
        """Build from ``ase.Atoms``; energy and forces come from its calculator
        results (``atoms.calc.results``) unless given explicitly."""
        results = {}
        if atoms.calc is not None:
            results = getattr(atoms.calc, "results", {}) or {}
        if energy is None:
            energy = results.get("energy", results.get("free_energy"))
        if forces is None:
            forces = results.get("forces")
        cell = None
        if np.any(atoms.pbc) or atoms.cell.rank == 3:
            cell = np.array(atoms.cell[:], dtype=np.float64)
            if not np.any(atoms.pbc) and atoms.cell.rank == 3:
                cell = None  # isolated molecule in a box: keep it isolated
        charges = results.get("charges")
        if charges is None and atoms.has("initial_charges") and np.any(atoms.get_initial_charges()):
            charges = atoms.get_initial_charges()
        return cls(positions=atoms.get_positions(), species=atoms.get_chemical_symbols(),
                   cell=cell, pbc=np.array(atoms.pbc) if cell is not None else None,
                   energy=energy, forces=forces, charges=charges,
                   dipole=results.get("dipole"), name=name, frame=frame)

    def to_ase(self) -> "ase.Atoms":
        """An ``ase.Atoms`` with a ``SinglePointCalculator`` holding energy/forces."""
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        atoms = Atoms(symbols=self.species, positions=self.positions,
                      cell=self.cell if self.cell is not None else np.zeros((3, 3)),
                      pbc=self.pbc)
        results = {}
        if self.energy is not None:
            results["energy"] = self.energy
            results["free_energy"] = self.energy
        if self.forces is not None:
            results["forces"] = np.array(self.forces)
        if self.charges is not None:
            atoms.set_initial_charges(self.charges)
            results["charges"] = np.array(self.charges)
        if self.dipole is not None:
            results["dipole"] = np.array(self.dipole)
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        if self.name:
            atoms.info["name"] = self.name
        return atoms

    def wrapped(self) -> "Structure":
        """A copy with atoms wrapped into the home cell along periodic directions."""
        if not self.is_periodic:
            return self.copy()
        frac = np.linalg.solve(self.cell.T, self.positions.T).T
        frac[:, self.pbc] -= np.floor(frac[:, self.pbc])
        return self.copy(positions=frac @ self.cell)

    def __repr__(self) -> str:
        formula = "".join(f"{s}{c}" for s, c in sorted(self.composition().items()))
        e = "None" if self.energy is None else f"{self.energy:.6f}"
        return (f"Structure({formula}, n_atoms={self.n_atoms}, periodic={self.is_periodic}, "
                f"energy={e}, forces={self.has_forces}, name={self.name!r})")


def as_structure(obj, name: str = "") -> Structure:
    """Return ``obj`` as a :class:`Structure` (accepts ``Structure`` and ``ase.Atoms``)."""
    if isinstance(obj, Structure):
        return obj
    try:
        from ase import Atoms
    except ImportError:  # pragma: no cover
        Atoms = ()
    if isinstance(obj, Atoms):
        return Structure.from_ase(obj, name=name or str(obj.info.get("name", "")))
    raise TypeError(f"expected nnpflow.Structure or ase.Atoms, got {type(obj).__name__}")
