"""Snapshot -> NIfTI cases, loudly and incrementally.

We choose the annotations ourselves (``iterseg.annotations``: DICOM by content, linked by the
annotations' referenced series), convert only image/annotation pairs whose content was not
converted before, and check every written label map against an independent reading of its
annotation. Each pair is converted by ``iterseg.convert_case``; what replaced which part of
med-imagetools' nnU-Net pipeline, and why, is in the README ("Conversion and med-imagetools").
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from iterseg.annotations import (
    DuplicateRule,
    Selection,
    SeriesInfo,
    content_hash,
    present_labels,
    select_annotations,
)
from iterseg.archives import unpack_snapshot_archives
from iterseg.convert_case import PairJob, PairResult, convert_pair
from iterseg.convert_check import RTSTRUCT_TOLERANCE, RoiCheck
from iterseg.errors import ConversionError, SnapshotError
from iterseg.roi import load_roi_yaml

logger = logging.getLogger(__name__)

CASES_FILE = "cases.json"
CHECK_FILE = "check.json"
EXCLUDED_FILE = "excluded.json"
# Part of every reuse key: bump when a change here alters what conversion writes.
CONVERTER_VERSION = "3"


@dataclass(frozen=True)
class ConvertedCase:
    """One annotated image series of one snapshot, converted to NIfTI (or reused)."""

    case_id: str
    patient_id: str
    study_uid: str
    image_series_uid: str
    annotation_kind: str
    annotation_series_uid: str
    snapshot: str
    image: str  # relative to the converted folder
    label: str
    image_hash: str = ""
    annotation_hash: str = ""
    image_files: list[str] = field(default_factory=list)
    image_sop_uids: list[str] = field(default_factory=list)
    annotation_files: list[str] = field(default_factory=list)
    annotation_sop_uids: list[str] = field(default_factory=list)
    annotation_datetime: str = ""
    selection: str = ""  # why this annotation was chosen within its snapshot
    labels_present: list[str] = field(default_factory=list)
    missing_rois: list[str] = field(default_factory=list)
    empty_labels: list[str] = field(default_factory=list)  # drawn (declared) but holding no voxel
    key: str = ""  # content of image + annotation + conversion settings
    conversion: str = "converted"  # or "reused"
    reused_from: str | None = None  # snapshot date whose NIfTI was reused


def case_id(patient_id: str, image_series_uid: str) -> str:
    """Stable nnU-Net case identifier for an image series: patient plus a short series hash.

    The same image series gets the same id in every snapshot, so a refined annotation in a
    later snapshot replaces the earlier one.
    """
    safe = re.sub(r"[^A-Za-z0-9-]+", "-", patient_id).strip("-") or "anon"
    return f"{safe}_{hashlib.sha1(image_series_uid.encode()).hexdigest()[:8]}"


def reuse_key(image_hash: str, annotation_hash: str, roi_yaml: Path, modality: str, strategy: str) -> str:
    """What a converted pair depends on; equal keys give equal NIfTI files."""
    parts = [image_hash, annotation_hash, hashlib.sha256(roi_yaml.read_bytes()).hexdigest()]
    parts += [modality, strategy, CONVERTER_VERSION]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


@dataclass(frozen=True)
class _Pending:
    """A selected pair to convert, with what the record needs."""

    selection: Selection
    present: tuple[str, ...]
    image_hash: str
    annotation_hash: str
    key: str


def _record(pending: _Pending, date: str, roi_labels: dict[str, list[str]], **extra: Any) -> ConvertedCase:
    image, ann = pending.selection.image, pending.selection.annotation
    cid = case_id(image.patient_id, image.series_uid)
    return ConvertedCase(
        case_id=cid,
        patient_id=image.patient_id,
        study_uid=image.study_uid,
        image_series_uid=image.series_uid,
        annotation_kind=ann.modality,
        annotation_series_uid=ann.series_uid,
        snapshot=date,
        image=f"cases/{cid}_0000.nii.gz",
        label=f"cases/{cid}.nii.gz",
        image_hash=pending.image_hash,
        annotation_hash=pending.annotation_hash,
        image_files=[str(f) for f in image.files],
        image_sop_uids=list(image.sop_uids),
        annotation_files=[str(f) for f in ann.files],
        annotation_sop_uids=list(ann.sop_uids),
        annotation_datetime=ann.series_datetime,
        selection=pending.selection.reason,
        labels_present=list(pending.present),
        missing_rois=[label for label in roi_labels if label not in pending.present],
        key=pending.key,
        **extra,
    )


def _earlier_index(
    reuse_from: list[Path],
) -> tuple[dict[str, tuple[Path, ConvertedCase]], dict[str, SeriesInfo]]:
    """Converted pairs of earlier snapshots by reuse key, and their image series by UID."""
    by_key: dict[str, tuple[Path, ConvertedCase]] = {}
    images: dict[str, SeriesInfo] = {}
    for folder in reuse_from:
        for case in read_cases(folder):
            if case.key:
                by_key.setdefault(case.key, (folder, case))
            if case.image_files:
                files = tuple(Path(f) for f in case.image_files)
                images[case.image_series_uid] = SeriesInfo(
                    series_uid=case.image_series_uid,
                    study_uid=case.study_uid,
                    modality="",
                    patient_id=case.patient_id,
                    folder=files[0].parent,
                    referenced_series=None,
                    files=files,
                    sop_uids=tuple(case.image_sop_uids),
                    series_datetime="",
                )
    return by_key, images


def _jobs(
    pendings: list[_Pending], out: Path, roi_labels: dict[str, list[str]], strategy: str
) -> list[PairJob]:
    jobs = []
    for pending in pendings:
        image, ann = pending.selection.image, pending.selection.annotation
        cid = case_id(image.patient_id, image.series_uid)
        jobs.append(
            PairJob(
                case_id=cid,
                patient_id=image.patient_id,
                image_files=tuple(image.files),
                annotation_kind=ann.modality,
                annotation_files=tuple(ann.files),
                image_out=out / "cases" / f"{cid}_0000.nii.gz",
                label_out=out / "cases" / f"{cid}.nii.gz",
                roi_labels=roi_labels,
                strategy=strategy,
            )
        )
    return jobs


def _run_pairs(jobs: list[PairJob], workers: int) -> list[PairResult]:
    """Convert pairs, in worker processes when there are several; every worker ends with the call."""
    if workers <= 1 or len(jobs) <= 1:
        return [convert_pair(job) for job in jobs]
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=get_context("spawn")) as pool:
        return list(pool.map(convert_pair, jobs))


def convert_snapshot(
    snapshot: Path,
    out: Path,
    roi_yaml: Path,
    modality: str = "CT",
    mask_saving_strategy: str = "sparse_mask",
    jobs: int = 1,
    allow_unrefined: bool = False,
    duplicates: DuplicateRule = DuplicateRule.ERROR,
    reuse_from: list[Path] | None = None,
) -> list[ConvertedCase]:
    """Convert every annotated case of a snapshot to NIfTI image/label pairs.

    Parameters
    ----------
    snapshot
        ``rawdata/<dataset>/<date>__<dataset>``; only read.
    out
        The snapshot's ``converted`` folder; replaced.
    roi_yaml
        Label -> regexes, in label order.
    modality
        CT or MR.
    mask_saving_strategy
        How overlapping ROIs share the label map (med-imagetools' strategies).
    jobs
        Worker processes converting pairs in parallel.
    allow_unrefined
        Train on our own predictions dropped back unedited (excluded and reported by default).
    duplicates
        Rule for several annotations of one image series in the snapshot.
    reuse_from
        ``converted`` folders of earlier snapshots: a pair whose files, ROI YAML and settings are
        unchanged is linked from there instead of converted again; their image series may be
        annotated anew here without being repeated in this snapshot.

    Returns
    -------
    list[ConvertedCase]
        Also written to ``out/cases.json``; left-out annotations to ``out/excluded.json``.
        A case drawing only some ROIs of the YAML is kept, its ``missing_rois`` listed (the
        assembly applies the dataset's ``missing_roi`` policy).

    Raises
    ------
    ConversionError
        If any pair cannot be converted exactly (one line per case: file, cause, fix) or the
        conversion check finds a difference.

    """
    roi_labels = load_roi_yaml(roi_yaml)
    earlier, earlier_images = _earlier_index(reuse_from or [])
    unpacked = unpack_snapshot_archives(snapshot, out.parent / "unpacked")
    selected, excluded = select_annotations(
        snapshot, modality, allow_unrefined, duplicates, earlier_images, unpacked
    )
    if out.exists():
        shutil.rmtree(out)
    (out / "cases").mkdir(parents=True)
    date = snapshot.name.split("__")[0]
    converted: list[ConvertedCase] = []
    reused_checks: list[dict[str, Any]] = []
    pendings: list[_Pending] = []
    problems: list[str] = []
    for sel in selected.values():
        present = tuple(present_labels(sel.annotation, roi_labels))
        if not present:
            problems.append(
                f"patient {sel.image.patient_id}: {sel.annotation.files[0]}: none of its ROIs "
                f"({', '.join(sel.annotation.roi_names) or 'none'}) matches a label of {roi_yaml}; rename "
                "the ROI or add its name to a label's regexes"
            )
            continue
        gone = [f for f in (*sel.image.files, *sel.annotation.files) if not f.is_file()]
        if gone:  # an image series of an earlier snapshot, annotated anew here
            raise SnapshotError(
                f"{gone[0]}: recorded in an earlier conversion but missing now ({len(gone)} file(s)); "
                "snapshots are read-only once converted — restore the file."
            )
        image_hash, ann_hash = content_hash(sel.image.files), content_hash(sel.annotation.files)
        pending = _Pending(
            sel,
            present,
            image_hash,
            ann_hash,
            reuse_key(image_hash, ann_hash, roi_yaml, modality, mask_saving_strategy),
        )
        hit = earlier.get(pending.key)
        if hit is None:
            pendings.append(pending)
            continue
        folder, old = hit
        record = _record(
            pending,
            date,
            roi_labels,
            conversion="reused",
            reused_from=old.reused_from or old.snapshot,
            empty_labels=old.empty_labels,
        )
        link_or_copy(folder / old.image, out / record.image)
        link_or_copy(folder / old.label, out / record.label)
        reused_checks += [
            {**row, "reused_from": record.reused_from}
            for row in json.loads((folder / CHECK_FILE).read_text())["rois"]
            if row["case_id"] == old.case_id
        ]
        converted.append(record)
        logger.info("patient %s: unchanged since %s, NIfTI reused", sel.image.patient_id, record.reused_from)
    (out / EXCLUDED_FILE).write_text(json.dumps([asdict(e) for e in excluded], indent=2))
    logger.info(
        "%s: converting %d %s pair(s), %d reused", snapshot.name, len(pendings), modality, len(converted)
    )
    pendings.sort(key=lambda p: case_id(p.selection.image.patient_id, p.selection.image.series_uid))
    results = _run_pairs(_jobs(pendings, out, roi_labels, mask_saving_strategy), jobs)
    new = [
        _record(p, date, roi_labels, empty_labels=list(r.empty_labels))
        for p, r in zip(pendings, results, strict=True)
        if not r.error
    ]
    problems += [r.error for r in results if r.error]
    if problems:
        raise ConversionError(
            f"{snapshot}: {len(problems)} case(s) could not be converted:\n  "
            + "\n  ".join(problems)
            + "\nEach line names the file, the cause and the fix (or move the case out of the snapshot); "
            "rawdata was not changed."
        )
    report_check(snapshot, out, results, reused_checks)
    converted = sorted(converted + new, key=lambda c: c.case_id)
    (out / CASES_FILE).write_text(json.dumps([asdict(c) for c in converted], indent=2))
    partial = [c for c in converted if c.missing_rois]
    logger.info(
        "%s: %d case(s): %d converted, %d reused unchanged; %d lack some ROI (%s)",
        snapshot.name,
        len(converted),
        len(new),
        len(converted) - len(new),
        len(partial),
        ", ".join(f"{c.patient_id}: {'+'.join(c.missing_rois)}" for c in partial) or "none",
    )
    return converted


def report_check(
    snapshot: Path, out: Path, results: list[PairResult], reused: list[dict[str, Any]] | None = None
) -> list[RoiCheck]:
    """Write ``out/check.json`` from the pairs' conversion checks; stop on any mismatch.

    Rows of reused cases (checked when first converted) are carried over into the report.

    Raises
    ------
    ConversionError
        Naming each case and ROI whose voxels differ beyond the tolerance of its annotation kind.

    """
    checks = [c for r in results for c in r.checks]
    voxels = sum(r.voxels for r in results)
    bad = [c for c in checks if not c.ok]
    report = {
        "snapshot": snapshot.name,
        "cases": len(results),
        "rois_compared": len(checks),
        "voxels_compared": voxels,
        "mismatches": len(bad),
        "rtstruct_tolerance": RTSTRUCT_TOLERANCE,
        "reused_cases": len({r["case_id"] for r in reused or []}),
        "rois": [{**asdict(c), "ok": c.ok} for c in checks] + list(reused or []),
    }
    (out / CHECK_FILE).write_text(json.dumps(report, indent=2))
    logger.info(
        "conversion check %s: %d case(s), %d ROI(s), %d voxels compared, %d mismatch(es)",
        snapshot.name,
        len(results),
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


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (same file system), else copy it."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
