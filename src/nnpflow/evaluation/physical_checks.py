"""Physical checks of a trained model: short NVE runs with its ASE calculator.

Errors on a test set do not tell whether a model holds in molecular dynamics; a
model with good RMSEs may still pull atoms together until the run explodes.
:func:`nve_check` runs one structure for a few hundred femtoseconds with ASE's
velocity Verlet integrator and :class:`nnpflow.calculator.NNPCalculator`, from a
Maxwell-Boltzmann start (seeded, zero total momentum), and records

* ``energy_drift`` -- slope of a least-squares line through the total energy
  (kinetic + potential) per atom against time, in eV/atom/ps, and
  ``max_energy_deviation``, the largest ``|E_tot(t) - E_tot(0)| / N`` (eV/atom);
  an NVE run should conserve the total energy;
* ``max_force`` -- the largest force on any atom along the run (eV/Å);
* ``min_distance`` -- the smallest interatomic distance along the run (Å,
  periodic images included; ``None`` when no two atoms come closer than
  :data:`DISTANCE_SEARCH` Å);
* ``finite`` -- every energy, force and position stayed finite;
* for a committee, ``committee_spread_mean`` / ``committee_spread_max``: the
  population standard deviation of the members' energies per atom along the run
  (eV/atom) -- a spread that grows means the run leaves the data;
* ``stable`` -- finite, no atoms closer than ``min_distance_limit`` and no force
  above ``max_force_limit``.  An unstable run stops at the step it failed
  (``steps_done``, ``failure`` say which and why).

:func:`physical_checks` runs the check on the smallest few structures of a part
of a database (the evaluation's test part) and summarises them for
``metrics.json``; :func:`md_check_plot` draws the runs.  Everything runs in
the calling process on torch's current threads.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = ["MDCheckSettings", "nve_check", "physical_checks", "pick_structures",
           "md_check_plot", "DISTANCE_SEARCH"]

#: neighbour-search radius of the smallest-distance record (Å)
DISTANCE_SEARCH = 4.0


@dataclass(frozen=True)
class MDCheckSettings:
    """Settings of the NVE checks (the workflow's ``evaluate.physical_checks``).

    ``structures``: how many structures (smallest first; 0 turns the checks off);
    ``steps`` of ``timestep`` fs; ``temperature`` (K) of the Maxwell-Boltzmann
    start; ``seed`` of the velocities; an atom pair closer than
    ``min_distance_limit`` Å or a force above ``max_force_limit`` eV/Å marks the
    run unstable.
    """

    structures: int = 3
    steps: int = 200
    timestep: float = 0.5
    temperature: float = 300.0
    seed: int = 0
    min_distance_limit: float = 0.5
    max_force_limit: float = 50.0

    @classmethod
    def from_config(cls, cfg: dict | None) -> "MDCheckSettings":
        from ..errors import ConfigError
        cfg = dict(cfg or {})
        unknown = sorted(set(cfg) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"evaluate.physical_checks: unknown key(s) {', '.join(unknown)}")
        out = cls(**cfg)
        if out.structures < 0 or out.steps < 1 or not out.timestep > 0 or out.temperature < 0:
            raise ConfigError(f"evaluate.physical_checks: structures >= 0, steps >= 1, "
                              f"timestep > 0 and temperature >= 0 expected, got {cfg}")
        return out

    def to_dict(self) -> dict:
        return {"structures": int(self.structures), "steps": int(self.steps),
                "timestep_fs": float(self.timestep), "temperature_K": float(self.temperature),
                "seed": int(self.seed), "min_distance_limit": float(self.min_distance_limit),
                "max_force_limit": float(self.max_force_limit)}


def _min_distance(atoms) -> float | None:
    """Smallest interatomic distance of ``atoms`` (Å, periodic images included)."""
    from ase.neighborlist import neighbor_list
    if len(atoms) < 2 and not atoms.pbc.any():
        return None
    d = neighbor_list("d", atoms, DISTANCE_SEARCH, self_interaction=False)
    return float(d.min()) if len(d) else None


def nve_check(calculator: Any, atoms, settings: MDCheckSettings = MDCheckSettings(),
              label: str | None = None) -> dict:
    """One NVE run of ``atoms`` (an ``ase.Atoms``, copied) with ``calculator``.

    Returns the record described in the module docstring, plus ``time_ps``,
    ``total_energy`` (eV/atom, relative to the start), ``max_force_trace``
    (eV/Å) and, for a committee, ``spread_trace`` (eV/atom): one entry per step
    done (for the plot; :func:`physical_checks` drops them from ``metrics.json``).
    """
    from ase import units
    from ase.md import velocitydistribution as vd
    from ase.md.verlet import VelocityVerlet

    atoms = atoms.copy()
    atoms.calc = calculator
    n = len(atoms)
    # Maxwell-Boltzmann momenta (ASE >= 3.26 names the function thermalize_momenta)
    thermalize = getattr(vd, "thermalize_momenta", None) or vd.MaxwellBoltzmannDistribution
    thermalize(atoms, temperature_K=settings.temperature,
               rng=np.random.default_rng(settings.seed))
    if n > 1:
        vd.Stationary(atoms)
    dyn = VelocityVerlet(atoms, timestep=settings.timestep * units.fs)
    committee = bool(getattr(calculator, "committee", False))
    times, totals, fmax, spreads = [], [], [], []
    min_d: float | None = None
    failure = None

    def record(step: int) -> str | None:
        nonlocal min_d
        epot = atoms.get_potential_energy()
        forces = atoms.get_forces()
        etot = epot + atoms.get_kinetic_energy()
        pos = atoms.get_positions()
        if not (math.isfinite(etot) and np.isfinite(forces).all() and np.isfinite(pos).all()):
            return "non-finite energy, forces or positions"
        times.append(step * settings.timestep / 1000.0)
        totals.append(etot / n)
        f = float(np.linalg.norm(forces, axis=1).max()) if n else 0.0
        fmax.append(f)
        if committee:
            spreads.append(float(np.std(calculator.results["committee_energies"])) / n)
        d = _min_distance(atoms)
        if d is not None:
            min_d = d if min_d is None else min(min_d, d)
        if min_d is not None and min_d < settings.min_distance_limit:
            return (f"atoms {min_d:.3g} Å apart (limit {settings.min_distance_limit:g} Å) "
                    f"at step {step}")
        if f > settings.max_force_limit:
            return f"force {f:.3g} eV/Å (limit {settings.max_force_limit:g} eV/Å) at step {step}"
        return None

    start = time.perf_counter()
    steps_done = 0
    try:
        failure = record(0)
        while failure is None and steps_done < settings.steps:
            dyn.run(1)
            steps_done += 1
            failure = record(steps_done)
    except (FloatingPointError, ValueError, RuntimeError, OverflowError) as exc:
        failure = f"{type(exc).__name__} at step {steps_done + 1}: {exc}"
    seconds = time.perf_counter() - start
    t = np.asarray(times)
    e = np.asarray(totals) - (totals[0] if totals else 0.0)
    drift = float(np.polyfit(t, e, 1)[0]) if len(t) >= 2 else None
    finite = failure is None or not failure.startswith(("non-finite", "FloatingPoint",
                                                        "Overflow"))
    out = {"label": label, "n_atoms": int(n), "steps": int(settings.steps),
           "steps_done": int(steps_done), "stable": failure is None, "finite": bool(finite),
           "failure": failure,
           "energy_drift": drift,
           "max_energy_deviation": float(np.abs(e).max()) if len(e) else None,
           "max_force": float(max(fmax)) if fmax else None,
           "min_distance": min_d, "seconds": round(seconds, 3),
           "time_ps": t.tolist(), "total_energy": e.tolist(), "max_force_trace": fmax}
    if committee:
        out["committee_spread_mean"] = float(np.mean(spreads)) if spreads else None
        out["committee_spread_max"] = float(np.max(spreads)) if spreads else None
        out["spread_trace"] = spreads
    return out


def pick_structures(n_atoms: np.ndarray, indices: Sequence[int], count: int) -> list[int]:
    """The ``count`` smallest structures of ``indices`` (fewest atoms first, then
    database order)."""
    ix = np.asarray(indices, dtype=np.int64)
    order = np.lexsort((ix, np.asarray(n_atoms)[ix]))
    return ix[order][:max(int(count), 0)].tolist()


TRACES = ("time_ps", "total_energy", "max_force_trace", "spread_trace")


def physical_checks(model_files: Sequence[str | os.PathLike], database: str | os.PathLike,
                    indices: Sequence[int], settings: MDCheckSettings = MDCheckSettings(),
                    part: str = "test") -> tuple[dict, list[dict]]:
    """NVE checks of the committee ``model_files`` on the smallest
    ``settings.structures`` structures among ``indices`` of ``database``.

    Returns ``(summary, runs)``: ``summary`` for ``metrics.json`` (settings, the
    per-structure records without their traces, ``stable`` and the labels of the
    unstable runs, the worst drift, force and distance over the runs), and
    ``runs``, the full records (for :func:`md_check_plot`).
    """
    from ..calculator import NNPCalculator
    from ..database import DatabaseReader
    start = time.perf_counter()
    calc = NNPCalculator(list(model_files))
    runs = []
    with DatabaseReader(database, cache_size=0) as reader:
        chosen = pick_structures(reader.n_atoms, indices, settings.structures)
        structures = [(i, reader.structure(i)) for i in chosen]
    for i, s in structures:
        rec = nve_check(calc, s.to_ase(), settings, label=s.name)
        rec["index"] = int(i)
        runs.append(rec)
    records = [{k: v for k, v in r.items() if k not in TRACES} for r in runs]

    def worst(key, pick):
        vals = [r[key] for r in records if r.get(key) is not None]
        return pick(vals, key=abs) if vals and key == "energy_drift" else (
            pick(vals) if vals else None)

    summary = {"settings": settings.to_dict(), "part": part, "structures": records,
               "stable": all(r["stable"] for r in records),
               "unstable": [r["label"] for r in records if not r["stable"]],
               "worst_energy_drift": worst("energy_drift", max),
               "max_force": worst("max_force", max),
               "min_distance": worst("min_distance", min),
               "units": {"energy_drift": "eV/atom/ps", "max_energy_deviation": "eV/atom",
                         "max_force": "eV/Å", "min_distance": "Å",
                         "committee_spread_mean": "eV/atom", "committee_spread_max": "eV/atom"},
               "seconds": round(time.perf_counter() - start, 3)}
    if calc.committee:
        spreads = [r["committee_spread_max"] for r in records
                   if r.get("committee_spread_max") is not None]
        summary["committee_spread_max"] = max(spreads) if spreads else None
    return summary, runs


def md_check_plot(path: str | os.PathLike, runs: list[dict], title: str = "") -> None:
    """Total-energy drift, largest force and (committee) energy spread along each
    NVE run, one line per structure; unstable runs are drawn dashed and named."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..safe_write import atomic_path
    spread = any(r.get("spread_trace") for r in runs)
    ncols = 3 if spread else 2
    fig, axes = plt.subplots(1, ncols, figsize=(4.2 * ncols, 3.6), constrained_layout=True)
    for r in runs:
        style = "-" if r["stable"] else "--"
        name = f"{r['label']} ({r['n_atoms']} atoms)" + ("" if r["stable"] else " UNSTABLE")
        t = r["time_ps"]
        axes[0].plot(t, np.asarray(r["total_energy"]) * 1000.0, style, label=name)
        axes[1].plot(t, r["max_force_trace"], style, label=name)
        if spread and r.get("spread_trace"):
            axes[2].plot(t, np.asarray(r["spread_trace"]) * 1000.0, style, label=name)
    axes[0].set(xlabel="time (ps)", ylabel="E_tot - E_tot(0) (meV/atom)",
                title="total energy (NVE)")
    axes[1].set(xlabel="time (ps)", ylabel="largest force (eV/Å)", title="largest force")
    if spread:
        axes[2].set(xlabel="time (ps)", ylabel="committee std (meV/atom)",
                    title="committee energy spread")
    if runs:
        axes[0].legend(fontsize="x-small")
    else:
        title += " -- no NVE checks run (evaluate.physical_checks.structures: 0)"
    unstable = [r["label"] for r in runs if not r["stable"]]
    head = title + (f" -- UNSTABLE: {', '.join(unstable)}" if unstable else
                    " -- all runs stable" if runs else "")
    fig.suptitle(head, color="red" if unstable else "black")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
