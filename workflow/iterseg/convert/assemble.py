"""An iteration's nnU-Net raw dataset: which annotation wins, the test set, partial labels.

- The newest snapshot's annotation of an image series wins (cases are keyed by image series).
- The test set is chosen once, at the first iteration, by patient; later iterations inherit
  it, so its patients never reach a training split, while their newer annotations still
  update the test labels.
- A case lacking an ROI of the YAML follows ``missing_roi``: ``ignore`` turns its unlabelled
  voxels into nnU-Net's ignore label (the missing structure may hide anywhere there), ``drop``
  leaves it out of training, ``error`` stops.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
from collections import Counter
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from iterseg.convert.snapshot import link_or_copy, read_cases
from iterseg.errors import ConversionError
from iterseg.records import Assembled, ConvertedCase, write_json
from iterseg.roi import label_values, load_roi_yaml

logger = logging.getLogger(__name__)

IGNORE_LABEL = "ignore"  # nnU-Net's reserved name; it must carry the highest label value


class MissingRoiPolicy(StrEnum):
    """What a training case lacking some ROI of the YAML becomes."""

    IGNORE = "ignore"
    DROP = "drop"
    ERROR = "error"


@dataclass(frozen=True)
class HoldoutSpec:
    """How the first iteration chooses the held-out patients."""

    fraction: float = 0.0
    patients: tuple[str, ...] = ()
    seed: int = 0


def choose_test_patients(patients: list[str], spec: HoldoutSpec) -> list[str]:
    """The held-out patients: the explicit list, else ``ceil(fraction * n)`` by a seeded hash.

    At least one patient always stays for training. The hash order makes the choice independent
    of folder order and reproducible from the seed.
    """
    if spec.patients:
        return sorted(spec.patients)
    if spec.fraction <= 0 or len(patients) < 2:
        return []
    count = min(len(patients) - 1, math.ceil(spec.fraction * len(patients)))
    ranked = sorted(patients, key=lambda p: hashlib.sha256(f"{spec.seed}:{p}".encode()).hexdigest())
    return sorted(ranked[:count])


def _read_label(path: Path) -> tuple[Any, np.ndarray]:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    return image, sitk.GetArrayFromImage(image)


def _write_with_ignore(src: Path, dst: Path, ignore_value: int) -> int:
    """Copy a label map, unlabelled voxels set to the ignore value; return how many."""
    import SimpleITK as sitk

    image, array = _read_label(src)
    background = array == 0
    out = array.astype(np.uint8 if ignore_value < 256 else np.uint16)
    out[background] = ignore_value
    written = sitk.GetImageFromArray(out)
    written.CopyInformation(image)
    sitk.WriteImage(written, str(dst), useCompression=True)
    return int(background.sum())


def _superseded(old: ConvertedCase, same: bool, twin: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "snapshot": old.snapshot,
        "annotation_kind": old.annotation_kind,
        "annotation_series_uid": old.annotation_series_uid,
        "annotation_hash": old.annotation_hash,
        "same_content": same,
    }
    if twin is not None:  # the same image under another case id (a NIfTI export of a DICOM series)
        entry.update(same_image_as=twin, patient_id=old.patient_id)
    return entry


def _choose(
    converted_dirs: list[Path],
) -> tuple[dict[str, tuple[Path, ConvertedCase]], dict[str, list[dict[str, Any]]]]:
    """Newest annotation per image, and what each superseded.

    An image is a case id (its series), or, across snapshots, its voxels
    (:mod:`iterseg.convert.image_identity`): a DICOM annotation of an image first seen in a
    NIfTI snapshot (or under other series UIDs) replaces that case, and inherits its history.
    Within one snapshot, two cases are two cases: which one a researcher meant is not ours to pick.
    """
    chosen: dict[str, tuple[Path, ConvertedCase]] = {}
    superseded: dict[str, list[dict[str, Any]]] = {}
    by_image: dict[str, str] = {}  # voxel hash -> the case id chosen for that image
    for folder in converted_dirs:
        for case in read_cases(folder):
            cid = case.case_id
            twin = by_image.get(case.voxel_hash) if case.voxel_hash else None
            if cid in chosen:
                old = chosen[cid][1]
                same = bool(case.annotation_hash) and old.annotation_hash == case.annotation_hash
                superseded.setdefault(cid, []).append(_superseded(old, same))
                logger.info(
                    "case %s (%s): annotation of snapshot %s replaces that of %s%s",
                    cid,
                    case.patient_id,
                    case.snapshot,
                    old.snapshot,
                    " (same content)" if same else "",
                )
            elif twin is not None and twin in chosen and chosen[twin][1].snapshot != case.snapshot:
                old = chosen.pop(twin)[1]
                history = superseded.pop(twin, [])
                superseded[cid] = [*history, _superseded(old, False, twin)]
                logger.info(
                    "case %s (%s, %s of snapshot %s): the same image as case %s (%s, %s of snapshot %s), "
                    "whose annotation it replaces",
                    cid,
                    case.patient_id,
                    case.annotation_kind,
                    case.snapshot,
                    twin,
                    old.patient_id,
                    old.annotation_kind,
                    old.snapshot,
                )
            elif twin is not None and twin in chosen:
                logger.warning(
                    "cases %s and %s (%s, %s) of snapshot %s hold the same image (voxels and grid); both "
                    "are trained on: leave one of them out of the next snapshot",
                    twin,
                    cid,
                    chosen[twin][1].patient_id,
                    case.patient_id,
                    case.snapshot,
                )
            chosen[cid] = (folder, case)
            if case.voxel_hash:
                by_image[case.voxel_hash] = cid
    return chosen, superseded


def _change(
    case: ConvertedCase, previous: dict[str, dict[str, Any]], superseded: list[dict[str, Any]]
) -> str:
    """Whether the case is new, refined or unchanged relative to the previous iteration's choice."""
    before = previous.get(case.case_id)
    if before is None:
        twins = {s["same_image_as"] for s in superseded if "same_image_as" in s}
        return "refined" if twins & set(previous) else "new"
    return "unchanged" if before.get("annotation_hash") == case.annotation_hash else "refined"


def assemble_dataset(
    converted_dirs: list[Path],
    raw_dataset: Path,
    roi_yaml: Path,
    modality: str,
    missing_roi: MissingRoiPolicy = MissingRoiPolicy.IGNORE,
    test_spec: HoldoutSpec | None = None,
    frozen_test_set: dict[str, Any] | None = None,
    previous: Assembled | None = None,
    channel_names: tuple[str, ...] = (),
) -> Assembled:
    """Build the nnU-Net raw dataset of one iteration and return its record.

    Parameters
    ----------
    converted_dirs
        ``converted`` folders in date order; for a case present in several, the newest
        snapshot's annotation wins.
    raw_dataset
        ``nnUNet_raw/DatasetNNN_<name>``; replaced. Training cases go to imagesTr/labelsTr,
        test cases to imagesTs/labelsTs (nnU-Net never plans, preprocesses or trains on those).
    roi_yaml
        Defines the labels of dataset.json.
    modality
        The channel's name (CT or MR) of a single-channel dataset.
    missing_roi
        Policy for training cases lacking some ROI.
    test_spec
        First iteration: how to choose the test patients.
    frozen_test_set
        Later iterations: the ``test_set`` of the first iteration's record, kept as it is.
    previous
        The previous iteration's record, to tell new, refined and unchanged annotations apart.
    channel_names
        Multi-sequence datasets: nnU-Net's channels, in order (each case's ``_000k`` files).

    Returns
    -------
    Assembled
        The assembled record (written as the step's ``assembled.json`` by the CLI).

    Raises
    ------
    ConversionError
        With ``missing_roi: error``, naming every case and the ROIs it lacks; or when no
        training case is left.

    """
    # 61-80 lines: the docstring is most of it; the body is the list of phases
    labels: dict[str, int] = label_values(load_roi_yaml(roi_yaml))
    chosen, superseded = _choose(converted_dirs)
    test_set = (
        frozen_test_set if frozen_test_set is not None else _choose_test_set(chosen, raw_dataset, test_spec)
    )
    test_patients = set(test_set["patients"])
    use_ignore = _partial_label_policy(chosen, test_patients, missing_roi, raw_dataset, roi_yaml)
    if use_ignore:
        labels[IGNORE_LABEL] = max(labels.values()) + 1
    prev_cases = {c["case_id"]: c for c in (previous.records if previous is not None else ())}
    _fresh_raw_dataset(raw_dataset)
    placement = _Placement(raw_dataset, test_patients, missing_roi, use_ignore, labels)
    records = [
        _place_case(
            folder,
            case,
            placement,
            _change(case, prev_cases, superseded.get(cid, [])),
            superseded.get(cid, []),
        )
        for cid, (folder, case) in sorted(chosen.items())
    ]
    train = _training_cases(records, raw_dataset, test_patients)
    _write_dataset_json(raw_dataset, channel_names or (modality,), labels, len(train), records)
    summary = _summary(records, read_cases(converted_dirs[-1]), missing_roi, raw_dataset)
    return Assembled(
        dataset_name=raw_dataset.name,
        raw=str(raw_dataset),
        # the snapshots trained on: the manifest lists the cases their conversion skipped
        converted=tuple(str(d) for d in converted_dirs),
        labels=labels,
        cases=tuple(r["case_id"] for r in train),
        test_cases=tuple(r["case_id"] for r in records if r["split"] == "test"),
        test_set=test_set,
        summary=summary,
        records=tuple(records),
    )


def _fresh_raw_dataset(raw_dataset: Path) -> None:
    """Replace ``raw_dataset`` by its four empty folders."""
    if raw_dataset.exists():
        shutil.rmtree(raw_dataset)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (raw_dataset / sub).mkdir(parents=True)


def _training_cases(
    records: list[dict[str, Any]], raw_dataset: Path, test_patients: set[str]
) -> list[dict[str, Any]]:
    """The records of the training cases; :class:`ConversionError` when there is none."""
    train = [r for r in records if r["split"] == "train"]
    if not train:
        raise ConversionError(
            f"{raw_dataset.name}: no training case left (test patients {sorted(test_patients)}, "
            f"{sum(r['split'] == 'dropped' for r in records)} dropped for missing ROIs). Add annotated "
            "cases or lower the test fraction."
        )
    return train


def _write_dataset_json(
    raw_dataset: Path,
    channels: tuple[str, ...],
    labels: dict[str, int],
    training: int,
    records: list[dict[str, Any]],
) -> None:
    """nnU-Net's ``dataset.json`` of the raw dataset."""
    write_json(
        raw_dataset / "dataset.json",
        {
            # nnU-Net normalises a channel named CT with the dataset's HU statistics, others by z-score
            "channel_names": {str(k): name for k, name in enumerate(channels)},
            "labels": labels,
            "numTraining": training,
            "file_ending": ".nii.gz",
            "name": raw_dataset.name,
            "description": "assembled by iterseg from snapshots "
            + ", ".join(sorted({r["snapshot"] for r in records})),
        },
    )


def _choose_test_set(
    chosen: dict[str, tuple[Path, ConvertedCase]], raw_dataset: Path, test_spec: HoldoutSpec | None
) -> dict[str, Any]:
    """First iteration: the held-out patients, where and how they were chosen."""
    spec = test_spec or HoldoutSpec()
    patients = sorted({c.patient_id for _, c in chosen.values()})
    return {
        "patients": choose_test_patients(patients, spec),
        "chosen_at": raw_dataset.name,
        "rule": f"explicit list {list(spec.patients)}"
        if spec.patients
        else f"fraction {spec.fraction} of {len(patients)} patients, seed {spec.seed}",
    }


def _partial_label_policy(
    chosen: dict[str, tuple[Path, ConvertedCase]],
    test_patients: set[str],
    missing_roi: MissingRoiPolicy,
    raw_dataset: Path,
    roi_yaml: Path,
) -> bool:
    """Whether the dataset needs the ignore label; :class:`ConversionError` when the policy is error."""
    partial = [c for _, c in chosen.values() if c.missing_rois and c.patient_id not in test_patients]
    if partial and missing_roi is MissingRoiPolicy.ERROR:
        raise ConversionError(
            f"{raw_dataset.name}: {len(partial)} training case(s) lack ROIs of {roi_yaml}:\n  "
            + "\n  ".join(
                f"{c.patient_id} ({c.annotation_files[0]}): {', '.join(c.missing_rois)}" for c in partial
            )
            + "\nAnnotate the missing structures in a later snapshot, or set datasets.<name>.missing_roi "
            "to ignore (train with nnU-Net's ignore label) or drop."
        )
    return bool(partial) and missing_roi is MissingRoiPolicy.IGNORE


@dataclass(frozen=True)
class _Placement:
    """Where and how the cases of one raw dataset are placed."""

    raw_dataset: Path
    test_patients: set[str]
    missing_roi: MissingRoiPolicy
    use_ignore: bool
    labels: dict[str, int]


def _place_case(
    folder: Path, case: ConvertedCase, placement: _Placement, change: str, superseded: list[dict[str, Any]]
) -> dict[str, Any]:
    """Link (or write, with the ignore label) one case into the raw dataset; return its record."""
    cid, missing_roi = case.case_id, placement.missing_roi
    # a test image stays a test image under a new name (its NIfTI case named the patient otherwise)
    held = {case.patient_id} | {s["patient_id"] for s in superseded if "same_image_as" in s}
    split = "test" if held & placement.test_patients else "train"
    handling = "complete"
    if case.missing_rois:
        handling = "scored on drawn ROIs only" if split == "test" else f"missing_roi={missing_roi.value}"
    record: dict[str, Any] = {
        **asdict(case),
        "split": split,
        "change": change,
        "superseded": superseded,
        "converted_label": str(folder / case.label),  # faithful to the annotation (no ignore label)
        "why": f"newest annotation of the series (snapshot {case.snapshot}); {case.selection}",
        "partial_labels": handling,
    }
    if split == "train" and case.missing_rois and missing_roi is MissingRoiPolicy.DROP:
        record["split"] = "dropped"
        logger.warning(
            "case %s (%s): lacks %s; dropped from training", cid, case.patient_id, case.missing_rois
        )
        return record
    kind = "Ts" if split == "test" else "Tr"
    image_dst = placement.raw_dataset / f"images{kind}" / f"{cid}_0000.nii.gz"
    label_dst = placement.raw_dataset / f"labels{kind}" / f"{cid}.nii.gz"
    link_or_copy(folder / case.image, image_dst)
    channels = [image_dst.with_name(f"{cid}_{ch['index']:04d}.nii.gz") for ch in case.extra_channels]
    for channel, dst in zip(case.extra_channels, channels, strict=True):
        link_or_copy(folder / channel["image"], dst)
    record["raw_channels"] = [str(dst) for dst in channels]  # channels 1.., after raw_image
    if split == "train" and case.missing_rois and placement.use_ignore:
        record["ignored_voxels"] = _write_with_ignore(
            folder / case.label, label_dst, placement.labels[IGNORE_LABEL]
        )
        logger.info(
            "case %s (%s): lacks %s; unlabelled voxels -> ignore label",
            cid,
            case.patient_id,
            case.missing_rois,
        )
    else:
        link_or_copy(folder / case.label, label_dst)
    record["raw_image"], record["raw_label"] = str(image_dst), str(label_dst)
    return record


def _summary(
    records: list[dict[str, Any]], own: list[ConvertedCase], missing_roi: MissingRoiPolicy, raw_dataset: Path
) -> dict[str, Any]:
    """The iteration's counts (logged); ``own``: the cases of the iteration's own snapshot."""
    lacking = Counter(roi for r in records if r["split"] != "test" for roi in r["missing_rois"])
    summary = {
        "train": sum(r["split"] == "train" for r in records),
        "test": sum(r["split"] == "test" for r in records),
        "dropped": sum(r["split"] == "dropped" for r in records),
        "new": sum(r["change"] == "new" for r in records),
        "refined": sum(r["change"] == "refined" for r in records),
        "superseded": sum(1 for r in records if any(not s["same_content"] for s in r["superseded"])),
        # of the iteration's own snapshot: what this iteration had to convert
        "converted": sum(c.conversion == "converted" for c in own),
        "reused": sum(c.conversion == "reused" for c in own),
        "partial_cases": sum(1 for r in records if r["split"] != "test" and r["missing_rois"]),
        "missing_rois": dict(lacking),
        "missing_roi_policy": missing_roi.value,
    }
    logger.info(
        "%s: %d training, %d test, %d dropped case(s); %d new, %d refined annotation(s); "
        "%d training case(s) lack ROIs %s (policy %s)",
        raw_dataset.name,
        summary["train"],
        summary["test"],
        summary["dropped"],
        summary["new"],
        summary["refined"],
        summary["partial_cases"],
        dict(lacking) or "",
        missing_roi.value,
    )
    return summary
