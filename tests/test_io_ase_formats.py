"""Formats read through ASE: energies and forces from the calculator results."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from nnpflow import ConfigError, InputError
from nnpflow.io import detect_format, read_structures, resolve_format
from nnpflow.io.ase_formats import read_ase


def frames():
    rng = np.random.default_rng(0)
    out = []
    for k in range(3):
        atoms = Atoms("Cu2Au", positions=rng.normal(size=(3, 3)) + [[0, 0, 0], [2, 0, 0], [0, 2, 0]],
                      cell=np.eye(3) * (5 + k), pbc=True)
        atoms.calc = SinglePointCalculator(atoms, energy=-1.25 * (k + 1),
                                           forces=rng.normal(size=(3, 3)))
        out.append(atoms)
    return out


def test_extxyz_energies_and_forces_read_back(tmp_path):
    import ase.io

    images = frames()
    path = tmp_path / "data.extxyz"
    ase.io.write(path, images, format="extxyz")
    got = list(read_ase(path))
    assert [s.name for s in got] == [f"{path}@{k}" for k in range(3)]
    assert [s.frame for s in got] == [0, 1, 2]
    for s, atoms in zip(got, images):
        assert s.energy == pytest.approx(atoms.get_potential_energy(), abs=1e-7)
        np.testing.assert_allclose(s.forces, atoms.get_forces(), atol=1e-7)  # extxyz: %.8f
        np.testing.assert_allclose(s.cell, atoms.cell[:], atol=1e-7)
        assert s.species == ["Cu", "Cu", "Au"]


def test_single_frame_keeps_plain_label_and_index_option(tmp_path):
    import ase.io

    path = tmp_path / "one.xyz"
    ase.io.write(path, frames(), format="extxyz")
    (s,) = list(read_structures(path, index="1"))
    assert s.name == str(path) and s.frame is None
    assert s.energy == pytest.approx(-2.5)
    (s,) = list(read_structures(path, format="extxyz", index="-1"))
    assert s.energy == pytest.approx(-3.75)


def test_xsf_is_never_read_by_ase(tmp_path):
    path = tmp_path / "a.xsf"
    path.write_text("# total energy = -1 eV\nATOMS\nH 0 0 0 1.0 0 0\nH 0 0 0.7 -1.0 0 0\n")
    (s,) = list(read_ase(path))
    np.testing.assert_array_equal(s.forces[0], [1.0, 0, 0])  # ASE would give 27.2...
    (s,) = list(read_ase(path, format="xsf"))
    assert s.energy == -1.0


def test_format_detection():
    assert detect_format("x/a.XSF") == "xsf"
    assert detect_format("a.tar.bz2") == "tar"
    assert detect_format("a.tgz") == "tar"
    assert detect_format("a.pkl") == "pickle"
    assert detect_format("a.npz") == "npz"
    assert detect_format("OUTCAR") == "ase"
    assert resolve_format("OUTCAR", "vasp-out") == "vasp-out"
    with pytest.raises(ConfigError, match="unknown format 'nope'"):
        resolve_format("a.dat", "nope")


def test_unused_option_is_rejected(tmp_path):
    path = tmp_path / "a.xsf"
    path.write_text("ATOMS\nH 0 0 0\n")
    with pytest.raises(ConfigError, match="index do not apply to format 'xsf'"):
        list(read_structures(path, index=":"))


def test_ase_failure_becomes_input_error(tmp_path):
    path = tmp_path / "broken.extxyz"
    path.write_text("3\nLattice=\"1 0 0 0 1 0 0 0 1\" Properties=species:S:1:pos:R:3\nCu 0 0\n")
    with pytest.raises(InputError, match=r"broken.extxyz: ASE could not read it"):
        list(read_ase(path))
    empty = tmp_path / "empty.extxyz"
    empty.write_text("")
    with pytest.raises(InputError, match=r"empty.extxyz: empty file"):
        list(read_ase(empty))
