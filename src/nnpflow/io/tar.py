"""Streaming tar archives of structure files (.tar, .tar.gz/.tgz, .tar.bz2, .tar.xz).

An archive is read in one forward pass with :mod:`tarfile` in stream mode
(``"r|*"``): members are never extracted to disk, memory holds one member at a
time, and the time is linear in the archive size.  The compression is detected
from the data, not from the name.

Labels: a member is ``archive_path:member_name``; the n-th occurrence (n >= 2, in
archive order, counting only members that pass the suffix filter) of a repeated
member name is ``archive_path:member_name#n``, so every label is unique.

Corrupt or truncated archives raise :class:`~nnpflow.errors.InputError` naming
the archive (and the last good member), never a raw ``tarfile``/``zlib``/``lzma``/
``bz2`` exception.  After the last member the rest of the stream is read to its
end, so corruption behind the last readable header is reported too.

Memory: a member is held in memory while it is parsed, so a member larger than
``max_member_size`` (default :data:`DEFAULT_MAX_MEMBER_SIZE`, 1 GiB; the size in
the member's header is checked before anything is read) is refused with an
:class:`~nnpflow.errors.InputError` naming archive and member.  A few kilobytes of
compressed data can inflate to gigabytes; this bound keeps such an archive from
exhausting the machine.

Members that are not regular files -- symbolic or hard links, devices, fifos --
cannot be read from a stream; with ``unread="yield"``, those whose name passes
the suffix filter are yielded as :class:`UnreadMember` (the source collections
list them in the rejected list with the reason) instead of being dropped
silently.  Directories are not reported.
"""

from __future__ import annotations

import lzma
import os
import tarfile
import zlib
from typing import IO, Callable, Iterator

from ..errors import InputError

__all__ = ["ARCHIVE_SUFFIXES", "is_archive_path", "iter_members", "ArchiveMember",
           "UnreadMember",
           "DEFAULT_MAX_MEMBER_SIZE", "parse_size", "format_size"]

#: Largest archive member read (bytes) unless ``max_member_size`` says otherwise.
DEFAULT_MAX_MEMBER_SIZE = 1 << 30

_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1 << 10, "m": 1000 ** 2,
               "mb": 1000 ** 2, "mib": 1 << 20, "g": 1000 ** 3, "gb": 1000 ** 3,
               "gib": 1 << 30, "t": 1000 ** 4, "tb": 1000 ** 4, "tib": 1 << 40}

#: File name endings read as tar archives.
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz")

#: Exceptions the tarfile/compression stack raises on corrupt data.
_STREAM_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)


def parse_size(value, what: str = "max_member_size") -> int:
    """Bytes from an integer or a string such as ``"500 MB"``, ``"2GiB"``, ``"1e9"``.

    Raises :class:`~nnpflow.errors.ConfigError` for anything else (negative,
    non-finite, unknown unit)."""
    import math
    import re

    from ..errors import ConfigError

    if isinstance(value, bool):
        raise ConfigError(f"{what}: expected a size in bytes (e.g. 1000000000 or '1 GB'), "
                          f"got {value!r}")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    else:
        m = re.fullmatch(r"\s*([0-9.]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(value))
        if not m or m.group(2).lower() not in _SIZE_UNITS:
            raise ConfigError(f"{what}: expected a size in bytes (e.g. 1000000000 or "
                              f"'1 GB'; units B, kB, MB, GB, TB, KiB, MiB, GiB, TiB), "
                              f"got {value!r}")
        number, unit = float(m.group(1)), m.group(2).lower()
    size = number * _SIZE_UNITS[unit]
    if not math.isfinite(size) or size < 1:
        raise ConfigError(f"{what}: must be a positive, finite size, got {value!r}")
    return int(size)


def format_size(n: int) -> str:
    """``1.5 GB``-style text of a byte count (powers of 1000; ``2 GiB`` for whole
    multiples of a binary unit)."""
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def _kind(info: tarfile.TarInfo) -> str:
    if info.issym():
        return f"a symbolic link (to {info.linkname!r})"
    if info.islnk():
        return f"a hard link (to {info.linkname!r})"
    if info.ischr() or info.isblk():
        return "a device file"
    if info.isfifo():
        return "a fifo (named pipe)"
    return f"not a regular file (tar type {info.type!r})"


def is_archive_path(path: str | os.PathLike) -> bool:
    """True when the file name ends with one of :data:`ARCHIVE_SUFFIXES`."""
    return os.fspath(path).lower().endswith(ARCHIVE_SUFFIXES)


class ArchiveMember(tuple):
    """``(label, data)`` pair that also carries its parts as attributes.

    ``label`` is ``archive:name`` or ``archive:name#n``; ``archive`` the archive's
    label, ``member`` the member part (``name`` or ``name#n``), ``data`` the bytes.
    """

    def __new__(cls, archive: str, member: str, data: bytes | bytearray):
        obj = super().__new__(cls, (f"{archive}:{member}", data))
        obj.archive = archive
        obj.member = member
        return obj

    def __getnewargs__(self):
        return (self.archive, self.member, self[1])

    @property
    def label(self) -> str:
        return self[0]

    @property
    def data(self) -> bytes | bytearray:
        return self[1]


class UnreadMember(tuple):
    """A member :func:`iter_members` passed over: ``(label, error)``.

    ``error`` (:class:`InputError`, naming archive and member) says why;
    ``is_error`` is True for a member that is bad input (too large) and False for
    one that holds no file to read (a link, device or fifo).
    """

    def __new__(cls, archive: str, member: str, error: InputError, is_error: bool):
        obj = super().__new__(cls, (f"{archive}:{member}", error))
        obj.archive = archive
        obj.member = member
        obj.is_error = is_error
        return obj

    def __getnewargs__(self):
        return (self.archive, self.member, self[1], self.is_error)

    @property
    def label(self) -> str:
        return self[0]

    @property
    def error(self) -> InputError:
        return self[1]


def iter_members(path: str | os.PathLike | IO[bytes], suffixes: tuple[str, ...] | None = (".xsf",),
                 select: Callable[[str], bool] | None = None, *, label: str | None = None,
                 require_members: bool = True,
                 max_member_size: int | str | None = DEFAULT_MAX_MEMBER_SIZE,
                 unread: str = "raise") -> Iterator[ArchiveMember | UnreadMember]:
    """Yield ``(member_label, bytes)`` for the regular-file members of a tar archive.

    Parameters
    ----------
    path:
        Archive path, or a binary file object (read forward only, so pipes and
        other non-seekable streams work).
    suffixes:
        Keep members whose name ends with one of these (case-insensitive);
        ``None`` keeps every regular file.
    select:
        ``select(unit_label) -> bool``; members it rejects are skipped without
        reading their data (they still count for name disambiguation).
    label:
        The archive's name in labels and errors (default: the path, posix).
    require_members:
        Raise :class:`InputError` when no member passes the suffix filter.
    max_member_size:
        Largest member read, in bytes (or a string such as ``"2 GB"``, see
        :func:`parse_size`); ``None``: no limit.  A larger member (after the
        suffix filter and ``select``) is not read (see ``unread``).
    unread:
        ``"raise"``: a member above ``max_member_size`` raises
        :class:`InputError`; links, devices and fifos are skipped.  ``"yield"``:
        both are yielded as :class:`UnreadMember` (the caller decides; closing the
        generator right then stops without reading further).
    """
    if unread not in ("raise", "yield"):
        raise ValueError(f"unread must be 'raise' or 'yield', got {unread!r}")
    limit = None if max_member_size is None else parse_size(max_member_size)
    if hasattr(path, "read"):
        fileobj, name = path, label or getattr(path, "name", "<stream>")
        opened = None
    else:
        name = label or os.fspath(path).replace(os.sep, "/")
        try:
            opened = fileobj = open(path, "rb")
        except OSError as exc:
            raise InputError(f"cannot open archive: {exc.strerror}", source=name) from None
    wanted = tuple(s.lower() for s in suffixes) if suffixes is not None else None
    counts: dict[str, int] = {}
    n_unread = 0  # matching members reported as not regular files
    last = None
    try:
        try:
            tf = tarfile.open(fileobj=fileobj, mode="r|*")
        except _STREAM_ERRORS as exc:
            raise InputError(f"not a readable tar archive ({_describe(exc)})",
                             source=name) from None
        with tf:
            try:
                for info in tf:
                    if wanted is not None and not info.name.lower().endswith(wanted):
                        continue
                    if not info.isfile():
                        if info.isdir() or unread != "yield":
                            continue
                        n_unread += 1
                        if select is None or select(f"{name}:{info.name}"):
                            yield UnreadMember(name, info.name, InputError(
                                f"not read: the member is {_kind(info)}; only regular "
                                "files are read from archives (archives are streamed, "
                                "links are not followed)", source=name, member=info.name),
                                False)
                        continue
                    k = counts.get(info.name, 0) + 1
                    counts[info.name] = k
                    member = info.name if k == 1 else f"{info.name}#{k}"
                    last = member
                    if select is not None and not select(f"{name}:{member}"):
                        _skip_member(tf, info)
                        continue
                    if limit is not None and info.size > limit:
                        error = InputError(
                            f"member is {format_size(info.size)} ({info.size} bytes) "
                            f"uncompressed, above the limit of {format_size(limit)} per "
                            "archive member; it was not read (raise max_member_size of "
                            "this source to read it)", source=name, member=member)
                        if unread != "yield":
                            raise error
                        yield UnreadMember(name, member, error, True)
                        _skip_member(tf, info)
                        continue
                    yield ArchiveMember(name, member, _read_member(tf, info))
                _drain(tf)
            except _STREAM_ERRORS as exc:
                where = f" after member {last!r}" if last else ""
                raise InputError(f"corrupt or truncated archive{where} ({_describe(exc)})",
                                 source=name) from None
    finally:
        if opened is not None:
            opened.close()
    if require_members and not counts and not n_unread:
        filt = (f" with suffix {', '.join(suffixes)}" if suffixes is not None else "")
        raise InputError(f"archive has no members{filt}", source=name)


def _read_member(tf: tarfile.TarFile, info: tarfile.TarInfo) -> bytearray:
    """The member's bytes, read in pieces into one buffer (no second full-size copy)."""
    fh = tf.extractfile(info)
    buf = bytearray(info.size)
    if fh is None or not info.size:
        return buf
    view = memoryview(buf)
    got = 0
    while got < info.size:
        # small pieces: tarfile's stream reader holds about three copies of a piece
        n = fh.readinto(view[got:got + (1 << 20)])
        if not n:
            break
        got += n
    view.release()
    if got < info.size:
        del buf[got:]
    return buf


def _skip_member(tf: tarfile.TarFile, info: tarfile.TarInfo) -> None:
    """Read past a large member's data in big pieces (tarfile's own skip of a
    compressed stream reads 10 kB at a time and copies its buffer each time:
    minutes for a gigabyte of well-compressed data)."""
    if info.size < (1 << 20):
        return
    fh = tf.extractfile(info)
    if fh is not None:
        while fh.read(16 << 20):
            pass


def _drain(tf: tarfile.TarFile) -> None:
    """Read the stream to its end; anything but zero padding means a broken header."""
    stream = tf.fileobj
    while True:
        chunk = stream.read(1 << 20)
        if not chunk:
            return
        if chunk.count(0) != len(chunk):
            raise tarfile.ReadError("invalid tar header: data after the end of the "
                                    "readable members")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, tarfile.TarError) else text
