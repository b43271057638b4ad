"""Annotation effort on synthetic prediction/refinement pairs with known answers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from iterseg.errors import ConversionError
from iterseg.evaluate.effort import case_effort, hd95, iteration_effort, summarise_effort
from iterseg.records import Assembled

pytestmark = pytest.mark.unit

LABELS = {"background": 0, "liver": 1, "tumour": 2}
SPACING = (3.0, 1.0, 1.0)  # mm per (z, y, x) voxel: 3 microlitres


def _prediction() -> np.ndarray:
    labels = np.zeros((10, 40, 40), dtype=np.uint8)
    labels[2:8, 5:25, 5:25] = 1  # liver: 6 slices x 400 voxels
    labels[4:6, 30:34, 30:34] = 2  # tumour: 2 slices x 16 voxels
    return labels


def test_identical_is_flagged_as_unedited() -> None:
    pred = _prediction()
    effort = case_effort("P1", pred, pred.copy(), LABELS, SPACING, tolerance_mm=2.0)
    assert effort.unedited and not effort.large_edit and effort.slices_edited == 0
    for edit in effort.labels:
        assert (edit.dice, edit.nsd, edit.hd95_mm, edit.volume_change_ml, edit.slices_edited) == (
            1,
            1,
            0,
            0,
            0,
        )
    liver = effort.labels[0]
    assert liver.volume_predicted_ml == pytest.approx(6 * 400 * 3 / 1000)


def test_one_slice_edited() -> None:
    pred = _prediction()
    refined = pred.copy()
    refined[7, 5:25, 5:25] = 0  # the liver's last slice removed: 400 voxels
    effort = case_effort("P1", pred, refined, LABELS, SPACING, tolerance_mm=2.0)
    liver, tumour = effort.labels
    assert not effort.unedited and not effort.large_edit
    assert effort.slices_edited == 1 and liver.slices_edited == 1 and tumour.slices_edited == 0
    assert liver.dice == pytest.approx(2 * 2000 / (2400 + 2000))
    assert liver.volume_change_ml == pytest.approx(-400 * 3 / 1000)
    assert liver.volume_change_pct == pytest.approx(-100 / 6, abs=0.01)
    assert liver.hd95_mm == pytest.approx(3.0)  # the removed slice's face moved one slice (3 mm)
    assert tumour.dice == 1.0 and tumour.hd95_mm == 0.0


def test_a_structure_removed_is_a_large_edit() -> None:
    pred = _prediction()
    refined = pred.copy()
    refined[refined == 2] = 0  # a false-positive tumour deleted
    effort = case_effort("P1", pred, refined, LABELS, SPACING, tolerance_mm=2.0)
    liver, tumour = effort.labels
    assert effort.large_edit and not effort.unedited and effort.slices_edited == 2
    assert tumour.dice == 0.0 and tumour.nsd == 0.0 and math.isnan(tumour.hd95_mm)
    assert tumour.volume_change_pct == -100.0 and tumour.volume_refined_ml == 0.0
    assert liver.dice == 1.0
    summary = summarise_effort([effort, case_effort("P2", pred, pred, LABELS, SPACING, 2.0)])
    assert summary["cases"] == 2 and summary["unedited"] == 1 and summary["large_edits"] == 1
    assert summary["slices_edited"] == 2 and summary["slices_edited_fraction"] == pytest.approx(2 / 20)
    assert summary["labels"]["tumour"]["dice_mean"] == 0.5  # type: ignore[index]
    assert summary["labels"]["tumour"]["hd95_mm_mean"] == 0.0  # type: ignore[index]
    assert effort.as_dict()["labels"][1]["hd95_mm"] is None  # type: ignore[index]


def test_hd95_of_a_shifted_box_is_the_shift() -> None:
    a = np.zeros((20, 20, 20), dtype=bool)
    a[5:15, 5:15, 5:15] = True
    b = np.roll(a, 2, axis=2)
    assert hd95(a, b, (1.0, 1.0, 2.0)) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="differ in shape"):
        hd95(a, b[:-1], (1.0, 1.0, 1.0))


def test_an_old_assembled_record_names_the_fix(tmp_path: Path) -> None:
    results = tmp_path / "2026-01-15"
    results.mkdir()
    (results / "predictions.json").write_text(
        json.dumps(
            [
                {
                    "case_id": "P9",
                    "patient_id": "P9",
                    "series_uid": "1.2.3",
                    "label": "labels/P9.nii.gz",
                    "seg": "seg/P9.dcm",
                    "voxels_per_label": {"liver": 10},
                }
            ]
        )
    )
    record = {"case_id": "P9_x", "image_series_uid": "1.2.3", "change": "new", "patient_id": "P9"}
    assembled = _assembled([record])
    with pytest.raises(ConversionError, match="forcerun convert_assemble"):
        iteration_effort(assembled, [results / "predictions.json"], 2.0)
    # only new or refined annotations are compared
    unchanged = _assembled([{**record, "change": "unchanged"}])
    assert iteration_effort(unchanged, [results / "predictions.json"], 2.0).summary["cases"] == 0


def _assembled(records: list[dict[str, object]]) -> Assembled:
    return Assembled(
        dataset_name="Dataset900_x", raw="raw", converted=(), labels=dict(LABELS), cases=(),
        test_cases=(), test_set={}, summary={}, records=tuple(records),
    )  # fmt: skip


def test_annotation_effort_round_trips_its_json(tmp_path: Path) -> None:
    from iterseg.records import AnnotationEffort, read_record, write_record

    pred = np.zeros((4, 8, 8), dtype=np.uint8)
    pred[1:3, 2:6, 2:6] = 1
    refined = pred.copy()
    refined[1, 2, 2] = 0
    row = {
        **case_effort("P1", pred, refined, {"background": 0, "liver": 1}, (2.0, 1.0, 1.0), 2.0).as_dict(),
        "patient_id": "P1",
        "split": "train",
        "seeded_by": {"iteration": "2026-01-15", "case_id": "P1", "label": "/r/labels/P1.nii.gz"},
        "annotation_files": ["a.dcm"],
    }
    data = {"cases": [row], "summary": {"cases": 1, "slices_edited_fraction": None, "labels": {}}}
    path = tmp_path / "annotation_effort.json"
    path.write_text(json.dumps(data, indent=2))
    write_record(path, read_record(path, AnnotationEffort))
    assert path.read_text() == json.dumps(data, indent=2) + "\n"
