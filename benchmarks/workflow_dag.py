"""Benchmark: the example workflow's wall time against its jobs' compute time.

Copies the workflow (Snakefile, workflow/, config/, profiles/, envs/) into a
temporary folder and runs the whole example DAG with ``snakemake --cores N``
(default 2), ``--repeat`` times, each from scratch.  Then it reads

* every job's ``benchmark:`` file (``results/benchmarks/**.tsv``, Snakemake's
  wall seconds ``s`` and ``cpu_time`` of the job's process tree), and
* every job's log line ``rule <name>: done in <t> s``, the time the stage
  function itself computed (written by ``nnpflow.stages.run_from_snakemake``),

and prints per rule: jobs, job wall time, stage compute time and the
difference (interpreter start, imports, Snakemake's script wrapper); then the
DAG's wall time against the sum of the jobs' wall time and of their compute
time, and against that sum divided by the cores (the best any scheduler could
do without a critical path).  Medians over the repeats.

    OMP_NUM_THREADS=1 python benchmarks/workflow_dag.py [--cores 2] [--repeat 1]
        [--epochs 100] [--structures 240] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PARTS = ("Snakefile", "workflow", "config", "profiles", "envs")
DONE = re.compile(r"rule (\w+): done in ([0-9.]+) s")


def prepare(dest: Path, epochs: int | None, structures: int | None) -> None:
    for part in PARTS:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, dest / part)
        else:
            shutil.copy(src, dest / part)
    path = dest / "config" / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    if epochs is not None:
        cfg["training"]["epochs"] = epochs
    if structures is not None:
        cfg["example"]["n_structures"] = structures
    cfg["training"]["device"] = "cpu"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def run_once(workdir: Path, cores: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", str(cores)],
                          cwd=workdir, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write((proc.stdout + proc.stderr)[-5000:])
        raise SystemExit(f"snakemake failed in {workdir}")
    results = workdir / "results"
    jobs: dict[str, dict] = {}
    for tsv in sorted((results / "benchmarks").rglob("*.tsv")):
        key = str(tsv.relative_to(results / "benchmarks").with_suffix(""))
        with open(tsv, newline="") as fh:
            row = next(csv.DictReader(fh, delimiter="\t"))
        jobs[key] = {"wall": float(row["s"]), "cpu": float(row.get("cpu_time") or "nan")}
    for key, job in jobs.items():
        log = results / "logs" / f"{key}.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        found = DONE.findall(text)
        job["rule"] = found[-1][0] if found else key.split("/")[0]
        job["compute"] = float(found[-1][1]) if found else float("nan")
    return {"wall": wall, "jobs": jobs}


def median(values):
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: config)")
    p.add_argument("--structures", type=int, default=None,
                   help="example structures (default: config, 240)")
    p.add_argument("--keep", default=None, help="run in this folder and keep it")
    args = p.parse_args()
    runs = []
    for k in range(args.repeat):
        base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="nnpflow-dag-"))
        workdir = base / f"run{k}"
        workdir.mkdir(parents=True)
        prepare(workdir, args.epochs, args.structures)
        run = run_once(workdir, args.cores)
        runs.append(run)
        print(f"run {k + 1}: DAG wall {run['wall']:.1f} s, {len(run['jobs'])} jobs",
              file=sys.stderr)
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    per_rule = defaultdict(lambda: defaultdict(list))
    totals = defaultdict(list)
    for run in runs:
        sums = defaultdict(lambda: defaultdict(float))
        for job in run["jobs"].values():
            for q in ("wall", "compute", "cpu"):
                sums[job["rule"]][q] += job[q]
            sums[job["rule"]]["n"] += 1
        for rule, s in sums.items():
            for q, v in s.items():
                per_rule[rule][q].append(v)
        totals["dag"].append(run["wall"])
        for q in ("wall", "compute", "cpu"):
            totals[q].append(sum(j[q] for j in run["jobs"].values()))
    print(f"example workflow DAG, snakemake --cores {args.cores}, OMP_NUM_THREADS=1; "
          f"medians of {len(runs)} run(s)")
    print(f"  {'rule':<10} {'jobs':>4} {'job wall s':>11} {'compute s':>10} "
          f"{'start+import s':>15} {'cpu s':>8}")
    for rule in sorted(per_rule, key=lambda r: -median(per_rule[r]["wall"])):
        q = per_rule[rule]
        w, c = median(q["wall"]), median(q["compute"])
        print(f"  {rule:<10} {median(q['n']):>4.0f} {w:>11.2f} {c:>10.2f} {w - c:>15.2f} "
              f"{median(q['cpu']):>8.2f}")
    dag, w, c = median(totals["dag"]), median(totals["wall"]), median(totals["compute"])
    print(f"  DAG wall time {dag:.1f} s; sum of job wall times {w:.1f} s, of stage compute "
          f"times {c:.1f} s, of job CPU times {median(totals['cpu']):.1f} s")
    print(f"  DAG wall / (sum of compute / {args.cores} cores) = {dag / (c / args.cores):.2f}; "
          f"DAG wall / sum of compute = {dag / c:.2f}; per-job start-up and imports "
          f"{w - c:.1f} s in all ({(w - c) / w:.0%} of the jobs' wall time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
