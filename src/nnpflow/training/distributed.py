"""Data-parallel training over several processes (``torch.distributed``).

Inside an initialised process group the ANN trainer splits every global batch
of B structures across the R ranks (rank r takes structures r, r + R, ...),
computes the global loss from all-reduced sums of squared errors and
all-reduces the gradients (a sum).  Because the loss is a root-mean-square over
the *whole* batch, each rank back-propagates the surrogate ``c * SSE_r`` with
``c = d loss / d SSE`` taken from the global sums, so the summed gradient is the
gradient of the single-process loss: R processes give the same training as one
process with the same global batch, up to floating-point summation order.
Gradients are reduced explicitly (not with ``DistributedDataParallel``, whose
hooks do not support the double backward of force training).

:func:`launch` starts R fresh worker interpreters
(``python -m nnpflow.training.distributed``) with a file-based rendezvous,
gloo on CPU and NCCL on CUDA, forwards SIGTERM/SIGINT to them and
turns a worker's graceful stop (exit status 143) into
:class:`~nnpflow.training.interrupt.TrainingInterrupted`.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import torch

from ..errors import ConfigError
from ..safe_write import strict_json
from .interrupt import TrainingInterrupted

#: exit status of a worker that stopped gracefully on SIGTERM
INTERRUPTED_STATUS = 128 + int(signal.SIGTERM)


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


def _worker_main(spec_path: str) -> int:
    """Entry of a worker process (``python -m nnpflow.training.distributed SPEC``)."""
    import importlib
    import json

    import torch.distributed as dist
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    rank = int(os.environ["NNPFLOW_RANK"])
    torch.set_num_threads(max(1, int(spec["threads"])))
    if spec["device_type"] == "cuda":
        torch.cuda.set_device(rank % max(1, torch.cuda.device_count()))
    dist.init_process_group(backend_for(spec["device_type"]),
                            init_method=f"file://{spec['init_file']}", rank=rank,
                            world_size=int(spec["world_size"]))
    module, _, name = spec["target"].partition(":")
    fn = getattr(importlib.import_module(module), name)
    status = 0
    try:
        fn(*spec["args"])
    except TrainingInterrupted:
        status = INTERRUPTED_STATUS
    finally:
        dist.destroy_process_group()
    return status


def launch(target: str, args: Sequence, world_size: int, *, device_type: str = "cpu",
           threads: int = 1, rendezvous_dir: str | os.PathLike | None = None,
           poll_s: float = 0.2) -> None:
    """Run ``target(*args)`` (``"module:function"``; ``args`` JSON-compatible) in
    ``world_size`` worker processes forming one process group.

    Workers are fresh interpreters (``python -m nnpflow.training.distributed``),
    so nothing of the caller's ``__main__`` runs again.  ``threads``: torch
    threads per worker.  SIGTERM/SIGINT are forwarded to the workers; when a
    worker fails the others are stopped.  Raises ``TrainingInterrupted`` when
    the workers stopped on SIGTERM after checkpointing, ``RuntimeError`` (with
    the end of the failing worker's output) when one failed.
    """
    import json
    import subprocess
    import threading
    import time

    if world_size < 1:
        raise ConfigError(f"devices must be >= 1, got {world_size}")
    if device_type == "cuda" and torch.cuda.device_count() < world_size:
        raise ConfigError(f"devices={world_size} CUDA processes requested but torch sees "
                          f"{torch.cuda.device_count()} GPU(s)")
    folder = Path(rendezvous_dir) if rendezvous_dir is not None else Path(tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".distributed-", dir=folder))
    init_file = work / "rendezvous"
    spec = {"target": target, "args": list(args), "world_size": int(world_size),
            "device_type": device_type, "threads": int(threads), "init_file": str(init_file)}
    spec_path = work / "spec.json"
    spec_path.write_text(strict_json(spec, indent=None), encoding="utf-8")
    procs, outputs = [], []
    previous = {}

    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    try:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, forward)
        for rank in range(world_size):
            env = dict(os.environ, NNPFLOW_RANK=str(rank), OMP_NUM_THREADS=str(threads))
            out = open(work / f"rank_{rank}.log", "w+b")
            outputs.append(out)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "nnpflow.training.distributed", str(spec_path)],
                env=env, stdout=out, stderr=subprocess.STDOUT))
        failed = False
        while any(p.poll() is None for p in procs):
            if any(p.returncode not in (None, 0, INTERRUPTED_STATUS) for p in procs):
                failed = True
                break
            time.sleep(poll_s)
        if failed:  # the others usually fail at their next collective; then stop them
            deadline = time.monotonic() + 10.0
            while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
                time.sleep(poll_s)
            for p in procs:
                if p.poll() is None:
                    p.terminate()
        codes = [p.wait() for p in procs]
        bad = [(r, c) for r, c in enumerate(codes) if c not in (0, INTERRUPTED_STATUS)]
        if bad:
            reports = []
            for rank, code in bad:
                outputs[rank].seek(0)
                tail = outputs[rank].read().decode("utf-8", "replace")[-3000:]
                reports.append(f"rank {rank} of {world_size} exited with status {code}; its "
                               f"output ends with:\n{tail}")
            raise RuntimeError("distributed training failed:\n" + "\n".join(reports))
        if any(c == INTERRUPTED_STATUS for c in codes):
            raise TrainingInterrupted("distributed training stopped by SIGTERM after writing "
                                      "its checkpoint; rerun to resume")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if outputs:  # what rank 0 printed (warnings, errors) reaches the caller's stderr
            outputs[0].seek(0)
            text = outputs[0].read().decode("utf-8", "replace")
            if text:
                sys.stderr.write(text)
        for out in outputs:
            out.close()
        shutil.rmtree(work, ignore_errors=True)


def local_device(device: torch.device) -> torch.device:
    """The device of this rank: ``cuda:<current>`` for CUDA, else ``device``."""
    if device.type == "cuda" and is_distributed():
        return torch.device("cuda", torch.cuda.current_device())
    return device


if __name__ == "__main__":  # a worker of launch()
    sys.exit(_worker_main(sys.argv[1]))
