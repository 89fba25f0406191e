"""Scratch buffers that a descriptor reuses from one batch to the next.

A descriptor batch on the CPU needs a few large temporaries (the dense
neighbour search's (B, 3, n, n) slabs, the Chebyshev table of every edge and
its transpose: tens of MB for ~30 cells of 108 atoms).  Freshly allocated and
freed every batch, glibc hands such blocks back to the system and the next
batch page-faults on new memory, which costs a quarter of the batch on a busy
virtual machine unless the whole process changes its allocator settings
(:func:`nnpflow.runtime.keep_freed_memory`).  A :class:`Workspace` keeps them
instead: allocated once, grown when a larger batch needs more, reused by every
later batch of the same descriptor.  Buffers taken with :meth:`Workspace.take`
never leave the computation that took them (results are always fresh tensors);
buffers lent with :meth:`Workspace.lend` belong to one object (a batch's cached
force-contraction coefficients) until it is garbage-collected, then serve the
next one.

Only CPU tensors are kept: on CUDA, torch's caching allocator already reuses
device memory.  Buffers are per thread (two threads featurising with one
descriptor do not share scratch memory) and are not pickled (a descriptor sent
to a worker process starts with an empty workspace).
"""

from __future__ import annotations

import math
import threading
import weakref

import torch

__all__ = ["Workspace"]

#: lent buffers of one name kept for reuse once their owners are gone
_POOL = 2


def _give_back(free: list, buf: torch.Tensor) -> None:
    if len(free) < _POOL:
        free.append(buf)

#: growth factor when a buffer must grow (fewer regrowths for slowly growing batches)
_GROWTH = 1.25


class Workspace:
    """Named scratch buffers, reused across calls (CPU only, per thread)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _buffers(self) -> dict:
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = {}
        return buffers

    def take(self, name: str, shape: tuple[int, ...], dtype: torch.dtype,
             device: torch.device) -> torch.Tensor:
        """An uninitialised contiguous tensor of ``shape``, backed by the buffer
        ``name`` (grown as needed).  Valid until the next ``take`` of the same
        name in this thread.  Off the CPU: a fresh ``torch.empty``."""
        if (device.type if isinstance(device, torch.device) else torch.device(device).type
                ) != "cpu":
            return torch.empty(shape, dtype=dtype, device=device)
        n = math.prod(shape)
        try:
            buffers = self._local.buffers
        except AttributeError:
            buffers = self._buffers()
        key = (name, dtype)
        buf = buffers.get(key)
        if buf is None or buf.numel() < n:
            size = n if buf is None else max(n, int(buf.numel() * _GROWTH))
            buffers[key] = buf = None           # free the old one before allocating
            buf = buffers[key] = torch.empty(size, dtype=dtype)
        return buf[:n].view(shape)

    def resizable(self, name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A tensor kept under ``name`` for ``out=`` arguments of operations that
        resize their output (e.g. ``torch.nonzero``): its storage grows as needed
        and is reused.  Valid until the next ``resizable`` of the same name in
        this thread.  Off the CPU: a fresh empty tensor."""
        device = torch.device(device)
        if device.type != "cpu":
            return torch.empty(0, dtype=dtype, device=device)
        buffers = self._buffers()
        key = ("resizable:" + name, dtype)
        buf = buffers.get(key)
        if buf is None:
            buf = buffers[key] = torch.empty(0, dtype=dtype)
        return buf.resize_(0)          # no elements (so torch resizes it), storage kept

    def lend(self, name: str, shape: tuple[int, ...], dtype: torch.dtype,
             device: torch.device, owner: object) -> torch.Tensor:
        """An uninitialised contiguous tensor of ``shape`` that ``owner`` keeps for
        its lifetime (e.g. the coefficients a batch's force contraction caches):
        its memory returns to a small pool of this workspace when ``owner`` is
        garbage-collected, for the next owner of the same ``name`` (the next
        batch) to reuse.  Owners alive at the same time get separate memory.  Off
        the CPU: a fresh ``torch.empty``."""
        if (device.type if isinstance(device, torch.device) else torch.device(device).type
                ) != "cpu":
            return torch.empty(shape, dtype=dtype, device=device)
        n = math.prod(shape)
        free = self._buffers().setdefault(("lend:" + name, dtype), [])
        buf = None
        for i, candidate in enumerate(free):
            if candidate.numel() >= n:
                buf = free.pop(i)
                break
        if buf is None:
            if free:                          # too small for this batch: let it go
                free.pop(0)
            buf = torch.empty(max(n, int(n * _GROWTH) if free else n), dtype=dtype)
        weakref.finalize(owner, _give_back, free, buf)
        return buf[:n].view(shape)

    def nbytes(self) -> int:
        """Bytes held by this thread's buffers (lent ones once given back)."""
        total = 0
        for value in self._buffers().values():
            for b in (value if isinstance(value, list) else [value]):
                total += b.untyped_storage().nbytes()
        return total

    def clear(self) -> None:
        """Release this thread's buffers."""
        self._buffers().clear()

    def __getstate__(self) -> dict:
        return {"buffers": None}         # (a non-empty state: __setstate__ always runs)

    def __setstate__(self, state: dict) -> None:
        self._local = threading.local()
