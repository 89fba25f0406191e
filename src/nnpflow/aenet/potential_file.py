"""aenet's potential files: one per species, binary (``*.nn``) or ASCII (``*.nn.ascii``).

A potential file holds three sections, in this order (aenet 2.x,
``train.f90``: ``save_Network``, ``save_Setup``, ``save_TrnSet_info``):

1. the network (``feedforward.f90``): ``nlayers``, ``nnodes_max``, ``Wsize``,
   ``nvalues``, then ``nnodes(nlayers)``, the activation codes
   ``f_a(2:nlayers)``, the index arrays ``iw(nlayers)`` and ``iv(nlayers)``
   and the weights ``W(Wsize)``.  Layer ``l -> l+1`` owns the slice
   ``W(iw(l)+1 : iw(l+1))``, a column-major ``(nnodes(l+1), nnodes(l)+1)``
   matrix whose last column is the bias.
2. the fingerprint setup (``sfsetup.f90``): description (1024 characters),
   central species (2), ``nenv`` and the environment species (2 each),
   ``Rc_min``, ``Rc_max`` (Å), basis type (100 characters, ``Chebyshev``),
   ``nsf``, ``nsfparam`` (4), ``sf(nsf)``, ``sfparam(nsfparam, nsf)`` (the
   Chebyshev basis keeps radial cutoff, radial order, angular cutoff, angular
   order in ``sfparam(1:4, 1)``), ``sfenv(2, nsf)``, ``neval`` and the feature
   statistics ``sfval_min``, ``sfval_max``, ``sfval_avg`` (mean) and
   ``sfval_cov`` (second moment ``E[G^2]``, not the variance), each ``(nsf,)``.
3. the training-set summary (``trainset.f90``): file name (1024 characters),
   ``normalized`` (logical), ``scale``, ``shift``, ``nTypes``, species names
   (2 each), atomic reference energies ``E_atom(nTypes)`` (eV), ``nAtomsTot``,
   ``nStrucs`` and ``E_min, E_max, E_av`` (one record).

Binary files are Fortran unformatted sequential files as gfortran writes them:
every ``write`` statement is one record framed by its length in bytes as a
4-byte little-endian integer before and after; integers and logicals are
4 bytes, reals 8 bytes (float64), strings blank-padded.  The ASCII variant
writes the same values in the same order with ``save_*_ASCII``'s layout:
scalars list-directed, one per line; strings one per line; arrays four per line
(``(4(1x,ES24.17))`` reals, ``(4(1x,I17))`` integers).  ``ES24.17`` carries 18
significant digits, so float64 values survive the ASCII form exactly.  The
reader also takes aenet-python's layout of the same values (one array per line,
fixed-point reals, species names on one line, two rows of ``sfenv``).

How aenet evaluates a potential (``sfsetup.f90: stp_normalize``,
``aenet.f90``): features ``x = (G - avg) / sqrt(cov - avg^2)`` (a feature with
``sqrt(...) <= 1e-10`` is multiplied by 0); atomic energy
``E_i = out / scale + shift + E_atom(species)`` eV.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import InputError

#: character lengths of aenet's strings (aeio.f90 PATHLEN, TYPELEN; sfsetup.f90)
DESCRIPTION_LEN = 1024
TYPE_LEN = 2
SFTYPE_LEN = 100
PATH_LEN = 1024
#: sfsetup.f90 NSFPARAM and NENV_MAX
NSFPARAM = 4
NENV_MAX = 2


# ---------------------------------------------------------------- data
@dataclass
class AenetNetwork:
    """A feed-forward network as aenet stores it.

    ``layer_sizes`` (L,) nodes per layer, input first, output (1 node) last;
    ``activations`` (L-1,) aenet's activation codes of layers 2..L (0 linear,
    1 tanh, 2 sigmoid, 3 mtanh, 4 twist); ``weights[l]`` (n_{l+1}, n_l) and
    ``biases[l]`` (n_{l+1},) float64 for the step from layer l to l+1.
    """

    layer_sizes: list[int]
    activations: list[int]
    weights: list[np.ndarray]
    biases: list[np.ndarray]

    def __post_init__(self) -> None:
        sizes = [int(n) for n in self.layer_sizes]
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"a network needs at least two layers of >= 1 node, got {sizes}")
        if len(self.activations) != len(sizes) - 1:
            raise ValueError(f"{len(self.activations)} activation codes for {len(sizes)} layers")
        if len(self.weights) != len(sizes) - 1 or len(self.biases) != len(sizes) - 1:
            raise ValueError("one weight matrix and bias vector per layer step needed")
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            if np.shape(w) != (sizes[k + 1], sizes[k]) or np.shape(b) != (sizes[k + 1],):
                raise ValueError(f"layer step {k + 1}: weights {np.shape(w)} and bias "
                                 f"{np.shape(b)} do not fit {sizes[k]} -> {sizes[k + 1]} nodes")
        self.layer_sizes = sizes
        self.activations = [int(a) for a in self.activations]
        self.weights = [np.asarray(w, dtype=np.float64) for w in self.weights]
        self.biases = [np.asarray(b, dtype=np.float64) for b in self.biases]

    # the derived index arrays of feedforward.f90's new_Network
    @property
    def nnodes_max(self) -> int:
        return max(self.layer_sizes)

    @property
    def iw(self) -> list[int]:
        out, total = [0], 0
        for a, b in zip(self.layer_sizes[:-1], self.layer_sizes[1:]):
            total += (a + 1) * b
            out.append(total)
        return out

    @property
    def iv(self) -> list[int]:
        out, total = [0], 0
        for a in self.layer_sizes[:-1]:
            total += a + 1
            out.append(total)
        return out

    @property
    def wsize(self) -> int:
        return self.iw[-1]

    @property
    def nvalues(self) -> int:
        return self.iv[-1] + self.layer_sizes[-1]

    def flat_weights(self) -> np.ndarray:
        """``W(Wsize)``: per layer step, the column-major (n_out, n_in + 1) matrix
        ``[weights | bias]``."""
        return np.concatenate([np.concatenate([w, b[:, None]], axis=1).ravel(order="F")
                               for w, b in zip(self.weights, self.biases)])

    @classmethod
    def from_flat(cls, layer_sizes: Sequence[int], activations: Sequence[int],
                  flat: np.ndarray) -> "AenetNetwork":
        weights, biases, pos = [], [], 0
        for a, b in zip(layer_sizes[:-1], layer_sizes[1:]):
            block = np.asarray(flat[pos:pos + (a + 1) * b], dtype=np.float64)
            m = block.reshape((b, a + 1), order="F")
            weights.append(np.ascontiguousarray(m[:, :a]))
            biases.append(np.ascontiguousarray(m[:, a]))
            pos += (a + 1) * b
        return cls(list(layer_sizes), list(activations), weights, biases)


@dataclass
class AenetSetup:
    """The fingerprint setup of one species (see the module docstring).

    ``sfparam`` (nsfparam, nsf) and ``sfenv`` (rows, nsf) as stored (binary
    files have ``NENV_MAX`` rows of ``sfenv``, ASCII files ``nenv``);
    feature statistics (nsf,) each.
    """

    description: str
    atomtype: str
    envtypes: list[str]
    rc_min: float
    rc_max: float
    sftype: str
    sf: np.ndarray
    sfparam: np.ndarray
    sfenv: np.ndarray
    neval: int
    sfval_min: np.ndarray
    sfval_max: np.ndarray
    sfval_avg: np.ndarray
    sfval_cov: np.ndarray

    @property
    def nsf(self) -> int:
        return int(len(self.sf))

    @property
    def is_chebyshev(self) -> bool:
        return self.sftype.strip().lower() == "chebyshev"

    def chebyshev_parameters(self) -> dict:
        """``{rad_cutoff (Å), rad_order, ang_cutoff (Å), ang_order}`` of a
        Chebyshev setup (``sfparam(1:4, 1)``)."""
        p = self.sfparam[:, 0]
        return {"rad_cutoff": float(p[0]), "rad_order": int(round(p[1])),
                "ang_cutoff": float(p[2]), "ang_order": int(round(p[3]))}


@dataclass
class AenetTrainingSetInfo:
    """The training-set summary stored with each potential.

    ``scale`` (1/eV) and ``shift`` (eV/atom) define the network's energy
    units (atomic energy ``out / scale + shift + E_atom``); ``e_atom`` (eV) are
    the atomic reference energies of ``type_names``; ``e_min``, ``e_max``,
    ``e_av`` (eV/atom) summarise the training energies.
    """

    file: str
    normalized: bool
    scale: float
    shift: float
    type_names: list[str]
    e_atom: np.ndarray
    n_atoms_total: int
    n_structures: int
    e_min: float
    e_max: float
    e_av: float


@dataclass
class AenetPotential:
    """One species' aenet potential: network, fingerprint setup, training-set info."""

    network: AenetNetwork
    setup: AenetSetup
    trainset: AenetTrainingSetInfo
    path: str | None = field(default=None, compare=False)

    @property
    def species(self) -> str:
        return self.setup.atomtype.strip()

    @property
    def atomic_energy(self) -> float:
        """``E_atom`` (eV) of the central species (``potential.f90: load_NNPot``)."""
        names = [t.strip() for t in self.trainset.type_names]
        if self.species not in names:
            raise InputError(f"the training-set info lists no atomic energy for the "
                             f"potential's own species {self.species} (types {names})",
                             source=self.path)
        return float(self.trainset.e_atom[names.index(self.species)])

    # ------------------------------------------------------------ writing
    def to_bytes(self) -> bytes:
        """The binary file (Fortran unformatted sequential records)."""
        return b"".join(_record(r) for r in _records(self))

    def to_ascii(self) -> str:
        """The ASCII file (aenet's ``save_*_ASCII`` layout)."""
        return "".join(line + "\n" for line in _ascii_lines(self))

    def write(self, path: str | os.PathLike, ascii: bool = False) -> None:
        """Write the binary (default) or ASCII file, atomically."""
        from ..safe_write import atomic_path
        with atomic_path(path) as tmp:
            if ascii:
                with open(tmp, "w", encoding="ascii", newline="\n") as fh:
                    fh.write(self.to_ascii())
            else:
                with open(tmp, "wb") as fh:
                    fh.write(self.to_bytes())

    # ------------------------------------------------------------ reading
    @classmethod
    def from_bytes(cls, data: bytes, source: str | None = None) -> "AenetPotential":
        return _parse_binary(data, source)

    @classmethod
    def from_ascii(cls, text: str, source: str | None = None) -> "AenetPotential":
        return _parse_ascii(text, source)


def read_potential(path: str | os.PathLike) -> AenetPotential:
    """Read an aenet potential file, binary or ASCII (told apart by the first
    record marker: a binary file starts with the 4-byte length 4 of ``nlayers``)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise InputError("aenet potential file not found", source=path) from None
    except IsADirectoryError:
        raise InputError("is a folder, not an aenet potential file", source=path) from None
    if data[:4] == struct.pack("<i", 4):
        pot = _parse_binary(data, path)
    else:
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise InputError("neither an aenet binary potential (no 4-byte record marker "
                             "of length 4 at the start) nor an ASCII one (non-ASCII bytes)",
                             source=path) from None
        pot = _parse_ascii(text, path)
    pot.path = path
    return pot


# --------------------------------------------------------- binary form
def _record(payload: bytes) -> bytes:
    marker = struct.pack("<i", len(payload))
    return marker + payload + marker


def _str(value: str, length: int) -> bytes:
    raw = value.encode("ascii")
    if len(raw) > length:
        raise ValueError(f"{value!r} is longer than aenet's {length} characters")
    return raw.ljust(length, b" ")


def _ints(values) -> bytes:
    arr = np.asarray(values, dtype="<i4").ravel(order="F")
    return arr.tobytes()


def _reals(values) -> bytes:
    arr = np.asarray(values, dtype="<f8").ravel(order="F")
    return arr.tobytes()


def _sfenv_rows(setup: AenetSetup, rows: int) -> np.ndarray:
    out = np.zeros((rows, setup.nsf), dtype=np.int64)
    env = np.asarray(setup.sfenv).reshape(-1, setup.nsf) if setup.nsf else np.zeros((0, 0))
    k = min(rows, env.shape[0])
    out[:k] = env[:k]
    return out


def _records(pot: AenetPotential) -> Iterator[bytes]:
    net, stp, ts = pot.network, pot.setup, pot.trainset
    yield _ints([len(net.layer_sizes)])
    yield _ints([net.nnodes_max])
    yield _ints([net.wsize])
    yield _ints([net.nvalues])
    yield _ints(net.layer_sizes)
    yield _ints(net.activations)
    yield _ints(net.iw)
    yield _ints(net.iv)
    yield _reals(net.flat_weights())
    yield _str(stp.description, DESCRIPTION_LEN)
    yield _str(stp.atomtype, TYPE_LEN)
    yield _ints([len(stp.envtypes)])
    yield b"".join(_str(t, TYPE_LEN) for t in stp.envtypes)
    yield _reals([stp.rc_min])
    yield _reals([stp.rc_max])
    yield _str(stp.sftype, SFTYPE_LEN)
    yield _ints([stp.nsf])
    yield _ints([stp.sfparam.shape[0]])
    yield _ints(stp.sf)
    yield _reals(stp.sfparam)
    yield _ints(_sfenv_rows(stp, NENV_MAX))
    yield _ints([stp.neval])
    for arr in (stp.sfval_min, stp.sfval_max, stp.sfval_avg, stp.sfval_cov):
        yield _reals(arr)
    yield _str(ts.file, PATH_LEN)
    yield _ints([1 if ts.normalized else 0])
    yield _reals([ts.scale])
    yield _reals([ts.shift])
    yield _ints([len(ts.type_names)])
    yield b"".join(_str(t, TYPE_LEN) for t in ts.type_names)
    yield _reals(ts.e_atom)
    yield _ints([ts.n_atoms_total])
    yield _ints([ts.n_structures])
    yield _reals([ts.e_min, ts.e_max, ts.e_av])


class _RecordReader:
    """Sequential records of a gfortran unformatted file, with errors that name
    the file, the record number and the quantity read."""

    def __init__(self, data: bytes, source: str | None):
        self.data, self.pos, self.n, self.source = data, 0, 0, source

    def fail(self, what: str, reason: str) -> InputError:
        return InputError(f"record {self.n} ({what}): {reason}", source=self.source)

    def record(self, what: str) -> bytes:
        self.n += 1
        if self.pos + 4 > len(self.data):
            raise self.fail(what, "file ends before this record (truncated file?)")
        (length,) = struct.unpack_from("<i", self.data, self.pos)
        if length < 0:
            raise self.fail(what, f"record marker {length}: continued records over 2 GiB "
                            "are not supported")
        end = self.pos + 4 + length
        if end + 4 > len(self.data):
            raise self.fail(what, f"record of {length} bytes runs past the end of the file "
                            "(truncated file?)")
        (closing,) = struct.unpack_from("<i", self.data, end)
        if closing != length:
            raise self.fail(what, f"closing record marker {closing} differs from the opening "
                            f"one {length} (not a gfortran unformatted file?)")
        payload = self.data[self.pos + 4:end]
        self.pos = end + 4
        return payload

    def ints(self, what: str, count: int | None = None) -> np.ndarray:
        raw = self.record(what)
        if len(raw) % 4 or (count is not None and len(raw) != 4 * count):
            raise self.fail(what, f"{len(raw)} bytes, expected "
                            f"{'a multiple of 4' if count is None else 4 * count}")
        return np.frombuffer(raw, dtype="<i4").astype(np.int64)

    def int(self, what: str) -> int:
        return int(self.ints(what, 1)[0])

    def reals(self, what: str, count: int) -> np.ndarray:
        raw = self.record(what)
        if len(raw) != 8 * count:
            raise self.fail(what, f"{len(raw)} bytes, expected {8 * count} "
                            f"({count} float64 values)")
        return np.frombuffer(raw, dtype="<f8").astype(np.float64)

    def real(self, what: str) -> float:
        return float(self.reals(what, 1)[0])

    def text(self, what: str, length: int) -> str:
        raw = self.record(what)
        if len(raw) != length:
            raise self.fail(what, f"{len(raw)} characters, expected {length}")
        return raw.decode("ascii", errors="replace")

    def texts(self, what: str, count: int, length: int) -> list[str]:
        raw = self.record(what)
        if len(raw) != count * length:
            raise self.fail(what, f"{len(raw)} characters, expected {count} x {length}")
        s = raw.decode("ascii", errors="replace")
        return [s[k * length:(k + 1) * length] for k in range(count)]


def _check_count(reader, what: str, value: int, low: int = 0, high: int = 10**9) -> int:
    if not low <= value <= high:
        raise reader.fail(what, f"implausible value {value}")
    return value


def _network_from_header(fail, nlayers, nnodes_max, wsize, nvalues, nnodes, f_a, iw, iv,
                         flat) -> AenetNetwork:
    try:
        net = AenetNetwork.from_flat([int(n) for n in nnodes], [int(a) for a in f_a], flat)
    except ValueError as exc:
        raise fail("network", str(exc)) from None
    derived = {"nnodes_max": net.nnodes_max, "Wsize": net.wsize, "nvalues": net.nvalues,
               "iw": net.iw, "iv": net.iv}
    stored = {"nnodes_max": nnodes_max, "Wsize": wsize, "nvalues": nvalues,
              "iw": [int(x) for x in iw], "iv": [int(x) for x in iv]}
    for key, value in stored.items():
        if value != derived[key]:
            raise fail("network", f"{key} = {value} is inconsistent with the layer sizes "
                       f"{net.layer_sizes} (expected {derived[key]})")
    return net


def _potential(net: AenetNetwork, setup: AenetSetup, ts: AenetTrainingSetInfo, n_inputs: int,
               nsf: int, source: str | None) -> AenetPotential:
    """The potential of a parsed file (binary or ASCII), once the network's
    ``n_inputs`` are the setup's ``nsf`` basis functions."""
    if n_inputs != nsf:
        raise InputError(f"the network has {n_inputs} inputs but the fingerprint "
                         f"setup {nsf} functions", source=source)
    return AenetPotential(net, setup, ts, path=source)


def _parse_binary(data: bytes, source: str | None) -> AenetPotential:
    r = _RecordReader(data, source)
    nlayers = _check_count(r, "nlayers", r.int("nlayers"), 2, 10_000)
    nnodes_max = r.int("nnodes_max")
    wsize = _check_count(r, "Wsize", r.int("Wsize"), 1, 10**10)
    nvalues = r.int("nvalues")
    nnodes = r.ints("nnodes", nlayers)
    f_a = r.ints("f_a", nlayers - 1)
    iw = r.ints("iw", nlayers)
    iv = r.ints("iv", nlayers)
    flat = r.reals("W", wsize)
    net = _network_from_header(r.fail, nlayers, nnodes_max, wsize, nvalues, nnodes, f_a, iw,
                               iv, flat)
    description = r.text("description", DESCRIPTION_LEN).rstrip()
    atomtype = r.text("atomtype", TYPE_LEN).strip()
    nenv = _check_count(r, "nenv", r.int("nenv"), 1, 200)
    envtypes = [t.strip() for t in r.texts("envtypes", nenv, TYPE_LEN)]
    rc_min = r.real("Rc_min")
    rc_max = r.real("Rc_max")
    sftype = r.text("sftype", SFTYPE_LEN).strip()
    nsf = _check_count(r, "nsf", r.int("nsf"), 1, 10**7)
    nsfparam = _check_count(r, "nsfparam", r.int("nsfparam"), 1, 1000)
    sf = r.ints("sf", nsf)
    sfparam = r.reals("sfparam", nsfparam * nsf).reshape((nsfparam, nsf), order="F")
    sfenv_raw = r.ints("sfenv")
    if sfenv_raw.size % nsf:
        raise r.fail("sfenv", f"{sfenv_raw.size} values for {nsf} basis functions")
    sfenv = sfenv_raw.reshape((-1, nsf), order="F")
    neval = r.int("neval")
    stats = [r.reals(name, nsf) for name in ("sfval_min", "sfval_max", "sfval_avg",
                                             "sfval_cov")]
    setup = AenetSetup(description, atomtype, envtypes, rc_min, rc_max, sftype, sf, sfparam,
                       sfenv, neval, *stats)
    ts_file = r.text("training-set file name", PATH_LEN).rstrip()
    normalized = r.int("normalized") != 0
    scale = r.real("scale")
    shift = r.real("shift")
    ntypes = _check_count(r, "nTypes", r.int("nTypes"), 1, 200)
    type_names = [t.strip() for t in r.texts("typeName", ntypes, TYPE_LEN)]
    e_atom = r.reals("E_atom", ntypes)
    n_atoms_total = r.int("nAtomsTot")
    n_structures = r.int("nStrucs")
    e_min, e_max, e_av = (float(x) for x in r.reals("E_min, E_max, E_av", 3))
    if r.pos != len(data):
        raise InputError(f"{len(data) - r.pos} bytes after the last record (E_min, E_max, "
                         "E_av) of an aenet potential", source=source)
    ts = AenetTrainingSetInfo(ts_file, normalized, scale, shift, type_names, e_atom,
                              n_atoms_total, n_structures, e_min, e_max, e_av)
    return _potential(net, setup, ts, int(nnodes[0]), nsf, source)


# ---------------------------------------------------------- ASCII form
def format_es(value: float) -> str:
    """Fortran ``ES24.17`` of ``value`` (24 characters; an exponent beyond two
    digits drops the ``E``, as Fortran does)."""
    value = float(value)
    if not math.isfinite(value):
        text = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        return text.rjust(24)
    mantissa, exp = f"{value:.17E}".split("E")
    e = int(exp)
    text = f"{mantissa}E{e:+03d}" if abs(e) <= 99 else f"{mantissa}{e:+04d}"
    return text.rjust(24)


def _rows(values: Sequence, fmt) -> list[str]:
    values = list(values)
    return ["".join(" " + fmt(v) for v in values[k:k + 4]) for k in range(0, len(values), 4)] \
        or [""]


def _es_rows(values) -> list[str]:
    return _rows(np.asarray(values, dtype=np.float64).ravel(order="F").tolist(), format_es)


def _int_rows(values) -> list[str]:
    return _rows([int(v) for v in np.asarray(values).ravel(order="F")],
                 lambda v: f"{v:17d}")


def _list_int(value: int) -> str:
    return f"{int(value):12d}"


def _list_real(value: float) -> str:
    return f"  {float(value)!r}"


def _ascii_lines(pot: AenetPotential) -> Iterator[str]:
    net, stp, ts = pot.network, pot.setup, pot.trainset
    for value in (len(net.layer_sizes), net.nnodes_max, net.wsize, net.nvalues):
        yield _list_int(value)
    yield from _int_rows(net.layer_sizes)
    yield from _int_rows(net.activations)
    yield from _int_rows(net.iw)
    yield from _int_rows(net.iv)
    yield from _es_rows(net.flat_weights())
    if "\n" in stp.description:
        raise ValueError("the setup description must be one line")
    yield stp.description.rstrip()
    yield stp.atomtype.ljust(TYPE_LEN)
    yield _list_int(len(stp.envtypes))
    for t in stp.envtypes:
        yield t.ljust(TYPE_LEN)
    yield _list_real(stp.rc_min)
    yield _list_real(stp.rc_max)
    yield stp.sftype.ljust(SFTYPE_LEN)
    yield _list_int(stp.nsf)
    yield _list_int(stp.sfparam.shape[0])
    yield from _int_rows(stp.sf)
    yield from _es_rows(stp.sfparam)
    yield from _int_rows(_sfenv_rows(stp, len(stp.envtypes)))
    yield _list_int(stp.neval)
    for arr in (stp.sfval_min, stp.sfval_max, stp.sfval_avg, stp.sfval_cov):
        yield from _es_rows(arr)
    yield ts.file.rstrip()
    yield " T" if ts.normalized else " F"
    yield _list_real(ts.scale)
    yield _list_real(ts.shift)
    yield _list_int(len(ts.type_names))
    for t in ts.type_names:
        yield t.ljust(TYPE_LEN)
    yield from _es_rows(ts.e_atom)
    yield _list_int(ts.n_atoms_total)
    yield _list_int(ts.n_structures)
    yield "  " + "  ".join(repr(float(v)) for v in (ts.e_min, ts.e_max, ts.e_av))


def parse_fortran_real(token: str) -> float:
    """A Fortran real literal: ``1.5E+00``, ``1.5D+00``, ``1.5+100`` (Fortran's
    three-digit exponent without a letter), ``Infinity``, ``NaN``."""
    t = token.strip().upper().replace("D", "E")
    try:
        return float(t)
    except ValueError:
        pass
    for k in range(len(t) - 1, 0, -1):
        if t[k] in "+-" and t[k - 1] not in "E":
            try:
                return float(t[:k] + "E" + t[k:])
            except ValueError:
                break
    raise ValueError(f"not a Fortran real: {token!r}")


class _LineReader:
    def __init__(self, text: str, source: str | None):
        self.lines = text.splitlines()
        self.k = 0
        self.source = source

    def fail(self, what: str, reason: str, line: int | None = None) -> InputError:
        return InputError(f"{what}: {reason}", source=self.source,
                          line=line if line is not None else self.k)

    def line(self, what: str) -> str:
        if self.k >= len(self.lines):
            raise self.fail(what, "file ends here (truncated file?)", self.k + 1)
        self.k += 1
        return self.lines[self.k - 1]

    def tokens(self, what: str, count: int) -> list[str]:
        """``count`` whitespace-separated values from as many lines as they take
        (aenet writes four per line; aenet-python one array per line)."""
        out: list[str] = []
        first = self.k + 1
        while len(out) < count:
            out.extend(self.line(what).split())
        if len(out) != count:
            raise self.fail(what, f"{len(out)} values on lines {first}-{self.k}, expected "
                            f"{count}")
        return out

    def peek(self) -> str | None:
        return self.lines[self.k] if self.k < len(self.lines) else None

    def first(self, what: str, parse: Callable[[str], Any], expected: str,
              separators: str = "") -> Any:
        """``parse`` of the first value on the next line (``separators`` split values
        as whitespace does); ``expected`` names it in the error."""
        line = self.line(what)
        for sep in separators:
            line = line.replace(sep, " ")
        parts = line.split()
        try:
            return parse(parts[0])
        except (IndexError, ValueError):
            raise self.fail(what, f"expected {expected}, got {' '.join(parts)!r}") from None

    def array(self, what: str, count: int, parse: Callable[[str], Any], dtype: Any,
              expected: str | None = None) -> np.ndarray:
        """``count`` values (:meth:`tokens`) through ``parse`` as an array of ``dtype``;
        the error says ``expected`` (else the parse error)."""
        toks = self.tokens(what, count)
        try:
            return np.array([parse(t) for t in toks], dtype=dtype)
        except ValueError as exc:
            raise self.fail(what, expected or str(exc)) from None

    def int(self, what: str) -> int:
        return self.first(what, int, "an integer")

    def ints(self, what: str, count: int) -> np.ndarray:
        return self.array(what, count, int, np.int64, "expected integers")

    def real(self, what: str) -> float:
        return self.first(what, parse_fortran_real, "a real number", ",")

    def reals(self, what: str, count: int) -> np.ndarray:
        return self.array(what, count, parse_fortran_real, np.float64)

    def logical(self, what: str) -> bool:
        t = self.line(what).strip().upper().lstrip(".")
        if t[:1] in ("T", "F"):
            return t[:1] == "T"
        raise self.fail(what, f"expected T or F, got {t!r}")

    def name(self, what: str, length: int) -> str:
        return self.line(what)[:length].strip()

    def names(self, what: str, count: int, length: int) -> list[str]:
        """``count`` species names, one per line (aenet) or several on a line."""
        out: list[str] = []
        while len(out) < count:
            line = self.line(what)
            out.extend([line[:length].strip()] if len(line.split()) <= 1 else line.split())
        if len(out) != count or any(not n or len(n) > length for n in out):
            raise self.fail(what, f"expected {count} species names of at most {length} "
                            f"characters, got {out}")
        return out

    def int_lines(self, what: str) -> np.ndarray:
        """Integers of the lines up to the next line holding a non-integer value."""
        out: list[int] = []
        while self.peek() is not None:
            parts = self.peek().split()
            try:
                values = [int(t) for t in parts]
            except ValueError:
                break
            out.extend(values)
            self.k += 1
        return np.array(out, dtype=np.int64)


def _parse_ascii(text: str, source: str | None) -> AenetPotential:
    r = _LineReader(text, source)
    nlayers = r.int("nlayers")
    if not 2 <= nlayers <= 10_000:
        raise r.fail("nlayers", f"implausible value {nlayers}")
    nnodes_max, wsize, nvalues = r.int("nnodes_max"), r.int("Wsize"), r.int("nvalues")
    nnodes = r.ints("nnodes", nlayers)
    f_a = r.ints("f_a", nlayers - 1)
    iw = r.ints("iw", nlayers)
    iv = r.ints("iv", nlayers)
    if not 1 <= wsize <= 10**10:
        raise r.fail("Wsize", f"implausible value {wsize}")
    flat = r.reals("W", wsize)

    def fail(what, reason):
        return r.fail(what, reason)
    net = _network_from_header(fail, nlayers, nnodes_max, wsize, nvalues, nnodes, f_a, iw, iv,
                               flat)
    description = r.line("description").rstrip()
    atomtype = r.name("atomtype", TYPE_LEN)
    nenv = r.int("nenv")
    if not 1 <= nenv <= 200:
        raise r.fail("nenv", f"implausible value {nenv}")
    envtypes = r.names("envtypes", nenv, TYPE_LEN)
    rc_min, rc_max = r.real("Rc_min"), r.real("Rc_max")
    sftype = r.line("sftype").strip()
    nsf, nsfparam = r.int("nsf"), r.int("nsfparam")
    if not (1 <= nsf <= 10**7 and 1 <= nsfparam <= 1000):
        raise r.fail("nsf", f"implausible nsf {nsf} or nsfparam {nsfparam}")
    sf = r.ints("sf", nsf)
    sfparam = r.reals("sfparam", nsfparam * nsf).reshape((nsfparam, nsf), order="F")
    # sfenv: nenv rows in aenet's ASCII files, NENV_MAX rows in aenet-python's; then neval
    tail = r.int_lines("sfenv and neval")
    if tail.size < 1 or (tail.size - 1) % nsf:
        raise r.fail("sfenv and neval", f"{tail.size} integers before the feature statistics; "
                     f"expected a multiple of nsf = {nsf} and neval")
    sfenv = tail[:-1].reshape((-1, nsf), order="F")
    neval = int(tail[-1])
    stats = [r.reals(name, nsf) for name in ("sfval_min", "sfval_max", "sfval_avg",
                                             "sfval_cov")]
    setup = AenetSetup(description, atomtype, envtypes, rc_min, rc_max, sftype, sf, sfparam,
                       sfenv, neval, *stats)
    ts_file = r.line("training-set file name").rstrip()
    normalized = r.logical("normalized")
    scale, shift = r.real("scale"), r.real("shift")
    ntypes = r.int("nTypes")
    if not 1 <= ntypes <= 200:
        raise r.fail("nTypes", f"implausible value {ntypes}")
    type_names = r.names("typeName", ntypes, TYPE_LEN)
    e_atom = r.reals("E_atom", ntypes)
    n_atoms_total, n_structures = r.int("nAtomsTot"), r.int("nStrucs")
    parts = r.line("E_min, E_max, E_av").replace(",", " ").split()
    try:
        e_min, e_max, e_av = (parse_fortran_real(t) for t in parts[:3])
    except ValueError as exc:
        raise r.fail("E_min, E_max, E_av", str(exc)) from None
    if len(parts) != 3:
        raise r.fail("E_min, E_max, E_av", f"expected three numbers, got {len(parts)}")
    ts = AenetTrainingSetInfo(ts_file, normalized, scale, shift, type_names, e_atom,
                              n_atoms_total, n_structures, e_min, e_max, e_av)
    return _potential(net, setup, ts, int(nnodes[0]), nsf, source)
