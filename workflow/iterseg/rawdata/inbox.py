"""The inbox: one case per image series (or NIfTI file) in each folder, each with its own case id.

Case ids name the outputs (``labels/<case>.nii.gz``, ``seg/<case>.dcm``), so two cases must never
share one: a folder's name is kept as its case id when it is already a safe file name and no
other case claims it; otherwise the sanitised name gets a short stable hash of the original
(``P 9`` -> ``P-9_<hash>``), as conversion names its cases ``<patient>_<hash>``.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from iterseg.convert.channels import Channel, ChannelError, SeriesLabel, assign_channels
from iterseg.dicom.series import ImageSeries, find_image_series, header_text
from iterseg.errors import DicomReadError, PredictionError
from iterseg.skipped import SkippedCase, Stage

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class InboxCase:
    """One image to predict: a DICOM series, or a NIfTI file for cases that come without DICOM."""

    case_id: str
    folder: Path
    series: ImageSeries | None = None
    nifti: Path | None = None
    channels: tuple[ImageSeries, ...] = ()  # multi-sequence cases: the series of channels 1..

    @property
    def source(self) -> Path:
        """The file (NIfTI) or folder (DICOM series) the case is read from, for messages."""
        return self.nifti or self.folder


@dataclass(frozen=True)
class InboxScan:
    """What the inbox holds: the cases to predict, and the folders that give none."""

    cases: tuple[InboxCase, ...]
    unusable: tuple[SkippedCase, ...]  # folders without a usable image series or NIfTI file
    folders: int


@dataclass(frozen=True)
class _Candidate:
    plain: str  # the sanitised id
    exact: bool  # the id is the folder's (and file's) own name, unchanged
    identity: str  # the original names the hash is taken of
    folder: Path
    series: ImageSeries | None = None
    nifti: Path | None = None
    channels: tuple[ImageSeries, ...] = ()


class _UnusableFolder(Exception):  # noqa: N818 - internal signal, never leaves this module
    def __init__(self, file: Path, message: str) -> None:
        super().__init__(message)
        self.file = file
        self.message = message


def _sanitise(name: str) -> str:
    return _UNSAFE.sub("-", name)


def _short_hash(identity: str) -> str:
    return hashlib.sha1(identity.encode()).hexdigest()[:8]


def _nifti_files(folder: Path) -> list[Path]:
    # hidden files skipped: macOS leaves "._ct.nii.gz" resource forks beside copied images
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.name.endswith(NIFTI_SUFFIXES) and not p.name.startswith(".")
    )


def _label(series: ImageSeries) -> SeriesLabel:
    ds = series.datasets[0]
    return SeriesLabel(
        series.series_uid,
        header_text(ds, "SeriesDescription"),
        header_text(ds, "ProtocolName"),
        str(getattr(ds, "FrameOfReferenceUID", "")),
        str(series.files[0].parent),
    )


def _study_candidates(
    folder: Path,
    series: list[ImageSeries],
    channels: tuple[Channel, ...],
    unorderable: list[tuple[ImageSeries, str]],
) -> list[_Candidate]:
    """Multi-sequence datasets: one case per study of the folder, its series assigned to the channels.

    A series whose slices cannot be ordered (an MR 3-plane localizer) matters only when a
    channel would take it; otherwise it is left out, as any series matching no channel.
    """
    broken = {s.series_uid: why for s, why in unorderable}
    studies: dict[str, list[ImageSeries]] = {}
    for s in [*series, *(s for s, _ in unorderable)]:
        studies.setdefault(str(getattr(s.datasets[0], "StudyInstanceUID", "")), []).append(s)
    base = _sanitise(folder.name)
    found = []
    for study, members in sorted(studies.items()):
        try:
            chosen = assign_channels([_label(s) for s in members], channels)
        except ChannelError as exc:
            raise _UnusableFolder(folder, f"{folder}: {exc}") from exc
        taken = [c.series_uid for c in chosen if c.series_uid in broken]
        if taken:
            raise _UnusableFolder(folder, f"{folder}: series {taken[0]}: {broken[taken[0]]}")
        by_uid = {s.series_uid: s for s in members}
        ref, *others = (by_uid[c.series_uid] for c in chosen)
        one = len(studies) == 1
        found.append(
            _Candidate(
                base if one else f"{base}_{_short_hash(study)}",
                one and base == folder.name,
                folder.name if one else f"{folder.name}/{study}",
                folder,
                series=ref,
                channels=tuple(others),
            )
        )
    return found


def _folder_candidates(folder: Path, modality: str, channels: tuple[Channel, ...] = ()) -> list[_Candidate]:
    """The cases of one folder: one per series, else one per NIfTI file (none: an empty list).

    Raises
    ------
    _UnusableFolder
        For a folder holding a truncated or corrupt DICOM file: its series would lack a slice
        (refused by the grid checks in the middle, predicted one slice short at an end).
    DicomReadError
        For a series that cannot be ordered (two slices at one position, mixed orientations).

    """
    base = _sanitise(folder.name)
    exact = base == folder.name
    unreadable: list[tuple[Path, str]] = []
    unorderable: list[tuple[ImageSeries, str]] = []
    many = len(channels) > 1  # multi-sequence: a localizer beside the sequences is no reason to refuse
    series = find_image_series(folder, modality, unreadable, unorderable if many else None)
    if unreadable:
        path, reason = unreadable[0]
        others = f" (and {len(unreadable) - 1} more file(s) like it)" if len(unreadable) > 1 else ""
        raise _UnusableFolder(
            path,
            f"{path}: not a usable DICOM file ({reason}){others}. Re-export the complete series from "
            "the PACS or scanner into that folder, or move the folder out of the inbox.",
        )
    if many:
        if series or unorderable:
            return _study_candidates(folder, series, channels, unorderable)
        if _nifti_files(folder):
            raise _UnusableFolder(
                folder,
                f"{folder}: NIfTI files, but the dataset's cases have {len(channels)} channels "
                f"({', '.join(c.name for c in channels)}), which only DICOM series name; put the case's "
                "DICOM series there, or move the folder out of the inbox.",
            )
        return []
    if len(series) == 1:
        return [_Candidate(base, exact, folder.name, folder, series=series[0])]
    if series:
        found = []
        for s in series:
            number = getattr(s.datasets[0], "SeriesNumber", None)
            suffix = f"S{number}" if number is not None else f"S{s.series_uid[-6:]}"
            found.append(_Candidate(f"{base}_{suffix}", exact, f"{folder.name}/{s.series_uid}", folder, s))
        return found
    niftis = _nifti_files(folder)
    if len(niftis) == 1:
        return [_Candidate(base, exact, folder.name, folder, nifti=niftis[0])]
    found = []
    for nifti in niftis:
        stem = nifti.name.split(".nii")[0]
        relative = str(nifti.relative_to(folder))
        same = exact and _sanitise(stem) == stem
        found.append(
            _Candidate(f"{base}_{_sanitise(stem)}", same, f"{folder.name}/{relative}", folder, nifti=nifti)
        )
    return found


def _unusable(
    folder: Path, inbox: Path, modality: str, cause: str | None = None, file: Path | None = None
) -> SkippedCase:
    if cause is None:
        files = sum(1 for p in folder.rglob("*") if p.is_file())
        what = "it is empty" if not files else f"{files} file(s), none a {modality} DICOM image"
        cause = (
            f"{folder}: no {modality} DICOM series and no NIfTI image in it ({what}). Put the case's "
            f"{modality} series (or one .nii.gz) there, or move the folder out of the inbox."
        )
    return SkippedCase(Stage.PREDICT, str(inbox), folder.name, "", str(file or folder), cause)


def _assign_ids(candidates: list[_Candidate], inbox: Path) -> list[InboxCase]:
    """Plain ids where they are the folder's own name and unique; hashed ids for the rest."""
    claimed = Counter(c.plain for c in candidates if c.exact)
    ids = [
        c.plain if c.exact and claimed[c.plain] == 1 else f"{c.plain}_{_short_hash(c.identity)}"
        for c in candidates
    ]
    for case_id, count in Counter(ids).items():
        if count > 1:
            sources = [str(c.nifti or c.folder) for c, i in zip(candidates, ids, strict=True) if i == case_id]
            raise PredictionError(
                f"{inbox}: {', '.join(sources)} would all be inbox case {case_id!r}, and their outputs "
                "would overwrite each other; rename one of those folders (or files)."
            )
    return [
        InboxCase(case_id, c.folder, series=c.series, nifti=c.nifti, channels=c.channels)
        for c, case_id in zip(candidates, ids, strict=True)
    ]


def scan_inbox(inbox: Path, modality: str, channels: tuple[Channel, ...] = ()) -> InboxScan:
    """Every case of ``inbox`` with a unique id, and the folders that hold nothing to predict.

    A folder with one ``modality`` series gives case ``<folder>``; with several,
    ``<folder>_S<SeriesNumber>``. A folder without such a series but with NIfTI files gives
    one case per file (``<folder>``, or ``<folder>_<file stem>`` for several): they get a NIfTI
    prediction only. Ids that are not the folder's (or file's) own name, or that two cases
    would share, get ``_<hash>`` of the original names appended. Multi-sequence datasets
    (``channels``): one case per study, its series assigned to the channels, the reference
    series' case; a folder whose series cannot be assigned exactly is unusable, named.

    Raises
    ------
    PredictionError
        If two cases would still share an id (e.g. a folder named like another's hashed id).

    """
    if not inbox.is_dir():
        logger.warning("%s: no inbox folder; nothing to predict", inbox)
        return InboxScan((), (), 0)
    folders = sorted(p for p in inbox.iterdir() if p.is_dir() and not p.name.startswith("."))
    candidates: list[_Candidate] = []
    unusable: list[SkippedCase] = []
    for folder in folders:
        try:
            found = _folder_candidates(folder, modality, channels)
        except _UnusableFolder as exc:
            logger.debug("%s", folder, exc_info=True)
            unusable.append(_unusable(folder, inbox, modality, exc.message, exc.file))
            continue
        except DicomReadError as exc:  # a series that cannot be ordered
            logger.debug("%s", folder, exc_info=True)
            unusable.append(_unusable(folder, inbox, modality, str(exc)))  # it names the file
            continue
        if not found:
            unusable.append(_unusable(folder, inbox, modality))
        for candidate in found:
            if candidate.nifti is not None:
                logger.info("%s: NIfTI input, no DICOM: predicted as NIfTI only (no SEG)", candidate.nifti)
        candidates += found
    return InboxScan(tuple(_assign_ids(candidates, inbox)), tuple(unusable), len(folders))


def discover_inbox(inbox: Path, modality: str, channels: tuple[Channel, ...] = ()) -> list[InboxCase]:
    """The cases of ``inbox`` to predict (see :func:`scan_inbox`); folders without one are left out."""
    return list(scan_inbox(inbox, modality, channels).cases)
