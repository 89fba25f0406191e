"""Issue 13 (part A), must-never-happen 1: after a failed or interrupted job the next
``snakemake`` run redoes the missing work (or fails again, loudly); it never says
"Nothing to be done" while an evaluation of a model that no longer exists sits in
``results/``.

Snakemake removes the outputs of a job that fails or is killed, and it does not
remake a missing file that no target asks for while the files computed from it are
present.  The workflow's ``rule all`` therefore asks for every file the workflow
keeps (``final_outputs`` in ``workflow/rules/common.smk``).  Both triggers of the
issue are run for real on a copy of a completed tiny run: a training that fails at
run time (a learning rate that makes the loss non-finite, which training now
refuses to go on with) and a SIGTERM to the train job of a changed configuration
(the SLURM time-limit case: the rerun resumes from the job's checkpoint).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_workflow import (MODEL_JOBS, _no_slurm_bin, completed, edit_config,  # noqa: F401
                           job_set, planned_jobs, scenario, snakemake)

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

MEMBER = Path("results/models/ann/member_0")
EVALUATION = Path("results/evaluation/ann")


def snakemake_failing(workdir: Path, *args: str, timeout: int = 300) -> str:
    """Run snakemake, which must fail; returns its output."""
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PATH=os.pathsep.join([_no_slurm_bin(), os.environ.get("PATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"snakemake {' '.join(args)} succeeded:\n{out[-3000:]}"
    return out


def check_evaluation_is_of_the_current_model(workdir: Path, learning_rate: float) -> None:
    """metrics.json holds the errors of the model.pt now in results/ (recomputed here
    from that file), which was trained with ``learning_rate``."""
    from nnpflow.evaluation.model_evaluation import evaluate_models
    from nnpflow.splitting import load_split
    from nnpflow.training.potential import TorchANNPotential
    model = workdir / MEMBER / "model.pt"
    pot = TorchANNPotential.from_file(model)
    assert pot.training_info["config"]["method"]["mu"] == learning_rate
    metrics = json.loads((workdir / EVALUATION / "metrics.json").read_text())
    split = load_split(workdir / "results" / "split" / "split.json")
    os.chdir(workdir)  # metrics name the files relative to the run folder
    again = evaluate_models([MEMBER / "model.pt"], Path("results/database/database.h5"),
                            {p: split.indices[p] for p in metrics["parts"]}, name="ann")
    for part in metrics["parts"]:
        for key in ("energy_rmse_per_atom", "force_rmse"):
            assert metrics[part][key] == pytest.approx(again.metrics[part][key], rel=1e-9)
    assert (workdir / EVALUATION / "metrics.json").stat().st_mtime >= model.stat().st_mtime


def test_a_training_that_fails_at_run_time_is_redone_or_fails_again(scenario, monkeypatch):
    monkeypatch.chdir(scenario)
    # a learning rate that makes the loss non-finite at once: the train job fails
    edit_config(scenario, lambda cfg: cfg["training"].update(learning_rate=1e300))
    out = snakemake_failing(scenario, "--cores", "2")
    assert "loss became" in out and "at epoch 1" in out, out[-3000:]
    assert not (scenario / MEMBER / "model.pt").exists()
    # the rerun plans the training and the evaluation again ...
    assert job_set(planned_jobs(scenario)) == {**MODEL_JOBS, ("all", None): 1}
    # ... and fails again, loudly (never "Nothing to be done")
    out = snakemake_failing(scenario, "--cores", "2")
    assert "Nothing to be done" not in out and "loss became" in out
    # with a learning rate that works the model is trained and evaluated anew
    edit_config(scenario, lambda cfg: cfg["training"].update(learning_rate=0.02))
    snakemake(scenario, "--cores", "2")
    check_evaluation_is_of_the_current_model(scenario, 0.02)
    assert planned_jobs(scenario) == []


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for c in map(int, children):
                out.append(c)
                todo.append(c)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_sigterm_of_the_train_job_of_a_changed_configuration_is_resumed(scenario, monkeypatch):
    monkeypatch.chdir(scenario)
    edit_config(scenario, lambda cfg: cfg["training"].update(learning_rate=0.02, epochs=60))
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PATH=os.pathsep.join([_no_slurm_bin(), os.environ.get("PATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "2"], cwd=scenario,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, stdin=subprocess.DEVNULL)
    log = scenario / "results" / "logs" / "train" / "ann" / "member_0.log"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and "epoch 3/60" in log.read_text():
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    # the train job: the stage script Snakemake started (not Snakemake itself)
    jobs = [p for p in _descendants(proc.pid) if "stage.py" in _cmdline(p)
            and "stage.py" not in _cmdline(int(Path(f"/proc/{p}/stat").read_text().split()[3]))]
    assert len(jobs) == 1, [(_cmdline(p), p) for p in _descendants(proc.pid)]
    os.kill(jobs[0], signal.SIGTERM)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode != 0, out[-3000:]
    assert "stopped by SIGTERM" in log.read_text()
    assert not (scenario / MEMBER / "model.pt").exists()
    assert (scenario / MEMBER / "checkpoints" / "checkpoint_last.pt").is_file()
    # the rerun trains (resuming from the checkpoint) and evaluates again
    assert job_set(planned_jobs(scenario)) == {**MODEL_JOBS, ("all", None): 1}
    snakemake(scenario, "--cores", "2")
    text = log.read_text()
    assert "resumed from" in text and "epoch 1/60" not in text, text[-3000:]
    check_evaluation_is_of_the_current_model(scenario, 0.02)
    assert planned_jobs(scenario) == []


#: an intermediate file (what a failed job of its rule leaves missing) and the jobs a
#: rerun must plan: its producer and everything computed from it
MISSING = {
    "results/database/shard_1.h5": {("build", 1): 1, ("merge", None): 1, **MODEL_JOBS,
                                    ("all", None): 1},
    "results/ingest/shard_2.h5": {("ingest", 2): 1, ("manifest", None): 1, ("build", 2): 1,
                                  ("merge", None): 1, ("split", None): 1, **MODEL_JOBS,
                                  ("all", None): 1},
    "results/models/ann/member_0/history.csv": {**MODEL_JOBS, ("all", None): 1},
}


@pytest.mark.parametrize("missing", list(MISSING))
def test_a_missing_intermediate_file_is_made_again_with_everything_after_it(scenario,
                                                                            missing):
    """Whatever job failed (its outputs removed by Snakemake), the rerun plans it and
    every job downstream of it, so nothing downstream outlives it."""
    (scenario / missing).unlink()
    assert job_set(planned_jobs(scenario)) == MISSING[missing]
