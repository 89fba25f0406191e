"""Parallel, sharded database build from structure sources.

Structures are assigned to shards by their unit label
(:func:`nnpflow.sharding.shard_of`), so adding one source file changes one
shard.  Each shard is read, filtered, featurised and written by its own process
(torch limited to one thread per process); the shards are then merged by
:func:`~nnpflow.database.merge.merge_databases`, which copies compressed chunks
without recompressing.  The merged order is shard 0 .. n-1 and, inside a shard,
the source iteration order: the canonical order of the workflow's manifest.
Tar archives are streamed by every worker, each keeping its own members
(parsing is cheap next to featurisation).

With one shard the build runs in the calling process and writes the database in
source order directly.  Shard files live in a temporary folder next to the
output and are removed afterwards; the output is written atomically, so an
interrupted build leaves no file at the final path.  A worker process that
dies without answering (SIGKILL, e.g. from the out-of-memory killer, or a
crash) fails the build with an error naming its shard; the other workers are
stopped and nothing is written.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..energy_reference import EnergyFilter
from ..errors import ConfigError, NNPFlowError
from ..sharding import shard_of
from .schema import DEFAULT_BLOCK_STRUCTURES


@dataclass
class BuildResult:
    """What a build did.

    ``rejected``: sources or structures left out under ``on_error="skip"``;
    ``filtered``: structures removed by the ``max_energy`` filter (both lists of
    ``nnpflow.sources.Rejection``).
    """

    path: Path
    n_structures: int
    n_shards: int
    seconds: float
    rejected: list = field(default_factory=list)
    filtered: list = field(default_factory=list)
    fingerprint: str = ""
    structures_fingerprint: str = ""


@dataclass
class _ShardJob:
    """Everything a worker needs to build one shard (picklable)."""

    index: int
    n_shards: int
    path: str
    collection: Any
    descriptor_config: dict | None
    descriptor_dtype: str | None
    options: dict
    max_energy: float | None
    atomic_energies: dict | None
    on_error: str
    sources_meta: dict
    check_overlaps: bool = False


_COUNTER = None
#: shard jobs inherited by forked workers (no pickling of in-memory sources)
_JOBS: list | None = None


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this worker when its parent dies, so a killed
    build leaves no orphaned workers behind."""
    try:
        import ctypes
        import signal
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:  # pragma: no cover - not Linux
        pass


def _init_worker(counter) -> None:
    global _COUNTER
    _COUNTER = counter
    _die_with_parent()
    import torch
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    from ..runtime import keep_freed_memory
    keep_freed_memory()  # a worker process only builds its shard


def _tick(n: int) -> None:
    if _COUNTER is not None:
        with _COUNTER.get_lock():
            _COUNTER.value += n


def _make_descriptor(config: dict | None, dtype: str | None):
    if config is None:
        return None
    import torch
    from ..descriptors import ChebyshevDescriptor
    kwargs = {}
    if dtype is not None:
        kwargs["dtype"] = getattr(torch, dtype)
    return ChebyshevDescriptor.from_config(config, **kwargs)


def _species_check(descriptor: Any):
    """Per-structure check that every species is in the descriptor's species
    list; runs under the build's ``on_error`` policy while the sources are read.
    (The overlap check runs in the writer, where the descriptor's neighbour
    search sees the close pairs as it featurises.)"""
    from ..structure_checks import check_descriptor_species

    listed = list(descriptor.species)
    allowed = frozenset(listed)
    return lambda s: check_descriptor_species(s, listed, allowed)


def _run_shard(job: _ShardJob, descriptor: Any = None, progress=None) -> dict:
    """Build one shard; returns counts and rejections (runs in a worker or in-process)."""
    from ..sources import Rejection
    from .writer import write_database

    if descriptor is None:
        descriptor = _make_descriptor(job.descriptor_config, job.descriptor_dtype)
    filt = EnergyFilter(job.max_energy, job.atomic_energies)
    rejected: list = []
    filtered: list = []
    select = None
    if job.n_shards > 1:
        k, n = job.index, job.n_shards
        select = lambda label: shard_of(label, n) == k  # noqa: E731
    check = _species_check(descriptor) if descriptor is not None else None

    def reject(s, error) -> None:  # an overlap found by the writer, under "skip"
        rejected.append(Rejection(s.name, str(error)))

    def structures():
        for s in job.collection.iter_structures(on_error=job.on_error, rejected=rejected,
                                                select=select, check=check):
            reason = filt.reason_to_reject(s)
            if reason is not None:
                filtered.append(Rejection(s.name, reason))
                continue
            yield s

    def on_progress(n: int) -> None:
        _tick(n)
        if progress is not None:
            progress(n)

    write_database(job.path, structures(), descriptor=descriptor,
                   filter_meta=filt.config(), sources_meta=job.sources_meta,
                   on_progress=on_progress, durable=job.n_shards == 1,
                   check_overlaps=job.check_overlaps,
                   on_reject=reject if job.on_error == "skip" else None,
                   validated=True, **job.options)
    return {"index": job.index, "rejected": [(r.label, r.reason) for r in rejected],
            "filtered": [(r.label, r.reason) for r in filtered]}


def _clean_stale(parent: Path, name: str) -> None:
    """Remove shard folders of earlier builds of ``name`` whose process is gone."""
    for d in parent.glob(f".{name}.shards-*"):
        try:
            pid = int(d.name.rsplit(".shards-", 1)[1].split("-")[0])
        except (IndexError, ValueError):
            continue
        try:
            os.kill(pid, 0)
            alive = pid != os.getpid()
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
        if not alive:
            shutil.rmtree(d, ignore_errors=True)


def build_sharded(sources: Any, out_path: str | os.PathLike, descriptor: Any = None,
                  n_workers: int = 1, *, n_shards: int | None = None,
                  persist_features: bool = True, persist_force_derivatives: bool = True,
                  persist_descriptor: bool | None = None,
                  compression: str | None = "gzip", compression_level: int | None = None,
                  dtype: str = "float32", shared_species: bool = False,
                  max_energy: float | None = None,
                  atomic_energies: Mapping[str, float] | None = None,
                  on_error: str = "raise", check_overlaps: bool | None = None,
                  show_progress: bool = False,
                  block_structures: int = DEFAULT_BLOCK_STRUCTURES,
                  skip_incompressible: bool = True,
                  start_method: str | None = None) -> BuildResult:
    """Build a database from ``sources`` with ``n_workers`` processes.

    Parameters
    ----------
    sources:
        Anything :func:`nnpflow.sources.as_source_collection` accepts: paths,
        ``Structure``/``ase.Atoms`` records, source collections (tar archives).
    out_path:
        The database to write (atomically).
    descriptor:
        ``ChebyshevDescriptor`` for features/derivatives; ``None`` writes raw
        structures only (then ``persist_features`` and
        ``persist_force_derivatives`` must be False).
    n_workers:
        Worker processes (each with one torch thread).
    n_shards:
        Shards (default ``n_workers``); with one shard the build runs in this
        process.  The merged order depends on the shard count (see module doc).
    persist_features, persist_force_derivatives, persist_descriptor,
    compression, compression_level, dtype, shared_species, block_structures,
    skip_incompressible:
        As for :func:`nnpflow.database.write_database`.
    max_energy, atomic_energies:
        Build-time filter on the referenced energy per atom (eV/atom); recorded
        in the database and its structures fingerprint.
    on_error:
        ``"raise"`` (first bad source aborts, nothing is written) or ``"skip"``
        (bad sources and structures are listed in ``BuildResult.rejected``).
        Besides unreadable sources, structures with a species outside the
        descriptor's list are bad input.
    check_overlaps:
        Also treat structures with two atoms (periodic images included) at or
        below the descriptor's ``min_cutoff`` as bad input (its features ignore
        such pairs).  ``None`` (default): on whenever a descriptor is given.
        The descriptor's neighbour search reports those pairs while it
        featurises, so the check costs no second search (see
        :func:`~nnpflow.database.write_database`).
    start_method:
        multiprocessing start method (default ``"fork"`` where available).
    """
    from ..sources import Rejection, as_source_collection

    t0 = time.perf_counter()
    if int(n_workers) < 1:
        raise ConfigError(f"n_workers must be >= 1, got {n_workers}")
    n_workers = int(n_workers)
    n_shards = int(n_shards or n_workers)
    if n_shards < 1:
        raise ConfigError(f"n_shards must be >= 1, got {n_shards}")
    if on_error not in ("raise", "skip"):
        raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if descriptor is None and (persist_features or persist_force_derivatives):
        raise ConfigError("persist_features / persist_force_derivatives need a descriptor; "
                          "pass persist_features=False, persist_force_derivatives=False "
                          "for a raw-structure database")
    if check_overlaps is None:
        check_overlaps = descriptor is not None
    if descriptor is None and check_overlaps:
        raise ConfigError("check_overlaps compares distances with the descriptor's "
                          "min_cutoff; a raw-structure build (descriptor=None) has none")
    collection = as_source_collection(sources)
    if n_workers > 1 and not getattr(collection, "supports_parallel_build", False):
        raise ConfigError(f"{collection!r} does not support a parallel build; use n_workers=1")
    EnergyFilter(max_energy, atomic_energies)  # validates the settings early
    out_path = Path(out_path)
    sources_meta = {"content_hashes": collection.content_hashes(),
                    "sources": collection.describe()}
    options = dict(persist_features=persist_features,
                   persist_force_derivatives=persist_force_derivatives,
                   persist_descriptor=persist_descriptor, compression=compression,
                   compression_level=compression_level, dtype=dtype,
                   shared_species=shared_species, block_structures=block_structures,
                   skip_incompressible=skip_incompressible)
    desc_cfg = descriptor.config() if descriptor is not None else None
    desc_dtype = None
    if descriptor is not None and getattr(descriptor, "dtype", None) is not None:
        desc_dtype = str(descriptor.dtype).replace("torch.", "")

    def job(k: int, path: Path) -> _ShardJob:
        return _ShardJob(index=k, n_shards=n_shards, path=str(path), collection=collection,
                         descriptor_config=desc_cfg, descriptor_dtype=desc_dtype,
                         options=options, max_energy=max_energy,
                         atomic_energies=dict(atomic_energies) if atomic_energies else None,
                         on_error=on_error, sources_meta=sources_meta,
                         check_overlaps=bool(check_overlaps))

    bar = None
    if show_progress:
        from tqdm.auto import tqdm
        bar = tqdm(unit="structure", desc=f"building {out_path.name}")
    results: list[dict] = []
    try:
        if n_shards == 1:
            results.append(_run_shard(job(0, out_path), descriptor,
                                      progress=bar.update if bar is not None else None))
        else:
            out_path.parent.mkdir(parents=True, exist_ok=True)
            _clean_stale(out_path.parent, out_path.name)
            tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.shards-{os.getpid()}-",
                                            dir=out_path.parent))
            try:
                shard_paths = [tmp_dir / f"shard_{k}.h5" for k in range(n_shards)]
                jobs = [job(k, p) for k, p in enumerate(shard_paths)]
                if n_workers == 1:
                    for j in jobs:
                        results.append(_run_shard(j, descriptor, progress=bar.update
                                                  if bar is not None else None))
                else:
                    results = _run_pool(jobs, n_workers, start_method, bar)
                from .merge import merge_databases
                merge_databases(shard_paths, out_path, into_first=True)
            finally:
                shutil.rmtree(tmp_dir, ignore_errors=True)
    finally:
        if bar is not None:
            bar.close()
    results.sort(key=lambda r: r["index"])
    from .reader import DatabaseReader
    with DatabaseReader(out_path, cache_size=0) as reader:
        n, fp, sfp = len(reader), reader.fingerprint, reader.structures_fingerprint
    return BuildResult(path=out_path, n_structures=n, n_shards=n_shards,
                       seconds=time.perf_counter() - t0,
                       rejected=[Rejection(*r) for res in results for r in res["rejected"]],
                       filtered=[Rejection(*r) for res in results for r in res["filtered"]],
                       fingerprint=fp, structures_fingerprint=sfp)


def _shard_process(conn, counter, k: int, job: _ShardJob | None) -> None:
    """Entry of a worker process: build shard ``k`` (``job``, or with fork the
    inherited ``_JOBS[k]``) and send ``("ok", result)`` or ``("error", exception)``."""
    _init_worker(counter)
    try:
        result = _run_shard(job if job is not None else _JOBS[k])
        conn.send(("ok", result, None))
    except BaseException as exc:  # noqa: BLE001 - every failure goes to the parent
        import traceback
        text = traceback.format_exc()
        try:
            conn.send(("error", exc, text))
        except Exception:  # an exception that does not pickle: send its text
            conn.send(("error", RuntimeError(f"{type(exc).__name__}: {exc}"), text))
    finally:
        conn.close()


class WorkerTraceback(Exception):
    """The traceback of an unexpected error in a build worker (set as the
    ``__cause__`` of the re-raised exception, so it shows in the parent's)."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f"\n(in the build worker)\n{self.text}"


def _died(k: int, exitcode: int | None) -> RuntimeError:
    how = f"exit code {exitcode}"
    if exitcode is not None and exitcode < 0:
        import signal
        try:
            how = f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            how = f"killed by signal {-exitcode}"
        if exitcode == -9:
            how += ", e.g. by the out-of-memory killer"
    return RuntimeError(f"the worker process building shard {k} died ({how}) before "
                        "finishing; nothing was written")


def _run_pool(jobs: list[_ShardJob], n_workers: int, start_method: str | None, bar) -> list[dict]:
    """Build ``jobs`` in at most ``n_workers`` processes at a time, one process per
    shard.  A worker's exception is re-raised here; a worker that dies without
    answering (killed, crashed) raises ``RuntimeError`` naming the shard; either
    way the other workers are stopped first."""
    from multiprocessing.connection import wait

    if start_method is None:
        start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    global _JOBS
    ctx = mp.get_context(start_method)
    counter = ctx.Value("q", 0)
    waiting = list(range(len(jobs)))
    running: dict[int, tuple[Any, Any]] = {}  # shard -> (process, receiving end)
    results: list[dict] = []
    seen = 0
    try:
        while waiting or running:
            while waiting and len(running) < n_workers:
                k = waiting.pop(0)
                receive, send = ctx.Pipe(duplex=False)
                fork = start_method == "fork"
                _JOBS = jobs if fork else None
                try:
                    proc = ctx.Process(target=_shard_process, name=f"nnpflow-shard-{k}",
                                       args=(send, counter, k, None if fork else jobs[k]),
                                       daemon=True)
                    proc.start()
                finally:
                    _JOBS = None  # a forked worker keeps its copy
                send.close()
                running[k] = (proc, receive)
            ready = set(wait([c for _, c in running.values()]
                             + [p.sentinel for p, _ in running.values()], timeout=0.1))
            for k, (proc, receive) in list(running.items()):
                if receive not in ready and proc.sentinel not in ready:
                    continue
                message = None
                try:
                    if receive.poll():
                        message = receive.recv()
                except (EOFError, OSError):
                    message = None
                if message is None:
                    if proc.is_alive():
                        continue
                    proc.join()
                    del running[k]
                    receive.close()
                    raise _died(k, proc.exitcode)
                proc.join(30)  # it exits right after answering
                if proc.is_alive():  # pragma: no cover - a worker stuck at exit
                    proc.kill()
                    proc.join()
                del running[k]
                receive.close()
                status, payload, text = message
                if status != "ok":
                    if text and not isinstance(payload, NNPFlowError):
                        raise payload from WorkerTraceback(text)
                    raise payload
                results.append(payload)
            if bar is not None:
                value = counter.value
                bar.update(value - seen)
                seen = value
        return results
    finally:
        for proc, receive in running.values():
            if proc.is_alive():
                proc.kill()
        for proc, receive in running.values():
            proc.join()
            receive.close()
