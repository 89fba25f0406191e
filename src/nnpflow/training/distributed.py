"""Data-parallel training over several processes (``torch.distributed``).

Inside an initialised process group the training loop splits every global batch
of B structures across the R ranks (rank r takes structures r, r + R, ...),
computes the global loss from all-reduced sums of squared errors and
all-reduces the gradients (a sum).  Because the loss is a root-mean-square over
the *whole* batch, each rank back-propagates the surrogate ``c * SSE_r`` with
``c = d loss / d SSE`` taken from the global sums, so the summed gradient is the
gradient of the single-process loss: R processes give the same training as one
process with the same global batch, up to floating-point summation order.
Gradients are reduced explicitly (not with ``DistributedDataParallel``, whose
hooks do not support the double backward of force training).

:func:`launch` starts R worker processes with ``torch.multiprocessing.spawn``
and a file-based rendezvous, gloo on CPU and NCCL on CUDA, forwards
SIGTERM/SIGINT to them and turns the workers' graceful stop into
:class:`~nnpflow.training.interrupt.TrainingInterrupted`.  The training loop
(:mod:`~nnpflow.training.loop`) does the same for every model family (the
layer-stack task sums its per-term errors over ranks the same way).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Sequence

import torch

from ..errors import ConfigError
from .interrupt import TrainingInterrupted

def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` outside a process group."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_distributed() -> bool:
    return rank_and_world()[1] > 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op in one process); returns ``tensor``."""
    if is_distributed():
        import torch.distributed as dist
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_gradients(params: Sequence[torch.Tensor]) -> None:
    """Sum the gradients of ``params`` over ranks (missing gradients count as zero)."""
    if not is_distributed():
        return
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    flat = torch.cat([g.reshape(-1) for g in grads])
    all_reduce_sum(flat)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True when ``flag`` is true on any rank."""
    if not is_distributed():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    all_reduce_sum(t)
    return bool(t.item() > 0)


def barrier() -> None:
    if is_distributed():
        import torch.distributed as dist
        dist.barrier()


def backend_for(device_type: str) -> str:
    """``nccl`` for CUDA, ``gloo`` otherwise."""
    return "nccl" if device_type == "cuda" else "gloo"


def _run_rank(rank: int, spec: dict) -> None:
    """One worker of :func:`launch` (started by ``torch.multiprocessing.spawn``):
    join the process group, run the target; a graceful stop on SIGTERM
    (``TrainingInterrupted``) leaves a marker for the launcher and ends normally,
    so that no rank is killed while rank 0 writes its checkpoint."""
    import importlib

    import torch.distributed as dist
    torch.set_num_threads(max(1, int(spec["threads"])))
    if spec["device_type"] == "cuda":
        torch.cuda.set_device(rank % max(1, torch.cuda.device_count()))
    dist.init_process_group(backend_for(spec["device_type"]),
                            init_method=f"file://{spec['init_file']}", rank=rank,
                            world_size=int(spec["world_size"]))
    module, _, name = spec["target"].partition(":")
    fn = getattr(importlib.import_module(module), name)
    try:
        fn(*spec["args"])
    except TrainingInterrupted:
        (Path(spec["work"]) / f"interrupted_{rank}").touch()
    except BaseException:
        # the time tells the launcher which rank failed first (the others then fail
        # at their next collective, their peer gone)
        import traceback
        (Path(spec["work"]) / f"failed_{rank}").write_text(
            f"{time.time()!r}\n{traceback.format_exc()}", encoding="utf-8")
        raise
    finally:
        dist.destroy_process_group()


def launch(target: str, args: Sequence, world_size: int, *, device_type: str = "cpu",
           threads: int = 1, rendezvous_dir: str | os.PathLike | None = None,
           poll_s: float = 0.2) -> None:
    """Run ``target(*args)`` (``"module:function"``; ``args`` picklable) in
    ``world_size`` worker processes forming one process group.

    Workers are started by ``torch.multiprocessing.spawn``: fresh interpreters
    that import this module and the target's, never the caller's ``__main__``
    (a Snakemake script's top level or an unguarded user script does not run
    again), with a file-based rendezvous in ``rendezvous_dir``, gloo on CPU and NCCL on CUDA, ``threads``
    torch threads each.  They write to this process's stdout and stderr (a
    stage's rule log).  Inside a SLURM allocation they run on the allocated
    node like any child process.  SIGTERM/SIGINT are forwarded to the workers;
    when a worker fails the others are stopped.  Raises ``TrainingInterrupted``
    when the workers stopped on SIGTERM after checkpointing, ``RuntimeError``
    (naming the rank, with the end of its traceback) when one failed.
    """
    import threading

    import torch.multiprocessing as mp

    if world_size < 1:
        raise ConfigError(f"devices must be >= 1, got {world_size}")
    if device_type == "cuda" and torch.cuda.device_count() < world_size:
        raise ConfigError(f"devices={world_size} CUDA processes requested but torch sees "
                          f"{torch.cuda.device_count()} GPU(s)")
    folder = Path(rendezvous_dir) if rendezvous_dir is not None else Path(tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".distributed-", dir=folder))
    spec = {"target": target, "args": list(args), "world_size": int(world_size),
            "device_type": device_type, "threads": int(threads),
            "init_file": str(work / "rendezvous"), "work": str(work)}
    context = None
    received: list[int] = []
    previous = {}

    def forward(signum, frame):
        received.append(signum)
        for p in (context.processes if context is not None else []):
            if p.is_alive():
                os.kill(p.pid, signum)

    env_threads = os.environ.get("OMP_NUM_THREADS")
    try:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, forward)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # inherited by the workers
        # the workers run _run_rank of this module only: multiprocessing would
        # otherwise import the caller's __main__ in each of them (a Snakemake
        # script's top level, which would run the stage again)
        main = sys.modules["__main__"]
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            context = mp.spawn(_run_rank, args=(spec,), nprocs=world_size, join=False)
        finally:
            sys.modules["__main__"] = main
            if env_threads is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = env_threads
        for signum in received:  # a signal while the workers started
            forward(signum, None)
        try:
            while not context.join(timeout=poll_s):
                pass
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
            raise RuntimeError("distributed training failed:\n"
                               + _failure_report(work, exc, world_size)) from None
        if any(work.glob("interrupted_*")):
            raise TrainingInterrupted("distributed training stopped by SIGTERM after writing "
                                      "its checkpoint; rerun to resume")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if context is not None:
            for p in context.processes:
                if p.is_alive():
                    p.kill()
                    p.join()
        shutil.rmtree(work, ignore_errors=True)


def _failure_report(work: Path, exc: Exception, world_size: int) -> str:
    """Each failed rank with the end of its traceback, the first to fail first (from
    the workers' ``failed_<rank>`` files), else what ``torch.multiprocessing`` saw."""
    failed = []
    for path in work.glob("failed_*"):
        when, _, text = path.read_text(encoding="utf-8").partition("\n")
        failed.append((float(when), int(path.name.split("_")[1]), text))
    if failed:
        return "\n".join(f"rank {rank} of {world_size} exited with status 1; its output "
                         f"ends with:\n{text[-3000:]}" for _, rank, text in sorted(failed))
    how = (f"was killed by {exc.signal_name}" if getattr(exc, "signal_name", None)
           else f"exited with status {getattr(exc, 'exit_code', 1)}")
    return (f"rank {exc.error_index} of {world_size} {how} (its output is above, in this "
            "process's stderr)")


def local_device(device: torch.device) -> torch.device:
    """The device of this rank: ``cuda:<current>`` for CUDA, else ``device``."""
    if device.type == "cuda" and is_distributed():
        return torch.device("cuda", torch.cuda.current_device())
    return device

