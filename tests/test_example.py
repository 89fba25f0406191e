"""The bundled EMT example: file list, determinism, and labels equal to a fresh EMT run."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from nnpflow import ConfigError
from nnpflow.cli import main
from nnpflow.example import example_config, example_files, generate_example
from nnpflow.sources import collection_for, expand_sources
from nnpflow.stages import example as example_stage

SMALL = {"n_structures": 20, "seed": 3}


@pytest.fixture(scope="module")
def small_example(tmp_path_factory):
    out = tmp_path_factory.mktemp("example")
    example_stage.run(str(out), dict(SMALL))
    return out


def test_default_file_list():
    files = example_files({})
    assert len(files) == 121
    assert files[0] == "xsf/example-0000.xsf" and files[119] == "xsf/example-0119.xsf"
    assert files[-1] == "archive.tar.bz2"
    assert example_files({"n_structures": 10, "archive_fraction": 0}) == [
        f"xsf/example-{i:04d}.xsf" for i in range(10)]
    assert example_files({"n_structures": 4, "archive_fraction": 1.0}) == ["archive.tar.bz2"]


def test_stage_writes_exactly_the_listed_files(small_example):
    written = sorted(p.relative_to(small_example).as_posix()
                     for p in small_example.rglob("*") if p.is_file())
    assert written == sorted(example_files(SMALL))
    with tarfile.open(small_example / "archive.tar.bz2") as tf:
        names = tf.getnames()
    assert names == [f"example-{i:04d}.xsf" for i in range(10, 20)]  # unique member names


def test_structures_are_clean_and_labelled_by_emt(small_example):
    from ase.calculators.emt import EMT

    specs = expand_sources([str(small_example)])
    structures = collection_for(specs).structures()
    assert len(structures) == 20
    for s in structures:
        assert 8 <= s.n_atoms <= 108
        assert set(s.species) <= {"Cu", "Au", "Pt"}
        assert s.is_periodic and s.forces is not None
    for s in structures[::4]:  # a fresh EMT calculation on the parsed positions
        atoms = s.to_ase()
        atoms.calc = EMT()
        assert atoms.get_potential_energy() == pytest.approx(s.energy, abs=1e-9)
        np.testing.assert_allclose(atoms.get_forces(), s.forces, atol=1e-9)


def test_deterministic_for_a_seed(small_example, tmp_path):
    # another process with another string-hash seed: set/dict order must not leak in
    code = ("import sys; from nnpflow.example import generate_example; "
            f"generate_example(sys.argv[1], {SMALL!r})")
    env = dict(os.environ, PYTHONHASHSEED="12345", OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "again")], check=True, env=env)
    for rel in example_files(SMALL):
        assert (tmp_path / "again" / rel).read_bytes() == (small_example / rel).read_bytes(), rel
    generate_example(tmp_path / "other", {"n_structures": 4, "seed": 4, "archive_fraction": 0})
    assert ((tmp_path / "other" / "xsf" / "example-0000.xsf").read_bytes()
            != (small_example / "xsf" / "example-0000.xsf").read_bytes())


@pytest.mark.parametrize("config, message", [
    ({"n_structures": 0}, "n_structures must be an integer >= 1"),
    ({"seed": -1}, "seed must be an integer >= 0"),
    ({"archive_fraction": 1.5}, "archive_fraction must be between 0 and 1"),
    ({"enabled": "yes"}, "enabled must be true or false"),
    ({"size": 3}, r"unknown key\(s\) size"),
])
def test_config_is_validated(config, message):
    with pytest.raises(ConfigError, match=message):
        example_config(config)


def test_cli(tmp_path, capsys):
    assert main(["example", str(tmp_path / "ex"), "--n-structures", "3", "--seed", "1",
                 "--archive-fraction", "0"]) == 0
    assert "wrote 3 files" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "ex" / "xsf").iterdir()) == [
        "example-0000.xsf", "example-0001.xsf", "example-0002.xsf"]
