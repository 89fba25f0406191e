"""Source collections: where structures come from, and how config entries expand.

A :class:`SourceCollection` yields validated :class:`~nnpflow.Structure`s from
files, archive members or in-memory records, in a fixed order, with unique labels
(see the label rules in ``docs/architecture.md``).  It is built of *units*: a
plain file, one archive member, or one record -- the pieces a shard selection
(``select(unit_label)``) keeps or skips and that ``on_error="skip"`` rejects.

* :class:`FileListSourceCollection` -- files of any supported format (archives
  among them are streamed member by member);
* :class:`TarArchiveXSFSourceCollection` -- XSF members of one tar archive, read
  in a single streaming pass (the adapter of the same name in
  the aenet PyTorch dataset specification (aenet-python's torch_training docs));
* :class:`RecordSourceCollection` -- ``Structure`` / ``ase.Atoms`` objects;
* :class:`CombinedSourceCollection` -- several collections in order;
* :func:`as_source_collection` -- any of paths, records, collections, specs or a
  mixture of them.

Config entries (``{path: file | glob | directory | archive, format?, features?,
targets?, transforms?, suffixes?, index?}``) become :class:`SourceSpec`s with
:func:`expand_sources`; :func:`collection_for` turns specs into a collection.

On errors: ``iter_structures(on_error="raise")`` lets the first
:class:`~nnpflow.errors.InputError` propagate; ``on_error="skip"`` appends a
:class:`Rejection` for each bad unit or structure to ``rejected`` and goes on.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Iterator

from .errors import ConfigError, InputError
from .io import is_structure_file, options_for, resolve_format
from .io.tar import DEFAULT_MAX_MEMBER_SIZE, UnreadMember, iter_members, parse_size
from .io.xsf import parse_xsf, read_xsf
from .structure import Structure, as_structure

__all__ = ["Rejection", "SourceUnit", "SourceCollection", "FileListSourceCollection",
           "TarArchiveXSFSourceCollection", "RecordSourceCollection",
           "CombinedSourceCollection", "as_source_collection", "SourceSpec", "expand_sources",
           "collection_for", "file_sha256", "ON_ERROR"]

ON_ERROR = ("raise", "skip")

#: Keys a source entry of the config may have.
ENTRY_KEYS = ("path", "format", "features", "targets", "transforms", "suffixes", "index",
              "max_member_size")
_OPTION_KEYS = ENTRY_KEYS[2:]


@dataclass(frozen=True)
class Rejection:
    """A unit or structure left out under ``on_error="skip"`` (or by a filter).

    ``label``: the unit or structure label; ``reason``: a sentence that names the
    location (file, member, line) and the problem.
    """

    label: str
    reason: str


class SourceUnit:
    """One independently loadable piece of a collection.

    Attributes: ``label`` (the unit label: a path, ``archive:member`` or a record
    label), ``origin`` (where it comes from, for messages), ``require_energy``,
    ``not_read`` (``None``, or why a unit that holds no structure file -- e.g. a
    link inside an archive -- was passed over: it goes to the rejected list under
    either ``on_error``).  :meth:`load` parses it.
    """

    __slots__ = ("label", "origin", "require_energy", "not_read", "_load", "_error")

    def __init__(self, label: str, origin: str, load: Callable[[], list] | None = None,
                 error: InputError | None = None, require_energy: bool = True,
                 not_read: str | None = None):
        self.label = label
        self.origin = origin
        self.require_energy = require_energy
        self.not_read = not_read
        self._load = load
        self._error = error

    def load(self) -> list[Structure | InputError]:
        """Parse the unit (not yet validated).

        Raises :class:`InputError` when the whole unit is unusable; a single bad
        frame of a multi-frame unit comes back as an ``InputError`` item in place
        of its structure, so the others can still be used.
        """
        if self._error is not None:
            raise self._error
        return list(self._load())

    def __repr__(self) -> str:
        return f"SourceUnit({self.label!r}, {self.origin!r})"


def _check_label(label: str) -> None:
    if not label:
        raise InputError("empty source label")
    if any(c in label for c in "\t\n\r"):
        raise InputError("source label contains a tab or line break", source=repr(label))


class SourceCollection(ABC):
    """Abstract source of structures (see the module docstring).

    Subclasses implement :meth:`iter_units`, :meth:`content_hashes` and
    :meth:`describe`.  ``supports_parallel_build`` says whether the units'
    :meth:`SourceUnit.load` calls may run in worker threads (sources are still
    *read* in order; for archives only parsing runs in parallel).
    """

    supports_parallel_build: bool = False

    @abstractmethod
    def iter_units(self, select: Callable[[str], bool] | None = None) -> Iterator[SourceUnit]:
        """Yield the units in canonical order, skipping those ``select`` rejects.

        An archive that cannot be read yields one unit whose ``load`` raises.
        """

    @abstractmethod
    def content_hashes(self) -> dict[str, str]:
        """SHA-256 (hex) of each source file by path (records: by label, of the content)."""

    @abstractmethod
    def describe(self) -> list[dict]:
        """JSON-compatible description of each source (kind, path, format, options)."""

    def iter_structures(self, on_error: str = "raise", rejected: list | None = None,
                        select: Callable[[str], bool] | None = None,
                        check: Callable[[Structure], None] | None = None,
                        show_progress: bool = False) -> Iterator[Structure]:
        """Yield every usable structure, validated, in canonical order.

        Parameters
        ----------
        on_error:
            ``"raise"``: the first :class:`InputError` propagates.  ``"skip"``: each
            bad unit or structure is appended to ``rejected`` as a
            :class:`Rejection` and iteration goes on.
        rejected:
            List that collects the rejections under ``"skip"``.
        select:
            ``select(unit_label) -> bool`` keeps only some units (one shard).
        check:
            Extra per-structure check that raises ``InputError`` (e.g.
            :class:`nnpflow.structure_checks.StructureChecks`), under the same policy.
        show_progress:
            Show a progress bar (structures).

        Every structure is ``validate()``-d (with ``require_energy`` of its source)
        and its label checked for uniqueness across the whole collection.
        """
        if on_error not in ON_ERROR:
            raise ConfigError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
        skip = on_error == "skip"
        if rejected is None:
            rejected = []
        seen: dict[str, str] = {}
        bar = None
        if show_progress:
            from tqdm.auto import tqdm

            bar = tqdm(unit=" structures", desc="reading sources")
        try:
            for unit in self.iter_units(select):
                if unit.not_read is not None:
                    rejected.append(Rejection(unit.label, unit.not_read))
                    continue
                try:
                    results = unit.load()
                except InputError as exc:
                    if not skip:
                        raise
                    rejected.append(Rejection(unit.label, str(exc)))
                    continue
                for item in results:
                    if isinstance(item, InputError):
                        if not skip:
                            raise item
                        rejected.append(Rejection(item.source or unit.label, str(item)))
                        continue
                    try:
                        _check_label(item.name)
                        first = seen.get(item.name)
                        if first is not None:
                            raise InputError(f"two sources with the same label: {first} and "
                                             f"{unit.origin}", source=item.name)
                        seen[item.name] = unit.origin
                        item.validate(require_energy=unit.require_energy)
                        if check is not None:
                            check(item)
                    except InputError as exc:
                        if not skip:
                            raise
                        rejected.append(Rejection(item.name, str(exc)))
                        continue
                    if bar is not None:
                        bar.update(1)
                    yield item
        finally:
            if bar is not None:
                bar.close()

    def __iter__(self) -> Iterator[Structure]:
        return self.iter_structures()

    def structures(self, **kwargs) -> list[Structure]:
        """``list(self.iter_structures(**kwargs))``."""
        return list(self.iter_structures(**kwargs))


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file, streamed."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _posix(path: str | os.PathLike) -> str:
    return os.path.normpath(os.fspath(path)).replace(os.sep, "/")


def _hashes(paths: Iterable[str]) -> dict[str, str]:
    out = {}
    for p in paths:
        try:
            out[p] = file_sha256(p)
        except OSError as exc:
            raise InputError(f"cannot read file: {exc.strerror}", source=p) from None
    return out


# ----------------------------------------------------------------- collections
class TarArchiveXSFSourceCollection(SourceCollection):
    """XSF members of one tar archive (.tar, .tar.gz/.tgz, .tar.bz2, .tar.xz).

    One streaming pass per iteration, never unpacked to disk.  Members are kept
    when their name ends with one of ``suffixes``; repeated names become
    ``archive:name#2``, ``#3``, ... in archive order.  An archive without a
    matching member, or a corrupt one, is an :class:`InputError` naming it.

    A member larger than ``max_member_size`` (bytes or ``"2 GB"``; default
    :data:`nnpflow.io.tar.DEFAULT_MAX_MEMBER_SIZE`, ``None``: no limit) is a bad
    unit (not read); members with a matching name that are links, devices or
    fifos are listed as not read (see :class:`SourceUnit`).
    """

    supports_parallel_build = True

    def __init__(self, path: str | os.PathLike, suffixes: Iterable[str] | None = (".xsf",), *,
                 require_energy: bool = True, label: str | None = None,
                 max_member_size: int | str | None = DEFAULT_MAX_MEMBER_SIZE):
        self.path = os.fspath(path)
        self.label = label or _posix(self.path)
        self.suffixes = tuple(suffixes) if suffixes is not None else None
        self.require_energy = bool(require_energy)
        self.max_member_size = (None if max_member_size is None
                                else parse_size(max_member_size))

    def iter_units(self, select=None) -> Iterator[SourceUnit]:
        members = iter_members(self.path, self.suffixes, select, label=self.label,
                               max_member_size=self.max_member_size, unread="yield")
        while True:
            try:
                m = next(members)
            except StopIteration:
                return
            except InputError as exc:
                yield SourceUnit(self.label, f"archive {self.label}", error=exc,
                                 require_energy=self.require_energy)
                return
            origin = f"member {m.member!r} of archive {self.label}"
            if isinstance(m, UnreadMember):
                if m.is_error:
                    yield SourceUnit(m.label, origin, error=m.error,
                                     require_energy=self.require_energy)
                else:
                    yield SourceUnit(m.label, origin, not_read=str(m.error),
                                     require_energy=self.require_energy)
                continue
            yield SourceUnit(m.label, origin,
                             partial(parse_xsf, m.data, m.archive, m.member,
                                     require_energy=self.require_energy),
                             require_energy=self.require_energy)

    def content_hashes(self) -> dict[str, str]:
        return _hashes([self.path])

    def describe(self) -> list[dict]:
        return [{"kind": "tar", "path": self.label, "format": "tar",
                 "suffixes": list(self.suffixes) if self.suffixes is not None else None}]

    def __repr__(self) -> str:
        return f"TarArchiveXSFSourceCollection({self.label!r})"


def _load_file(path: str, fmt: str, label: str, options: dict,
               require_energy: bool) -> list[Structure | InputError]:
    # missing or unreadable files: each reader raises InputError naming the file
    if fmt == "xsf":
        return read_xsf(path, require_energy=require_energy, label=label)
    if fmt in ("pickle", "npz"):
        from .io.pickle_frames import iter_frame_results

        return list(iter_frame_results(path, label=label, **options))
    from .io.ase_formats import read_ase

    return list(read_ase(path, format=None if fmt == "ase" else fmt, label=label, **options))


class FileListSourceCollection(SourceCollection):
    """Structure files in the given order; every format of :mod:`nnpflow.io`.

    Parameters
    ----------
    paths:
        Files.  Labels are the paths as given (normalised, posix).  Archives
        among them are streamed member by member (their units are members).
    format:
        One format for all files (default: by each file name).
    require_energy:
        Reject structures without a total energy (default True: training data).
    **options:
        Reader options (``suffixes`` for archives; ``features``, ``targets``,
        ``transforms``, ``base_dir`` for pickles/npz; ``index`` for ASE formats).
        An option no listed file's format takes raises ``ConfigError``.
    """

    supports_parallel_build = True

    def __init__(self, paths: Iterable[str | os.PathLike], format: str | None = None, *,
                 require_energy: bool = True, **options):
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.paths = [os.fspath(p) for p in paths]
        self.labels = [_posix(p) for p in self.paths]
        self.format = format
        self.formats = [resolve_format(p, format) for p in self.paths]
        self.require_energy = bool(require_energy)
        self.options = dict(options)
        accepted = set()
        for f in self.formats:
            accepted |= options_for(f)
        accepted.discard("select")
        accepted.discard("require_energy")
        unknown = set(self.options) - accepted
        if unknown:
            raise ConfigError(f"option(s) {', '.join(sorted(unknown))} do not apply to the "
                              f"formats of these files ({', '.join(sorted(set(self.formats)))})")

    def _options_for(self, fmt: str) -> dict:
        return {k: v for k, v in self.options.items() if k in options_for(fmt)}

    def iter_units(self, select=None) -> Iterator[SourceUnit]:
        for k, (path, label, fmt) in enumerate(zip(self.paths, self.labels, self.formats)):
            if fmt == "tar":
                opts = self._options_for(fmt)
                archive = TarArchiveXSFSourceCollection(
                    path, opts.get("suffixes", (".xsf",)), require_energy=self.require_energy,
                    label=label,
                    max_member_size=opts.get("max_member_size", DEFAULT_MAX_MEMBER_SIZE))
                yield from archive.iter_units(select)
                continue
            if select is not None and not select(label):
                continue
            yield SourceUnit(label, f"file {label} (item {k + 1} of the file list)",
                             partial(_load_file, path, fmt, label, self._options_for(fmt),
                                     self.require_energy),
                             require_energy=self.require_energy)

    def content_hashes(self) -> dict[str, str]:
        return _hashes(self.labels)

    def describe(self) -> list[dict]:
        out = []
        for label, fmt in zip(self.labels, self.formats):
            opts = {k: _jsonable(v) for k, v in self._options_for(fmt).items()}
            out.append({"kind": "tar" if fmt == "tar" else "file", "path": label,
                        "format": fmt, "options": opts})
        return out

    def __repr__(self) -> str:
        return f"FileListSourceCollection({len(self.paths)} files)"


def _jsonable(value):
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


class RecordSourceCollection(SourceCollection):
    """In-memory ``Structure`` or ``ase.Atoms`` records.

    A record's label is its ``name`` (``Structure.name`` or ``atoms.info["name"]``)
    or ``records[i]`` when it has none.  Records are converted lazily; arrays are
    shared with the given objects, not copied.
    """

    supports_parallel_build = True

    def __init__(self, records: Iterable, *, require_energy: bool = True):
        from ase import Atoms

        self.records = list(records)
        for k, r in enumerate(self.records):
            if not isinstance(r, (Structure, Atoms)):
                raise TypeError(f"record {k} is a {type(r).__name__}, expected "
                                "nnpflow.Structure or ase.Atoms")
        self.require_energy = bool(require_energy)

    def _structure(self, k: int) -> Structure:
        r = self.records[k]
        s = as_structure(r)
        if not s.name:
            s = dataclasses.replace(s, name=f"records[{k}]")
        return s

    def iter_units(self, select=None) -> Iterator[SourceUnit]:
        for k in range(len(self.records)):
            s = self._structure(k)
            if select is not None and not select(s.name):
                continue
            yield SourceUnit(s.name, f"record {k}", partial(lambda x: [x], s),
                             require_energy=self.require_energy)

    def content_hashes(self) -> dict[str, str]:
        return {self._structure(k).name: self._structure(k).content_hash()
                for k in range(len(self.records))}

    def describe(self) -> list[dict]:
        return [{"kind": "records", "n_records": len(self.records)}]

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"RecordSourceCollection({len(self.records)} records)"


class CombinedSourceCollection(SourceCollection):
    """Several collections, one after the other; labels unique across all of them."""

    def __init__(self, collections: Iterable[SourceCollection]):
        self.collections = list(collections)
        self.supports_parallel_build = all(c.supports_parallel_build for c in self.collections)

    def iter_units(self, select=None) -> Iterator[SourceUnit]:
        for c in self.collections:
            yield from c.iter_units(select)

    def content_hashes(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for c in self.collections:
            out.update(c.content_hashes())
        return out

    def describe(self) -> list[dict]:
        return [d for c in self.collections for d in c.describe()]

    def __repr__(self) -> str:
        return f"CombinedSourceCollection({self.collections!r})"


def _kind(obj) -> str:
    from ase import Atoms

    if isinstance(obj, SourceCollection):
        return "collection"
    if isinstance(obj, SourceSpec):
        return "spec"
    if isinstance(obj, (str, os.PathLike)):
        return "path"
    if isinstance(obj, (Structure, Atoms)):
        return "record"
    raise TypeError(f"cannot use a {type(obj).__name__} as a structure source: give paths, "
                    "nnpflow.Structure / ase.Atoms records or source collections")


def as_source_collection(obj, *, require_energy: bool = True, format: str | None = None,
                         **options) -> SourceCollection:
    """A collection for ``obj``: a collection (returned as is), a path, a record, a
    :class:`SourceSpec`, or a list mixing them (order kept; consecutive items of
    one kind are grouped).  ``format`` and ``options`` apply to the paths."""
    if isinstance(obj, SourceCollection):
        return obj
    items = [obj] if isinstance(obj, (str, os.PathLike, Structure, SourceSpec)) else None
    if items is None:
        from ase import Atoms

        items = [obj] if isinstance(obj, Atoms) else list(obj)
    groups: list[tuple[str, list]] = []
    for item in items:
        kind = _kind(item)
        if groups and groups[-1][0] == kind and kind != "collection":
            groups[-1][1].append(item)
        else:
            groups.append((kind, [item]))
    parts: list[SourceCollection] = []
    for kind, members in groups:
        if kind == "collection":
            parts.extend(members)
        elif kind == "path":
            parts.append(FileListSourceCollection(members, format, require_energy=require_energy,
                                                  **options))
        elif kind == "record":
            parts.append(RecordSourceCollection(members, require_energy=require_energy))
        else:
            parts.append(collection_for(members, require_energy=require_energy))
    return parts[0] if len(parts) == 1 else CombinedSourceCollection(parts)


# ---------------------------------------------------------------- config specs
@dataclass(eq=True)
class SourceSpec:
    """One concrete source file from the config.

    Attributes
    ----------
    path:
        The file (posix; relative paths are relative to the working directory) --
        also the label of its structures and, for plain files, its unit label.
    format:
        Reader name (see :mod:`nnpflow.io`): ``xsf``, ``tar``, ``pickle``, ``npz``,
        ``ase`` or an ASE format name.
    options:
        Reader options (JSON-compatible): ``suffixes``, ``max_member_size`` (tar), ``features``,
        ``targets``, ``transforms`` (pickle/npz), ``index`` (ASE).
    """

    path: str
    format: str
    options: dict = field(default_factory=dict)

    @property
    def is_archive(self) -> bool:
        """Archives' members spread over all shards; plain files go to one shard."""
        return self.format == "tar"

    def input_files(self) -> list[str]:
        """Files this source reads: the source and an ``atomic_energy`` CSV, if any."""
        files = [self.path]
        csv = (self.options.get("transforms") or {}).get("atomic_energy")
        if csv:
            files.append(csv)
        return files

    def to_dict(self) -> dict:
        return {"path": self.path, "format": self.format, "options": _jsonable(self.options)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "SourceSpec":
        unknown = set(d) - {"path", "format", "options"}
        if unknown or "path" not in d or "format" not in d:
            raise ConfigError(f"not a source spec: {dict(d)!r}")
        return cls(path=str(d["path"]), format=str(d["format"]), options=dict(d.get("options") or {}))

    def collection(self, require_energy: bool = True) -> SourceCollection:
        """The collection reading this source."""
        if self.is_archive:
            return TarArchiveXSFSourceCollection(
                self.path, self.options.get("suffixes", (".xsf",)),
                require_energy=require_energy, label=self.path,
                max_member_size=self.options.get("max_member_size", DEFAULT_MAX_MEMBER_SIZE))
        opts = dict(self.options)
        return FileListSourceCollection([self.path], self.format, require_energy=require_energy,
                                        **opts)


def collection_for(specs: Iterable[SourceSpec | Mapping], *,
                   require_energy: bool = True) -> SourceCollection:
    """One collection reading ``specs`` in the given order (dicts from
    :meth:`SourceSpec.to_dict` accepted)."""
    parts = [(s if isinstance(s, SourceSpec) else SourceSpec.from_dict(s)).collection(require_energy)
             for s in specs]
    return parts[0] if len(parts) == 1 else CombinedSourceCollection(parts)


def _expand_path(raw: str, base_dir: str, where: str) -> list[str]:
    full = raw if os.path.isabs(raw) else os.path.join(base_dir, raw)
    if glob.has_magic(raw):
        found = sorted(_posix(p) for p in glob.glob(full, recursive=True) if os.path.isfile(p))
        if not found:
            raise ConfigError(f"{where}: no files match {raw!r}"
                              + (f" (relative to {base_dir})" if not os.path.isabs(raw) else ""))
        return found
    if os.path.isdir(full):
        found = []
        for root, dirs, files in os.walk(full):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            # regular files (or links to them) only: reading a fifo would block
            found.extend(_posix(os.path.join(root, f)) for f in files
                         if is_structure_file(f) and os.path.isfile(os.path.join(root, f)))
        if not found:
            raise ConfigError(f"{where}: directory {raw!r} holds no structure files "
                              "(.xsf, tar archives, .extxyz, .xyz, .traj, .cif, .pkl, .npz, "
                              "OUTCAR, vasprun.xml); use a glob for other names")
        return sorted(found)
    if os.path.isfile(full):
        return [_posix(full)]
    raise ConfigError(f"{where}: {raw!r} does not exist"
                      + (f" (relative to {base_dir})" if not os.path.isabs(raw) else ""))


def expand_sources(entries: Iterable[Mapping | str], base_dir: str | os.PathLike = ".") -> list[SourceSpec]:
    """Expand config source entries into concrete files, in order.

    Each entry is a path string or a mapping with ``path`` (a file, a glob --
    ``**`` recurses --, a directory -- searched recursively for known structure
    files, hidden names skipped -- or an archive) and optional ``format``,
    ``features``, ``targets``, ``transforms`` (pickle/npz), ``suffixes`` and
    ``max_member_size`` (tar),
    ``index`` (ASE formats).  Relative paths (also ``transforms.atomic_energy``)
    are relative to ``base_dir``.  Files of one entry come sorted by path.

    Raises ``ConfigError`` for unknown keys, options that do not fit a file's
    format, an entry that matches nothing, and a file listed twice.
    """
    base_dir = os.fspath(base_dir)
    if isinstance(entries, (str, Mapping)):
        entries = [entries]
    specs: list[SourceSpec] = []
    seen: dict[str, tuple[int, str]] = {}
    for n, entry in enumerate(entries, start=1):
        if isinstance(entry, (str, os.PathLike)):
            entry = {"path": os.fspath(entry)}
        if not isinstance(entry, Mapping):
            raise ConfigError(f"source entry {n}: expected a path or a mapping with 'path', "
                              f"got {entry!r}")
        where = f"source entry {n}" + (f" ({entry['path']})" if "path" in entry else "")
        unknown = sorted(set(entry) - set(ENTRY_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: "
                              f"{', '.join(ENTRY_KEYS)}")
        if not entry.get("path"):
            raise ConfigError(f"{where}: 'path' is missing")
        raw = os.fspath(entry["path"])
        options = {k: entry[k] for k in _OPTION_KEYS if entry.get(k) is not None}
        transforms = options.get("transforms")
        if transforms is not None:
            if not isinstance(transforms, Mapping):
                raise ConfigError(f"{where}: transforms must be a mapping")
            transforms = dict(transforms)
            csv = transforms.get("atomic_energy")
            if csv is not None:
                csv = os.fspath(csv)
                full_csv = csv if os.path.isabs(csv) else os.path.join(base_dir, csv)
                transforms["atomic_energy"] = _posix(full_csv)
            options["transforms"] = transforms
        if "suffixes" in options:
            suffixes = options["suffixes"]
            if isinstance(suffixes, str):
                suffixes = [suffixes]
            options["suffixes"] = [str(s) for s in suffixes]
        if "max_member_size" in options:
            try:
                options["max_member_size"] = parse_size(options["max_member_size"])
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        for path in _expand_path(raw, base_dir, where):
            try:
                fmt = resolve_format(path, entry.get("format"))
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
            bad = sorted(set(options) - options_for(fmt))
            if bad:
                raise ConfigError(f"{where}: option(s) {', '.join(bad)} do not apply to "
                                  f"{path} (format {fmt})")
            real = os.path.realpath(path)
            if real in seen:
                first_n, first_path = seen[real]
                raise ConfigError(f"file {path} is listed twice: by source entry {first_n} "
                                  f"(as {first_path}) and by {where}")
            seen[real] = (n, path)
            specs.append(SourceSpec(path=path, format=fmt, options=dict(options)))
    return specs
