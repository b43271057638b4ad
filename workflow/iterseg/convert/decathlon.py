"""NIfTI snapshots in nnU-Net's / the Medical Segmentation Decathlon's layout -> checked NIfTI cases.

A snapshot folder holding ``dataset.json`` and ``imagesTr/`` is read as such a dataset, not as DICOM::

    <snapshot>/dataset.json
    <snapshot>/imagesTr/<case>_0000.nii.gz    (_0001, ... for more channels; or <case>.nii.gz)
    <snapshot>/labelsTr/<case>.nii.gz
    <snapshot>/imagesTs/...                   optional, with or without labelsTs/

Both forms of ``dataset.json`` are read: nnU-Net v2 (``"labels": {"background": 0, "liver": 1}``,
``channel_names``, one file per channel) and the Decathlon's v1 (``"labels": {"0": "background",
"1": "liver"}``, ``modality``, one file per case; a 4D file is refused: split it per channel).
Each label name is matched to the ROI YAML (``iterseg.roi.matching_labels``) and the label maps
are written with the YAML's values, in its order, whatever values the snapshot used. A label,
channel or value the YAML or dataset.json cannot place stops the conversion or the case: nothing
is guessed. Every written label map is read back with nibabel (the writer is SimpleITK), as is
its source file, and compared voxel for voxel, label by label, into ``check.json``.

Cases of ``imagesTs/`` with ``labelsTs/`` are converted as ordinary cases: which patients are
held out is decided by the config's ``test_set`` alone, as for DICOM snapshots, not by the folder
a case came in. Without ``labelsTs/`` they are listed in ``unlabelled.json``, neither trained on
nor predicted (the inbox is where cases to predict go, NIfTI ones included).

The outputs are those of :func:`iterseg.convert.snapshot.convert_snapshot`, whose helpers
(case ids, reuse keys, the check report, the skipped cases) this module shares: an unchanged
case of an earlier snapshot is linked, not written again. dataset.json and the pairing of the
files are read by :mod:`iterseg.convert.nifti_layout`, the check is :mod:`iterseg.convert.nifti_check`.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from iterseg.convert.annotations import CaseProblem, content_hash
from iterseg.convert.image_identity import voxel_hash
from iterseg.convert.nifti import write_nifti
from iterseg.convert.nifti_check import ANNOTATION_KIND, check_nifti_case
from iterseg.convert.nifti_layout import (
    DATASET_JSON,
    UNLABELLED_FILE,
    Case,
    Layout,
    find_cases,
    read_layout,
)
from iterseg.convert.pair import PairResult
from iterseg.convert.snapshot import (
    CASES_FILE,
    EXCLUDED_FILE,
    case_id,
    channel_image,
    earlier_index,
    inside,
    link_reused,
    log_outcome,
    mismatch_problems,
    report_check,
    reuse_key,
    settle_problems,
)
from iterseg.errors import ConversionError
from iterseg.rawdata.fingerprint import SNAPSHOT_RECORD, record_snapshot
from iterseg.records import (
    ConvertedCase,
    ConvertedCases,
    ExcludedAnnotations,
    write_json,
    write_record,
)
from iterseg.roi import load_roi_yaml
from iterseg.skipped import BadCasePolicy

logger = logging.getLogger(__name__)

# header rounding, not another grid: the label is written with its image's header
_SPACING_TOL = 1e-4  # relative
_ORIGIN_TOL_MM = 1e-3
_DIRECTION_TOL = 1e-4
_FULL = (errno.ENOSPC, errno.EDQUOT)
_SHOWN = 10  # undeclared values named per label file


class _CaseError(ConversionError):
    """A case that cannot be converted; ``file`` is the file at fault."""

    def __init__(self, file: Path, message: str) -> None:
        super().__init__(message)
        self.file = str(file)


def is_nifti_snapshot(snapshot: Path) -> bool:
    """Whether ``snapshot`` is an nnU-Net / Decathlon NIfTI folder (``dataset.json`` and ``imagesTr/``).

    Parameters
    ----------
    snapshot
        A snapshot folder.

    Returns
    -------
    bool
        True when both are present; a DICOM snapshot has neither.

    """
    return (snapshot / DATASET_JSON).is_file() and (snapshot / "imagesTr").is_dir()


@dataclass(frozen=True)
class _Settings:
    """What every case of one conversion shares."""

    date: str  # the snapshot's
    roi_labels: dict[str, list[str]]
    roi_yaml: Path
    modality: str
    layout: Layout


@dataclass(frozen=True)
class _Pending:
    """A case to convert or reuse, with what its record needs."""

    case: Case
    cid: str
    image_hash: str
    annotation_hash: str
    key: str


def convert_nifti_snapshot(
    snapshot: Path,
    out: Path,
    roi_yaml: Path,
    modality: str = "CT",
    channel_names: tuple[str, ...] = (),
    reuse_from: list[Path] | None = None,
    on_bad_case: BadCasePolicy = BadCasePolicy.SKIP,
) -> list[ConvertedCase]:
    """Convert every labelled case of an nnU-Net / Decathlon NIfTI snapshot, as ``convert_snapshot`` DICOM.

    Parameters
    ----------
    snapshot
        ``rawdata/<dataset>/<date>__<dataset>`` holding ``dataset.json`` and ``imagesTr/``; only read.
    out
        The snapshot's ``converted`` folder; replaced.
    roi_yaml
        Label -> regexes, in label order: matched against dataset.json's label names.
    modality
        CT or MR: the channel of a single-channel dataset.
    channel_names
        The dataset's channels in nnU-Net's order, as dataset.json must declare; empty: one channel.
    reuse_from
        ``converted`` folders of earlier snapshots: a case whose files, dataset.json labels,
        channels and ROI YAML are unchanged is linked from there instead of converted again.
    on_bad_case
        skip: a case that cannot be converted is left out and listed in ``out/skipped.json``;
        fail: it stops the conversion.

    Returns
    -------
    list[ConvertedCase]
        Also written to ``out/cases.json``; the check to ``out/check.json``, unlabelled
        ``imagesTs/`` cases to ``out/unlabelled.json``. A ROI of the YAML that dataset.json
        does not declare is in every case's ``missing_rois``.

    Raises
    ------
    ConversionError
        If dataset.json does not fit the ROI YAML or the channels, the images are 4D, a case
        cannot be converted and ``on_bad_case`` is fail, or no case can.

    """
    roi_labels = load_roi_yaml(roi_yaml)
    layout = read_layout(snapshot, roi_labels, roi_yaml, modality, channel_names)
    problems: list[CaseProblem] = []
    cases, unlabelled = find_cases(snapshot, layout, problems)
    earlier, _ = earlier_index(reuse_from or [])
    _fresh_out(out, unlabelled)
    settings = _Settings(snapshot.name.split("__")[0], roi_labels, roi_yaml, modality, layout)
    pendings, reused, reused_checks = _reuse_unchanged(cases, earlier, settings, out)
    logger.info("%s: converting %d NIfTI case(s), %d reused", snapshot.name, len(pendings), len(reused))
    new = _convert_pending(snapshot, out, pendings, settings, reused_checks, problems)
    converted = sorted(reused + new, key=lambda c: c.case_id)
    settle_problems(snapshot, out, problems, converted, on_bad_case)
    # last before cases.json: a run stopped in between leaves no cases.json, so it converts again
    record_snapshot(snapshot, out / SNAPSHOT_RECORD)
    write_record(out / CASES_FILE, ConvertedCases(tuple(converted)))
    log_outcome(snapshot, converted, len(new), len(problems))
    return converted


def _fresh_out(out: Path, unlabelled: list[dict[str, Any]]) -> None:
    """Replace ``out`` by its ``cases`` folder, the (empty) excluded.json and unlabelled.json."""
    if out.exists():
        shutil.rmtree(out)
    (out / "cases").mkdir(parents=True)
    write_record(out / EXCLUDED_FILE, ExcludedAnnotations(()))  # nothing to exclude: no DICOM predictions
    write_json(out / UNLABELLED_FILE, unlabelled)


# --- reuse and conversion ---------------------------------------------------------------------


def _image_hash(files: tuple[Path, ...]) -> str:
    """Content of the channels in their order (``content_hash`` alone ignores the order)."""
    if len(files) == 1:
        return content_hash(files)
    return hashlib.sha256("|".join(content_hash((f,)) for f in files).encode()).hexdigest()


def _pending(case: Case, settings: _Settings) -> _Pending:
    image_hash, ann_hash = _image_hash(case.images), content_hash((case.label,))
    key = reuse_key(image_hash, ann_hash, settings.roi_yaml, settings.modality, settings.layout.key())
    return _Pending(case, case_id(case.name, case.series_uid), image_hash, ann_hash, key)


def _outputs(out: Path, cid: str, channels: int) -> tuple[list[Path], Path]:
    """The channel files and the label file of a case, inside ``out/cases``."""
    images = [inside(out, out / channel_image(cid, k)) for k in range(channels)]
    return images, inside(out, out / "cases" / f"{cid}.nii.gz")


def _record(
    pending: _Pending, settings: _Settings, present: list[str], empty: list[str], **extra: Any
) -> ConvertedCase:
    case, cid, layout = pending.case, pending.cid, settings.layout
    return ConvertedCase(
        case_id=cid,
        patient_id=case.name,
        study_uid="",
        image_series_uid=case.series_uid,
        annotation_kind=ANNOTATION_KIND,
        annotation_series_uid=f"nifti:{case.label.parent.name}/{case.label.name}",
        snapshot=settings.date,
        image=channel_image(cid, 0),
        label=f"cases/{cid}.nii.gz",
        image_hash=pending.image_hash,
        annotation_hash=pending.annotation_hash,
        image_files=[str(f) for f in case.images],
        annotation_files=[str(case.label)],
        selection=f"the label file of {case.label.parent.name}/ of a NIfTI (nnU-Net/Decathlon) snapshot",
        labels_present=present,
        missing_rois=[label for label in settings.roi_labels if label not in layout.declared],
        empty_labels=empty,
        key=pending.key,
        extra_channels=[
            _channel_record(case, cid, layout.channels[k], k) for k in range(1, len(case.images))
        ],
        **extra,
    )


def _channel_record(case: Case, cid: str, name: str, index: int) -> dict[str, Any]:
    """An ``extra_channels`` entry, with the keys the DICOM conversion writes (``convert.snapshot``)."""
    source = case.images[index]
    return {
        "channel": name,
        "index": index,
        "image": channel_image(cid, index),
        "series_uid": f"{case.series_uid}:{index}",
        "description": "",
        "protocol": "",
        "frame_of_reference": "",
        "files": [str(source)],
        "sop_uids": [],
        "hash": content_hash((source,)),
        "resampled": False,  # a channel off the first one's grid is refused, not resampled
    }


def _reuse_unchanged(
    cases: list[Case], earlier: dict[str, tuple[Path, ConvertedCase]], settings: _Settings, out: Path
) -> tuple[list[_Pending], list[ConvertedCase], list[dict[str, Any]]]:
    """Link the cases converted before, unchanged; return the rest, the reused and their check rows."""
    pendings: list[_Pending] = []
    reused: list[ConvertedCase] = []
    reused_checks: list[dict[str, Any]] = []
    for case in cases:
        pending = _pending(case, settings)
        hit = earlier.get(pending.key)
        if hit is None:
            pendings.append(pending)
            continue
        folder, old = hit
        record = _record(
            pending,
            settings,
            list(old.labels_present),
            list(old.empty_labels),
            conversion="reused",
            reused_from=old.reused_from or old.snapshot,
            voxel_hash=old.voxel_hash,
        )
        reused_checks += link_reused(folder, old, record, out)
        reused.append(record)
        logger.info("case %s: unchanged since %s, NIfTI reused", case.name, record.reused_from)
    return pendings, reused, reused_checks


def _convert_pending(
    snapshot: Path,
    out: Path,
    pendings: list[_Pending],
    settings: _Settings,
    reused_checks: list[dict[str, Any]],
    problems: list[CaseProblem],
) -> list[ConvertedCase]:
    """Convert and check the new cases; return those that passed (the rest appended to ``problems``)."""
    done: list[tuple[_Pending, PairResult]] = []
    for pending in sorted(pendings, key=lambda p: p.cid):
        try:
            done.append((pending, _convert_case(pending, settings, out)))
        except _CaseError as exc:
            problems.append(CaseProblem(pending.case.name, exc.file, str(exc), (pending.case.series_uid,)))
    mismatched = report_check(snapshot, out, [r for _, r in done], reused_checks)
    new = [
        _record(
            p,
            settings,
            [c.label for c in r.checks if c.converted_voxels],
            list(r.empty_labels),
            voxel_hash=r.voxel_hash,
        )
        for p, r in done
    ]
    annotation_of = {c.case_id: (c.annotation_files[0], c.image_series_uid) for c in new}
    problems += mismatch_problems(mismatched, annotation_of, out)
    dropped = {c.case_id for c in mismatched}
    for channel in (ch for c in new if c.case_id in dropped for ch in c.extra_channels):
        (out / channel["image"]).unlink(missing_ok=True)
    return [c for c in new if c.case_id not in dropped]


def _convert_case(pending: _Pending, settings: _Settings, out: Path) -> PairResult:
    """Write one case's channels and label map, then check them; :class:`_CaseError` when it cannot be."""
    case = pending.case
    images, label_out = _outputs(out, pending.cid, len(case.images))
    try:
        reference = _read(case.images[0])
        _write_label(case, reference, label_out, settings.layout)
        for k, (src, dst) in enumerate(zip(case.images, images, strict=True)):
            image = reference if k == 0 else _on_grid(_read(src), reference, src, case.images[0])
            write_nifti(image, dst)
        checks = check_nifti_case(
            pending.cid, case.name, label_out, case.label, settings.layout.values, settings.roi_labels
        )
    except _CaseError:
        _discard([*images, label_out])
        raise
    except Exception as exc:  # a reader library choking on one case must not stop the others
        _discard([*images, label_out])
        if isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno in _FULL):
            raise  # a full disk or no memory is the machine's problem, not the case's
        logger.debug("case %s: unexpected failure", case.name, exc_info=True)
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise _CaseError(
            case.images[0],
            f"{case.images[0]} with {case.label}: conversion failed ({first[:300]}); a file of the case may "
            "be corrupt: open it in a viewer, or report the case with its files",
        ) from exc
    empty = tuple(c.label for c in checks if c.label in settings.layout.declared and not c.converted_voxels)
    voxels = int(np.prod(reference.GetSize()))
    return PairResult(pending.cid, checks, empty, voxels, voxel_hash=voxel_hash(reference))


def _discard(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _read(path: Path) -> Any:
    """A 3D scalar image as SimpleITK reads it; :class:`_CaseError` naming the file otherwise."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise _CaseError(path, f"{path}: cannot be read as NIfTI ({last[:300]}); re-export it") from exc
    if image.GetDimension() != 3:
        raise _CaseError(
            path,
            f"{path}: a {image.GetDimension()}D image; iterseg reads one 3D file per channel: split or "
            "re-export it (nnUNetv2_convert_MSD_dataset splits the Decathlon's 4D images)",
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise _CaseError(
            path,
            f"{path}: {image.GetNumberOfComponentsPerPixel()} components per voxel (a colour or vector "
            "image); save one scalar 3D image per channel",
        )
    return image


def _grid_difference(image: Any, reference: Any) -> str:
    """How ``image``'s voxel grid differs from ``reference``'s beyond header rounding; "" when it does not."""

    def show(values: Any) -> str:
        return "(" + ", ".join(f"{float(v):.6g}" for v in values) + ")"

    if image.GetSize() != reference.GetSize():
        return f"size {image.GetSize()} vs {reference.GetSize()}"
    parts = []
    for what, tolerance, relative in (
        ("spacing", _SPACING_TOL, True),
        ("origin", _ORIGIN_TOL_MM, False),
        ("direction", _DIRECTION_TOL, False),
    ):
        a, b = (np.asarray(getattr(im, f"Get{what.capitalize()}")(), float) for im in (image, reference))
        if not np.allclose(a, b, rtol=tolerance if relative else 0, atol=0 if relative else tolerance):
            parts.append(f"{what} {show(a)} vs {show(b)}")
    return "; ".join(parts)


def _on_grid(image: Any, reference: Any, path: Path, reference_path: Path) -> Any:
    """A further channel, with the first channel's header once it is on its grid."""
    difference = _grid_difference(image, reference)
    if difference:
        raise _CaseError(
            path,
            f"{path}: not on the grid of the case's first channel {reference_path} ({difference}); resample "
            "the channel onto the first channel's image and save it again",
        )
    image.CopyInformation(reference)
    return image


def _write_label(case: Case, reference: Any, path: Path, layout: Layout) -> None:
    """The case's label map with the ROI YAML's values, on its image's grid and header."""
    import SimpleITK as sitk

    label = _read(case.label)
    difference = _grid_difference(label, reference)
    if difference:
        raise _CaseError(
            case.label,
            f"{case.label}: not on the grid of its image {case.images[0]} ({difference}); resample the label "
            "onto the image (nearest neighbour) and save it again",
        )
    values = _relabelled(sitk.GetArrayFromImage(label), case.label, layout)
    del label
    written = sitk.GetImageFromArray(values)
    written.CopyInformation(reference)
    write_nifti(written, path)


def _relabelled(source: np.ndarray, path: Path, layout: Layout) -> np.ndarray:
    """``source`` with the ROI YAML's values; :class:`_CaseError` for a value dataset.json lacks."""
    if source.dtype.kind == "f":
        whole = np.isfinite(source) & (source == np.rint(source))
        if not whole.all():
            shown = ", ".join(f"{v:g}" for v in np.unique(source[~whole])[:3])
            raise _CaseError(
                path,
                f"{path}: holds non-integer values ({shown}, ...); a label map holds whole numbers: save it "
                "as an integer image",
            )
        source = source.astype(np.int64)
    elif source.dtype.kind not in "iub":
        raise _CaseError(
            path, f"{path}: voxels of type {source.dtype}; save the label map as an integer image"
        )
    found = [int(v) for v in np.unique(source)]
    undeclared = [v for v in found if v not in layout.values]
    if undeclared:
        shown = ", ".join(map(str, undeclared[:_SHOWN])) + (", ..." if len(undeclared) > _SHOWN else "")
        raise _CaseError(
            path,
            f"{path}: voxel value(s) {shown} not declared in {layout.path} (its labels: "
            f"{sorted(layout.values)}); declare them under 'labels' with a name of the ROI YAML, or correct "
            "the label map",
        )
    lut = np.zeros(max(layout.values) + 1, np.uint8 if max(layout.values.values()) < 256 else np.uint16)
    for value, target in layout.values.items():
        lut[value] = target
    return np.asarray(lut[source])
