"""Which inbox predictions are worth refining next.

Researchers' time is the scarce resource of the loop: a prediction the fold models disagree
on, or whose volume is unlike anything annotated so far, is where a correction teaches the
next iteration most. Cases are ranked by those signals and written as a CSV worklist.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from iterseg.evaluate.metrics import UNSCORED_LABELS
from iterseg.records import Assembled, Predictions, read_record

logger = logging.getLogger(__name__)

#: A predicted volume this many robust standard deviations from the annotated ones is an outlier.
OUTLIER_Z = 3.0


def robust_z(value: float, reference: Sequence[float]) -> float | None:
    """``(value - median) / (1.4826 * MAD)`` of ``reference``; None with fewer than 3 references.

    A zero MAD (all references equal) is replaced by 5 % of the median, so identical training
    volumes do not turn every small difference into an outlier.
    """
    if len(reference) < 3:
        return None
    ref = np.asarray(reference, dtype=float)
    median = float(np.median(ref))
    mad = 1.4826 * float(np.median(np.abs(ref - median)))
    scale = mad if mad > 0 else max(0.05 * abs(median), 1e-6)
    return round((value - median) / scale, 2)


def annotated_volumes(assembled: Assembled) -> dict[str, list[float]]:
    """Label -> volumes (ml) in the iteration's training annotations (faithful converted label maps)."""
    import SimpleITK as sitk

    labels = {k: v for k, v in assembled.labels.items() if k not in UNSCORED_LABELS and v > 0}
    volumes: dict[str, list[float]] = {name: [] for name in labels}
    for record in assembled.records:
        if record["split"] != "train" or not record.get("converted_label"):
            continue
        image = sitk.ReadImage(record["converted_label"])
        voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
        array = sitk.GetArrayViewFromImage(image)
        for name, value in labels.items():
            if name in record.get("missing_rois", []):
                continue  # not drawn is not absent
            volumes[name].append(float(np.count_nonzero(array == value)) * voxel_ml)
    return volumes


def rank_cases(
    predictions: Sequence[Mapping[str, Any]], volumes: Mapping[str, Sequence[float]]
) -> list[dict[str, Any]]:
    """The inbox cases, most worth refining first.

    Order: cases with a predicted-volume outlier (|robust z| > 3 against the annotated
    volumes) first; then by disagreement, ``1 - `` the lowest per-label fold agreement (with a
    single fold: the normalised entropy of the ensemble's probabilities), highest first.

    Returns
    -------
    list of dict
        One row per case: ``rank``, ``case_id``, ``patient_id``, ``disagreement``, ``signal``
        (``folds`` or ``entropy``), ``lowest_fold_dice_label``, ``volume_outliers`` and one
        ``volume_ml_<label>`` / ``volume_z_<label>`` pair per label.

    """
    rows = []
    for pred in predictions:
        agreement = {k: v for k, v in (pred.get("fold_dice") or {}).items() if v is not None}
        if agreement:
            worst = min(agreement, key=lambda k: agreement[k])
            disagreement, signal = round(1.0 - agreement[worst], 4), "folds"
        else:
            worst, disagreement, signal = "", float(pred.get("mean_entropy") or 0.0), "entropy"
        row: dict[str, Any] = {
            "case_id": pred["case_id"],
            "patient_id": pred["patient_id"],
            "disagreement": disagreement,
            "signal": signal,
            "lowest_fold_dice_label": worst,
        }
        outliers = []
        for name, ml in (pred.get("volume_ml") or {}).items():
            z = robust_z(float(ml), volumes.get(name, []))
            row[f"volume_ml_{name}"] = ml
            row[f"volume_z_{name}"] = "" if z is None else z
            if z is not None and abs(z) > OUTLIER_Z:
                outliers.append(name)
        row["volume_outliers"] = " ".join(outliers)
        rows.append(row)
    rows.sort(key=lambda r: (not r["volume_outliers"], -float(r["disagreement"]), r["case_id"]))
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows


def write_worklist(rows: Sequence[Mapping[str, Any]], out_csv: Path) -> None:
    """Write the ranked worklist as CSV (rank first)."""
    fields = [
        "rank",
        "case_id",
        "patient_id",
        "disagreement",
        "signal",
        "lowest_fold_dice_label",
        "volume_outliers",
    ]
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with out_csv.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    if rows:
        top = rows[0]
        logger.info(
            "worklist %s: refine %s first (%s %.3f%s)",
            out_csv,
            top["case_id"],
            top["signal"],
            float(top["disagreement"]),
            f"; volume outlier {top['volume_outliers']}" if top["volume_outliers"] else "",
        )


def worklist(predictions_json: Path, assembled_json: Path, out_csv: Path) -> list[dict[str, Any]]:
    """Rank the inbox predictions of one iteration and write ``out_csv``."""
    predictions = read_record(predictions_json, Predictions).to_json()
    rows = rank_cases(predictions, annotated_volumes(read_record(assembled_json, Assembled)))
    write_worklist(rows, out_csv)
    return rows
