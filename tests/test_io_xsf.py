"""XSF reader and writer: hand-written files with known values, round trips, TiO2 data."""

from __future__ import annotations

import io

import numpy as np
import pytest

from nnpflow import InputError, Structure
from nnpflow.io.xsf import format_xsf, parse_xsf, read_xsf, write_xsf

PERIODIC = """\
# total energy = -19517.09425849 eV

CRYSTAL
PRIMVEC
        5.17600016     0.00000000     0.00000000
        0.00000000     5.50899976     0.00000000
        0.10000000     0.00000000     9.26300011
PRIMCOORD
3 1
Ti      1.91782900     3.21092298     3.45760499     0.54256802    -0.31428097     2.51304061
8       3.39163500     2.30872800     5.85770899     0.95084881     0.41951986    -2.01453824
o      -4.25105701     2.03699099    11.57059601     2.00022953    -0.36505462    -1.72615883
"""


def test_periodic_file_with_forces_gives_known_values():
    (s,) = parse_xsf(PERIODIC, "a.xsf")
    assert s.name == "a.xsf" and s.frame is None
    assert s.energy == -19517.09425849
    assert s.species == ["Ti", "O", "O"]  # symbol, atomic number, lower-case symbol
    np.testing.assert_array_equal(s.cell, [[5.17600016, 0, 0], [0, 5.50899976, 0],
                                           [0.1, 0, 9.26300011]])
    assert s.pbc.tolist() == [True, True, True]
    # positions outside the cell are kept as written (no wrapping)
    np.testing.assert_array_equal(s.positions[2], [-4.25105701, 2.03699099, 11.57059601])
    # forces are eV/Å as written, not rescaled by the Hartree energy
    np.testing.assert_array_equal(s.forces[0], [0.54256802, -0.31428097, 2.51304061])


def test_forces_differ_from_ase_reader_by_hartree():
    """ASE's XSF reader multiplies forces by Hartree; ours keeps eV/Å."""
    import ase.io
    from ase.units import Hartree

    (s,) = parse_xsf(PERIODIC, "a.xsf")
    atoms = ase.io.read(io.StringIO(PERIODIC), format="xsf")
    np.testing.assert_allclose(atoms.get_forces(), s.forces * Hartree, rtol=1e-12)
    np.testing.assert_allclose(atoms.positions, s.positions, rtol=0, atol=1e-12)


def test_isolated_atoms_without_forces():
    text = "# a molecule\n#  Total Energy = -1.5e1 eV\nATOMS\n 1 0.0 0.0 0.0\nH 0.0 0.0 0.74\n"
    (s,) = parse_xsf(text, "h2.xsf")
    assert s.cell is None and not s.is_periodic and s.forces is None
    assert s.energy == -15.0
    assert s.species == ["H", "H"]
    np.testing.assert_array_equal(s.positions, [[0, 0, 0], [0, 0, 0.74]])


@pytest.mark.parametrize("keyword, pbc", [("SLAB", [True, True, False]),
                                          ("POLYMER", [True, False, False])])
def test_partial_periodicity(keyword, pbc):
    text = PERIODIC.replace("CRYSTAL", keyword)
    (s,) = parse_xsf(text, "a.xsf")
    assert s.pbc.tolist() == pbc
    assert s.cell is not None


def test_molecule_keyword_gives_isolated_structure():
    (s,) = parse_xsf(PERIODIC.replace("CRYSTAL", "MOLECULE"), "a.xsf")
    assert s.cell is None and not s.is_periodic


def test_fortran_exponents_and_blank_lines_inside_block():
    text = ("# total energy = -1.0D+01 eV\nCRYSTAL\nPRIMVEC\n3 0 0\n0 3 0\n0 0 3\n"
            "PRIMCOORD\n2 1\nCu 0 0 0\n\n# comment\nCu 1.5D0 1.5 0\n")
    (s,) = parse_xsf(text, "a.xsf")
    assert s.energy == -10.0
    np.testing.assert_array_equal(s.positions[1], [1.5, 1.5, 0])


def test_skips_conventional_cell_and_datagrid_blocks():
    text = ("# total energy = 2.5 eV\nCRYSTAL\nCONVVEC\n6 0 0\n0 6 0\n0 0 6\nPRIMVEC\n3 0 0\n"
            "0 3 0\n0 0 3\nCONVCOORD\n1 1\nCu 9 9 9\nPRIMCOORD\n1 1\nCu 0 0 0\n"
            "BEGIN_BLOCK_DATAGRID_3D\nstuff\n1 2 3\nEND_BLOCK_DATAGRID_3D\n")
    (s,) = parse_xsf(text, "a.xsf")
    np.testing.assert_array_equal(s.cell, np.eye(3) * 3)
    np.testing.assert_array_equal(s.positions, [[0, 0, 0]])


ANIM = """\
ANIMSTEPS 3
CRYSTAL
PRIMVEC
4 0 0
0 4 0
0 0 4
# total energy = -1.0 eV
PRIMCOORD 1
2 1
Cu 0 0 0 0.1 0 0
Cu 2 2 0 -0.1 0 0
# total energy = -2.0 eV
PRIMCOORD 2
2 1
Cu 0 0 0.1 0 0.2 0
Cu 2 2 0 0 -0.2 0
PRIMVEC 3
5 0 0
0 5 0
0 0 5
# total energy = -3.0 eV
PRIMCOORD 3
2 1
Cu 0 0 0.2 0 0 0.3
Cu 2.5 2.5 0 0 0 -0.3
"""


def test_animsteps_frames_labels_energies_and_cells():
    frames = parse_xsf(ANIM, "md.xsf")
    assert [s.name for s in frames] == ["md.xsf@0", "md.xsf@1", "md.xsf@2"]
    assert [s.frame for s in frames] == [0, 1, 2]
    assert [s.energy for s in frames] == [-1.0, -2.0, -3.0]
    np.testing.assert_array_equal(frames[1].cell, np.eye(3) * 4)
    np.testing.assert_array_equal(frames[2].cell, np.eye(3) * 5)
    np.testing.assert_array_equal(frames[1].forces[1], [0, -0.2, 0])


def test_isolated_animation_round_trip_and_bom():
    rng = np.random.default_rng(11)
    frames = [_random_structure(rng, 3, False, True) for _ in range(2)]
    text = format_xsf(frames)
    assert "ATOMS 2\n" in text and "PRIMVEC" not in text
    back = parse_xsf(("\ufeff" + text).encode("utf-8"), "iso.xsf")
    for a, b in zip(frames, back):
        _same(a, b)
    assert back[1].name == "iso.xsf@1"


def test_windows_line_endings():
    (s,) = parse_xsf(PERIODIC.replace("\n", "\r\n").encode(), "a.xsf")
    assert s.energy == -19517.09425849 and s.n_atoms == 3


def test_member_label():
    (s,) = parse_xsf(PERIODIC, "data/a.tar.gz", member="x/a.xsf#2")
    assert s.name == "data/a.tar.gz:x/a.xsf#2"


def _random_structure(rng, n, periodic, forces, energy=True, name=""):
    cell = rng.normal(size=(3, 3)) + np.eye(3) * 6 if periodic else None
    return Structure(positions=rng.normal(size=(n, 3)) * 3, species=list(rng.choice(
        ["H", "C", "Cu", "Au", "Og"], size=n)), cell=cell,
        energy=float(rng.normal() * 1e3) if energy else None,
        forces=rng.normal(size=(n, 3)) * 1e-3 if forces else None, name=name)


def _same(a: Structure, b: Structure) -> None:
    assert a.species == b.species
    np.testing.assert_array_equal(a.positions, b.positions)
    assert (a.cell is None) == (b.cell is None)
    if a.cell is not None:
        np.testing.assert_array_equal(a.cell, b.cell)
    np.testing.assert_array_equal(a.pbc, b.pbc)
    assert a.energy == b.energy
    assert (a.forces is None) == (b.forces is None)
    if a.forces is not None:
        np.testing.assert_array_equal(a.forces, b.forces)
    assert a.content_hash() == b.content_hash()


@pytest.mark.parametrize("periodic", [True, False])
@pytest.mark.parametrize("forces", [True, False])
def test_round_trip_is_exact(tmp_path, periodic, forces):
    rng = np.random.default_rng(7)
    s = _random_structure(rng, 17, periodic, forces)
    path = tmp_path / "s.xsf"
    write_xsf(path, s)
    (back,) = read_xsf(path)
    _same(s, back)
    assert back.name == str(path)


def test_round_trip_animation_with_variable_cell(tmp_path):
    rng = np.random.default_rng(3)
    frames = [_random_structure(rng, 5, True, k != 1, energy=k != 2) for k in range(4)]
    buf = io.StringIO()
    write_xsf(buf, frames)
    text = buf.getvalue()
    assert text.startswith("ANIMSTEPS 4\nCRYSTAL\n")
    back = parse_xsf(text, "anim.xsf")
    assert len(back) == 4
    for a, b in zip(frames, back):
        _same(a, b)
    assert back[2].energy is None


def test_round_trip_slab_and_single_frame_animation():
    rng = np.random.default_rng(5)
    s = _random_structure(rng, 4, True, True)
    s.pbc = np.array([True, True, False])
    (back,) = parse_xsf(format_xsf(s, animate=True), "x")
    _same(s, back)
    assert back.name == "x@0" and back.frame == 0


def test_writer_refuses_what_xsf_cannot_hold():
    s = Structure(positions=[[0, 0, 0]], species=["H"], charges=[0.1])
    with pytest.raises(ValueError, match="charges"):
        format_xsf(s)
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError, match="periodicity"):
        format_xsf([_random_structure(rng, 2, True, False), _random_structure(rng, 2, False, False)])
    odd = _random_structure(rng, 2, True, False)
    odd.pbc = np.array([False, True, True])
    with pytest.raises(ValueError, match="pbc"):
        format_xsf(odd)


def test_write_accepts_ase_atoms(tmp_path):
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = Atoms("CuAu", positions=[[0, 0, 0], [1.3, 1.2, 0.1]], cell=np.eye(3) * 4, pbc=True)
    atoms.calc = SinglePointCalculator(atoms, energy=-3.25, forces=[[0.5, 0, 0], [-0.5, 0, 0]])
    write_xsf(tmp_path / "a.xsf", atoms)
    (s,) = read_xsf(tmp_path / "a.xsf")
    assert s.energy == -3.25 and s.species == ["Cu", "Au"]
    np.testing.assert_array_equal(s.forces, [[0.5, 0, 0], [-0.5, 0, 0]])


def test_require_energy_option():
    text = PERIODIC.replace("# total energy = -19517.09425849 eV", "# no energy here")
    (s,) = parse_xsf(text, "a.xsf")
    assert s.energy is None
    with pytest.raises(InputError, match=r"a.xsf, line 8: no total energy"):
        parse_xsf(text, "a.xsf", require_energy=True)


# ------------------------------------------------------------ shared TiO2 data
def test_tio2_reference_file_known_numbers(shared_data):
    (s,) = read_xsf(shared_data / "xsf-TiO2" / "structure-001.xsf", require_energy=True)
    assert s.energy == -19517.09425849
    assert s.n_atoms == 23
    assert s.composition() == {"Ti": 8, "O": 15}
    np.testing.assert_array_equal(s.forces[0], [0.54256802, -0.31428097, 2.51304061])
    np.testing.assert_array_equal(s.positions[0], [1.91782900, 3.21092298, 3.45760499])
    np.testing.assert_array_equal(np.diag(s.cell), [5.17600016, 5.50899976, 9.26300011])


def test_tio2_set_parses_completely(shared_data):
    files = sorted((shared_data / "xsf-TiO2").glob("*.xsf"))
    assert len(files) == 100
    structures = [s for f in files for s in read_xsf(f, require_energy=True)]
    for s in structures:
        s.validate(require_energy=True, require_forces=True)
    # counts stated in the data set's README
    assert sum(s.n_atoms for s in structures) == 2105
    assert min(s.n_atoms for s in structures) == 6
    assert max(s.n_atoms for s in structures) == 47
