"""XSF structure files in aenet's convention: fast reader and exact writer.

Format (XCrySDen XSF, as aenet uses it)::

    # total energy = -19517.09425849 eV

    CRYSTAL
    PRIMVEC
         5.176   0.000   0.000
         0.000   5.509   0.000
         0.000   0.000   9.263
    PRIMCOORD
    23 1
    Ti   1.917  3.210  3.457   0.542 -0.314  2.513
    ...

* A comment line (``#``) containing ``total energy`` and ``=`` gives the total
  energy in eV (the text after ``=``; an optional unit must be ``eV``).
* ``CRYSTAL`` / ``SLAB`` / ``POLYMER`` + ``PRIMVEC`` (3 lattice vectors as rows,
  Å) + ``PRIMCOORD`` (a line ``n_atoms 1``, then ``n_atoms`` atom lines) give a
  periodic structure with pbc (T,T,T) / (T,T,F) / (T,F,F).  ``PRIMCOORD`` without
  a periodicity keyword is read as ``CRYSTAL``; ``MOLECULE`` gives an isolated
  structure (the box is dropped).
* ``ATOMS`` followed by atom lines gives an isolated structure (no cell).
* Atom lines have 4 columns (species x y z; Å) or 7 (plus fx fy fz).  Forces are
  in eV/Å as written -- unlike ASE's XSF reader, nothing is rescaled by the
  Hartree energy.  The species is an element symbol or an atomic number.
* ``ANIMSTEPS n`` makes a multi-frame file: each ``PRIMCOORD k`` / ``ATOMS k``
  block is frame ``k - 1``; ``PRIMVEC k`` may change the cell per frame; an
  energy comment applies to the next coordinate block.  Frames are labelled
  ``label@frame`` (0-based).
* ``CONVVEC``/``CONVCOORD`` and ``BEGIN_...``/``END_...`` blocks (data grids,
  info) are skipped.

Parsing splits the text into lines and converts each coordinate block to a
float array in one numpy call; the slow, line-by-line path runs only to explain
an error.  Bytes (files, archive members) are split and decoded a megabyte at a
time and lines the parser has passed are dropped, so parsing needs memory for the
data plus a bounded window, however many (short or blank) lines the data holds.  Errors are :class:`~nnpflow.errors.InputError` naming the source, the
archive member and the 1-based line.
"""

from __future__ import annotations

import io
import math
import os
import re
from typing import IO, Iterable

import numpy as np

from ..errors import InputError
from ..structure import ELEMENTS, Structure, as_structure, element_symbol

__all__ = ["parse_xsf", "read_xsf", "write_xsf", "format_xsf"]

_PERIODICITY = {"CRYSTAL": (True, True, True), "SLAB": (True, True, False),
                "POLYMER": (True, False, False), "MOLECULE": (False, False, False)}
_KEYWORDS = frozenset({"ANIMSTEPS", "ATOMS", "PRIMVEC", "CONVVEC", "PRIMCOORD",
                       "CONVCOORD", *_PERIODICITY})

#: token -> element symbol, for every symbol and atomic number (filled lazily for
#: other spellings such as ``CU``).
_SYMBOLS: dict[str, str] = {s: s for s in ELEMENTS}
_SYMBOLS.update({str(z): element_symbol(z) for z in range(1, 119)})


def _det3(m: np.ndarray) -> float:
    (a, b, c), (d, e, f), (g, h, i) = m.tolist()
    return a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)


def _is_keyword(first_token: str) -> bool:
    word = first_token.upper()
    return word in _KEYWORDS or word.startswith("BEGIN_")


def _line_kind(s: str) -> str:
    """``"skip"`` for a blank or comment line, ``"energy"`` for a comment holding
    ``total energy`` and ``=``, ``"content"`` otherwise (``s``: the stripped line)."""
    if not s:
        return "skip"
    if s[0] != "#":
        return "content"
    return "energy" if "total energy" in s.lower() and "=" in s else "skip"


#: line breaks ``str.splitlines`` knows besides ``\n`` and ``\r\n`` (as UTF-8 bytes;
#: a lone ``\r`` is checked apart)
_OTHER_BREAKS = (b"\x0b", b"\x0c", b"\x1c", b"\x1d", b"\x1e", b"\xc2\x85", b"\xe2\x80\xa8",
                 b"\xe2\x80\xa9")


def _only_newline_breaks(data: bytes | bytearray) -> bool:
    """Whether every line break in ``data`` is ``\\n`` or ``\\r\\n`` (a few fast scans)."""
    if b"\r" in data and data.count(b"\r") != data.count(b"\r\n"):
        return False
    return not any(brk in data for brk in _OTHER_BREAKS)


_NOT_SPACE = re.compile(rb"\S")
_BOM = b"\xef\xbb\xbf"


class _ByteLines:
    """The lines of UTF-8 data (as ``data.decode().splitlines()`` gives them),
    decoded a chunk at a time when first asked for.

    Supports ``len``, ``lines[i]`` and ``lines[a:b]`` for lines at or after the
    last :meth:`release` point; :meth:`release` drops the lines before it, so
    memory holds the data and a window of lines, not a list of every line.
    Only for data whose line breaks are ``\n`` / ``\r\n`` (see
    :func:`_only_newline_breaks`).
    """

    CHUNK = 1 << 20

    def __init__(self, data: bytes | bytearray, source: str, member: str | None):
        self.data = data
        self.source = source
        self.member = member
        self.n = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
        self.base = 0          # line index of window[0]
        self.window: list[str] = []
        self.pos = 0           # byte offset of the first byte not decoded yet

    def __len__(self) -> int:
        return self.n

    def _fill(self, i: int) -> None:
        data = self.data
        while self.base + len(self.window) <= i and self.pos < len(data):
            end = data.find(b"\n", self.pos + self.CHUNK)
            end = len(data) if end < 0 else end + 1
            try:
                text = data[self.pos:end].decode("utf-8-sig" if self.pos == 0 else "utf-8")
            except UnicodeDecodeError as exc:
                at = self.pos + exc.start
                raise InputError(f"not UTF-8 text (byte 0x{data[at]:02x}); binary data?",
                                 self.source, self.member,
                                 data.count(b"\n", 0, at) + 1) from None
            self.window.extend(text.splitlines())
            self.pos = end

    def __getitem__(self, i):
        if type(i) is int:
            k = i - self.base
            if 0 <= k < len(self.window):  # the common case: already decoded
                return self.window[k]
        if isinstance(i, slice):
            start, stop, _ = i.indices(self.n)
            if stop <= start:
                return []
            self._fill(stop - 1)
            return self.window[start - self.base:stop - self.base]
        if i < 0:
            i += self.n
        if not self.base <= i < self.n:
            raise IndexError(f"line {i} is not available (window starts at {self.base})")
        self._fill(i)
        return self.window[i - self.base]

    def release(self, i: int) -> None:
        """Forget the lines before index ``i`` (the parser never goes back)."""
        k = i - self.base
        if k >= 4096 and 2 * k >= len(self.window):
            del self.window[:k]
            self.base = i


class _Parser:
    """One pass over the lines of one XSF text."""

    def __init__(self, lines, source: str, member: str | None,
                 require_energy: bool):
        self.lines = lines  # a list of str, or _ByteLines
        self.source = source
        self.member = member
        self.require_energy = require_energy
        self.label = f"{source}:{member}" if member else source

    def error(self, reason: str, line: int | None = None) -> InputError:
        return InputError(reason, source=self.source, member=self.member, line=line)

    # ----------------------------------------------------------------- pieces
    def energy_from_comment(self, text: str, lineno: int) -> float:
        value_text = text.split("=", 1)[1].split()
        if not value_text:
            raise self.error("total energy line has no value after '='", lineno)
        token = value_text[0]
        try:
            value = float(token)
        except ValueError:
            try:
                value = float(token.replace("D", "E").replace("d", "e"))
            except ValueError:
                raise self.error(f"total energy line has non-numeric value {token!r}",
                                 lineno) from None
        if not math.isfinite(value):
            raise self.error(f"non-finite total energy {token!r}", lineno)
        if len(value_text) > 1 and value_text[1].lower() != "ev":
            raise self.error(f"total energy unit {value_text[1]!r} is not supported; "
                             "XSF energies must be in eV", lineno)
        return value

    def next_content(self, i: int) -> int:
        """Index of the next non-blank, non-comment line at or after ``i`` (or len)."""
        lines = self.lines
        n = len(lines)
        while i < n:
            s = lines[i].lstrip()
            if s and s[0] != "#":
                return i
            i += 1
        return n

    def floats(self, tokens: list[str], lineno: int, what: str) -> list[float]:
        out = []
        for t in tokens:
            try:
                out.append(float(t))
            except ValueError:
                try:
                    out.append(float(t.replace("D", "E").replace("d", "e")))
                except ValueError:
                    raise self.error(f"non-numeric {what} {t!r}", lineno) from None
        return out

    def read_vectors(self, i: int, keyword_line: int, keyword: str) -> tuple[np.ndarray, int]:
        """Three lattice vectors after a PRIMVEC/CONVVEC keyword at index ``i - 1``."""
        rows = []
        for _ in range(3):
            i = self.next_content(i)
            if i >= len(self.lines):
                raise self.error(f"file ends inside {keyword} (line {keyword_line}): "
                                 f"expected 3 lattice vectors, found {len(rows)}; "
                                 "truncated file?", len(self.lines) or None)
            tokens = self.lines[i].split()
            if _is_keyword(tokens[0]):
                raise self.error(f"{keyword} (line {keyword_line}) needs 3 lattice vectors, "
                                 f"found {len(rows)} before {tokens[0]}", i + 1)
            if len(tokens) != 3:
                raise self.error(f"lattice vector line has {len(tokens)} columns, expected 3",
                                 i + 1)
            try:
                rows.append(list(map(float, tokens)))
            except ValueError:
                rows.append(self.floats(tokens, i + 1, "lattice vector component"))
            if not math.isfinite(rows[-1][0] + rows[-1][1] + rows[-1][2]):
                raise self.error("non-finite lattice vector component", i + 1)
            i += 1
        return np.array(rows, dtype=np.float64), i

    def species_of(self, tokens: list[str], linenos) -> list[str]:
        cache = _SYMBOLS
        try:
            return [cache[t] for t in tokens]
        except KeyError:
            pass
        out = []
        for t, ln in zip(tokens, linenos):
            sym = cache.get(t)
            if sym is None:
                try:
                    sym = element_symbol(t)
                except InputError:
                    raise self.error(f"unknown element symbol {t!r}", ln) from None
                cache[t] = sym
            out.append(sym)
        return out

    def rows_slow(self, i: int, count: int | None, block: str, block_line: int):
        """Collect atom rows from index ``i`` line by line (blank/comment lines skipped).

        ``count``: the number of rows PRIMCOORD declares, or ``None`` for ATOMS
        (read up to the next keyword).  Returns (rows, line numbers, next index,
        energy comments seen inside as (value, line)).
        """
        lines = self.lines
        n = len(lines)
        rows: list[list[str]] = []
        linenos: list[int] = []
        energies = []
        ncol = None
        while i < n and (count is None or len(rows) < count):
            s = lines[i].strip()
            kind = _line_kind(s)
            if kind == "energy":
                if count is None:  # ATOMS: the energy of the next frame ends the block
                    break
                energies.append((self.energy_from_comment(s, i + 1), i + 1))
            if kind != "content":
                i += 1
                continue
            tokens = s.split()
            if _is_keyword(tokens[0]):
                if count is None:
                    break
                raise self.error(f"{block} (line {block_line}) declares {count} atoms but "
                                 f"only {len(rows)} atom lines follow before {tokens[0]}",
                                 i + 1)
            if len(tokens) not in (4, 7):
                hint = "; truncated file?" if self.next_content(i + 1) >= n else ""
                raise self.error(f"atom line has {len(tokens)} columns; expected 4 "
                                 f"(species x y z) or 7 (species x y z fx fy fz){hint}", i + 1)
            if ncol is None:
                ncol = len(tokens)
            elif len(tokens) != ncol:
                raise self.error(f"atom line has {len(tokens)} columns but the lines before "
                                 f"it in this {block} block have {ncol}", i + 1)
            rows.append(tokens)
            linenos.append(i + 1)
            i += 1
        if count is not None and len(rows) < count:
            raise self.error(f"file ends after {len(rows)} of the {count} atom lines that "
                             f"{block} (line {block_line}) declares; truncated file?",
                             n or None)
        return rows, linenos, i, energies

    def atoms_block(self, rows: list[list[str]], linenos, species: list[str] | None = None
                    ) -> tuple[list[str], np.ndarray, np.ndarray | None]:
        """Species, positions (N, 3) and forces (N, 3) or None from atom rows."""
        if species is None:
            species = self.species_of([r[0] for r in rows], linenos)
        ncol = len(rows[0]) - 1
        flat = [tok for r in rows for tok in r[1:]]
        try:
            values = list(map(float, flat))
        except ValueError:
            values = [v for r, ln in zip(rows, linenos)
                      for v in self.floats(r[1:], ln, "coordinate or force")]
        if not math.isfinite(sum(values)):  # nan/inf propagate
            for k, v in enumerate(values):
                if not math.isfinite(v):
                    row, col = divmod(k, ncol)
                    what = "position" if col < 3 else "force"
                    raise self.error(f"non-finite {what} {rows[row][col + 1]!r} "
                                     f"(atom {row + 1})", linenos[row])
        array = np.array(values, dtype=np.float64).reshape(len(rows), ncol)
        positions = array[:, :3]
        forces = array[:, 3:] if ncol == 6 else None
        return species, positions, forces

    # ------------------------------------------------------------------- main
    def parse(self) -> list[Structure]:
        lines = self.lines
        n = len(lines)
        dim: str | None = None
        dim_line = 0
        n_anim: int | None = None
        cell: np.ndarray | None = None
        cell_line = 0
        cell_volume: float | None = None
        pending_energy: tuple[float, int] | None = None
        frames: list[dict] = []
        last_block: tuple[str, int, int] | None = None  # keyword, line, count
        release = getattr(lines, "release", None)
        released = 0
        i = 0
        while i < n:
            if release is not None and i - released >= 65536:
                release(i)
                released = i
            s = lines[i].strip()
            kind = _line_kind(s)
            if kind == "energy":
                value = self.energy_from_comment(s, i + 1)
                if pending_energy is not None:
                    raise self.error("a second total energy line before the next "
                                     f"structure (first at line {pending_energy[1]})", i + 1)
                pending_energy = (value, i + 1)
            if kind != "content":
                i += 1
                continue
            tokens = s.split()
            word = tokens[0].upper()
            lineno = i + 1
            if word in _PERIODICITY:
                if dim is not None and dim != word:
                    raise self.error(f"{word} after {dim} (line {dim_line}): one periodicity "
                                     "per file", lineno)
                dim, dim_line = word, lineno
                i += 1
            elif word == "ANIMSTEPS":
                if n_anim is not None or frames:
                    raise self.error("ANIMSTEPS must come once, before any structure", lineno)
                if len(tokens) < 2 or not tokens[1].isdigit() or int(tokens[1]) < 1:
                    raise self.error("ANIMSTEPS needs a positive number of frames", lineno)
                n_anim = int(tokens[1])
                i += 1
            elif word in ("PRIMVEC", "CONVVEC"):
                vectors, i = self.read_vectors(i + 1, lineno, word)
                if word == "PRIMVEC":
                    cell, cell_line, cell_volume = vectors, lineno, None
            elif word in ("PRIMCOORD", "CONVCOORD"):
                self.check_frame_number(tokens, n_anim, len(frames), lineno)
                j = self.next_content(i + 1)
                if j >= n:
                    raise self.error(f"file ends after {word}: expected a line "
                                     "'n_atoms 1'; truncated file?", lineno)
                head = lines[j].split()
                if not head[0].isdigit() or len(head) > 2:
                    raise self.error(f"{word} (line {lineno}) must be followed by a line "
                                     f"'n_atoms 1', found {lines[j].strip()[:60]!r}", j + 1)
                count = int(head[0])
                if count < 1:
                    raise self.error(f"{word} declares {count} atoms", j + 1)
                start = j + 1
                rows = [b.split() for b in lines[start:start + count]]
                ncol = len(rows[0]) if rows and rows[0] else 0
                species = None
                if (len(rows) == count and ncol in (4, 7)
                        and set(map(len, rows)) == {ncol}):
                    try:  # fails on comment, keyword or unusual species tokens
                        species = [_SYMBOLS[r[0]] for r in rows]
                    except KeyError:
                        pass
                if species is not None:
                    linenos = range(start + 1, start + count + 1)
                    i = start + count
                else:
                    rows, linenos, i, energies = self.rows_slow(start, count, word, lineno)
                    if energies:
                        raise self.error("total energy line inside a coordinate block",
                                         energies[0][1])
                if word == "CONVCOORD":
                    continue
                if dim == "MOLECULE":
                    frame_cell, pbc = None, (False, False, False)
                else:
                    pbc = _PERIODICITY[dim or "CRYSTAL"]
                    if cell is None:
                        raise self.error(f"PRIMCOORD but no PRIMVEC before it: a periodic "
                                         f"structure ({dim or 'CRYSTAL'}) needs lattice "
                                         "vectors", lineno)
                    if cell_volume is None:
                        cell_volume = _det3(cell)
                    if abs(cell_volume) < 1e-8:
                        raise self.error("singular PRIMVEC: the lattice vectors are linearly "
                                         f"dependent (volume {cell_volume:.3g} Å^3)", cell_line)
                    frame_cell = cell
                species, positions, forces = self.atoms_block(rows, linenos, species)
                frames.append(dict(species=species, positions=positions, forces=forces,
                                   cell=frame_cell, pbc=pbc, energy=pending_energy,
                                   line=lineno))
                pending_energy = None
                last_block = (word, lineno, count)
            elif word == "ATOMS":
                if dim is not None and dim != "MOLECULE":
                    raise self.error(f"ATOMS in a periodic file ({dim} at line {dim_line}); "
                                     "periodic structures use PRIMVEC and PRIMCOORD", lineno)
                self.check_frame_number(tokens, n_anim, len(frames), lineno)
                rows, linenos, i, energies = self.rows_slow(i + 1, None, "ATOMS", lineno)
                if energies:
                    raise self.error("total energy line inside a coordinate block",
                                     energies[0][1])
                if not rows:
                    raise self.error("ATOMS section has no atom lines", lineno)
                species, positions, forces = self.atoms_block(rows, linenos)
                frames.append(dict(species=species, positions=positions, forces=forces,
                                   cell=None, pbc=(False, False, False), energy=pending_energy,
                                   line=lineno))
                pending_energy = None
                last_block = None
            elif word.startswith("BEGIN_"):
                end = "END_" + word[len("BEGIN_"):]
                j = i + 1
                while j < n and not lines[j].strip().upper().startswith(end):
                    j += 1
                if j >= n:
                    raise self.error(f"{tokens[0]} block has no {end}; truncated file?", lineno)
                i = j + 1
            else:
                if last_block is not None and len(tokens) in (4, 7):
                    raise self.error(f"more atom lines than the {last_block[2]} that "
                                     f"{last_block[0]} (line {last_block[1]}) declares", lineno)
                raise self.error(f"unexpected line {s[:60]!r}: not an XSF keyword", lineno)
        return self.finish(frames, n_anim, pending_energy)

    def check_frame_number(self, tokens: list[str], n_anim: int | None, n_done: int,
                           lineno: int) -> None:
        if n_anim is None:
            if n_done and tokens[0].upper() != "CONVCOORD":
                raise self.error(f"a second {tokens[0]} block in a file without ANIMSTEPS",
                                 lineno)
            return
        if tokens[0].upper() == "CONVCOORD":
            return
        if len(tokens) > 1 and tokens[1] != str(n_done + 1):
            raise self.error(f"{tokens[0]} {tokens[1]}: expected frame {n_done + 1}", lineno)
        if n_done >= n_anim:
            raise self.error(f"more frames than ANIMSTEPS {n_anim} declares", lineno)

    def finish(self, frames: list[dict], n_anim: int | None,
               pending_energy: tuple[float, int] | None) -> list[Structure]:
        if not frames:
            raise self.error("no structure: no PRIMCOORD or ATOMS section")
        if n_anim is not None and len(frames) != n_anim:
            raise self.error(f"ANIMSTEPS declares {n_anim} frames but the file has "
                             f"{len(frames)}; truncated file?")
        if pending_energy is not None:
            if n_anim is None and frames[0]["energy"] is None:
                frames[0]["energy"] = pending_energy
            else:
                raise self.error("total energy line after the last structure",
                                 pending_energy[1])
        out = []
        for k, f in enumerate(frames):
            if f["energy"] is None and self.require_energy:
                raise self.error("no total energy: expected a comment line such as "
                                 "'# total energy = -123.456 eV' before the structure",
                                 f["line"])
            anim = n_anim is not None
            out.append(Structure(
                positions=f["positions"], species=f["species"], cell=f["cell"], pbc=f["pbc"],
                energy=None if f["energy"] is None else f["energy"][0], forces=f["forces"],
                name=f"{self.label}@{k}" if anim else self.label, frame=k if anim else None))
        return out


def _decode(data: str | bytes, source: str, member: str | None) -> str:
    if isinstance(data, str):
        text = data[1:] if data.startswith("\ufeff") else data
    else:
        if b"\x00" in data:
            line = data.count(b"\n", 0, data.index(b"\x00")) + 1
            raise InputError("binary data (NUL byte), not an XSF text file", source, member,
                             line)
        try:
            text = data.decode("utf-8-sig")  # a byte-order mark is dropped
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            raise InputError(f"not UTF-8 text (byte 0x{data[exc.start]:02x}); binary data?",
                             source, member, line) from None
    if not text.strip():
        raise InputError("empty file", source, member)
    return text


def parse_xsf(data: str | bytes, source: str, member: str | None = None, *,
              require_energy: bool = False) -> list[Structure]:
    """Parse XSF text into structures (one per frame).

    Parameters
    ----------
    data:
        The file's content (bytes are decoded as UTF-8).
    source:
        File (or archive) path used in labels and error messages.
    member:
        Archive member name; labels become ``source:member``.
    require_energy:
        Raise :class:`InputError` when a structure has no ``total energy`` line.

    Returns
    -------
    list[Structure]
        Positions Å, cell rows Å, energy eV (or None), forces eV/Å (or None).
        ``name`` is ``source`` / ``source:member``, with ``@k`` per frame of an
        ``ANIMSTEPS`` file (``frame = k``).
    """
    if isinstance(data, (bytes, bytearray, memoryview)) and len(data) > _ByteLines.CHUNK:
        # large data: lines decoded lazily (small data is faster split at once)
        if isinstance(data, memoryview):
            data = data.tobytes()
        if _only_newline_breaks(data):
            if b"\x00" in data:
                line = data.count(b"\n", 0, data.index(b"\x00")) + 1
                raise InputError("binary data (NUL byte), not an XSF text file", source,
                                 member, line)
            if not _NOT_SPACE.search(data, 3 if data.startswith(_BOM) else 0):
                raise InputError("empty file", source, member)
            return _Parser(_ByteLines(data, source, member), source, member,
                           require_energy).parse()
    text = _decode(data, source, member)
    return _Parser(text.splitlines(), source, member, require_energy).parse()


def read_xsf(path: str | os.PathLike, *, require_energy: bool = False,
             label: str | None = None) -> list[Structure]:
    """Read an XSF file; ``label`` (default: the path) names the structures."""
    path = os.fspath(path)
    label = label or os.path.normpath(path).replace(os.sep, "/")
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror}", source=label) from None
    return parse_xsf(data, label, require_energy=require_energy)


# --------------------------------------------------------------------- writer
def _row(values) -> str:
    return " ".join(map(repr, values))


def _keyword_for(s: Structure) -> str | None:
    """Periodicity keyword for ``s``; None for an isolated structure."""
    if s.cell is None or not np.any(s.pbc):
        return None
    for word, pbc in _PERIODICITY.items():
        if tuple(bool(p) for p in s.pbc) == pbc:
            return word
    raise ValueError(f"{s.name or 'structure'}: XSF cannot store pbc {tuple(s.pbc)} "
                     "(only T T T, T T F or T F F)")


def format_xsf(structures: Structure | Iterable[Structure], animate: bool | None = None) -> str:
    """XSF text for one structure or several (``ANIMSTEPS`` when more than one,
    or when ``animate`` is True).  Floats are written with ``repr`` precision, so
    :func:`parse_xsf` gives back identical numbers.

    Only positions, species, cell/pbc, energy and forces fit into XSF: a structure
    with charges, total charge or dipole raises ``ValueError`` instead of losing
    them silently.
    """
    from ase import Atoms

    if isinstance(structures, (Structure, Atoms)) or not isinstance(structures, Iterable):
        structures = [structures]
    items = [as_structure(s) for s in structures]
    if not items:
        raise ValueError("no structures to write")
    for s in items:
        for field in ("charges", "total_charge", "dipole"):
            if getattr(s, field) is not None:
                raise ValueError(f"{s.name or 'structure'}: XSF cannot store {field}")
    keywords = {_keyword_for(s) for s in items}
    if len(keywords) > 1:
        raise ValueError("an XSF animation needs the same periodicity in every frame, "
                         f"got {sorted(str(k) for k in keywords)}")
    keyword = keywords.pop()
    anim = len(items) > 1 if animate is None else bool(animate)
    out = io.StringIO()
    w = out.write
    if anim:
        w(f"ANIMSTEPS {len(items)}\n")
    if keyword is not None:
        w(f"{keyword}\n")
    for k, s in enumerate(items, start=1):
        tag = f" {k}" if anim else ""
        if s.energy is not None:
            w(f"# total energy = {float(s.energy)!r} eV\n")
        if keyword is not None:
            w(f"PRIMVEC{tag}\n")
            for v in s.cell.tolist():
                w(_row(v) + "\n")
            w(f"PRIMCOORD{tag}\n{s.n_atoms} 1\n")
        else:
            w(f"ATOMS{tag}\n")
        pos = s.positions.tolist()
        if s.forces is None:
            w("".join(f"{sym} {_row(p)}\n" for sym, p in zip(s.species, pos)))
        else:
            w("".join(f"{sym} {_row(p)} {_row(f)}\n"
                      for sym, p, f in zip(s.species, pos, s.forces.tolist())))
    return out.getvalue()


def write_xsf(path_or_fh: str | os.PathLike | IO[str],
              structures: Structure | Iterable[Structure], animate: bool | None = None) -> None:
    """Write :func:`format_xsf` text to a path (atomically) or an open text file."""
    text = format_xsf(structures, animate=animate)
    if hasattr(path_or_fh, "write"):
        path_or_fh.write(text)
        return
    from ..safe_write import write_text
    write_text(path_or_fh, text)
