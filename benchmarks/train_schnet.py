"""SchNet training throughput: structures/s of optimiser steps with forces.

    python benchmarks/train_schnet.py [--batch-sizes 8,64] [--threads 1] [--conventional] [--lazy]
    python benchmarks/train_schnet.py --device cuda --batch-sizes 8,64,512 [--cuda-graphs]

The model is the spec-004 SchNet stack (RangeSeparation, GaussianSmearing,
RandomAtomEmbedding, Core with 4 interactions and 128 channels, 128 Gaussians,
cutoff 5 Å, AtomicAffine, EnergyReduce, Force) trained on energies and forces
(loss: rmse E + 10 rmse Fa, Adam) of 9-atom molecules (ethanol, randomly
displaced): the model step the training loop makes (:func:`optimizer_step` below:
forward with forces, :class:`~nnpflow.training.losses.WeightedLoss`, backward,
Adam from the loop's builder :func:`nnpflow.training.optimizers.make_optimizer`) on
:class:`nnpflow.models.batch.PackedGraphs` batches, without the loop's per-step
bookkeeping (which ``benchmarks/schnet_memory.py`` times through the train stage),
so that the step can be captured in a CUDA graph.  Each step includes the batch
assembly.  Reported: the median and the best of ``--repeats`` timing
windows (the best is closest to a quiet machine), in wall time.
``--conventional`` also times :class:`ConventionalSchNet` (the same model written
the usual way: directed pair list with both directions, one ``nn.Linear`` filter
network per interaction, no other changes) in interleaved windows, so the ratio
between the two holds on a busy machine too.  ``--lazy`` likewise times the
batches the trainer reads from a database (:class:`nnpflow.models.lazy_graphs.LazyGraphs`,
its cache filled) against the packed in-memory batches.

Reference figures (issue 6): on one CPU core Enerzyme's SchNet reaches 227 and
PyTorch Geometric's 206 structures/s at batch 8 (target: 2x Enerzyme); on an
H100 PyTorch Geometric reaches 520 (batch 8), 5,018 (batch 64) and 35,617
(batch 512) structures/s (target: 3x at batch 64).

On CUDA all batches are assembled on the device before timing and the step
makes no host synchronisation; ``--cuda-graphs`` captures the whole step
(forward, force gradient, backward, Adam with ``capturable=True``) in one CUDA
graph and replays it after copying each batch into the static inputs (all
batches have the same shapes: same molecule, all pairs within the cutoff).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from nnpflow.models.batch import packed_for_model  # noqa: E402
from nnpflow.models.stack import LayerStack  # noqa: E402
from nnpflow.runtime import configure_threads, resolve_device  # noqa: E402
from nnpflow.structure import Structure  # noqa: E402
from nnpflow.runtime import keep_freed_memory  # noqa: E402
from nnpflow.training.losses import WeightedLoss  # noqa: E402
from nnpflow.training.optimizers import make_optimizer  # noqa: E402

BUILD = {"dim_embedding": 128, "num_rbf": 128, "max_Za": 94, "cutoff_sr": 5.0}
LAYERS = [{"name": "RangeSeparation"}, {"name": "GaussianSmearing"},
          {"name": "RandomAtomEmbedding"},
          {"name": "Core", "params": {"num_interactions": 4, "hidden_channels": 128}},
          {"name": "AtomicAffine"}, {"name": "EnergyReduce"}, {"name": "Force"}]


def optimizer_step(model: LayerStack, loss_fn: WeightedLoss, optimizer: torch.optim.Optimizer,
                   params: list[torch.Tensor], inputs: dict, targets: dict) -> torch.Tensor:
    """One optimiser step on a batch; returns the (detached) batch loss.  Gradients
    for the trainable parameters only (the positions require gradients for the
    forces); no host synchronisation, so the step can be captured in a CUDA graph."""
    out = model(inputs)
    loss, _ = loss_fn(out, targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward(inputs=params)
    optimizer.step()
    return loss.detach()


def molecules(n: int, seed: int = 0) -> list[Structure]:
    from ase.build import molecule

    rng = np.random.default_rng(seed)
    base = molecule("CH3CH2OH")
    out = []
    for _ in range(n):
        pos = base.positions + rng.normal(0, 0.05, base.positions.shape)
        out.append(Structure(positions=pos, species=base.get_chemical_symbols(),
                             energy=float(rng.normal()), forces=rng.normal(size=pos.shape)))
    return out


class ConventionalSchNet(torch.nn.Module):
    """A conventional SchNet for comparison, written here in the usual structure of
    PyTorch Geometric's and Enerzyme's implementations: a directed pair list holding
    both directions, one ``nn.Linear`` filter network per interaction evaluated on
    every directed pair, gather/scatter messages; same sizes and same model."""

    def __init__(self, hidden: int = 128, n_rbf: int = 128, cutoff: float = 5.0, n_int: int = 4):
        super().__init__()
        from torch import nn

        self.cutoff = cutoff
        self.embedding = nn.Embedding(100, hidden)
        self.register_buffer("centers", torch.linspace(0.0, cutoff, n_rbf))
        self.coeff = -0.5 / float(self.centers[1] - self.centers[0]) ** 2
        self.filters = nn.ModuleList(nn.Sequential(nn.Linear(n_rbf, hidden), nn.Softplus(),
                                                   nn.Linear(hidden, hidden)) for _ in range(n_int))
        self.lin1 = nn.ModuleList(nn.Linear(hidden, hidden, bias=False) for _ in range(n_int))
        self.lin2 = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(n_int))
        self.lin = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(n_int))
        self.out1, self.out2 = nn.Linear(hidden, hidden // 2), nn.Linear(hidden // 2, 1)
        self.act = nn.Softplus()
        self.outputs = ["E", "Fa"]

    def forward(self, batch):
        pos = batch["Ra"].detach().requires_grad_(True)
        i = torch.cat((batch["idx_i_sr"], batch["idx_j_sr"]))  # both directions
        j = torch.cat((batch["idx_j_sr"], batch["idx_i_sr"]))
        d = (pos[j] - pos[i]).norm(dim=-1)
        rbf = torch.exp(self.coeff * (d.unsqueeze(-1) - self.centers) ** 2)
        cut = 0.5 * (torch.cos(d * torch.pi / self.cutoff) + 1.0)
        x = self.embedding(batch["Za"])
        for filt, lin1, lin2, lin in zip(self.filters, self.lin1, self.lin2, self.lin):
            w = filt(rbf) * cut.unsqueeze(-1)
            msg = lin1(x)[j] * w
            agg = torch.zeros_like(x).index_add_(0, i, msg)
            x = x + lin(self.act(lin2(agg)))
        ea = self.out2(self.act(self.out1(x))).squeeze(-1)
        energy = ea.new_zeros(batch["N"].shape[0]).index_add_(0, batch["batch_seg"], ea)
        (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=True)
        return {"E": energy, "Fa": -grad}


def lazy_data(structures: list[Structure], batch_size: int, n_batches: int):
    """The structures in a temporary database, read per batch (LazyGraphs, as the
    trainer reads a data set on disk), its cache filled by one pass (the state from
    the second epoch on when the data set fits the cache)."""
    import atexit
    import shutil
    import tempfile
    from pathlib import Path

    from nnpflow.database import write_database
    from nnpflow.models.lazy_graphs import lazy_for_model
    folder = Path(tempfile.mkdtemp(prefix="nnpflow-bench-"))
    atexit.register(shutil.rmtree, folder, True)
    write_database(folder / "db.h5", structures)
    data = lazy_for_model(folder / "db.h5", LayerStack("SchNet", LAYERS, BUILD),
                          targets=("E", "Fa"))
    for k in range(n_batches):
        data.batch(np.arange(k * batch_size, (k + 1) * batch_size))
    return data


def make_step(batch_size: int, device: torch.device, cuda_graphs: bool, dtype: torch.dtype,
              conventional: bool = False, lazy: bool = False):
    """A function ``step(k)`` doing the k-th optimiser step of one set-up."""
    torch.manual_seed(0)
    model = (ConventionalSchNet() if conventional else LayerStack("SchNet", LAYERS, BUILD))
    model = model.to(device=device, dtype=dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    n_batches = 16
    if lazy:
        data = lazy_data(molecules(batch_size * n_batches), batch_size, n_batches)
    else:
        data = packed_for_model(molecules(batch_size * n_batches),
                                LayerStack("SchNet", LAYERS, BUILD), targets=("E", "Fa"))
    batches = [data.batch(np.arange(k * batch_size, (k + 1) * batch_size), dtype=dtype,
                          device=device) for k in range(n_batches)]
    loss_fn = WeightedLoss({"rmse": {"E": 1.0, "Fa": 10.0}})
    if cuda_graphs:
        optimizer = torch.optim.Adam(params, lr=torch.tensor(1e-4, device=device), capturable=True)
        static_in = {k: v.clone() for k, v in batches[0][0].items()}
        static_tg = {k: v.clone() for k, v in batches[0][1].items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                optimizer_step(model, loss_fn, optimizer, params, static_in, static_tg)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            optimizer_step(model, loss_fn, optimizer, params, static_in, static_tg)

        def step(k):
            inputs, targets = batches[k % n_batches]
            for key, v in inputs.items():
                static_in[key].copy_(v, non_blocking=True)
            for key, v in targets.items():
                static_tg[key].copy_(v, non_blocking=True)
            graph.replay()
        return step
    optimizer = make_optimizer("adam", {}, params, 1e-4)
    if device.type == "cuda":
        def step(k):
            optimizer_step(model, loss_fn, optimizer, params, *batches[k % n_batches])
    else:  # CPU: assemble each batch inside the timed step, as the trainer does
        def step(k):
            idx = np.arange((k % n_batches) * batch_size, (k % n_batches + 1) * batch_size)
            optimizer_step(model, loss_fn, optimizer, params, *data.batch(idx, dtype=dtype))
    return step


def measure(steppers: dict, batch_size: int, device: torch.device, steps: int,
            repeats: int) -> dict[str, list[float]]:
    """structures/s per timing window, windows of the set-ups interleaved."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for step in steppers.values():
        for k in range(5):
            step(k)
    sync()
    rates = {name: [] for name in steppers}
    for _ in range(repeats):
        for name, step in steppers.items():
            t0 = time.perf_counter()
            for k in range(steps):
                step(k)
            sync()
            rates[name].append(steps * batch_size / (time.perf_counter() - t0))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", default="8,64")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None,
                        help="steps per timing window (default: 10 on CPU, 50 on CUDA)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="capture each training step in a CUDA graph (CUDA only)")
    parser.add_argument("--conventional", action="store_true",
                        help="also time a conventional SchNet implementation (full directed "
                             "pair list, nn.Linear filters per interaction) under the same "
                             "conditions, for a ratio that machine noise does not distort")
    parser.add_argument("--lazy", action="store_true",
                        help="also time batches read from a database (LazyGraphs, cache "
                             "filled) in interleaved windows, against the packed in-memory "
                             "batches")
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.cuda_graphs and device.type != "cuda":
        parser.error("--cuda-graphs needs --device cuda")
    configure_threads(args.threads)
    if device.type == "cpu":
        keep_freed_memory()
    steps = args.steps or (50 if device.type == "cuda" else 10)
    dtype = getattr(torch, args.dtype)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"CPU, {torch.get_num_threads()} thread(s)")
    mode = " with CUDA graphs" if args.cuda_graphs else ""
    print(f"SchNet (4 x 128, 128 Gaussians, 5 A) training with forces on 9-atom molecules, "
          f"{where}{mode}, {args.dtype}, torch {torch.__version__}")
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        steppers = {"nnpflow": make_step(bs, device, args.cuda_graphs, dtype)}
        if args.conventional:
            steppers["conventional"] = make_step(bs, device, False, dtype, conventional=True)
        if args.lazy:
            steppers["lazy"] = make_step(bs, device, args.cuda_graphs, dtype, lazy=True)
        rates = measure(steppers, bs, device, steps, args.repeats)
        ours = rates["nnpflow"]
        print(f"  batch {bs:4d}: {statistics.median(ours):9.1f} structures/s (median of "
              f"{args.repeats} windows of {steps} steps), best {max(ours):9.1f}")
        if args.lazy:
            lazy = rates["lazy"]
            ratios = [a / b for a, b in zip(lazy, ours)]
            print(f"    read per batch from a database (LazyGraphs): "
                  f"{statistics.median(lazy):9.1f} structures/s, best {max(lazy):9.1f}; "
                  f"lazy / packed in the same windows: median {statistics.median(ratios):.2f}, "
                  f"best-to-best {max(lazy) / max(ours):.2f}")
        if args.conventional:
            conv = rates["conventional"]
            ratios = [a / b for a, b in zip(ours, conv)]
            print(f"    conventional implementation: {statistics.median(conv):9.1f} structures/s, "
                  f"best {max(conv):9.1f}; nnpflow / conventional in the same windows: "
                  f"median {statistics.median(ratios):.2f}, "
                  f"best-to-best {max(ours) / max(conv):.2f}")


if __name__ == "__main__":
    main()
