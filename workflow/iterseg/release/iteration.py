"""The promote step (``results_promote``): an iteration's manifest, its gate, ``latest``, ``iteration.json``.

Reads the records the iteration's steps wrote, builds the manifest
(:mod:`iterseg.release.manifest`), gates it against ``latest`` (:mod:`iterseg.release.gate`),
applies the verdict once (:func:`iterseg.release.promote.settle`) and writes the manifest; the
returned :class:`~iterseg.records.IterationSummary` is the step's output, ``iteration.json``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from iterseg.config import config_hash
from iterseg.paths import plans_file
from iterseg.records import (
    AnnotationEffort,
    Assembled,
    HoldoutMetrics,
    IterationSummary,
    Manifest,
    PlanRecord,
    Predictions,
    TrainedRecord,
    read_json,
    read_record,
    write_record,
)
from iterseg.release.gate import GateDecision, decide
from iterseg.release.manifest import MANIFEST_FILE, build_manifest, mark_refined_predictions, skipped_cases
from iterseg.release.promote import current_latest, settle

logger = logging.getLogger(__name__)


def release_iteration(
    *,
    results: Path,
    iteration: str,
    plan_record: Path,
    assembled: Path,
    fold_records: Sequence[Path],
    predictions: Path,
    test_metrics: Path,
    roi_yaml: Path,
    config: Mapping[str, Any],
    previous: Path | None = None,
    effort: Path | None = None,
    max_dice_drop: float | None = 0.02,
) -> IterationSummary:
    """Write ``results/<iteration>/manifest.json``, gate the iteration, move ``latest`` if it passes.

    Parameters
    ----------
    results
        ``results/<dataset>``.
    iteration
        The date folder under ``results``.
    plan_record, assembled, fold_records
        The iteration's ``planned.json``, ``assembled.json`` and ``trained/fold_N.json``.
    predictions, test_metrics
        The published ``predictions.json`` (its folder holds ``skipped_predictions.json``) and
        ``test_metrics.json``.
    roi_yaml
        The dataset's ROI YAML (hashed into the manifest).
    config
        The validated workflow config.
    previous
        The previous iteration's ``iteration.json``; None for the first iteration.
    effort
        The iteration's ``annotation_effort.json``, if measured.
    max_dice_drop
        Allowed drop of test mean Dice against ``latest``; None switches the Dice gate off.

    Returns
    -------
    IterationSummary
        The step's record (``iteration.json``): whether the iteration was promoted, and why.

    """
    # 61-80 lines only for its parameter docs: the body is read, build, gate, settle, write
    folds = [read_record(f, TrainedRecord).to_json() for f in fold_records]
    manifest = _manifest(
        iteration, plan_record, assembled, folds, predictions, test_metrics, roi_yaml, config, previous
    )
    if effort is not None:
        measured = read_record(effort, AnnotationEffort)
        manifest = dataclasses.replace(
            manifest,
            cases=mark_refined_predictions(manifest.cases, measured.cases),
            annotation_effort={"summary": measured.summary, "file": str(effort)},
        )
    decision = _gate(results, folds, manifest, max_dice_drop)
    promotion = settle(results, iteration, decision.promote, decision.reason)
    path = results / iteration / MANIFEST_FILE
    write_record(path, dataclasses.replace(manifest, promotion=promotion))
    return IterationSummary(
        iteration=iteration,
        dataset_name=manifest.plans["dataset_name"],  # the plan record's, as iteration.json always had
        training_cases=manifest.summary["train"],
        promoted=promotion.promoted,
        reason=promotion.reason,
        manifest=str(path),
    )


def _manifest(
    iteration: str,
    plan_record: Path,
    assembled_json: Path,
    folds: Sequence[Mapping[str, Any]],
    predictions: Path,
    test_metrics: Path,
    roi_yaml: Path,
    config: Mapping[str, Any],
    previous: Path | None,
) -> Manifest:
    """The manifest from the iteration's records, before the effort and the gate are added."""
    plan = read_record(plan_record, PlanRecord).to_json()
    assembled = read_record(assembled_json, Assembled)
    parent = read_record(previous, IterationSummary).iteration if previous is not None else None
    return build_manifest(
        iteration,
        plan,
        plans_file(plan_record.parent, plan["dataset_name"], plan["plans"]),
        assembled,
        folds,
        read_record(predictions, Predictions).to_json(),
        read_record(test_metrics, HoldoutMetrics).to_json(),
        config,
        config_hash(config),
        roi_yaml,
        parent,
        skipped_cases(assembled.converted, predictions.parent),
    )


def _gate(
    results: Path, folds: Sequence[Mapping[str, Any]], manifest: Manifest, max_dice_drop: float | None
) -> GateDecision:
    """The gate's verdict on ``manifest`` against the manifest of the iteration ``latest`` points at."""
    latest = current_latest(results)
    latest_manifest = None
    if latest is not None and (results / latest / MANIFEST_FILE).is_file():
        # a plain mapping: the gate needs only its test metrics, and older manifests lack some keys
        latest_manifest = read_json(results / latest / MANIFEST_FILE)
    return decide(folds, manifest.test_metrics, latest, latest_manifest, max_dice_drop)
