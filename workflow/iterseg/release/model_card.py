"""The model card of a shared model: built from an iteration's manifest, rendered as ``MODEL_CARD.md``.

The card (:class:`iterseg.records.ModelCard`, ``model_card.json``) travels inside the model
archive: whoever installs the model learns from it what the model was trained on, how it scored
on the frozen test set, and how to predict with it, without the project it came from.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from iterseg.errors import ModelArchiveError
from iterseg.records import Manifest, ModelCard, PlanRecord

logger = logging.getLogger(__name__)

NNUNET_ZIP = "nnunet_model.zip"  #: the archive member holding nnU-Net's own model zip
_METRIC_KEYS = ("dice_mean", "nsd_mean", "cases")


def fold_trainer(manifest: Manifest, where: str) -> str:
    """The one trainer every fold of ``manifest`` was trained with; ``where`` names the manifest."""
    trainers = sorted({str(fold["trainer"]) for fold in manifest.folds})
    if len(trainers) != 1:
        raise ModelArchiveError(
            f"{where}: the folds were trained with {trainers or 'no trainer'}, not one trainer; "
            "an exported model is one nnU-Net trainer's folds: re-run the iteration with one trainer."
        )
    return trainers[0]


def _test_metrics(test_metrics: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per label (and ``mean``) the test-set Dice and NSD means and the cases scored."""
    summary: Mapping[str, Mapping[str, Any]] = test_metrics.get("summary", {})
    return {label: {k: row[k] for k in _METRIC_KEYS if k in row} for label, row in summary.items()}


def build_model_card(
    *,
    dataset: str,
    manifest: Manifest,
    manifest_path: str,
    plan: PlanRecord,
    nnunet_zip_sha256: str,
    roi_yaml_sha256: str,
) -> ModelCard:
    """The card of a promoted iteration, from its manifest and plan record.

    Parameters
    ----------
    dataset
        The dataset's name in the workflow config (``datasets.<name>``).
    manifest, manifest_path
        The iteration's manifest and where it was read (named in errors).
    plan
        The iteration's ``planned.json``: what prediction needs of the plans.
    nnunet_zip_sha256, roi_yaml_sha256
        Checksums of the archive's nnU-Net zip and ROI YAML, checked again on install.

    """
    train = [case for case in manifest.cases if case.get("split") == "train"]
    config: Mapping[str, Any] = manifest.config
    nnunet: Mapping[str, Any] = config.get("nnunet", {})
    promotion = manifest.promotion
    return ModelCard(
        dataset=dataset,
        iteration=manifest.iteration,
        dataset_name=manifest.dataset_name,
        modality=str(config.get("datasets", {}).get(dataset, {}).get("modality", "CT")),
        labels={str(k): int(v) for k, v in manifest.labels.items()},
        training_cases=len(train),
        training_case_ids=tuple(sorted(str(case["case_id"]) for case in train)),
        training_patients=tuple(sorted({str(case["patient_id"]) for case in train})),
        test_patients=tuple(str(p) for p in manifest.test_set.get("patients", [])),
        test_metrics=_test_metrics(manifest.test_metrics),
        nsd_tolerance_mm=manifest.test_metrics.get("tolerance_mm"),
        plans=plan.plans,
        configuration=plan.configuration,
        trainer=fold_trainer(manifest, manifest_path),
        folds=tuple(str(fold["fold"]) for fold in manifest.folds),
        planner=manifest.plans.get("planner"),
        inference=dict(nnunet.get("inference", {})),
        versions=dict(manifest.versions),
        promotion_reason=promotion.reason if promotion else "",
        nnunet_zip=NNUNET_ZIP,
        nnunet_zip_sha256=nnunet_zip_sha256,
        roi_yaml_sha256=roi_yaml_sha256,
        plan_record=plan,
        exported=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        channels={
            str(k): list(v)
            for k, v in config.get("datasets", {}).get(dataset, {}).get("channels", {}).items()
        },
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def _number(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "-" if value is None else str(value)


def _test_section(card: ModelCard) -> list[str]:
    if not card.test_metrics:
        return ["## Test set", "", "None: this dataset holds out no test set, so the model is unscored.", ""]
    rows = [
        [label, _number(row.get("dice_mean")), _number(row.get("nsd_mean")), _number(row.get("cases"))]
        for label, row in card.test_metrics.items()
    ]
    return [
        "## Test set",
        "",
        f"Frozen test set of {len(card.test_patients)} patient(s) never trained on "
        f"({', '.join(card.test_patients)}); NSD at {_number(card.nsd_tolerance_mm)} mm.",
        "",
        *_table(["label", "Dice (mean)", "NSD (mean)", "cases"], rows),
        "",
    ]


def render_model_card(card: ModelCard) -> str:
    """``MODEL_CARD.md``: the card for people, in Markdown."""
    labels = [[value, name] for name, value in sorted(card.labels.items(), key=lambda item: item[1])]
    lines = [
        f"# {card.dataset}: segmentation model of iteration {card.iteration}",
        "",
        f"nnU-Net v2 model `{card.dataset_name}`: trainer `{card.trainer}`, plans `{card.plans}` "
        f"(planner `{card.planner or 'not recorded'}`), configuration `{card.configuration}`, "
        f"{card.modality} images, ensemble of fold(s) {', '.join(card.folds)}. Exported {card.exported}.",
        "",
        f"Promoted: {card.promotion_reason or 'yes'}.",
        "",
        "## Labels",
        "",
        *_table(["value", "label"], labels),
        "",
        *_test_section(card),
        "## Training data",
        "",
        f"{card.training_cases} case(s) of {len(card.training_patients)} patient(s): "
        f"{', '.join(card.training_patients)}.",
        "",
        "## Use",
        "",
        "```bash",
        "iterseg install-model <this zip> --into data/models",
        f"iterseg predict --model data/models/{card.dataset}/{card.iteration} --inbox <folder of cases> "
        "--out <results folder> --output <results folder>/predicted.json",
        "```",
        "",
        "`predict` runs on the GPU by default (`--device cpu` without one) and reads "
        f"{card.modality} series (the model's modality) from each case folder of the inbox.",
        "",
        "## Versions",
        "",
        *_table(["package", "version"], sorted(card.versions.items())),
        "",
        f"nnU-Net zip `{card.nnunet_zip}` sha256 `{card.nnunet_zip_sha256}`; ROI YAML sha256 "
        f"`{card.roi_yaml_sha256}`.",
        "",
    ]
    return "\n".join(lines)
