"""``iterseg pacs pull`` of a multi-sequence dataset against a real Orthanc: whole studies, checked channels.

The PACS holds the two-sequence MR demo (AX FLAIR + T1 AX per patient, SEG on the FLAIR): three
annotated patients complete, one annotated patient without its T1, the inbox patient P101
complete and P102 without its T1.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from conftest import REPO
from iterseg.convert.channels import parse_channels
from iterseg.convert.snapshot import convert_snapshot
from iterseg.pacs.pull import describe_plan, pacs_status, pull_dataset, short_hash
from iterseg.rawdata.demo_mr import DEMO_MR_DATASET, SNAPSHOT_DATE, write_demo_mr_dataset
from iterseg.rawdata.inbox import scan_inbox
from orthanc_server import OrthancServer, start_orthanc
from pacs_project import PASSWORD_ENV, USER_ENV

pytestmark = pytest.mark.integration

DATASET = DEMO_MR_DATASET
CHANNELS = parse_channels({"FLAIR": ["flair"], "T1": ["^t1"]})
ROI = REPO / "config/roi_demo.yaml"
DATE, LATER = "2026-02-01", "2026-02-02"
COMPLETE, NO_T1 = ("P001", "P002", "P003"), "P004"


@pytest.fixture(scope="module")
def mr_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rawdata") / DATASET
    write_demo_mr_dataset(root)
    return root


def _snapshot_source(mr_demo: Path) -> Path:
    return mr_demo / f"{SNAPSHOT_DATE}__{DATASET}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, mr_demo: Path) -> Iterator[OrthancServer]:
    """An Orthanc with the MR demo: P001-P003 whole, P004 (annotated) and P102 (inbox) without T1."""
    with start_orthanc(tmp_path_factory.mktemp("orthanc")) as orthanc:
        snapshot = _snapshot_source(mr_demo)
        for patient in COMPLETE:
            orthanc.upload_folder(snapshot / patient)
        for sub in ("FLAIR", "SEG"):
            orthanc.upload_folder(snapshot / NO_T1 / sub)
        orthanc.upload_folder(mr_demo / "inbox" / "P101")
        orthanc.upload_folder(mr_demo / "inbox" / "P102" / "FLAIR")
        yield orthanc


def _settings(project: Path, url: str) -> Any:
    from iterseg.config import load_settings

    config = yaml.safe_load((REPO / "config/demo_mr.yaml").read_text())
    config["rawdata"] = str(project / "data/rawdata")
    config["datasets"][DATASET]["roi_yaml"] = str(ROI)
    config["datasets"][DATASET]["pacs"] = {
        "url": url,
        "auth": {"username_env": USER_ENV, "password_env": PASSWORD_ENV},
    }
    return load_settings(config)


def _pull(project: Path, server: OrthancServer, date: str) -> Any:
    s = _settings(project, server.dicomweb_url)
    assert s.datasets[DATASET].channels == CHANNELS
    return pull_dataset(s, DATASET, s.rawdata, s.inbox, project / "data/results", date)


@pytest.fixture(scope="module")
def pulled(
    server: OrthancServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, Any, list[str]]]:
    """The project after one pull, the pull's result, and what ``pacs status`` said before it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(USER_ENV, server.user)
        mp.setenv(PASSWORD_ENV, server.password)
        project = tmp_path_factory.mktemp("project")
        s = _settings(project, server.dicomweb_url)
        plan = pacs_status(s, DATASET, s.rawdata, s.inbox, project / "data/results")
        yield project, _pull(project, server, DATE), describe_plan(plan, server.dicomweb_url)


def _headers(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(folder.iterdir())]


def _study_uid(mr_demo: Path, patient: str) -> str:
    folder = mr_demo / "inbox" / patient
    folder = folder if folder.is_dir() else _snapshot_source(mr_demo) / patient
    any_file = next((folder / "FLAIR").iterdir())
    return str(pydicom.dcmread(any_file, stop_before_pixels=True).StudyInstanceUID)


def test_every_annotated_study_comes_whole(pulled: tuple[Path, Any, list[str]], mr_demo: Path) -> None:
    project, result, _ = pulled
    snapshot = project / f"data/rawdata/{DATASET}/{DATE}__{DATASET}"
    assert result.snapshot == snapshot
    assert sorted(p.name for p in snapshot.iterdir() if p.is_dir()) == list(COMPLETE)
    for patient in COMPLETE:
        folders = {p.name.split("_")[0]: [] for p in (snapshot / patient).iterdir()}
        for folder in sorted((snapshot / patient).iterdir()):
            folders[folder.name.split("_")[0]].append({ds.SeriesDescription for ds in _headers(folder)})
        assert sorted(folders) == ["MR", "SEG"] and len(folders["SEG"]) == 1
        assert sorted(d for (d,) in folders["MR"]) == ["AX FLAIR", "T1 AX"]
        files = [f for f in (_snapshot_source(mr_demo) / patient).rglob("*") if f.is_file()]
        source = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
        got = {str(ds.SOPInstanceUID) for f in (snapshot / patient).iterdir() for ds in _headers(f)}
        assert got == source  # every slice of both series, and the SEG
    record = json.loads((snapshot / "pacs_pull.json").read_text())
    assert record["channels"] == ["FLAIR", "T1"] and len(record["images"]) == 2 * len(COMPLETE)


def test_the_pulled_snapshot_converts_with_both_channels(
    pulled: tuple[Path, Any, list[str]], tmp_path: Path
) -> None:
    _, result, _ = pulled
    assert result.snapshot is not None
    cases = convert_snapshot(result.snapshot, tmp_path / "converted", ROI, "MR", jobs=2, channels=CHANNELS)
    assert sorted(c.patient_id for c in cases) == list(COMPLETE)
    for case in cases:
        (t1,) = case.extra_channels
        assert (t1["channel"], t1["index"], t1["description"]) == ("T1", 1, "T1 AX")
        assert t1["image"].endswith("_0001.nii.gz") and (tmp_path / "converted" / t1["image"]).is_file()


def test_the_inbox_gets_one_folder_per_study_and_one_case_with_both_channels(
    pulled: tuple[Path, Any, list[str]], mr_demo: Path
) -> None:
    project, result, status = pulled
    inbox = project / f"data/rawdata/{DATASET}/inbox"
    expected = f"P101_{short_hash(_study_uid(mr_demo, 'P101'))}"
    assert [p.name for p in result.inbox_folders] == [expected] == [p.name for p in inbox.iterdir()]
    assert len([p for p in (inbox / expected).iterdir() if p.is_dir()]) == 2
    scan = scan_inbox(inbox, "MR", CHANNELS)
    assert not scan.unusable
    (case,) = scan.cases
    assert case.case_id == expected and case.series is not None
    assert case.series.datasets[0].SeriesDescription == "AX FLAIR"
    assert [s.datasets[0].SeriesDescription for s in case.channels] == ["T1 AX"]
    text = "\n".join(status)
    assert "(whole studies, for the channels FLAIR, T1)" in text
    assert (
        f"P101: study {_study_uid(mr_demo, 'P101')}, 2 MR series" in text and f"-> inbox/{expected}" in text
    )


def test_a_study_missing_its_t1_is_named_and_taken_once_complete(
    pulled: tuple[Path, Any, list[str]], server: OrthancServer, mr_demo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project, result, status = pulled
    problems = result.plan.problems
    for patient, study in ((NO_T1, _study_uid(mr_demo, NO_T1)), ("P102", _study_uid(mr_demo, "P102"))):
        (problem,) = [p for p in problems if f"patient {patient}" in p]
        assert study in problem and "no series for channel T1" in problem and "'AX FLAIR'" in problem
        assert any(problem in line for line in status if line.startswith("  left on the PACS: "))
    assert NO_T1 not in [a.series.patient_id for a in result.plan.annotations]
    assert not (project / f"data/rawdata/{DATASET}/{DATE}__{DATASET}/{NO_T1}").exists()
    monkeypatch.setenv(USER_ENV, server.user)
    monkeypatch.setenv(PASSWORD_ENV, server.password)
    before = sorted(str(p) for p in (project / "data/rawdata").rglob("*"))
    again = _pull(project, server, LATER)  # nothing new: the incomplete studies stay named
    assert again.plan.empty and again.snapshot is None and len(again.plan.problems) == 2
    assert sorted(str(p) for p in (project / "data/rawdata").rglob("*")) == before
    server.upload_folder(_snapshot_source(mr_demo) / NO_T1 / "T1")
    server.upload_folder(mr_demo / "inbox" / "P102" / "T1")
    third = _pull(project, server, LATER)
    assert not third.plan.problems and [a.series.patient_id for a in third.plan.annotations] == [NO_T1]
    assert third.snapshot is not None and [p.name for p in third.snapshot.iterdir() if p.is_dir()] == [NO_T1]
    assert len(list((third.snapshot / NO_T1).iterdir())) == 3  # FLAIR, T1, SEG
    assert [p.name.split("_")[0] for p in third.inbox_folders] == ["P102"]
