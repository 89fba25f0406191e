"""Structure readers and writers; every reader yields :class:`nnpflow.Structure`.

Formats (``format=`` names):

==========  ==============================================  ===========================
format      files                                           options
==========  ==============================================  ===========================
``xsf``     ``*.xsf`` (aenet convention, :mod:`.xsf`)       ``require_energy``
``tar``     ``.tar .tar.gz .tgz .tar.bz2 .tbz2 .tar.xz      ``suffixes``, ``select``,
            .txz`` archives of XSF members (:mod:`.tar`)    ``require_energy``,
                                                            ``max_member_size``
``pickle``  ``*.pkl *.pickle`` Enerzyme frames              ``features``, ``targets``,
            (:mod:`.pickle_frames`)                         ``transforms``, ``base_dir``
``npz``     ``*.npz`` with the same field mapping           as ``pickle``
``ase``     anything else, through ``ase.io.read``          ``index``
<name>      an ASE format name (``extxyz``, ``vasp-out``,   ``index``
            ``vasp-xml``, ...), passed to ``ase.io.read``
==========  ==============================================  ===========================

Every reader takes ``label`` (default: the path, posix) for structure names and
error messages.  An option the chosen format does not use raises
:class:`~nnpflow.errors.ConfigError` rather than being ignored.

:mod:`nnpflow.io.manifest` reads and writes the structure manifest (TSV), the
rejected lists and the manifest summary.
"""

from __future__ import annotations

import os
from typing import Iterator

from ..errors import ConfigError
from ..structure import Structure
from .tar import ARCHIVE_SUFFIXES, is_archive_path, iter_members
from .xsf import format_xsf, parse_xsf, read_xsf, write_xsf

__all__ = ["read_structures", "detect_format", "resolve_format", "is_structure_file",
           "FORMAT_OPTIONS", "STRUCTURE_SUFFIXES", "parse_xsf", "read_xsf", "write_xsf",
           "format_xsf", "iter_members", "is_archive_path", "ARCHIVE_SUFFIXES"]

#: Options each reader accepts (besides ``label``).
FORMAT_OPTIONS: dict[str, frozenset[str]] = {
    "xsf": frozenset({"require_energy"}),
    "tar": frozenset({"suffixes", "select", "require_energy", "max_member_size"}),
    "pickle": frozenset({"features", "targets", "transforms", "base_dir"}),
    "npz": frozenset({"features", "targets", "transforms", "base_dir"}),
    "ase": frozenset({"index"}),
}

#: File name endings a directory source picks up (besides the archive endings and
#: the VASP names ``OUTCAR*`` and ``vasprun*.xml``).
STRUCTURE_SUFFIXES = (".xsf", ".extxyz", ".xyz", ".traj", ".cif", ".pkl", ".pickle", ".npz")


def detect_format(path: str | os.PathLike) -> str:
    """Format name for a file name: ``xsf``, ``tar``, ``pickle``, ``npz`` or ``ase``."""
    name = os.path.basename(os.fspath(path)).lower()
    if name.endswith(".xsf"):
        return "xsf"
    if is_archive_path(name):
        return "tar"
    if name.endswith((".pkl", ".pickle")):
        return "pickle"
    if name.endswith(".npz"):
        return "npz"
    return "ase"


def resolve_format(path: str | os.PathLike, format: str | None = None) -> str:
    """The reader for ``path``: ``format`` when given (validated), else by file name.

    Returns one of the keys of :data:`FORMAT_OPTIONS` or an ASE format name.
    """
    if format is None:
        return detect_format(path)
    if format in FORMAT_OPTIONS:
        return format
    from .ase_formats import ase_format_names

    if format in ase_format_names():
        return format
    raise ConfigError(f"unknown format {format!r} for {os.fspath(path)}: use one of "
                      f"{', '.join(FORMAT_OPTIONS)} or a format name ase.io.read knows")


def options_for(format: str) -> frozenset[str]:
    """Options the reader of ``format`` (as :func:`resolve_format` returns it) accepts."""
    return FORMAT_OPTIONS.get(format, FORMAT_OPTIONS["ase"])


def is_structure_file(path: str | os.PathLike) -> bool:
    """Whether a directory source should pick up this file (see :data:`STRUCTURE_SUFFIXES`)."""
    name = os.path.basename(os.fspath(path))
    low = name.lower()
    if name.startswith("."):
        return False
    return (low.endswith(STRUCTURE_SUFFIXES) or is_archive_path(low)
            or name.startswith("OUTCAR") or (low.startswith("vasprun") and low.endswith(".xml")))


def read_structures(path: str | os.PathLike, format: str | None = None,
                    **options) -> Iterator[Structure]:
    """Yield the structures of one file (or of every XSF member of an archive).

    ``format`` as in the module table (default: by file name).  Raises
    :class:`~nnpflow.errors.InputError` on bad data, ``ConfigError`` on an option
    the format does not take.  Structures are not validated here; the source
    collections of :mod:`nnpflow.sources` do that.
    """
    fmt = resolve_format(path, format)
    label = options.pop("label", None) or os.path.normpath(os.fspath(path)).replace(os.sep, "/")
    unknown = set(options) - options_for(fmt)
    if unknown:
        raise ConfigError(f"{label}: option(s) {', '.join(sorted(unknown))} do not apply "
                          f"to format {fmt!r} (it takes: "
                          f"{', '.join(sorted(options_for(fmt))) or 'none'})")
    if fmt == "xsf":
        yield from read_xsf(path, label=label, **options)
    elif fmt == "tar":
        require_energy = options.pop("require_energy", False)
        for member in iter_members(path, label=label, **options):
            yield from parse_xsf(member.data, member.archive, member.member,
                                 require_energy=require_energy)
    elif fmt in ("pickle", "npz"):
        from .pickle_frames import read_frames

        yield from read_frames(path, label=label, **options)
    else:
        from .ase_formats import read_ase

        yield from read_ase(path, format=None if fmt == "ase" else fmt, label=label, **options)
