"""``results/<dataset>/<date>/manifest.json``: what an iteration learned from, and whether it shipped.

One file answers a reviewer's questions about a model: which DICOM files (by UID and content
hash) and which annotation of each series it trained on and why, which patients were held
out, with which config, ROI YAML, plans and packages, from which parent checkpoint, how each
fold went, how it scored on the test set, and why it was or was not promoted.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True)
class GateDecision:
    """Whether an iteration may become ``latest``, and why."""

    promote: bool
    reason: str


def file_sha256(path: Path) -> str:
    """sha256 of one file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape a model."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def mean_dice(metrics: dict[str, Any] | None) -> float | None:
    """The test set's mean Dice over labels, or None without a test set."""
    if not metrics:
        return None
    value = metrics.get("summary", {}).get("mean", {}).get("dice_mean")
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def decide(
    folds: list[dict[str, Any]],
    metrics: dict[str, Any] | None,
    latest: str | None,
    latest_manifest: dict[str, Any] | None,
    max_dice_drop: float | None,
) -> GateDecision:
    """The promotion gate: every fold finished, and test mean Dice within ``max_dice_drop`` of ``latest``.

    Parameters
    ----------
    folds
        The fold records; each must name an existing final checkpoint.
    metrics
        This iteration's test metrics (None or empty without a test set).
    latest, latest_manifest
        The iteration ``latest`` points at and its manifest (None if none yet).
    max_dice_drop
        Allowed drop of the mean Dice; None disables the Dice gate, negative demands a gain.

    """
    missing = [str(f.get("fold")) for f in folds if not Path(str(f.get("checkpoint", ""))).is_file()]
    if missing or not folds:
        return GateDecision(False, f"fold(s) {', '.join(missing) or 'none'} have no final checkpoint")
    dice = mean_dice(metrics)
    if max_dice_drop is None:
        return GateDecision(True, "all folds finished; Dice gate off (promotion.max_dice_drop: null)")
    if dice is None:
        return GateDecision(True, "all folds finished; no test set, so no Dice gate")
    before = mean_dice((latest_manifest or {}).get("test_metrics"))
    if latest is None or before is None:
        return GateDecision(
            True, f"all folds finished; test mean Dice {dice:.3f}; no earlier scored `latest`"
        )
    if dice >= before - max_dice_drop:
        return GateDecision(
            True,
            f"test mean Dice {dice:.3f} vs {before:.3f} of latest {latest} (allowed drop {max_dice_drop:g})",
        )
    return GateDecision(
        False,
        f"test mean Dice {dice:.3f} is {before - dice:.3f} below {before:.3f} of latest {latest} "
        f"(allowed drop {max_dice_drop:g}); latest stays on {latest}",
    )


def skipped_cases(assembled: Mapping[str, Any], predictions_folder: Path) -> list[SkippedCase]:
    """The cases the iteration left out: conversion's, of every snapshot it trained on, then prediction's.

    Parameters
    ----------
    assembled
        The iteration's ``assembled.json``; its ``converted`` lists the snapshots' converted
        folders (absent in records written before cases could be skipped: none then).
    predictions_folder
        The iteration's results folder, holding ``skipped_predictions.json``.

    """
    found = [
        c for folder in assembled.get("converted", []) for c in read_skipped(Path(folder) / SKIPPED_FILE)
    ]
    return found + read_skipped(predictions_folder / SKIPPED_PREDICTIONS_FILE)


def build_manifest(
    iteration: str,
    plan: dict[str, Any],
    plans_file: Path,
    assembled: dict[str, Any],
    folds: list[dict[str, Any]],
    predictions: list[dict[str, Any]],
    metrics: dict[str, Any] | None,
    config: dict[str, Any],
    config_sha256: str,
    roi_yaml: Path,
    parent: str | None,
    skipped: Sequence[SkippedCase] = (),
) -> dict[str, Any]:
    """Everything an iteration learned from and produced, except the promotion decision.

    ``skipped``: the cases conversion or prediction left out (see :func:`skipped_cases`).
    """
    cases = [
        {
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
            },
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
        for r in assembled["records"]
    ]
    return {
        "iteration": iteration,
        "dataset_name": assembled["dataset_name"],
        "parent": {
            "iteration": parent,
            "checkpoints": {str(f["fold"]): f.get("pretrained") for f in folds},
        },
        "summary": assembled["summary"],
        "labels": assembled["labels"],
        "test_set": assembled["test_set"],
        "cases": cases,
        "config": config,
        "config_sha256": config_sha256,
        "roi_yaml": {"path": str(roi_yaml), "sha256": file_sha256(roi_yaml)},
        "versions": package_versions(),
        "plans": {
            **plan,
            "file": str(plans_file),
            "sha256": file_sha256(plans_file),
        },
        "folds": [
            {**f, "status": "finished" if Path(str(f.get("checkpoint", ""))).is_file() else "missing"}
            for f in folds
        ],
        "test_metrics": metrics or {},
        "predictions": predictions,
        "skipped": [asdict(c) for c in skipped],
    }
