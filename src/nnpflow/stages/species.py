"""Stage ``species``: the species list of the data set, as a file that changes only
when the species do.

With ``species: null`` the descriptor's species are those of the whole data set.
Every build job needs them, but no build job should rerun when a new file brings
no new species.  This stage writes ``species`` (``species.txt``: one element
symbol per line, ordered by atomic number, as ``manifest.json`` lists them) from
the manifest summary, and leaves an existing file untouched -- same bytes, same
modification time -- when its content would not change.  The workflow makes it a
checkpoint whose output is an ``update()`` file read by the build jobs as their
``species`` param, so that only a changed list reruns every build.  A change is
logged as a warning naming the species added and removed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..errors import InputError
from ..safe_write import write_text

log = logging.getLogger(__name__)


def inferred_species(manifest_summary: str) -> list[str]:
    """The species of ``manifest.json`` (the manifest stage's summary; sorted by
    atomic number)."""
    try:
        with open(manifest_summary, encoding="utf-8") as fh:
            info = json.load(fh)
        species = [str(x) for x in info["species"]]
    except OSError as exc:
        raise InputError(f"cannot read the manifest summary: {exc.strerror}",
                         source=str(manifest_summary)) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"not a manifest summary (no species list: {exc})",
                         source=str(manifest_summary)) from None
    if not species:
        raise InputError("the manifest holds no structures, so no species can be inferred; "
                         "set species in the configuration or add sources",
                         source=str(manifest_summary))
    return species


def read_species_file(path: str) -> list[str]:
    """The species of a ``species.txt`` (one symbol per line; blank lines ignored)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read the species file: {exc.strerror}",
                         source=str(path)) from None
    species = [line.strip() for line in text.splitlines() if line.strip()]
    if not species:
        raise InputError("the species file lists no species", source=str(path))
    return species


def species_text(species: list[str]) -> str:
    return "".join(f"{s}\n" for s in species)


def run(manifest_summary: str, species: str) -> dict:
    """Write ``species`` from ``manifest_summary``'s species when they differ from the
    file's.  Returns ``{"species", "changed", "added", "removed"}``."""
    now = inferred_species(manifest_summary)
    path = Path(species)
    before = read_species_file(species) if path.is_file() else None
    if before == now:
        log.info("species unchanged (%s): %s kept as it is, so no database shard is rebuilt "
                 "for it", " ".join(now), species)
        return {"species": now, "changed": False, "added": [], "removed": []}
    write_text(species, species_text(now))
    added = [s for s in now if s not in (before or [])]
    removed = [s for s in (before or []) if s not in now]
    if before is None:
        log.info("species of the data set: %s (written to %s)", " ".join(now), species)
    else:
        what = "; ".join(part for part in (
            f"new: {' '.join(added)}" if added else "",
            f"gone: {' '.join(removed)}" if removed else "") if part)
        log.warning("the species changed from %s to %s (%s): every database shard is rebuilt, "
                    "because the descriptor's features depend on the species list",
                    " ".join(before), " ".join(now), what)
    return {"species": now, "changed": True, "added": added, "removed": removed}
