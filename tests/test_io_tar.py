"""Streaming tar archives: compressions, duplicate names, suffix filter, select, one pass."""

from __future__ import annotations

import hashlib
import io
import tarfile

import numpy as np
import pytest

from nnpflow import InputError, Structure
from nnpflow.io import read_structures
from nnpflow.io.tar import iter_members
from nnpflow.io.xsf import format_xsf
from nnpflow.sources import TarArchiveXSFSourceCollection

COMPRESSIONS = [("", ".tar"), ("gz", ".tar.gz"), ("bz2", ".tar.bz2"), ("xz", ".tar.xz"),
                ("gz", ".tgz")]


def xsf_bytes(energy: float, n: int = 2) -> bytes:
    s = Structure(positions=np.arange(3 * n, dtype=float).reshape(n, 3) * 0.9,
                  species=["Cu"] * n, cell=np.eye(3) * 10, energy=energy,
                  forces=np.full((n, 3), energy / 100))
    return format_xsf(s).encode()


def make_archive(path, members, compression=""):
    mode = f"w:{compression}" if compression else "w"
    with tarfile.open(path, mode) as tf:
        for name, data in members:
            if data is None:  # a directory entry
                info = tarfile.TarInfo(name)
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


MEMBERS = [("d", None), ("d/a.xsf", xsf_bytes(-1.0)), ("d/notes.txt", b"not a structure"),
           ("d/b.XSF", xsf_bytes(-2.0)), ("d/a.xsf", xsf_bytes(-3.0)), ("d/a.xsf", xsf_bytes(-4.0))]


@pytest.mark.parametrize("compression, suffix", COMPRESSIONS)
def test_all_compressions_and_duplicate_names(tmp_path, compression, suffix):
    path = make_archive(tmp_path / f"data{suffix}", MEMBERS, compression)
    label = str(path)
    members = list(iter_members(path))
    assert [m.label for m in members] == [f"{label}:d/a.xsf", f"{label}:d/b.XSF",
                                          f"{label}:d/a.xsf#2", f"{label}:d/a.xsf#3"]
    assert members[2].archive == label and members[2].member == "d/a.xsf#2"
    structures = list(read_structures(path))
    assert [s.energy for s in structures] == [-1.0, -2.0, -3.0, -4.0]
    assert [s.name for s in structures] == [m.label for m in members]


def test_suffix_filter_none_keeps_every_regular_file(tmp_path):
    path = make_archive(tmp_path / "a.tar", MEMBERS)
    names = [m.member for m in iter_members(path, suffixes=None)]
    assert names == ["d/a.xsf", "d/notes.txt", "d/b.XSF", "d/a.xsf#2", "d/a.xsf#3"]
    assert [m.member for m in iter_members(path, suffixes=(".txt",))] == ["d/notes.txt"]


def test_select_skips_members_without_parsing_them(tmp_path):
    members = [("a.xsf", xsf_bytes(-1.0)), ("bad.xsf", b"\x00garbage"), ("a.xsf", xsf_bytes(-2.0))]
    path = make_archive(tmp_path / "a.tar.bz2", members, "bz2")
    asked = []

    def select(label):
        asked.append(label)
        return not label.endswith("bad.xsf")

    coll = TarArchiveXSFSourceCollection(path)
    got = coll.structures(select=select)
    assert [s.energy for s in got] == [-1.0, -2.0]
    # disambiguation counts skipped members too, so labels do not depend on the selection
    assert asked == [f"{path}:a.xsf", f"{path}:bad.xsf", f"{path}:a.xsf#2"]
    assert got[1].name == f"{path}:a.xsf#2"


class ForwardOnly(io.RawIOBase):
    """A stream that can only be read forward, like a pipe."""

    def __init__(self, data: bytes):
        self._buf = io.BytesIO(data)
        self.reads = 0

    def readable(self):
        return True

    def readinto(self, b):
        self.reads += 1
        chunk = self._buf.read(len(b))
        b[:len(chunk)] = chunk
        return len(chunk)

    def seekable(self):
        return False

    def seek(self, *args):
        raise io.UnsupportedOperation("not seekable")

    def tell(self):
        raise io.UnsupportedOperation("not seekable")


@pytest.mark.parametrize("compression, suffix", COMPRESSIONS[:4])
def test_archive_is_read_in_one_forward_pass(tmp_path, compression, suffix):
    path = make_archive(tmp_path / f"a{suffix}", MEMBERS, compression)
    stream = ForwardOnly(path.read_bytes())
    got = list(iter_members(stream, label="piped"))
    assert [m.label for m in got] == ["piped:d/a.xsf", "piped:d/b.XSF", "piped:d/a.xsf#2",
                                      "piped:d/a.xsf#3"]
    assert stream.reads > 0


def test_collection_api(tmp_path):
    path = make_archive(tmp_path / "a.tar.xz", MEMBERS, "xz")
    coll = TarArchiveXSFSourceCollection(path)
    assert coll.supports_parallel_build
    assert coll.content_hashes() == {str(path): hashlib.sha256(path.read_bytes()).hexdigest()}
    assert coll.describe() == [{"kind": "tar", "path": str(path), "format": "tar",
                                "suffixes": [".xsf"]}]
    units = list(coll.iter_units())
    assert [u.label for u in units][-1] == f"{path}:d/a.xsf#3"
    assert len(list(coll)) == 4


@pytest.mark.parametrize("compression, suffix", COMPRESSIONS[1:4])
@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_compressed_archive_names_the_archive(tmp_path, compression, suffix, damage):
    members = [(f"m{k}.xsf", xsf_bytes(-float(k), n=40)) for k in range(20)]
    path = make_archive(tmp_path / f"a{suffix}", members, compression)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) * 2 // 3]
    else:
        for k in range(len(data) // 2, len(data) // 2 + 64):
            data[k] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(InputError) as info:
        list(iter_members(path))
    assert info.value.source == str(path)
    assert "archive" in str(info.value)
    # the collection reports the same under skip, after the good members
    rejected = []
    got = TarArchiveXSFSourceCollection(path).structures(on_error="skip", rejected=rejected)
    assert len(got) < 20
    assert rejected[-1].label == str(path)


def test_corrupt_header_in_plain_tar_is_detected(tmp_path):
    members = [("a.xsf", xsf_bytes(-1.0)), ("b.xsf", xsf_bytes(-2.0)), ("c.xsf", xsf_bytes(-3.0))]
    path = make_archive(tmp_path / "a.tar", members)
    data = bytearray(path.read_bytes())
    second = 512 + ((len(members[0][1]) + 511) // 512) * 512  # header of b.xsf
    data[second: second + 100] = b"\xff" * 100
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"corrupt or truncated archive after member 'a.xsf'"):
        list(iter_members(path))


def test_archive_without_matching_members(tmp_path):
    path = make_archive(tmp_path / "a.tar.gz", [("x.txt", b"hello")], "gz")
    with pytest.raises(InputError, match=r"a.tar.gz: archive has no members with suffix .xsf"):
        list(iter_members(path))
    path = make_archive(tmp_path / "empty.tar", [])
    with pytest.raises(InputError, match="archive has no members"):
        list(iter_members(path))


def test_not_an_archive(tmp_path):
    path = tmp_path / "fake.tar.bz2"
    path.write_bytes(b"this is not compressed at all" * 20)
    with pytest.raises(InputError, match=r"fake.tar.bz2: not a readable tar archive"):
        list(iter_members(path))


def test_bad_member_is_named_with_member_and_line(tmp_path):
    bad = xsf_bytes(-1.0).replace(b"PRIMCOORD\n2 1", b"PRIMCOORD\n3 1")
    path = make_archive(tmp_path / "a.tar", [("ok.xsf", xsf_bytes(-1.0)), ("ok.xsf", bad)])
    with pytest.raises(InputError) as info:
        list(TarArchiveXSFSourceCollection(path))
    assert info.value.member == "ok.xsf#2"
    assert str(info.value).startswith(f"{path}:ok.xsf#2, line ")
    assert "truncated" in str(info.value)


def test_links_devices_and_fifos_are_listed_as_not_read(tmp_path):
    """Issue 13: such members used to vanish silently.  A directory and a tar of the
    same files give the same accepted set, or the difference is in the rejected list."""
    import os

    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.xsf").write_bytes(xsf_bytes(-1.0))
    (tree / "sub" / "c.xsf").write_bytes(xsf_bytes(-3.0))
    (tmp_path / "elsewhere.xsf").write_bytes(xsf_bytes(-2.0))
    os.symlink("../elsewhere.xsf", tree / "b.xsf")
    archive = tmp_path / "tree.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:  # the symbolic link is stored as a link
        tf.add(tree, arcname="tree")
        for name, kind in (("tree/hard.xsf", tarfile.LNKTYPE), ("tree/pipe.xsf", tarfile.FIFOTYPE),
                           ("tree/dev.xsf", tarfile.CHRTYPE), ("tree/notes.lnk", tarfile.SYMTYPE)):
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "tree/a.xsf" if kind in (tarfile.LNKTYPE, tarfile.SYMTYPE) else ""
            tf.addfile(info)
    from nnpflow.sources import expand_sources, collection_for

    def read(path):
        rejected = []
        got = collection_for(expand_sources([str(path)])).structures(rejected=rejected)
        return got, rejected

    from_dir, dir_rejected = read(tree)
    from_tar, tar_rejected = read(archive)  # on_error="raise": these are not errors
    assert dir_rejected == []
    in_dir = {s.name[len(str(tree)) + 1:] for s in from_dir}
    in_tar = {s.name.split(":", 1)[1][len("tree/"):] for s in from_tar}
    assert in_dir == {"a.xsf", "b.xsf", "sub/c.xsf"} and in_tar == {"a.xsf", "sub/c.xsf"}
    listed = {r.label.split(":", 1)[1]: r.reason for r in tar_rejected}
    assert set(listed) == {"tree/b.xsf", "tree/hard.xsf", "tree/pipe.xsf", "tree/dev.xsf"}
    assert {m[len("tree/"):] for m in listed} >= in_dir - in_tar
    assert "symbolic link (to '../elsewhere.xsf')" in listed["tree/b.xsf"]
    assert "hard link (to 'tree/a.xsf')" in listed["tree/hard.xsf"]
    assert "fifo" in listed["tree/pipe.xsf"] and "device" in listed["tree/dev.xsf"]
    assert all(r.reason.startswith(f"{archive}:{m}: not read: the member is ")
               for m, r in zip(listed, tar_rejected))
    # a shard lists only the members it owns, so the merged list has each once
    owners = [[r.label for r in TarArchiveXSFSourceCollection(archive).iter_units(
        select=lambda u, k=k: int(hashlib.sha256(u.encode()).hexdigest(), 16) % 2 == k) if r.not_read] for k in (0, 1)]
    assert sorted(owners[0] + owners[1]) == sorted(r.label for r in tar_rejected)


def test_an_archive_of_links_only_lists_them_instead_of_claiming_no_members(tmp_path):
    path = tmp_path / "links.tar"
    with tarfile.open(path, "w") as tf:
        info = tarfile.TarInfo("a.xsf")
        info.type, info.linkname = tarfile.SYMTYPE, "/data/a.xsf"
        tf.addfile(info)
    rejected = []
    assert TarArchiveXSFSourceCollection(path).structures(rejected=rejected) == []
    assert [r.label for r in rejected] == [f"{path}:a.xsf"]
    with pytest.raises(InputError, match="archive has no members with suffix .xsf"):
        list(iter_members(path))  # unread="raise": links are skipped, nothing is left
