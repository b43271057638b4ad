"""Snapshot -> NIfTI cases, loudly and incrementally.

We choose the annotations ourselves (``iterseg.convert.annotations``: DICOM by content, linked by the
annotations' referenced series), convert only image/annotation pairs whose content was not
converted before, and check every written label map against an independent reading of its
annotation. Each pair is converted by ``iterseg.convert.pair``; what replaced which part of
med-imagetools' nnU-Net pipeline, and why, is in the README ("Conversion and med-imagetools").
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import unicodedata
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from iterseg.convert.annotations import (
    CaseProblem,
    DuplicateRule,
    Selection,
    SeriesInfo,
    content_hash,
    present_labels,
    select_annotations,
)
from iterseg.convert.channels import Channel, channel_key
from iterseg.convert.check import RTSTRUCT_TOLERANCE, RoiCheck
from iterseg.convert.pair import PairJob, PairResult, convert_pair
from iterseg.errors import ConversionError
from iterseg.rawdata.archives import unpack_snapshot_archives
from iterseg.rawdata.fingerprint import SNAPSHOT_RECORD, record_snapshot
from iterseg.records import (
    ConversionCheck,
    ConvertedCase,
    ConvertedCases,
    ExcludedAnnotation,
    ExcludedAnnotations,
    read_record,
    write_record,
)
from iterseg.roi import load_roi_yaml, matching_labels
from iterseg.skipped import SKIPPED_FILE, BadCasePolicy, SkippedCase, Stage, write_skipped

logger = logging.getLogger(__name__)

CASES_FILE = "cases.json"
CHECK_FILE = "check.json"
EXCLUDED_FILE = "excluded.json"
# Part of every reuse key: bump when a change here alters what conversion writes.
CONVERTER_VERSION = "4"


def case_id(patient_id: str, image_series_uid: str) -> str:
    """Stable nnU-Net case identifier for an image series: patient plus a short series hash.

    The same image series gets the same id in every snapshot, so a refined annotation in a
    later snapshot replaces the earlier one. Only letters, digits and ``-`` of the PatientID are
    kept (at most 40): a header value never becomes a path (``P/007``, ``../..``, ``/abs``, NUL).
    """
    ascii_id = unicodedata.normalize("NFKD", patient_id).encode("ascii", "ignore").decode()
    safe = re.sub(r"[^A-Za-z0-9-]+", "-", ascii_id).strip("-")[:40].strip("-") or "anon"
    return f"{safe}_{hashlib.sha1(image_series_uid.encode()).hexdigest()[:8]}"


def inside(root: Path, path: Path) -> Path:
    """``path``, after making sure it resolves inside ``root`` (no header value may lead elsewhere)."""
    if not path.resolve().is_relative_to(root.resolve()):
        raise ConversionError(f"{path}: would be written outside {root}; report this as an iterseg bug.")
    return path


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


def channel_image(cid: str, index: int) -> str:
    """Where a case's channel ``index`` lies in the converted folder (nnU-Net's ``_000k`` suffix)."""
    return f"cases/{cid}_{index:04d}.nii.gz"


def _channel_records(
    pending: _Pending, names: tuple[str, ...], done: tuple[dict[str, Any], ...]
) -> list[dict[str, Any]]:
    """The ``extra_channels`` of a case: each channel's series, file and how it reached the grid."""
    sel = pending.selection
    cid = case_id(sel.image.patient_id, sel.image.series_uid)
    return [
        {
            "channel": name,
            "index": k,
            "image": channel_image(cid, k),
            "series_uid": series.series_uid,
            "description": series.description,
            "protocol": series.protocol,
            "frame_of_reference": series.frame_of_reference,
            "files": [str(f) for f in series.files],
            "sop_uids": list(series.sop_uids),
            "hash": content_hash(series.files),
            **what,
        }
        for k, (name, series, what) in enumerate(zip(names, sel.channels, done, strict=True), start=1)
    ]


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
        image_description=image.description,
        image_protocol=image.protocol,
        frame_of_reference=image.frame_of_reference,
        **extra,
    )


def earlier_index(
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
                images[case.image_series_uid] = _earlier_series(
                    case,
                    case.image_series_uid,
                    case.image_files,
                    case.image_sop_uids,
                    (case.image_description, case.image_protocol, case.frame_of_reference),
                )
            for ch in case.extra_channels:
                images[ch["series_uid"]] = _earlier_series(
                    case, ch["series_uid"], ch["files"], ch["sop_uids"],
                    (ch["description"], ch["protocol"], ch["frame_of_reference"]),
                )  # fmt: skip
    return by_key, images


def _earlier_series(
    case: ConvertedCase, uid: str, files: list[str], sop_uids: list[str], labels: tuple[str, str, str]
) -> SeriesInfo:
    """An image series of an earlier conversion, as the snapshot scan would have found it."""
    paths = tuple(Path(f) for f in files)
    return SeriesInfo(
        series_uid=uid,
        study_uid=case.study_uid,
        modality="",
        patient_id=case.patient_id,
        folder=paths[0].parent,
        referenced_series=None,
        files=paths,
        sop_uids=tuple(sop_uids),
        series_datetime="",
        description=labels[0],
        protocol=labels[1],
        frame_of_reference=labels[2],
    )


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
                image_out=inside(out, out / "cases" / f"{cid}_0000.nii.gz"),
                label_out=inside(out, out / "cases" / f"{cid}.nii.gz"),
                roi_labels=roi_labels,
                strategy=strategy,
                channel_files=tuple(tuple(s.files) for s in pending.selection.channels),
                channel_outs=tuple(
                    inside(out, out / channel_image(cid, k))
                    for k in range(1, len(pending.selection.channels) + 1)
                ),
            )
        )
    return jobs


def _run_pairs(jobs: list[PairJob], workers: int) -> list[PairResult]:
    """Convert pairs, in worker processes when there are several; every worker ends with the call."""
    if workers <= 1 or len(jobs) <= 1:
        return [convert_pair(job) for job in jobs]
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from iterseg.processes import die_with_parent_initializer

    # spawned workers hold both ends of the call queue's pipe: killed with -9, we would leave
    # them waiting forever; and they run no at-fork hook, so they are told at start-up
    with ProcessPoolExecutor(
        min(workers, len(jobs)),
        mp_context=get_context("spawn"),
        initializer=die_with_parent_initializer,
        initargs=(os.getpid(),),
    ) as pool:
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
    on_bad_case: BadCasePolicy = BadCasePolicy.SKIP,
    channels: tuple[Channel, ...] = (),
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
    on_bad_case
        skip: a case that cannot be converted is left out and listed in ``out/skipped.json``;
        fail: it stops the conversion.
    channels
        Multi-sequence datasets: the channels, the first the annotated reference series; the
        others are found by description in the same study and frame of reference and resampled
        onto its grid (``iterseg.convert.channels``). Empty: one channel, the annotated series.

    Returns
    -------
    list[ConvertedCase]
        Also written to ``out/cases.json``; left-out annotations to ``out/excluded.json``, cases
        that could not be converted to ``out/skipped.json``. A case drawing only some ROIs of
        the YAML is kept, its ``missing_rois`` listed (the assembly applies the dataset's
        ``missing_roi`` policy).

    Raises
    ------
    ConversionError
        If a case cannot be converted and ``on_bad_case`` is fail, or no case can (one line per
        case: file, cause, fix), or the conversion check finds a difference.

    """
    # 61-80 lines: the docstring is most of it; the body is the list of phases
    from iterseg.convert.decathlon import convert_nifti_snapshot, is_nifti_snapshot  # it imports this module

    if is_nifti_snapshot(snapshot):  # an nnU-Net / Decathlon folder of NIfTI files, not DICOM
        names = tuple(c.name for c in channels)
        return convert_nifti_snapshot(snapshot, out, roi_yaml, modality, names, reuse_from, on_bad_case)
    roi_labels = load_roi_yaml(roi_yaml)
    earlier, earlier_images = earlier_index(reuse_from or [])
    selected, excluded, problems = _select(
        snapshot, out, modality, allow_unrefined, duplicates, earlier_images, channels
    )
    if out.exists():
        shutil.rmtree(out)
    (out / "cases").mkdir(parents=True)
    settings = _Settings(
        snapshot.name.split("__")[0], roi_labels, roi_yaml, modality, mask_saving_strategy, channels
    )
    pendings, reused, reused_checks = _reuse_unchanged(selected, earlier, settings, out, problems)
    write_record(out / EXCLUDED_FILE, ExcludedAnnotations(tuple(excluded)))
    logger.info(
        "%s: converting %d %s pair(s), %d reused", snapshot.name, len(pendings), modality, len(reused)
    )
    new = _convert_pending(snapshot, out, pendings, settings, jobs, reused_checks, problems)
    converted = sorted(reused + new, key=lambda c: c.case_id)
    settle_problems(snapshot, out, problems, converted, on_bad_case)
    # last before cases.json: a run stopped in between leaves no cases.json, so it converts again
    record_snapshot(snapshot, out / SNAPSHOT_RECORD)
    write_record(out / CASES_FILE, ConvertedCases(tuple(converted)))
    log_outcome(snapshot, converted, len(new), len(problems))
    return converted


def log_outcome(snapshot: Path, converted: list[ConvertedCase], new: int, skipped: int) -> None:
    """Log how many cases were converted, reused and skipped, and which lack some ROI."""
    partial = [c for c in converted if c.missing_rois]
    logger.info(
        "%s: %d case(s): %d converted, %d reused unchanged, %d skipped; %d lack some ROI (%s)",
        snapshot.name,
        len(converted),
        new,
        len(converted) - new,
        skipped,
        len(partial),
        ", ".join(f"{c.patient_id}: {'+'.join(c.missing_rois)}" for c in partial) or "none",
    )


def _select(
    snapshot: Path,
    out: Path,
    modality: str,
    allow_unrefined: bool,
    duplicates: DuplicateRule,
    earlier_images: dict[str, SeriesInfo],
    channels: tuple[Channel, ...],
) -> tuple[dict[str, Selection], list[ExcludedAnnotation], list[CaseProblem]]:
    """Phase 0: unpack the snapshot's archives and choose its annotations (``select_annotations``)."""
    refused: list[tuple[Path, str]] = []
    unpacked = unpack_snapshot_archives(snapshot, out.parent / "unpacked", refused=refused)
    selected, excluded, problems = select_annotations(
        snapshot, modality, allow_unrefined, duplicates, earlier_images, unpacked, channels
    )
    problems += [CaseProblem("", str(archive), message) for archive, message in refused]
    return selected, excluded, problems


@dataclass(frozen=True)
class _Settings:
    """What every pair of one conversion shares."""

    date: str  # the snapshot's
    roi_labels: dict[str, list[str]]
    roi_yaml: Path
    modality: str
    strategy: str  # the mask saving strategy
    channels: tuple[Channel, ...] = ()

    @property
    def channel_names(self) -> tuple[str, ...]:
        """The names of channels 1.. (the first is the annotated series)."""
        return tuple(c.name for c in self.channels[1:])


def _reuse_unchanged(
    selected: dict[str, Selection],
    earlier: dict[str, tuple[Path, ConvertedCase]],
    settings: _Settings,
    out: Path,
    problems: list[CaseProblem],
) -> tuple[list[_Pending], list[ConvertedCase], list[dict[str, Any]]]:
    """Phase 1: link the pairs converted before, unchanged; the rest to convert (problems appended).

    Returns the pairs to convert, the reused cases and the check rows of the reused cases.
    """
    pendings: list[_Pending] = []
    reused: list[ConvertedCase] = []
    reused_checks: list[dict[str, Any]] = []
    for sel in selected.values():
        problem = _pair_problem(sel, settings.roi_labels, settings.roi_yaml)
        if problem is not None:
            problems.append(problem)
            continue
        pending = _pending(sel, settings)
        hit = earlier.get(pending.key)
        if hit is None:
            pendings.append(pending)
            continue
        folder, old = hit
        record = _record(
            pending,
            settings.date,
            settings.roi_labels,
            conversion="reused",
            reused_from=old.reused_from or old.snapshot,
            empty_labels=old.empty_labels,
        )
        record = replace(record, extra_channels=old.extra_channels, voxel_hash=old.voxel_hash)
        reused_checks += link_reused(folder, old, record, out)
        reused.append(record)
        logger.info("patient %s: unchanged since %s, NIfTI reused", sel.image.patient_id, record.reused_from)
    return pendings, reused, reused_checks


def link_reused(folder: Path, old: ConvertedCase, record: ConvertedCase, out: Path) -> list[dict[str, Any]]:
    """Link a reused case's files from the earlier conversion ``folder``; its check rows, marked reused."""
    old_files = [old.image, old.label, *(ch["image"] for ch in old.extra_channels)]
    new_files = [record.image, record.label, *(ch["image"] for ch in record.extra_channels)]
    for src, dst in zip(old_files, new_files, strict=True):
        link_or_copy(folder / src, out / dst)
    return [
        {**row, "reused_from": record.reused_from}
        for row in read_record(folder / CHECK_FILE, ConversionCheck).rois
        if row["case_id"] == old.case_id
    ]


def _pending(sel: Selection, settings: _Settings) -> _Pending:
    """A pair to convert or reuse: its hashes and reuse key (of every channel's series)."""
    image_hash, ann_hash = content_hash(sel.image.files), content_hash(sel.annotation.files)
    images = "+".join([image_hash, *(content_hash(s.files) for s in sel.channels)])
    strategy = "|".join(filter(None, [settings.strategy, channel_key(settings.channels)]))
    return _Pending(
        sel,
        tuple(present_labels(sel.annotation, settings.roi_labels)),
        image_hash,
        ann_hash,
        reuse_key(images, ann_hash, settings.roi_yaml, settings.modality, strategy),
    )


def _convert_pending(
    snapshot: Path,
    out: Path,
    pendings: list[_Pending],
    settings: _Settings,
    jobs: int,
    reused_checks: list[dict[str, Any]],
    problems: list[CaseProblem],
) -> list[ConvertedCase]:
    """Phase 2: convert and check the new pairs; the cases that passed (the rest appended to ``problems``)."""
    pendings = sorted(
        pendings, key=lambda p: case_id(p.selection.image.patient_id, p.selection.image.series_uid)
    )
    results = _run_pairs(_jobs(pendings, out, settings.roi_labels, settings.strategy), jobs)
    new = [
        _record(
            p,
            settings.date,
            settings.roi_labels,
            empty_labels=list(r.empty_labels),
            extra_channels=_channel_records(p, settings.channel_names, r.channels),
            voxel_hash=r.voxel_hash,
        )
        for p, r in zip(pendings, results, strict=True)
        if not r.error
    ]
    problems += [
        CaseProblem(
            p.selection.image.patient_id,
            str(p.selection.image.folder),
            r.error,
            (p.selection.image.series_uid,),
        )
        for p, r in zip(pendings, results, strict=True)
        if r.error
    ]
    mismatched = report_check(snapshot, out, [r for r in results if not r.error], reused_checks)
    annotation_of = {c.case_id: (c.annotation_files[0], c.image_series_uid) for c in new}
    problems += mismatch_problems(mismatched, annotation_of, out)
    dropped = {c.case_id for c in mismatched}
    return [c for c in new if c.case_id not in dropped]


def _pair_problem(sel: Selection, roi_labels: dict[str, list[str]], roi_yaml: Path) -> CaseProblem | None:
    """Why a selected pair cannot be converted before reading its pixels, or None."""
    ann = sel.annotation
    uid = (sel.image.series_uid,)
    if sel.image.patient_id != sel.image.patient_id.strip() or re.search(
        r"[/\\\x00]|\.\.", sel.image.patient_id
    ):
        logger.warning(
            "patient %r: the PatientID holds path characters; its case id is %s (nothing is written "
            "where it points)",
            sel.image.patient_id,
            case_id(sel.image.patient_id, sel.image.series_uid),
        )
    ambiguous = {name: found for name in ann.roi_names if len(found := matching_labels(name, roi_labels)) > 1}
    if ambiguous:
        name, labels = next(iter(ambiguous.items()))
        return CaseProblem(
            ann.patient_id,
            str(ann.files[0]),
            f"{ann.files[0]}: ROI {name!r} matches {len(labels)} labels of {roi_yaml} ({', '.join(labels)}); "
            "make the labels' regexes exclusive (e.g. anchor them: '^GTV$'), or rename the ROI",
            uid,
        )
    if not present_labels(ann, roi_labels):
        return CaseProblem(
            ann.patient_id,
            str(ann.files[0]),
            f"{ann.files[0]}: none of its ROIs ({', '.join(ann.roi_names) or 'none'}) matches a label of "
            f"{roi_yaml}; rename the ROI or add its name to a label's regexes",
            uid,
        )
    gone = [f for f in (*sel.image.files, *ann.files) if not f.is_file()]
    if gone:  # an image series of an earlier snapshot, annotated anew here
        return CaseProblem(
            ann.patient_id,
            str(gone[0]),
            f"{gone[0]}: recorded in an earlier conversion but missing now ({len(gone)} file(s)); snapshots "
            "are read-only once converted: restore the file",
            uid,
        )
    return None


def mismatch_problems(
    mismatched: list[RoiCheck], annotation_of: dict[str, tuple[str, str]], out: Path
) -> list[CaseProblem]:
    """The cases whose written label map differs from their annotation: our fault, never trained on."""
    problems = []
    for cid in sorted({c.case_id for c in mismatched}):
        rois = [c for c in mismatched if c.case_id == cid]
        what = "; ".join(
            f"ROI {c.label}: {c.beyond_tolerance} voxel(s) differ, {c.slices_missing} slice(s) missing, "
            f"{c.slices_extra} extra (annotation {c.expected_voxels} voxels, converted {c.converted_voxels})"
            for c in rois
        )
        annotation, series_uid = annotation_of[cid]
        problems.append(
            CaseProblem(
                rois[0].patient_id,
                annotation,
                f"{annotation}: the conversion changed its annotation ({what}; details in "
                f"{out / CHECK_FILE}); it is not trained on. Report the case with its annotation file so the "
                "converter can be fixed",
                (series_uid,),
            )
        )
        for written in (out / "cases").glob(f"{cid}*.nii.gz"):  # the label and every channel
            written.unlink(missing_ok=True)
    return problems


def _skipped_cases(snapshot: Path, problems: list[CaseProblem]) -> list[SkippedCase]:
    skipped = []
    for p in problems:
        ids = [case_id(p.patient_id, uid) for uid in p.series_uids] or [""]
        skipped += [
            SkippedCase(Stage.CONVERT.value, snapshot.name, cid, p.patient_id, p.file, p.message)
            for cid in ids
        ]
    return skipped


def settle_problems(
    snapshot: Path,
    out: Path,
    problems: list[CaseProblem],
    converted: list[ConvertedCase],
    on_bad_case: BadCasePolicy,
) -> None:
    """Record the cases that could not be converted; stop when the policy or an empty result says so."""
    skipped = _skipped_cases(snapshot, problems)
    write_skipped(out / SKIPPED_FILE, skipped if on_bad_case is BadCasePolicy.SKIP else [])
    lines = [f"patient {p.patient_id}: {p.message}" if p.patient_id else p.message for p in problems]
    if problems and (on_bad_case is BadCasePolicy.FAIL or not converted):
        why = (
            "no case could be converted"
            if not converted
            else f"{len(problems)} case(s) could not be converted"
        )
        raise ConversionError(
            f"{snapshot}: {why}:\n  "
            + "\n  ".join(lines)
            + "\nEach line names the file, the cause and the fix"
            + (" (or set on_bad_case: skip to train on the other cases)" if converted else "")
            + "; rawdata was not changed."
        )
    for line in lines:
        logger.warning("skipped: %s", line)
    if problems:
        logger.warning(
            "%s: %d case(s) skipped (on_bad_case: skip), listed in %s",
            snapshot.name,
            len(problems),
            out / SKIPPED_FILE,
        )


def report_check(
    snapshot: Path, out: Path, results: list[PairResult], reused: list[dict[str, Any]] | None = None
) -> list[RoiCheck]:
    """Write ``out/check.json`` from the pairs' conversion checks; return the ROIs that differ.

    Rows of reused cases (checked when first converted) are carried over into the report.
    """
    checks = [c for r in results for c in r.checks]
    voxels = sum(r.voxels for r in results)
    bad = [c for c in checks if not c.ok]
    report = ConversionCheck(
        snapshot=snapshot.name,
        cases=len(results),
        rois_compared=len(checks),
        voxels_compared=voxels,
        mismatches=len(bad),
        rtstruct_tolerance=RTSTRUCT_TOLERANCE,
        reused_cases=len({r["case_id"] for r in reused or []}),
        rois=tuple([{**asdict(c), "ok": c.ok} for c in checks] + list(reused or [])),
    )
    write_record(out / CHECK_FILE, report)
    logger.info(
        "conversion check %s: %d case(s), %d ROI(s), %d voxels compared, %d mismatch(es)",
        snapshot.name,
        len(results),
        len(checks),
        voxels,
        len(bad),
    )
    return bad


def sitk_size(path: Path) -> tuple[int, ...]:
    """Size of an image file, from its header."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return tuple(reader.GetSize())


def read_cases(converted_dir: Path) -> list[ConvertedCase]:
    """Load a converted snapshot's ``cases.json``."""
    return list(read_record(converted_dir / CASES_FILE, ConvertedCases).cases)


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (same file system), else copy it."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
