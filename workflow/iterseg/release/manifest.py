"""``results/<dataset>/<date>/manifest.json``: what an iteration learned from, and whether it shipped.

One file answers a reviewer's questions about a model: which DICOM files (by UID and content
hash) and which annotation of each series it trained on and why, which patients were held
out, with which config, ROI YAML, plans and packages, from which parent checkpoint, how each
fold went, how it scored on the test set, and why it was or was not promoted (the gate lives
in :mod:`iterseg.release.gate`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from iterseg.records import Assembled, Manifest
from iterseg.skipped import SKIPPED_FILE, SKIPPED_PREDICTIONS_FILE, SkippedCase, read_skipped

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
PACKAGES = (
    "iterseg",
    "nnunetv2",
    "med-imagetools",
    "torch",
    "highdicom",
    "pydicom",
    "SimpleITK",
    "snakemake",
)


def file_sha256(path: Path) -> str:
    """sha256 of one file's bytes, read in chunks (an exported model zip can be gigabytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def not_promoted_because(manifest: Manifest) -> str | None:
    """Why the iteration of ``manifest`` was not promoted, or None when it was.

    Only a promoted iteration is exported (``iterseg export-model``) or analyzed with.
    """
    if manifest.promotion is None:
        return "it records no promotion decision"
    return None if manifest.promotion.promoted else manifest.promotion.reason


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape a model."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def skipped_cases(converted: Sequence[str], predictions_folder: Path) -> list[SkippedCase]:
    """The cases the iteration left out: conversion's, of every snapshot it trained on, then prediction's.

    Parameters
    ----------
    converted
        The converted folders of the snapshots the iteration trained on (``Assembled.converted``;
        empty in records written before cases could be skipped).
    predictions_folder
        The iteration's results folder, holding ``skipped_predictions.json``.

    Returns
    -------
    list of SkippedCase
        Conversion's skipped cases in snapshot order, then prediction's.

    """
    found = [c for folder in converted for c in read_skipped(Path(folder) / SKIPPED_FILE)]
    return found + read_skipped(predictions_folder / SKIPPED_PREDICTIONS_FILE)


def manifest_case(record: Mapping[str, Any]) -> dict[str, Any]:
    """One ``cases`` entry of the manifest from the case's ``assembled.json`` record."""
    r = record
    return {
        "case_id": r["case_id"],
        "patient_id": r["patient_id"],
        "split": r["split"],
        "change": r["change"],
        "image": {
            "study_uid": r["study_uid"],
            "series_uid": r["image_series_uid"],
            "sop_uids": r["image_sop_uids"],
            "files": r["image_files"],
            "content_sha256": r["image_hash"],
            "description": r.get("image_description", ""),
            "frame_of_reference": r.get("frame_of_reference", ""),
        },
        # multi-sequence cases: the series of channels 1.., and how each reached the image's grid
        "channels": [
            {**{k: v for k, v in ch.items() if k not in ("image", "hash")}, "content_sha256": ch["hash"]}
            for ch in r.get("extra_channels", [])
        ],
        "annotation": {
            "kind": r["annotation_kind"],
            "series_uid": r["annotation_series_uid"],
            "sop_uids": r["annotation_sop_uids"],
            "files": r["annotation_files"],
            "content_sha256": r["annotation_hash"],
            "snapshot": r["snapshot"],
            "series_datetime": r["annotation_datetime"],
        },
        "why": r["why"],
        "superseded": r["superseded"],
        "labels_present": r["labels_present"],
        "missing_rois": r["missing_rois"],
        "partial_labels": r["partial_labels"],
        "conversion": {"how": r["conversion"], "reused_from": r["reused_from"], "key": r["key"]},
    }


def mark_refined_predictions(
    cases: Sequence[Mapping[str, Any]], effort_cases: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, Any], ...]:
    """The manifest's cases, each annotation that refines one of our predictions marked so.

    ``refines_prediction`` (the iteration and inbox case whose predicted SEG the annotation
    supersedes, from ``annotation_effort.json``'s ``seeded_by``) is added to those cases; the
    others get ``None``. A refined prediction is a new case for the training set (``change``
    ``new``), but not new work from scratch: this is what tells them apart.
    """
    seeds = {str(c["case_id"]): c["seeded_by"] for c in effort_cases if c.get("seeded_by")}
    return tuple({**case, "refines_prediction": seeds.get(str(case["case_id"]))} for case in cases)


def fold_entry(fold: Mapping[str, Any]) -> dict[str, Any]:
    """A fold record with its ``status``: ``finished`` when its final checkpoint exists, else ``missing``."""
    finished = Path(str(fold.get("checkpoint", ""))).is_file()
    return {**fold, "status": "finished" if finished else "missing"}


def build_manifest(
    iteration: str,
    plan: Mapping[str, Any],
    plans_file: Path,
    assembled: Assembled,
    folds: Sequence[Mapping[str, Any]],
    predictions: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, Any] | None,
    config: Mapping[str, Any],
    config_sha256: str,
    roi_yaml: Path,
    parent: str | None,
    skipped: Sequence[SkippedCase] = (),
) -> Manifest:
    """Everything an iteration learned from and produced, except the promotion decision.

    Parameters
    ----------
    iteration
        The iteration's date folder.
    plan, plans_file
        The plan record (``planned.json``) and the plans JSON it names (hashed).
    assembled
        The iteration's ``assembled.json``.
    folds, predictions, metrics
        The fold records, ``predictions.json`` and ``test_metrics.json`` (None: no test set).
    config, config_sha256
        The validated workflow config and its hash.
    roi_yaml
        The ROI YAML the labels come from (hashed).
    parent
        The previous iteration's date, None for the first.
    skipped
        The cases conversion or prediction left out (see :func:`skipped_cases`).

    Returns
    -------
    Manifest
        Without ``annotation_effort`` and ``promotion``: the promote step adds them.

    """
    return Manifest(
        iteration=iteration,
        dataset_name=assembled.dataset_name,
        parent={"iteration": parent, "checkpoints": {str(f["fold"]): f.get("pretrained") for f in folds}},
        summary=dict(assembled.summary),
        labels=dict(assembled.labels),
        test_set=dict(assembled.test_set),
        cases=tuple(manifest_case(r) for r in assembled.records),
        config=dict(config),
        config_sha256=config_sha256,
        roi_yaml={"path": str(roi_yaml), "sha256": file_sha256(roi_yaml)},
        versions=package_versions(),
        plans={**plan, "file": str(plans_file), "sha256": file_sha256(plans_file)},
        folds=tuple(fold_entry(f) for f in folds),
        test_metrics=dict(metrics or {}),
        predictions=tuple(dict(p) for p in predictions),
        skipped=tuple(skipped),
    )
