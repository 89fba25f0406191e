"""Physical checks of a trained model: short NVE runs with its ASE calculator.

Errors on a test set do not tell whether a model holds in molecular dynamics; a
model with good RMSEs may still pull atoms together until the run explodes.
:func:`nve_check` runs one structure for a few hundred femtoseconds with the
velocity Verlet integrator (the arithmetic of ASE's ``VelocityVerlet``, without
importing ``ase.md``, whose import alone costs ~0.25 s: a fifth of the example's
evaluation) and :class:`nnpflow.calculator.NNPCalculator`, from a
Maxwell-Boltzmann start (seeded, zero total momentum; ASE's
``thermalize_momenta`` and ``Stationary``, the same numbers), and records

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

__all__ = ["MDCheckSettings", "nve_check", "nve_checks", "physical_checks", "pick_structures",
           "maxwell_boltzmann_momenta",
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
    """Smallest interatomic distance of ``atoms`` (Å, periodic images included;
    ``None`` when none is below :data:`DISTANCE_SEARCH`)."""
    from ase.neighborlist import neighbor_list
    if len(atoms) < 2 and not atoms.pbc.any():
        return None
    d = neighbor_list("d", atoms, DISTANCE_SEARCH, self_interaction=False)
    return float(d.min()) if len(d) else None


class _MinDistance:
    """Smallest interatomic distance (Å) of one system along a run, cheaply.

    Small systems (at most :data:`DENSE_ATOMS` atoms): every pair's minimum-image
    vector over the 27 neighbouring images of the Minkowski-reduced cell (exact for
    a reduced cell), vectorised; larger ones: ASE's neighbour list.  Distances
    above :data:`DISTANCE_SEARCH` are reported as ``None``, as by the neighbour list.
    """

    def __init__(self, atoms):
        from ase.geometry import minkowski_reduce
        self.pbc = np.asarray(atoms.pbc, dtype=bool)
        self.n = len(atoms)
        self.dense = self.n <= DENSE_ATOMS and (
            not self.pbc.any() or abs(np.linalg.det(atoms.cell[:])) > 1e-9)
        if self.dense and self.pbc.any():
            cell, _ = minkowski_reduce(atoms.cell[:], self.pbc)
            self.cell = np.asarray(cell, dtype=np.float64)
            self.inv = np.linalg.inv(self.cell)
            ranges = [(-1, 0, 1) if p else (0,) for p in self.pbc]
            shifts = np.array([(i, j, k) for i in ranges[0] for j in ranges[1]
                               for k in ranges[2]], dtype=np.float64)
            self.images = shifts @ self.cell                       # (M, 3)
            self.zero = int(np.flatnonzero(~shifts.any(axis=1))[0])

    def __call__(self, atoms) -> float | None:
        if not self.dense:
            return _min_distance(atoms)
        pos = atoms.positions
        i, j = np.triu_indices(self.n, 1)
        d = pos[j] - pos[i]                                        # (P, 3), each pair once
        if not self.pbc.any():
            best2 = float(np.einsum("ij,ij->i", d, d).min()) if len(d) else math.inf
        else:
            f = d @ self.inv
            f[:, self.pbc] -= np.round(f[:, self.pbc])
            d = (f @ self.cell)[:, None, :] + self.images[None]    # (P, M, 3)
            best2 = float(np.einsum("pmk,pmk->pm", d, d).min()) if len(d) else math.inf
            # an atom and its own periodic images: the shortest lattice vector
            own = np.delete(self.images, self.zero, axis=0)
            if len(own):
                best2 = min(best2, float(np.einsum("mk,mk->m", own, own).min()))
        best = math.sqrt(best2)
        return best if best <= DISTANCE_SEARCH else None


#: systems up to this many atoms get the dense distance search
DENSE_ATOMS = 128


def maxwell_boltzmann_momenta(masses: np.ndarray, temperature: float,
                              rng: np.random.Generator, stationary: bool = True) -> np.ndarray:
    """Momenta (N, 3) (ASE units: amu^(1/2) eV^(1/2)) drawn from the
    Maxwell-Boltzmann distribution at ``temperature`` K for ``masses`` (N,) amu:
    ``rng.standard_normal((N, 3)) * sqrt(m kB T)``; with ``stationary``, the
    centre-of-mass motion removed and the kinetic energy scaled back to its value
    before (ASE's ``thermalize_momenta`` then ``Stationary``, the same numbers)."""
    from ase import units
    masses = np.asarray(masses, dtype=np.float64)
    xi = rng.standard_normal((len(masses), 3))
    p = xi * np.sqrt(masses * (units.kB * temperature))[:, np.newaxis]
    if stationary and len(masses) > 1:
        e0 = _kinetic(p, masses[:, None])
        p -= (p.sum(axis=0) / masses.sum()) * masses[:, np.newaxis]
        ndof = 3 * len(masses)
        t0 = 2 * e0 / (ndof * units.kB)                     # K, kept
        scale = (t0 * units.kB) / (2 * _kinetic(p, masses[:, None]) / ndof) \
            if t0 > 1e-12 else 0.0
        p = p * np.sqrt(scale)
    return p


def _kinetic(p: np.ndarray, masses: np.ndarray) -> float:
    """Kinetic energy (eV) of momenta ``p`` (N, 3) with ``masses`` (N, 1) amu."""
    return 0.5 * float(np.vdot(p, p / masses))


class _Run:
    """State and records of one NVE run (see :func:`nve_checks`).

    The velocity Verlet step is ASE's ``VelocityVerlet.step`` (the same
    arithmetic, so the same numbers: ``tests/test_physical_checks.py`` runs both),
    split in two so that the forces at the new positions of several runs can be
    predicted in one call: :meth:`drift` (half kick, then the new positions) and
    :meth:`kick` (the second half kick with the new forces).  Constraints of the
    input atoms are not applied (the run's copy has none).
    """

    def __init__(self, atoms, settings: MDCheckSettings, label: str | None, committee: bool):
        from ase import units
        self.atoms = atoms.copy()
        self.atoms.set_constraint()
        self.n = len(self.atoms)
        self.settings, self.label, self.committee = settings, label, committee
        self.masses = self.atoms.get_masses()[:, None]
        self.dt = settings.timestep * units.fs
        self.momenta = maxwell_boltzmann_momenta(self.masses[:, 0], settings.temperature,
                                                 np.random.default_rng(settings.seed))
        self.distance = _MinDistance(self.atoms)
        self.times: list[float] = []
        self.totals: list[float] = []
        self.fmax: list[float] = []
        self.spreads: list[float] = []
        self.min_d: float | None = None
        self.failure: str | None = None
        self.steps_done = 0
        self.seconds = 0.0

    def drift(self, forces: np.ndarray) -> np.ndarray:
        """First half of a step: the half kick with ``forces`` (N, 3) eV/Å and the
        positions (N, 3) Å it moves the atoms to (set on :attr:`atoms`)."""
        p = self.momenta.copy()
        p += 0.5 * self.dt * forces
        new = self.atoms.positions + self.dt * p / self.masses
        self.momenta = p
        self.atoms.set_positions(new, apply_constraint=False)
        return new

    def kick(self, forces: np.ndarray) -> None:
        """Second half of a step: the half kick with the new ``forces``."""
        self.momenta = self.momenta + 0.5 * self.dt * forces
        self.steps_done += 1

    @property
    def active(self) -> bool:
        return self.failure is None and self.steps_done < self.settings.steps

    def record(self, epot: float, forces: np.ndarray, committee_energies=None,
               closest: float | None | bool = False) -> None:
        """Record the state after ``steps_done`` steps; sets ``failure`` when it blew up.
        ``closest``: the smallest interatomic distance (Å, ``None`` beyond
        :data:`DISTANCE_SEARCH`) when the prediction found it, else ``False``."""
        step, st = self.steps_done, self.settings
        etot = float(epot) + _kinetic(self.momenta, self.masses)
        pos = self.atoms.positions
        if not (math.isfinite(etot) and np.isfinite(forces).all() and np.isfinite(pos).all()):
            self.failure = "non-finite energy, forces or positions"
            return
        self.times.append(step * st.timestep / 1000.0)
        self.totals.append(etot / self.n)
        f = math.sqrt(float(np.einsum("ij,ij->i", forces, forces).max())) if self.n else 0.0
        self.fmax.append(f)
        if self.committee and committee_energies is not None:
            self.spreads.append(float(np.std(committee_energies)) / self.n)
        d = self.distance(self.atoms) if closest is False else closest
        if d is not None:
            self.min_d = d if self.min_d is None else min(self.min_d, d)
        if self.min_d is not None and self.min_d < st.min_distance_limit:
            self.failure = (f"atoms {self.min_d:.3g} Å apart (limit {st.min_distance_limit:g} Å) "
                            f"at step {step}")
        elif f > st.max_force_limit:
            self.failure = (f"force {f:.3g} eV/Å (limit {st.max_force_limit:g} eV/Å) "
                            f"at step {step}")

    def fail(self, exc: BaseException) -> None:
        self.failure = f"{type(exc).__name__} at step {self.steps_done + 1}: {exc}"

    def result(self) -> dict:
        st = self.settings
        t = np.asarray(self.times)
        e = np.asarray(self.totals) - (self.totals[0] if self.totals else 0.0)
        drift = float(np.polyfit(t, e, 1)[0]) if len(t) >= 2 else None
        finite = self.failure is None or not self.failure.startswith(
            ("non-finite", "FloatingPoint", "Overflow"))
        out = {"label": self.label, "n_atoms": int(self.n), "steps": int(st.steps),
               "steps_done": int(self.steps_done), "stable": self.failure is None,
               "finite": bool(finite), "failure": self.failure, "energy_drift": drift,
               "max_energy_deviation": float(np.abs(e).max()) if len(e) else None,
               "max_force": float(max(self.fmax)) if self.fmax else None,
               "min_distance": self.min_d, "seconds": round(self.seconds, 3),
               "time_ps": t.tolist(), "total_energy": e.tolist(),
               "max_force_trace": list(self.fmax)}
        if self.committee:
            out["committee_spread_mean"] = float(np.mean(self.spreads)) if self.spreads else None
            out["committee_spread_max"] = float(np.max(self.spreads)) if self.spreads else None
            out["spread_trace"] = list(self.spreads)
        return out


_RUN_ERRORS = (FloatingPointError, ValueError, RuntimeError, OverflowError)


def _run_alone(run: _Run, calculator: Any) -> None:
    """One run with any ASE calculator, asked for the forces after every step."""
    run.atoms.calc = calculator
    start = time.perf_counter()
    try:
        forces = run.atoms.get_forces()
        run.record(run.atoms.get_potential_energy(), forces,
                   calculator.results.get("committee_energies"))
        while run.active:
            run.drift(forces)
            forces = run.atoms.get_forces()
            run.kick(forces)
            run.record(run.atoms.get_potential_energy(), forces,
                       calculator.results.get("committee_energies"))
    except _RUN_ERRORS as exc:
        run.fail(exc)
    run.seconds = time.perf_counter() - start


def _committee_predict(calculator: Any, structures: list) -> list[dict]:
    """Energy (eV), forces (N, 3) eV/Å and the members' energies of each structure,
    from every member of an :class:`~nnpflow.calculator.NNPCalculator` at once
    (each member predicts the whole batch in one call; the committee mean is
    :func:`nnpflow.models.prediction_result.committee_mean`)."""
    from ..models.prediction_result import committee_mean
    mean = committee_mean([model.predict(structures, True) for model in calculator.models])
    return [{"energy": float(mean.energies[k]), "free_energy": float(mean.energies[k]),
             "forces": mean.forces[k], "committee_energies": mean.member_energies[:, k]}
            for k in range(len(structures))]


def _ann_models(calculator: Any) -> list | None:
    """The committee's ANN potentials when every member is one and they share
    their descriptor (:class:`~nnpflow.models.ann_trajectory.ANNTrajectory` can
    predict them), else ``None``."""
    from ..models.ann_model import ANNModel
    models = [getattr(getattr(m, "loaded", None), "module", None) for m in calculator.models]
    if not models or not all(isinstance(m, ANNModel) for m in models):
        return None
    if len({m.descriptor.fingerprint for m in models}) != 1:
        return None
    return models


class _TrajectoryPredictor:
    """Committee predictions of the runs' new positions with one
    :class:`~nnpflow.models.ann_trajectory.ANNTrajectory` per set of active runs
    (its Verlet list carries over from step to step)."""

    def __init__(self, models: list, runs: list[_Run]):
        self.models, self.runs = models, runs
        self.current: tuple = ()
        self.trajectory = None

    def __call__(self, keys: list[int]) -> list[dict]:
        from ..models.ann_trajectory import ANNTrajectory
        keys = tuple(keys)
        atoms = [self.runs[k].atoms for k in keys]
        if keys != self.current or self.trajectory is None:
            self.trajectory = ANNTrajectory(
                self.models, [a.get_chemical_symbols() for a in atoms],
                [a.cell[:] for a in atoms], [a.pbc for a in atoms])
            self.current = keys
        traj = self.trajectory
        step = traj.predict(np.concatenate([a.positions for a in atoms]), member_forces=False)
        use_closest = traj.cutoff >= DISTANCE_SEARCH
        out = []
        for b in range(len(keys)):
            members = step.energies[:, b]
            e = float(members.mean(axis=0))
            d = float(step.closest[b])
            out.append({"energy": e, "free_energy": e,
                        "forces": step.structure_forces(b),
                        "committee_energies": members,
                        "closest": (d if d <= DISTANCE_SEARCH else None) if use_closest
                        else False})
        return out


def _run_batched(runs: list[_Run], calculator: Any) -> None:
    """The runs in lockstep with one committee prediction per step for all of them
    (the forces at every active run's new positions in one call).  A prediction
    that fails for the batch is repeated run by run with ``calculator``, so that
    each run fails alone."""
    from ..structure import Structure
    ann = _ann_models(calculator)
    fast = _TrajectoryPredictor(ann, runs) if ann is not None else None

    def predict(keys: list[int]) -> list[dict]:
        if fast is not None:
            return fast(keys)
        return _committee_predict(calculator, [Structure.from_ase(runs[k].atoms)
                                               for k in keys])

    def alone(k: int) -> dict:
        atoms = runs[k].atoms
        atoms.calc = calculator
        try:
            atoms.get_forces()
            return dict(calculator.results)
        finally:
            atoms.calc = None

    start = time.perf_counter()
    forces: dict[int, np.ndarray] = {}
    keys = list(range(len(runs)))
    first = True
    while keys:
        try:
            results = predict(keys)
        except _RUN_ERRORS:
            results = [None] * len(keys)        # each run computes its own, and fails alone
        for k, res in zip(keys, results):
            run = runs[k]
            try:
                if res is None:
                    res = alone(k)
                forces[k] = res["forces"]
                if not first:
                    run.kick(forces[k])
                run.record(res["energy"], forces[k], res.get("committee_energies"),
                           res.get("closest", False))
            except _RUN_ERRORS as exc:
                run.fail(exc)
        first = False
        keys = []
        for k, run in enumerate(runs):
            if not run.active:
                continue
            try:
                run.drift(forces[k])
                keys.append(k)
            except _RUN_ERRORS as exc:
                run.fail(exc)
    seconds = time.perf_counter() - start
    for run in runs:
        run.seconds = seconds / max(len(runs), 1)


def nve_checks(calculator: Any, atoms_list: Sequence, settings: MDCheckSettings =
               MDCheckSettings(), labels: Sequence[str | None] | None = None) -> list[dict]:
    """NVE runs of each ``ase.Atoms`` of ``atoms_list`` (copied) with ``calculator``.

    With an :class:`~nnpflow.calculator.NNPCalculator` the runs go in lockstep
    and each step predicts every run's forces in one call per committee member
    (:func:`_run_batched`, ~2-3x faster for small structures; ANN potentials
    sharing a descriptor predict through one
    :class:`~nnpflow.models.ann_trajectory.ANNTrajectory`, whose Verlet list
    carries over from step to step, another ~4x); any other ASE calculator runs
    them one after the other.  Returns one record per run (the
    module docstring), plus ``time_ps``, ``total_energy`` (eV/atom, relative to
    the start), ``max_force_trace`` (eV/Å) and, for a committee,
    ``spread_trace`` (eV/atom): one entry per step done (for the plot;
    :func:`physical_checks` leaves them out of ``metrics.json``).
    """
    from ..calculator import NNPCalculator
    labels = list(labels) if labels is not None else [None] * len(atoms_list)
    committee = bool(getattr(calculator, "committee", False))
    runs = [_Run(a, settings, lab, committee) for a, lab in zip(atoms_list, labels)]
    if isinstance(calculator, NNPCalculator) and runs:
        _run_batched(runs, calculator)
    else:
        for run in runs:
            _run_alone(run, calculator)
    return [run.result() for run in runs]


def nve_check(calculator: Any, atoms, settings: MDCheckSettings = MDCheckSettings(),
              label: str | None = None) -> dict:
    """One NVE run of ``atoms`` with ``calculator`` (see :func:`nve_checks`)."""
    return nve_checks(calculator, [atoms], settings, [label])[0]


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
    with DatabaseReader(database, cache_size=0) as reader:
        chosen = pick_structures(reader.n_atoms, indices, settings.structures)
        structures = [(i, reader.structure(i)) for i in chosen]
    runs = nve_checks(calc, [s.to_ase() for _, s in structures], settings,
                      [s.name for _, s in structures])
    for (i, _), rec in zip(structures, runs):
        rec["index"] = int(i)
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
    from matplotlib.figure import Figure

    from ..safe_write import atomic_path
    spread = any(r.get("spread_trace") for r in runs)
    ncols = 3 if spread else 2
    # matplotlib's object API (no pyplot) and fixed margins: a layout engine
    # (constrained or tight) would double the drawing time (~0.1 s)
    fig = Figure(figsize=(4.2 * ncols, 3.6), dpi=90)
    fig.subplots_adjust(left=0.95 / (4.2 * ncols), right=1 - 0.2 / (4.2 * ncols), bottom=0.14,
                        top=0.83, wspace=0.38)
    axes = fig.subplots(1, ncols)
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
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
