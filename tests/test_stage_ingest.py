"""The ingest, manifest, build and merge stages on tiny inputs, the one structures
fingerprint they share, and ``nnpflow ingest``'s summary."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from nnpflow import InputError, Structure
from nnpflow.cli import main
from nnpflow.io.manifest import MANIFEST_COLUMNS, read_manifest, read_rejected
from nnpflow.io.xsf import format_xsf
from nnpflow.sharding import shard_of
from nnpflow.sources import expand_sources
from nnpflow.database import DatabaseReader, write_database
from nnpflow.database.fingerprint import structures_fingerprint
from nnpflow.energy_reference import EnergyFilter
from nnpflow.stages import ingest, manifest


def cell(species, energy, shift=0.0, forces=True):
    n = len(species)
    grid = np.array([[0, 0, 0], [1.8, 1.8, 0], [1.8, 0, 1.8], [0, 1.8, 1.8]])[:n] + shift
    return Structure(positions=grid, species=species, cell=np.eye(3) * 3.6, energy=energy,
                     forces=np.full((n, 3), 0.01) if forces else None)


@pytest.fixture
def data(tmp_path, monkeypatch):
    """Five XSF files, a tar.bz2 with six members (one name repeated) and a pickle."""
    monkeypatch.chdir(tmp_path)
    Path("data").mkdir()
    for k in range(5):
        Path(f"data/s{k}.xsf").write_text(format_xsf(cell(["Cu", "Au"], -1.0 - k)))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:bz2") as tf:
        for k, name in enumerate(["m0.xsf", "m1.xsf", "m2.xsf", "m0.xsf", "m3.xsf", "m4.xsf"]):
            text = format_xsf(cell(["Cu", "Cu", "Pt", "Au"], -10.0 - k)).encode()
            info = tarfile.TarInfo(name)
            info.size = len(text)
            tf.addfile(info, io.BytesIO(text))
    Path("data/arch.tar.bz2").write_bytes(buf.getvalue())
    with open("data/frames.pkl", "wb") as fh:
        pickle.dump({"R": np.stack([np.eye(3) * 1.1, np.eye(3) * 1.2]), "Z": np.array([1, 1, 8]),
                     "E": np.array([-100.0, -101.0])}, fh)
    Path("data/ae.csv").write_text("atom_type,atomic_energy\nH,-13.0\nO,-70.0\n")
    entries = ["data/*.xsf", "data/arch.tar.bz2",
               {"path": "data/frames.pkl", "features": {"Ra": "R", "Za": "Z"},
                "targets": {"E": "E"}, "transforms": {"atomic_energy": "data/ae.csv"}}]
    return [s.to_dict() for s in expand_sources(entries)]


def run_shards(specs, n_shards, structures=False, **kw):
    """Run the ingest stage per shard the way the workflow does (plain files to one
    shard); with ``structures`` each shard also writes ``out/shard_{k}.h5``."""
    outs = []
    for k in range(n_shards):
        mine = [s for s in specs
                if s["format"] == "tar" or shard_of(s["path"], n_shards) == k]
        m, r = f"out/shard_{k}.tsv", f"out/shard_{k}.rejected.tsv"
        h5 = f"out/shard_{k}.h5" if structures else None
        ingest.run(mine, shard=k, n_shards=n_shards, manifest=m, rejected=r,
                   structures=h5, **kw)
        outs.append((m, r))
    return outs


def test_single_shard_manifest_rows(data):
    ingest.run(data, shard=0, n_shards=1, manifest="out/m.tsv", rejected="out/r.tsv")
    rows = read_manifest("out/m.tsv")
    labels = [r["label"] for r in rows]
    assert labels == (["data/arch.tar.bz2:m0.xsf", "data/arch.tar.bz2:m1.xsf",
                       "data/arch.tar.bz2:m2.xsf", "data/arch.tar.bz2:m0.xsf#2",
                       "data/arch.tar.bz2:m3.xsf", "data/arch.tar.bz2:m4.xsf",
                       "data/frames.pkl@0", "data/frames.pkl@1"]
                      + [f"data/s{k}.xsf" for k in range(5)])  # specs sorted by path
    first = rows[0]
    assert first["unit"] == first["label"] and first["frame"] == ""
    assert first["species"] == "Au:1 Cu:2 Pt:1" and first["n_atoms"] == "4"
    assert first["energy"] == "-10.0" and first["has_forces"] == "true"
    s = cell(["Cu", "Cu", "Pt", "Au"], -10.0)
    assert first["content_hash"] == s.content_hash()
    frame = rows[7]
    assert frame["unit"] == "data/frames.pkl" and frame["frame"] == "1"
    assert float(frame["energy"]) == -101.0 - (-13.0 * 2 - 70.0)
    assert frame["has_forces"] == "false"
    assert read_rejected("out/r.tsv") == []
    assert Path("out/r.tsv").read_text() == "label\treason\n"
    assert Path("out/m.tsv").read_text().splitlines()[0] == "\t".join(MANIFEST_COLUMNS)


def test_shards_partition_the_structures_and_merge_back(data):
    ingest.run(data, shard=0, n_shards=1, manifest="out/all.tsv", rejected="out/all.rej.tsv")
    single = read_manifest("out/all.tsv")
    outs = run_shards(data, 3)
    per_shard = [read_manifest(m) for m, _ in outs]
    assert sum(len(p) for p in per_shard) == len(single)
    for k, rows in enumerate(per_shard):
        assert all(shard_of(r["unit"], 3) == k for r in rows)
    manifest.run([m for m, _ in outs], [r for _, r in outs], manifest="out/manifest.tsv",
                 summary="out/manifest.json", rejected="out/rejected.tsv")
    merged = read_manifest("out/manifest.tsv")
    assert [{k: r[k] for k in MANIFEST_COLUMNS} for r in merged] == [
        r for rows in per_shard for r in rows]  # shard order (plus energy_robust_z)
    assert sorted(str({k: r[k] for k in MANIFEST_COLUMNS}) for r in merged) == sorted(
        map(str, single))
    summary = json.loads(Path("out/manifest.json").read_text())
    assert summary["n_structures"] == 13
    assert summary["n_atoms"] == 5 * 2 + 6 * 4 + 2 * 3
    assert summary["species"] == ["H", "O", "Cu", "Pt", "Au"]  # by atomic number
    assert summary["atoms_per_species"] == {"H": 4, "O": 2, "Cu": 17, "Pt": 6, "Au": 11}
    assert summary["n_with_forces"] == 11 and summary["n_rejected"] == 0
    # the database's structures fingerprint of the same (label, content hash) pairs,
    # with the (empty) filter settings
    expected = structures_fingerprint([(r["label"], r["content_hash"]) for r in merged],
                                      {"max_energy": None, "atomic_energies": {}})
    assert summary["structures_fingerprint"] == expected
    assert summary["filter"] == {"max_energy": None, "atomic_energies": {}}
    energies = [float(r["energy"]) for r in merged]
    assert summary["energy"]["min"] == min(energies)
    assert summary["energy"]["mean"] == pytest.approx(np.mean(energies))


def test_energy_filter_rejects_without_error(data):
    # referenced energy per atom: Cu/Au files (E = -1 - k over 2 atoms, refs -0.5 each):
    # (E + 1) / 2 = -k / 2 -> s0 (0.0) kept at max_energy 0, s1.. kept too (negative)
    refs = {"Cu": -0.5, "Au": -0.5, "Pt": -0.5, "H": -13.0, "O": -70.0}
    ingest.run(data, shard=0, n_shards=1, manifest="out/m.tsv", rejected="out/r.tsv",
               atomic_energies=refs, max_energy=-0.75, on_error="raise")
    kept = {r["label"] for r in read_manifest("out/m.tsv")}
    rejected = {r["label"]: r["reason"] for r in read_rejected("out/r.tsv")}
    # s0: 0.0, s1: -0.5 > -0.75 -> filtered; s2 (-1.0), s3, s4 kept
    assert {"data/s2.xsf", "data/s3.xsf", "data/s4.xsf"} <= kept
    assert "filtered: referenced energy 0 eV/atom is above max_energy -0.75" in rejected["data/s0.xsf"]
    assert "data/s1.xsf" in rejected
    # the pickle had its references subtracted by its transform: the filter uses the raw
    # total energy with the run's references, (-100 - (-96)) / 3 = -1.33 -> kept
    assert "data/frames.pkl@0" in kept and "data/frames.pkl@1" in kept
    # archive members: (E + 2) / 4 with E = -10 .. -15 -> all kept
    assert sum(1 for label in kept if label.startswith("data/arch")) == 6


def test_species_and_min_cutoff_checks(data):
    with pytest.raises(InputError, match=r"species H, O not in the species list"):
        ingest.run(data, shard=0, n_shards=1, manifest="out/m.tsv", rejected="out/r.tsv",
                   structures="out/s.h5", species=["Cu", "Au", "Pt"])
    # on_error=raise: nothing at all is written, no temporary file is left
    assert not Path("out").exists() or list(Path("out").iterdir()) == []
    ingest.run(data, shard=0, n_shards=1, manifest="out/m.tsv", rejected="out/r.tsv",
               species=["Cu", "Au", "Pt"], min_cutoff=1.6, on_error="skip")
    rejected = {r["label"]: r["reason"] for r in read_rejected("out/r.tsv")}
    assert set(rejected) == {"data/frames.pkl@0", "data/frames.pkl@1"}
    # H-H distance in the pickle frames: 1.1 * sqrt(2) = 1.556 Å < 1.6 (species first though)
    assert "species H, O not in the species list" in rejected["data/frames.pkl@0"]
    ingest.run(data, shard=0, n_shards=1, manifest="out/m.tsv", rejected="out/r.tsv",
               min_cutoff=1.6, on_error="skip")
    rejected = {r["label"]: r["reason"] for r in read_rejected("out/r.tsv")}
    assert "overlapping atoms" in rejected["data/frames.pkl@0"]
    assert "data/frames.pkl@1" not in rejected  # 1.2 * sqrt(2) = 1.697 Å


def test_require_energy_false(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("a.xsf").write_text(format_xsf(cell(["Cu"], None)))
    specs = [s.to_dict() for s in expand_sources(["a.xsf"])]
    with pytest.raises(InputError, match="no total energy"):
        ingest.run(specs, 0, 1, "m.tsv", "r.tsv")
    ingest.run(specs, 0, 1, "m.tsv", "r.tsv", require_energy=False)
    (row,) = read_manifest("m.tsv")
    assert row["energy"] == ""


def test_empty_shard_writes_headers(tmp_path):
    ingest.run([], shard=1, n_shards=2, manifest=str(tmp_path / "m.tsv"),
               rejected=str(tmp_path / "r.tsv"), structures=str(tmp_path / "s.h5"))
    assert read_manifest(tmp_path / "m.tsv") == []
    assert read_rejected(tmp_path / "r.tsv") == []
    with DatabaseReader(tmp_path / "s.h5") as raw:
        assert len(raw) == 0


def test_ingest_writes_the_raw_structures_in_manifest_order(data):
    refs = {"Cu": -0.5, "Au": -0.5, "Pt": -0.5, "H": -13.0, "O": -70.0}
    outs = run_shards(data, 3, structures=True, atomic_energies=refs, max_energy=-0.75)
    from nnpflow.sources import collection_for
    for k, (m, _) in enumerate(outs):
        rows = read_manifest(m)
        with DatabaseReader(f"out/shard_{k}.h5") as raw:
            assert raw.names() == [r["label"] for r in rows]
            assert not raw.has_features and raw.descriptor_config is None
            for i, row in enumerate(rows):
                s = raw.structure(i)
                assert s.content_hash() == row["content_hash"]  # every field round-trips
            assert raw.filter == EnergyFilter(-0.75, refs).config()
            # the sources this shard read, with their content hashes
            mine = [d for d in data if d["format"] == "tar" or shard_of(d["path"], 3) == k]
            assert raw.sources["content_hashes"] == collection_for(mine).content_hashes()
    assert sum(len(read_manifest(m)) for m, _ in outs) == 11  # s0, s1 filtered out


def _pipeline(data, tmp, n_shards=2, descriptor=None, **filter_kw):
    """ingest -> manifest -> build -> merge in ``tmp``; returns (manifest.json, database)."""
    from nnpflow.stages import build, merge
    Path(tmp).mkdir(parents=True, exist_ok=True)
    outs = []
    for k in range(n_shards):
        mine = [s for s in data if s["format"] == "tar" or shard_of(s["path"], n_shards) == k]
        paths = [f"{tmp}/{name}_{k}" for name in ("m.tsv", "r.tsv", "raw.h5", "db.h5")]
        ingest.run(mine, shard=k, n_shards=n_shards, manifest=paths[0], rejected=paths[1],
                   structures=paths[2], **filter_kw)
        outs.append(paths)
    manifest.run([o[0] for o in outs], [o[1] for o in outs], manifest=f"{tmp}/manifest.tsv",
                 summary=f"{tmp}/manifest.json", rejected=f"{tmp}/rejected.tsv", **filter_kw)
    for o in outs:
        build.run(structures=o[2], database=o[3],
                  descriptor=descriptor or dict(rad_order=2, rad_cutoff=3.0, ang_order=1,
                                                ang_cutoff=2.5, min_cutoff=0.5),
                  database_cfg={"persist_features": True, "persist_force_derivatives": True,
                                "compression": "lzf", "dtype": "float32"},
                  species=None, manifest_summary=f"{tmp}/manifest.json")
    merge.run([o[3] for o in outs], database=f"{tmp}/database.h5",
              summary=f"{tmp}/database.json", manifest_summary=f"{tmp}/manifest.json")
    return (json.loads(Path(f"{tmp}/manifest.json").read_text()),
            json.loads(Path(f"{tmp}/database.json").read_text()))


def test_manifest_and_database_carry_one_structures_fingerprint(data):
    refs = {"Cu": -0.5, "Au": -0.5, "Pt": -0.5, "H": -13.0, "O": -70.0}
    summary, db = _pipeline(data, "a", atomic_energies=refs, max_energy=-0.75)
    fp = summary["structures_fingerprint"]
    assert db["structures_fingerprint"] == fp
    # the database holds the manifest's structures in the manifest's order
    rows = read_manifest("a/manifest.tsv")
    with DatabaseReader("a/database.h5") as r:
        assert r.names() == [row["label"] for row in rows]
        assert r.has_features and r.species == summary["species"]  # species inferred
        # a Python-API build of the same structures in the same order, same filter
        structures = list(r.iter_structures())
    write_database("api.h5", structures, filter_meta=EnergyFilter(-0.75, refs).config())
    with DatabaseReader("api.h5") as api:
        assert api.structures_fingerprint == fp
    # another descriptor: another database fingerprint, the same structures fingerprint
    _, db2 = _pipeline(data, "b", descriptor=dict(rad_order=3, rad_cutoff=3.2, ang_order=1,
                                                 ang_cutoff=2.5, min_cutoff=0.5),
                       atomic_energies=refs, max_energy=-0.75)
    assert db2["structures_fingerprint"] == fp and db2["fingerprint"] != db["fingerprint"]
    # another filter (even one keeping the same structures), structure or set: another
    summary3, _ = _pipeline(data, "c", atomic_energies=refs, max_energy=-0.74)
    assert summary3["n_structures"] == summary["n_structures"]
    assert summary3["structures_fingerprint"] != fp
    changed = [dict(r, content_hash=r["content_hash"] if i else "0" * 64)
               for i, r in enumerate(rows)]
    from nnpflow.io.manifest import rows_fingerprint
    filt = EnergyFilter(-0.75, refs).config()
    assert rows_fingerprint(rows, filt) == fp
    assert rows_fingerprint(changed, filt) != fp
    assert rows_fingerprint(rows[1:], filt) != fp
    assert rows_fingerprint(rows[::-1], filt) != fp


def test_merge_refuses_shards_of_other_structures(data):
    from nnpflow.stages import merge
    _pipeline(data, "a")
    Path("b").mkdir()
    # a manifest of one shard only: the two shards hold more than it lists
    manifest.run(["a/m.tsv_0"], ["a/r.tsv_0"], manifest="b/manifest.tsv",
                 summary="b/manifest.json", rejected="b/rejected.tsv")
    with pytest.raises(InputError, match="merged shards hold other structures than the "
                                         "manifest"):
        merge.run(["a/db.h5_0", "a/db.h5_1"], database="b/database.h5",
                  summary="b/database.json", manifest_summary="b/manifest.json")
    assert not Path("b/database.h5").exists() and not Path("b/database.json").exists()


def test_build_needs_species_or_a_manifest_to_infer_them(data, tmp_path):
    from nnpflow import ConfigError
    from nnpflow.stages import build
    ingest.run(data[:1], shard=0, n_shards=1, manifest="m.tsv", rejected="r.tsv",
               structures="raw.h5")
    kw = dict(structures="raw.h5", database="db.h5",
              descriptor=dict(rad_order=2, rad_cutoff=3.0, ang_order=1, ang_cutoff=2.5),
              database_cfg={})
    with pytest.raises(ConfigError, match="needs species or the manifest summary"):
        build.run(**kw)
    Path("empty.json").write_text(json.dumps({"species": []}))
    with pytest.raises(InputError, match="empty.json: the manifest holds no structures"):
        build.run(**kw, manifest_summary="empty.json")
    assert build.run(**kw, species=["Au", "Cu"])["species"] == ["Au", "Cu"]
    with DatabaseReader("db.h5") as db:
        assert db.species == ["Cu", "Au"] and db.layout["feature_species"] == ["Au", "Cu"]


def test_manifest_stage_refuses_duplicate_labels_and_dedupes_rejections(data):
    outs = run_shards(data, 2)
    Path("out/copy.tsv").write_text(Path(outs[0][0]).read_text())
    with pytest.raises(InputError, match=r"appears in two shard manifests: out/shard_0.tsv and "
                                         r"out/copy.tsv"):
        manifest.run([outs[0][0], "out/copy.tsv"], [], "out/m.tsv", "out/s.json", "out/r.tsv")
    assert not Path("out/m.tsv").exists()
    for k in range(2):
        Path(f"out/rej{k}.tsv").write_text("label\treason\nx.tar.gz\tx.tar.gz: corrupt\n"
                                           f"y{k}\ty{k}: bad\n")
    manifest.run([m for m, _ in outs], ["out/rej0.tsv", "out/rej1.tsv"], "out/m.tsv",
                 "out/s.json", "out/r.tsv")
    assert [r["label"] for r in read_rejected("out/r.tsv")] == ["x.tar.gz", "y0", "y1"]
    assert json.loads(Path("out/s.json").read_text())["n_rejected"] == 3


def test_shard_arguments_are_checked(data):
    from nnpflow import ConfigError

    with pytest.raises(ConfigError, match="shard must be in 0..1"):
        ingest.run(data, shard=2, n_shards=2, manifest="m.tsv", rejected="r.tsv")


def test_cli_summary_on_stdout(data, capsys):
    assert main(["ingest", "data", "-o", "out/m.tsv", "--max-energy", "-0.75",
                 "--atomic-energies", "ref.csv"]) == 2
    assert "ref.csv: cannot open atomic energy file" in capsys.readouterr().err
    Path("ref.csv").write_text("atom_type,atomic_energy\nCu,-0.5\nAu,-0.5\nPt,-0.5\nH,-13\nO,-70\n")
    status = main(["ingest", "data/arch.tar.bz2", "data/s0.xsf", "data/s3.xsf", "-o", "out/m.tsv",
                   "--max-energy", "-0.75", "--atomic-energies", "ref.csv"])
    captured = capsys.readouterr()
    assert status == 0
    summary = json.loads(captured.out)
    assert summary["n_structures"] == 7 and summary["n_rejected"] == 1
    assert summary["rejected"] == "out/m.rejected.tsv"
    assert "1 rejected" in captured.err
    assert [r["label"] for r in read_rejected("out/m.rejected.tsv")] == ["data/s0.xsf"]


def test_wild_energy_outlier_is_flagged_not_filtered(tmp_path, monkeypatch, caplog):
    """Issue 13: one structure with its energy in Ry instead of eV is kept (max_energy
    is the filter) but gets a warning in the manifest log and its robust z-score in
    the manifest's energy_robust_z column."""
    from nnpflow.energy_outliers import OUTLIER_Z
    from nnpflow.io.xsf import write_xsf

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(1)
    Path("d").mkdir()
    base = np.array([[0, 0, 0], [1.8, 1.8, 0], [1.8, 0, 1.8], [0, 1.8, 1.8]])
    for k in range(30):
        species = ["Cu", "Au", "Cu", "Au"] if k % 2 else ["Cu", "Cu", "Cu", "Cu"]
        # composition-dependent energies: Cu -3.5, Au -4.0 eV/atom, ~0.02 eV noise
        e = sum(-3.5 if s == "Cu" else -4.0 for s in species) + rng.normal(scale=0.02)
        if k == 17:
            e *= 13.6057  # Ry mistaken for eV
        write_xsf(f"d/s{k:02d}.xsf", Structure(positions=base, species=species,
                                               cell=np.eye(3) * 3.6, energy=e, name="x"))
    specs = [{"path": f"d/s{k:02d}.xsf", "format": "xsf", "options": {}} for k in range(30)]
    ingest.run(specs, shard=0, n_shards=1, manifest="m0.tsv", rejected="r0.tsv")
    with caplog.at_level("WARNING", logger="nnpflow.stages.manifest"):
        manifest.run(["m0.tsv"], ["r0.tsv"], manifest="manifest.tsv",
                     summary="manifest.json", rejected="rejected.tsv")
    rows = read_manifest("manifest.tsv")
    assert len(rows) == 30  # kept
    z = {r["label"]: float(r["energy_robust_z"]) for r in rows}
    assert abs(z["d/s17.xsf"]) > 10 * OUTLIER_Z
    assert max(abs(v) for k, v in z.items() if k != "d/s17.xsf") < 5
    # the manifest stage's own records (an earlier test may have routed Python warnings
    # into logging: logging.captureWarnings)
    warned = [rec.getMessage() for rec in caplog.records if rec.name == "nnpflow.stages.manifest"]
    assert len(warned) == 1 and warned[0].startswith("manifest: d/s17.xsf: energy "), warned
    assert "is an outlier (robust z-score" in warned[0]
    summary = json.loads(Path("manifest.json").read_text())
    assert summary["energy_outliers"] == {"robust_z_threshold": OUTLIER_Z, "n": 1,
                                          "labels": ["d/s17.xsf"]}
    # the column is there for the shards' readers too: plain shard manifests still read
    assert "energy_robust_z" not in read_manifest("m0.tsv")[0]


def test_real_dft_data_raises_no_energy_outlier_warning(shared_data, tmp_path, capsys):
    """The 100 TiO2 DFT structures (long-tailed: distorted cells up to 5.4 eV/atom
    above the lowest) are not flagged; nnpflow ingest writes the column."""
    from nnpflow.cli import main as cli_main
    from nnpflow.energy_outliers import OUTLIER_Z

    out = tmp_path / "m.tsv"
    assert cli_main(["ingest", str(shared_data / "xsf-TiO2"), "-o", str(out)]) == 0
    assert "outlying energy" not in capsys.readouterr().err
    z = [abs(float(r["energy_robust_z"])) for r in read_manifest(out)]
    assert len(z) == 100 and 5 < max(z) < OUTLIER_Z
