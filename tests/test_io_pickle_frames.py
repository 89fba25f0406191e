"""Enerzyme-style pickles/npz: field mapping, shared fields, transforms, safe loading."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from nnpflow import ConfigError, InputError
from nnpflow.io import read_structures
from nnpflow.io.pickle_frames import ENERGY_REFERENCE_KEY, iter_frame_results, read_frames
from nnpflow.sources import FileListSourceCollection

FEATURES = {"N": "number_of_atoms", "Ra": "coordinates", "Za": "atomic_numbers",
            "Q": "total_charge"}
TARGETS = {"E": "energy", "Fa": "forces", "Qa": "atomic_charges", "M2": "dipole"}

R0 = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
GRAD0 = np.array([[0.1, 0.2, 0.3], [-0.1, 0.0, 0.5], [0.0, -0.2, -0.8]])


def water_frames():
    return [
        {"number_of_atoms": 3, "coordinates": R0, "atomic_numbers": np.array([8, 1, 1]),
         "total_charge": 0.0, "energy": -2079.5, "forces": GRAD0,
         "atomic_charges": np.array([-0.8, 0.4, 0.4]), "dipole": np.array([0.1, 0.2, 0.0])},
        {"number_of_atoms": 2, "coordinates": R0[:2] + 0.1, "atomic_numbers": [1, 1],
         "total_charge": 1.0, "energy": -13.25, "forces": GRAD0[:2] * 2,
         "atomic_charges": [0.5, 0.5], "dipole": [0.0, 0.0, 0.3]},
    ]


def dump(path, obj, protocol=pickle.HIGHEST_PROTOCOL):
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=protocol)
    return path


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_list_of_dicts_mapping(tmp_path, protocol):
    path = dump(tmp_path / "data.pkl", water_frames(), protocol)
    got = list(read_frames(path, FEATURES, TARGETS))
    assert [s.name for s in got] == [f"{path}@0", f"{path}@1"]
    assert [s.frame for s in got] == [0, 1]
    a, b = got
    assert a.species == ["O", "H", "H"] and b.species == ["H", "H"]
    np.testing.assert_array_equal(a.positions, R0)
    assert a.energy == -2079.5 and b.energy == -13.25
    np.testing.assert_array_equal(a.forces, GRAD0)
    np.testing.assert_array_equal(a.charges, [-0.8, 0.4, 0.4])
    assert a.total_charge == 0.0 and b.total_charge == 1.0
    np.testing.assert_array_equal(b.dipole, [0, 0, 0.3])
    assert a.cell is None and not a.is_periodic


def test_dict_of_arrays_with_shared_fields(tmp_path):
    rng = np.random.default_rng(0)
    R = R0[None] + rng.normal(size=(4, 3, 3)) * 0.01
    F = rng.normal(size=(4, 3, 3))
    data = {"xyz": R, "Z": np.array([8, 1, 1]), "n": 3, "q": -1.0,
            "e": np.array([-1.0, -2.0, -3.0, -4.0]), "f": F}
    path = dump(tmp_path / "d.pickle", data)
    got = list(read_frames(path, {"Ra": "xyz", "Za": "Z", "N": "n", "Q": "q"},
                           {"E": "e", "Fa": "f"}))
    assert len(got) == 4
    for k, s in enumerate(got):
        assert s.species == ["O", "H", "H"] and s.total_charge == -1.0
        assert s.energy == -(k + 1.0) and s.frame == k
        np.testing.assert_array_equal(s.positions, R[k])
        np.testing.assert_array_equal(s.forces, F[k])


def test_padded_frames_are_cut_to_n(tmp_path):
    R = np.zeros((2, 4, 3))
    R[0, :3] = R0
    R[1, :2] = R0[:2]
    Z = np.array([[8, 1, 1, 0], [1, 1, 0, 0]])
    data = {"R": R, "Z": Z, "N": np.array([3, 2]), "E": [-1.0, -2.0]}
    path = dump(tmp_path / "pad.pkl", data)
    a, b = read_frames(path, {"Ra": "R", "Za": "Z", "N": "N"}, {"E": "E"})
    assert a.n_atoms == 3 and b.n_atoms == 2 and b.species == ["H", "H"]
    # without N the padding atoms (Z = 0) are an error for that frame
    with pytest.raises(InputError, match=r"pad.pkl@0: atomic number 0 \(padding\?\)"):
        list(read_frames(path, {"Ra": "R", "Za": "Z"}, {"E": "E"}))


def test_default_mapping_uses_standard_names(tmp_path):
    path = dump(tmp_path / "std.pkl", [{"Ra": R0, "Za": [8, 1, 1], "E": -5.0}])
    (s,) = read_frames(path)
    assert s.name == str(path) and s.energy == -5.0 and s.forces is None


def test_npz_with_same_mapping(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, R=np.stack([R0, R0 + 0.1]), Z=np.array([8, 1, 1]), E=np.array([-1.0, -2.0]))
    got = list(read_structures(path, features={"Ra": "R", "Za": "Z"}, targets={"E": "E"}))
    assert [s.energy for s in got] == [-1.0, -2.0]
    np.testing.assert_array_equal(got[1].positions, R0 + 0.1)


def test_transforms_atomic_energy_and_negative_gradient(tmp_path):
    (tmp_path / "refs").mkdir()
    (tmp_path / "refs" / "atomic_energy.csv").write_text(
        "atom_type,atomic_energy\nH,-13.5\n8,-2040.25\n")
    path = dump(tmp_path / "data.pkl", water_frames())
    a, b = read_frames(path, FEATURES, TARGETS,
                       {"atomic_energy": "refs/atomic_energy.csv", "negative_gradient": True},
                       base_dir=tmp_path)
    # hand-computed: -2079.5 - (-2040.25 - 13.5 - 13.5) = -12.25; -13.25 - 2 * (-13.5) = 13.75
    assert a.energy == pytest.approx(-12.25, abs=1e-12)
    assert b.energy == pytest.approx(13.75, abs=1e-12)
    np.testing.assert_array_equal(a.forces, -GRAD0)
    np.testing.assert_array_equal(b.forces, -2 * GRAD0[:2])
    ref = a.info[ENERGY_REFERENCE_KEY]
    assert ref["energies"] == {"H": -13.5, "O": -2040.25}
    assert ref["total"] == pytest.approx(-2067.25)
    assert ref["file"] == os.path.join(str(tmp_path), "refs/atomic_energy.csv")
    assert b.info[ENERGY_REFERENCE_KEY]["total"] == -27.0


def test_transform_with_missing_species_rejects_that_frame(tmp_path):
    csv = tmp_path / "ae.csv"
    csv.write_text("atom_type,atomic_energy\nH,-13.5\n")
    path = dump(tmp_path / "data.pkl", water_frames())
    results = list(iter_frame_results(path, FEATURES, TARGETS, {"atomic_energy": str(csv)}))
    assert isinstance(results[0], InputError) and "has no entry for O" in str(results[0])
    assert str(results[0]).startswith(f"{path}@0: ")
    assert results[1].energy == pytest.approx(-13.25 + 27.0)


def test_bad_frame_is_skipped_alone(tmp_path):
    frames = water_frames()
    frames[0]["forces"] = np.zeros((2, 3))  # wrong shape
    path = dump(tmp_path / "data.pkl", frames)
    coll = FileListSourceCollection([path], features=FEATURES, targets=TARGETS)
    rejected = []
    got = coll.structures(on_error="skip", rejected=rejected)
    assert [s.name for s in got] == [f"{path}@1"]
    assert rejected[0].label == f"{path}@0" and "Fa has 2 rows for 3 atoms" in rejected[0].reason
    with pytest.raises(InputError, match="Fa has 2 rows"):
        coll.structures()


def test_mapping_errors(tmp_path):
    path = dump(tmp_path / "data.pkl", water_frames())
    with pytest.raises(ConfigError, match="unknown features field 'R'"):
        list(read_frames(path, {"R": "coordinates", "Za": "atomic_numbers"}, {}))
    with pytest.raises(ConfigError, match="E is mapped twice"):
        list(read_frames(path, {**FEATURES, "E": "dipole"}, TARGETS))
    # a standard name in the other list means the same
    (a, _) = read_frames(path, {**FEATURES, "E": "energy"}, {"Q": "total_charge"})
    assert a.energy == -2079.5 and a.total_charge == 0.0
    with pytest.raises(ConfigError, match="needs Ra"):
        list(read_frames(path, {"Za": "atomic_numbers"}, {"E": "energy"}))
    with pytest.raises(ConfigError, match="unknown transform 'scale'"):
        list(read_frames(path, FEATURES, TARGETS, {"scale": 2}))
    with pytest.raises(ConfigError, match="negative_gradient must be true or false"):
        list(read_frames(path, FEATURES, TARGETS, {"negative_gradient": "yes"}))
    with pytest.raises(ConfigError, match="negative_gradient needs Fa"):
        list(read_frames(path, FEATURES, {"E": "energy"}, {"negative_gradient": True}))
    dict_path = dump(tmp_path / "d.pkl", {"coordinates": np.zeros((2, 3, 3)),
                                          "atomic_numbers": [1, 1, 1]})
    with pytest.raises(InputError, match=r"d.pkl: no field 'energy' \(mapped to E\)"):
        list(read_frames(dict_path, {"Ra": "coordinates", "Za": "atomic_numbers"},
                         {"E": "energy"}))


class Sneaky:
    """Pickles to a call of os.system: loading it must not run anything."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    path = dump(tmp_path / "evil.pkl", [{"Ra": R0, "Za": [8, 1, 1], "E": Sneaky(marker)}])
    with pytest.raises(InputError, match=r"evil.pkl: pickle refers to (posix|os)\.system"):
        list(read_frames(path))
    assert not marker.exists()


def test_restricted_unpickler_refuses_classes(tmp_path):
    from collections import Counter

    path = dump(tmp_path / "c.pkl", [{"Ra": R0, "Za": Counter({"H": 1}), "E": 1.0}])
    with pytest.raises(InputError, match="collections.Counter"):
        list(read_frames(path))


def test_ragged_object_arrays_load(tmp_path):
    R = np.empty(2, dtype=object)
    R[0], R[1] = R0, R0[:2]
    Z = np.empty(2, dtype=object)
    Z[0], Z[1] = np.array([8, 1, 1]), np.array([1, 1])
    path = dump(tmp_path / "ragged.pkl", {"R": R, "Z": Z, "E": np.array([1.0, 2.0])})
    a, b = read_frames(path, {"Ra": "R", "Za": "Z"}, {"E": "E"})
    assert a.n_atoms == 3 and b.n_atoms == 2


def test_not_a_pickle(tmp_path):
    path = tmp_path / "x.pkl"
    path.write_bytes(b"garbage that is not a pickle")
    with pytest.raises(InputError, match=r"x.pkl: not a readable pickle"):
        list(read_frames(path))
    empty = tmp_path / "e.pkl"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match=r"e.pkl: empty file"):
        list(read_frames(empty))


def test_element_symbols_as_za(tmp_path):
    """Enerzyme converts atom types given as symbols; so does nnpflow (any case, bytes)."""
    frames = [{"R": R0, "Z": ["O", "H", "h"], "E": -1.0},
              {"R": R0, "Z": np.array([b"O", b"H", b"H"]), "E": -2.0}]
    a, b = read_frames(dump(tmp_path / "sym.pkl", frames), {"Ra": "R", "Za": "Z"}, {"E": "E"})
    assert a.species == b.species == ["O", "H", "H"]
    np.testing.assert_array_equal(a.atomic_numbers, [8, 1, 1])
    # one list of symbols shared by every frame of the dict layout
    data = {"R": np.stack([R0, R0 + 0.1]), "Z": ["O", "H", "H"], "E": [-1.0, -2.0]}
    got = list(read_frames(dump(tmp_path / "shared.pkl", data), {"Ra": "R", "Za": "Z"},
                           {"E": "E"}))
    assert [s.species for s in got] == [["O", "H", "H"]] * 2
    with pytest.raises(InputError, match=r"bad.pkl: Za: unknown element symbol 'Xx'"):
        list(read_frames(dump(tmp_path / "bad.pkl", [{"R": R0, "Z": ["O", "Xx", "H"],
                                                       "E": 0.0}]),
                         {"Ra": "R", "Za": "Z"}, {"E": "E"}))


def test_null_mapping_values(tmp_path):
    """``key: null`` is the standard name; without such a field N is inferred from Za
    and Q is 0 (Enerzyme's rules)."""
    path = dump(tmp_path / "std.pkl", [{"Ra": R0, "Za": [8, 1, 1], "E": -5.0, "Q": 1.0},
                                       {"Ra": R0[:2], "Za": [1, 1], "E": -1.0, "Q": 0.0}])
    a, b = read_frames(path, {"Ra": None, "Za": None, "N": None, "Q": None},
                       {"E": None, "Q": None})
    assert (a.n_atoms, b.n_atoms, a.total_charge, b.total_charge) == (3, 2, 1.0, 0.0)
    path = dump(tmp_path / "noq.pkl", {"Ra": np.stack([R0, R0]), "Za": [8, 1, 1],
                                       "E": [-5.0, -6.0]})
    got = list(read_frames(path, {"Ra": None, "Za": None, "N": None, "Q": None},
                           {"E": None, "Q": None}))
    assert [s.total_charge for s in got] == [0.0, 0.0] and got[1].n_atoms == 3
    with pytest.raises(InputError, match=r"no field 'Fa' \(mapped to Fa\)"):
        list(read_frames(path, {"Ra": None, "Za": None}, {"E": None, "Fa": None}))
