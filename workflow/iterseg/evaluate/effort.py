"""Annotation effort: how much researchers changed the model's prediction before it became an annotation.

A refined SEG that arrives for a series we predicted earlier is compared with the prediction
that seeded it. The less they had to change, the better the model already was: per iteration
this is a label-free signal of progress, and the quantity the loop is meant to shrink.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from iterseg.errors import ConversionError
from iterseg.evaluate.metrics import UNSCORED_LABELS, dice, surface_dice
from iterseg.records import AnnotationEffort, Assembled, Predictions, read_record, write_record

logger = logging.getLogger(__name__)

#: A label whose refined version overlaps its prediction less than this was largely redrawn.
LARGE_EDIT_DICE = 0.5


@dataclass(frozen=True)
class LabelEdit:
    """What the refinement changed in one label of one case (volumes in millilitres)."""

    label: str
    dice: float
    nsd: float
    hd95_mm: float
    volume_predicted_ml: float
    volume_refined_ml: float
    volume_change_ml: float
    volume_change_pct: float
    slices_edited: int


@dataclass(frozen=True)
class CaseEffort:
    """The refinement of one predicted case: its labels, and whether it was edited at all or heavily."""

    case_id: str
    labels: tuple[LabelEdit, ...]
    slices: int
    slices_edited: int
    unedited: bool
    large_edit: bool

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form (nan becomes None)."""
        data = asdict(self)
        data["labels"] = [{k: _json_number(v) for k, v in edit.items()} for edit in data["labels"]]
        return data


def _json_number(value: object) -> object:
    return None if isinstance(value, float) and math.isnan(value) else value


def hd95(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile Hausdorff distance in mm between two boolean 3-D masks.

    The literature's (DeepMind's ``surface-distance``) robust Hausdorff distance: the larger of
    the two directed 95th percentiles of the surface elements' distances to the other surface,
    each element weighted by its area (:mod:`iterseg.evaluate.surfaces`).

    Returns
    -------
    float
        ``0.0`` for identical masks; ``nan`` when either mask is empty (no surface to measure).

    """
    from iterseg.evaluate.surfaces import surface_distances

    ref = np.asarray(reference, dtype=bool)
    pred = np.asarray(prediction, dtype=bool)
    if ref.shape != pred.shape:
        raise ValueError(f"masks differ in shape: {ref.shape} and {pred.shape}")
    if not ref.any() or not pred.any():
        return math.nan
    return surface_distances(ref, pred, spacing).hausdorff(95.0)


def _surface_scores(
    refined: np.ndarray, predicted: np.ndarray, spacing: Sequence[float], tolerance_mm: float
) -> tuple[float, float]:
    """NSD and HD95 from one set of surface distances; empty masks as :func:`surface_dice`, :func:`hd95`."""
    from iterseg.evaluate.surfaces import surface_distances

    if not np.any(refined) or not np.any(predicted):
        return surface_dice(refined, predicted, spacing, tolerance_mm), math.nan
    distances = surface_distances(np.asarray(refined, bool), np.asarray(predicted, bool), spacing)
    return distances.surface_dice(tolerance_mm), distances.hausdorff(95.0)


def label_edit(
    name: str,
    predicted: np.ndarray,
    refined: np.ndarray,
    spacing: Sequence[float],
    tolerance_mm: float,
    slice_axis: int = 0,
) -> LabelEdit:
    """Compare one label's predicted and refined masks.

    Parameters
    ----------
    name
        Label name.
    predicted, refined
        Boolean masks on the same grid.
    spacing
        Voxel size in mm, in array axis order.
    tolerance_mm
        Surface-Dice tolerance in mm.
    slice_axis
        The axis of the acquired slices (0 for a SimpleITK array: z); a slice counts as edited
        when any voxel of the label changed in it.

    """
    voxel_ml = float(np.prod(np.asarray(spacing, dtype=float))) / 1000.0
    before = float(np.count_nonzero(predicted)) * voxel_ml
    after = float(np.count_nonzero(refined)) * voxel_ml
    changed = np.asarray(predicted, dtype=bool) != np.asarray(refined, dtype=bool)
    other_axes = tuple(a for a in range(changed.ndim) if a != slice_axis)
    nsd, hd = _surface_scores(refined, predicted, spacing, tolerance_mm)
    return LabelEdit(
        label=name,
        dice=dice(refined, predicted),
        nsd=nsd,
        hd95_mm=hd,
        volume_predicted_ml=round(before, 4),
        volume_refined_ml=round(after, 4),
        volume_change_ml=round(after - before, 4),
        volume_change_pct=round(100.0 * (after - before) / before, 2) if before > 0 else math.nan,
        slices_edited=int(np.count_nonzero(np.any(changed, axis=other_axes))),
    )


def case_effort(
    case_id: str,
    predicted: np.ndarray,
    refined: np.ndarray,
    labels: Mapping[str, int],
    spacing: Sequence[float],
    tolerance_mm: float,
    slice_axis: int = 0,
    large_edit_dice: float = LARGE_EDIT_DICE,
) -> CaseEffort:
    """The annotation effort of one refined case against the prediction that seeded it.

    Parameters
    ----------
    case_id
        Case identifier, for the tables.
    predicted, refined
        Integer label maps on the same grid.
    labels
        Label name -> value (``background`` and ``ignore`` are skipped).
    spacing, tolerance_mm, slice_axis
        As in :func:`label_edit`.
    large_edit_dice
        A label whose Dice falls below this (or that was added or removed) marks a large edit.

    Returns
    -------
    CaseEffort
        ``unedited`` when the label maps are identical voxel for voxel (a rubber-stamped
        prediction); ``large_edit`` when some label was largely redrawn.

    """
    pred = np.asarray(predicted)
    ref = np.asarray(refined)
    if pred.shape != ref.shape:
        raise ValueError(
            f"{case_id}: prediction {pred.shape} and refined annotation {ref.shape} are not on one grid"
        )
    edits = tuple(
        label_edit(name, pred == value, ref == value, spacing, tolerance_mm, slice_axis)
        for name, value in labels.items()
        if name not in UNSCORED_LABELS and int(value) > 0
    )
    changed = np.any(pred != ref, axis=tuple(a for a in range(pred.ndim) if a != slice_axis))
    unedited = not bool(changed.any())
    large = any(not math.isnan(e.dice) and e.dice < large_edit_dice for e in edits)
    if unedited:
        logger.warning("%s: the refined annotation is the prediction unchanged (rubber-stamped?)", case_id)
    elif large:
        logger.info("%s: large edit (a label's Dice against its prediction < %.2f)", case_id, large_edit_dice)
    return CaseEffort(
        case_id=case_id,
        labels=edits,
        slices=int(pred.shape[slice_axis]),
        slices_edited=int(np.count_nonzero(changed)),
        unedited=unedited,
        large_edit=large,
    )


def _mean(values: Sequence[float]) -> float | None:
    finite = [v for v in values if not math.isnan(v)]
    return round(float(np.mean(finite)), 4) if finite else None


def summarise_effort(cases: Sequence[CaseEffort]) -> dict[str, object]:
    """Per-iteration totals: how many refined cases, how much was changed, per label and overall.

    Returns
    -------
    dict
        ``cases``, ``unedited``, ``large_edits``, ``slices_edited`` (total) and
        ``slices_edited_fraction``, and per label the mean Dice/NSD/HD95 and mean absolute
        volume change against the predictions. Empty counts (no refined predictions) give zeros.

    """
    names: list[str] = []
    for case in cases:
        names.extend(e.label for e in case.labels if e.label not in names)
    per_label = {}
    for name in names:
        edits = [e for case in cases for e in case.labels if e.label == name]
        per_label[name] = {
            "dice_mean": _mean([e.dice for e in edits]),
            "nsd_mean": _mean([e.nsd for e in edits]),
            "hd95_mm_mean": _mean([e.hd95_mm for e in edits]),
            "abs_volume_change_ml_mean": _mean([abs(e.volume_change_ml) for e in edits]),
            "slices_edited": sum(e.slices_edited for e in edits),
        }
    slices = sum(c.slices for c in cases)
    edited = sum(c.slices_edited for c in cases)
    return {
        "cases": len(cases),
        "unedited": sum(c.unedited for c in cases),
        "large_edits": sum(c.large_edit for c in cases),
        "slices_edited": edited,
        "slices_edited_fraction": round(edited / slices, 4) if slices else None,
        "labels": per_label,
    }


@dataclass(frozen=True)
class Seed:
    """The prediction that seeded an annotation: which iteration made it, and its label map."""

    iteration: str
    case_id: str
    label: Path


def find_seeds(predictions: Sequence[Path]) -> dict[str, Seed]:
    """Series UID -> the newest earlier prediction of it.

    Parameters
    ----------
    predictions
        Earlier iterations' ``predictions.json`` (``data/results/<dataset>/<date>/``), any order.

    """
    seeds: dict[str, Seed] = {}
    for path in sorted(predictions, key=lambda p: p.parent.name):  # dates sort in time order
        for entry in read_record(path, Predictions).predictions:
            seeds[entry.series_uid] = Seed(path.parent.name, entry.case_id, path.parent / entry.label)
    return seeds


def _on_grid(moving: sitk.Image, fixed: sitk.Image, what: str) -> sitk.Image:
    if (
        moving.GetSize() == fixed.GetSize()
        and np.allclose(moving.GetSpacing(), fixed.GetSpacing(), atol=1e-4)
        and np.allclose(moving.GetOrigin(), fixed.GetOrigin(), atol=1e-3)
        and np.allclose(moving.GetDirection(), fixed.GetDirection(), atol=1e-5)
    ):
        return moving
    logger.warning("%s is not on the annotation's grid; resampled onto it (nearest neighbour)", what)
    return sitk.Resample(moving, fixed, sitk.Transform(), sitk.sitkNearestNeighbor, 0, moving.GetPixelID())


def _refined_case(
    record: Mapping[str, Any], seed: Seed, labels: Mapping[str, int], tolerance_mm: float
) -> CaseEffort:
    """The effort of one assembled record against the prediction that seeded it."""
    if "converted_label" not in record:
        raise ConversionError(
            f"case {record['case_id']}: assembled.json predates the annotation-effort step (no "
            "converted_label); re-assemble it: snakemake --forcerun convert_assemble"
        )
    refined = sitk.ReadImage(record["converted_label"])
    predicted = _on_grid(sitk.ReadImage(str(seed.label)), refined, f"prediction {seed.label}")
    spacing = tuple(reversed(refined.GetSpacing()))  # numpy axis order (z, y, x)
    return case_effort(
        record["case_id"],
        sitk.GetArrayViewFromImage(predicted),
        sitk.GetArrayViewFromImage(refined),
        labels,
        spacing,
        tolerance_mm,
    )


def _case_row(effort: CaseEffort, record: Mapping[str, Any], seed: Seed) -> dict[str, Any]:
    """One ``annotation_effort.json`` case: the effort, and where annotation and seed came from."""
    return {
        **effort.as_dict(),
        "patient_id": record["patient_id"],
        "split": record["split"],
        "seeded_by": {"iteration": seed.iteration, "case_id": seed.case_id, "label": str(seed.label)},
        "annotation_files": record["annotation_files"],
    }


def iteration_effort(
    assembled: Assembled, predictions: Sequence[Path], tolerance_mm: float
) -> AnnotationEffort:
    """Compare every annotation new in this iteration with the earlier prediction of its series.

    Parameters
    ----------
    assembled
        The iteration's ``assembled.json`` (its records say which annotations are new or
        refined, and where their faithful label maps are).
    predictions
        ``predictions.json`` of the earlier iterations.
    tolerance_mm
        Surface-Dice tolerance in mm (the dataset's NSD tolerance).

    Returns
    -------
    AnnotationEffort
        ``cases`` (each :meth:`CaseEffort.as_dict` + ``patient_id``, ``split``, ``seeded_by``,
        ``annotation_files``) and ``summary``; no cases (and zero counts) when no prediction was refined.

    """
    seeds = find_seeds(predictions)
    labels = dict(assembled.labels)
    rows: list[dict[str, Any]] = []
    efforts: list[CaseEffort] = []
    for record in assembled.records:
        seed = seeds.get(record["image_series_uid"])
        if record["change"] not in ("new", "refined") or seed is None:
            continue
        effort = _refined_case(record, seed, labels, tolerance_mm)
        efforts.append(effort)
        rows.append(_case_row(effort, record, seed))
    summary = summarise_effort(efforts)
    logger.info(
        "%d refined prediction(s): %s unedited, %s large edit(s), %s of their slices edited",
        summary["cases"],
        summary["unedited"],
        summary["large_edits"],
        summary["slices_edited"],
    )
    return AnnotationEffort(tuple(rows), summary)


CSV_COLUMNS = (
    "case_id", "patient_id", "seeded_by", "label", "dice", "nsd", "hd95_mm", "volume_predicted_ml",
    "volume_refined_ml", "volume_change_ml", "volume_change_pct", "slices_edited", "unedited", "large_edit",
)  # fmt: skip


def write_effort(result: AnnotationEffort, out_json: Path, out_csv: Path) -> None:
    """The effort as JSON (everything) and CSV (one row per case and label, for spreadsheets)."""
    write_record(out_json, result)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with out_csv.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for case in result.cases:
            for edit in case["labels"]:
                writer.writerow(
                    {
                        **{k: ("" if v is None else v) for k, v in edit.items()},
                        "case_id": case["case_id"],
                        "patient_id": case["patient_id"],
                        "seeded_by": case["seeded_by"]["iteration"],
                        "unedited": case["unedited"],
                        "large_edit": case["large_edit"],
                    }
                )
