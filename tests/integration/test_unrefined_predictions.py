"""Our own predicted SEGs dropped back into a snapshot unedited are not human annotations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, tree_digest
from iterseg.convert.snapshot import convert_snapshot
from iterseg.dicom.seg_writer import export_seg
from iterseg.dicom.series import find_image_series
from iterseg.errors import SnapshotError
from iterseg.rawdata.demo import make_phantom, phantom_arrays, write_ct_series

pytestmark = pytest.mark.integration
ROI = REPO / "config" / "roi_demo.yaml"
LABELS = {"background": 0, "liver": 1, "tumour": 2}


def _our_prediction(patient_dir: Path, patient_id: str, seed: int) -> Path:
    phantom = make_phantom(patient_id, seed)
    if not (patient_dir / "CT").exists():
        write_ct_series(phantom, patient_dir / "CT")
    (series,) = find_image_series(patient_dir / "CT", "CT")
    _, masks = phantom_arrays(phantom)
    label = np.zeros(masks[next(iter(masks))].shape, np.uint8)
    for value, mask in enumerate(masks.values(), start=1):
        label[mask] = value
    path = patient_dir / "SEG_predicted" / "iterseg.dcm"
    export_seg(label, series.datasets, LABELS, path, "iterseg demo 2026-01-15", "demo 2026-01-15")
    return path


@pytest.fixture()
def snapshot(demo_rawdata: Path, tmp_path: Path) -> Path:
    snap = tmp_path / "raw" / "2026-07-01__demo"
    shutil.copytree(demo_rawdata / "2026-01-15__demo" / "P001", snap / "P001")
    shutil.copytree(demo_rawdata / "2026-01-15__demo" / "P002", snap / "P002")
    return snap


def test_unedited_prediction_is_excluded_and_reported(snapshot: Path, tmp_path: Path) -> None:
    predicted = _our_prediction(snapshot / "P120", "P120", 120)
    # our prediction next to a human annotation of the same series: no "two annotations" error
    _our_prediction(snapshot / "P001", "P001", 1)
    before = tree_digest(snapshot)
    cases = convert_snapshot(snapshot, tmp_path / "out", ROI)
    assert sorted(c.patient_id for c in cases) == ["P001", "P002"]
    assert {c.annotation_kind for c in cases if c.patient_id == "P001"} == {"SEG"}
    excluded = json.loads((tmp_path / "out" / "excluded.json").read_text())
    assert sorted(e["patient_id"] for e in excluded) == ["P001", "P120"]
    assert str(predicted) in [f for e in excluded for f in e["files"]]
    assert all("unrefined iterseg prediction" in e["reason"] for e in excluded)
    assert tree_digest(snapshot) == before  # staging links files, never touches them


def test_unedited_predictions_can_be_allowed(snapshot: Path, tmp_path: Path) -> None:
    _our_prediction(snapshot / "P120", "P120", 120)
    cases = convert_snapshot(snapshot, tmp_path / "out", ROI, allow_unrefined=True)
    assert sorted(c.patient_id for c in cases) == ["P001", "P002", "P120"]
    assert json.loads((tmp_path / "out" / "excluded.json").read_text()) == []


def test_snapshot_of_only_predictions_is_refused(tmp_path: Path) -> None:
    snap = tmp_path / "2026-07-02__demo"
    _our_prediction(snap / "P121", "P121", 121)
    with pytest.raises(SnapshotError, match="every annotation is an unrefined iterseg prediction"):
        convert_snapshot(snap, tmp_path / "out", ROI)
