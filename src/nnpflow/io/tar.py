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
"""

from __future__ import annotations

import lzma
import os
import tarfile
import zlib
from typing import IO, Callable, Iterator

from ..errors import InputError

__all__ = ["ARCHIVE_SUFFIXES", "is_archive_path", "iter_members", "ArchiveMember"]

#: File name endings read as tar archives.
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz")

#: Exceptions the tarfile/compression stack raises on corrupt data.
_STREAM_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)


def is_archive_path(path: str | os.PathLike) -> bool:
    """True when the file name ends with one of :data:`ARCHIVE_SUFFIXES`."""
    return os.fspath(path).lower().endswith(ARCHIVE_SUFFIXES)


class ArchiveMember(tuple):
    """``(label, data)`` pair that also carries its parts as attributes.

    ``label`` is ``archive:name`` or ``archive:name#n``; ``archive`` the archive's
    label, ``member`` the member part (``name`` or ``name#n``), ``data`` the bytes.
    """

    def __new__(cls, archive: str, member: str, data: bytes):
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
    def data(self) -> bytes:
        return self[1]


def iter_members(path: str | os.PathLike | IO[bytes], suffixes: tuple[str, ...] | None = (".xsf",),
                 select: Callable[[str], bool] | None = None, *, label: str | None = None,
                 require_members: bool = True) -> Iterator[ArchiveMember]:
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
    """
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
                    if not info.isfile():
                        continue
                    if wanted is not None and not info.name.lower().endswith(wanted):
                        continue
                    k = counts.get(info.name, 0) + 1
                    counts[info.name] = k
                    member = info.name if k == 1 else f"{info.name}#{k}"
                    last = member
                    if select is not None and not select(f"{name}:{member}"):
                        continue
                    fh = tf.extractfile(info)
                    data = fh.read() if fh is not None else b""
                    yield ArchiveMember(name, member, data)
                _drain(tf)
            except _STREAM_ERRORS as exc:
                where = f" after member {last!r}" if last else ""
                raise InputError(f"corrupt or truncated archive{where} ({_describe(exc)})",
                                 source=name) from None
    finally:
        if opened is not None:
            opened.close()
    if require_members and not counts:
        filt = (f" with suffix {', '.join(suffixes)}" if suffixes is not None else "")
        raise InputError(f"archive has no members{filt}", source=name)


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
