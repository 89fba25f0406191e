"""aenet's ``predict.x``: its input file and its output.

``predict.in`` (aenet ``input.f90``, ``read_InpPredict``)::

    TYPES
    2
    Ti
    O

    NETWORKS
    Ti  Ti.nn
    O   O.nn

    FORCES

    FILES
    2
    /abs/path/structure-001.xsf
    /abs/path/structure-002.xsf

Without ``FILES``, ``predict.x predict.in STRUCTURE.xsf`` evaluates one
structure.  :func:`read_predict_output` reads what ``predict.x`` prints:
per structure the file, the total and cohesive energies (eV) and, with
``FORCES``, the Cartesian coordinates (Å) and forces (eV/Å) it lists (printed
with 8 decimals for energies and 6 for coordinates and forces).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import InputError


def format_predict_input(networks: Mapping[str, str], structures: Sequence[str] = (),
                         forces: bool = True) -> str:
    """``predict.in`` text: ``networks`` ``{species: potential file}`` (the TYPES
    order is the mapping's order), the ``structures`` (XSF paths) to evaluate."""
    lines = ["TYPES", str(len(networks)), *networks, "", "NETWORKS"]
    width = max(len(s) for s in networks) + 2
    lines += [f"{s.ljust(width)}{path}" for s, path in networks.items()]
    lines.append("")
    if forces:
        lines += ["FORCES", ""]
    if structures:
        lines += ["FILES", str(len(structures)), *[os.fspath(p) for p in structures], ""]
    return "\n".join(lines) + "\n"


def xsf_inputs(structures: Sequence[str | os.PathLike], folder: Path) -> list[str]:
    """Absolute XSF paths for ``predict.x``: ``.xsf`` files as they are; other
    formats (read by nnpflow), ``ase.Atoms`` and ``Structure``s written as XSF
    into ``folder``."""
    from ase import Atoms

    from ..io import read_structures
    from ..io.xsf import write_xsf
    from ..structure import Structure
    out: list[str] = []
    count = 0
    for item in structures:
        if isinstance(item, (Atoms, Structure)):
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"structure_{count:05d}.xsf"
            write_xsf(target, [item if isinstance(item, Structure)
                               else Structure.from_ase(item)])
            out.append(str(target.resolve()))
            count += 1
            continue
        path = Path(item)
        if path.suffix.lower() == ".xsf":
            if not path.is_file():
                raise InputError("structure file not found", source=os.fspath(path))
            out.append(str(path.resolve()))
            continue
        for s in read_structures(os.fspath(path)):
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"structure_{count:05d}.xsf"
            write_xsf(target, [s])
            out.append(str(target.resolve()))
            count += 1
    return out


_FLOAT = r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[EeDd][-+]?\d+)?"


def read_predict_output(text: str, source: str | None = None) -> list[dict]:
    """The structures of ``predict.x``'s output, in order: ``{"file",
    "total_energy" (eV), "cohesive_energy" (eV), "positions" (N, 3) Å,
    "forces" (N, 3) eV/Å or None, "symbols"}``."""
    blocks = re.split(r"^\s*Structure number\s*:", text, flags=re.M)
    out: list[dict] = []
    for block in blocks[1:]:
        file_match = re.search(r"^\s*File name\s*:\s*(\S+)", block, flags=re.M)
        total = re.search(rf"^\s*Total energy\s*:\s*({_FLOAT})\s*eV", block, flags=re.M)
        coh = re.search(rf"^\s*Cohesive energy\s*:\s*({_FLOAT})\s*eV", block, flags=re.M)
        if total is None or coh is None:
            raise InputError("predict.x output has a structure without total and cohesive "
                             "energy (did predict.x stop early?)", source=source)
        symbols, positions, forces = [], [], []
        table = re.search(r"Cartesian atomic coordinates.*?\n\s*-{10,}\s*\n(.*?)\n\s*\n",
                          block, flags=re.S)
        if table:
            for line in table.group(1).splitlines():
                parts = line.split()
                if len(parts) < 4:
                    continue
                symbols.append(parts[0])
                nums = [float(x) for x in parts[1:]]
                positions.append(nums[:3])
                if len(nums) >= 6:
                    forces.append(nums[3:6])
        out.append({
            "file": file_match.group(1) if file_match else None,
            "total_energy": float(total.group(1)),
            "cohesive_energy": float(coh.group(1)),
            "symbols": symbols,
            "positions": np.array(positions, dtype=np.float64).reshape(-1, 3),
            "forces": (np.array(forces, dtype=np.float64).reshape(-1, 3)
                       if forces and len(forces) == len(positions) else None),
        })
    if not out:
        raise InputError("no structures found in predict.x output", source=source)
    return out
