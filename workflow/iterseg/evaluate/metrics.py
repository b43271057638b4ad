"""Overlap scores of a predicted label map against a reference: per-label Dice and surface Dice (NSD)."""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Mapping, Sequence

import numpy as np

logger = logging.getLogger(__name__)

#: Label names that are never scored (nnU-Net's background and ignore label).
UNSCORED_LABELS = frozenset({"background", "ignore"})


def _as_masks(reference: np.ndarray, prediction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray(reference, dtype=bool)
    pred = np.asarray(prediction, dtype=bool)
    if ref.shape != pred.shape:
        raise ValueError(
            f"reference mask has shape {ref.shape} but prediction has {pred.shape}; "
            "resample the prediction onto the reference grid before scoring"
        )
    return ref, pred


def dice(reference: np.ndarray, prediction: np.ndarray) -> float:
    """Dice coefficient ``2|R ∩ P| / (|R| + |P|)`` of two boolean masks.

    Parameters
    ----------
    reference, prediction
        Masks of the same shape (any non-zero value counts as foreground).

    Returns
    -------
    float
        In [0, 1]; ``0.0`` if exactly one mask is empty; ``nan`` if both are empty. An
        empty-versus-empty label carries no evidence about the model (the structure is simply
        absent), so it is left out of means instead of inflating them with a perfect 1.0.

    """
    ref, pred = _as_masks(reference, prediction)
    total = int(np.count_nonzero(ref)) + int(np.count_nonzero(pred))
    if total == 0:
        return math.nan
    return 2.0 * int(np.count_nonzero(ref & pred)) / total


def surface_dice(
    reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float], tolerance_mm: float
) -> float:
    """Normalised surface Dice (Nikolov et al. 2021): the share of each surface within tolerance of the other.

    The literature's definition, as in DeepMind's ``surface-distance`` (and so nnU-Net's,
    TotalSegmentator's and the Decathlon's published NSD): surface elements weighted by their
    marching-cubes area in mm², distances in mm between element positions
    (:mod:`iterseg.evaluate.surfaces`). The score is ``(area of S_R within τ of S_P + area of
    S_P within τ of S_R) / (area of S_R + area of S_P)``.

    Parameters
    ----------
    reference, prediction
        Boolean 3-D masks of the same shape.
    spacing
        Voxel size in mm, in array axis order (``(z, y, x)`` for a SimpleITK array).
    tolerance_mm
        Surface distance (mm) up to which a surface element counts as matched; inclusive.

    Returns
    -------
    float
        In [0, 1]; ``0.0`` if exactly one mask is empty; ``nan`` if both are empty.

    """
    from iterseg.evaluate.surfaces import surface_distances

    ref, pred = _as_masks(reference, prediction)
    sampling = tuple(float(s) for s in spacing)
    if len(sampling) != ref.ndim or ref.ndim != 3 or any(s <= 0 for s in sampling):
        raise ValueError(
            f"spacing {tuple(spacing)} must give one positive voxel size per axis of 3-D masks "
            f"(these are {ref.ndim}-D), in array axis order"
        )
    if tolerance_mm < 0:
        raise ValueError(f"tolerance_mm must be >= 0, got {tolerance_mm}")
    has_ref, has_pred = bool(ref.any()), bool(pred.any())
    if not (has_ref or has_pred):
        return math.nan
    if not (has_ref and has_pred):
        return 0.0
    return surface_distances(ref, pred, sampling).surface_dice(tolerance_mm)


def _label_mask(labels: np.ndarray, value: int | Sequence[int]) -> np.ndarray:
    """Mask of one label value, or of a region (nnU-Net's region-based labels: a list of values)."""
    if isinstance(value, int | np.integer):
        return labels == value
    return np.isin(labels, np.asarray(value))


def _is_scored(name: str, value: int | Sequence[int]) -> bool:
    if name in UNSCORED_LABELS:
        return False
    if isinstance(value, int | np.integer):
        return int(value) > 0
    return all(int(v) > 0 for v in value)


def score_case(
    reference: np.ndarray,
    prediction: np.ndarray,
    labels: Mapping[str, int | Sequence[int]],
    spacing: Sequence[float],
    tolerance_mm: float,
    skip: Collection[str] = (),
) -> dict[str, dict[str, float]]:
    """Dice and NSD of every foreground label of one case.

    Parameters
    ----------
    reference, prediction
        Integer label maps of the same shape.
    labels
        Label name -> value, as in nnU-Net's ``dataset.json`` (a list of values for a region).
        ``background``, ``ignore`` and values <= 0 are not scored and do not appear in the result.
    spacing
        Voxel size in mm, in array axis order.
    tolerance_mm
        NSD tolerance in mm.
    skip
        Label names not to score for this case (e.g. ROIs missing from its annotation, so an
        empty reference there means "not drawn", not "absent"); they get ``nan`` for both scores.

    Returns
    -------
    dict[str, dict[str, float]]
        Label name -> ``{"dice": ..., "nsd": ...}``.

    """
    ref = np.asarray(reference)
    pred = np.asarray(prediction)
    if ref.shape != pred.shape:
        raise ValueError(
            f"reference label map has shape {ref.shape} but prediction has {pred.shape}; "
            "resample the prediction onto the reference grid before scoring"
        )
    scores: dict[str, dict[str, float]] = {}
    for name, value in labels.items():
        if not _is_scored(name, value):
            continue
        if name in skip:
            scores[name] = {"dice": math.nan, "nsd": math.nan}
            continue
        ref_mask = _label_mask(ref, value)
        pred_mask = _label_mask(pred, value)
        scores[name] = {
            "dice": dice(ref_mask, pred_mask),
            "nsd": surface_dice(ref_mask, pred_mask, spacing, tolerance_mm),
        }
    return scores


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def summarise(per_case: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, float | int]]:
    """Mean scores per label over cases, ignoring ``nan`` (unscorable case/label pairs).

    Parameters
    ----------
    per_case
        Case id -> the output of :func:`score_case`.

    Returns
    -------
    dict[str, dict[str, float | int]]
        Label -> ``{"dice_mean", "nsd_mean", "cases"}`` where ``cases`` counts the cases with a
        non-nan Dice for that label (a mean is ``nan`` when that count is 0); plus the key
        ``"mean"``: the nan-aware mean over labels of the label means, with ``cases`` the number
        of cases with a non-nan Dice for at least one label. Empty when ``per_case`` is empty.

    """
    if not per_case:
        return {}
    names: list[str] = []
    for scores in per_case.values():
        names.extend(name for name in scores if name not in names)
    summary: dict[str, dict[str, float | int]] = {}
    for name in names:
        rows = [scores[name] for scores in per_case.values() if name in scores]
        dices = [float(r["dice"]) for r in rows]
        summary[name] = {
            "dice_mean": _nanmean(dices),
            "nsd_mean": _nanmean([float(r["nsd"]) for r in rows]),
            "cases": sum(not math.isnan(d) for d in dices),
        }
    scored_cases = sum(
        any(not math.isnan(float(s["dice"])) for s in scores.values()) for scores in per_case.values()
    )
    summary["mean"] = {
        "dice_mean": _nanmean([float(summary[n]["dice_mean"]) for n in names]),
        "nsd_mean": _nanmean([float(summary[n]["nsd_mean"]) for n in names]),
        "cases": scored_cases,
    }
    return summary
