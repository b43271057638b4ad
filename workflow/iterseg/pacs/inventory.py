"""What the PACS holds for a dataset, and what the project already has of it.

The PACS side is read with QIDO-RS (studies, series, instances) and, for annotations, WADO-RS
metadata: QIDO does not return sequences, and an annotation's image series is only found in
its ReferencedSeriesSequence (SEG) or ReferencedFrameOfReferenceSequence (RTSTRUCT). The
project side is the pull records of earlier snapshots (which annotations were pulled) and
every iteration's ``predictions.json`` (which SEGs are ours, and which image series they
predicted: a SEG of someone else referencing one of those is a refined prediction).
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom

from iterseg.errors import PacsError
from iterseg.pacs.client import Pacs, pacs_errors
from iterseg.pacs.settings import PULL_RECORD, StudyFilter

logger = logging.getLogger(__name__)

ANNOTATION_MODALITIES = ("SEG", "RTSTRUCT")


@dataclass(frozen=True)
class PacsSeries:
    """One series on the PACS, as QIDO-RS lists it."""

    study_uid: str
    series_uid: str
    patient_id: str
    modality: str
    description: str = ""
    protocol: str = ""  # ProtocolName, for channel assignment
    frame_of_reference: str = ""  # "" where the PACS does not list it at series level (QIDO need not)


@dataclass(frozen=True)
class PacsAnnotation:
    """One SEG or RTSTRUCT instance on the PACS, with the image series it annotates."""

    series: PacsSeries
    sop_uid: str
    references: tuple[str, ...]  # SeriesInstanceUIDs of the images it annotates
    manufacturer: str
    unrefined_prediction: bool  # one of ours, back unedited (Manufacturer iterseg, AUTOMATIC segments)


@dataclass(frozen=True)
class Prediction:
    """Where an image series was predicted: the iteration and its inbox case."""

    iteration: str
    case_id: str
    seg_sop_uid: str | None


@dataclass(frozen=True)
class ProjectState:
    """What the project already has: pulled annotations and image series, its own predicted SEGs."""

    pulled_annotations: frozenset[str] = frozenset()  # SOPInstanceUIDs
    pulled_images: frozenset[str] = frozenset()  # SeriesInstanceUIDs in pulled snapshots
    predicted: Mapping[str, Prediction] = field(default_factory=dict)  # image series UID -> newest
    our_segs: frozenset[str] = frozenset()  # SOPInstanceUIDs of every SEG any iteration predicted


@dataclass(frozen=True)
class Inventory:
    """The dataset on the PACS: its image series of the modality, and every annotation not ours."""

    images: Mapping[str, PacsSeries]
    annotations: tuple[PacsAnnotation, ...]
    our_segs_on_pacs: int


def _value(item: Mapping[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


def json_text(item: Mapping[str, Any], tag: str) -> str:
    """The first value of ``tag`` in a DICOM JSON item as text (a name: its alphabetic form); "" if none."""
    value = _value(item, tag)
    if isinstance(value, dict):  # a PN in DICOM JSON
        value = value.get("Alphabetic", "")
    return "" if value is None else str(value)


TAGS = {
    "study": "0020000D",
    "series": "0020000E",
    "sop": "00080018",
    "patient": "00100020",
    "modality": "00080060",
    "study_description": "00081030",
    "series_description": "0008103E",
    "protocol": "00181030",
    "frame_of_reference": "00200052",
}


def _studies(pacs: Pacs, wanted: StudyFilter) -> list[dict[str, Any]]:
    """The studies matching the filter's QIDO part (one query per PatientID pattern), deduplicated."""
    filters: dict[str, Any] = {}
    if wanted.date_range():
        filters["StudyDate"] = wanted.date_range()
    # dicomweb-client percent-encodes * and ? (%2A, %3F), which Orthanc 1.10 then matches
    # literally: only exact PatientIDs go into the query; wildcard patterns are matched here,
    # on every study of the date range.
    exact = [p for p in wanted.patient_ids if not any(c in p for c in "*?")]
    wildcards = len(exact) < len(wanted.patient_ids)
    queries = [{**filters, "PatientID": pid} for pid in exact] if exact and not wildcards else [filters]
    found: dict[str, dict[str, Any]] = {}
    for query in queries:
        with pacs_errors(pacs, "searching studies (QIDO-RS)"):
            for study in pacs.client.search_for_studies(
                search_filters=query, fields=["StudyDescription", "PatientID"], get_remaining=True
            ):
                found.setdefault(json_text(study, TAGS["study"]), study)
    studies = list(found.values())
    if wanted.study_description is not None:
        regex = wanted.study_description
        studies = [s for s in studies if regex.search(json_text(s, TAGS["study_description"]))]
    if wanted.patient_ids:  # a PACS may match case-insensitively: check every ID ourselves
        studies = [
            s
            for s in studies
            if any(fnmatch.fnmatchcase(json_text(s, TAGS["patient"]), p) for p in wanted.patient_ids)
        ]
    if wanted.orthanc_label is not None:
        labelled = _orthanc_labelled(pacs, wanted.orthanc_label)
        studies = [s for s in studies if json_text(s, TAGS["study"]) in labelled]
    return studies


def _orthanc_labelled(pacs: Pacs, label: str) -> set[str]:
    """StudyInstanceUIDs carrying Orthanc ``label`` (its REST API, Orthanc 1.12 or newer)."""
    root = pacs.url.rsplit("/", 1)[0]
    if not pacs.url.endswith("/dicom-web"):
        raise PacsError(
            "pacs.studies.orthanc_label needs Orthanc's DICOMweb root as url (.../dicom-web), "
            f"not {pacs.url}."
        )
    with pacs_errors(pacs, "reading Orthanc's version"):
        system = pacs.session.get(f"{root}/system", timeout=pacs.settings.timeout_s)
        system.raise_for_status()
    version = str(system.json().get("Version", "0"))
    if tuple(int(p) for p in version.split(".")[:2] if p.isdigit()) < (1, 12):
        raise PacsError(
            f"PACS {pacs.url} is Orthanc {version}, which has no labels (Orthanc 1.12 and newer do): "
            "select the studies with patient_ids, study dates or study_description instead."
        )
    with pacs_errors(pacs, f"finding the studies labelled {label!r}"):
        answer = pacs.session.post(
            f"{root}/tools/find",
            json={
                "Level": "Study",
                "Query": {},
                "Labels": [label],
                "LabelsConstraint": "All",
                "Expand": True,
            },
            timeout=pacs.settings.timeout_s,
        )
        answer.raise_for_status()
    return {str(s["MainDicomTags"]["StudyInstanceUID"]) for s in answer.json()}


def _series(pacs: Pacs, study: Mapping[str, Any]) -> list[PacsSeries]:
    study_uid = json_text(study, TAGS["study"])
    with pacs_errors(pacs, f"listing the series of study {study_uid}"):
        listed = pacs.client.search_for_series(
            study_uid,
            # ProtocolName and FrameOfReferenceUID for multi-sequence datasets' channels: Orthanc
            # lists both; a PACS that does not leaves them empty (checked at conversion instead)
            fields=["SeriesDescription", "PatientID", "ProtocolName", "FrameOfReferenceUID"],
            get_remaining=True,
        )
    found = []
    for item in listed:
        found.append(
            PacsSeries(
                study_uid=study_uid,
                series_uid=json_text(item, TAGS["series"]),
                patient_id=json_text(item, TAGS["patient"]) or json_text(study, TAGS["patient"]),
                modality=json_text(item, TAGS["modality"]),
                description=json_text(item, TAGS["series_description"]),
                protocol=json_text(item, TAGS["protocol"]),
                frame_of_reference=json_text(item, TAGS["frame_of_reference"]),
            )
        )
    return found


def _no_bulk_data(*_: Any) -> bytes:
    return b""


def _annotations(pacs: Pacs, series: PacsSeries) -> list[PacsAnnotation]:
    from iterseg.convert.annotations import is_unrefined_prediction, referenced_series

    with pacs_errors(pacs, f"reading the metadata of {series.modality} series {series.series_uid}"):
        metadata = pacs.client.retrieve_series_metadata(series.study_uid, series.series_uid)
    found = []
    for item in metadata:
        ds = pydicom.Dataset.from_json(item, bulk_data_uri_handler=_no_bulk_data)
        found.append(
            PacsAnnotation(
                series=series,
                sop_uid=str(ds.get("SOPInstanceUID", "")),
                # the series conversion pairs it with (the first it references)
                references=tuple(uid for uid in [referenced_series(ds)] if uid),
                manufacturer=str(ds.get("Manufacturer", "")),
                unrefined_prediction=is_unrefined_prediction(ds),
            )
        )
    return found


def read_inventory(pacs: Pacs, wanted: StudyFilter, ours: frozenset[str]) -> Inventory:
    """The dataset's image series and annotations on the PACS; SEGs in ``ours`` are only counted.

    Raises
    ------
    PacsError
        The PACS cannot be reached or refuses a request.

    """
    images: dict[str, PacsSeries] = {}
    annotations: list[PacsAnnotation] = []
    our_count = 0
    for study in _studies(pacs, wanted):
        for series in _series(pacs, study):
            if series.modality == wanted.modality:
                images[series.series_uid] = series
            elif series.modality in ANNOTATION_MODALITIES:
                for annotation in _annotations(pacs, series):
                    if annotation.sop_uid in ours:
                        our_count += 1
                    else:
                        annotations.append(annotation)
    logger.info(
        "PACS %s: %d image series (%s), %d annotations, %d predicted SEGs of ours",
        pacs.url,
        len(images),
        wanted.modality,
        len(annotations),
        our_count,
    )
    return Inventory(images, tuple(annotations), our_count)


def _pull_records(snapshots: Iterable[Path]) -> list[dict[str, Any]]:
    from iterseg.records import read_json

    return [read_json(s / PULL_RECORD) for s in snapshots if (s / PULL_RECORD).is_file()]


def _sop_uid(seg: Path) -> str | None:
    try:
        return str(pydicom.dcmread(seg, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
    except (OSError, AttributeError, pydicom.errors.InvalidDicomError):
        logger.warning("%s: a predicted SEG that cannot be read; not recognised on the PACS", seg)
        return None


def project_state(snapshots: Iterable[Path], dataset_results: Path) -> ProjectState:
    """What the project has: the pull records of ``snapshots``, the predictions under ``dataset_results``.

    ``dataset_results`` is ``data/results/<dataset>``; each iteration's ``predictions.json`` is
    read (``latest`` is a link to one of them and skipped), newer iterations winning.
    """
    from iterseg.records import Predictions, read_record

    records = _pull_records(snapshots)
    pulled = {a["sop_instance_uid"] for r in records for a in r.get("annotations", [])}
    images = {i["series_instance_uid"] for r in records for i in r.get("images", [])}
    predicted: dict[str, Prediction] = {}
    ours: set[str] = set()
    folders = sorted(p for p in dataset_results.glob("*/predictions.json") if not p.parent.is_symlink())
    for path in folders:
        for entry in read_record(path, Predictions).predictions:
            seg = _sop_uid(path.parent / entry.seg) if entry.seg else None
            predicted[entry.series_uid] = Prediction(path.parent.name, entry.case_id, seg)
            ours.update([seg] if seg else [])
    return ProjectState(frozenset(pulled), frozenset(images), predicted, frozenset(ours))
