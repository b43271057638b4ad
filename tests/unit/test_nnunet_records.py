"""The nnU-Net stage's records round-trip the JSON written before they were dataclasses; one model loader."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from iterseg.records import (
    PlanRecord,
    PredictedRecord,
    Prediction,
    Predictions,
    TrainedRecord,
    read_record,
    write_record,
)

pytestmark = pytest.mark.unit

PLANNED = {
    "dataset_id": 901,
    "dataset_name": "Dataset901_demo_20260115",
    "plans": "nnUNetPlans",
    "configuration": "3d_fullres",
    "plans_source": None,
    "architecture": {"network_class_name": "x.PlainConvUNet", "arch_kwargs": {"n_stages": 3}},
    "patch_size": [16, 32, 32],
    "spacing": [2.5, 0.8, 0.8],
    "batch_size": 2,
    "overrides": None,
    "parameters": 12345,
    "planner": "nnUNetPlannerResEncM",
}
TRAINED = {
    "fold": "0",
    "trainer": "nnUNetTrainerIterSegDemo",
    "checkpoint": "/data/procdata/demo/x/fold_0/checkpoint_final.pth",
    "pretrained": None,
    "epochs": 2,
    "initial_lr": 0.001,
    "seconds": 12.3,
}
PREDICTED = {
    "results": "/r",
    "predictions": "/r/predictions.json",
    "skipped": "/r/skipped_predictions.json",
    "cases": ["P1", "P2"],
    "skipped_cases": [],
    "on_bad_case": "skip",
}
PREDICTIONS = [
    {
        "case_id": "P1",
        "patient_id": "P1",
        "series_uid": "1.2.3",
        "label": "labels/P1.nii.gz",
        "seg": "seg/P1.dcm",
        "voxels_per_label": {"liver": 10},
        "volume_ml": {"liver": 0.05},
        "mean_entropy": 0.1,
        "fold_dice": {"liver": None},
    }
]


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        (PlanRecord, PLANNED),
        (TrainedRecord, TRAINED),
        (PredictedRecord, PREDICTED),
        (Predictions, PREDICTIONS),
    ],
)
def test_a_record_round_trips_its_json_exactly(tmp_path: Path, kind: Any, data: Any) -> None:
    path = tmp_path / "record.json"
    path.write_text(json.dumps(data, indent=2))
    record = read_record(path, kind)
    write_record(path, record)
    assert path.read_text() == json.dumps(data, indent=2) + "\n"  # same keys, order and values


def test_a_plan_record_older_than_the_planner_choice_reads_as_the_classic_planner(tmp_path: Path) -> None:
    path = tmp_path / "planned.json"
    path.write_text(json.dumps({k: v for k, v in PLANNED.items() if k != "planner"}))
    assert read_record(path, PlanRecord).planner == "ExperimentPlanner"


def test_a_nan_entropy_is_written_as_null() -> None:
    nan_entropy = Prediction("P1", "P1", "1", "l", None, {}, mean_entropy=float("nan"))
    assert nan_entropy.to_json()["mean_entropy"] is None
    assert Prediction.from_json(nan_entropy.to_json()).to_json() == nan_entropy.to_json()


def test_the_ensemble_predictor_is_built_as_before(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Before this loader, predict and evaluate built nnUNetPredictor(device, on-device unless cpu, no tqdm).

    Same attributes as that call, and the same model folder, folds and checkpoint are loaded.
    """
    import torch
    from iterseg.nnunet import ensemble
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    loaded: list[tuple[Any, ...]] = []

    def initialise(self: Any, folder: str, use_folds: Any, checkpoint_name: str = "") -> None:
        loaded.append((folder, use_folds, checkpoint_name))

    monkeypatch.setattr(nnUNetPredictor, "initialize_from_trained_model_folder", initialise)
    new = ensemble.load_ensemble(tmp_path, ("0", "all"), "cpu")
    old = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False, allow_tqdm=False)
    assert vars(new) == vars(old)
    assert loaded == [(str(tmp_path), (0, "all"), "checkpoint_final.pth")]
