"""Predict every inbox case with an iteration's fold ensemble and export DICOM-SEGs."""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from iterseg.assemble import IGNORE_LABEL
from iterseg.dicom_series import ImageSeries, find_image_series, read_volume
from iterseg.errors import PredictionError, SegExportError
from iterseg.export import export_for_series
from iterseg.layout import model_dir
from iterseg.nnunet_env import configure_nnunet
from iterseg.plan import read_record
from iterseg.roi import load_roi_terms
from iterseg.seg_export import SegType
from iterseg.worklist import fold_agreement, normalised_entropy

logger = logging.getLogger(__name__)


NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class InboxCase:
    """One image to predict: a DICOM series, or a NIfTI file for cases that come without DICOM."""

    case_id: str
    folder: Path
    series: ImageSeries | None = None
    nifti: Path | None = None


@dataclass(frozen=True)
class Prediction:
    """Where a case's outputs went (paths relative to the iteration's results folder)."""

    case_id: str
    patient_id: str
    series_uid: str
    label: str
    seg: str | None  # None for NIfTI inputs: a SEG needs the DICOM series it annotates
    voxels_per_label: dict[str, int]
    volume_ml: dict[str, float] = field(default_factory=dict)
    mean_entropy: float = 0.0  # normalised entropy of the ensemble where foreground is plausible
    fold_dice: dict[str, float | None] = field(default_factory=dict)  # pairwise agreement of the folds


def discover_inbox(inbox: Path, modality: str) -> list[InboxCase]:
    """One case per ``modality`` image series in each sub-folder of ``inbox``.

    A folder with one series gives case ``<folder>``; with several, ``<folder>_S<SeriesNumber>``.
    A folder without DICOM series but with NIfTI files gives one case per file
    (``<folder>``, or ``<folder>_<file stem>`` for several): they get a NIfTI prediction only.
    """
    if not inbox.is_dir():
        logger.warning("%s: no inbox folder; nothing to predict", inbox)
        return []
    cases = []
    for folder in sorted(p for p in inbox.iterdir() if p.is_dir() and not p.name.startswith(".")):
        series = find_image_series(folder, modality)
        base = re.sub(r"[^A-Za-z0-9_-]+", "-", folder.name)
        if not series:
            niftis = sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))
            if not niftis:
                logger.warning("%s: no %s series or NIfTI image found; skipped", folder, modality)
            for nifti in niftis:
                stem = re.sub(r"[^A-Za-z0-9_-]+", "-", nifti.name.split(".nii")[0])
                cases.append(InboxCase(base if len(niftis) == 1 else f"{base}_{stem}", folder, nifti=nifti))
                logger.info("%s: NIfTI input, no DICOM: predicted as NIfTI only (no SEG)", nifti)
        for s in series:
            number = getattr(s.datasets[0], "SeriesNumber", None)
            cid = (
                base if len(series) == 1 else f"{base}_S{number if number is not None else s.series_uid[-6:]}"
            )
            cases.append(InboxCase(cid, folder, series=s))
    return cases


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
) -> list[Prediction]:
    """Predict all inbox cases with the ensemble of ``folds`` and write NIfTI labels + DICOM-SEGs.

    Parameters
    ----------
    work
        Iteration folder with the trained model.
    plan_record
        The plan step's record (dataset, plans, configuration).
    trainer, folds, device
        Which trained model to load and where to run it.
    inbox
        ``rawdata/<dataset>/inbox``; only read.
    modality
        Image modality to look for.
    out
        The iteration's results folder; ``labels/`` and ``seg/`` are written there.
    description
        SeriesDescription of the SEGs; with the model's dataset, trainer and folds it is the
        algorithm version recorded in every segment.
    roi_yaml
        Coded descriptions and colours of the labels (default: the built-in table).

    Returns
    -------
    list[Prediction]
        Also written to ``out/predictions.json`` by the CLI.

    """
    from tqdm import tqdm

    record = read_record(plan_record)
    configure_nnunet(work, device=device)
    import SimpleITK as sitk
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    cases = discover_inbox(inbox, modality)
    terms = load_roi_terms(roi_yaml) if roi_yaml else None
    version = f"{description} {record.dataset_name} {trainer} folds {','.join(folds)}"
    folder = model_dir(work, record.dataset_name, trainer, record.plans, record.configuration)
    predictor = nnUNetPredictor(
        device=torch.device(device), perform_everything_on_device=device != "cpu", allow_tqdm=False
    )
    use_folds = tuple(f if f == "all" else int(f) for f in folds)
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=use_folds)
    # one predictor per fold as well, to see where the fold models disagree (the worklist's
    # signal); nnU-Net's ensemble itself stays the prediction that is exported
    per_fold = []
    if len(use_folds) > 1:
        for fold in use_folds:
            single = nnUNetPredictor(
                device=torch.device(device), perform_everything_on_device=device != "cpu", allow_tqdm=False
            )
            single.initialize_from_trained_model_folder(str(folder), use_folds=(fold,))
            per_fold.append(single)
    # "ignore" marks unlabelled training voxels (partial labels); the network never predicts it.
    labels: dict[str, int] = {
        name: value for name, value in predictor.dataset_json["labels"].items() if name != IGNORE_LABEL
    }
    staging = out / ".predictions.partial"
    if staging.exists():
        shutil.rmtree(staging)
    results: list[Prediction] = []
    for case in tqdm(cases, desc="predict", unit="case", disable=None):
        try:
            if case.series is not None:
                array, geometry = read_volume(case.series)
            else:
                source = sitk.ReadImage(str(case.nifti))
                array = sitk.GetArrayFromImage(source)
                geometry = {
                    "spacing": source.GetSpacing(),
                    "origin": source.GetOrigin(),
                    "direction": source.GetDirection(),
                }
        except RuntimeError as exc:
            raise PredictionError(
                f"{case.nifti or case.folder}: SimpleITK could not read it ({exc})."
            ) from exc
        if array.ndim != 3:
            raise PredictionError(f"{case.nifti or case.folder}: expected a 3D image, got {array.ndim}D.")
        props = {"spacing": list(geometry["spacing"])[::-1]}
        volume = array[None].astype(np.float32)
        seg, probabilities = predictor.predict_single_npy_array(volume, props, None, None, True)
        seg = np.asarray(seg, dtype=np.uint8)
        fold_segs = [
            np.asarray(p.predict_single_npy_array(volume, props, None, None, False)) for p in per_fold
        ]
        image = sitk.GetImageFromArray(seg)
        image.SetSpacing(geometry["spacing"])
        image.SetOrigin(geometry["origin"])
        image.SetDirection(geometry["direction"])
        label_rel = Path("labels") / f"{case.case_id}.nii.gz"
        (staging / "labels").mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(staging / label_rel), useCompression=True)
        seg_rel = None if case.series is None else Path("seg") / f"{case.case_id}.dcm"
        try:
            if case.series is not None and seg_rel is not None:
                export_for_series(
                    case.series,
                    image,
                    labels,
                    staging / seg_rel,
                    case.case_id,
                    SegType.BINARY,
                    description,
                    version,
                    terms=terms,
                )
        except SegExportError as exc:
            raise PredictionError(f"{case.folder}: {exc}") from exc
        counts = {name: int((seg == value).sum()) for name, value in labels.items() if value > 0}
        voxel_ml = float(np.prod(geometry["spacing"])) / 1000.0
        entropy = normalised_entropy(probabilities)
        agreement = fold_agreement(fold_segs, labels)
        logger.info(
            "%s: predicted %s; uncertainty %.3f%s",
            case.case_id,
            counts,
            entropy,
            f", fold agreement (Dice) {agreement}" if agreement else "",
        )
        results.append(
            Prediction(
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
        )
    for sub in ("labels", "seg"):
        target = out / sub
        if target.exists():
            shutil.rmtree(target)
        if (staging / sub).exists():
            (staging / sub).rename(target)
    shutil.rmtree(staging, ignore_errors=True)
    return results


def write_predictions(predictions: list[Prediction], path: Path) -> None:
    """Write the prediction manifest (the predict step's snakemake output)."""
    path.write_text(json.dumps([asdict(p) for p in predictions], indent=2))
