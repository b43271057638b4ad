import json
import math
from pathlib import Path

import numpy as np
import pytest
from iterseg.evaluate.metrics import dice, score_case, summarise, surface_dice
from iterseg.evaluate.test_set import evaluate_test_set
from iterseg.records import HoldoutMetrics, read_record, write_json, write_record

pytestmark = pytest.mark.unit


def cube(shape: tuple[int, ...], start: tuple[int, ...], size: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(s, s + size) for s in start)] = True
    return mask


def test_identical_masks_score_one() -> None:
    mask = cube((10, 10, 10), (2, 2, 2), 4)
    assert dice(mask, mask) == 1.0
    assert surface_dice(mask, mask, (1.0, 1.0, 1.0), 0.0) == 1.0


def test_disjoint_masks_far_apart_score_zero() -> None:
    ref = cube((30, 10, 10), (1, 2, 2), 4)
    pred = cube((30, 10, 10), (20, 2, 2), 4)
    assert dice(ref, pred) == 0.0
    assert surface_dice(ref, pred, (1.0, 1.0, 1.0), 2.0) == 0.0


def test_cube_shifted_by_one_voxel() -> None:
    ref = cube((12, 12, 12), (3, 3, 3), 4)
    pred = cube((12, 12, 12), (4, 3, 3), 4)
    # 4x4x4 cubes overlapping in 3x4x4 = 48 voxels: Dice = 2*48 / (64+64) = 0.75.
    assert dice(ref, pred) == pytest.approx(0.75)
    # Every surface element of one cube is within 1 voxel (1 mm) of the other's surface.
    assert surface_dice(ref, pred, (1.0, 1.0, 1.0), 1.0) == 1.0
    # With tolerance 0 only the elements both surfaces share match: the sides along the shift,
    # not the two end faces of each cube (which lie 1 mm from the other's).
    exact = surface_dice(ref, pred, (1.0, 1.0, 1.0), 0.0)
    assert 0.5 < exact < 0.8
    assert exact == pytest.approx(surface_dice(pred, ref, (1.0, 1.0, 1.0), 0.0))  # symmetric


def test_anisotropic_spacing_tolerance_is_per_axis_in_mm() -> None:
    ref = cube((16, 16, 16), (5, 5, 5), 4)
    shifted_z = cube((16, 16, 16), (6, 5, 5), 4)
    shifted_x = cube((16, 16, 16), (5, 5, 6), 4)
    spacing = (0.5, 1.0, 3.0)  # (z, y, x) mm
    # One voxel along z is 0.5 mm: within 1 mm, so every surface element is matched.
    assert surface_dice(ref, shifted_z, spacing, 1.0) == 1.0
    # One voxel along x is 3 mm: the end faces across x (and their rims) are 3 mm from the other
    # surface, the rest of it is shared: a share of the area is lost, not of the voxel count.
    partial = surface_dice(ref, shifted_x, spacing, 1.0)
    assert 0.8 < partial < 0.95
    # Dice does not see spacing: both shifts give 2*48/128.
    assert dice(ref, shifted_z) == dice(ref, shifted_x) == pytest.approx(0.75)
    # A tolerance of exactly 3 mm includes the x shift.
    assert surface_dice(ref, shifted_x, spacing, 3.0) == 1.0


def test_empty_masks() -> None:
    empty = np.zeros((6, 6, 6), dtype=bool)
    full = cube((6, 6, 6), (1, 1, 1), 2)
    assert math.isnan(dice(empty, empty))
    assert math.isnan(surface_dice(empty, empty, (1.0, 1.0, 1.0), 1.0))
    assert dice(empty, full) == 0.0
    assert dice(full, empty) == 0.0
    assert surface_dice(empty, full, (1.0, 1.0, 1.0), 1.0) == 0.0
    assert surface_dice(full, empty, (1.0, 1.0, 1.0), 1.0) == 0.0


def test_mask_touching_the_array_edge_has_a_surface_there() -> None:
    # A 2-voxel slab filling the whole array: its surface runs along the array edge, exactly as
    # if the array were larger.
    ref = np.ones((2, 3, 3), dtype=bool)
    pred = ref.copy()
    pred[1] = False
    inside = np.zeros((6, 7, 7), dtype=bool)
    big_ref, big_pred = inside.copy(), inside.copy()
    big_ref[2:4, 2:5, 2:5], big_pred[2:4, 2:5, 2:5] = ref, pred
    for tolerance in (0.0, 0.5, 1.0):
        at_edge = surface_dice(ref, pred, (1.0, 1.0, 1.0), tolerance)
        assert at_edge == pytest.approx(surface_dice(big_ref, big_pred, (1.0, 1.0, 1.0), tolerance))
    assert (
        0.0
        < surface_dice(ref, pred, (1.0, 1.0, 1.0), 0.0)
        < 1.0
        == surface_dice(ref, pred, (1.0, 1.0, 1.0), 1.0)
    )


def test_shape_mismatch_and_bad_spacing_raise() -> None:
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((2, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="spacing"):
        surface_dice(np.ones((2, 2), bool), np.ones((2, 2), bool), (1.0, 1.0, 1.0), 1.0)


def test_score_case_per_label_and_skip_list() -> None:
    ref = np.zeros((10, 10, 10), dtype=np.uint8)
    pred = np.zeros_like(ref)
    ref[1:3, 1:3, 1:3] = 1
    pred[1:3, 1:3, 1:3] = 1  # identical
    ref[6:8, 6:8, 6:8] = 2  # liver missed: Dice 0
    pred[6:8, 6:8, 6:8] = 3  # predicted where "lung" was not annotated
    labels = {"background": 0, "heart": 1, "liver": 2, "lung": 3, "ignore": 4}
    scores = score_case(ref, pred, labels, (1.0, 1.0, 1.0), 1.0, skip=("lung",))
    assert set(scores) == {"heart", "liver", "lung"}
    assert scores["heart"] == {"dice": 1.0, "nsd": 1.0}
    assert scores["liver"] == {"dice": 0.0, "nsd": 0.0}
    assert math.isnan(scores["lung"]["dice"]) and math.isnan(scores["lung"]["nsd"])
    without_skip = score_case(ref, pred, labels, (1.0, 1.0, 1.0), 1.0)
    assert without_skip["lung"] == {"dice": 0.0, "nsd": 0.0}


def test_score_case_region_labels() -> None:
    ref = np.array([[[1, 2, 0, 0]]], dtype=np.uint8)
    pred = np.array([[[2, 2, 0, 0]]], dtype=np.uint8)
    scores = score_case(ref, pred, {"background": 0, "whole": [1, 2], "core": 2}, (1.0, 1.0, 1.0), 0.0)
    assert scores["whole"]["dice"] == 1.0
    assert scores["core"]["dice"] == pytest.approx(2 * 1 / (1 + 2))


def test_summarise_is_nan_aware() -> None:
    nan = math.nan
    per_case = {
        "A": {"heart": {"dice": 0.8, "nsd": 0.9}, "lung": {"dice": nan, "nsd": nan}},
        "B": {"heart": {"dice": 0.6, "nsd": 0.7}, "lung": {"dice": 0.5, "nsd": 0.4}},
        "C": {"heart": {"dice": nan, "nsd": nan}, "lung": {"dice": nan, "nsd": nan}},
    }
    summary = summarise(per_case)
    assert summary["heart"] == {"dice_mean": pytest.approx(0.7), "nsd_mean": pytest.approx(0.8), "cases": 2}
    assert summary["lung"] == {"dice_mean": pytest.approx(0.5), "nsd_mean": pytest.approx(0.4), "cases": 1}
    # Mean over labels of the label means: (0.7 + 0.5) / 2 and (0.8 + 0.4) / 2; case C has no score.
    assert summary["mean"] == {"dice_mean": pytest.approx(0.6), "nsd_mean": pytest.approx(0.6), "cases": 2}


def test_summarise_label_never_scored_and_no_cases() -> None:
    summary = summarise({"A": {"heart": {"dice": math.nan, "nsd": math.nan}}})
    assert math.isnan(summary["heart"]["dice_mean"]) and summary["heart"]["cases"] == 0
    assert math.isnan(summary["mean"]["dice_mean"]) and summary["mean"]["cases"] == 0
    assert summarise({}) == {}


def test_large_volume_is_cropped(tmp_path: Path) -> None:
    # 200x512x512 with a small structure: cropping keeps this fast and memory-light.
    ref = np.zeros((200, 512, 512), dtype=bool)
    ref[100:110, 200:230, 200:230] = True
    pred = np.zeros_like(ref)
    pred[101:111, 200:230, 200:230] = True
    assert surface_dice(ref, pred, (2.5, 0.8, 0.8), 2.5) == 1.0
    assert dice(ref, pred) == pytest.approx(2 * 9 / 20)


def test_write_json_turns_nan_into_null(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    write_json(path, {"a": math.nan, "b": [np.float64(0.5), np.int64(3)], "c": {"d": math.inf}})
    assert json.loads(path.read_text()) == {"a": None, "b": [0.5, 3], "c": {"d": None}}


def test_evaluate_with_no_cases_writes_empty_metrics(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "heart": 1}}))
    report = evaluate_test_set(model, ("all",), "cpu", [], tmp_path / "out", 2.0)
    written = json.loads((tmp_path / "out" / "test_metrics.json").read_text())
    assert written == report.to_json()
    assert read_record(tmp_path / "out" / "test_metrics.json", HoldoutMetrics) == report
    assert written["cases"] == {} and written["summary"] == {}
    assert written["labels"] == {"background": 0, "heart": 1} and written["folds"] == ["all"]


def test_test_metrics_round_trip_their_json(tmp_path: Path) -> None:
    data = {
        "tolerance_mm": 2.0,
        "folds": ["0", "1"],
        "labels": {"background": 0, "liver": 1, "ignore": 2},
        "cases": {"P1": {"patient_id": "P1", "metrics": {"liver": {"dice": 0.9, "nsd": None}}}},
        "summary": {"liver": {"dice_mean": 0.9, "nsd_mean": None, "cases": 1}},
    }
    path = tmp_path / "test_metrics.json"
    path.write_text(json.dumps(data, indent=2))
    write_record(path, read_record(path, HoldoutMetrics))
    assert path.read_text() == json.dumps(data, indent=2) + "\n"
