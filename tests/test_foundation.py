"""Tests of the foundation modules: Structure, errors, atomic writes, provenance, sharding."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nnpflow import InputError, Structure
from nnpflow.energy_reference import EnergyFilter, read_atomic_energy_csv, referenced_energy_per_atom
from nnpflow.provenance import code_fingerprint, module_closure
from nnpflow.safe_write import atomic_path, write_json
from nnpflow.sharding import shard_of, unit_label


def cu2(**kw):
    return Structure(positions=[[0, 0, 0], [1.8, 1.8, 0]], species=["Cu", "Cu"],
                     cell=np.eye(3) * 3.6, energy=-7.0, forces=[[0.1, 0, 0], [-0.1, 0, 0]],
                     name="a.xsf", **kw)


def test_structure_ase_round_trip_keeps_labels():
    s = cu2()
    back = Structure.from_ase(s.to_ase(), name=s.name)
    assert back.content_hash() == s.content_hash()
    np.testing.assert_array_equal(back.forces, s.forces)
    assert back.energy == -7.0 and back.is_periodic


def test_isolated_structure_has_no_cell():
    s = Structure(positions=[[0, 0, 0], [0, 0, 0.74]], species=["H", "H"])
    assert s.cell is None and not s.is_periodic
    back = Structure.from_ase(s.to_ase())
    assert back.cell is None and not back.is_periodic


@pytest.mark.parametrize("change, message", [
    ({"positions": [[0, 0, np.nan], [1.8, 1.8, 0]]}, "non-finite position for atom 1"),
    ({"forces": [[0, 0, 0], [np.inf, 0, 0]]}, "non-finite force on atom 2"),
    ({"energy": float("nan")}, "non-finite total energy"),
    ({"cell": [[1, 0, 0], [2, 0, 0], [0, 0, 1]]}, "singular cell"),
    ({"species": ["Cu", "Xx"]}, "unknown element symbol 'Xx'"),
])
def test_validate_names_source_and_problem(change, message):
    s = cu2().copy(**change)
    with pytest.raises(InputError) as info:
        s.validate()
    assert str(info.value).startswith("a.xsf: ")
    assert message in str(info.value)


def test_content_hash_changes_with_any_label():
    base = cu2().content_hash()
    assert cu2().copy(energy=-7.0000001).content_hash() != base
    assert cu2().copy(forces=[[0.1, 0, 0], [-0.1, 0, 1e-9]]).content_hash() != base
    assert cu2().copy(name="other").content_hash() == base


def test_input_error_location_format_and_pickling():
    import pickle
    err = InputError("bad energy", source="d.tar.gz", member="x.xsf", line=3)
    assert str(err) == "d.tar.gz:x.xsf, line 3: bad energy"
    assert str(pickle.loads(pickle.dumps(err))) == str(err)
    assert str(InputError("bad").located(source="f")) == "f: bad"


def test_energy_filter_uses_referenced_energy_per_atom():
    s = cu2()  # E = -7 eV, 2 atoms
    assert referenced_energy_per_atom(s, {"Cu": -3.0}) == pytest.approx(-0.5)
    assert EnergyFilter(max_energy=-0.6, atomic_energies={"Cu": -3.0})(s) is False
    assert EnergyFilter(max_energy=-0.4, atomic_energies={"Cu": -3.0})(s) is True
    # without references the filter applies to E/N as given
    assert EnergyFilter(max_energy=-3.4)(s) is True
    assert EnergyFilter(max_energy=-3.6)(s) is False


def test_atomic_energy_csv_errors_name_line(tmp_path):
    good = tmp_path / "ref.csv"
    good.write_text("atom_type,atomic_energy\nH,-0.5\n8,-75.0\n")
    assert read_atomic_energy_csv(good) == {"H": -0.5, "O": -75.0}
    bad = tmp_path / "bad.csv"
    bad.write_text("atom_type,atomic_energy\nH,-0.5\nO,abc\n")
    with pytest.raises(InputError, match=r"bad.csv, line 3: non-numeric atomic_energy 'abc'"):
        read_atomic_energy_csv(bad)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_code_fingerprint_follows_imports():
    closure = module_closure("nnpflow.energy_reference")
    assert {"nnpflow.errors", "nnpflow.structure"} <= set(closure)
    assert "nnpflow.sharding" not in closure
    assert code_fingerprint("nnpflow.sharding") != code_fingerprint("nnpflow.energy_reference")


def test_shard_assignment_is_stable_and_spread():
    labels = [f"data/s{i:04d}.xsf" for i in range(400)]
    shards = [shard_of(x, 4) for x in labels]
    assert shards == [shard_of(x, 4) for x in labels]
    assert min(np.bincount(shards, minlength=4)) > 60
    assert unit_label("a.xyz@12") == "a.xyz" and unit_label("a@b.xsf") == "a@b.xsf"
    # a known frame index strips exactly its own suffix
    assert unit_label("run@7.xyz@12", 12) == "run@7.xyz" and unit_label("b@3@0", 0) == "b@3"


def test_manifest_unit_of_a_single_frame_file_named_like_a_frame(tmp_path):
    """A file whose own name ends in @<digits> is its own unit, not a frame of another."""
    from nnpflow.io import read_structures, write_xsf
    from nnpflow.io.manifest import manifest_row
    single = tmp_path / "cell@3"
    write_xsf(single, cu2())
    (s,) = read_structures(single, format="xsf")
    assert s.frame is None and manifest_row(s)["unit"] == str(single)
    multi = tmp_path / "traj@2.extxyz"
    from ase.io import write
    write(multi, [cu2().to_ase(), cu2().copy(energy=-6.5).to_ase()], format="extxyz")
    rows = [manifest_row(s) for s in read_structures(multi)]
    assert [r["unit"] for r in rows] == [str(multi)] * 2
    assert [r["frame"] for r in rows] == ["0", "1"]


def test_reader_subtracted_reference_is_not_subtracted_twice():
    from nnpflow.energy_reference import SUBTRACTED_REFERENCE_KEY
    # a pickle reader subtracted 2 x (-3.0) eV already: stored energy -1.0 eV
    s = cu2().copy(energy=-1.0)
    s.info[SUBTRACTED_REFERENCE_KEY] = {"file": "ref.csv", "energies": {"Cu": -3.0}, "total": -6.0}
    assert referenced_energy_per_atom(s, None) == pytest.approx(-0.5)
    # run references given: they apply to the raw total energy (-7 eV)
    assert referenced_energy_per_atom(s, {"Cu": -3.2}) == pytest.approx((-7.0 + 6.4) / 2)
    assert EnergyFilter(max_energy=-0.4, atomic_energies={"Cu": -3.0})(s) is True
    assert EnergyFilter(max_energy=-0.6, atomic_energies={"Cu": -3.0})(s) is False


def test_atomic_path_output_has_umask_mode(tmp_path):
    import os
    write_json(tmp_path / "m.json", {})
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o666 & ~mask


def test_code_fingerprint_exclude_drops_modules_and_submodules():
    full = code_fingerprint("nnpflow.energy_reference")
    without = code_fingerprint("nnpflow.energy_reference", exclude=("nnpflow.structure",))
    assert without != full
    assert without == code_fingerprint("nnpflow.energy_reference",
                                       exclude=("nnpflow.structure", "nnpflow.structure.x"))


def test_configure_threads_does_not_import_torch(tmp_path):
    import subprocess
    import sys
    code = ("import sys, os; from nnpflow.runtime import configure_threads; "
            "n = configure_threads(1); "
            "print(n, 'torch' in sys.modules, os.environ['OMP_NUM_THREADS']); "
            "import torch; print(torch.get_num_threads())")
    import os
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env).stdout.split()
    assert out == ["1", "False", "1", "1"]


def test_keep_freed_memory_applies_on_glibc(tmp_path):
    import subprocess
    import sys
    code = ("from nnpflow.runtime import keep_freed_memory as k; "
            "import platform; print(k(), k(), platform.libc_ver()[0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    if out[2] != "glibc":
        pytest.skip("not glibc")
    assert out[:2] == ["True", "True"]


def test_atomic_path_removes_leftovers_of_killed_writers(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    target = tmp_path / "db.h5"
    code = ("import sys, time; from nnpflow.safe_write import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n"
            "    tmp.write_bytes(b'partial' * 1000); print(tmp, flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE,
                            text=True)
    leftover = proc.stdout.readline().strip()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert os.path.exists(leftover) and not target.exists()
    write_json(target, {"ok": True})   # the next writer of the same target cleans up
    assert not os.path.exists(leftover)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db.h5"]


def test_code_fingerprint_ignores_comments_and_docstrings(tmp_path, monkeypatch):
    """Editing a comment or docstring of a module a rule runs must not rerun the rule."""
    from nnpflow import provenance
    original = provenance._module_file("nnpflow.sharding")
    source = original.read_text(encoding="utf-8")
    copy = tmp_path / "sharding.py"
    monkeypatch.setattr(provenance, "_module_file",
                        lambda name: copy if name == "nnpflow.sharding" else None)
    provenance.module_closure.cache_clear()

    def fingerprint(text):
        copy.write_text(text, encoding="utf-8")
        provenance.module_closure.cache_clear()
        return code_fingerprint("nnpflow.sharding")

    try:
        base = fingerprint(source)
        assert base == code_fingerprint("nnpflow.sharding")  # stable
        edited = source.replace('"""', '"""Edited docstring.  ', 1)  # module docstring
        assert edited != source and fingerprint(edited) == base
        assert fingerprint(source + "\n# a trailing comment\n\n") == base
        assert fingerprint("# header comment\n" + source) == base
        # a function docstring
        func = source.index("def shard_of")
        body = source.index('"""', func)
        assert fingerprint(source[:body + 3] + "Reworded. " + source[body + 3:]) == base
        # a change of code does change it, also one inside a string that is not a docstring
        assert fingerprint(source + "\nX = 1\n") != base
        assert fingerprint(source + '\nX = "text"\n') != fingerprint(source + '\nX = "other"\n')
    finally:
        provenance.module_closure.cache_clear()
