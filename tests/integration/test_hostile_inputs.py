"""The hostile corpus (``hostile_corpus.ROWS``) through the real CLI and the real start-up.

Each group of per-case rows is one snapshot in a temporary project, converted twice by the
``iterseg convert`` command line of ``workflow/rules/convert.smk``: ``--on-bad-case skip`` (exit
0, bad cases in ``skipped.json``, the rest in ``cases.json``) and ``--on-bad-case fail`` (exit
2, one stderr line per bad case). Around both runs the whole temporary tree is digested (files,
links, folders and modes; the project's procdata and results left out) and canary paths that
hostile header values aim at are looked for. Start-up rows go through ``snakemake -n`` or, where
snakemake adds nothing, the start-up code path in-process. One test per row reads the shared run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hostile_corpus as hc
import pytest
import yaml
from conftest import REPO

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
RAWDATA = Path("data/rawdata")
PROCDATA = Path("data/procdata") / hc.DATASET / hc.SNAPSHOT
LOGS = Path("data/results") / hc.DATASET / hc.DATE / "logs"
ROI_YAML = Path("config") / f"roi_{hc.DATASET}.yaml"
SKIPPED_KEYS = {"stage", "where", "case", "patient_id", "file", "message"}
BAD = {hc.Outcome.SKIPPED, hc.Outcome.REFUSED}
TIMEOUT = 300


def convert_command(policy: str, out: Path, log: Path) -> list[str]:
    """The shell line of rule convert_snapshot for a first snapshot (no earlier conversions)."""
    return [
        str(BIN / "iterseg"), "--log", str(log), "convert",
        "--snapshot", str(RAWDATA / hc.DATASET / hc.SNAPSHOT), "--out", str(out),
        "--roi-yaml", str(ROI_YAML), "--modality", "CT", "--mask-saving-strategy", "sparse_mask",
        "--duplicate-annotations", "error", "--reuse-from", "--on-bad-case", policy, "--jobs", "2",
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}


@dataclass
class Run:
    """One ``iterseg convert`` of a group's snapshot."""

    policy: str
    returncode: int
    stdout: str
    stderr: str
    log: str
    out: Path
    seconds: float

    def json(self, name: str) -> list[dict[str, Any]] | None:
        path = self.out / name
        return json.loads(path.read_text()) if path.is_file() else None

    @property
    def summary(self) -> str:
        return f"exit {self.returncode}; stderr:\n{self.stderr[-3000:]}\nlog tail:\n{self.log[-2000:]}"


@dataclass
class GroupRun:
    """A group's snapshot, built once, converted with skip and with fail."""

    project: Path
    made: dict[str, hc.Made]
    runs: dict[str, Run] = field(default_factory=dict)
    rawdata_changes: list[str] = field(default_factory=list)
    outside_changes: list[str] = field(default_factory=list)
    canaries: list[str] = field(default_factory=list)


def _convert(project: Path, policy: str) -> Run:
    out = PROCDATA / ("converted" if policy == "skip" else f"converted-{policy}")
    log = LOGS / f"convert_snapshot-{policy}.log"
    start = time.monotonic()
    proc = subprocess.run(
        convert_command(policy, out, log),
        cwd=project,
        env=_env(),
        capture_output=True,
        text=True,
        errors="replace",
        timeout=TIMEOUT,
        check=False,
    )
    text = (project / log).read_text(errors="replace") if (project / log).is_file() else ""
    return Run(
        policy, proc.returncode, proc.stdout, proc.stderr, text, project / out, time.monotonic() - start
    )


def canaries(root: Path, project: Path) -> list[str]:
    """Paths hostile PatientIDs, member names or folder names would have created."""
    found = []
    for top, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            if name in {hc.CANARY, hc.SHELL_CANARY, "outside", "canary"} or name.startswith(f"{hc.CANARY}-"):
                found.append(os.path.join(top, name))
    bases = [Path("/"), Path("/tmp"), root.parent, *(Path(top) for top, _, _ in os.walk(project))]
    for base in bases:
        for rel in ("../../../outside", "outside", hc.SHELL_CANARY):
            path = os.path.normpath(base / rel)
            if os.path.lexists(path):
                found.append(path)
    return sorted(set(found))


def run_group(root: Path, group: str) -> GroupRun:
    project = root / "project"
    snapshot = project / RAWDATA / hc.DATASET / hc.SNAPSHOT
    made = hc.build_group(snapshot, group)
    hc.write_roi_yaml(project / ROI_YAML)
    result = GroupRun(project, made)
    outside = [project / "data" / "procdata", project / "data" / "results"]
    rawdata_before = hc.tree_state(project / RAWDATA)
    tree_before = hc.tree_state(root.parent, exclude=outside)
    for policy in ("skip", "fail"):
        result.runs[policy] = _convert(project, policy)
    result.rawdata_changes = hc.tree_changes(rawdata_before, hc.tree_state(project / RAWDATA))
    result.outside_changes = hc.tree_changes(tree_before, hc.tree_state(root.parent, exclude=outside))
    result.canaries = canaries(root.parent, project)
    return result


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> GroupRun:
    return run_group(tmp_path_factory.mktemp("faults"), "faults")


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> GroupRun:
    return run_group(tmp_path_factory.mktemp("archives"), "archives")


# --- matching lines to rows -------------------------------------------------------------------


def names_folder(text: str, folder: str) -> bool:
    """Whether ``text`` holds a path through ``folder`` (the case's folder or archive)."""
    return re.search(rf"/{re.escape(folder)}(?![\w.-])", text) is not None


def carries(line: str, row: hc.Row, made: hc.Made) -> bool:
    """The line names one of the row's files and carries its fragments, none of its forbidden words."""
    low = line.lower()
    named = not made.names or any(name in line for name in made.names)
    return (
        named
        and all(f.lower() in low for f in row.fragment)
        and not any(f.lower() in low for f in row.forbid)
    )


def entries_of(made: hc.Made, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        e
        for e in entries
        if names_folder(str(e.get("file", "")), made.folder)
        or names_folder(str(e.get("message", "")), made.folder)
        or (made.patient_id is not None and e.get("patient_id") == made.patient_id)
    ]


def cases_of(made: hc.Made, cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in cases if any(names_folder(f, made.folder) for f in c["image_files"])]


# --- group-wide checks ------------------------------------------------------------------------


@pytest.mark.parametrize("group", ["faults", "archives"])
def test_skip_exits_0_and_fail_exits_2_without_traceback(group: str, request: pytest.FixtureRequest) -> None:
    run: GroupRun = request.getfixturevalue(group)
    skip, fail = run.runs["skip"], run.runs["fail"]
    for one in (skip, fail):
        for where, text in (("stdout", one.stdout), ("stderr", one.stderr), ("log", one.log)):
            assert "Traceback" not in text, f"{one.policy}: traceback in {where}:\n{text[-4000:]}"
    assert skip.returncode == 0, skip.summary
    assert skip.json("cases.json"), f"skip: no cases.json / no case converted; {skip.summary}"
    assert fail.returncode == 2, fail.summary


@pytest.mark.parametrize("group", ["faults", "archives"])
def test_rawdata_and_everything_outside_the_project_unchanged(
    group: str, request: pytest.FixtureRequest
) -> None:
    run: GroupRun = request.getfixturevalue(group)
    assert not run.rawdata_changes, "rawdata changed:\n" + "\n".join(run.rawdata_changes[:20])
    assert not run.outside_changes, "written outside the project's procdata/results:\n" + "\n".join(
        run.outside_changes[:20]
    )
    assert not run.canaries, f"hostile names created {run.canaries}"


@pytest.mark.parametrize("group", ["faults", "archives"])
def test_skipped_json_lists_exactly_the_bad_cases(group: str, request: pytest.FixtureRequest) -> None:
    run: GroupRun = request.getfixturevalue(group)
    skip = run.runs["skip"]
    entries = skip.json("skipped.json")
    assert entries is not None, f"no skipped.json; {skip.summary}"
    bad = [run.made[r.id] for r in hc.rows(group) if r.outcome in BAD]
    for entry in entries:
        assert set(entry) == SKIPPED_KEYS, entry
        assert entry["stage"] == "convert" and entry["where"] == hc.SNAPSHOT, entry
        assert "\n" not in entry["message"], f"not one line: {entry['message']!r}"
        assert any(entry in entries_of(made, entries) for made in bad), f"listed, but not a bad case: {entry}"


def test_archives_unpack_only_the_good_archive(archives: GroupRun) -> None:
    unpacked = archives.project / PROCDATA / "unpacked"
    listing = sorted(p.name for p in unpacked.iterdir()) if unpacked.is_dir() else []
    assert listing == ["archive-good.tar.gz"], f"unpacked: {listing} (refused archives leave nothing)"


def test_a_snapshot_without_a_good_case_stops(tmp_path: Path) -> None:
    project = tmp_path / "project"
    made = hc.garbage_slice(project / RAWDATA / hc.DATASET / hc.SNAPSHOT)
    hc.write_roi_yaml(project / ROI_YAML)
    run = _convert(project, "skip")
    assert "Traceback" not in run.stderr + run.stdout + run.log, run.summary
    assert run.returncode == 2, run.summary
    assert any(names_folder(line, made.folder) for line in run.stderr.splitlines()), run.summary


# --- one test per row -------------------------------------------------------------------------


def _check_bad(row: hc.Row, made: hc.Made, run: GroupRun) -> None:
    skip, fail = run.runs["skip"], run.runs["fail"]
    entries = skip.json("skipped.json")
    assert entries is not None, f"no skipped.json; {skip.summary}"
    mine = entries_of(made, entries)
    assert mine, f"{row.id}: not in skipped.json; {skip.summary}"
    assert any(carries(e["message"], row, made) for e in mine), (
        f"{row.id}: no skipped.json message names {made.names} with {row.fragment}"
        f"{' without ' + str(row.forbid) if row.forbid else ''}: {[e['message'] for e in mine]}"
    )
    cases = skip.json("cases.json") or []
    assert not cases_of(made, cases), f"{row.id}: skipped, yet in cases.json"
    warned = [line for line in skip.log.splitlines() if "WARNING" in line and names_folder(line, made.folder)]
    assert warned, f"{row.id}: no warning in the log names it; {skip.summary}"
    lines = [line for line in fail.stderr.splitlines() if names_folder(line, made.folder)]
    assert fail.returncode == 2 and any(carries(line, row, made) for line in lines), (
        f"{row.id}: with fail, no stderr line names {made.names} with {row.fragment}; {fail.summary}"
    )


def _check_converted(row: hc.Row, made: hc.Made, run: GroupRun) -> None:
    skip, fail = run.runs["skip"], run.runs["fail"]
    cases = skip.json("cases.json")
    assert cases is not None, f"{row.id}: no cases.json; {skip.summary}"
    mine = cases_of(made, cases)
    assert len(mine) == 1, f"{row.id}: {len(mine)} case(s) in cases.json; {skip.summary}"
    (case,) = mine
    assert re.fullmatch(r"[A-Za-z0-9_-]+", case["case_id"]), f"unsafe case id {case['case_id']!r}"
    for key in ("image", "label"):
        path = skip.out / case[key]
        assert path.is_file() and path.resolve().is_relative_to(skip.out.resolve()), path
    assert not entries_of(made, skip.json("skipped.json") or []), f"{row.id}: converted and skipped"
    assert not any(names_folder(line, made.folder) for line in fail.stderr.splitlines()), (
        f"{row.id}: a good case is named on stderr with fail: {fail.stderr[-2000:]}"
    )


def _check_excluded(row: hc.Row, made: hc.Made, run: GroupRun) -> None:
    skip = run.runs["skip"]
    excluded = skip.json("excluded.json")
    assert excluded is not None, f"no excluded.json; {skip.summary}"
    mine = [e for e in excluded if any(names_folder(f, made.folder) for f in e["files"])]
    assert mine and all(all(f.lower() in e["reason"].lower() for f in row.fragment) for e in mine), excluded
    assert not cases_of(made, skip.json("cases.json") or [])
    assert not entries_of(made, skip.json("skipped.json") or []), f"{row.id}: excluded and skipped"


def _snakemake_dry_run(project: Path) -> tuple[int, str]:
    command = [str(BIN / "snakemake"), "-n", "--snakefile", str(REPO / "Snakefile")]
    command += ["--directory", str(project), "--configfile", str(project / hc.STARTUP_CONFIG), "--cores", "1"]
    proc = subprocess.run(
        command, env=_env(), capture_output=True, text=True, errors="replace", timeout=TIMEOUT, check=False
    )
    return proc.returncode, proc.stdout + proc.stderr


def _start_in_process(project: Path) -> tuple[int, str]:
    """What common.smk does at start-up: validate the config, discover every dataset's snapshots."""
    from iterseg.config import load_settings
    from iterseg.errors import IterSegError
    from iterseg.rawdata.discovery import discover_snapshots

    config = yaml.safe_load((project / hc.STARTUP_CONFIG).read_text())
    config["rawdata"] = str(project / RAWDATA)
    try:
        settings = load_settings(config, project / "config")
        for name in settings.datasets:
            discover_snapshots(settings.rawdata, name, settings.inbox)
    except IterSegError as exc:
        return 1, str(exc)
    return 0, ""


def _check_startup(row: hc.Row, project: Path) -> None:
    hc.startup_project(project)
    shutil.copy(REPO / "config" / "config.yaml", project / "config" / "config.yaml")
    made = row.build(project)
    before = hc.tree_state(project / RAWDATA)
    try:
        code, text = (_snakemake_dry_run if row.via == "snakemake" else _start_in_process)(project)
        changes = hc.tree_changes(before, hc.tree_state(project / RAWDATA))
    finally:
        for top, dirs, _ in os.walk(project / RAWDATA):  # writable again, so the tmp folder can go
            os.chmod(top, 0o755)
            for name in dirs:
                os.chmod(os.path.join(top, name), 0o755)
    assert "Traceback" not in text, text[-4000:]
    assert not changes, f"rawdata changed: {changes[:10]}"
    if row.outcome is hc.Outcome.STARTUP_OK:
        assert code == 0, text[-4000:]
        return
    assert code != 0, f"{row.id}: started (exit 0), must stop naming {made.names}:\n{text[-2000:]}"
    assert any(carries(line, row, made) for line in text.splitlines()), (
        f"{row.id}: no line names {made.names} with {row.fragment}:\n{text[-3000:]}"
    )


@pytest.mark.parametrize("row", hc.ROWS, ids=[r.id for r in hc.ROWS])
def test_row(row: hc.Row, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if row.group == "startup":
        _check_startup(row, tmp_path / "project")
        return
    run: GroupRun = request.getfixturevalue(row.group)
    made = run.made[row.id]
    if row.outcome in BAD:
        _check_bad(row, made, run)
    elif row.outcome is hc.Outcome.EXCLUDED:
        _check_excluded(row, made, run)
    else:
        _check_converted(row, made, run)


def test_the_table_is_large_and_its_ids_unique() -> None:
    ids = [r.id for r in hc.ROWS]
    assert len(ids) == len(set(ids)) and len(ids) >= 45
    assert sum(r.via == "snakemake" for r in hc.ROWS) >= 2
