"""The PACS settings and the pull's decisions, without a PACS (the Orthanc tests are in integration/)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pydicom
import pytest
from iterseg.config import load_settings
from iterseg.convert.annotations import referenced_series
from iterseg.errors import ConfigError, PacsError
from iterseg.pacs.client import credentials
from iterseg.pacs.inventory import (
    Inventory,
    PacsAnnotation,
    PacsSeries,
    Prediction,
    ProjectState,
)
from iterseg.pacs.pull import check_date, inbox_folder, incomplete, plan_pull, safe_name
from iterseg.pacs.settings import AuthSettings
from iterseg.paths import pacs_pushes
from iterseg.rawdata.discovery import Snapshot

pytestmark = pytest.mark.unit


def _config(**pacs: object) -> dict:
    return {
        "datasets": {
            "liver": {"dataset_id": 5, "modality": "MR", "pacs": {"url": "https://pacs/dicom-web", **pacs}}
        }
    }


def test_pacs_settings_defaults_and_filters() -> None:
    settings = load_settings(
        _config(
            studies={
                "patient_ids": ["LIV*"],
                "study_date_from": "2024-01-01",
                "study_description": "(?i)liver",
            }
        )
    )
    pacs = settings.datasets["liver"].pacs
    assert pacs is not None and pacs.attempts == 3 and pacs.push.enabled
    assert pacs.push.transfer_syntax.value == "explicit_vr_little_endian"
    assert pacs.studies.modality == "MR"  # the dataset's, unless pacs.studies.modality says otherwise
    assert pacs.studies.date_range() == "20240101-"
    assert pacs.studies.study_description is not None and pacs.studies.study_description.search("LIVER MRI")
    assert settings.datasets["liver"].seg.transfer_syntax.value == "deflated"
    assert load_settings({"datasets": {"x": {"dataset_id": 1}}}).datasets["x"].pacs is None


@pytest.mark.parametrize(
    ("pacs", "message"),
    [
        ({"auth": {"username_env": "U"}}, "password_env"),
        ({"auth": {"username_env": "U", "password_env": "P", "token_env": "T"}}, "choose one way"),
        (
            {"studies": {"study_date_from": "2024-05-01", "study_date_to": "2024-01-01"}},
            "before study_date_from",
        ),
        ({"studies": {"study_description": "(unclosed"}}, "not a regular expression"),
        ({"auth": {"password": "hunter2"}}, "Additional properties"),  # no place for a secret
    ],
)
def test_bad_pacs_settings_are_named(pacs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(_config(**pacs))


def test_credentials_come_from_the_named_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    auth = AuthSettings(username_env="PACS_U", password_env="PACS_P")
    monkeypatch.setenv("PACS_U", "alice")
    monkeypatch.delenv("PACS_P", raising=False)
    with pytest.raises(
        PacsError, match=r"PACS_P \(config key datasets.liver.pacs.auth.password_env\) is not set"
    ):
        credentials(auth, "https://pacs/dicom-web", "liver")
    monkeypatch.setenv("PACS_P", "s3cret")
    basic = credentials(auth, "https://pacs/dicom-web", "liver")
    assert (basic.username, basic.password) == ("alice", "s3cret")
    netrc = tmp_path / "netrc"
    netrc.write_text("machine pacs login bob password pw\n")
    netrc.chmod(0o600)
    basic = credentials(AuthSettings(netrc=netrc), "https://pacs:8443/dicom-web", "liver")
    assert (basic.username, basic.password) == ("bob", "pw")
    with pytest.raises(PacsError, match="no `machine other` entry"):
        credentials(AuthSettings(netrc=netrc), "https://other/dicom-web", "liver")
    assert credentials(AuthSettings(), "https://pacs/dicom-web", "liver") is None


def _series(uid: str, modality: str = "CT", patient: str = "P1") -> PacsSeries:
    return PacsSeries("study-" + patient, uid, patient, modality)


def _annotation(sop: str, refs: tuple[str, ...], unrefined: bool = False) -> PacsAnnotation:
    return PacsAnnotation(_series("seg-" + sop, "SEG"), sop, refs, "Slicer", unrefined)


def test_plan_takes_new_annotations_with_their_images_and_sends_the_rest_to_the_inbox(tmp_path: Path) -> None:
    images = {uid: _series(uid, patient=f"P{uid}") for uid in ("1", "2", "3", "4")}
    inventory = Inventory(
        images,
        (
            _annotation("a-old", ("1",)),  # pulled before
            _annotation("a-new", ("2",)),  # refines our prediction of series 2
            _annotation("a-ours", ("3",), unrefined=True),  # an unedited SEG of ours (another copy)
            _annotation("a-lost", ("9",)),  # its images are not on the PACS
        ),
        our_segs_on_pacs=2,
    )
    state = ProjectState(
        frozenset({"a-old"}),
        frozenset({"1"}),
        {"2": Prediction("2026-01-15", "P2_ab", "seg-uid")},
        frozenset(),
    )
    (tmp_path / "inbox" / inbox_folder(images["4"])).mkdir(parents=True)  # series 4: already in the inbox
    plan = plan_pull(inventory, state, tmp_path / "inbox", allow_unrefined=False)
    assert [a.sop_uid for a in plan.annotations] == ["a-new"]
    assert [s.series_uid for s in plan.images] == ["2"]
    assert plan.refines == {"a-new": {"iteration": "2026-01-15", "case_id": "P2_ab"}}
    assert plan.inbox == ()  # 3 is referenced (by our SEG), 4 is in the inbox, 1 in a snapshot
    assert (plan.already_pulled, plan.unrefined_predictions, plan.our_segs_on_pacs) == (1, 1, 2)
    (problem,) = plan.problems
    assert "a-lost" in problem and "series 9" in problem
    assert not plan.empty
    keep_ours = plan_pull(inventory, state, tmp_path / "inbox", allow_unrefined=True)
    assert [a.sop_uid for a in keep_ours.annotations] == ["a-new", "a-ours"]


def test_nothing_new_is_an_empty_plan(tmp_path: Path) -> None:
    inventory = Inventory({"1": _series("1")}, (_annotation("a", ("1",)),), 0)
    plan = plan_pull(inventory, ProjectState(frozenset({"a"}), frozenset({"1"})), tmp_path, False)
    assert plan.empty


def test_snapshot_dates_only_move_forward(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    check_date("2026-03-02", ["2026-01-15"], root)
    with pytest.raises(PacsError, match="exists and is never rewritten"):
        check_date("2026-01-15", ["2026-01-15"], root)
    with pytest.raises(PacsError, match="before the newest snapshot 2026-01-15"):
        check_date("2025-12-31", ["2026-01-15"], root)
    with pytest.raises(PacsError, match="not a date"):
        check_date("2026-13-01", [], root)
    assert dt.date.fromisoformat("2026-03-02")


def test_unsafe_patient_ids_become_one_path_component() -> None:
    assert safe_name("../../etc/passwd") == "etc-passwd"
    assert safe_name("Müller^Hans") == "M-ller-Hans"
    assert safe_name("") == "unnamed"
    assert inbox_folder(_series("1.2.3", patient="a/b")).startswith("a-b_")


def test_references_of_seg_and_rtstruct() -> None:
    seg = pydicom.Dataset()
    seg.Modality = "SEG"
    item = pydicom.Dataset()
    item.SeriesInstanceUID = "1.2"
    seg.ReferencedSeriesSequence = [item]
    assert referenced_series(seg) == "1.2"  # the series the pull fetches is the one conversion pairs
    rt, frame, study, series = (pydicom.Dataset() for _ in range(4))
    series.SeriesInstanceUID = "3.4"
    study.RTReferencedSeriesSequence = [series]
    frame.RTReferencedStudySequence = [study]
    rt.ReferencedFrameOfReferenceSequence = [frame]
    rt.Modality = "RTSTRUCT"
    assert referenced_series(rt) == "3.4"
    empty = pydicom.Dataset()
    empty.Modality = "SEG"
    assert referenced_series(empty) is None


def test_a_cut_image_is_recognised() -> None:
    from pydicom.dataset import FileMetaDataset

    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.SamplesPerPixel = 4, 4, 16, 1
    assert incomplete(ds) == "no pixel data"
    ds.PixelData = bytes(20)
    assert incomplete(ds) == "20 of 32 bytes of pixel data"
    ds.PixelData = bytes(32)
    assert incomplete(ds) is None
    ds.BitsAllocated, ds.NumberOfFrames, ds.Rows, ds.Columns = 1, 3, 5, 3  # bit-packed across frames
    ds.PixelData = bytes(6)
    assert incomplete(ds) is None  # ceil(45 / 8) = 6


def test_push_records_only_for_datasets_with_a_pacs(tmp_path: Path) -> None:
    snaps = {
        "a": [Snapshot("a", "2026-01-15", tmp_path, 0), Snapshot("a", "2026-03-02", tmp_path, 1)],
        "b": [Snapshot("b", "2026-01-15", tmp_path, 0)],
    }
    assert pacs_pushes(snaps, ["a"]) == [
        "data/results/a/2026-01-15/pacs_pushed.json",
        "data/results/a/2026-03-02/pacs_pushed.json",
    ]


def test_an_rtstruct_cut_short_is_named() -> None:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = Dataset()
    ds.Modality = "RTSTRUCT"
    ds.StructureSetROISequence = Sequence([Dataset()])
    assert incomplete(ds) == "no ROIContourSequence"
    ds.ROIContourSequence = Sequence([Dataset()])
    assert incomplete(ds) is None
