"""Stages that do not compute with torch do not import it (about 1-2 s and
~300 MB per job otherwise): ingest (with its overlap check and raw shard),
manifest, merge and split each run in a fresh interpreter, which reports the
heavy modules it ended up with."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np

from nnpflow import Structure
from nnpflow.io.xsf import format_xsf

#: modules a job of a non-torch stage must not load
HEAVY = ("torch", "matplotlib", "scipy")


def run_fresh(code: str, cwd) -> dict:
    """Run ``code`` in a fresh interpreter (this checkout's package) and return
    which of :data:`HEAVY` it imported."""
    probe = textwrap.dedent(code) + textwrap.dedent(f"""
        import json, sys
        print(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))
        """)
    out = subprocess.run([sys.executable, "-c", probe], cwd=cwd, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def cell(k: int) -> Structure:
    a = 3.6 + 0.01 * k
    pos = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]) * a
    return Structure(positions=pos, species=["Cu", "Au", "Cu", "Au"], cell=np.eye(3) * a,
                     energy=-1.0 - k, forces=np.full((4, 3), 0.01))


def test_data_stages_without_torch(tmp_path):
    (tmp_path / "data").mkdir()
    for k in range(6):
        (tmp_path / "data" / f"s{k}.xsf").write_text(format_xsf(cell(k)))
    loaded = run_fresh("""
        from nnpflow.sources import expand_sources
        from nnpflow.stages import ingest, manifest, split
        specs = [s.to_dict() for s in expand_sources(["data/*.xsf"])]
        for k in range(2):
            ingest.run(specs, shard=k, n_shards=2, manifest=f"out/m{k}.tsv",
                       rejected=f"out/r{k}.tsv", structures=f"out/raw{k}.h5",
                       species=["Cu", "Au"], min_cutoff=0.5)
        manifest.run(["out/m0.tsv", "out/m1.tsv"], ["out/r0.tsv", "out/r1.tsv"],
                     manifest="out/manifest.tsv", summary="out/manifest.json",
                     rejected="out/rejected.tsv")
        split.run(manifest_summary="out/manifest.json", manifest="out/manifest.tsv",
                  split="out/split.json",
                  validation=1, test=1)
        """, tmp_path)
    assert loaded == {m: False for m in HEAVY}
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["n_structures"] == 6

    # build needs torch (featurisation); merge, given the shards, does not
    from nnpflow.stages import build
    for k in range(2):
        build.run(structures=str(tmp_path / "out" / f"raw{k}.h5"),
                  database=str(tmp_path / "out" / f"db{k}.h5"),
                  descriptor=dict(rad_order=2, rad_cutoff=4.0, ang_order=1, ang_cutoff=3.0),
                  database_cfg={}, species=["Cu", "Au"])
    loaded = run_fresh("""
        from nnpflow.stages import merge
        merge.run(["out/db0.h5", "out/db1.h5"], database="out/database.h5",
                  summary="out/database.json", manifest_summary="out/manifest.json")
        """, tmp_path)
    assert loaded == {m: False for m in HEAVY}
    assert json.loads((tmp_path / "out" / "database.json").read_text())["n_structures"] == 6


def test_stage_adapter_and_cli_entry_do_not_import_torch(tmp_path):
    loaded = run_fresh("""
        import nnpflow, nnpflow.stages, nnpflow.runtime, nnpflow.database, nnpflow.cli
        nnpflow.runtime.configure_threads(1)
        nnpflow.runtime.keep_freed_memory()
        """, tmp_path)
    assert loaded == {m: False for m in HEAVY}
    # the packages' own imports are lazy (module __getattr__); the probe sees torch
    # when a name that computes with it is loaded
    assert run_fresh("import nnpflow.training, nnpflow.descriptors, nnpflow.datasets",
                     tmp_path) == {m: False for m in HEAVY}
    assert run_fresh("from nnpflow.descriptors import ChebyshevDescriptor",
                     tmp_path)["torch"] is True
