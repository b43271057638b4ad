"""Ranking inbox predictions for refinement: uncertainty, fold agreement, volume outliers."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from iterseg.evaluate.uncertainty import fold_agreement, normalised_entropy
from iterseg.report.worklist import rank_cases, robust_z, write_worklist

pytestmark = pytest.mark.unit


def test_entropy_is_zero_when_sure_and_one_when_undecided() -> None:
    sure = np.zeros((3, 4, 4, 4))
    sure[1] = 1.0
    assert normalised_entropy(sure) == 0.0
    undecided = np.full((3, 4, 4, 4), 1 / 3)
    assert normalised_entropy(undecided) == pytest.approx(1.0)
    background = np.zeros((3, 4, 4, 4))
    background[0] = 1.0
    assert normalised_entropy(background) == 0.0  # no plausible foreground: nothing to be unsure about


def test_fold_agreement_is_the_mean_pairwise_dice() -> None:
    a = np.zeros((4, 10, 10), dtype=np.uint8)
    a[:, 2:6, 2:6] = 1
    b = a.copy()
    b[:, 2:6, 2:4] = 0  # half of the liver
    agreement = fold_agreement([a, a, b], {"background": 0, "liver": 1, "tumour": 2})
    assert agreement["liver"] == pytest.approx(round((1 + 2 * (2 * 32 / (64 + 32))) / 3, 4))
    assert agreement["tumour"] is None  # no fold predicts it
    assert fold_agreement([a], {"liver": 1}) == {}


def test_robust_z() -> None:
    assert robust_z(10, [1, 2]) is None
    assert robust_z(2.0, [1.0, 2.0, 3.0]) == 0.0
    assert robust_z(100.0, [10.0, 11.0, 12.0]) == pytest.approx((100 - 11) / 1.4826, abs=0.01)
    assert robust_z(10.5, [10.0, 10.0, 10.0]) == pytest.approx(1.0)  # zero MAD: 5 % of the median


def test_outliers_first_then_most_disagreement(tmp_path: Path) -> None:
    volumes = {"liver": [100.0, 110.0, 120.0, 105.0]}
    predictions = [
        {
            "case_id": "A",
            "patient_id": "A",
            "volume_ml": {"liver": 108.0},
            "mean_entropy": 0.2,
            "fold_dice": {},
        },
        {
            "case_id": "B",
            "patient_id": "B",
            "volume_ml": {"liver": 400.0},
            "mean_entropy": 0.01,
            "fold_dice": {},
        },
        {
            "case_id": "C",
            "patient_id": "C",
            "volume_ml": {"liver": 111.0},
            "mean_entropy": 0.5,
            "fold_dice": {},
        },
        {"case_id": "D", "patient_id": "D", "volume_ml": {"liver": 112.0}, "fold_dice": {"liver": 0.6}},
    ]
    rows = rank_cases(predictions, volumes)
    assert [r["case_id"] for r in rows] == ["B", "C", "D", "A"]
    assert rows[0]["volume_outliers"] == "liver" and rows[0]["rank"] == 1
    assert rows[2]["signal"] == "folds" and rows[2]["disagreement"] == pytest.approx(0.4)
    assert rows[1]["signal"] == "entropy" and not math.isnan(float(rows[1]["volume_z_liver"]))
    out = tmp_path / "worklist.csv"
    write_worklist(rows, out)
    with out.open() as handle:
        read = list(csv.DictReader(handle))
    assert [r["case_id"] for r in read] == ["B", "C", "D", "A"] and list(read[0])[:2] == ["rank", "case_id"]
