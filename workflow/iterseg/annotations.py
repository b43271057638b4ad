"""Which annotation of which image series a snapshot contributes, decided from DICOM headers.

med-imagetools' pipeline converted whatever it crawled and kept the first of several annotations;
the choice is made here instead, explicitly: by the annotation's referenced series (not folder
names), leaving out our own unedited predictions, and refusing two annotations of one series
unless the config names a rule.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import pydicom

from iterseg.dicom_series import dicom_files
from iterseg.errors import SnapshotError
from iterseg.roi import match_roi_name
from iterseg.seg_export import ALGORITHM_NAME, LEGACY_ALGORITHM_NAMES, SEG_MANUFACTURER

logger = logging.getLogger(__name__)


class AnnotationKind(StrEnum):
    """DICOM modalities that carry annotations."""

    SEG = "SEG"
    RTSTRUCT = "RTSTRUCT"


class DuplicateRule(StrEnum):
    """What to do with several annotations of one image series in one snapshot."""

    ERROR = "error"
    NEWEST_SERIES_DATE = "newest_series_date"


@dataclass(frozen=True)
class SeriesInfo:
    """What a header scan learns of one series."""

    series_uid: str
    study_uid: str
    modality: str
    patient_id: str
    folder: Path
    referenced_series: str | None  # for annotations: the image series they annotate
    files: tuple[Path, ...]
    sop_uids: tuple[str, ...]
    series_datetime: str  # SeriesDate+SeriesTime (else ContentDate+ContentTime); "" if absent
    roi_names: tuple[str, ...] = ()  # for annotations: segment labels / ROI names with contours
    unrefined_prediction: bool = False  # a SEG exported by iterseg and not edited since


@dataclass(frozen=True)
class ExcludedAnnotation:
    """An annotation left out of training, and why."""

    patient_id: str
    files: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Selection:
    """One image series of a snapshot and the annotation chosen for it."""

    image: SeriesInfo
    annotation: SeriesInfo
    reason: str


def content_hash(files: tuple[Path, ...]) -> str:
    """sha256 over the sorted sha256 of each file: independent of file names and order."""
    digests = sorted(hashlib.sha256(f.read_bytes()).hexdigest() for f in files)
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


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
        return automatic and any(
            str(a.AlgorithmName) in (ALGORITHM_NAME, *LEGACY_ALGORITHM_NAMES) for a in algorithms
        )

    segments = getattr(ds, "SegmentSequence", [])
    return bool(segments) and all(ours(s) for s in segments)


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


def _roi_names(ds: pydicom.Dataset) -> tuple[str, ...]:
    """Names of the structures an annotation actually draws."""
    if ds.Modality == AnnotationKind.SEG.value:
        return tuple(str(s.SegmentLabel) for s in getattr(ds, "SegmentSequence", []))
    if ds.Modality == AnnotationKind.RTSTRUCT.value:
        drawn = {
            int(c.ReferencedROINumber)
            for c in getattr(ds, "ROIContourSequence", [])
            if len(getattr(c, "ContourSequence", []))
        }
        return tuple(
            str(r.ROIName) for r in getattr(ds, "StructureSetROISequence", []) if int(r.ROINumber) in drawn
        )
    return ()


def _datetime(ds: pydicom.Dataset) -> str:
    for date, time in (("SeriesDate", "SeriesTime"), ("ContentDate", "ContentTime")):
        if getattr(ds, date, ""):
            return f"{ds.get(date, '')}{ds.get(time, '')}"
    return ""


def scan_series(folder: Path, *more: Path) -> list[SeriesInfo]:
    """Group the DICOM files under ``folder`` (and ``more`` folders) by series, reading headers only.

    Files are DICOM by content, whatever their names (``I10``, ``label.seg``); non-DICOM files
    (researchers' notes, OS metadata files, archives) and ``DICOMDIR`` indexes are ignored.
    """
    files: dict[str, list[Path]] = defaultdict(list)
    sops: dict[str, list[str]] = defaultdict(list)
    headers: dict[str, pydicom.Dataset] = {}
    for path, ds in dicom_files(folder, *more):
        uid = str(getattr(ds, "SeriesInstanceUID", ""))
        if not uid or "Modality" not in ds:
            logger.debug("skipping DICOM without series/modality %s", path)
            continue
        files[uid].append(path)
        sops[uid].append(str(getattr(ds, "SOPInstanceUID", "")))
        headers.setdefault(uid, ds)
    series = []
    for uid, paths in files.items():
        header = headers[uid]
        series.append(
            SeriesInfo(
                series_uid=uid,
                study_uid=str(getattr(header, "StudyInstanceUID", "")),
                modality=str(header.Modality),
                patient_id=str(getattr(header, "PatientID", "")),
                folder=paths[0].parent,
                referenced_series=_referenced_series(header),
                files=tuple(paths),
                sop_uids=tuple(sops[uid]),
                series_datetime=_datetime(header),
                roi_names=_roi_names(header),
                unrefined_prediction=is_unrefined_prediction(header),
            )
        )
    return series


def present_labels(annotation: SeriesInfo, roi_labels: dict[str, list[str]]) -> list[str]:
    """Labels of the ROI YAML that ``annotation`` draws, in ROI YAML order."""
    found = {match_roi_name(name, roi_labels) for name in annotation.roi_names}
    return [label for label in roi_labels if label in found]


def _exclude_unrefined(
    annotations: list[SeriesInfo], snapshot: Path
) -> tuple[list[SeriesInfo], list[ExcludedAnnotation]]:
    excluded = []
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
    kept = [a for a in annotations if not a.unrefined_prediction]
    if not kept:
        raise SnapshotError(
            f"{snapshot}: every annotation is an unrefined iterseg prediction "
            f"({', '.join(e.files[0] for e in excluded)}); refine them in a viewer before "
            "dropping them into a snapshot."
        )
    return kept, excluded


def _pick(
    snapshot: Path, image: SeriesInfo, anns: list[SeriesInfo], rule: DuplicateRule
) -> tuple[SeriesInfo, str, list[ExcludedAnnotation]]:
    """The one annotation of ``image``; several are an error unless ``rule`` decides."""
    if len(anns) == 1:
        return anns[0], f"only annotation of the series in snapshot {snapshot.name}", []
    where = ", ".join(str(a.files[0]) for a in anns)
    if rule is DuplicateRule.ERROR:
        raise SnapshotError(
            f"{snapshot.name}: image series {image.series_uid} (patient {image.patient_id}) has "
            f"{len(anns)} annotations ({where}). Keep exactly one per image series in a snapshot "
            "(put refined versions into a later snapshot), or set datasets.<name>.duplicate_annotations: "
            "newest_series_date."
        )
    stamps = [a.series_datetime for a in anns]
    if "" in stamps or len(set(stamps)) != len(stamps):
        raise SnapshotError(
            f"{snapshot.name}: image series {image.series_uid} (patient {image.patient_id}) has "
            f"{len(anns)} annotations ({where}) and duplicate_annotations is newest_series_date, "
            f"but their SeriesDate/SeriesTime ({', '.join(s or 'missing' for s in stamps)}) do not "
            "order them. Remove all but one from the snapshot."
        )
    ordered = sorted(anns, key=lambda a: a.series_datetime)
    chosen = ordered[-1]
    dropped = [
        ExcludedAnnotation(
            a.patient_id,
            tuple(str(f) for f in a.files),
            f"older SeriesDate/Time {a.series_datetime} than {chosen.files[0]} "
            f"({chosen.series_datetime}) in the same snapshot",
        )
        for a in ordered[:-1]
    ]
    for d in dropped:
        logger.warning("%s: not used: %s", d.files[0], d.reason)
    return chosen, f"newest SeriesDate/Time of {len(anns)} annotations in snapshot {snapshot.name}", dropped


def select_annotations(
    snapshot: Path,
    modality: str,
    allow_unrefined: bool = False,
    duplicates: DuplicateRule = DuplicateRule.ERROR,
    earlier_images: dict[str, SeriesInfo] | None = None,
    unpacked: list[Path] | None = None,
) -> tuple[dict[str, Selection], list[ExcludedAnnotation]]:
    """Image series that must come out of the conversion, each with its single annotation.

    Parameters
    ----------
    snapshot
        The snapshot folder (only read).
    modality
        Modality of the annotated image series (CT or MR).
    allow_unrefined
        Keep our own predictions dropped back unedited (left out and reported by default).
    duplicates
        Rule for several annotations of one series in this snapshot.
    earlier_images
        Image series of earlier snapshots by UID, so a snapshot may bring a refined annotation
        without repeating the images it annotates.
    unpacked
        Folders holding the snapshot's unpacked archives, scanned with it.

    Returns
    -------
    tuple
        Image series UID -> selection, and the annotations left out with their reasons.

    Raises
    ------
    SnapshotError
        When the snapshot holds no usable annotation, an annotation points at an image series
        found neither here nor in an earlier snapshot, or one series has several annotations
        and no rule decides.

    """
    series = scan_series(snapshot, *(unpacked or []))
    images = {s.series_uid: s for s in series if s.modality == modality}
    annotations = [s for s in series if s.modality in {k.value for k in AnnotationKind}]
    if not annotations:
        raise SnapshotError(
            f"{snapshot}: no SEG or RTSTRUCT found. A snapshot holds annotated cases; put "
            "unannotated images in the dataset's inbox folder instead."
        )
    excluded: list[ExcludedAnnotation] = []
    if not allow_unrefined:
        annotations, excluded = _exclude_unrefined(annotations, snapshot)
    earlier = earlier_images or {}
    by_image: dict[str, list[SeriesInfo]] = defaultdict(list)
    for ann in annotations:
        ref = ann.referenced_series
        if ref not in images and ref in earlier:
            images[ref] = earlier[ref]
            logger.info("%s: annotates image series %s of an earlier snapshot", ann.files[0], ref)
        if ref not in images:
            raise SnapshotError(
                f"{ann.folder}: {ann.modality} (patient {ann.patient_id}) references image series "
                f"{ref}, which is not a {modality} series in snapshot {snapshot.name} nor in an earlier "
                "annotated snapshot. Add that series to the snapshot or remove the annotation."
            )
        by_image[ref].append(ann)
    selected: dict[str, Selection] = {}
    for uid, anns in by_image.items():
        chosen, reason, dropped = _pick(snapshot, images[uid], anns, duplicates)
        excluded += dropped
        selected[uid] = Selection(images[uid], chosen, reason)
    for uid, image in images.items():
        if uid not in by_image:
            logger.warning(
                "%s: %s series of patient %s has no annotation in this snapshot; it is not used for training",
                image.folder,
                modality,
                image.patient_id,
            )
    return selected, excluded
