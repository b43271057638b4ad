"""An edit inside a converted snapshot stops snakemake at start-up; `iterseg reconvert` is the opt-in.

Without the check, snakemake says "Nothing to be done" for such an edit: its mtime was put back,
and the rule's input is the snapshot folder, whose time does not change either.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, tree_digest

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

BIN = Path(sys.executable).parent
FIRST, SECOND = "2026-01-15", "2026-03-02"


def run(project: Path, *cmd: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    return subprocess.run(
        list(cmd), cwd=project, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def convert(project: Path, date: str, *earlier: str) -> None:
    """What rule convert_snapshot runs (workflow/rules/convert.smk), into the project's procdata."""
    done = run(
        project,
        str(BIN / "iterseg"), "-q", "convert",
        "--snapshot", f"data/rawdata/demo/{date}__demo",
        "--out", f"data/procdata/demo/{date}__demo/converted",
        "--roi-yaml", "config/roi_demo.yaml", "--modality", "CT",
        "--mask-saving-strategy", "sparse_mask", "--duplicate-annotations", "error",
        "--reuse-from", *[f"data/procdata/demo/{d}__demo/converted/cases.json" for d in earlier],
        "--jobs", "2",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def dry_run(project: Path) -> subprocess.CompletedProcess[str]:
    return run(
        project,
        str(BIN / "snakemake"), "-n",
        "--snakefile", str(REPO / "Snakefile"), "--directory", str(project),
        "--configfile", str(project / "config/demo.yaml"),
    )  # fmt: skip


def converts(dry: subprocess.CompletedProcess[str]) -> set[str]:
    """Dates whose convert_snapshot job the dry run lists."""
    jobs = [job for job in dry.stdout.split("\nrule ")[1:] if job.startswith("convert_snapshot:")]
    return {job.split("output: data/procdata/demo/")[1][:10] for job in jobs}


def test_edit_in_converted_snapshot_is_refused_until_reconverted(tmp_path: Path, demo_rawdata: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(REPO / "config", project / "config")
    shutil.copytree(demo_rawdata, project / "data/rawdata/demo")
    raw = project / "data/rawdata"
    pristine = tree_digest(raw)
    convert(project, FIRST)
    convert(project, SECOND, FIRST)
    assert tree_digest(raw) == pristine
    assert (project / f"data/procdata/demo/{FIRST}__demo/converted/snapshot_files.json").is_file()

    baseline = dry_run(project)
    assert baseline.returncode == 0, baseline.stdout[-3000:] + baseline.stderr[-3000:]
    assert converts(baseline) == set()  # both converted: snakemake sees nothing to convert

    # An edit as a viewer saving in place would make it, with the old mtime put back (rsync -t).
    edited = sorted((raw / f"demo/{FIRST}__demo/P002/CT").iterdir())[0]
    before = edited.stat()
    data = bytearray(edited.read_bytes())
    data[-1] ^= 0xFF
    edited.write_bytes(bytes(data))
    os.utime(edited, ns=(before.st_atime_ns, before.st_mtime_ns))
    as_edited = tree_digest(raw)

    refused = dry_run(project)
    said = refused.stdout + refused.stderr  # snakemake 9 prints its WorkflowError on stdout
    assert refused.returncode != 0, said[-3000:]
    assert f"changed  P002/CT/{edited.name}" in said
    assert f"data/rawdata/demo/{FIRST}__demo: 1 file(s) differ" in said
    assert f"`iterseg reconvert demo {FIRST}`" in said
    assert "Nothing to be done" not in said

    reconverted = run(project, str(BIN / "iterseg"), "reconvert", "demo", FIRST)
    assert reconverted.returncode == 0, reconverted.stderr
    assert f"and re-runs iteration {FIRST} and the later one(s) {SECOND}" in reconverted.stderr

    again = dry_run(project)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert converts(again) == {FIRST, SECOND}  # that iteration and, by mtime, every later one
    assert tree_digest(raw) == as_edited  # nothing of the workflow wrote into rawdata


def test_convert_all_stops_after_conversion_where_until_cannot(tmp_path: Path, demo_rawdata: Path) -> None:
    """Two snapshots: every assembly needs the first one's test set, which --until cannot schedule."""
    project = tmp_path / "project"
    shutil.copytree(REPO / "config", project / "config")
    shutil.copytree(demo_rawdata, project / "data/rawdata/demo")
    base = [
        str(BIN / "snakemake"), "-n", "--snakefile", str(REPO / "Snakefile"), "--directory", str(project),
        "--configfile", str(project / "config/demo.yaml"),
    ]  # fmt: skip
    until = run(project, *base, "--until", "convert_assemble")
    assert until.returncode != 0 and "Out of jobs ready to be started" in until.stdout + until.stderr
    target = run(project, base[0], "convert_all", *base[1:])  # --configfile takes every argument after it
    assert target.returncode == 0, target.stdout[-3000:] + target.stderr[-3000:]
    scheduled = {
        line.split()[1].rstrip(":") for line in target.stdout.splitlines() if line.startswith("rule ")
    }
    assert scheduled == {"convert_all", "convert_assemble", "convert_snapshot"}, target.stdout[-2000:]
    assert converts(target) == {FIRST, SECOND}
