"""Plan and preprocess an iteration's dataset: plan once, then transfer the first iteration's plans.

Weights only transfer between identical architectures, so every later iteration reuses the
first iteration's plans (nnU-Net's move_plans_between_datasets) instead of planning anew. The
first iteration is planned by the experiment planner ``nnunet.planner`` names (:data:`PLANNERS`).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from iterseg.errors import ConfigError, PlanTransferError
from iterseg.nnunet.env import configure_nnunet
from iterseg.nnunet.plans_override import PlansOverrides, apply_plans_overrides, count_parameters
from iterseg.paths import nnunet_roots, plans_file, preprocessed_dir
from iterseg.records import PlanRecord, write_json

__all__ = ["DEFAULT_PLANNER", "PLANNERS", "PlanRecord", "plan_dataset", "planner_plans"]

logger = logging.getLogger(__name__)

#: nnU-Net's experiment planners that ``nnunet.planner`` may name, each with the plans identifier
#: it writes unless given another one (the ``plans_name`` default of its class).
PLANNERS: Mapping[str, str] = MappingProxyType(
    {
        "ExperimentPlanner": "nnUNetPlans",
        "nnUNetPlannerResEncM": "nnUNetResEncUNetMPlans",
        "nnUNetPlannerResEncL": "nnUNetResEncUNetLPlans",
        "nnUNetPlannerResEncXL": "nnUNetResEncUNetXLPlans",
    }
)
#: nnU-Net's classic planner (plain-convolution U-Net): what iterseg planned with before the key existed.
DEFAULT_PLANNER = "ExperimentPlanner"


def planner_plans(planner: str) -> str:
    """The plans identifier nnU-Net's ``planner`` writes by default, e.g. ``nnUNetResEncUNetMPlans``.

    Raises
    ------
    ConfigError
        If ``planner`` is not one of :data:`PLANNERS`, listing them.

    """
    if planner not in PLANNERS:
        raise ConfigError(
            f"config key nnunet.planner: {planner!r} is not an experiment planner iterseg offers; "
            f"choose one of {', '.join(PLANNERS)}."
        )
    return PLANNERS[planner]


def _dataset_id(name: str) -> int:
    return int(name[len("Dataset") : len("Dataset") + 3])


def _raw_dataset_json(work: Path, dataset_name: str) -> Path:
    return nnunet_roots(work)["nnUNet_raw"] / dataset_name / "dataset.json"


def _check_transferable(
    source: dict[str, Any],
    target_json: dict[str, Any],
    configuration: str,
    source_json: dict[str, Any],
    source_name: str,
    target_name: str,
) -> None:
    """Fail before training when the first iteration's weights could not be reused."""
    if configuration not in source["configurations"]:
        raise PlanTransferError(
            f"{source_name} was planned without configuration {configuration!r} "
            f"(has {sorted(source['configurations'])}). Keep nnunet.configuration as in the first "
            "iteration, or start a new dataset (new name and dataset_id) to plan again."
        )
    if source_json.get("channel_names") != target_json.get("channel_names"):
        raise PlanTransferError(
            f"{target_name}: input channels {target_json.get('channel_names')} differ from the first "
            f"iteration's {source_json.get('channel_names')}; weights cannot transfer. Keep the dataset's "
            "modality unchanged, or start a new dataset."
        )

    def outputs(dataset_json: dict[str, Any]) -> dict[str, Any]:
        # nnU-Net's ignore label (partially labelled cases) is not an output of the network.
        return {k: v for k, v in (dataset_json.get("labels") or {}).items() if k != "ignore"}

    if outputs(source_json) != outputs(target_json):
        logger.warning(
            "%s: labels %s differ from the first iteration's %s; the segmentation head will be "
            "re-initialised by nnU-Net",
            target_name,
            target_json.get("labels"),
            source_json.get("labels"),
        )


def _plan_here(
    work: Path,
    dataset_name: str,
    configuration: str,
    plans: str,
    planner: str,
    overrides: dict[str, Any] | None,
) -> None:
    """First iteration: nnU-Net's ``planner`` plans the dataset as ``plans``; the overrides are applied."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiments

    # Under the planner's own identifier nnU-Net plans exactly as nnUNetv2_plan_experiment -pl does.
    rename = None if plans == planner_plans(planner) else plans
    plan_experiments(
        [_dataset_id(dataset_name)], experiment_planner_class_name=planner, overwrite_plans_name=rename
    )
    logger.info("%s planned by %s as plans %s", dataset_name, planner, plans)
    spec = PlansOverrides.from_mapping(overrides)
    if spec.is_empty():
        return
    target = plans_file(work, dataset_name, plans)
    planned = json.loads(target.read_text())
    changed = apply_plans_overrides(planned, configuration, spec, "config nnunet.plans_overrides")
    # Build the changed network now: a plan nnU-Net cannot build is refused before preprocessing.
    count_parameters(changed, configuration, json.loads(_raw_dataset_json(work, dataset_name).read_text()))
    write_json(target, changed, indent=2, end="")
    logger.info("plans overrides %s written to %s", overrides, target)


def _transfer_plans(
    work: Path, dataset_name: str, configuration: str, plans: str, source_work: Path, source_name: str
) -> None:
    """Later iterations: the first iteration's plans, checked and moved onto this dataset."""
    from nnunetv2.experiment_planning.plans_for_pretraining.move_plans_between_datasets import (
        move_plans_between_datasets,
    )

    source_plans_file = plans_file(source_work, source_name, plans)
    if not source_plans_file.is_file():
        raise PlanTransferError(
            f"{source_plans_file}: plans of the first iteration are missing; re-run the first "
            "iteration (snakemake plans it) before later ones."
        )
    source_plans = json.loads(source_plans_file.read_text())
    source_json = json.loads(_raw_dataset_json(source_work, source_name).read_text())
    target_json = json.loads(_raw_dataset_json(work, dataset_name).read_text())
    _check_transferable(source_plans, target_json, configuration, source_json, source_name, dataset_name)
    # move_plans_between_datasets reads source and target from one nnUNet_preprocessed root;
    # give it a reference copy of the first iteration's plans in this iteration's root.
    reference = preprocessed_dir(work, source_name)
    reference.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source_plans_file, reference / source_plans_file.name)
    move_plans_between_datasets(_dataset_id(source_name), _dataset_id(dataset_name), plans, plans)
    logger.info("transferred plans %s of %s to %s", plans, source_name, dataset_name)


def _planned_record(
    work: Path,
    dataset_name: str,
    configuration: str,
    plans: str,
    planner: str,
    plans_source: str | None,
    overrides: dict[str, Any] | None,
) -> PlanRecord:
    """The record of the preprocessed plans: the configuration's network, and its size."""
    plan = json.loads(plans_file(work, dataset_name, plans).read_text())
    if configuration not in plan["configurations"]:
        raise PlanTransferError(
            f"nnU-Net did not plan configuration {configuration!r} for {dataset_name} "
            f"(planned: {sorted(plan['configurations'])}); choose one of those in nnunet.configuration."
        )
    conf = plan["configurations"][configuration]
    dataset_json = json.loads((preprocessed_dir(work, dataset_name) / "dataset.json").read_text())
    parameters = count_parameters(plan, configuration, dataset_json)
    logger.info("%s %s: network of %d parameters", dataset_name, configuration, parameters)
    return PlanRecord(
        dataset_id=_dataset_id(dataset_name),
        dataset_name=dataset_name,
        plans=plans,
        configuration=configuration,
        plans_source=plans_source,
        architecture=conf["architecture"],
        patch_size=list(conf["patch_size"]),
        spacing=list(conf["spacing"]),
        batch_size=conf.get("batch_size"),
        overrides=overrides or None,
        parameters=parameters,
        planner=planner,
    )


def _preprocess(work: Path, dataset_name: str, configuration: str, plans: str, processes: int) -> None:
    """nnU-Net's preprocessing of the one configuration trained, with the plans ``plans``."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess

    # nnU-Net's preprocess expects dataset.json next to the plans; only planning copies it.
    shutil.copy2(_raw_dataset_json(work, dataset_name), preprocessed_dir(work, dataset_name) / "dataset.json")
    preprocess(
        [_dataset_id(dataset_name)],
        plans_identifier=plans,
        configurations=(configuration,),
        num_processes=(processes,),
    )


def plan_dataset(
    work: Path,
    dataset_name: str,
    configuration: str,
    plans: str,
    processes: int,
    source_work: Path | None = None,
    source_name: str | None = None,
    overrides: dict[str, Any] | None = None,
    planner: str = DEFAULT_PLANNER,
) -> PlanRecord:
    """Fingerprint, plan (or transfer plans) and preprocess one iteration's dataset.

    Parameters
    ----------
    work
        The iteration folder holding nnUNet_raw/nnUNet_preprocessed/nnUNet_results.
    dataset_name
        ``DatasetNNN_...`` in ``work/nnUNet_raw``.
    configuration
        nnU-Net configuration to preprocess (others are not needed).
    plans
        Plans identifier.
    processes
        Worker processes for fingerprinting and preprocessing.
    source_work, source_name
        The first iteration's folder and dataset; when given, its plans are reused.
    overrides
        First iteration only: changes to the planned configuration (``nnunet.plans_overrides``),
        validated and written into the plans before preprocessing.
    planner
        The nnU-Net experiment planner of the first iteration (``nnunet.planner``, one of
        :data:`PLANNERS`); of a later iteration, the one that made the transferred plans (recorded).

    Raises
    ------
    PlanTransferError
        If the first iteration's plans are missing or incompatible with this dataset.
    PlanOverrideError
        If an override does not fit nnU-Net's plan (checked before anything is preprocessed).
    ConfigError
        If ``planner`` is not one of :data:`PLANNERS`.

    """
    planner_plans(planner)  # an unknown planner fails before nnU-Net starts
    configure_nnunet(work, threads=processes)
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints

    target_pre = preprocessed_dir(work, dataset_name)
    if target_pre.exists():
        shutil.rmtree(target_pre)  # stale preprocessed data of an earlier attempt
    extract_fingerprints([_dataset_id(dataset_name)], num_processes=processes, check_dataset_integrity=True)
    if source_work is None or source_name is None:
        _plan_here(work, dataset_name, configuration, plans, planner, overrides)
        plans_source = None
    else:
        _transfer_plans(work, dataset_name, configuration, plans, source_work, source_name)
        plans_source = source_name
    _preprocess(work, dataset_name, configuration, plans, processes)
    return _planned_record(work, dataset_name, configuration, plans, planner, plans_source, overrides)
