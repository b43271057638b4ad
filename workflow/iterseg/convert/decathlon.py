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
case of an earlier snapshot is linked, not written again.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from iterseg.convert.annotations import CaseProblem, content_hash
from iterseg.convert.check import RoiCheck
from iterseg.convert.nifti import write_nifti
from iterseg.convert.pair import PairResult
from iterseg.convert.snapshot import (
    CASES_FILE,
    CHECK_FILE,
    EXCLUDED_FILE,
    _earlier_index,
    _inside,
    _log_outcome,
    _mismatch_problems,
    _settle_problems,
    case_id,
    channel_image,
    link_or_copy,
    report_check,
    reuse_key,
    sitk_size,
)
from iterseg.errors import ConversionError
from iterseg.rawdata.fingerprint import OS_JUNK, SNAPSHOT_RECORD, record_snapshot
from iterseg.records import (
    ConversionCheck,
    ConvertedCase,
    ConvertedCases,
    ExcludedAnnotations,
    read_record,
    write_json,
    write_record,
)
from iterseg.roi import label_values, load_roi_yaml, matching_labels
from iterseg.skipped import BadCasePolicy

logger = logging.getLogger(__name__)

DATASET_JSON = "dataset.json"
UNLABELLED_FILE = "unlabelled.json"  # imagesTs/ cases without labelsTs/: not trained on
ANNOTATION_KIND = "NIFTI"
ENDINGS = (".nii.gz", ".nii")
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
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
class _Layout:
    """What dataset.json declares, mapped onto the ROI YAML."""

    path: Path  # the dataset.json
    channels: tuple[str, ...]
    values: dict[int, int]  # value in the snapshot's label files -> ROI YAML value (0 -> 0)
    declared: tuple[str, ...]  # ROI labels dataset.json declares, in ROI YAML order
    ending: str

    def key(self) -> str:
        """What the written files depend on besides the files' content and the ROI YAML."""
        return "nifti " + json.dumps({"channels": self.channels, "values": sorted(self.values.items())})


@dataclass(frozen=True)
class _Case:
    """One case of the snapshot: its channel files in channel order and its label file."""

    name: str
    images: tuple[Path, ...]
    label: Path

    @property
    def series_uid(self) -> str:
        """Stands for the image series UID a NIfTI file lacks."""
        return _series_uid(self.name)


def _series_uid(name: str) -> str:
    """The image series "UID" of case ``name``: the same name gives the same case id in every snapshot."""
    return f"nifti:{name}"


@dataclass(frozen=True)
class _Settings:
    """What every case of one conversion shares."""

    date: str  # the snapshot's
    roi_labels: dict[str, list[str]]
    roi_yaml: Path
    modality: str
    layout: _Layout


@dataclass(frozen=True)
class _Pending:
    """A case to convert or reuse, with what its record needs."""

    case: _Case
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
    layout = _read_layout(snapshot, roi_labels, roi_yaml, modality, channel_names)
    problems: list[CaseProblem] = []
    cases, unlabelled = _find_cases(snapshot, layout, problems)
    earlier, _ = _earlier_index(reuse_from or [])
    _fresh_out(out, unlabelled)
    settings = _Settings(snapshot.name.split("__")[0], roi_labels, roi_yaml, modality, layout)
    pendings, reused, reused_checks = _reuse_unchanged(cases, earlier, settings, out)
    logger.info("%s: converting %d NIfTI case(s), %d reused", snapshot.name, len(pendings), len(reused))
    new = _convert_pending(snapshot, out, pendings, settings, reused_checks, problems)
    converted = sorted(reused + new, key=lambda c: c.case_id)
    _settle_problems(snapshot, out, problems, converted, on_bad_case)
    # last before cases.json: a run stopped in between leaves no cases.json, so it converts again
    record_snapshot(snapshot, out / SNAPSHOT_RECORD)
    write_record(out / CASES_FILE, ConvertedCases(tuple(converted)))
    _log_outcome(snapshot, converted, len(new), len(problems))
    return converted


def _fresh_out(out: Path, unlabelled: list[dict[str, Any]]) -> None:
    """Replace ``out`` by its ``cases`` folder, the (empty) excluded.json and unlabelled.json."""
    if out.exists():
        shutil.rmtree(out)
    (out / "cases").mkdir(parents=True)
    write_record(out / EXCLUDED_FILE, ExcludedAnnotations(()))  # nothing to exclude: no DICOM predictions
    write_json(out / UNLABELLED_FILE, unlabelled)


# --- dataset.json -----------------------------------------------------------------------------


def _read_layout(
    snapshot: Path,
    roi_labels: dict[str, list[str]],
    roi_yaml: Path,
    modality: str,
    channel_names: tuple[str, ...],
) -> _Layout:
    """dataset.json read and checked against the ROI YAML and the configured channels."""
    path = snapshot / DATASET_JSON
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConversionError(f"{path}: not a readable JSON file ({exc}); fix or rewrite it.") from exc
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: not a JSON object; write it as nnU-Net's dataset.json.")
    ending = data.get("file_ending", ".nii.gz")
    if ending not in ENDINGS:
        raise ConversionError(
            f"{path}: file_ending {ending!r}; iterseg reads NIfTI snapshots ({', '.join(ENDINGS)}): convert "
            "the images and labels to .nii.gz, or give the snapshot as DICOM."
        )
    channels = _channel_names(data, path)
    _check_channels(channels, channel_names, modality, path)
    values = _map_labels(_label_names(data, path), roi_labels, roi_yaml, path)
    targets = set(values.values())
    declared = tuple(name for name, value in label_values(roi_labels).items() if value and value in targets)
    return _Layout(path, channels, values, declared, ending)


def _label_names(data: dict[str, Any], path: Path) -> dict[int, str]:
    """dataset.json's labels as value -> name, from either form."""
    labels = data.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ConversionError(
            f'{path}: no \'labels\' mapping; write it as {{"background": 0, "liver": 1}} (nnU-Net v2) '
            'or {"0": "background", "1": "liver"} (Decathlon).'
        )
    if all(isinstance(v, str) for v in labels.values()):  # the Decathlon's value -> name
        if not all(re.fullmatch(r"\d+", str(k)) for k in labels):
            raise ConversionError(
                f"{path}: labels {labels} map names to names; write value -> name "
                '({"0": "background", "1": "liver"}) or name -> value ({"background": 0, "liver": 1}).'
            )
        pairs = [(int(k), v) for k, v in labels.items()]
    else:
        pairs = [(v, str(k)) for k, v in labels.items()]
    names: dict[int, str] = {}
    for value, name in pairs:
        if isinstance(value, list):
            raise ConversionError(
                f"{path}: label {name!r} is a region {value}; region-based labels are not supported: "
                "give each structure its own value."
            )
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConversionError(f"{path}: label {name!r} has value {value!r}; use whole numbers 0, 1, ...")
        if value in names:
            raise ConversionError(
                f"{path}: labels {names[value]!r} and {name!r} share value {value}; keep one."
            )
        names[value] = name
    return names


def _channel_names(data: dict[str, Any], path: Path) -> tuple[str, ...]:
    """The channels in file-suffix order, from ``channel_names`` (v2) or ``modality`` (v1)."""
    raw = data.get("channel_names", data.get("modality"))
    if not isinstance(raw, dict) or not raw:
        raise ConversionError(
            f"{path}: no 'channel_names' (nnU-Net v2) or 'modality' (Decathlon) mapping; add one, "
            'e.g. "channel_names": {"0": "CT"}.'
        )
    if not all(re.fullmatch(r"\d+", str(k)) for k in raw):
        raise ConversionError(f'{path}: channels {raw} are not numbered; number them "0", "1", ...')
    order = sorted((int(k), str(v)) for k, v in raw.items())
    if [k for k, _ in order] != list(range(len(order))):
        raise ConversionError(
            f"{path}: channels {raw} are not numbered 0, 1, ... without gaps; renumber them."
        )
    return tuple(name for _, name in order)


def _check_channels(
    declared: tuple[str, ...], configured: tuple[str, ...], modality: str, path: Path
) -> None:
    """The channels dataset.json declares must be the dataset's, in its order."""
    if configured and declared != tuple(configured):
        raise ConversionError(
            f"{path}: channels {list(declared)} differ from the dataset's channels {list(configured)} "
            "(config datasets.<name>.channels); the order is nnU-Net's input order: make them equal, "
            "renaming them in dataset.json or reordering the config's."
        )
    if not configured and len(declared) != 1:
        raise ConversionError(
            f"{path}: {len(declared)} channels {list(declared)}, but the dataset is configured for one "
            f"({modality}); list them under datasets.<name>.channels in the config, in this order."
        )
    if not configured and (declared[0].upper() == "CT") != (modality.upper() == "CT"):
        logger.warning(
            "%s: channel %r, but the dataset's modality is %s: nnU-Net normalises by the config's %s",
            path,
            declared[0],
            modality,
            modality,
        )


def _map_labels(
    names: dict[int, str], roi_labels: dict[str, list[str]], roi_yaml: Path, path: Path
) -> dict[int, int]:
    """Label file value -> ROI YAML value, every non-background name matching exactly one label."""
    values = label_values(roi_labels)
    mapping = {0: 0}  # a label file's 0 is background whatever dataset.json calls it
    for value, name in sorted(names.items()):
        if value == 0:
            continue
        found = matching_labels(name, roi_labels)
        if len(found) != 1:
            what = f"matches {len(found)} labels ({', '.join(found)})" if found else "matches no label"
            raise ConversionError(
                f"{path}: label {name!r} (value {value}) {what} of {roi_yaml}; rename it in dataset.json "
                "to a label of the ROI YAML, or add its name to "
                + ("only one label's regexes" if found else "a label's regexes")
                + " in the ROI YAML."
            )
        mapping[value] = values[found[0]]
    return mapping


# --- the cases of the folders -------------------------------------------------------------------


def _files(folder: Path, ending: str) -> dict[str, Path]:
    """Name without ending -> file, for every NIfTI file of ``folder`` (none if it is absent)."""
    if not folder.is_dir():
        return {}
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        # the Decathlon's archives carry macOS '._<case>.nii.gz' resource forks: not images
        if path.name.startswith(".") or path.name in OS_JUNK:
            continue
        if path.is_file() and path.name.endswith(ending):
            found[path.name[: -len(ending)]] = path
        else:
            logger.warning("%s: not a %s file; ignored", path, ending)
    return found


def _find_cases(
    snapshot: Path, layout: _Layout, problems: list[CaseProblem]
) -> tuple[list[_Case], list[dict[str, Any]]]:
    """The labelled cases of imagesTr/ (and imagesTs/ with labelsTs/), and imagesTs/'s unlabelled ones."""
    images, labels = (
        _files(snapshot / "imagesTr", layout.ending),
        _files(snapshot / "labelsTr", layout.ending),
    )
    if not images:
        raise ConversionError(
            f"{snapshot / 'imagesTr'}: no {layout.ending} file; put the images there as "
            f"<case>_0000{layout.ending} (one file per channel), their label maps in "
            f"{snapshot / 'labelsTr'}/<case>{layout.ending}."
        )
    # nnU-Net v2 names every file <case>_0000; the Decathlon's one file per case <case>
    per_channel = all(_CHANNEL_FILE.match(s) for s in images) and not set(images) & set(labels)
    if not per_channel:
        _refuse_4d(next(iter(images.values())))
    cases = _pair_files(
        snapshot / "imagesTr", images, snapshot / "labelsTr", labels, layout, per_channel, problems
    )
    test_images = _files(snapshot / "imagesTs", layout.ending)
    test_groups = _group(test_images, per_channel)
    if not (snapshot / "labelsTs").is_dir():
        unlabelled = [
            {"case": name, "files": [str(p) for p in files.values()]} for name, files in test_groups.items()
        ]
        if unlabelled:
            logger.info(
                "%s: %d case(s) in imagesTs/ without labelsTs/: not trained on, not predicted; listed in %s",
                snapshot.name,
                len(unlabelled),
                UNLABELLED_FILE,
            )
        return cases, unlabelled
    test_labels = _files(snapshot / "labelsTs", layout.ending)
    tests = _pair_files(
        snapshot / "imagesTs", test_images, snapshot / "labelsTs", test_labels, layout, per_channel, problems
    )
    known = {c.name for c in cases}
    for case in (c for c in tests if c.name in known):
        problems.append(
            CaseProblem(
                case.name,
                str(case.images[0]),
                f"{case.images[0]}: case {case.name} is in imagesTr/ too; keep one of them (the config's "
                "test_set decides which patients are held out)",
            )  # no series UID: that would name the imagesTr/ case, which is converted
        )
    return cases + [c for c in tests if c.name not in known], []


def _refuse_4d(image: Path) -> None:
    """Stop at a Decathlon 4D image (channels in one file): iterseg reads one 3D file per channel."""
    try:
        dimension = len(sitk_size(image))
    except RuntimeError:  # unreadable: its case says so when converted
        return
    if dimension == 4:
        raise ConversionError(
            f"{image}: a 4D image (several channels in one file); iterseg reads one 3D file per channel: "
            "split every image into imagesTr/<case>_0000.nii.gz, _0001, ... (nnU-Net v2's layout; "
            "nnUNetv2_convert_MSD_dataset -i <TaskXX_Name> writes it) with dataset.json's channel_names."
        )


def _group(images: dict[str, Path], per_channel: bool) -> dict[str, dict[int, Path]]:
    """Case name -> channel index -> file."""
    grouped: dict[str, dict[int, Path]] = {}
    for stem, path in images.items():
        match = _CHANNEL_FILE.match(stem) if per_channel else None
        name, index = (match["case"], int(match["channel"])) if match else (stem, 0)
        grouped.setdefault(name, {})[index] = path
    return {name: dict(sorted(files.items())) for name, files in sorted(grouped.items())}


def _pair_files(
    image_dir: Path,
    images: dict[str, Path],
    label_dir: Path,
    labels: dict[str, Path],
    layout: _Layout,
    per_channel: bool,
    problems: list[CaseProblem],
) -> list[_Case]:
    """Every image with its label and all its channels; a file without its partners is a problem."""
    cases = []
    grouped = _group(images, per_channel)
    for name, files in grouped.items():
        fault = _missing_partner(name, files, image_dir, label_dir, labels, layout)
        if fault is not None:
            problems.append(CaseProblem(name, str(fault[0]), fault[1], (_series_uid(name),)))
            continue
        cases.append(_Case(name, tuple(files.values()), labels[name]))
    for name in sorted(set(labels) - set(grouped)):
        image = image_dir / f"{name}{'_0000' if per_channel else ''}{layout.ending}"
        problems.append(
            CaseProblem(
                name,
                str(labels[name]),
                f"{labels[name]}: a label without its image {image}; add the image, or remove the label",
                (_series_uid(name),),
            )
        )
    return cases


def _missing_partner(
    name: str,
    files: dict[int, Path],
    image_dir: Path,
    label_dir: Path,
    labels: dict[str, Path],
    layout: _Layout,
) -> tuple[Path, str] | None:
    """The file at fault and the message when a case lacks its label or a channel, or None."""
    if name not in labels:
        image = next(iter(files.values()))
        return image, (
            f"{image}: no label file {label_dir / (name + layout.ending)}; add the label map, or move the "
            f"image out of {image_dir}"
        )
    declared = f"dataset.json declares {len(layout.channels)} channel(s) {list(layout.channels)}"
    for k in range(len(layout.channels)):
        if k not in files:
            expected = image_dir / f"{name}_{k:04d}{layout.ending}"
            return expected, f"{expected}: missing, channel {k} of case {name} ({declared}); add the file"
    for k, path in files.items():
        if k >= len(layout.channels):
            return (
                path,
                f"{path}: channel {k} of case {name}, beyond those {declared}; remove it or declare it",
            )
    return None


# --- reuse and conversion ---------------------------------------------------------------------


def _image_hash(files: tuple[Path, ...]) -> str:
    """Content of the channels in their order (``content_hash`` alone ignores the order)."""
    if len(files) == 1:
        return content_hash(files)
    return hashlib.sha256("|".join(content_hash((f,)) for f in files).encode()).hexdigest()


def _pending(case: _Case, settings: _Settings) -> _Pending:
    image_hash, ann_hash = _image_hash(case.images), content_hash((case.label,))
    key = reuse_key(image_hash, ann_hash, settings.roi_yaml, settings.modality, settings.layout.key())
    return _Pending(case, case_id(case.name, case.series_uid), image_hash, ann_hash, key)


def _outputs(out: Path, cid: str, channels: int) -> tuple[list[Path], Path]:
    """The channel files and the label file of a case, inside ``out/cases``."""
    images = [_inside(out, out / channel_image(cid, k)) for k in range(channels)]
    return images, _inside(out, out / "cases" / f"{cid}.nii.gz")


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


def _channel_record(case: _Case, cid: str, name: str, index: int) -> dict[str, Any]:
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
    cases: list[_Case], earlier: dict[str, tuple[Path, ConvertedCase]], settings: _Settings, out: Path
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
        )
        old_files = [old.image, *(c["image"] for c in old.extra_channels), old.label]
        new_files = [record.image, *(c["image"] for c in record.extra_channels), record.label]
        for src, dst in zip(old_files, new_files, strict=True):
            link_or_copy(folder / src, out / dst)
        reused_checks += [
            {**row, "reused_from": record.reused_from}
            for row in read_record(folder / CHECK_FILE, ConversionCheck).rois
            if row["case_id"] == old.case_id
        ]
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
        _record(p, settings, [c.label for c in r.checks if c.converted_voxels], list(r.empty_labels))
        for p, r in done
    ]
    annotation_of = {c.case_id: (c.annotation_files[0], c.image_series_uid) for c in new}
    problems += _mismatch_problems(mismatched, annotation_of, out)
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
    return PairResult(pending.cid, checks, empty, int(np.prod(reference.GetSize())))


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


def _write_label(case: _Case, reference: Any, path: Path, layout: _Layout) -> None:
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


def _relabelled(source: np.ndarray, path: Path, layout: _Layout) -> np.ndarray:
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


def check_nifti_case(
    case_id: str,
    patient_id: str,
    written: Path,
    source: Path,
    values: dict[int, int],
    roi_labels: dict[str, list[str]],
) -> list[RoiCheck]:
    """Compare a written label map with its source label file, label by label, voxel for voxel.

    Both files are read with nibabel, not with SimpleITK that wrote the one, and each ROI's voxels
    are compared: those of the source values mapped to it with those of its value in the written
    file. ``slices_*`` count slices along the third voxel axis.

    Parameters
    ----------
    case_id, patient_id
        For the report.
    written
        The converted label map.
    source
        The snapshot's label file.
    values
        Source value -> ROI YAML value, as dataset.json declares.
    roi_labels
        ROI YAML (label -> regexes), in label order.

    Returns
    -------
    list[RoiCheck]
        One row per ROI label of the YAML (a label dataset.json does not declare: expected 0 voxels).

    Raises
    ------
    ConversionError
        If the two files differ in shape, or the written one holds a value of no ROI label.

    """
    import nibabel as nib

    written_image: Any = nib.load(str(written))
    source_image: Any = nib.load(str(source))
    got, want = np.asanyarray(written_image.dataobj), np.asanyarray(source_image.dataobj)
    if got.shape != want.shape:
        raise ConversionError(f"{written}: shape {got.shape}, its source {source} {want.shape}")
    stray = sorted(set(np.unique(got).tolist()) - set(range(len(roi_labels) + 1)))
    if stray:
        raise ConversionError(f"{written}: holds value(s) {stray} of no ROI label")
    return [
        _compare_label(
            RoiCheck(case_id, patient_id, name, ANNOTATION_KIND, 0, 0, 0, 0, 0, 0),
            np.isin(want, [v for v, target in values.items() if target == value and v]),
            got == value,
        )
        for value, name in enumerate(roi_labels, start=1)
    ]


def _compare_label(blank: RoiCheck, expected: np.ndarray, converted: np.ndarray) -> RoiCheck:
    """One label's counts: a copied label map may differ in no voxel (no tolerance)."""
    differing = int(np.count_nonzero(expected ^ converted))
    exp_slices, got_slices = expected.any(axis=(0, 1)), converted.any(axis=(0, 1))
    return replace(
        blank,
        expected_voxels=int(np.count_nonzero(expected)),
        converted_voxels=int(np.count_nonzero(converted)),
        differing_voxels=differing,
        beyond_tolerance=differing,
        slices_missing=int(np.count_nonzero(exp_slices & ~got_slices)),
        slices_extra=int(np.count_nonzero(got_slices & ~exp_slices)),
    )
