"""Throughput of the Chebyshev descriptor (features, features + derivatives,
force contraction) on 108-atom Cu/Au fcc cells and on the TiO2 reference set.

    python benchmarks/featurize.py                       # one CPU thread
    python benchmarks/featurize.py --device cuda --batch-sizes 1,32,256
    python benchmarks/featurize.py --sessions 5          # plain session vs tuned

Prints atoms/s (best of --repeats, wall clock) for each dtype and batch size,
the force contraction of a training batch, and the stored size of the compact
derivatives.  By default freed memory is kept in the process
(``nnpflow.runtime.keep_freed_memory``); ``--no-keep-freed-memory``
measures glibc's default behaviour.

``--sessions N`` measures what a user's own script gets: N rounds, each
starting two fresh Python processes one after the other -- a "plain session"
(the public API as imported, glibc's default allocator settings) and a "tuned"
one (``keep_freed_memory()`` first, as the benchmarks and workflow jobs do) --
and prints the medians of both side by side, with the per-structure call
(``featurize_with_derivatives``, what ``StructureDataset`` uses) against the
batched one.  The Cu/Au cells are generated with
ASE: 3x3x3 conventional fcc cells (108 atoms, half Cu, half Au), random strain
(+-3 %), rattled (0.1 Å) and with 20 % of the atoms moved by random lattice
vectors (outside the home cell).  Settings: species Cu, Au; rad_order 10,
rad_cutoff 6.0 Å, ang_order 3, ang_cutoff 4.0 Å (TiO2: Ti, O; 10, 6.0, 3, 3.5,
min_cutoff 0.5, as in aenet's examples).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--structures", type=int, default=64, help="Cu/Au cells (default 64)")
    p.add_argument("--batch-sizes", default="1,32", help="structures per call (default 1,32)")
    p.add_argument("--dtypes", default="float64,float32", help="default float64,float32")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats; best is shown")
    p.add_argument("--tio2", default=None,
                   help="folder of TiO2 XSF files (default ../shared/data/xsf-TiO2 if present)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-keep-freed-memory", action="store_true",
                   help="leave glibc's malloc trimming as is (default: keep freed memory "
                        "in the process, nnpflow.runtime.keep_freed_memory)")
    p.add_argument("--sessions", type=int, default=0, metavar="N",
                   help="plain session vs tuned: N interleaved rounds of fresh processes, "
                        "medians (Cu/Au cells, first dtype, largest batch size)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="--sessions: time calls by wall clock (default) or by the process's "
                        "CPU time (user + system: page faults included, other processes' "
                        "load on a shared machine mostly not)")
    p.add_argument("--session-child", choices=("plain", "tuned"), default=None,
                   help=argparse.SUPPRESS)
    return p.parse_args(argv)


ARGS = parse_args()
os.environ.setdefault("OMP_NUM_THREADS", str(ARGS.threads))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from nnpflow.descriptors import ChebyshevDescriptor, DescriptorDerivatives  # noqa: E402
from nnpflow.runtime import resolve_device  # noqa: E402
from nnpflow.structure import Structure  # noqa: E402


def cuau_cells(n: int, seed: int) -> list[Structure]:
    from ase.build import bulk

    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        at = bulk("Cu", "fcc", a=3.8, cubic=True).repeat((3, 3, 3))
        sym = np.array(["Cu"] * len(at))
        sym[rng.permutation(len(at))[: len(at) // 2]] = "Au"
        at.set_chemical_symbols(sym)
        eps = rng.uniform(-0.03, 0.03, (3, 3))
        at.set_cell(at.cell @ (np.eye(3) + (eps + eps.T) / 2), scale_atoms=True)
        at.positions += rng.normal(scale=0.1, size=at.positions.shape)
        moved = rng.random(len(at)) < 0.2
        at.positions[moved] += rng.integers(-1, 2, (int(moved.sum()), 3)) @ at.cell.array
        out.append(Structure.from_ase(at, name=f"cuau-{k}"))
    return out


def tio2_set(folder: str | None) -> list[Structure]:
    if folder is None:
        env = os.environ.get("NNPFLOW_SHARED_DATA")
        base = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
        path = base / "xsf-TiO2"
    else:
        path = Path(folder)
    if not path.is_dir():
        return []
    from nnpflow.io.xsf import read_xsf

    return [s for f in sorted(path.glob("*.xsf")) for s in read_xsf(f)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_time(fn, device, repeats: int) -> float:
    fn()                                             # warm-up
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def median_time(fn, device, repeats: int) -> float:
    """Median wall time of ``repeats`` calls after one warm-up (a plain session's
    allocator costs show in every call, so the best call would hide them)."""
    clock = time.process_time if ARGS.clock == "cpu" else time.perf_counter
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        sync(device)
        times.append(clock() - t0)
    return float(np.median(times))


def batches(items, size):
    return [items[i:i + size] for i in range(0, len(items), size)]


def run_set(name, structures, settings, device, dtype, batch_sizes, repeats):
    desc = ChebyshevDescriptor(**settings, device=device, dtype=dtype)
    n_atoms = sum(len(s) for s in structures)
    rows = []
    for bs in batch_sizes:
        parts = batches(structures, bs)
        t_feat = best_time(lambda: [desc.featurize_batch(p) for p in parts], device, repeats)
        t_der = best_time(lambda: [desc.featurize_batch_with_derivatives(p) for p in parts],
                          device, repeats)
        rows.append((bs, n_atoms / t_feat, n_atoms / t_der))
    # force contraction of a training batch (largest batch size)
    bs = max(batch_sizes)
    part = structures[:bs]
    feats, ders = desc.featurize_batch_with_derivatives(part)
    w = torch.randn(sum(len(s) for s in part), desc.n_features, dtype=dtype, device=device)
    batch_atoms = w.shape[0]

    def fresh():
        DescriptorDerivatives.concatenate(ders).forces(w)

    t_fresh = best_time(fresh, device, repeats)
    for d in ders:
        d.precompute()
    cat = DescriptorDerivatives.concatenate(ders)
    t_cached = best_time(lambda: cat.forces(w), device, repeats)
    wg = w.clone().requires_grad_(True)

    def with_backward():
        cat.forces(wg).pow(2).sum().backward()

    t_back = best_time(with_backward, device, repeats)
    arrays = [d.to_arrays(np.float32) for d in ders]
    der_bytes = np.mean([sum(a.nbytes for a in arr.values()) for arr in arrays])
    feat_bytes = np.mean([f.shape[0] * f.shape[1] * 4 for f in feats])
    n_edges = np.mean([d.n_edges for d in ders])
    print(f"\n{name}: {len(structures)} structures, {n_atoms} atoms, "
          f"dtype {str(dtype).replace('torch.', '')}, device {device}")
    print(f"  {'batch':>5}  {'features atoms/s':>17}  {'features+derivs atoms/s':>24}")
    for bs_, f, d in rows:
        print(f"  {bs_:>5}  {f:>17,.0f}  {d:>24,.0f}")
    print(f"  forces() on a batch of {len(part)} ({batch_atoms} atoms): "
          f"{batch_atoms / t_fresh:,.0f} atoms/s from stored geometry, "
          f"{batch_atoms / t_cached:,.0f} atoms/s with precomputed coefficients, "
          f"{batch_atoms / t_back:,.0f} atoms/s incl. backward")
    print(f"  storage per structure (float32): derivatives {der_bytes / 1024:,.1f} KiB "
          f"({n_edges:,.0f} edges x 20 B), features {feat_bytes / 1024:,.1f} KiB")


CUAU_SETTINGS = dict(species=["Cu", "Au"], rad_order=10, rad_cutoff=6.0, ang_order=3,
                     ang_cutoff=4.0)

#: figures of one session, in print order: key -> label
SESSION_FIGURES = {
    "batch_features": "features, batched (atoms/s)",
    "batch_derivs": "features + derivatives, batched (atoms/s)",
    "single_features": "features, per structure (atoms/s)",
    "single_derivs": "features + derivatives, per structure (atoms/s)",
    "forces_stored": "forces() from stored geometry (atoms/s)",
    "forces_backward": "forces() + backward, precomputed (atoms/s)",
}


def session_child(kind: str) -> int:
    """One fresh process: the figures of :data:`SESSION_FIGURES` as one JSON line.
    ``plain`` touches no allocator setting; ``tuned`` calls keep_freed_memory()."""
    import json

    torch.set_num_threads(ARGS.threads)
    if kind == "tuned":
        from nnpflow.runtime import keep_freed_memory

        keep_freed_memory()
    device = resolve_device(ARGS.device)
    dtype = getattr(torch, ARGS.dtypes.split(",")[0])
    bs = max(int(x) for x in ARGS.batch_sizes.split(",") if x)
    cells = cuau_cells(ARGS.structures, ARGS.seed)
    n_atoms = sum(len(s) for s in cells)
    desc = ChebyshevDescriptor(**CUAU_SETTINGS, device=device, dtype=dtype)
    parts = batches(cells, bs)
    out = {
        "batch_features": n_atoms / median_time(
            lambda: [desc.featurize_batch(p) for p in parts], device, ARGS.repeats),
        "batch_derivs": n_atoms / median_time(
            lambda: [desc.featurize_batch_with_derivatives(p) for p in parts], device,
            ARGS.repeats),
        "single_features": n_atoms / median_time(
            lambda: [desc.featurize(s) for s in cells], device, ARGS.repeats),
        "single_derivs": n_atoms / median_time(
            lambda: [desc.featurize_with_derivatives(s) for s in cells], device, ARGS.repeats),
    }
    part = cells[:bs]
    _, ders = desc.featurize_batch_with_derivatives(part)
    w = torch.randn(sum(len(s) for s in part), desc.n_features, dtype=dtype, device=device)
    out["forces_stored"] = w.shape[0] / median_time(
        lambda: DescriptorDerivatives.concatenate(ders).forces(w), device, ARGS.repeats)
    cat = DescriptorDerivatives.concatenate(ders).precompute()
    wg = w.clone().requires_grad_(True)
    out["forces_backward"] = w.shape[0] / median_time(
        lambda: cat.forces(wg).pow(2).sum().backward(), device, ARGS.repeats)
    print(json.dumps(out))
    return 0


def compare_sessions(rounds: int) -> int:
    """Plain session vs tuned, each in a fresh process, interleaved; medians."""
    import json
    import subprocess

    argv = [a for a in sys.argv[1:]]
    # drop --sessions N / --sessions=N from the children's arguments
    child_args, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--sessions":
            skip = True
            continue
        if a.startswith("--sessions="):
            continue
        child_args.append(a)
    figures: dict[str, list[dict]] = {"plain": [], "tuned": []}
    env = dict(os.environ, OMP_NUM_THREADS=str(ARGS.threads))
    for r in range(rounds):
        order = ("plain", "tuned") if r % 2 == 0 else ("tuned", "plain")
        for kind in order:
            res = subprocess.run([sys.executable, __file__, *child_args, "--session-child", kind],
                                 capture_output=True, text=True, env=env)
            if res.returncode != 0:
                sys.stderr.write(res.stderr)
                return res.returncode
            figures[kind].append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    med = {kind: {k: float(np.median([f[k] for f in runs])) for k in SESSION_FIGURES}
           for kind, runs in figures.items()}
    bs = max(int(x) for x in ARGS.batch_sizes.split(",") if x)
    print(f"torch {torch.__version__}, {ARGS.threads} thread(s), device {ARGS.device}, "
          f"{ARGS.structures} Cu/Au 108-atom cells, {ARGS.dtypes.split(',')[0]}, batch {bs}; "
          f"medians of {rounds} interleaved rounds of fresh processes, each the median "
          f"of {ARGS.repeats} calls, {ARGS.clock} clock")
    print(f"  {'':<48} {'plain session':>14} {'tuned':>12} {'plain/tuned':>12}")
    for key, label in SESSION_FIGURES.items():
        p, t = med["plain"][key], med["tuned"][key]
        print(f"  {label:<48} {p:>14,.0f} {t:>12,.0f} {p / t:>12.2f}")
    for kind in ("plain", "tuned"):
        m = med[kind]
        print(f"  per-structure / batched, {kind}: features "
              f"{m['single_features'] / m['batch_features']:.2f}, features + derivatives "
              f"{m['single_derivs'] / m['batch_derivs']:.2f}")
    return 0


def main() -> int:
    if ARGS.session_child:
        return session_child(ARGS.session_child)
    if ARGS.sessions:
        return compare_sessions(ARGS.sessions)
    torch.set_num_threads(ARGS.threads)
    kept = False
    if not ARGS.no_keep_freed_memory:
        from nnpflow.runtime import keep_freed_memory

        kept = keep_freed_memory()
    device = resolve_device(ARGS.device)
    batch_sizes = [int(x) for x in ARGS.batch_sizes.split(",") if x]
    dtypes = [getattr(torch, x) for x in ARGS.dtypes.split(",") if x]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f", freed memory kept in process: {kept}")
    cuau = cuau_cells(ARGS.structures, ARGS.seed)
    cuau_settings = CUAU_SETTINGS
    tio2 = tio2_set(ARGS.tio2)
    tio2_settings = dict(species=["Ti", "O"], rad_order=10, rad_cutoff=6.0, ang_order=3,
                         ang_cutoff=3.5, min_cutoff=0.5)
    for dtype in dtypes:
        run_set("Cu/Au fcc 108-atom cells", cuau, cuau_settings, device, dtype, batch_sizes,
                ARGS.repeats)
        if tio2:
            run_set("TiO2 reference set", tio2, tio2_settings, device, dtype, batch_sizes,
                    ARGS.repeats)
    if not tio2:
        print("\n(TiO2 set not found; pass --tio2 DIR)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
