"""Structures from any format ASE reads (extxyz, VASP OUTCAR/vasprun.xml, traj, ...).

Energies and forces come from the calculator results ASE attaches to each frame
(``atoms.calc.results``: ``energy``, else ``free_energy``; ``forces``), in eV and
eV/Å as ASE reports them.  XSF is never read through ASE (ASE rescales XSF forces
by the Hartree energy); ``.xsf`` files and ``format="xsf"`` go to
:mod:`nnpflow.io.xsf`.
"""

from __future__ import annotations

import os
from typing import Iterator

from ..errors import ConfigError, InputError
from ..structure import Structure

__all__ = ["read_ase", "ase_format_names"]


def ase_format_names() -> set[str]:
    """Names ASE's ``ase.io.read`` accepts as ``format``."""
    from ase.io.formats import ioformats

    return {name for name, fmt in ioformats.items() if fmt.can_read}


def read_ase(path: str | os.PathLike, format: str | None = None, index: str | int = ":", *,
             label: str | None = None) -> Iterator[Structure]:
    """Read ``path`` with ``ase.io.read(path, index=index, format=format)``.

    Frames are labelled ``label@k`` (``k`` 0-based position among the frames
    read) when the file yields more than one; a single frame gets the plain label.
    Any exception ASE raises is turned into :class:`InputError` naming the file.
    """
    path = os.fspath(path)
    label = label or os.path.normpath(path).replace(os.sep, "/")
    if format == "xsf" or (format is None and path.lower().endswith(".xsf")):
        from .xsf import read_xsf

        yield from read_xsf(path, label=label)
        return
    if format is not None and format not in ase_format_names():
        raise ConfigError(f"{label}: ASE cannot read format {format!r}")
    if not os.path.exists(path):
        raise InputError("file not found", source=label)
    if os.path.getsize(path) == 0:
        raise InputError("empty file", source=label)
    import ase.io

    try:
        # a file named "name@3" is that file, not frame 3 of "name"
        images = ase.io.read(path, index=index, format=format, do_not_split_by_at_sign=True)
    except Exception as exc:  # ASE readers raise anything on bad input
        what = f" as {format}" if format else ""
        raise InputError(f"ASE could not read it{what} ({type(exc).__name__}: {exc})",
                         source=label) from None
    if not isinstance(images, list):
        images = [images]
    if not images:
        raise InputError("no structures", source=label)
    multi = len(images) > 1
    for k, atoms in enumerate(images):
        name = f"{label}@{k}" if multi else label
        try:
            yield Structure.from_ase(atoms, name=name, frame=k if multi else None)
        except (ValueError, TypeError) as exc:
            raise InputError(f"cannot convert frame {k}: {exc}", source=label) from None
