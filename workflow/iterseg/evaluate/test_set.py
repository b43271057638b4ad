"""Score an iteration's model on a frozen held-out test set: per-label Dice and surface Dice (NSD)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from iterseg import records
from iterseg.errors import EvaluationError
from iterseg.evaluate.metrics import score_case, summarise
from iterseg.nnunet.ensemble import DEFAULT_INFERENCE, Inference, load_ensemble
from iterseg.records import HoldoutMetrics, HoldoutScores

if TYPE_CHECKING:
    import SimpleITK as sitk

logger = logging.getLogger(__name__)

METRICS_FILE = "test_metrics.json"


@dataclass(frozen=True)
class HoldoutCase:
    """One held-out case: an image and its reference label map."""

    __test__ = False  # not a pytest test class despite the name

    case_id: str
    patient_id: str
    image: Path
    """NIfTI image (nnU-Net channel 0000)."""
    label: Path
    """NIfTI reference label map, values as in dataset.json's labels (may contain the ignore value)."""
    missing_rois: tuple[str, ...] = ()
    """Label names not annotated in this case; scored as nan."""
    channels: tuple[Path, ...] = ()
    """Multi-sequence cases: the NIfTI images of channels 0001.., on the image's grid."""


def _read(path: Path, what: str, case_id: str) -> sitk.Image:
    import SimpleITK as sitk

    if not path.is_file():
        raise EvaluationError(f"test case {case_id}: {what} {path} does not exist; fix the test-set listing.")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise EvaluationError(
            f"test case {case_id}: SimpleITK could not read {what} {path} ({exc}); replace the file."
        ) from exc


def _model_labels(model_folder: Path) -> dict[str, Any]:
    """The labels of the model's ``dataset.json`` without loading the model; empty if it is unreadable."""
    try:
        return dict(json.loads((model_folder / "dataset.json").read_text())["labels"])
    except (OSError, ValueError, KeyError, TypeError):
        logger.warning("%s: no readable dataset.json; test metrics list no labels", model_folder)
        return {}


def _label_dtype(labels: Mapping[str, Any]) -> type[np.unsignedinteger[Any]]:
    values = [v for value in labels.values() for v in (value if isinstance(value, list) else [value])]
    return np.uint8 if max(values, default=0) < 256 else np.uint16


def _predict(
    predictor: Any,
    image: sitk.Image,
    dtype: type[np.unsignedinteger[Any]],
    out: Path,
    channels: Sequence[sitk.Image] = (),
) -> np.ndarray:
    """The ensemble's label map of ``image`` (z, y, x), also written to ``out`` on the image's grid.

    ``channels``: the images of channels 0001.. of a multi-sequence case, on the same grid.
    """
    import SimpleITK as sitk

    # SimpleITK reports spacing as (x, y, z); arrays and nnU-Net's SimpleITKIO use (z, y, x).
    spacing_zyx = [abs(s) for s in image.GetSpacing()][::-1]
    array = np.stack([sitk.GetArrayFromImage(i).astype(np.float32) for i in (image, *channels)])
    seg = predictor.predict_single_npy_array(array, {"spacing": spacing_zyx}, None, None, False)
    seg = np.asarray(seg, dtype=dtype)
    seg_image = sitk.GetImageFromArray(seg)
    seg_image.CopyInformation(image)
    sitk.WriteImage(seg_image, str(out), useCompression=True)
    return seg


def _reference(case: HoldoutCase, image: sitk.Image, shape: tuple[int, ...]) -> np.ndarray:
    """The case's reference label map, checked against the image it is scored on."""
    import SimpleITK as sitk

    reference_image = _read(case.label, "reference label", case.case_id)
    reference = sitk.GetArrayFromImage(reference_image)
    if reference.shape != shape:
        raise EvaluationError(
            f"test case {case.case_id}: reference label {case.label} has shape {reference.shape} "
            f"(z, y, x) but image {case.image} has {shape}; resample the label onto the image grid."
        )
    if not np.allclose(reference_image.GetSpacing(), image.GetSpacing(), rtol=1e-3, atol=1e-4):
        logger.warning(
            "%s: reference label %s has spacing %s but image %s has %s; scoring with the image's",
            case.case_id,
            case.label,
            reference_image.GetSpacing(),
            case.image,
            image.GetSpacing(),
        )
    return np.asarray(reference)


def _score(
    predictor: Any, case: HoldoutCase, labels: dict[str, Any], predictions_dir: Path, tolerance_mm: float
) -> dict[str, dict[str, float]]:
    """Predict one test case and score it against its reference (ignored voxels left out)."""
    image = _read(case.image, "image", case.case_id)
    if image.GetDimension() != 3:
        raise EvaluationError(
            f"test case {case.case_id}: image {case.image} is {image.GetDimension()}-D; "
            "only 3-D test images are supported."
        )
    channels = [_read(path, "image", case.case_id) for path in case.channels]
    seg = _predict(
        predictor, image, _label_dtype(labels), predictions_dir / f"{case.case_id}.nii.gz", channels
    )
    reference = _reference(case, image, seg.shape)
    ignore_value = labels.get("ignore")
    if ignore_value is not None:
        ignored = reference == ignore_value
        reference = np.where(ignored, 0, reference)
        seg = np.where(ignored, 0, seg)
    unknown = sorted(set(case.missing_rois) - set(labels))
    if unknown:
        logger.warning("%s: missing ROIs %s are not labels of this model", case.case_id, unknown)
    spacing_zyx = [abs(s) for s in image.GetSpacing()][::-1]
    metrics = score_case(reference, seg, labels, spacing_zyx, tolerance_mm, skip=case.missing_rois)
    logger.info(
        "%s: dice %s",
        case.case_id,
        ", ".join(f"{name}={scores['dice']:.3f}" for name, scores in metrics.items()),
    )
    return metrics


def _log_summary(summary: Mapping[str, Mapping[str, Any]], tolerance_mm: float) -> None:
    for name, row in summary.items():
        logger.info(
            "test summary %s: dice %.3f, nsd@%gmm %.3f over %d cases",
            name,
            row["dice_mean"],
            tolerance_mm,
            row["nsd_mean"],
            row["cases"],
        )


def evaluate_test_set(
    model_folder: Path,
    folds: tuple[str, ...],
    device: str,
    cases: Sequence[HoldoutCase],
    out: Path,
    tolerance_mm: float,
    inference: Inference = DEFAULT_INFERENCE,
) -> HoldoutMetrics:
    """Predict every test case with the fold ensemble and score it against its reference.

    nnU-Net's environment variables must already be set by the caller.

    Reference voxels carrying the ``ignore`` label value (if dataset.json defines one) are
    excluded from scoring: they are set to background in both the reference and the prediction,
    so they count neither as overlap nor as error and contribute no surface.

    Parameters
    ----------
    model_folder
        nnU-Net's trained-model folder ``nnUNet_results/DatasetNNN_x/<trainer>__<plans>__<configuration>``.
    folds
        Folds to ensemble (``"0"`` ... or ``"all"``).
    device
        ``"cpu"``, ``"cuda"`` or ``"mps"``.
    cases
        The test set.
    out
        Folder receiving ``test_predictions/<case_id>.nii.gz`` and ``test_metrics.json``.
    tolerance_mm
        NSD tolerance in mm.
    inference
        Tile step size and test-time mirroring: those of the inbox prediction.

    Returns
    -------
    HoldoutMetrics
        The record written to ``out/test_metrics.json`` (``tolerance_mm``, ``folds``, ``labels``,
        per case its ``patient_id`` and label -> ``{"dice", "nsd"}``, and the ``summary``).

    Raises
    ------
    EvaluationError
        If a case's image or label cannot be read, is not 3-D, or the two differ in shape.

    """
    # long only for its parameter docs: the body is load, score each case, summarise, write
    if not cases:
        logger.warning("no test cases; writing empty test metrics to %s", out / METRICS_FILE)
        empty = HoldoutMetrics(tolerance_mm, tuple(folds), _model_labels(model_folder), {}, {})
        records.write_record(out / METRICS_FILE, empty)
        return empty

    from tqdm import tqdm

    predictor = load_ensemble(model_folder, folds, device, inference=inference)
    labels: dict[str, Any] = dict(predictor.dataset_json["labels"])
    predictions_dir = out / "test_predictions"
    predictions_dir.mkdir(parents=True, exist_ok=True)
    per_case: dict[str, dict[str, dict[str, float]]] = {}
    for case in tqdm(cases, desc="evaluate", unit="case", disable=None):
        per_case[case.case_id] = _score(predictor, case, labels, predictions_dir, tolerance_mm)
    summary = summarise(per_case)
    _log_summary(summary, tolerance_mm)
    report = HoldoutMetrics(
        tolerance_mm=tolerance_mm,
        folds=tuple(folds),
        labels=labels,
        cases={case.case_id: HoldoutScores(case.patient_id, dict(per_case[case.case_id])) for case in cases},
        summary=summary,
    )
    records.write_record(out / METRICS_FILE, report)
    return report


def holdout_cases(assembled: records.Assembled) -> list[HoldoutCase]:
    """The frozen test set of an iteration: its ``assembled.json`` records with split ``test``."""
    return [
        HoldoutCase(
            r["case_id"],
            r["patient_id"],
            Path(r["raw_image"]),
            Path(r["raw_label"]),
            tuple(r["missing_rois"]),
            tuple(Path(p) for p in r.get("raw_channels", [])),
        )
        for r in assembled.records
        if r["split"] == "test"
    ]


def evaluate_iteration(
    *,
    work: Path,
    plan_record: Path,
    trainer: str,
    folds: tuple[str, ...],
    device: str,
    assembled: Path,
    out: Path,
    tolerance_mm: float,
    inference: Inference = DEFAULT_INFERENCE,
) -> HoldoutMetrics:
    """The evaluate step: score the iteration's fold ensemble on its frozen test set.

    Parameters
    ----------
    work
        The iteration's procdata folder (nnU-Net roots inside).
    plan_record
        The plan step's ``planned.json``: dataset, plans and configuration of the model.
    trainer, folds, device
        Which trained model to ensemble, and where to run it.
    assembled
        The iteration's ``assembled.json``; its ``test`` records are the test set.
    out, tolerance_mm, inference
        As in :func:`evaluate_test_set`.

    Returns
    -------
    HoldoutMetrics
        The step's record (also written to ``out/test_metrics.json``).

    """
    from iterseg.nnunet.env import configure_nnunet
    from iterseg.paths import model_dir

    plan = records.read_record(plan_record, records.PlanRecord)
    cases = holdout_cases(records.read_record(assembled, records.Assembled))
    configure_nnunet(work, device=device)
    model = model_dir(work, plan.dataset_name, trainer, plan.plans, plan.configuration)
    return evaluate_test_set(model, folds, device, cases, out, tolerance_mm, inference)
