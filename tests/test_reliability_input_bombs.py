"""Issue 13, must-never-happen 3: small inputs must not eat the machine.

A few kilobytes of compressed archive can inflate to gigabytes, and a 32-byte
pickle can ask for a 4 GB buffer.  Archive members above ``max_member_size`` are
refused before they are read (error naming archive and member), members below it
are parsed in bounded memory however many lines they have, and the restricted
unpickler only rebuilds data whose size the file itself pays for.

The bombs are built in a temporary folder in well under a second: a gzip stream
of one compressed megabyte repeated (full flushes make the blocks independent), so
the test does not spend time compressing gigabytes.  Peak memory is measured in a
subprocess with ``resource.getrusage`` (``ru_maxrss``), after a warm-up ingest, so
imports do not count.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest

from nnpflow.errors import InputError
from nnpflow.io.pickle_frames import load_pickle, read_frames
from nnpflow.io.tar import DEFAULT_MAX_MEMBER_SIZE, iter_members
from nnpflow.io.xsf import parse_xsf
from nnpflow.sources import TarArchiveXSFSourceCollection, expand_sources

GB = 1 << 30
MB = 1 << 20


def repeated_member_tar_gz(path: Path, name: str, segment: bytes, repeats: int,
                           trailing: bytes = b"") -> Path:
    """A .tar.gz holding one member ``segment * repeats + trailing`` (built from one
    compressed copy of ``segment``, so gigabytes take milliseconds)."""
    size = len(segment) * repeats + len(trailing)
    info = tarfile.TarInfo(name)
    info.size = size
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    end = trailing + b"\0" * ((-size) % 512 + 1024)

    def raw(data: bytes, last: bool = False) -> bytes:
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        return c.compress(data) + c.flush(zlib.Z_FINISH if last else zlib.Z_FULL_FLUSH)

    seg = raw(segment)
    crc = zlib.crc32(header)
    for _ in range(repeats):
        crc = zlib.crc32(segment, crc)
    crc = zlib.crc32(end, crc)
    with open(path, "wb") as fh:
        fh.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + raw(header))
        for _ in range(repeats):
            fh.write(seg)
        fh.write(raw(end, last=True))
        fh.write(struct.pack("<II", crc & 0xFFFFFFFF, (len(header) + size + len(end))
                             & 0xFFFFFFFF))
    return path


def small_archive(path: Path) -> Path:
    text = (b"# total energy = -1.0 eV\nCRYSTAL\nPRIMVEC\n3 0 0\n0 3 0\n0 0 3\n"
            b"PRIMCOORD\n1 1\nCu 0 0 0\n")
    return repeated_member_tar_gz(path, "ok.xsf", text, 1)


MEASURE = textwrap.dedent("""
    import json, resource, sys
    from nnpflow.cli import main
    warm, bomb, out = sys.argv[1:4]
    extra = sys.argv[4:]
    assert main(["ingest", warm, "-o", out + ".warm.tsv"]) == 0
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rc = main(["ingest", bomb, "-o", out, *extra])
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rc": rc, "before_kib": before, "after_kib": after}))
""")


def ingest_peak(tmp_path: Path, bomb: Path, *extra: str) -> tuple[dict, str]:
    """Run ``nnpflow ingest`` on ``bomb`` in a fresh process; its peak RSS (MiB)
    beyond that of ingesting a one-structure archive, the exit status and stderr."""
    warm = small_archive(tmp_path / "warm.tar.gz")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(warm), str(bomb),
                           str(tmp_path / "manifest.tsv"), *extra],
                          capture_output=True, text=True, env=env, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    info = json.loads(lines[-1])
    info["peak_mib"] = info["after_kib"] / 1024
    info["growth_mib"] = (info["after_kib"] - info["before_kib"]) / 1024
    return info, proc.stderr


def test_2_gb_member_of_spaces_is_refused_unread_naming_archive_and_member(tmp_path):
    bomb = repeated_member_tar_gz(tmp_path / "spaces.tar.gz", "data/big.xsf",
                                  b" " * MB, 2048)
    assert bomb.stat().st_size < 3 * MB  # 2 GiB of spaces in ~2 MB
    info, err = ingest_peak(tmp_path, bomb)
    assert info["rc"] == 2, (info, err)
    line = err.strip().splitlines()[-1]
    assert f"{bomb}:data/big.xsf" in line, err
    assert "2 GiB (2147483648 bytes) uncompressed, above the limit of 1 GiB" in line, err
    assert "max_member_size" in line, err
    assert info["peak_mib"] < 1024 and info["growth_mib"] < 64, info


def test_member_of_millions_of_short_lines_is_parsed_in_bounded_memory(tmp_path):
    # 16 MiB of one-character comment lines: 8 million lines.  Splitting them into
    # a list costs 12 bytes per line (pointers, the text, the data read twice)
    # beyond the member itself; the parser streams through them instead
    bomb = repeated_member_tar_gz(tmp_path / "lines.tar.gz", "many.xsf", b"#\n" * (MB // 2),
                                  16)
    assert bomb.stat().st_size < MB // 4
    info, err = ingest_peak(tmp_path, bomb)
    assert info["rc"] == 2, (info, err)
    assert f"{bomb}:many.xsf" in err and "no structure" in err, err
    # the member is held once (16 MiB); lines are decoded a megabyte at a time
    # (measured: 112 MiB before the fix, 47 MiB after, most of it tarfile's own buffers)
    assert info["peak_mib"] < 1024 and info["growth_mib"] < 80, info


def test_a_structure_after_millions_of_blank_lines_parses_exactly():
    tail = (b"# total energy = -2.5 eV\nCRYSTAL\nPRIMVEC\n3 0 0\n0 3 0\n0 0 3\n"
            b"PRIMCOORD\n2 1\nCu 0 0 0 0.1 0.2 0.3\nAu 1.5 1.5 1.5 -0.1 -0.2 -0.3\n")
    data = b"\n" * (MB + MB // 2) + b"   \r\n" * 1000 + tail
    (s,) = parse_xsf(data, "big.xsf", require_energy=True)
    (ref,) = parse_xsf(data.decode(), "big.xsf", require_energy=True)  # the list path
    assert s.energy == ref.energy == -2.5 and s.species == ["Cu", "Au"]
    assert np.array_equal(s.positions, ref.positions) and np.array_equal(s.forces, ref.forces)
    bad = data.replace(b"Au 1.5", b"Au 1.x")
    with pytest.raises(InputError) as lazy:
        parse_xsf(bad, "big.xsf")
    with pytest.raises(InputError) as eager:
        parse_xsf(bad.decode(), "big.xsf")
    assert str(lazy.value) == str(eager.value)
    assert f"line {MB + MB // 2 + 1000 + 10}" in str(lazy.value)
    latin = b"\n" * (MB + 7) + b"# caf\xe9\n" + tail
    with pytest.raises(InputError, match=rf"line {MB + 8}: not UTF-8 text \(byte 0xe9\)"):
        parse_xsf(latin, "big.xsf")


def test_max_member_size_is_configurable_per_source(tmp_path):
    member = b"#\n" * (MB // 2)  # 1 MiB
    archive = repeated_member_tar_gz(tmp_path / "a.tar.gz", "a.xsf", member, 3)
    with pytest.raises(InputError, match=r"a\.tar\.gz:a\.xsf: member is 3 MiB .* limit of "
                                         r"2 MB"):
        list(iter_members(archive, max_member_size="2 MB"))
    # read when the limit allows it (and then it is a bad XSF file, not a refused member)
    (m,) = iter_members(archive, max_member_size="4MB")
    assert len(m.data) == 3 * MB
    # a source entry's max_member_size reaches the collection; skip lists the member
    (spec,) = expand_sources([{"path": str(archive), "max_member_size": "2 MB"}])
    assert spec.options["max_member_size"] == 2_000_000
    rejected = []
    assert spec.collection().structures(on_error="skip", rejected=rejected) == []
    assert [r.label for r in rejected] == [f"{archive}:a.xsf"]
    assert "above the limit of 2 MB" in rejected[0].reason
    from nnpflow.errors import ConfigError
    with pytest.raises(ConfigError, match=r"source entry 1 .*max_member_size: expected a size"):
        expand_sources([{"path": str(archive), "max_member_size": "lots"}])
    assert DEFAULT_MAX_MEMBER_SIZE == GB
    assert TarArchiveXSFSourceCollection(archive).max_member_size == GB


# ------------------------------------------------------------------ pickles

def test_32_byte_pickle_calling_bytearray_4e9_is_refused(tmp_path):
    # PROTO 2, GLOBAL builtins.bytearray, LONG1 4000000000, TUPLE1, REDUCE, STOP
    bomb = b"\x80\x02cbuiltins\nbytearray\n\x8a\x05\x00\x28\x6b\xee\x00\x85R."
    assert len(bomb) <= 32 and pickle.loads(bomb[:-3] + b".") == 4_000_000_000
    path = tmp_path / "bomb.pkl"
    path.write_bytes(bomb)
    code = textwrap.dedent(f"""
        import resource, sys
        from nnpflow.errors import InputError
        from nnpflow.io.pickle_frames import load_pickle
        try:
            load_pickle({str(path)!r})
        except InputError as exc:
            print("REFUSED", exc)
        print("PEAK", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert "REFUSED" in proc.stdout, (proc.stdout, proc.stderr[-2000:])
    assert str(path) in proc.stdout and "bytearray" in proc.stdout
    peak = int(proc.stdout.split("PEAK")[1])
    assert peak < 1024, proc.stdout


class _Call:
    """A pickle that calls ``func(*args)`` (REDUCE), for building bombs."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class _Array:
    """A pickle that rebuilds an ndarray claiming ``shape`` with too little data."""

    def __init__(self, shape, dtype, data):
        self.state = (1, shape, np.dtype(dtype), False, data)

    def __reduce__(self):
        from numpy.core.multiarray import _reconstruct
        return _reconstruct, (np.ndarray, (0,), b"b"), self.state


BOMBS = {
    "bytearray(n)": (_Call(bytearray, 4_000_000_000), r"bytearray"),
    "bytes(n)": (_Call(bytes, 4_000_000_000), r"bytes"),
    "list(range(n))": (_Call(list, _Call(range, 10 ** 10)), r"range"),
    "object array claiming 1e9 items": (_Array((10 ** 9,), object, [None]),
                                        r"array of shape \(1000000000,\)"),
    "float array claiming 1e9 items": (_Array((10 ** 9,), "f8", b"\0" * 8),
                                       r"array of shape \(1000000000,\)"),
    "huge dtype": (_Call(np.dtype, "V2000000"), r"dtype of 2000000 bytes per item"),
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_restricted_unpickler_refuses_allocations_the_file_does_not_pay_for(tmp_path, name):
    obj, message = BOMBS[name]
    path = tmp_path / "bomb.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=2))
    assert path.stat().st_size < 300
    with pytest.raises(InputError, match=message) as info:
        load_pickle(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_enerzyme_style_data_still_loads(tmp_path, protocol):
    rng = np.random.default_rng(0)
    frames = [{"Ra": rng.normal(size=(3, 3)), "Za": np.array([8, 1, 1]), "E": -1.5 - k,
               "Fa": rng.normal(size=(3, 3)).astype(np.float32), "Q": 0, "tag": f"f{k}",
               "meta": {"set": {1, 2}, "fs": frozenset({"a"}), "c": 1 + 2j,
                        "b": bytearray(b"xy"), "raw": b"\x00\x01", "t": (1, 2.0)}}
               for k in range(4)]
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = np.zeros((2, 3)), np.ones((3, 3))
    data = {"frames": frames, "ragged": ragged, "scalar": np.float64(2.5),
            "ints": np.arange(5, dtype=np.int32), "empty": np.zeros((0, 3))}
    path = tmp_path / "data.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    back = load_pickle(path)
    assert back["frames"][3]["meta"] == frames[3]["meta"]
    assert np.array_equal(back["frames"][2]["Fa"], frames[2]["Fa"])
    assert back["frames"][2]["Fa"].dtype == np.float32
    assert np.array_equal(back["ragged"][1], ragged[1]) and back["scalar"] == 2.5
    assert back["ints"].dtype == np.int32 and back["empty"].shape == (0, 3)
    path.write_bytes(pickle.dumps(frames, protocol=protocol))
    got = list(read_frames(path))
    assert [s.energy for s in got] == [-1.5, -2.5, -3.5, -4.5]
