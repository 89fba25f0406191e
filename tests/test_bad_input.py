"""Every bad-input class: one clear error naming file (member, line) -- through the
Python API and through ``nnpflow ingest`` -- and ``on_error=skip`` collecting them all."""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest

from nnpflow import InputError, Structure
from nnpflow.cli import main
from nnpflow.io.manifest import read_manifest, read_rejected
from nnpflow.sources import FileListSourceCollection, RecordSourceCollection, expand_sources
from nnpflow.structure_checks import StructureChecks

GOOD = """\
# total energy = -7.25 eV
CRYSTAL
PRIMVEC
3.6 0.0 0.0
0.0 3.6 0.0
0.0 0.0 3.6
PRIMCOORD
2 1
Cu 0.0 0.0 0.0 0.1 0.0 0.0
Cu 1.8 1.8 0.0 -0.1 0.0 0.0
"""


def _tar(members, compression: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compression}" if compression else "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _corrupt(compression: str) -> bytes:
    members = [(f"m{k}.xsf", GOOD.replace("-7.25", str(-k - 0.5)).encode() * 1) for k in range(30)]
    data = bytearray(_tar(members, compression))
    for k in range(len(data) // 2, len(data) // 2 + 32):
        data[k] ^= 0xA5
    return bytes(data)


# name -> (file content, expected message (regex), expected line or None, extra CLI args)
CASES = {
    "truncated.xsf": (GOOD[: GOOD.index("Cu 1.8")], r"file ends after 1 of the 2 atom lines "
                      r"that PRIMCOORD \(line 7\) declares; truncated file\?", 9, []),
    "truncated_midline.xsf": (GOOD[: GOOD.index("1.8 0.0 -0.1")], r"atom line has 2 columns; "
                              r"expected 4 .* or 7 .*; truncated file\?", 10, []),
    "no_energy.xsf": (GOOD.replace("# total energy = -7.25 eV", "# energy unknown"),
                      r"no total energy", 7, []),
    "text_energy.xsf": (GOOD.replace("-7.25", "abc"),
                        r"total energy line has non-numeric value 'abc'", 1, []),
    "nan_energy.xsf": (GOOD.replace("-7.25", "nan"), r"non-finite total energy 'nan'", 1, []),
    "text_position.xsf": (GOOD.replace("Cu 1.8 1.8", "Cu 1.8 x1.8"),
                          r"non-numeric coordinate or force 'x1.8'", 10, []),
    "text_vector.xsf": (GOOD.replace("0.0 3.6 0.0", "0.0 3,6 0.0"),
                        r"non-numeric lattice vector component '3,6'", 5, []),
    "inf_position.xsf": (GOOD.replace("Cu 1.8 1.8", "Cu 1.8 inf"),
                         r"non-finite position 'inf' \(atom 2\)", 10, []),
    "nan_force.xsf": (GOOD.replace("-0.1 0.0 0.0", "-0.1 NaN 0.0"),
                      r"non-finite force 'NaN' \(atom 2\)", 10, []),
    "columns.xsf": (GOOD.replace("Cu 1.8 1.8 0.0 -0.1 0.0 0.0", "Cu 1.8 1.8 0.0 -0.1"),
                    r"atom line has 5 columns; expected 4", 10, []),
    "count_low.xsf": (GOOD.replace("2 1", "3 1"), r"file ends after 2 of the 3 atom lines", 10, []),
    "count_high.xsf": (GOOD.replace("2 1", "1 1"), r"more atom lines than the 1 that PRIMCOORD "
                       r"\(line 7\) declares", 10, []),
    "no_primvec.xsf": ("\n".join(line for k, line in enumerate(GOOD.splitlines()) if not 2 <= k <= 5)
                       + "\n", r"PRIMCOORD but no PRIMVEC before it", 3, []),
    "singular.xsf": (GOOD.replace("0.0 3.6 0.0", "3.6 0.0 0.0"),
                     r"singular PRIMVEC: the lattice vectors are linearly dependent", 3, []),
    "element.xsf": (GOOD.replace("Cu 1.8", "Xx 1.8"), r"unknown element symbol 'Xx'", 10, []),
    "empty.xsf": ("", r"empty file", None, []),
    "garbage.xsf": (bytes(range(256)) * 4, r"binary data \(NUL byte\)", 1, []),
    "latin.xsf": (b"\xff\xfe\xfa garbage\n" * 3, r"not UTF-8 text", 1, []),
    "corrupt.tar.gz": (_corrupt("gz"), r"corrupt or truncated archive|not a readable tar", None,
                       []),
    "corrupt.tar.bz2": (_corrupt("bz2"), r"corrupt or truncated archive|not a readable tar",
                        None, []),
    "corrupt.tar.xz": (_corrupt("xz"), r"corrupt or truncated archive|not a readable tar",
                       None, []),
    "nomembers.tar.bz2": (_tar([("readme.txt", b"hello")], "bz2"),
                          r"archive has no members with suffix .xsf", None, []),
    "platinum.xsf": (GOOD.replace("Cu 1.8", "Pt 1.8"), r"species Pt not in the species list "
                     r"\[Cu, Au\]", None, ["--species", "Cu,Au"]),
    "overlap.xsf": (GOOD.replace("Cu 1.8 1.8 0.0", "Cu 0.2 0.0 0.0"),
                    r"overlapping atoms: atoms 1 \(Cu\) and 2 \(Cu\) are 0.2 Å apart, at or "
                    r"below min_cutoff 0.5 Å", None, ["--min-cutoff", "0.5"]),
}


def _checks(extra):
    species = extra[extra.index("--species") + 1].split(",") if "--species" in extra else None
    min_cutoff = float(extra[extra.index("--min-cutoff") + 1]) if "--min-cutoff" in extra else None
    return StructureChecks(species, min_cutoff)


def _write(folder: Path, name: str) -> Path:
    content = CASES[name][0]
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _location(path: Path, line):
    loc = str(path)
    return f"{loc}, line {line}: " if line is not None else f"{loc}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_python_api_gives_one_clear_error(tmp_path, name):
    _, message, line, extra = CASES[name]
    path = _write(tmp_path, name)
    coll = FileListSourceCollection([path])
    with pytest.raises(InputError) as info:
        coll.structures(check=_checks(extra))
    text = str(info.value)
    assert text.startswith(_location(path, line)), text
    assert info.value.source == str(path)
    assert info.value.line == line
    assert re.search(message, text), text


@pytest.mark.parametrize("name", sorted(CASES))
def test_cli_exits_2_with_the_error_and_writes_nothing(tmp_path, capsys, name):
    _, message, line, extra = CASES[name]
    path = _write(tmp_path, name)
    out = tmp_path / "out" / "manifest.tsv"
    status = main(["ingest", str(path), "-o", str(out), *extra])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith(f"nnpflow ingest: error: {_location(path, line)}"), err
    assert re.search(message, err), err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "out" / "manifest.rejected.tsv").exists()


def test_two_sources_with_the_same_label():
    a = Structure(positions=[[0, 0, 0]], species=["H"], energy=1.0, name="same")
    b = Structure(positions=[[1, 0, 0]], species=["H"], energy=2.0, name="same")
    with pytest.raises(InputError, match=r"^same: two sources with the same label: record 0 "
                                         r"and record 1$"):
        RecordSourceCollection([a, b]).structures()


def test_cli_refuses_the_same_file_twice(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("a.xsf").write_text(GOOD)
    status = main(["ingest", "a.xsf", "./a.xsf", "-o", "m.tsv"])
    assert status == 2
    assert "file a.xsf is listed twice" in capsys.readouterr().err


def test_skip_collects_every_bad_source_with_reasons(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("data").mkdir()
    for name in CASES:
        _write(Path("data"), name)
    good = [Path("data") / f"good{k}.xsf" for k in range(3)]
    for k, p in enumerate(good):
        p.write_text(GOOD.replace("-7.25", str(-7.0 - k)))
    Path("data/good.tar.gz").write_bytes(_tar([("g.xsf", GOOD.encode()),
                                               ("g.xsf", GOOD.replace("-7.25", "-9").encode())],
                                              "gz"))
    status = main(["ingest", "data", "-o", "out/manifest.tsv", "--on-error", "skip",
                   "--species", "Cu", "--species", "Au", "--min-cutoff", "0.5"])
    assert status == 0
    rows = read_manifest("out/manifest.tsv")
    # members read before the damage in a corrupt archive are good data and kept
    rows = [r for r in rows if not r["label"].startswith("data/corrupt.")]
    assert sorted(r["label"] for r in rows) == sorted(
        [p.as_posix() for p in good] + ["data/good.tar.gz:g.xsf", "data/good.tar.gz:g.xsf#2"])
    rejected = read_rejected("out/manifest.rejected.tsv")
    by_label = {}
    for r in rejected:
        by_label.setdefault(r["label"], []).append(r["reason"])
    for name, (_, message, line, _extra) in CASES.items():
        label = f"data/{name}"
        assert label in by_label, f"{name} not rejected"
        (reason,) = by_label[label]
        assert reason.startswith(label) and re.search(message, reason), reason
    assert len(rejected) == len(CASES)
    assert '"n_rejected": %d' % len(CASES) in capsys.readouterr().out


def test_skip_in_python_api_keeps_going_inside_an_archive(tmp_path):
    data = _tar([("a.xsf", GOOD.encode()), ("b.xsf", CASES["element.xsf"][0].encode()),
                 ("c.xsf", GOOD.replace("-7.25", "-8.0").encode())], "bz2")
    path = tmp_path / "mixed.tar.bz2"
    path.write_bytes(data)
    rejected = []
    got = FileListSourceCollection([path]).structures(on_error="skip", rejected=rejected)
    assert [s.energy for s in got] == [-7.25, -8.0]
    assert [r.label for r in rejected] == [f"{path}:b.xsf"]
    assert rejected[0].reason.startswith(f"{path}:b.xsf, line 10: unknown element symbol")


def test_specs_from_bad_corpus_expand(tmp_path):
    """Directory expansion picks up every bad file (none is silently ignored)."""
    for name in CASES:
        _write(tmp_path, name)
    specs = expand_sources([str(tmp_path)])
    assert len(specs) == len(CASES)


def test_non_finite_cell_from_records():
    s = Structure(positions=[[0, 0, 0]], species=["H"], cell=np.eye(3) * np.nan, energy=0.0,
                  name="r")
    with pytest.raises(InputError, match="r: non-finite lattice vectors"):
        RecordSourceCollection([s]).structures()


def test_the_corpus_good_file_is_good():
    """Guards the corpus: the base file every bad case is made from parses cleanly."""
    from nnpflow.io.xsf import parse_xsf

    (g,) = parse_xsf(GOOD, "good.xsf", require_energy=True)
    g.validate(require_energy=True, require_forces=True)
    StructureChecks(["Cu", "Au"], 0.5)(g)
