"""Cost of the NVE physical checks in the evaluation of the bundled example.

Run the example first (``snakemake --cores 2`` in a copy of the repository), then

    python benchmarks/physical_checks.py --results /tmp/example/results
    python benchmarks/physical_checks.py --results ... --compare /path/to/old/src

Each round runs the evaluate stage (``nnpflow.stages.evaluate.run``, as the
workflow's evaluate job does: every part, every plot, one torch thread) in a
fresh Python process, once without the checks (``physical_checks: None``) and once
with the defaults (3 structures, 200 steps of 0.5 fs); with ``--compare``, also
with the package from another source tree (e.g. before a change), all
interleaved.  Printed: medians over the rounds of the process's wall and CPU
time (s, interpreter start and imports included, as in the job), the checks'
own wall time (``metrics.json`` ``physical_checks.seconds``) and CPU time, and
the ratio of the checks' time to the evaluation without them.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, os, sys, time, resource
import torch
torch.set_num_threads(1)
args = json.loads(sys.argv[1])
from nnpflow.evaluation import physical_checks as pc
inner = pc.physical_checks
cpu = {}
def timed(*a, **k):
    c = time.process_time()
    try:
        return inner(*a, **k)
    finally:
        cpu["checks"] = time.process_time() - c
pc.physical_checks = timed
from nnpflow.stages import evaluate
out = args.pop("out")
m = evaluate.run(**args)
checks = m.get("physical_checks")
json.dump({"checks_s": checks["seconds"] if checks else 0.0,
           "checks_cpu_s": cpu.get("checks", 0.0),
           "stable": checks["stable"] if checks else None,
           "records": [{k: r[k] for k in ("label", "energy_drift", "max_force", "min_distance",
                                          "steps_done")} for r in checks["structures"]]
           if checks else []}, open(out, "w"))
"""


def stage_args(results: str, model: str, tmp: str, checks: bool) -> dict:
    members = sorted(glob.glob(os.path.join(results, "models", model, "member_*", "model.pt")))
    if not members:
        raise SystemExit(f"no model files under {results}/models/{model}: run the example first")
    return {"database": os.path.join(results, "database", "database.h5"),
            "split": os.path.join(results, "split", "split.json"),
            "models": members,
            "histories": [os.path.join(os.path.dirname(m), "history.csv") for m in members],
            "metrics": os.path.join(tmp, "metrics.json"),
            "per_species": os.path.join(tmp, "per_species.csv"),
            "worst_structures": os.path.join(tmp, "worst.csv"), "model_name": model,
            "parity_energy": os.path.join(tmp, "pe.png"),
            "parity_forces": os.path.join(tmp, "pf.png"),
            "learning_curve": os.path.join(tmp, "lc.png"),
            "physical_checks": {} if checks else None,
            "md_check": os.path.join(tmp, "md.png") if checks else None,
            "out": os.path.join(tmp, "child.json")}


def one(src: str, args: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=src, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    before = os.times()
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], env=env, check=True)
    wall = time.perf_counter() - t
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system -
                                                          before.children_system)
    with open(args["out"]) as fh:
        child = json.load(fh)
    return dict(child, wall_s=wall, cpu_s=cpu)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", required=True, help="the example's results folder")
    p.add_argument("--model", default="ann")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--compare", default=None, help="another source tree (its src folder)")
    a = p.parse_args(argv)
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    trees = {"this": here} if a.compare is None else {"this": here, "compare": a.compare}
    rows: dict[tuple, list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for name, src in trees.items():
                for checks in (False, True):
                    res = one(src, stage_args(a.results, a.model, tmp, checks))
                    rows.setdefault((name, checks), []).append(res)
                    print(f"round {r} {name:7s} checks={'on ' if checks else 'off'} "
                          f"wall {res['wall_s']:.2f} s cpu {res['cpu_s']:.2f} s "
                          f"checks {res['checks_s']:.3f} s (cpu {res['checks_cpu_s']:.3f} s)",
                          flush=True)
    med = statistics.median
    print(f"\nmedians over {a.rounds} interleaved rounds (one torch thread):")
    for name in trees:
        off, on = rows[(name, False)], rows[(name, True)]
        w_off, w_on = med(x["wall_s"] for x in off), med(x["wall_s"] for x in on)
        c_off, c_on = med(x["cpu_s"] for x in off), med(x["cpu_s"] for x in on)
        chk, chk_cpu = med(x["checks_s"] for x in on), med(x["checks_cpu_s"] for x in on)
        print(f"{name:7s} evaluate without checks: wall {w_off:.2f} s, cpu {c_off:.2f} s; "
              f"with checks: wall {w_on:.2f} s, cpu {c_on:.2f} s")
        print(f"{name:7s} checks: wall {chk:.3f} s, cpu {chk_cpu:.3f} s = "
              f"{100 * chk / w_off:.0f} % (wall) / {100 * chk_cpu / c_off:.0f} % (cpu) of the "
              f"evaluation without them; with/without wall {w_on / w_off:.3f}")
        print(f"{name:7s} runs: {json.dumps(on[-1]['records'])}")


if __name__ == "__main__":
    main()
