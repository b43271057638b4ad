"""Skipped cases surface in the manifest, ``iterseg status``, the report and at the end of the run;
prediction outputs are published by rename."""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

import pytest
from iterseg.rawdata.discovery import Snapshot
from iterseg.release import publish
from iterseg.release.manifest import skipped_cases
from iterseg.release.promote import skipped_list, status_table
from iterseg.skipped import (
    SKIPPED_FILE,
    SKIPPED_PREDICTIONS_FILE,
    SkippedCase,
    Stage,
    read_skipped,
    warn_run,
    write_skipped,
)

pytestmark = pytest.mark.unit

BAD_CT = SkippedCase(
    Stage.CONVERT,
    "2026-01-01__ds",
    "P7_1a2b3c4d",
    "P7",
    "raw/P7/CT/I5",
    "raw/P7/CT/I5: cut short; re-export it",
)
BAD_INBOX = SkippedCase(
    Stage.PREDICT, "raw/ds/inbox", "P 9", "", "raw/ds/inbox/P 9", "raw/ds/inbox/P 9: empty"
)


def _project(tmp_path: Path) -> dict[str, list[Snapshot]]:
    """Two iterations of ``ds``: the first's conversion and the second's prediction skipped a case."""
    dates = ("2026-01-01", "2026-02-01")
    write_skipped(tmp_path / f"data/procdata/ds/{dates[0]}__ds/converted" / SKIPPED_FILE, [BAD_CT])
    write_skipped(tmp_path / f"data/procdata/ds/{dates[1]}__ds/converted" / SKIPPED_FILE, [])
    write_skipped(tmp_path / f"data/results/ds/{dates[1]}" / SKIPPED_PREDICTIONS_FILE, [BAD_INBOX])
    return {"ds": [Snapshot("ds", d, tmp_path / "raw" / f"{d}__ds", i) for i, d in enumerate(dates)]}


def test_the_run_ends_with_one_warning_per_skipped_case(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    snapshots = _project(tmp_path)
    log = logging.getLogger("snakemake.test")
    with caplog.at_level(logging.WARNING):
        count = warn_run(snapshots, log, tmp_path / "data/procdata", tmp_path / "data/results")
    assert count == 2
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("snakemake.test", f"ds 2026-01-01: convert skipped P7_1a2b3c4d: {BAD_CT.message}"),
        ("snakemake.test", f"ds 2026-02-01: predict skipped P 9: {BAD_INBOX.message}"),
    ]
    assert all(not r.args for r in caplog.records)  # formatted already: Snakemake prints msg alone


def test_the_run_says_nothing_when_nothing_was_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    snapshots = {"ds": [Snapshot("ds", "2026-01-01", tmp_path, 0)]}  # no lists at all: an old run
    with caplog.at_level(logging.DEBUG):
        assert warn_run(snapshots, None, tmp_path / "data/procdata", tmp_path / "data/results") == 0
    assert caplog.records == []


def test_a_broken_list_is_named_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    broken = tmp_path / "data/results/ds/2026-01-01" / SKIPPED_PREDICTIONS_FILE
    broken.parent.mkdir(parents=True)
    broken.write_text("[{")
    snapshots = {"ds": [Snapshot("ds", "2026-01-01", tmp_path, 0)]}
    with caplog.at_level(logging.WARNING):
        warn_run(snapshots, None, tmp_path / "data/procdata", tmp_path / "data/results")
    assert "ds 2026-01-01: cannot read its list of skipped cases" in caplog.text


def test_the_manifest_lists_conversion_skips_of_every_snapshot_then_predictions(tmp_path: Path) -> None:
    _project(tmp_path)
    converted = [str(tmp_path / f"data/procdata/ds/{d}__ds/converted") for d in ("2026-01-01", "2026-02-01")]
    found = skipped_cases(converted, tmp_path / "data/results/ds/2026-02-01")
    assert found == [BAD_CT, BAD_INBOX]
    # assembled.json of runs before skipping existed has no "converted": only prediction's then
    assert skipped_cases((), tmp_path / "data/results/ds/2026-02-01") == [BAD_INBOX]
    assert read_skipped(tmp_path / "nothing.json") == []


def _manifest(results: Path, date: str, skipped: list[SkippedCase] | None) -> None:
    (results / date).mkdir(parents=True)
    (results / date / "iteration.json").write_text("{}")
    manifest = {
        "labels": {"background": 0, "liver": 1},
        "summary": {"train": 5, "test": 0, "new": 5, "refined": 0, "converted": 5, "reused": 0},
        "test_metrics": {},
        "promotion": {"promoted": True, "reason": "first"},
        "folds": [],
    }
    if skipped is not None:
        manifest["skipped"] = [asdict(c) for c in skipped]
    (results / date / "manifest.json").write_text(json.dumps(manifest))


def test_status_counts_and_lists_each_skipped_case_once(tmp_path: Path) -> None:
    _manifest(tmp_path, "2026-01-01", None)  # from before skipping existed
    _manifest(tmp_path, "2026-02-01", [BAD_CT])
    _manifest(tmp_path, "2026-03-01", [BAD_CT, BAD_INBOX])  # the snapshot's skip recurs
    rows = status_table(tmp_path).splitlines()
    column = rows[0].split().index("skipped")
    assert [r.split()[column] for r in rows[1:]] == ["-", "1", "2"]
    assert skipped_list(tmp_path).splitlines() == [
        "skipped cases (left out; each line names the file at fault and the fix):",
        f"  2026-02-01 convert P7_1a2b3c4d: {BAD_CT.message}",
        f"  2026-03-01 predict P 9: {BAD_INBOX.message}",
    ]
    assert skipped_list(tmp_path / "none") == ""


def test_the_report_table_has_a_skipped_column_and_the_list(tmp_path: Path) -> None:
    from iterseg.report.dataset import dataset_report

    _manifest(tmp_path, "2026-01-01", [])
    _manifest(tmp_path, "2026-02-01", [BAD_CT, BAD_INBOX])
    dataset_report(tmp_path, ["2026-01-01", "2026-02-01"], tmp_path / "report")
    rows = list(csv.DictReader((tmp_path / "report/iterations.csv").open()))
    assert [r["skipped"] for r in rows] == ["0", "2"]
    html = (tmp_path / "report/iterations.html").read_text()
    assert "<h3>Skipped cases" in html and "P7_1a2b3c4d" in html and "raw/ds/inbox/P 9: empty" in html


def test_a_folder_is_published_in_one_swap(tmp_path: Path) -> None:
    new, target = tmp_path / "staging" / "labels", tmp_path / "out" / "labels"
    new.mkdir(parents=True)
    (new / "A.nii.gz").write_text("new")
    target.mkdir(parents=True)
    (target / "OLD.nii.gz").write_text("old")
    publish.replace_dir(new, target)
    assert [p.name for p in target.iterdir()] == ["A.nii.gz"] and not new.exists()
    assert sorted(p.name for p in (tmp_path / "staging").iterdir()) == []


def test_without_an_atomic_swap_two_renames_do_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(publish, "_exchange", lambda a, b: False)
    staging, out = tmp_path / "staging", tmp_path / "out"
    (staging / "seg").mkdir(parents=True)
    (staging / "seg" / "A.dcm").write_text("new")
    (staging / "predictions.json").write_text("[new]")
    (out / "seg").mkdir(parents=True)
    (out / "seg" / "OLD.dcm").write_text("old")
    (out / "predictions.json").write_text("[old]")
    renames: list[str] = []
    real_rename = os.rename
    monkeypatch.setattr(os, "rename", lambda a, b: (renames.append(Path(b).name), real_rename(a, b)))
    publish.publish(staging, out, ["seg", "predictions.json"])
    assert [p.name for p in (out / "seg").iterdir()] == ["A.dcm"]
    assert (out / "predictions.json").read_text() == "[new]" and not staging.exists()
    assert renames == ["seg.old", "seg"]


def test_staging_moves_beside_the_results_folder_across_file_systems(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work, out = tmp_path / "procdata/it", tmp_path / "results/ds/2026-01-01"
    assert (
        publish.staging_dir(work / "predictions.partial", out, "predictions") == work / "predictions.partial"
    )
    real = publish._device
    monkeypatch.setattr(publish, "_device", lambda p: real(p) + (1 if "procdata" in str(p) else 0))
    staged = publish.staging_dir(work / "predictions.partial", out, "predictions")
    assert staged == out.parent / ".2026-01-01.predictions"  # outside the results folder itself
