"""aenet interoperability, proven against aenet's own Fortran tools.

A session fixture builds aenet 2.0.4 (``generate.x``, ``train.x``,
``predict.x``) once with ``../shared/tools/build-aenet.sh`` into the git-ignored
``.aenet/`` folder of the checkout (the script installs gfortran and LAPACK
with apt-get when run as root; about a minute), or takes a build from
``$NNPFLOW_AENET_BIN``.  Tests that need aenet are skipped, with the reason,
where it cannot be built.

* export -> ``predict.x``: nnpflow potentials trained on the TiO2 reference data
  and on a four-species periodic EMT set (atoms outside the home cell, a
  non-orthogonal cell; also one and three species) give the same energies (1e-6 eV/atom) and forces
  (1e-5 eV/Å) under ``predict.x`` as under nnpflow;
* aenet -> import: potentials trained by aenet's ``generate.x`` + ``train.x``
  give ``predict.x``'s energies and forces in nnpflow;
* round trips: files of ``train.x`` read and written again are byte-identical;
  import -> export gives the same bytes; export -> import gives back weights,
  biases, feature means, energy shift and reference energies bit for bit, and
  the energy scale and feature stds (which aenet stores as a reciprocal and a
  second moment) bit for bit wherever float64 allows, else within a few units
  in the last place (see ``nnpflow.aenet.convert``); export -> import -> export
  gives the same files;
* our ASCII files, read by aenet's own ``load_*_ASCII`` routines and written by
  its binary writers, give our binary files byte for byte.

The largest differences against ``predict.x`` are printed (``pytest -s``).
"""

from __future__ import annotations

import glob
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from nnpflow.aenet import (AenetPotential, export_aenet, format_predict_input, import_aenet,
                           potential_from_aenet, potential_to_aenet, read_potential,
                           read_predict_output)
from nnpflow.aenet.convert import AenetExportError, inverse_for, second_moment_for
from nnpflow.descriptors import ChebyshevDescriptor
from nnpflow.errors import InputError
from nnpflow.training.config import Adam, TorchTrainingConfig
from nnpflow.training.potential import TorchANNPotential

from conftest import REPO, shared_data_dir

#: where the session builds aenet (git-ignored)
BUILD_DIR = REPO / ".aenet"
#: TiO2 reference structures with atoms outside the home cell (see its README)
OUTSIDE_CELL = ("structure-002.xsf", "structure-008.xsf", "structure-036.xsf",
                "structure-054.xsf", "structure-091.xsf")
TIO2_REFS = {"O": -432.503149303, "Ti": -1604.604515075}
E_TOL = 1e-6   # eV/atom
F_TOL = 1e-5   # eV/Å


# ----------------------------------------------------------- aenet's build
def _executables(bin_dir: Path) -> dict[str, str] | None:
    out = {}
    for tool in ("generate", "train", "predict"):
        found = sorted(glob.glob(str(bin_dir / f"{tool}.x*")))
        if not found:
            return None
        out[tool] = found[0]
    return out


@pytest.fixture(scope="session")
def aenet() -> dict[str, str]:
    """``{"generate", "train", "predict": executable, "src": aenet's src folder or
    None}`` of a working aenet build; skips the test when none can be made."""
    env = os.environ.get("NNPFLOW_AENET_BIN")
    if env:
        exes = _executables(Path(env))
        if exes is None:
            pytest.fail(f"NNPFLOW_AENET_BIN={env} holds no generate.x/train.x/predict.x")
        src = Path(env).parent / "src"
        return {**exes, "src": str(src) if src.is_dir() else None}
    bin_dir = BUILD_DIR / "aenet-2.0.4" / "bin"
    exes = _executables(bin_dir)
    if exes is None:
        shared = shared_data_dir()
        script = shared.parent / "tools" / "build-aenet.sh" if shared is not None else None
        if script is None or not script.is_file():
            pytest.skip("aenet cannot be built: no ../shared/tools/build-aenet.sh (and no "
                        "NNPFLOW_AENET_BIN)")
        shutil.rmtree(BUILD_DIR, ignore_errors=True)
        done = subprocess.run(["bash", str(script), str(BUILD_DIR)], capture_output=True,
                              text=True, timeout=900, stdin=subprocess.DEVNULL)
        if done.returncode == 2:
            pytest.skip(f"aenet cannot be built here: {done.stderr.strip()[-500:]}")
        if done.returncode != 0:
            pytest.fail(f"building aenet failed (rc {done.returncode}):\n{done.stderr[-3000:]}")
        exes = _executables(bin_dir)
        if exes is None:
            pytest.fail(f"aenet build finished but {bin_dir} has no executables")
    return {**exes, "src": str(BUILD_DIR / "aenet-2.0.4" / "src")}


def run_predict(aenet: dict, folder: Path, networks: dict[str, str],
                structures: list[str]) -> list[dict]:
    """``predict.x`` with ``networks`` on ``structures`` (XSF), run in ``folder``."""
    (folder / "predict.in").write_text(format_predict_input(networks, structures))
    done = subprocess.run([aenet["predict"], "predict.in"], cwd=folder, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = read_predict_output(done.stdout)
    assert len(results) == len(structures)
    return results


def compare_with_predict_x(potential: TorchANNPotential, results: list[dict],
                           structures: list[str], label: str) -> tuple[float, float]:
    """Largest |dE|/atom (eV) and |dF| (eV/Å) of nnpflow against predict.x."""
    mine = potential.predict(structures)
    de = df = 0.0
    for k, r in enumerate(results):
        n = int(mine.n_atoms[k])
        assert r["forces"] is not None and r["forces"].shape == (n, 3)
        de = max(de, abs(r["total_energy"] - mine.energies[k]) / n)
        df = max(df, float(np.abs(r["forces"] - mine.forces[k]).max()))
    print(f"\n[aenet] {label}: {len(results)} structures, largest |dE| {de:.2e} eV/atom, "
          f"largest |dF| {df:.2e} eV/Å against predict.x")
    assert de <= E_TOL, f"{label}: energy differs from predict.x by {de} eV/atom"
    assert df <= F_TOL, f"{label}: forces differ from predict.x by {df} eV/Å"
    return de, df


# ------------------------------------------------------------------ data
@pytest.fixture(scope="module")
def tio2(shared_data) -> list[str]:
    return sorted(str(p) for p in (shared_data / "xsf-TiO2").glob("structure-*.xsf"))


def _train(arch, descriptor, structures, refs=None, iterations=4) -> TorchANNPotential:
    torch.manual_seed(0)
    pot = TorchANNPotential(arch, descriptor)
    pot.train(structures=structures, config=TorchTrainingConfig(
        iterations=iterations, method=Adam(mu=0.01, batchsize=4), testpercent=0, seed=1,
        device="cpu", precision="float64", atomic_energies=refs))
    return pot


@pytest.fixture(scope="module")
def tio2_model(tio2) -> TorchANNPotential:
    """A small nnpflow potential trained on ten TiO2 structures, using all four
    non-linear aenet activations."""
    descriptor = ChebyshevDescriptor(["Ti", "O"], 10, 6.0, 3, 3.5, min_cutoff=0.5)
    arch = {"Ti": [(6, "tanh"), (5, "twist")], "O": [(6, "sigmoid"), (5, "mtanh")]}
    return _train(arch, descriptor, tio2[:10], refs=TIO2_REFS)


def emt_structures(folder: Path, elements: list[str]) -> list[str]:
    """Six periodic structures of ``elements`` with EMT energies and forces, in
    non-orthogonal cells, with atoms shifted by lattice vectors out of the home
    cell, written as XSF into ``folder``."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from nnpflow.io.xsf import write_xsf
    from nnpflow.structure import Structure
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(6):
        atoms = bulk("Cu", "fcc", a=3.9).repeat((2, 2, 2))
        atoms.set_chemical_symbols(rng.choice(elements, size=len(atoms)))
        atoms.rattle(0.08, seed=k)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        shifts = rng.integers(-1, 3, size=(len(atoms), 3))
        positions = atoms.positions + shifts @ atoms.cell.array
        s = Structure(positions=positions, species=atoms.get_chemical_symbols(),
                      cell=atoms.cell.array, pbc=np.array([True] * 3), energy=energy,
                      forces=forces)
        frac = np.linalg.solve(atoms.cell.array.T, positions.T).T
        assert ((frac < 0) | (frac >= 1)).any()
        path = folder / f"emt-{k}.xsf"
        write_xsf(path, [s])
        paths.append(str(path))
    return paths


# -------------------------------------------------- export -> predict.x
def test_float32_model_exports_its_exact_weights(aenet, tio2, tio2_model, tmp_path):
    """A float32 model (the workflow's default training precision) exports its
    weights exactly (float32 -> float64 is exact): predict.x gives what nnpflow
    computes in float64 (NNPCalculator's default)."""
    tio2_model.save(tmp_path / "m.pt")
    pot32 = TorchANNPotential.from_file(tmp_path / "m.pt").to(dtype=torch.float32)
    pot32.save(tmp_path / "m32.pt")
    export_aenet(tmp_path / "m32.pt", tmp_path / "export")
    structures = [p for p in tio2 if Path(p).name in OUTSIDE_CELL][:2]
    results = run_predict(aenet, tmp_path / "export", {"Ti": "Ti.nn", "O": "O.nn"},
                          structures)
    pot64 = TorchANNPotential.from_file(tmp_path / "m32.pt").to(dtype=torch.float64)
    compare_with_predict_x(pot64, results, structures, "nnpflow float32 model export")


def test_export_matches_predict_x_on_tio2(aenet, tio2, tio2_model, tmp_path):
    out = export_aenet(tio2_model, tmp_path / "export")
    folder = Path(out["members"][0]["directory"])
    assert sorted(p.name for p in folder.iterdir()) == [
        "O.nn", "O.nn.ascii", "Ti.nn", "Ti.nn.ascii", "predict.in"]
    outside = [p for p in tio2 if Path(p).name in OUTSIDE_CELL]
    structures = tio2[:3] + tio2[10:14] + outside
    results = run_predict(aenet, folder, {"Ti": "Ti.nn", "O": "O.nn"}, structures)
    compare_with_predict_x(tio2_model, results, structures, "nnpflow TiO2 export")
    # cohesive energy = total minus the reference energies, as nnpflow's referencing
    mine = tio2_model.predict(structures[:1], eval_forces=False)
    refs = sum(TIO2_REFS[s] for s in mine.species[0])
    assert results[0]["cohesive_energy"] == pytest.approx(mine.energies[0] - refs, abs=1e-6)


#: EMT species sets: one species (no typespin-weighted features), three (typespins
#: -1, 0, 1) and four (-2, -1, 1, 2: aenet skips 0 for an even count)
EMT_SETS = {
    "Cu": {"Cu": [(5, "tanh")]},
    "Al/Cu/Ag": {"Al": [(4, "mtanh")], "Cu": [(4, "sigmoid")], "Ag": [(3, "twist")]},
    "Al/Cu/Ag/Au": {"Al": [(5, "tanh")], "Cu": [(4, "sigmoid"), (3, "linear")],
                    "Ag": [(5, "twist")], "Au": []},
}


@pytest.mark.parametrize("name", list(EMT_SETS))
def test_export_matches_predict_x_on_emt(aenet, tmp_path, name):
    arch = EMT_SETS[name]
    structures = emt_structures(tmp_path / "emt", list(arch))
    descriptor = ChebyshevDescriptor(list(arch), 6, 4.5, 3, 3.5)
    pot = _train(arch, descriptor, structures[:4])
    out = export_aenet(pot, tmp_path / "export", structures=structures)
    folder = Path(out["members"][0]["directory"])
    assert "FILES\n6\n" in (folder / "predict.in").read_text()
    results = run_predict(aenet, folder, {s: f"{s}.nn" for s in descriptor.species},
                          structures)
    compare_with_predict_x(pot, results, structures, f"nnpflow EMT {name} export")


# -------------------------------------------------- aenet -> import
@pytest.fixture(scope="module")
def aenet_trained(aenet, tio2, tmp_path_factory) -> Path:
    """Ti.nn and O.nn trained by aenet's generate.x + train.x on six TiO2 structures."""
    folder = tmp_path_factory.mktemp("aenet_train")
    for s in ("Ti", "O"):
        (folder / f"{s}.stp").write_text(
            f"DESCR\n  nnpflow test setup\nEND DESCR\n\nATOM {s}\n\nENV 2\nTi\nO\n\n"
            "RMIN 0.5d0\n\nBASIS type=Chebyshev\n"
            "radial_Rc = 6.0  radial_N = 6 angular_Rc = 3.5  angular_N = 2\n")
    (folder / "generate.in").write_text(
        "OUTPUT  TiO2.train\n\nTYPES\n2\nTi  -1604.604515075\nO   -432.503149303\n\n"
        "SETUPS\nTi  Ti.stp\nO   O.stp\n\nFILES\n6\n" + "\n".join(tio2[:6]) + "\n")
    (folder / "train.in").write_text(
        "TRAININGSET TiO2.train\nTESTPERCENT 0\nITERATIONS  5\n\nMETHOD\nbfgs\n\n"
        "NETWORKS\n  Ti  Ti.nn  2  4:tanh 3:twist\n  O   O.nn   2  4:sigmoid 3:mtanh\n")
    for tool, inp in (("generate", "generate.in"), ("train", "train.in")):
        done = subprocess.run([aenet[tool], inp], cwd=folder, capture_output=True, text=True,
                              timeout=300, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (folder / "Ti.nn").is_file() and (folder / "O.nn").is_file()
    return folder


def test_aenet_trained_potential_imports_to_predict_x_values(aenet, aenet_trained, tio2,
                                                             tmp_path):
    files = [aenet_trained / "Ti.nn", aenet_trained / "O.nn"]
    pot = import_aenet(files, output=tmp_path / "imported.pt")
    assert pot.species == ["Ti", "O"]
    assert pot.architecture == {"Ti": [(4, "tanh"), (3, "twist")],
                                "O": [(4, "sigmoid"), (3, "mtanh")]}
    assert pot.atomic_energies == TIO2_REFS
    outside = [p for p in tio2 if Path(p).name in OUTSIDE_CELL]
    structures = tio2[:6] + tio2[20:24] + outside
    results = run_predict(aenet, aenet_trained, {"Ti": "Ti.nn", "O": "O.nn"}, structures)
    compare_with_predict_x(pot, results, structures, "aenet train.x potential imported")
    # the saved model file gives the same through the ASE calculator
    from nnpflow.calculator import NNPCalculator
    from nnpflow.io import read_structures
    atoms = next(read_structures(structures[-1])).to_ase()
    atoms.calc = NNPCalculator(tmp_path / "imported.pt")
    raw = torch.load(tmp_path / "imported.pt", weights_only=True)   # the one model file
    assert (raw["schema"], raw["family"], raw["training"]["imported_from"]) == (
        "nnpflow.model", "ann", "aenet")
    n = len(atoms)
    assert abs(atoms.get_potential_energy() - results[-1]["total_energy"]) / n <= E_TOL
    assert np.abs(atoms.get_forces() - results[-1]["forces"]).max() <= F_TOL


def test_train_x_files_read_and_write_back_byte_identical(aenet_trained, tmp_path):
    for s in ("Ti", "O"):
        raw = (aenet_trained / f"{s}.nn").read_bytes()
        pot = read_potential(aenet_trained / f"{s}.nn")
        assert pot.to_bytes() == raw
        # the ASCII form carries every value exactly
        ascii_path = tmp_path / f"{s}.nn.ascii"
        pot.write(ascii_path, ascii=True)
        assert read_potential(ascii_path).to_bytes() == raw
    # import -> export is the identity on aenet's files
    pot = import_aenet([aenet_trained / "Ti.nn", aenet_trained / "O.nn"])
    again = potential_to_aenet(pot)
    for s in ("Ti", "O"):
        assert again[s].to_bytes() == (aenet_trained / f"{s}.nn").read_bytes()
    # the ASCII files import to the same potential
    pot_ascii = potential_from_aenet([tmp_path / "Ti.nn.ascii", tmp_path / "O.nn.ascii"])
    for (k, a), (_, b) in zip(pot.net.state_dict().items(), pot_ascii.net.state_dict().items()):
        assert torch.equal(a, b), k


def test_our_ascii_files_read_by_aenets_own_routines(aenet, aenet_trained, tio2_model,
                                                     tmp_path):
    """Compile tests/aenet/ascii_to_binary.f90 against aenet's modules: aenet's
    ASCII readers and binary writers turn our ASCII files into our binary files."""
    src = aenet.get("src")
    gfortran = shutil.which("gfortran")
    if not src or not gfortran or not glob.glob(os.path.join(src, "feedforward.o")):
        pytest.skip("aenet's object files or gfortran not available")
    objects = [p for p in sorted(glob.glob(os.path.join(src, "*.o")))
               if Path(p).stem not in ("optimize", "aenet", "pytorchoutput", "input",
                                       "potential")]
    exe = tmp_path / "ascii_to_binary"
    done = subprocess.run([gfortran, "-O0", f"-I{src}", "-o", str(exe),
                           str(REPO / "tests" / "aenet" / "ascii_to_binary.f90"), *objects,
                           "-lblas"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ours = potential_to_aenet(tio2_model)
    ours.update({f"train.x {s}": read_potential(aenet_trained / f"{s}.nn") for s in ("Ti", "O")})
    for name, pot in ours.items():
        ascii_path = tmp_path / "in.ascii"
        pot.write(ascii_path, ascii=True)
        subprocess.run([str(exe), str(ascii_path), str(tmp_path / "out.nn")], check=True,
                       timeout=60)
        assert (tmp_path / "out.nn").read_bytes() == pot.to_bytes(), name


def aenet_python_layout(pot: AenetPotential) -> str:
    """The same potential in the ASCII layout aenet-python writes: every array on
    one line (sfparam 12 and sfenv 24 values per line), fixed-point reals with 17
    decimals, species names on one line, sfenv with two rows."""
    net, stp, ts = pot.network, pot.setup, pot.trainset
    fx = "{:24.17f}".format
    row = lambda values, fmt: " ".join(fmt(v) for v in values) + " "  # noqa: E731
    lines = [f"{len(net.layer_sizes):17d}", f"{net.nnodes_max:17d}", f"{net.wsize:17d}",
             f"{net.nvalues:17d}", row(net.layer_sizes, "{:17d}".format),
             row(net.activations, "{:17d}".format), row(net.iw, "{:17d}".format),
             row(net.iv, "{:17d}".format), row(net.flat_weights(), fx),
             "PyTorch Chebyshev descriptor export", stp.atomtype,
             f"{len(stp.envtypes):17d}", " ".join(stp.envtypes) + " ", fx(stp.rc_min),
             fx(stp.rc_max), "Chebyshev", f"{stp.nsf:17d}", f"{stp.sfparam.shape[0]:17d}",
             row(stp.sf, "{:17d}".format)]
    flat = stp.sfparam.ravel(order="F")
    lines += [row(flat[k:k + 12], fx) for k in range(0, flat.size, 12)]
    env = np.zeros((2, stp.nsf), dtype=int).ravel(order="F")
    lines += [row(env[k:k + 24], "{:17d}".format) for k in range(0, env.size, 24)]
    lines += [f"{0:17d}"] + [row(a, fx) for a in (stp.sfval_min, stp.sfval_max,
                                                  stp.sfval_avg, stp.sfval_cov)]
    lines += ["aenet-python", "T", fx(ts.scale), fx(ts.shift), str(len(ts.type_names)),
              " ".join(ts.type_names) + " ", row(ts.e_atom, fx), "0", "0",
              f"{fx(0.0)} {fx(0.0)} {fx(0.0)}"]
    return "\n".join(lines) + "\n"


def test_reads_aenet_python_ascii_layout(tio2_model, tmp_path):
    """aenet-python writes its ASCII files in another layout than aenet's Fortran;
    both import (to the 17 decimals aenet-python writes)."""
    ours = potential_to_aenet(tio2_model)
    for s, pot in ours.items():
        (tmp_path / f"{s}.py.ascii").write_text(aenet_python_layout(pot))
    back = potential_from_aenet([tmp_path / "Ti.py.ascii", tmp_path / "O.py.ascii"])
    assert back.species == tio2_model.species and back.architecture == tio2_model.architecture
    for (k, a), (_, b) in zip(tio2_model.net.state_dict().items(),
                              back.net.state_dict().items()):
        np.testing.assert_allclose(b.numpy(), a.double().numpy(), rtol=1e-13, atol=1e-16,
                                   err_msg=k)
    assert back.atomic_energies == pytest.approx(tio2_model.atomic_energies, abs=1e-12)


def test_ascii_values_are_read_and_refused_by_line():
    """The ASCII reader's numbers: Fortran reals (``D`` exponents, three-digit
    exponents without a letter, commas between values), and each bad value named
    with its line."""
    from nnpflow.aenet.potential_file import _LineReader
    r = _LineReader("7\n1 2\n3\n1.5D+00, 2\n2.5+100 -1.0E-2\n1 x\n", "f.ascii")
    assert r.int("a") == 7
    assert r.ints("b", 3).tolist() == [1, 2, 3]
    assert r.real("c") == 1.5
    assert r.reals("d", 2).tolist() == [2.5e100, -0.01]
    with pytest.raises(InputError, match=r"^f\.ascii, line 6: e: expected integers$"):
        r.ints("e", 2)
    for text, read, message in [
            ("two", lambda r: r.int("n"), "n: expected an integer, got 'two'"),
            ("abc, 1", lambda r: r.real("q"), "q: expected a real number, got 'abc 1'"),
            ("1 zz", lambda r: r.reals("w", 2), "w: not a Fortran real: 'zz'"),
            ("", lambda r: r.real("q"), r"q: file ends here \(truncated file\?\)")]:
        with pytest.raises(InputError, match=rf"^s, line 1: {message}$"):
            read(_LineReader(text, "s"))
    with pytest.raises(InputError, match=r"^O\.nn\.ascii, line 1: nlayers: expected an integer"):
        AenetPotential.from_ascii("x\n", "O.nn.ascii")


# -------------------------------------------------- round trip
def test_export_import_round_trip_is_exact(tio2_model, tmp_path):
    export_aenet(tio2_model, tmp_path / "a")
    back = TorchANNPotential.from_aenet([tmp_path / "a" / "Ti.nn", tmp_path / "a" / "O.nn"])
    assert back.descriptor.config() == tio2_model.descriptor.config()
    assert back.architecture == tio2_model.architecture
    assert back.atomic_energies == tio2_model.atomic_energies
    norm, norm_back = tio2_model.energy_normalization, back.energy_normalization
    assert norm_back.shift == norm.shift
    # aenet stores 1/scale: exact wherever some float64 t has 1/t == scale (~86% of
    # all floats); else the nearest, one unit in the last place away
    if 1.0 / inverse_for(norm.scale) == norm.scale:
        assert norm_back.scale == norm.scale
    else:
        assert abs(norm_back.scale - norm.scale) <= 2 * np.spacing(norm.scale)
    a, b = tio2_model.net.state_dict(), back.net.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        if key == "feature_std":
            continue
        assert torch.equal(a[key].double(), b[key]), key
    # feature std: exact wherever a float64 second moment reproduces it (almost all);
    # elsewhere within the resolution of mean^2 + std^2
    mean, std = a["feature_mean"].double().numpy(), a["feature_std"].double().numpy()
    got = b["feature_std"].numpy()
    exact = np.array([[math.sqrt(second_moment_for(m, s) - m * m) == s
                       for m, s in zip(mr, sr)] for mr, sr in zip(mean, std)])
    assert np.array_equal(got[exact], std[exact])
    bound = 4 * np.finfo(float).eps * (1 + (mean / std) ** 2)
    assert np.all(np.abs(got - std) <= bound * std)
    print(f"\n[aenet] round trip: {int(exact.sum())} of {exact.size} feature stds bit-identical, "
          f"largest relative difference {float(np.max(np.abs(got - std) / std)):.1e}")
    # export -> import -> export: the same files
    export_aenet(back, tmp_path / "b")
    for s in ("Ti", "O"):
        assert (tmp_path / "b" / f"{s}.nn").read_bytes() == \
            (tmp_path / "a" / f"{s}.nn").read_bytes()
        assert (tmp_path / "b" / f"{s}.nn.ascii").read_text() == \
            (tmp_path / "a" / f"{s}.nn.ascii").read_text()


def test_committee_exports_one_set_per_member(tio2_model, tmp_path):
    tio2_model.save(tmp_path / "m0.pt")
    other = TorchANNPotential.from_file(tmp_path / "m0.pt")
    with torch.no_grad():
        other.net.nets[0][0].weight.mul_(1.5)
    other.save(tmp_path / "m1.pt")
    from nnpflow.cli import main
    assert main(["export", "aenet", str(tmp_path / "m0.pt"), str(tmp_path / "m1.pt"),
                 "-o", str(tmp_path / "out")]) == 0
    for m, model in enumerate((tio2_model, other)):
        folder = tmp_path / "out" / f"member_{m}"
        assert sorted(p.name for p in folder.iterdir()) == [
            "O.nn", "O.nn.ascii", "Ti.nn", "Ti.nn.ascii", "predict.in"]
        assert main(["import", "aenet", str(folder / "Ti.nn"), str(folder / "O.nn.ascii"),
                     "-o", str(tmp_path / f"back{m}.pt")]) == 0
        back = TorchANNPotential.from_file(tmp_path / f"back{m}.pt")
        assert torch.equal(back.net.nets[0][0].weight, model.net.nets[0][0].weight)


# -------------------------------------------------- refusals and bad files
def test_export_refuses_what_aenet_cannot_represent(tmp_path):
    d = ChebyshevDescriptor(["Ti", "O"], 4, 5.0, 2, 3.5, min_cutoff=0.5)
    relu = TorchANNPotential({"Ti": [(3, "tanh"), (3, "relu")], "O": [(3, "tanh")]}, d)
    with pytest.raises(AenetExportError, match=r"species Ti, hidden layer 2: activation "
                       r"'relu' has no aenet equivalent"):
        export_aenet(relu, tmp_path / "relu")
    assert not (tmp_path / "relu").exists()
    d0 = ChebyshevDescriptor(["Ti", "O"], 4, 5.0, 2, 3.5, min_cutoff=0.0)
    with pytest.raises(AenetExportError, match="min_cutoff 0.0"):
        potential_to_aenet(TorchANNPotential({"Ti": [], "O": []}, d0))
    partial = TorchANNPotential({"Ti": [], "O": []}, d)
    partial.atomic_energies = {"Ti": -1.0}
    with pytest.raises(AenetExportError, match="no atomic reference energy for O"):
        potential_to_aenet(partial)
    from nnpflow.cli import main
    relu.save(tmp_path / "relu.pt")
    fine = TorchANNPotential({"Ti": [(3, "tanh")], "O": []}, d)
    fine.save(tmp_path / "fine.pt")
    # a committee with one member aenet cannot take: refused before anything is written
    assert main(["export", "aenet", str(tmp_path / "fine.pt"), str(tmp_path / "relu.pt"),
                 "-o", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_import_refuses_mismatched_or_broken_files(tio2_model, tmp_path):
    pots = potential_to_aenet(tio2_model)
    pots["Ti"].write(tmp_path / "Ti.nn")
    pots["O"].write(tmp_path / "O.nn")
    with pytest.raises(InputError, match="no potential file for O"):
        import_aenet([tmp_path / "Ti.nn"])
    other = TorchANNPotential({"Ti": [], "O": []},
                              ChebyshevDescriptor(["Ti", "O"], 10, 6.5, 3, 3.5, min_cutoff=0.5))
    other.energy_normalization = tio2_model.energy_normalization
    other.atomic_energies = dict(tio2_model.atomic_energies)
    potential_to_aenet(other)["O"].write(tmp_path / "O-other.nn")
    with pytest.raises(InputError, match=r"O-other.nn: descriptor settings rad_cutoff"):
        import_aenet([tmp_path / "Ti.nn", tmp_path / "O-other.nn"])
    raw = (tmp_path / "Ti.nn").read_bytes()
    (tmp_path / "cut.nn").write_bytes(raw[:-30])
    with pytest.raises(InputError, match=r"cut.nn: record \d+ \(E_min, E_max, E_av\)"):
        read_potential(tmp_path / "cut.nn")
    behler = read_potential(tmp_path / "Ti.nn")
    behler.setup.sftype = "Behler2011"
    behler.write(tmp_path / "behler.nn")
    with pytest.raises(InputError, match="Behler"):
        import_aenet([tmp_path / "behler.nn", tmp_path / "O.nn"])
    with pytest.raises(InputError, match="not found"):
        read_potential(tmp_path / "missing.nn")
    assert isinstance(AenetPotential.from_bytes(raw), AenetPotential)
