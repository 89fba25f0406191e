"""Stage ``split``: the training/validation/test split of the ingested structures.

Inputs are the manifest stage's outputs: ``manifest.json`` (``n_structures`` and
``structures_fingerprint``) and ``manifest.tsv`` (each structure's label and
content hash), so the split depends on the structures only -- never on the
descriptor or the database settings, and a descriptor change keeps it.

``method="stable"`` (the default) decides each structure's part from a seeded
hash of its label and content (:func:`nnpflow.splitting.make_stable_split`):
adding or removing files never moves another structure to another part.
``method="permutation"`` draws one seeded permutation with exact part sizes
(:func:`nnpflow.splitting.make_split`).  Output ``split`` is ``split.json``
(:mod:`nnpflow.splitting`): sorted 0-based indices per part into the manifest's
order (= the database's order), the sizes and fractions reached, the structures
fingerprint they belong to, the seed and the settings.  Written atomically.

``fit_atomic_energies=True`` (the workflow's ``atomic_energies: fit``) fits
per-species reference energies by least squares on the training part's total
energies and compositions, read from the manifest
(:func:`nnpflow.energy_reference.fit_atomic_energies`), and stores them in
``split.json`` under ``atomic_energies_fit``: the training part is decided here,
so this is where its references are fitted, once for every model.  The train
stage applies them as if they had been given.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from ..energy_reference import fit_atomic_energies as least_squares_references
from ..errors import ConfigError, InputError
from ..io.manifest import read_manifest
from ..structure import atomic_number
from .manifest import read_summary
from ..splitting import SPLIT_METHODS, make_split, make_stable_split, sizes_summary, write_split

log = logging.getLogger(__name__)


def run(manifest_summary: str, split: str, manifest: str | None = None,
        validation: Any = 0.1, test: Any = 0.1, seed: int = 42,
        method: str = "stable", fit_atomic_energies: bool = False) -> dict:
    """Split the structures of ``manifest_summary`` / ``manifest``; write ``split``.

    ``validation``, ``test``: fractions in [0, 1) or counts >= 1 (``train`` gets
    the rest); ``seed``: seed of the draws; ``method``: ``stable`` (needs
    ``manifest``, the manifest TSV) or ``permutation``; ``fit_atomic_energies``:
    fit reference energies on the training part (see the module docstring).
    Returns the counts per part.
    """
    if method not in SPLIT_METHODS:
        raise ConfigError(f"split.method must be one of {', '.join(SPLIT_METHODS)}, "
                          f"got {method!r}")
    info = read_summary(manifest_summary, ("n_structures", "structures_fingerprint"))
    try:
        n = int(info["n_structures"])
        fingerprint = str(info["structures_fingerprint"])
    except (ValueError, TypeError) as exc:
        raise InputError(f"not a manifest summary ({type(exc).__name__}: {exc})",
                         source=str(manifest_summary)) from None
    rows = None
    if method == "stable" or fit_atomic_energies:
        if manifest is None:
            raise ConfigError("split.method stable and fitted atomic energies need the "
                              "manifest (labels, content hashes, compositions, energies)")
        rows = read_manifest(manifest)
        if len(rows) != n:
            raise InputError(f"the manifest lists {len(rows)} structures, its summary "
                             f"{manifest_summary} {n}: they come from different runs",
                             source=str(manifest))
    if method == "stable":
        result = make_stable_split([r["label"] for r in rows], [r["content_hash"] for r in rows],
                                   validation, test, seed, fingerprint)
    else:
        result = make_split(n, validation, test, seed, fingerprint)
    if fit_atomic_energies:
        fit = fit_on_rows(rows, result.train, str(manifest))
        result = dataclasses.replace(result, atomic_energies_fit=fit)
        log.info("atomic_energies: fit on %d training structures (rank %d of %d species): %s; "
                 "per-atom RMSE left %.4g eV/atom", fit["n_structures"], fit["rank"],
                 len(fit["atomic_energies"]),
                 ", ".join(f"{k} {v:.6g} eV" for k, v in fit["atomic_energies"].items()),
                 fit["rmse_per_atom"])
        if fit["rank"] < len(fit["atomic_energies"]):
            log.warning("atomic_energies: the training compositions determine only %d "
                        "combinations of the %d references (one stoichiometry?): the "
                        "minimum-norm solution is used", fit["rank"], len(fit["atomic_energies"]))
    write_split(split, result)
    log.info("split (%s): %d structures (fingerprint %s...) with seed %d: %s", method, n,
             fingerprint[:16], int(seed), sizes_summary(result))
    return result.counts


def fit_on_rows(rows: list[dict], train, source: str) -> dict:
    """The least-squares references fitted on the manifest ``rows`` at positions
    ``train`` (their ``species`` counts ``Au:4 Cu:4`` and total ``energy``), for
    every species of ``rows`` by atomic number: a species no training structure
    holds raises ``ConfigError``."""
    counts = []
    for row in rows:
        try:
            counts.append({sym: int(k) for sym, k in
                           (item.split(":") for item in row["species"].split())})
        except ValueError:
            raise InputError(f"malformed species counts {row['species']!r} of "
                             f"{row['label']}", source=source) from None
    species = sorted({s for c in counts for s in c}, key=atomic_number)
    comp = [[counts[i].get(s, 0) for s in species] for i in train]
    energies = [float(rows[i]["energy"]) if rows[i]["energy"] else float("nan") for i in train]
    fit = least_squares_references(comp, energies, species)
    return {"method": "least squares on the training part", **fit}
