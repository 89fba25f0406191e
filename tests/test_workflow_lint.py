"""``snakemake --lint`` finds nothing to criticise in the workflow.

Snakemake's linter checks the Snakefile and every rule file (absolute paths, rules
without log files, hard-coded output prefixes in params, functions mixed with rules,
...).  It prints ``Congratulations, your workflow is in a good condition!`` and exits
0 when it has no findings, and lists them and exits 1 otherwise.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.workflow]


def test_snakemake_lint_is_clean(tmp_path, copy_workflow):
    copy_workflow(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Lints for" not in out, out[-6000:]
    assert "your workflow is in a good condition" in out, out[-6000:]


def test_lint_finds_a_planted_problem(tmp_path, copy_workflow):
    """The test above can fail: a rule file with an absolute path is reported."""
    copy_workflow(tmp_path)
    split = tmp_path / "workflow" / "rules" / "split.smk"
    split.write_text(split.read_text() + '\n\nrule planted:\n    output:\n'
                     '        "/tmp/planted-by-the-lint-test.txt",\n    shell:\n        "touch {output}"\n')
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=tmp_path,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Lints for" in out and "planted" in out, out[-6000:]
