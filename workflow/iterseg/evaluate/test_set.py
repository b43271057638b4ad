"""Score an iteration's model on a frozen held-out test set: per-label Dice and surface Dice (NSD)."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from iterseg.errors import EvaluationError
from iterseg.evaluate.metrics import score_case, summarise

if TYPE_CHECKING:
    import SimpleITK as sitk

logger = logging.getLogger(__name__)


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


def _json_safe(value: Any) -> Any:
    """``value`` with nan/inf floats as ``None`` (JSON has no NaN) and numpy scalars unwrapped."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(data: Mapping[str, Any], path: Path) -> None:
    """Write ``data`` as strict JSON (nan -> null), atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(_json_safe(data), indent=2, allow_nan=False) + "\n")
    os.replace(partial, path)


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


def evaluate_test_set(
    model_folder: Path,
    folds: tuple[str, ...],
    device: str,
    cases: Sequence[HoldoutCase],
    out: Path,
    tolerance_mm: float,
) -> dict[str, Any]:
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

    Returns
    -------
    dict[str, Any]
        ``{"tolerance_mm", "folds", "labels", "cases": {case_id: {"patient_id", "metrics":
        {label: {"dice", "nsd"}}}}, "summary"}`` as written to ``out/test_metrics.json``
        (there with nan as null).

    Raises
    ------
    EvaluationError
        If a case's image or label cannot be read, is not 3-D, or the two differ in shape.

    """
    if not cases:
        logger.warning("no test cases; writing empty test metrics to %s", out / "test_metrics.json")
        empty: dict[str, Any] = {
            "tolerance_mm": tolerance_mm,
            "folds": list(folds),
            "labels": _model_labels(model_folder),
            "cases": {},
            "summary": {},
        }
        write_json(empty, out / "test_metrics.json")
        return empty

    import SimpleITK as sitk
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from tqdm import tqdm

    predictor = nnUNetPredictor(
        device=torch.device(device), perform_everything_on_device=device != "cpu", allow_tqdm=False
    )
    predictor.initialize_from_trained_model_folder(
        str(model_folder), use_folds=tuple(f if f == "all" else int(f) for f in folds)
    )
    labels: dict[str, Any] = dict(predictor.dataset_json["labels"])
    ignore_value = labels.get("ignore")
    dtype = _label_dtype(labels)
    predictions_dir = out / "test_predictions"
    predictions_dir.mkdir(parents=True, exist_ok=True)

    per_case: dict[str, dict[str, dict[str, float]]] = {}
    results: dict[str, Any] = {}
    for case in tqdm(cases, desc="evaluate", unit="case", disable=None):
        image = _read(case.image, "image", case.case_id)
        if image.GetDimension() != 3:
            raise EvaluationError(
                f"test case {case.case_id}: image {case.image} is {image.GetDimension()}-D; "
                "only 3-D test images are supported."
            )
        # SimpleITK reports spacing as (x, y, z); arrays and nnU-Net's SimpleITKIO use (z, y, x).
        spacing_zyx = [abs(s) for s in image.GetSpacing()][::-1]
        array = sitk.GetArrayFromImage(image)
        seg = predictor.predict_single_npy_array(
            array[None].astype(np.float32), {"spacing": spacing_zyx}, None, None, False
        )
        seg = np.asarray(seg, dtype=dtype)
        seg_image = sitk.GetImageFromArray(seg)
        seg_image.CopyInformation(image)
        sitk.WriteImage(seg_image, str(predictions_dir / f"{case.case_id}.nii.gz"), useCompression=True)

        reference_image = _read(case.label, "reference label", case.case_id)
        reference = sitk.GetArrayFromImage(reference_image)
        if reference.shape != seg.shape:
            raise EvaluationError(
                f"test case {case.case_id}: reference label {case.label} has shape {reference.shape} "
                f"(z, y, x) but image {case.image} has {seg.shape}; resample the label onto the image grid."
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
        if ignore_value is not None:
            ignored = reference == ignore_value
            reference = np.where(ignored, 0, reference)
            seg = np.where(ignored, 0, seg)
        unknown = sorted(set(case.missing_rois) - set(labels))
        if unknown:
            logger.warning("%s: missing ROIs %s are not labels of this model", case.case_id, unknown)
        metrics = score_case(reference, seg, labels, spacing_zyx, tolerance_mm, skip=case.missing_rois)
        per_case[case.case_id] = metrics
        results[case.case_id] = {"patient_id": case.patient_id, "metrics": metrics}
        logger.info(
            "%s: dice %s",
            case.case_id,
            ", ".join(f"{name}={scores['dice']:.3f}" for name, scores in metrics.items()),
        )

    summary = summarise(per_case)
    for name, row in summary.items():
        logger.info(
            "test summary %s: dice %.3f, nsd@%gmm %.3f over %d cases",
            name,
            row["dice_mean"],
            tolerance_mm,
            row["nsd_mean"],
            row["cases"],
        )
    report: dict[str, Any] = {
        "tolerance_mm": tolerance_mm,
        "folds": list(folds),
        "labels": labels,
        "cases": results,
        "summary": summary,
    }
    write_json(report, out / "test_metrics.json")
    return report
