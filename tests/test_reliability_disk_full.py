"""Issue 13: a full disk or a missing file in ``nnpflow db build/merge/info`` and
``nnpflow ingest`` gives one line naming the file, exit status 2, no traceback, and
nothing partial at the target (the atomic writers already guaranteed the last).

A full disk is played by ``RLIMIT_FSIZE`` in a subprocess (with ``SIGXFSZ``
ignored, a write past the limit fails with ``EFBIG``, "File too large", through
exactly the code path ``ENOSPC`` takes).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nnpflow.cli import main as cli_main
from nnpflow.database import write_database
from nnpflow.io.xsf import write_xsf
from test_reliability_schema import cells  # the same 4-atom Cu/Au cells

LIMITED = textwrap.dedent("""
    import resource, signal, sys
    from nnpflow.cli import main
    limit = int(sys.argv[1])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    sys.exit(main(sys.argv[2:]))
""")
DESCRIPTOR = ["--species", "Cu", "Au", "--rad-order", "2", "--rad-cutoff", "3",
              "--ang-order", "1", "--ang-cutoff", "2.5"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("full")
    (folder / "data").mkdir()
    for s in cells(60):
        write_xsf(folder / "data" / f"{s.name}.xsf", s)
    write_database(folder / "good.h5", cells(60))
    return folder


def limited(folder: Path, limit: int, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LIMITED, str(limit), *argv], cwd=folder,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command, target", [
    (["db", "build", "data", "-o", "out/db.h5", *DESCRIPTOR], "out/db.h5"),
    (["db", "merge", "good.h5", "good.h5", "-o", "out/merged.h5"], "out/merged.h5"),
    (["ingest", "data", "-o", "out/manifest.tsv"], "out/manifest.tsv"),
])
def test_a_full_disk_is_one_line_naming_the_file(data, command, target):
    (data / "out").mkdir(exist_ok=True)
    proc = limited(data, 3000, *command)
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, err[-3000:])
    assert len(err.splitlines()) == 1, err[-3000:]
    assert err == (f"nnpflow {command[0]}: error: cannot write {target}: File too large "
                   "(nothing was written there)"), err
    assert list((data / "out").iterdir()) == []  # no partial file, no temporary


def test_missing_files_are_one_line_naming_the_file(data, capsys):
    cases = [
        (["db", "info", "nowhere.h5"], "nnpflow db: error: database nowhere.h5 does not exist"),
        (["db", "merge", "good.h5", "nowhere.h5", "-o", "m.h5"],
         "nnpflow db: error: database nowhere.h5 does not exist"),
        (["db", "build", "nowhere.xsf", "-o", "m.h5", *DESCRIPTOR],
         "nnpflow db: error: source entry 1 (nowhere.xsf): 'nowhere.xsf' does not exist"),
        (["ingest", "nowhere.xsf", "-o", "m.tsv"],
         "nnpflow ingest: error: source entry 1 (nowhere.xsf): 'nowhere.xsf' does not exist"),
        (["ingest", str(data / "data"), "-o", "/proc/no/such/m.tsv"],
         "nnpflow ingest: error: cannot write /proc/no/such/m.tsv: No such file or directory"),
    ]
    import os
    here = os.getcwd()
    os.chdir(data)
    try:
        for argv, message in cases:
            assert cli_main(argv) == 2, argv
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and err.startswith(message), (argv, err)
    finally:
        os.chdir(here)
    assert not (data / "m.h5").exists() and not (data / "m.tsv").exists()
