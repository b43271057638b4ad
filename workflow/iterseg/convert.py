"""Snapshot -> NIfTI cases with med-imagetools, loudly and incrementally.

med-imagetools takes one mask modality per run, exits 0 when cases fail, names datasets after
the input folder, caches its crawl next to the input and drops a case lacking any ROI. We
choose the annotations ourselves (``iterseg.annotations``), convert only image/annotation pairs
whose content was not converted before, run it once per annotation kind and set of drawn
ROIs, and check every outcome against what a header scan of the snapshot says must come out.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from iterseg.annotations import (
    AnnotationKind,
    DuplicateRule,
    Selection,
    SeriesInfo,
    content_hash,
    present_labels,
    select_annotations,
)
from iterseg.archives import unpack_snapshot_archives
from iterseg.convert_check import RTSTRUCT_TOLERANCE, RoiCheck, check_case
from iterseg.errors import ConversionError, SnapshotError
from iterseg.roi import label_values, load_roi_yaml

logger = logging.getLogger(__name__)

CASES_FILE = "cases.json"
CHECK_FILE = "check.json"
EXCLUDED_FILE = "excluded.json"
# Part of every reuse key: bump when a change here alters what conversion writes.
CONVERTER_VERSION = "2"


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


def _staged_path(file: Path, snapshot: Path, image: SeriesInfo) -> Path:
    try:
        return file.resolve().relative_to(snapshot.resolve())
    except ValueError:  # from an earlier snapshot, or unpacked from an archive
        return (
            Path(image.patient_id or "anon")
            / f"outside-{hashlib.sha1(str(file.parent).encode()).hexdigest()[:10]}"
            / file.name
        )


def stage_selection(snapshot: Path, selections: list[Selection], staged: Path) -> Path:
    """A view holding only the selected image series and annotations (symlinks).

    med-imagetools converts whatever it crawls and keeps the first of several annotations, so
    the choice of what to convert is made before it runs.
    """
    if staged.exists():
        shutil.rmtree(staged)
    staged.mkdir(parents=True)
    for sel in selections:
        for file in (*sel.image.files, *sel.annotation.files):
            if not file.is_file():
                raise SnapshotError(
                    f"{file}: recorded in an earlier conversion but missing now; snapshots are "
                    "read-only once converted — restore the file."
                )
            target = staged / _staged_path(file, snapshot, sel.image)
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


def _remap(label_file: Path, present: list[str], roi_labels: dict[str, list[str]], strategy: str) -> None:
    """A run restricted to the drawn ROIs numbers them 1..k; give them their ROI YAML values."""
    import SimpleITK as sitk

    full = label_values(roi_labels)
    if present == list(roi_labels):
        return
    image = sitk.ReadImage(str(label_file))
    array = sitk.GetArrayFromImage(image)
    out = np.zeros_like(array)
    for index, name in enumerate(present, start=1):
        if strategy == "region_mask":
            out |= ((array >> (index - 1)) & 1).astype(array.dtype) << (full[name] - 1)
        else:
            out[array == index] = full[name]
    remapped = sitk.GetImageFromArray(out)
    remapped.CopyInformation(image)
    sitk.WriteImage(remapped, str(label_file), useCompression=True)


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


def _convert_group(
    snapshot: Path,
    out: Path,
    run_name: str,
    pendings: list[_Pending],
    modality: str,
    kind: AnnotationKind,
    roi_labels: dict[str, list[str]],
    strategy: str,
    jobs: int,
    problems: list[str],
) -> list[_Pending]:
    """One med-imagetools run over pairs of one annotation kind drawing the same ROIs."""
    present = list(pendings[0].present)
    subset = {name: roi_labels[name] for name in present}
    staged = stage_selection(
        snapshot, [p.selection for p in pendings], out / "staged" / run_name / snapshot.name
    )
    imgtools_out = out / "imgtools" / run_name
    results = _run_imgtools(staged, imgtools_out, modality, kind, subset, strategy, jobs)
    _check_label_numbering(imgtools_out, label_values(subset), problems)
    by_uid = {p.selection.image.series_uid: p for p in pendings}
    done: list[_Pending] = []
    for result in results:
        if not result.success:
            problems.append(_failure_message(result))
            continue
        image_uid = {s.Modality: str(s.SeriesInstanceUID) for s in result.sample}.get(modality)
        if image_uid not in by_uid:
            problems.append(f"med-imagetools produced an unexpected sample {result.to_dict()}")
            continue
        pending = by_uid[image_uid]
        image_files = [Path(f) for f in result.output_files if Path(f).parent.name.startswith("images")]
        label_files = [Path(f) for f in result.output_files if Path(f).parent.name.startswith("labels")]
        if len(image_files) != 1 or len(label_files) != 1:
            problems.append(
                f"patient {pending.selection.image.patient_id}: expected one image and one label file, "
                f"med-imagetools wrote {[str(f) for f in result.output_files]}"
            )
            continue
        cid = case_id(pending.selection.image.patient_id, image_uid)
        os.replace(image_files[0], out / "cases" / f"{cid}_0000.nii.gz")
        os.replace(label_files[0], out / "cases" / f"{cid}.nii.gz")
        _remap(out / "cases" / f"{cid}.nii.gz", present, roi_labels, strategy)
        done.append(pending)
    failed = {str(s.SeriesInstanceUID) for r in results if not r.success for s in r.sample}
    produced = {p.selection.image.series_uid for p in done}
    for uid, pending in by_uid.items():
        if uid not in produced and uid not in failed:
            sel = pending.selection
            problems.append(
                f"patient {sel.image.patient_id} ({sel.annotation.folder}): med-imagetools skipped this "
                f"{kind.value} without an error; check that it references {sel.image.folder}"
            )
    return done


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
        med-imagetools' strategy for overlapping ROIs.
    jobs
        Parallel workers for med-imagetools.
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
        If med-imagetools failed any case or dropped one silently; the message lists each case.

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
    groups: dict[tuple[str, tuple[str, ...]], list[_Pending]] = defaultdict(list)
    problems: list[str] = []
    for sel in selected.values():
        present = tuple(present_labels(sel.annotation, roi_labels))
        if not present:
            problems.append(
                f"patient {sel.image.patient_id} ({sel.annotation.files[0]}): none of its ROIs "
                f"({', '.join(sel.annotation.roi_names) or 'none'}) matches a label of {roi_yaml}"
            )
            continue
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
            groups[(sel.annotation.modality, present)].append(pending)
            continue
        folder, old = hit
        record = _record(
            pending, date, roi_labels, conversion="reused", reused_from=old.reused_from or old.snapshot
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
    new: list[ConvertedCase] = []
    for number, ((kind_name, present), pendings) in enumerate(sorted(groups.items())):
        run_name = f"{kind_name.lower()}-{number}"
        logger.info(
            "%s: converting %d %s + %s pair(s) drawing %s with med-imagetools",
            snapshot.name,
            len(pendings),
            modality,
            kind_name,
            ", ".join(present),
        )
        done = _convert_group(
            snapshot,
            out,
            run_name,
            pendings,
            modality,
            AnnotationKind(kind_name),
            roi_labels,
            mask_saving_strategy,
            jobs,
            problems,
        )
        new += [_record(p, date, roi_labels) for p in done]
    if problems:
        raise ConversionError(
            f"{snapshot}: {len(problems)} case(s) could not be converted:\n  "
            + "\n  ".join(problems)
            + "\nFix the annotation (e.g. ROI names matching "
            f"{roi_yaml}) or move the case out of the snapshot; rawdata was not changed."
        )
    verify_conversion(
        snapshot,
        out,
        sorted(new, key=lambda c: c.case_id),
        selected,
        roi_labels,
        mask_saving_strategy,
        reused_checks,
    )
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


def verify_conversion(
    snapshot: Path,
    out: Path,
    converted: list[ConvertedCase],
    expected: dict[str, Selection],
    roi_labels: dict[str, list[str]],
    strategy: str,
    reused: list[dict[str, Any]] | None = None,
) -> list[RoiCheck]:
    """Re-derive every newly converted label map from its annotation; write ``out/check.json``.

    Rows of reused cases (checked when first converted) are carried over into the report.

    Raises
    ------
    ConversionError
        Naming each case and ROI whose voxels differ beyond the tolerance of its annotation kind.

    """
    from tqdm import tqdm

    checks: list[RoiCheck] = []
    voxels = 0
    for case in tqdm(converted, desc="conversion check", unit="case", disable=None):
        image, annotation = expected[case.image_series_uid].image, expected[case.image_series_uid].annotation
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
        "reused_cases": len({r["case_id"] for r in reused or []}),
        "rois": [{**asdict(c), "ok": c.ok} for c in checks] + list(reused or []),
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


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (same file system), else copy it."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
