"""Predict every inbox case with an iteration's fold ensemble and export DICOM-SEGs.

One case that cannot be read, predicted or exported does not block the others: with
``on_bad_case: skip`` it is left out and listed, with its file, cause and fix, in
``skipped_predictions.json``; with ``fail`` the step stops naming every bad case. Outputs are
staged outside the results folder and published into it only when every case is done, so the
results folder (and ``latest``) always holds one complete set of predictions.
"""

from __future__ import annotations

import errno
import logging
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.errors import InvalidDicomError

from iterseg.convert.assemble import IGNORE_LABEL
from iterseg.convert.channels import Channel
from iterseg.dicom.codes import Terminology
from iterseg.dicom.geometry import Grid, series_grid
from iterseg.dicom.seg_options import DEFAULT_SEG_OPTIONS, SegOptions
from iterseg.dicom.seg_writer import SegType, export_for_series
from iterseg.dicom.series import ImageSeries, read_volume
from iterseg.errors import GeometryError, PredictionError, SegExportError
from iterseg.evaluate.uncertainty import fold_agreement, normalised_entropy
from iterseg.nnunet.ensemble import DEFAULT_INFERENCE, FoldPrediction, Inference, load_ensemble, predict_folds
from iterseg.nnunet.env import configure_nnunet
from iterseg.paths import model_dir
from iterseg.rawdata.inbox import InboxCase, InboxScan, scan_inbox
from iterseg.records import PlanRecord, PredictedRecord, Prediction, Predictions, read_record, write_record
from iterseg.release.publish import publish, staging_dir
from iterseg.roi import load_roi_terms
from iterseg.skipped import (
    SKIPPED_PREDICTIONS_FILE,
    BadCasePolicy,
    SkippedCase,
    Stage,
    warn_skipped,
    write_skipped,
)

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.json"
STAGING_NAME = "predictions.partial"  # in the iteration's procdata folder
# Where versions before the staging in procdata left their partial outputs: inside the results folder.
_OLD_STAGING = ".predictions.partial"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True)
class InboxPrediction:
    """What one predict run published: the predicted cases and the ones left out."""

    predictions: tuple[Prediction, ...]
    skipped: tuple[SkippedCase, ...]


@dataclass(frozen=True)
class _Model:
    predict: Callable[[np.ndarray, dict[str, Any]], FoldPrediction]  # (volume, properties): every fold once
    labels: dict[str, int]
    description: str
    version: str
    terms: Mapping[str, Terminology] | None
    seg_options: SegOptions = DEFAULT_SEG_OPTIONS


class _BadCase(Exception):  # noqa: N818 - internal signal, never leaves this module
    """One case cannot be read, predicted or exported; ``message`` names the file and the fix."""

    def __init__(self, file: Path, message: str) -> None:
        super().__init__(message)
        self.file = file
        self.message = message


def _load_model(
    work: Path,
    plan_record: Path,
    trainer: str,
    folds: tuple[str, ...],
    device: str,
    description: str,
    roi_yaml: Path | None,
    seg_options: SegOptions,
    inference: Inference,
) -> _Model:
    record = read_record(plan_record, PlanRecord)
    configure_nnunet(work, device=device)
    folder = model_dir(work, record.dataset_name, trainer, record.plans, record.configuration)
    ensemble = load_ensemble(folder, folds, device, inference=inference)
    # "ignore" marks unlabelled training voxels (partial labels); the network never predicts it.
    labels = {name: value for name, value in ensemble.dataset_json["labels"].items() if name != IGNORE_LABEL}
    version = f"{description} {record.dataset_name} {trainer} folds {','.join(folds)}"
    terms = load_roi_terms(roi_yaml) if roi_yaml else None
    # each fold once: nnU-Net's ensemble (exported) and where the folds disagree (the worklist's signal)
    return _Model(partial(predict_folds, ensemble), labels, description, version, terms, seg_options)


def _cause(exc: BaseException) -> str:
    """The useful last line of a SimpleITK/GDCM/pydicom error, without ITK's source locations."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = re.sub(r"^.*?ERROR: ", "", lines[-1])
    return re.sub(r"^\w+\(0x[0-9a-fA-F]+\): ", "", text)


def _unreadable_slice(series: ImageSeries) -> tuple[int, Path] | None:
    """The first slice SimpleITK cannot read on its own (the series reader does not say which)."""
    import SimpleITK as sitk

    for index, path in enumerate(series.files):
        try:
            sitk.ReadImage(str(path))
        except RuntimeError:
            return index, path
    return None


def _unreadable(case: InboxCase, exc: BaseException, modality: str) -> _BadCase:
    cause = _cause(exc)
    if case.series is None:
        return _BadCase(
            case.source,
            f"{case.source}: inbox case {case.case_id} is not a readable NIfTI image ({cause}). "
            "Replace it with the complete image, or move it out of the inbox.",
        )
    fix = (
        f"Re-export the complete series from the PACS or scanner into {case.folder}, "
        "or move that folder out of the inbox."
    )
    found = _unreadable_slice(case.series)
    if found is None:
        return _BadCase(
            case.folder,
            f"{case.folder}: the {modality} series {case.series.series_uid} of inbox case "
            f"{case.case_id} cannot be read ({cause}). {fix}",
        )
    index, path = found
    return _BadCase(
        path,
        f"{path}: slice {index + 1} of {len(case.series.files)} of inbox case {case.case_id} "
        f"cannot be read ({cause}). {fix}",
    )


def _read_case(
    case: InboxCase, modality: str
) -> tuple[np.ndarray, dict[str, tuple[float, ...]], Grid | None]:
    """The case's image (slices, rows, columns), its geometry and, for DICOM, its checked grid."""
    import SimpleITK as sitk

    try:
        if case.series is not None:
            grid = series_grid(case.series)  # before the prediction: a SEG needs a regular grid
            array, geometry = read_volume(case.series)
        else:
            grid = None
            source = sitk.ReadImage(str(case.nifti))
            array = sitk.GetArrayFromImage(source)
            geometry = {
                "spacing": source.GetSpacing(),
                "origin": source.GetOrigin(),
                "direction": source.GetDirection(),
            }
    except GeometryError as exc:
        raise _BadCase(case.folder, f"inbox case {case.case_id}: {exc}") from exc
    except (RuntimeError, InvalidDicomError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
            raise  # the disk, not the case: main() names it
        raise _unreadable(case, exc, modality) from exc
    if array.ndim != 3:
        raise _BadCase(
            case.source,
            f"{case.source}: inbox case {case.case_id} is a {array.ndim}D image; only 3D images are "
            "predicted. Replace it with the 3D volume, or move it out of the inbox.",
        )
    if case.channels:
        array = np.stack([array, *_channel_arrays(case, array, geometry)])
    return array, geometry, grid


def _channel_arrays(
    case: InboxCase, reference_array: np.ndarray, geometry: dict[str, tuple[float, ...]]
) -> list[np.ndarray]:
    """Channels 1.. of a multi-sequence case on the reference grid, as conversion resamples them."""
    import SimpleITK as sitk

    from iterseg.convert.channels import LOW_COVERAGE, onto_reference

    reference = _with_geometry(sitk.GetImageFromArray(reference_array), geometry)
    arrays = []
    for series in case.channels:
        try:
            series_grid(series)  # the reference's checks: a missing slice is not interpolated over
            values, own = read_volume(series)
        except GeometryError as exc:
            raise _BadCase(
                case.folder, f"inbox case {case.case_id}, series {series.series_uid}: {exc}"
            ) from exc
        except (RuntimeError, InvalidDicomError) as exc:
            raise _BadCase(
                series.files[0],
                f"{series.files[0].parent}: series {series.series_uid} of inbox case {case.case_id} cannot "
                f"be read ({_cause(exc)}); re-export it, or move the case out of the inbox.",
            ) from exc
        resampled, done = onto_reference(_with_geometry(sitk.GetImageFromArray(values), own), reference)
        if done["coverage"] < LOW_COVERAGE:
            logger.warning(
                "inbox case %s: series %s covers %.0f %% of the reference grid; the rest is its minimum",
                case.case_id,
                series.series_uid,
                100 * done["coverage"],
            )
        arrays.append(sitk.GetArrayFromImage(resampled).astype(np.float32))
    return arrays


def _with_geometry(image: Any, geometry: dict[str, tuple[float, ...]]) -> Any:
    image.SetSpacing(geometry["spacing"])
    image.SetOrigin(geometry["origin"])
    image.SetDirection(geometry["direction"])
    return image


def _export(
    model: _Model, case: InboxCase, image: Any, grid: Grid | None, staging: Path
) -> tuple[Path, Path | None]:
    """Write the label NIfTI (and the SEG of a DICOM case) into ``staging``; paths relative to it."""
    import SimpleITK as sitk

    label_rel = Path("labels") / f"{case.case_id}.nii.gz"
    sitk.WriteImage(image, str(staging / label_rel), useCompression=True)
    if case.series is None:
        return label_rel, None
    seg_rel = Path("seg") / f"{case.case_id}.dcm"
    try:
        export_for_series(
            case.series,
            image,
            model.labels,
            staging / seg_rel,
            case.case_id,
            SegType.BINARY,
            model.description,
            model.version,
            grid=grid,
            terms=model.terms,
            options=model.seg_options,
        )
    except (SegExportError, InvalidDicomError) as exc:
        (staging / label_rel).unlink(missing_ok=True)  # a skipped case publishes nothing
        (staging / seg_rel).unlink(missing_ok=True)
        raise _BadCase(
            case.folder,
            f"{case.folder}: the prediction of inbox case {case.case_id} cannot be written as a "
            f"DICOM-SEG: {exc}",
        ) from exc
    return label_rel, seg_rel


def _predict_case(model: _Model, case: InboxCase, modality: str, staging: Path) -> Prediction:
    import SimpleITK as sitk

    array, geometry, grid = _read_case(case, modality)
    props = {"spacing": list(geometry["spacing"])[::-1]}
    volume = (array if array.ndim == 4 else array[None]).astype(np.float32)  # channels first
    predicted = model.predict(volume, props)
    seg, probabilities = predicted.segmentation.astype(np.uint8), predicted.probabilities
    fold_segs = list(predicted.fold_segmentations)
    image = _with_geometry(sitk.GetImageFromArray(seg), geometry)
    label_rel, seg_rel = _export(model, case, image, grid, staging)
    counts = {name: int((seg == value).sum()) for name, value in model.labels.items() if value > 0}
    voxel_ml = float(np.prod(geometry["spacing"])) / 1000.0
    entropy = normalised_entropy(probabilities)
    agreement = fold_agreement(fold_segs, model.labels)
    logger.info(
        "%s: predicted %s; uncertainty %.3f%s",
        case.case_id,
        counts,
        entropy,
        f", fold agreement (Dice) {agreement}" if agreement else "",
    )
    return Prediction(
        case.case_id,
        case.series.patient_id if case.series else "",
        case.series.series_uid if case.series else "",
        str(label_rel),
        str(seg_rel) if seg_rel else None,
        counts,
        {name: round(n * voxel_ml, 3) for name, n in counts.items()},
        entropy,
        agreement,
    )


def _fresh_staging(root: Path, out: Path) -> Path:
    """An empty staging folder in ``root``, outside ``out``, with what a killed earlier run left removed."""
    staging = staging_dir(root / STAGING_NAME, out, STAGING_NAME)
    for leftover in (staging, out / _OLD_STAGING):
        if leftover.exists():
            logger.info("%s: removing what an interrupted earlier run left", leftover)
            shutil.rmtree(leftover)
    (staging / "labels").mkdir(parents=True)
    (staging / "seg").mkdir()
    return staging


def _check_outcome(
    inbox: Path, total: int, predicted: int, skipped: list[SkippedCase], policy: BadCasePolicy
) -> None:
    """Refuse to publish when a bad case must stop the step, or when nothing could be predicted."""
    lines = "".join(f"\n  {case.message}" for case in skipped)
    if skipped and policy is BadCasePolicy.FAIL:
        raise PredictionError(
            f"{inbox}: {len(skipped)} of {total} inbox case(s) cannot be predicted, so nothing was "
            f"published (on_bad_case: fail):{lines}\nFix or remove them, or set on_bad_case: skip to "
            f"predict the others and list these in {SKIPPED_PREDICTIONS_FILE}."
        )
    if skipped and not predicted:
        raise PredictionError(
            f"{inbox}: none of its {total} case(s) could be predicted, so nothing was published:{lines}"
            "\nFix them as each line says and run again."
        )


def predict_inbox(
    work: Path,
    plan_record: Path,
    trainer: str,
    folds: tuple[str, ...],
    device: str,
    inbox: Path,
    modality: str,
    out: Path,
    description: str,
    roi_yaml: Path | None = None,
    on_bad_case: BadCasePolicy = BadCasePolicy.SKIP,
    seg_options: SegOptions = DEFAULT_SEG_OPTIONS,
    inference: Inference = DEFAULT_INFERENCE,
    *,
    staging_root: Path | None = None,
    channels: tuple[Channel, ...] = (),
) -> InboxPrediction:
    """Predict all inbox cases with the ensemble of ``folds``; publish NIfTI labels + DICOM-SEGs.

    Parameters
    ----------
    work
        Iteration folder with the trained model; outputs are staged in ``work/predictions.partial``
        (unless ``staging_root`` says elsewhere).
    plan_record
        The plan step's record (dataset, plans, configuration).
    trainer, folds, device
        Which trained model to load and where to run it.
    inbox
        ``rawdata/<dataset>/inbox``; only read.
    modality
        Image modality to look for.
    out
        The iteration's results folder: ``labels/``, ``seg/``, ``predictions.json`` and
        ``skipped_predictions.json`` are published there, each by one rename, once every case is done.
    description
        SeriesDescription of the SEGs; with the model's dataset, trainer and folds it is the
        algorithm version recorded in every segment.
    roi_yaml
        Coded descriptions and colours of the labels (default: the built-in table).
    on_bad_case
        ``skip``: leave out (and list) a case that cannot be read, predicted or exported;
        ``fail``: publish nothing and name every bad case (after the first, the remaining cases
        are only read, not predicted, since the step fails anyway).
    seg_options
        Transfer syntax and empty frames of the SEG files (the dataset's ``seg`` settings).
    inference
        Tile step size and test-time mirroring (``nnunet.inference``).
    staging_root
        Where to stage instead of ``work`` (``<staging_root>/predictions.partial``): the analyzer
        stages in its temporary folder, so that nothing is written into the model's folder.
    channels
        Multi-sequence datasets: the channels the model was trained on; each inbox case's series
        are assigned to them as in conversion, channels 1.. resampled onto the reference series,
        which the SEG refers to.

    Raises
    ------
    PredictionError
        With ``fail`` and a bad case; when no case of a non-empty inbox could be predicted; or
        when two inbox cases would share an id. Nothing is published then.

    """
    # long only for its parameter docs: the body is three phases (scan, predict, check and publish)
    scan: InboxScan = scan_inbox(inbox, modality, channels)
    staging = _fresh_staging(work if staging_root is None else staging_root, out)

    def load() -> _Model:
        return _load_model(
            work, plan_record, trainer, folds, device, description, roi_yaml, seg_options, inference
        )

    run = _predict_cases(scan, load, inbox, modality, staging, on_bad_case)
    try:
        total = len(scan.cases) + len(scan.unusable)
        _check_outcome(inbox, total, len(run.predictions), list(run.skipped), on_bad_case)
    except PredictionError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _publish(run, inbox, staging, out)
    return run


def _predict_cases(
    scan: InboxScan,
    load: Callable[[], _Model],
    inbox: Path,
    modality: str,
    staging: Path,
    on_bad_case: BadCasePolicy,
) -> InboxPrediction:
    """Predict every usable case into ``staging``; the bad ones (and the unusable) as skipped."""
    from tqdm import tqdm

    skipped = list(scan.unusable)
    predictions: list[Prediction] = []
    model: _Model | None = None  # loaded for the first case to predict: none when the step fails anyway
    for case in tqdm(scan.cases, desc="predict", unit="case", disable=None):
        try:
            if skipped and on_bad_case is BadCasePolicy.FAIL:
                _read_case(case, modality)  # only to name every unreadable case
            else:
                model = model or load()
                predictions.append(_predict_case(model, case, modality, staging))
        except _BadCase as bad:
            logger.debug("inbox case %s", case.case_id, exc_info=True)
            patient = case.series.patient_id if case.series else ""
            skipped.append(
                SkippedCase(Stage.PREDICT, str(inbox), case.case_id, patient, str(bad.file), bad.message)
            )
    return InboxPrediction(tuple(predictions), tuple(skipped))


def _publish(run: InboxPrediction, inbox: Path, staging: Path, out: Path) -> None:
    """Write the run's index files into ``staging`` and publish it into the results folder ``out``."""
    warn_skipped(list(run.skipped), str(inbox))
    write_predictions(list(run.predictions), staging / PREDICTIONS_FILE)
    write_skipped(staging / SKIPPED_PREDICTIONS_FILE, list(run.skipped))
    # the index last: whoever reads predictions.json finds the files it lists
    publish(staging, out, ["labels", "seg", SKIPPED_PREDICTIONS_FILE, PREDICTIONS_FILE])
    logger.info(
        "%s: %d case(s) predicted, %d skipped; published in %s",
        inbox,
        len(run.predictions),
        len(run.skipped),
        out,
    )


def write_predictions(predictions: list[Prediction], path: Path) -> None:
    """Write the prediction manifest (``predictions.json``: one entry per predicted case), atomically."""
    write_record(path, Predictions(tuple(predictions)))


def predicted_record(out: Path, run: InboxPrediction, on_bad_case: BadCasePolicy) -> PredictedRecord:
    """The predict step's record of a published run into results folder ``out``."""
    return PredictedRecord(
        str(out),
        str(out / PREDICTIONS_FILE),
        str(out / SKIPPED_PREDICTIONS_FILE),
        tuple(p.case_id for p in run.predictions),
        tuple(c.case for c in run.skipped),
        on_bad_case.value,
    )
