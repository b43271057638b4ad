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

from iterseg.convert.channels import Channel, ChannelError, SeriesLabel, assign_channels
from iterseg.dicom.seg_writer import ALGORITHM_NAME, LEGACY_ALGORITHM_NAMES, SEG_MANUFACTURER
from iterseg.dicom.series import dicom_files, header_text
from iterseg.errors import SnapshotError
from iterseg.records import ExcludedAnnotation
from iterseg.roi import match_roi_name

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
    description: str = ""  # SeriesDescription, ProtocolName: what multi-sequence channels match
    protocol: str = ""
    frame_of_reference: str = ""

    def label(self) -> SeriesLabel:
        """What channel assignment reads of the series."""
        return SeriesLabel(
            self.series_uid, self.description, self.protocol, self.frame_of_reference, str(self.folder)
        )


@dataclass(frozen=True)
class CaseProblem:
    """Why a case (or a file) of a snapshot cannot be converted: one line with file, cause and fix."""

    patient_id: str
    file: str
    message: str
    series_uids: tuple[str, ...] = ()  # the image series it rules out; none if no case is known


@dataclass(frozen=True)
class Selection:
    """One image series of a snapshot and the annotation chosen for it."""

    image: SeriesInfo
    annotation: SeriesInfo
    reason: str
    channels: tuple[SeriesInfo, ...] = ()  # multi-sequence cases: the series of channels 1.., in order


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


def referenced_series(ds: pydicom.Dataset) -> str | None:
    """The image series an annotation annotates: SEG ReferencedSeriesSequence, RTSTRUCT RT reference."""
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


def _identity(ds: pydicom.Dataset) -> tuple[str, str, str, str]:
    return (
        header_text(ds, "PatientID"),
        str(getattr(ds, "StudyInstanceUID", "")),
        str(ds.Modality),
        str(getattr(ds, "FrameOfReferenceUID", "")),
    )


def _uid_clashes(
    headers: dict[str, list[tuple[Path, pydicom.Dataset]]], problems: list[CaseProblem]
) -> set[str]:
    """Series UIDs that two different series (or two copies of one instance) share."""
    clashing = set()
    for uid, members in headers.items():
        identities: dict[tuple[str, str, str, str], Path] = {}
        for path, ds in members:
            identities.setdefault(_identity(ds), path)
        if len(identities) > 1:
            (a, first), (b, second) = list(identities.items())[:2]
            what = ", ".join(
                f"{name} {x or '(none)'} / {y or '(none)'}"
                for name, x, y in zip(
                    ("PatientID", "study", "modality", "frame of reference"), a, b, strict=True
                )
                if x != y
            )
            problems.append(
                CaseProblem(
                    a[0],
                    str(first),
                    f"{first} and {second}: two different series share SeriesInstanceUID {uid} ({what}); "
                    "a series UID must be unique: re-export one of them, or remove it from the snapshot",
                    (uid,),
                )
            )
            clashing.add(uid)
            continue
        seen: dict[str, Path] = {}
        for path, ds in members:
            sop = str(ds.SOPInstanceUID)
            if sop in seen:
                problems.append(
                    CaseProblem(
                        _identity(ds)[0],
                        str(path),
                        f"{path}: the same instance (SOPInstanceUID {sop}) as {seen[sop]}; remove the copy "
                        "from the snapshot",
                        (uid,),
                    )
                )
                clashing.add(uid)
                break
            seen[sop] = path
    return clashing


def scan_series(folder: Path, *more: Path, problems: list[CaseProblem] | None = None) -> list[SeriesInfo]:
    """Group the DICOM files under ``folder`` (and ``more`` folders) by series, reading headers only.

    Files are DICOM by content, whatever their names (``I10``, ``label.seg``); non-DICOM files
    (researchers' notes, OS metadata files, archives) and ``DICOMDIR`` indexes are ignored.
    Truncated or corrupt DICOM files, and series UIDs shared by two different series, are added
    to ``problems`` (and such series left out); without the list they are errors.
    """
    found: list[CaseProblem] = []
    unreadable: list[tuple[Path, str]] = []
    headers: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    for path, ds in dicom_files(folder, *more, unreadable=unreadable):
        headers[str(ds.SeriesInstanceUID)].append((path, ds))
    clashing = _uid_clashes(headers, found)
    series = []
    for uid, members in headers.items():
        if uid in clashing:
            continue
        paths = [path for path, _ in members]
        header = members[0][1]
        series.append(
            SeriesInfo(
                series_uid=uid,
                study_uid=str(getattr(header, "StudyInstanceUID", "")),
                modality=str(header.Modality),
                patient_id=header_text(header, "PatientID"),
                folder=paths[0].parent,
                referenced_series=referenced_series(header),
                files=tuple(paths),
                sop_uids=tuple(str(ds.SOPInstanceUID) for _, ds in members),
                series_datetime=_datetime(header),
                roi_names=_roi_names(header),
                unrefined_prediction=is_unrefined_prediction(header),
                description=header_text(header, "SeriesDescription"),
                protocol=header_text(header, "ProtocolName"),
                frame_of_reference=str(getattr(header, "FrameOfReferenceUID", "")),
            )
        )
    for path, reason in unreadable:
        # the file may be one of their slices: a series read without it would silently lack it
        near = [s for s in series if any(f.parent == path.parent for f in s.files)]
        found.append(
            CaseProblem(
                near[0].patient_id if near else "",
                str(path),
                f"{path}: truncated or corrupt DICOM ({reason}); copy it again from the source, or remove it",
                tuple(s.series_uid for s in near),
            )
        )
    if problems is None and found:
        raise SnapshotError("; ".join(p.message for p in found))
    if problems is not None:
        problems.extend(found)
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
) -> tuple[SeriesInfo, str, list[ExcludedAnnotation]] | CaseProblem:
    """The one annotation of ``image``; several are a problem of the case unless ``rule`` decides."""
    if len(anns) == 1:
        return anns[0], f"only annotation of the series in snapshot {snapshot.name}", []
    where = ", ".join(str(a.files[0]) for a in anns)
    if rule is DuplicateRule.ERROR:
        return CaseProblem(
            image.patient_id,
            str(anns[0].files[0]),
            f"{where}: {len(anns)} annotations of image series {image.series_uid} ({image.folder}) in one "
            "snapshot; keep exactly one per image series (put refined versions into a later snapshot), "
            "or set datasets.<name>.duplicate_annotations: newest_series_date",
            (image.series_uid,),
        )
    stamps = [a.series_datetime for a in anns]
    if "" in stamps or len(set(stamps)) != len(stamps):
        return CaseProblem(
            image.patient_id,
            str(anns[0].files[0]),
            f"{where}: {len(anns)} annotations of image series {image.series_uid} and duplicate_annotations "
            "is newest_series_date, but their SeriesDate/SeriesTime "
            f"({', '.join(s or 'missing' for s in stamps)}) do not order them; "
            "remove all but one from the snapshot",
            (image.series_uid,),
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


def _link_problem(
    ann: SeriesInfo, image: SeriesInfo | None, every: dict[str, SeriesInfo], modality: str, snapshot: Path
) -> CaseProblem | None:
    """Why ``ann`` cannot annotate the image series it references, or None if it can."""
    where = ann.files[0]
    if not ann.patient_id:
        return CaseProblem(
            "",
            str(where),
            f"{where}: the {ann.modality} has no PatientID; export it with one (an anonymiser must map "
            "PatientID to a pseudonym, not remove it)",
        )
    ref = ann.referenced_series
    if ref is None:
        return CaseProblem(
            ann.patient_id,
            str(where),
            f"{where}: the {ann.modality} names no image series it annotates (no referenced series); "
            "save it again from the viewer or planning system with its image series loaded",
        )
    if image is None:
        other = every.get(ref)
        if other is not None and other.modality != ann.modality:
            return CaseProblem(
                ann.patient_id,
                str(where),
                f"{where}: annotates series {ref} in {other.folder}, which is {other.modality}, but the "
                f"dataset's modality is {modality}; put {other.modality} cases into a dataset with modality: "
                f"{other.modality}, or remove the annotation",
            )
        return CaseProblem(
            ann.patient_id,
            str(where),
            f"{where}: the {ann.modality} of patient {ann.patient_id} references image series {ref}, "
            f"which is neither in snapshot {snapshot.name} nor in an earlier converted snapshot; add that "
            "series to the snapshot, or remove the annotation",
        )
    if not image.patient_id:
        return CaseProblem(
            "",
            str(image.files[0]),
            f"{image.folder}: the image series has no PatientID; export it with one (an anonymiser must map "
            "PatientID to a pseudonym, not remove it)",
            (image.series_uid,),
        )
    if image.patient_id != ann.patient_id:
        return CaseProblem(
            ann.patient_id,
            str(where),
            f"{where}: the {ann.modality} of patient {ann.patient_id} references image series {ref} of "
            f"another patient, {image.patient_id} ({image.folder}); an annotation must belong to its image's "
            "patient: re-export it from that patient's images, or remove it",
        )
    return None


def select_annotations(
    snapshot: Path,
    modality: str,
    allow_unrefined: bool = False,
    duplicates: DuplicateRule = DuplicateRule.ERROR,
    earlier_images: dict[str, SeriesInfo] | None = None,
    unpacked: list[Path] | None = None,
    channels: tuple[Channel, ...] = (),
) -> tuple[dict[str, Selection], list[ExcludedAnnotation], list[CaseProblem]]:
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
    channels
        Multi-sequence datasets: the channels; each selection gets the series of the others
        (``iterseg.convert.channels``), or the case is a problem naming the series.

    Returns
    -------
    tuple
        Image series UID -> selection; the annotations left out with their reasons; and the
        cases (or files) that cannot be converted, each with its one-line message: unreadable
        files, an annotation of another patient's series or of a series that is not there, two
        annotations of one series that no rule decides.

    Raises
    ------
    SnapshotError
        When the snapshot holds no annotation, or only unrefined predictions of ours.

    """
    # 61-80 lines: the docstring is most of it; the phases are _exclude_unrefined, _by_image, _pick
    problems: list[CaseProblem] = []
    series = scan_series(snapshot, *(unpacked or []), problems=problems)
    every = {s.series_uid: s for s in series}
    images = {s.series_uid: s for s in series if s.modality == modality}
    annotations = [s for s in series if s.modality in {k.value for k in AnnotationKind}]
    if not annotations and not problems:
        raise SnapshotError(
            f"{snapshot}: no SEG or RTSTRUCT found. A snapshot holds annotated cases; put "
            "unannotated images in the dataset's inbox folder instead."
        )
    excluded: list[ExcludedAnnotation] = []
    if not allow_unrefined and annotations:
        annotations, excluded = _exclude_unrefined(annotations, snapshot)
    ruled_out = {uid for p in problems for uid in p.series_uids}
    by_image = _by_image(
        annotations, images, every, earlier_images or {}, ruled_out, modality, snapshot, problems
    )
    selected: dict[str, Selection] = {}
    for uid, anns in by_image.items():
        picked = _pick(snapshot, images[uid], anns, duplicates)
        if isinstance(picked, CaseProblem):
            problems.append(picked)
            continue
        chosen, reason, dropped = picked
        excluded += dropped
        selected[uid] = Selection(images[uid], chosen, reason)
    if len(channels) > 1:
        selected = _with_channels(selected, {**(earlier_images or {}), **images}, channels, problems)
    for uid in {uid for p in problems for uid in p.series_uids}:
        selected.pop(uid, None)
    used = {s.series_uid for sel in selected.values() for s in sel.channels}
    _warn_unannotated(images, every, set(by_image) | ruled_out | used, modality)
    return selected, excluded, problems


def _with_channels(
    selected: dict[str, Selection],
    images: dict[str, SeriesInfo],
    channels: tuple[Channel, ...],
    problems: list[CaseProblem],
) -> dict[str, Selection]:
    """Each selection with the series of its other channels: same patient and study, by description."""
    out: dict[str, Selection] = {}
    for uid, sel in selected.items():
        study = [
            s
            for s in images.values()
            if s.study_uid == sel.image.study_uid and s.patient_id == sel.image.patient_id
        ]
        try:
            labels = assign_channels([s.label() for s in study], channels, uid)
        except ChannelError as exc:
            problems.append(
                CaseProblem(sel.image.patient_id, str(sel.image.folder), f"{sel.image.folder}: {exc}", (uid,))
            )
            continue
        out[uid] = Selection(
            sel.image, sel.annotation, sel.reason, tuple(images[s.series_uid] for s in labels[1:])
        )
    return out


def _warn_unannotated(
    images: dict[str, SeriesInfo], every: dict[str, SeriesInfo], accounted: set[str], modality: str
) -> None:
    """Warn of each image series of the snapshot that no annotation (nor a problem) accounts for."""
    for uid, image in images.items():
        if uid not in accounted and uid in every:
            logger.warning(
                "%s: %s series of patient %s has no annotation in this snapshot; it is not used for training",
                image.folder,
                modality,
                image.patient_id,
            )


def _by_image(
    annotations: list[SeriesInfo],
    images: dict[str, SeriesInfo],
    every: dict[str, SeriesInfo],
    earlier: dict[str, SeriesInfo],
    ruled_out: set[str],
    modality: str,
    snapshot: Path,
    problems: list[CaseProblem],
) -> dict[str, list[SeriesInfo]]:
    """Image series UID -> the annotations that may annotate it; the others appended to ``problems``.

    An image series of an earlier snapshot that an annotation references is added to ``images``.
    """
    by_image: dict[str, list[SeriesInfo]] = defaultdict(list)
    for ann in annotations:
        ref = ann.referenced_series
        if ref in ruled_out:
            continue  # its image series is already listed with its own problem
        if ref is not None and ref not in images and ref in earlier:
            images[ref] = earlier[ref]
            logger.info("%s: annotates image series %s of an earlier snapshot", ann.files[0], ref)
        problem = _link_problem(ann, images.get(ref) if ref else None, every, modality, snapshot)
        if problem is not None:
            problems.append(problem)
        elif ref is not None:
            by_image[ref].append(ann)
    return by_image
