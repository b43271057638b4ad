"""Snapshot -> NIfTI cases with med-imagetools, loudly, then cases -> nnU-Net raw dataset.

med-imagetools takes one mask modality per run, exits 0 when cases fail, names datasets after
the input folder and caches its crawl next to the input. We run it once per annotation kind
present in the snapshot, into our own folders, and check every outcome against what a header
scan of the snapshot says must come out.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections import defaultdict
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from iterseg.convert_check import RTSTRUCT_TOLERANCE, RoiCheck, check_case
from iterseg.errors import ConversionError, SnapshotError
from iterseg.roi import label_values, load_roi_yaml
from iterseg.seg_export import ALGORITHM_NAME, SEG_MANUFACTURER

logger = logging.getLogger(__name__)

CASES_FILE = "cases.json"
CHECK_FILE = "check.json"
EXCLUDED_FILE = "excluded.json"


class AnnotationKind(StrEnum):
    """DICOM modalities that carry annotations."""

    SEG = "SEG"
    RTSTRUCT = "RTSTRUCT"


@dataclass(frozen=True)
class SeriesInfo:
    """What a header scan learns of one series."""

    series_uid: str
    modality: str
    patient_id: str
    folder: Path
    referenced_series: str | None  # for annotations: the image series they annotate
    files: tuple[Path, ...]
    unrefined_prediction: bool = False  # a SEG exported by iterseg and not edited since


@dataclass(frozen=True)
class ExcludedAnnotation:
    """An annotation left out of training, and why."""

    patient_id: str
    files: tuple[str, ...]
    reason: str


def is_unrefined_prediction(ds: pydicom.Dataset) -> bool:
    """True for a SEG that iterseg exported and nobody has saved since.

    Editors (3D Slicer via dcmqi, OHIF) write a new SEG with their own Manufacturer; ours carries
    Manufacturer ``iterseg`` and only AUTOMATIC segments from our algorithm.
    """
    if ds.Modality != AnnotationKind.SEG.value or str(getattr(ds, "Manufacturer", "")) != SEG_MANUFACTURER:
        return False

    def ours(segment: pydicom.Dataset) -> bool:
        algorithms = getattr(segment, "SegmentationAlgorithmIdentificationSequence", [])
        automatic = str(getattr(segment, "SegmentAlgorithmType", "")) == "AUTOMATIC"
        return automatic and any(str(a.AlgorithmName) == ALGORITHM_NAME for a in algorithms)

    segments = getattr(ds, "SegmentSequence", [])
    return bool(segments) and all(ours(s) for s in segments)


@dataclass(frozen=True)
class ConvertedCase:
    """One annotated image series of one snapshot, converted to NIfTI."""

    case_id: str
    patient_id: str
    image_series_uid: str
    annotation_kind: str
    annotation_series_uid: str
    snapshot: str
    image: str  # relative to the converted folder
    label: str


def case_id(patient_id: str, image_series_uid: str) -> str:
    """Stable nnU-Net case identifier for an image series: patient plus a short series hash.

    The same image series gets the same id in every snapshot, so a refined annotation in a
    later snapshot replaces the earlier one.
    """
    safe = re.sub(r"[^A-Za-z0-9-]+", "-", patient_id).strip("-") or "anon"
    return f"{safe}_{hashlib.sha1(image_series_uid.encode()).hexdigest()[:8]}"


def _referenced_series(ds: pydicom.Dataset) -> str | None:
    if ds.Modality == AnnotationKind.SEG.value:
        refs = getattr(ds, "ReferencedSeriesSequence", None)
        return str(refs[0].SeriesInstanceUID) if refs else None
    if ds.Modality == AnnotationKind.RTSTRUCT.value:
        for frame in getattr(ds, "ReferencedFrameOfReferenceSequence", []):
            for study in getattr(frame, "RTReferencedStudySequence", []):
                for series in getattr(study, "RTReferencedSeriesSequence", []):
                    return str(series.SeriesInstanceUID)
    return None


def scan_series(folder: Path) -> list[SeriesInfo]:
    """Group the DICOM files under ``folder`` by series, reading headers only.

    Non-DICOM files are ignored (researchers' notes, OS metadata files).
    """
    files: dict[str, list[Path]] = defaultdict(list)
    headers: dict[str, pydicom.Dataset] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError):
            logger.debug("skipping non-DICOM file %s", path)
            continue
        uid = str(getattr(ds, "SeriesInstanceUID", ""))
        if not uid or "Modality" not in ds:
            logger.debug("skipping DICOM without series/modality %s", path)
            continue
        files[uid].append(path)
        headers.setdefault(uid, ds)
    series = []
    for uid, paths in files.items():
        header = headers[uid]
        series.append(
            SeriesInfo(
                series_uid=uid,
                modality=str(header.Modality),
                patient_id=str(getattr(header, "PatientID", "")),
                folder=paths[0].parent,
                referenced_series=_referenced_series(header),
                files=tuple(paths),
                unrefined_prediction=is_unrefined_prediction(header),
            )
        )
    return series


def expected_cases(
    snapshot: Path, modality: str, allow_unrefined: bool = False
) -> tuple[dict[str, tuple[SeriesInfo, SeriesInfo]], list[ExcludedAnnotation]]:
    """Image series that must come out of the conversion, with their single annotation.

    Our own predictions, dropped back unedited, are not human annotations: they are left out
    (and returned as excluded) unless ``allow_unrefined``.

    Raises
    ------
    SnapshotError
        When the snapshot holds no annotation, an annotation points at an image series that
        is not in the snapshot, or one image series has several annotations (med-imagetools
        would silently keep the first).

    """
    series = scan_series(snapshot)
    images = {s.series_uid: s for s in series if s.modality == modality}
    annotations = [s for s in series if s.modality in {k.value for k in AnnotationKind}]
    if not annotations:
        raise SnapshotError(
            f"{snapshot}: no SEG or RTSTRUCT found. A snapshot holds annotated cases; put "
            "unannotated images in the dataset's inbox folder instead."
        )
    excluded = []
    if not allow_unrefined:
        for ann in (a for a in annotations if a.unrefined_prediction):
            excluded.append(
                ExcludedAnnotation(
                    ann.patient_id,
                    tuple(str(f) for f in ann.files),
                    "unrefined iterseg prediction (Manufacturer iterseg, AUTOMATIC segments); edit it "
                    "in a viewer and save, or set datasets.<name>.allow_unrefined_predictions",
                )
            )
            logger.warning("%s: %s", ann.files[0], excluded[-1].reason)
        annotations = [a for a in annotations if not a.unrefined_prediction]
        if not annotations:
            raise SnapshotError(
                f"{snapshot}: every annotation is an unrefined iterseg prediction "
                f"({', '.join(e.files[0] for e in excluded)}); refine them in a viewer before "
                "dropping them into a snapshot."
            )
    by_image: dict[str, list[SeriesInfo]] = defaultdict(list)
    for ann in annotations:
        if ann.referenced_series not in images:
            raise SnapshotError(
                f"{ann.folder}: {ann.modality} (patient {ann.patient_id}) references image series "
                f"{ann.referenced_series}, which is not a {modality} series in snapshot {snapshot.name}. "
                "Add that series to the snapshot or remove the annotation."
            )
        by_image[ann.referenced_series].append(ann)
    for uid, anns in by_image.items():
        if len(anns) > 1:
            where = ", ".join(str(f) for a in anns for f in a.files)
            raise SnapshotError(
                f"{snapshot.name}: image series {uid} (patient {images[uid].patient_id}) has "
                f"{len(anns)} annotations ({where}). Keep exactly one per image series in a snapshot; "
                "put refined versions into a later snapshot."
            )
    unannotated = [s for uid, s in images.items() if uid not in by_image]
    for image in unannotated:
        logger.warning(
            "%s: %s series of patient %s has no annotation in this snapshot; it is not used for training",
            image.folder,
            modality,
            image.patient_id,
        )
    return {uid: (images[uid], anns[0]) for uid, anns in by_image.items()}, excluded


def stage_snapshot(snapshot: Path, expected: dict[str, tuple[SeriesInfo, SeriesInfo]], staged: Path) -> Path:
    """A view of the snapshot holding only the selected image series and annotations (symlinks).

    med-imagetools converts whatever it crawls and keeps the first of several annotations, so
    the choice of what to convert is made here, not left to it.
    """
    if staged.exists():
        shutil.rmtree(staged)
    for image, annotation in expected.values():
        for file in (*image.files, *annotation.files):
            target = staged / file.relative_to(snapshot)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(file.resolve(), target)
    return staged


def _run_imgtools(
    snapshot: Path,
    out: Path,
    modality: str,
    kind: AnnotationKind,
    roi_labels: dict[str, list[str]],
    mask_saving_strategy: str,
    jobs: int,
) -> list[Any]:
    """One med-imagetools nnU-Net pipeline run; returns its per-sample results."""
    from imgtools.io.nnunet_output import MaskSavingStrategy
    from imgtools.io.sample_output import ExistingFileMode
    from imgtools.nnunet_pipeline import nnUNetPipeline
    from imgtools.transforms import Transformer

    from iterseg.grid import GridPreservingTransform

    if out.exists():
        shutil.rmtree(out)  # a re-run into the same folder would become Dataset002
    out.mkdir(parents=True)
    pipeline = nnUNetPipeline(
        input_directory=snapshot,
        output_directory=out,
        modalities=[modality, kind.value],
        roi_match_map=roi_labels,
        mask_saving_strategy=MaskSavingStrategy(mask_saving_strategy),
        # Without this med-imagetools writes its cache into rawdata (<parent>/.imgtools).
        crawl_directory=out / "crawl",
        existing_file_mode=ExistingFileMode.FAIL,
        n_jobs=jobs,
    )
    # Its built-in Resample interpolates masks linearly and erodes them (see iterseg.grid).
    pipeline.transformer = Transformer([GridPreservingTransform()])
    results = pipeline.run()
    return [*results["success"], *results["failure"]]


def _failure_message(result: Any) -> str:
    info = result.to_dict()
    folders = ", ".join(s["folder"] for s in info.get("samples", []))
    return (
        f"patient {info.get('PatientID')} ({folders}): {info.get('error_type')}: {info.get('error_message')}"
    )


def _check_label_numbering(imgtools_out: Path, expected: dict[str, int], problems: list[str]) -> None:
    """Our dataset.json numbers labels in ROI YAML order; med-imagetools must have done the same."""
    for dataset_json in (imgtools_out / "nnUNet_raw").glob("Dataset*/dataset.json"):
        labels = json.loads(dataset_json.read_text()).get("labels")
        if labels != expected:
            problems.append(f"{dataset_json}: med-imagetools numbered labels {labels}, expected {expected}")


def convert_snapshot(
    snapshot: Path,
    out: Path,
    roi_yaml: Path,
    modality: str = "CT",
    mask_saving_strategy: str = "sparse_mask",
    jobs: int = 1,
    allow_unrefined: bool = False,
) -> list[ConvertedCase]:
    """Convert every annotated case of a snapshot to NIfTI image/label pairs.

    Parameters
    ----------
    snapshot
        ``rawdata/<dataset>/<date>__<dataset>``; only read.
    out
        The iteration's ``converted`` folder; replaced.
    roi_yaml
        Label -> regexes, in label order.
    modality
        CT or MR.
    mask_saving_strategy
        med-imagetools' strategy for overlapping ROIs.
    jobs
        Parallel workers for med-imagetools.
    allow_unrefined
        Train on our own predictions dropped back unedited (excluded and reported by default).

    Returns
    -------
    list[ConvertedCase]
        Also written to ``out/cases.json``; excluded annotations to ``out/excluded.json``.

    Raises
    ------
    ConversionError
        If med-imagetools failed any case or dropped one silently; the message lists each case.

    """
    roi_labels = load_roi_yaml(roi_yaml)
    expected, excluded = expected_cases(snapshot, modality, allow_unrefined)
    kinds = sorted({ann.modality for _, ann in expected.values()})
    if out.exists():
        shutil.rmtree(out)
    (out / "cases").mkdir(parents=True)
    (out / EXCLUDED_FILE).write_text(json.dumps([asdict(e) for e in excluded], indent=2))
    staged = stage_snapshot(snapshot, expected, out / "staged" / snapshot.name)
    date = snapshot.name.split("__")[0]
    converted: list[ConvertedCase] = []
    problems: list[str] = []
    for kind_name in kinds:
        kind = AnnotationKind(kind_name)
        logger.info("%s: converting %s + %s with med-imagetools", snapshot.name, modality, kind.value)
        results = _run_imgtools(
            staged,
            out / "imgtools" / kind.value.lower(),
            modality,
            kind,
            roi_labels,
            mask_saving_strategy,
            jobs,
        )
        _check_label_numbering(out / "imgtools" / kind.value.lower(), label_values(roi_labels), problems)
        produced: set[str] = set()
        for result in results:
            if not result.success:
                problems.append(_failure_message(result))
                continue
            by_modality = {s.Modality: str(s.SeriesInstanceUID) for s in result.sample}
            image_uid = by_modality.get(modality)
            ann_uid = by_modality.get(kind.value)
            if image_uid not in expected or ann_uid is None:
                problems.append(f"med-imagetools produced an unexpected sample {result.to_dict()}")
                continue
            image_files = [Path(f) for f in result.output_files if Path(f).parent.name.startswith("images")]
            label_files = [Path(f) for f in result.output_files if Path(f).parent.name.startswith("labels")]
            if len(image_files) != 1 or len(label_files) != 1:
                problems.append(
                    f"patient {expected[image_uid][0].patient_id}: expected one image and one label file, "
                    f"med-imagetools wrote {[str(f) for f in result.output_files]}"
                )
                continue
            image_info = expected[image_uid][0]
            cid = case_id(image_info.patient_id, image_uid)
            image_dst = out / "cases" / f"{cid}_0000.nii.gz"
            label_dst = out / "cases" / f"{cid}.nii.gz"
            os.replace(image_files[0], image_dst)
            os.replace(label_files[0], label_dst)
            produced.add(image_uid)
            converted.append(
                ConvertedCase(
                    case_id=cid,
                    patient_id=image_info.patient_id,
                    image_series_uid=image_uid,
                    annotation_kind=kind.value,
                    annotation_series_uid=ann_uid,
                    snapshot=date,
                    image=str(image_dst.relative_to(out)),
                    label=str(label_dst.relative_to(out)),
                )
            )
        failed_here = {str(s.SeriesInstanceUID) for r in results if not r.success for s in r.sample}
        for uid, (image, ann) in expected.items():
            if ann.modality == kind.value and uid not in produced and uid not in failed_here:
                problems.append(
                    f"patient {image.patient_id} ({ann.folder}): med-imagetools skipped this "
                    f"{kind.value} without an error; check that it references {image.folder}"
                )
    if problems:
        raise ConversionError(
            f"{snapshot}: {len(problems)} case(s) could not be converted:\n  "
            + "\n  ".join(problems)
            + "\nFix the annotation (e.g. ROI names matching "
            f"{roi_yaml}, every label present) or move the case out of the snapshot; rawdata was not changed."
        )
    converted.sort(key=lambda c: c.case_id)
    verify_conversion(snapshot, out, converted, expected, roi_labels, mask_saving_strategy)
    (out / CASES_FILE).write_text(json.dumps([asdict(c) for c in converted], indent=2))
    logger.info("%s: %d case(s) converted (%s)", snapshot.name, len(converted), ", ".join(kinds))
    return converted


def verify_conversion(
    snapshot: Path,
    out: Path,
    converted: list[ConvertedCase],
    expected: dict[str, tuple[SeriesInfo, SeriesInfo]],
    roi_labels: dict[str, list[str]],
    strategy: str,
) -> list[RoiCheck]:
    """Re-derive every converted label map from its annotation; write ``out/check.json``.

    Raises
    ------
    ConversionError
        Naming each case and ROI whose voxels differ beyond the tolerance of its annotation kind.

    """
    from tqdm import tqdm

    checks: list[RoiCheck] = []
    voxels = 0
    for case in tqdm(converted, desc="conversion check", unit="case", disable=None):
        image, annotation = expected[case.image_series_uid]
        checks += check_case(
            case.case_id,
            case.patient_id,
            out / case.label,
            image.files,
            annotation.modality,
            annotation.files[0],
            roi_labels,
            strategy,
        )
        voxels += int(np.prod(sitk_size(out / case.label)))
    bad = [c for c in checks if not c.ok]
    report = {
        "snapshot": snapshot.name,
        "cases": len(converted),
        "rois_compared": len(checks),
        "voxels_compared": voxels,
        "mismatches": len(bad),
        "rtstruct_tolerance": RTSTRUCT_TOLERANCE,
        "rois": [{**asdict(c), "ok": c.ok} for c in checks],
    }
    (out / CHECK_FILE).write_text(json.dumps(report, indent=2))
    logger.info(
        "conversion check %s: %d case(s), %d ROI(s), %d voxels compared, %d mismatch(es)",
        snapshot.name,
        len(converted),
        len(checks),
        voxels,
        len(bad),
    )
    if bad:
        lines = [
            f"patient {c.patient_id} ({c.case_id}), ROI {c.label} from {c.annotation}: "
            f"{c.beyond_tolerance} voxel(s) differ, {c.slices_missing} slice(s) missing, "
            f"{c.slices_extra} extra (annotation {c.expected_voxels} voxels, converted {c.converted_voxels})"
            for c in bad
        ]
        raise ConversionError(
            f"{snapshot}: conversion changed the annotation of {len(bad)} ROI(s):\n  "
            + "\n  ".join(lines)
            + f"\nDetails in {out / CHECK_FILE}. Nothing was trained on it; report the case with its "
            "annotation file so the converter can be fixed. Rawdata was not changed."
        )
    return checks


def sitk_size(path: Path) -> tuple[int, ...]:
    """Size of an image file, from its header."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return tuple(reader.GetSize())


def read_cases(converted_dir: Path) -> list[ConvertedCase]:
    """Load a converted snapshot's ``cases.json``."""
    return [ConvertedCase(**c) for c in json.loads((converted_dir / CASES_FILE).read_text())]


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def assemble_dataset(
    converted_dirs: list[Path],
    raw_dataset: Path,
    roi_yaml: Path,
    modality: str,
) -> list[ConvertedCase]:
    """Build the nnU-Net raw dataset of one iteration from converted snapshots.

    Parameters
    ----------
    converted_dirs
        ``converted`` folders in date order; for a case present in several, the newest
        snapshot's annotation wins.
    raw_dataset
        ``nnUNet_raw/DatasetNNN_<name>``; replaced.
    roi_yaml
        Defines the labels of dataset.json.
    modality
        Channel name (CT or MR).

    """
    labels = label_values(load_roi_yaml(roi_yaml))
    chosen: dict[str, tuple[Path, ConvertedCase]] = {}
    for folder in converted_dirs:
        for case in read_cases(folder):
            if case.case_id in chosen:
                logger.info(
                    "case %s: annotation of snapshot %s replaces that of %s",
                    case.case_id,
                    case.snapshot,
                    chosen[case.case_id][1].snapshot,
                )
            chosen[case.case_id] = (folder, case)
    if raw_dataset.exists():
        shutil.rmtree(raw_dataset)
    (raw_dataset / "imagesTr").mkdir(parents=True)
    (raw_dataset / "labelsTr").mkdir()
    for cid, (folder, case) in sorted(chosen.items()):
        _link_or_copy(folder / case.image, raw_dataset / "imagesTr" / f"{cid}_0000.nii.gz")
        _link_or_copy(folder / case.label, raw_dataset / "labelsTr" / f"{cid}.nii.gz")
    dataset_json = {
        "channel_names": {"0": modality},
        "labels": labels,
        "numTraining": len(chosen),
        "file_ending": ".nii.gz",
        "name": raw_dataset.name,
        "description": "assembled by iterseg from snapshots "
        + ", ".join(sorted({c.snapshot for _, c in chosen.values()})),
    }
    (raw_dataset / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    (raw_dataset / CASES_FILE).write_text(
        json.dumps([asdict(c) for _, c in sorted(chosen.values(), key=lambda x: x[1].case_id)], indent=2)
    )
    logger.info("%s: %d training case(s)", raw_dataset.name, len(chosen))
    return [c for _, c in chosen.values()]
