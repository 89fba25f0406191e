"""Issue 8, memory: a dataset's memory is bounded by ``in_memory_cache_size``, not by
the size of its database.

The decoded-block cache of every process (the main one and each DataLoader worker)
never holds more than the blocks ``in_memory_cache_size`` structures need, however
many samples are read; and the memory a process gains reading every sample of a
database four times larger is the same, to a small margin, as for the smaller one,
although the larger database decodes to tens of MB more.  (A test cannot use a
database larger than RAM; what it can show is that nothing grows with the
database.)  Peak RSS of a 50,000-structure build is ``benchmarks/memory.py``.
"""

from __future__ import annotations

import ctypes
import math
import multiprocessing as mp
import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from nnpflow import Structure
from nnpflow.database import write_database
from nnpflow.datasets import HDF5StructureDataset
from nnpflow.descriptors import ChebyshevDescriptor

BLOCK = 16          # structures per stored block (the reader's decode unit)
N_ATOMS = 32
#: many features per atom, no neighbours within the cutoff: features cost nothing
#: to compute but decode to N_ATOMS * 124 * 4 bytes = 15.5 KiB per structure
DESCRIPTOR = dict(species=["Cu", "Au"], rad_order=40, rad_cutoff=1.5, ang_order=20,
                  ang_cutoff=1.2, min_cutoff=0.55)
SMALL, LARGE = 1200, 4800


def grid_structures(n: int):
    """``n`` 32-atom structures on a 2 Å grid (no pair within the 1.5 Å cutoff)."""
    grid = np.stack(np.meshgrid(np.arange(4), np.arange(4), np.arange(2), indexing="ij"),
                    -1).reshape(-1, 3) * 2.0
    rng = np.random.default_rng(0)
    for i in range(n):
        species = np.where(rng.random(N_ATOMS) < 0.5, "Au", "Cu").tolist()
        yield Structure(positions=grid + rng.uniform(-0.1, 0.1, grid.shape), species=species,
                        cell=np.diag([8.0, 8.0, 4.0]), energy=float(-3.0 * N_ATOMS + i * 1e-3),
                        forces=rng.normal(size=(N_ATOMS, 3)), name=f"g{i:05d}")


@pytest.fixture(scope="module")
def databases(tmp_path_factory):
    """A database of 1200 and one of 4800 structures (features persisted)."""
    d = ChebyshevDescriptor(**DESCRIPTOR)
    folder = tmp_path_factory.mktemp("mem")
    out = {}
    for n in (SMALL, LARGE):
        out[n] = write_database(folder / f"db{n}.h5", grid_structures(n), descriptor=d,
                                persist_features=True, block_structures=BLOCK)
    return out


def cached(reader) -> tuple[int, int, int]:
    """(cached blocks, structures in them, bytes of their arrays) of this process's
    reader (its private LRU caches of decoded blocks and derivative blocks)."""
    blocks = list(reader._blocks._data.values()) + list(reader._dblocks._data.values())
    n_structures = sum(b.stop - b.start for b in blocks)
    nbytes = 0
    for b in blocks:
        for value in vars(b).values():
            arrays = value.values() if isinstance(value, dict) else [value]
            nbytes += sum(a.nbytes for a in arrays if isinstance(a, np.ndarray))
    return len(blocks), n_structures, nbytes


class Probe(Dataset):
    """Reads a sample and reports the cache of the process that read it."""

    def __init__(self, ds: HDF5StructureDataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        sample = self.ds[i]
        return (i, os.getpid(), int(sample["features"].shape[0])) + cached(self.ds.reader)


def _keep(batch):
    return batch


@pytest.mark.parametrize("cache_size", [1, BLOCK, 40])
@pytest.mark.parametrize("workers", [0, 2])
def test_the_block_cache_of_every_process_stays_within_in_memory_cache_size(
        databases, cache_size, workers):
    ds = HDF5StructureDataset(None, databases[SMALL], mode="load",
                              in_memory_cache_size=cache_size)
    ds.set_force_selection(False)  # energy view: features only
    max_blocks = math.ceil(cache_size / BLOCK)
    block_bytes = BLOCK * N_ATOMS * (ds.descriptor.n_features * 4 + 3 * 8 * 2 + 1)
    loader = DataLoader(Probe(ds), batch_size=32, shuffle=True, num_workers=workers,
                        collate_fn=_keep, generator=torch.Generator().manual_seed(cache_size))
    seen, pids = set(), set()
    for batch in loader:
        for i, pid, n_atoms, blocks, structures, nbytes in batch:
            seen.add(i)
            pids.add(pid)
            assert n_atoms == N_ATOMS
            assert 1 <= blocks <= max_blocks, (blocks, max_blocks)
            assert structures <= max_blocks * BLOCK
            assert nbytes <= max_blocks * block_bytes + 4096 * max_blocks, nbytes
    assert len(seen) == SMALL
    assert len(pids) == max(1, workers)  # the workers did the reading
    ds.close()


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _heap_in_use():
    """Bytes the C heap has handed out and not taken back (glibc ``mallinfo2``:
    ``uordblks + hblkhd``, all arenas): numpy's array data, HDF5's buffers and
    caches.  Unlike the resident set size it does not hide new allocations in
    free pages the process already had (importing torch leaves tens of MB)."""
    try:
        libc = ctypes.CDLL(None)
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2

    def in_use() -> int:
        info = mallinfo2()
        return int(info.uordblks + info.hblkhd)
    return in_use


def _heap_growth(path: str, cache_size: int, queue) -> None:
    """In a child process: C-heap bytes gained while reading every sample of
    ``path`` in random order, over the state after a warm-up of a few blocks."""
    in_use = _heap_in_use()
    ds = HDF5StructureDataset(None, path, mode="load", in_memory_cache_size=cache_size)
    ds.set_force_selection(False)
    for i in range(3 * BLOCK):  # warm up: handles, index, a few blocks
        ds[i]
    base = peak = in_use()
    for k, i in enumerate(np.random.default_rng(0).permutation(len(ds))):
        sample = ds[int(i)]
        assert sample["features"].shape[0] == N_ATOMS
        if k % 25 == 0:
            peak = max(peak, in_use())
    peak = max(peak, in_use())
    ds.close()
    queue.put(peak - base)


def heap_growth(path, cache_size: int) -> int:
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_heap_growth, args=(str(path), cache_size, queue))
    proc.start()
    growth = queue.get(timeout=300)
    proc.join(60)
    assert proc.exitcode == 0
    return growth


def _n_datasets(path) -> int:
    import h5py
    found = []
    with h5py.File(path, "r") as h5:
        h5.visititems(lambda name, obj: found.append(name)
                      if isinstance(obj, h5py.Dataset) else None)
    return len(found)


@pytest.mark.skipif(_heap_in_use() is None or "fork" not in mp.get_all_start_methods(),
                    reason="needs glibc's mallinfo2 and fork")
def test_memory_of_reading_every_sample_does_not_grow_with_the_database(databases):
    """Reading all of a database 4x larger costs about the same memory: the difference
    stays below a quarter of the extra feature data it decodes (3600 x 15.5 KiB =
    54 MiB; measured about 3 MiB: HDF5's chunk caches filling to their fixed size and
    the per-structure index), and the total stays within the block cache plus HDF5's
    fixed chunk cache per dataset (2 MiB each) plus the index.  The control: with a
    cache as large as the database, memory grows by at least half the data read, so
    the measurement would see a cache that is not bounded."""
    from nnpflow.database.reader import RDCC_NBYTES
    per_structure = N_ATOMS * ChebyshevDescriptor(**DESCRIPTOR).n_features * 4
    extra = (LARGE - SMALL) * per_structure
    small = heap_growth(databases[SMALL], 64)
    large = heap_growth(databases[LARGE], 64)
    assert large - small < 0.25 * extra, (small, large, extra)
    block_bytes = BLOCK * (per_structure + N_ATOMS * 64 + 256)
    bound = (math.ceil(64 / BLOCK) * block_bytes + _n_datasets(databases[LARGE]) * RDCC_NBYTES
             + 128 * LARGE)
    assert large < bound, (large, bound)
    unbounded = heap_growth(databases[SMALL], SMALL)
    assert unbounded - small > 0.5 * SMALL * per_structure, (small, unbounded)
