"""Workflow settings: the config dict validated against the JSON schema, as frozen dataclasses."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from iterseg.cluster.gpus import DEFAULT_LOCK_DIR
from iterseg.convert.channels import Channel, parse_channels
from iterseg.dicom.seg_options import DEFAULT_SEG_OPTIONS, SegOptions, SegTransferSyntax
from iterseg.errors import ConfigError
from iterseg.nnunet.ensemble import DEFAULT_INFERENCE, Inference
from iterseg.nnunet.plan import DEFAULT_PLANNER, PLANNERS, planner_plans

if TYPE_CHECKING:
    from iterseg.pacs.settings import PacsSettings

logger = logging.getLogger(__name__)

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"


@dataclass(frozen=True)
class DatasetSettings:
    """Settings of one dataset (one folder under rawdata)."""

    name: str
    dataset_id: int
    roi_yaml: Path
    modality: str
    mask_saving_strategy: str
    allow_unrefined_predictions: bool
    missing_roi: str = "ignore"
    duplicate_annotations: str = "error"
    test_fraction: float = 0.2
    test_patients: tuple[str, ...] = ()
    test_seed: int = 0
    nsd_tolerance_mm: float = 2.0
    seg: SegOptions = DEFAULT_SEG_OPTIONS
    pacs: PacsSettings | None = None  # None: the dataset has no PACS
    channels: tuple[Channel, ...] = ()  # multi-sequence cases; empty: one series per case


@dataclass(frozen=True)
class Schedule:
    """Trainer class and schedule of one kind of iteration (first, or fine-tuning)."""

    trainer: str
    epochs: int | None = None
    initial_lr: float | None = None


@dataclass(frozen=True)
class NnunetSettings:
    """How nnU-Net plans, trains and predicts."""

    configuration: str
    trainer: str
    plans: str
    folds: tuple[str, ...]
    device: str
    train_on: str
    preprocess_processes: int
    train_mem_mb: int
    train_runtime: int
    first_iteration: Schedule | None = None
    fine_tuning: Schedule | None = None
    plans_overrides: Mapping[str, Any] | None = None
    gpus: tuple[str, ...] | None = None  # None: detect at start-up ("auto")
    gpu_lock_dir: Path = DEFAULT_LOCK_DIR
    gpus_per_fold: int = 1
    inference: Inference = DEFAULT_INFERENCE
    planner: str = DEFAULT_PLANNER  # nnU-Net's experiment planner of the first iteration

    def schedule(self, first: bool) -> Schedule:
        """The trainer settings of the first iteration (``first``) or of fine-tuning ones."""
        chosen = self.first_iteration if first else self.fine_tuning
        return chosen or Schedule(self.trainer)


@dataclass(frozen=True)
class Settings:
    """The whole validated configuration."""

    rawdata: Path
    inbox: str
    datasets: Mapping[str, DatasetSettings]
    nnunet: NnunetSettings
    max_dice_drop: float | None = 0.02
    on_bad_case: str = "skip"
    raw: Mapping[str, Any] | None = None  # the validated config with defaults, for the manifest


def _validator(schema: dict[str, Any]) -> Any:
    from jsonschema import Draft202012Validator, validators

    base = Draft202012Validator
    validate_properties = base.VALIDATORS["properties"]

    def set_defaults(validator: Any, properties: Any, instance: Any, subschema: Any) -> Any:
        if isinstance(instance, dict):
            for key, prop in properties.items():
                if "default" in prop:
                    instance.setdefault(key, prop["default"])
        yield from validate_properties(validator, properties, instance, subschema)

    return validators.extend(base, {"properties": set_defaults})(schema)


def validate_config(config: dict[str, Any], schema_path: Path = SCHEMA_PATH) -> dict[str, Any]:
    """Validate ``config`` in place against the schema, filling defaults.

    Raises
    ------
    ConfigError
        One message per problem, each naming the offending key and what the schema allows.

    """
    schema = yaml.safe_load(schema_path.read_text())
    errors = sorted(_validator(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for error in errors:
            where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
            lines.append(f"config key {where}: {_message(error, where)}")
        raise ConfigError(
            "invalid configuration:\n  "
            + "\n  ".join(lines)
            + f"\nSee {schema_path} for every key, its meaning and allowed values."
        )
    return config


def _message(error: Any, where: str) -> str:
    """The schema's message, except where it would repeat a secret (a URL with user:password@)."""
    if where.endswith(".pacs.url") and error.validator == "pattern":
        return (
            "must be http(s)://host[:port]/path with no user or password in it (the value is not "
            "repeated here); put credentials in environment variables named by pacs.auth."
        )
    return str(error.message)


def _check_combinations(config: Mapping[str, Any]) -> None:
    """Settings the schema cannot check alone: keys that only work together."""
    nn = config["nnunet"]
    for name, ds in config["datasets"].items():
        if ds["missing_roi"] == "ignore" and ds["mask_saving_strategy"] == "region_mask":
            raise ConfigError(
                f"config key datasets.{name}: missing_roi ignore needs mask_saving_strategy sparse_mask or "
                "label_image (nnU-Net's ignore label is a label value, not a region); choose drop or error."
            )
    if nn["gpus_per_fold"] <= 1:
        return
    if nn["device"] != "cuda":
        raise ConfigError(
            f"config key nnunet.gpus_per_fold: {nn['gpus_per_fold']} GPUs per fold needs "
            f"nnunet.device cuda, not {nn['device']!r}; set gpus_per_fold: 1."
        )
    overridden = [
        f"nnunet.{kind}.{key}"
        for kind in ("first_iteration", "fine_tuning")
        for key in ("epochs", "initial_lr")
        if nn[kind].get(key) is not None
    ]
    if overridden:
        raise ConfigError(
            f"config key nnunet.gpus_per_fold: data-parallel training uses the trainer's own "
            f"schedule, but {', '.join(overridden)} is set; remove it (and name a trainer class "
            "with the schedule you want) or set gpus_per_fold: 1."
        )


def _dataset_settings(name: str, ds: Mapping[str, Any], config_dir: Path) -> DatasetSettings:
    from iterseg.pacs.settings import pacs_settings

    return DatasetSettings(
        name=name,
        dataset_id=int(ds["dataset_id"]),
        roi_yaml=Path(ds.get("roi_yaml") or config_dir / f"roi_{name}.yaml"),
        modality=ds["modality"],
        mask_saving_strategy=ds["mask_saving_strategy"],
        allow_unrefined_predictions=bool(ds["allow_unrefined_predictions"]),
        missing_roi=ds["missing_roi"],
        duplicate_annotations=ds["duplicate_annotations"],
        test_fraction=float(ds["test_set"]["fraction"]),
        test_patients=tuple(ds["test_set"]["patients"]),
        test_seed=int(ds["test_set"]["seed"]),
        nsd_tolerance_mm=float(ds["test_set"]["nsd_tolerance_mm"]),
        seg=SegOptions(SegTransferSyntax(ds["seg"]["transfer_syntax"]), bool(ds["seg"]["omit_empty_frames"])),
        pacs=pacs_settings(name, ds["pacs"], ds["modality"]) if "pacs" in ds else None,
        channels=parse_channels(ds.get("channels"), f"datasets.{name}.channels"),
    )


def _nnunet_settings(nn: Mapping[str, Any]) -> NnunetSettings:
    return NnunetSettings(
        configuration=nn["configuration"],
        trainer=nn["trainer"],
        plans=nn["plans"],
        folds=tuple(str(f) for f in nn["folds"]),
        device=nn["device"],
        train_on=nn["train_on"],
        preprocess_processes=int(nn["preprocess_processes"]),
        train_mem_mb=int(nn["train_mem_mb"]),
        train_runtime=int(nn["train_runtime"]),
        first_iteration=_schedule(nn["first_iteration"], nn["trainer"]),
        fine_tuning=_schedule(nn["fine_tuning"], nn["trainer"]),
        plans_overrides=dict(nn["plans_overrides"]),
        gpus=None if nn["gpus"] == "auto" else tuple(str(g) for g in nn["gpus"]),
        gpu_lock_dir=Path(nn["gpu_lock_dir"]),
        gpus_per_fold=int(nn["gpus_per_fold"]),
        inference=Inference(float(nn["inference"]["tile_step_size"]), bool(nn["inference"]["use_mirroring"])),
        planner=nn.get("planner", DEFAULT_PLANNER),
    )


def _fill_plans(nn: dict[str, Any]) -> None:
    """Set ``nnunet.plans`` in place where absent: the identifier the planner writes by default.

    Done once, where the config is read, so that planning, training, prediction and the
    recorded config all name the same plans.
    """
    planner = nn.get("planner", DEFAULT_PLANNER)
    own = planner_plans(planner)
    plans = nn.setdefault("plans", own)
    others = [name for name, default in PLANNERS.items() if default == plans and name != planner]
    if others:
        logger.warning(
            "config key nnunet.plans: %s is the plans identifier of nnU-Net's %s, but nnunet.planner is "
            "%s; its plans are written under that name. Remove nnunet.plans to use %s.",
            plans,
            others[0],
            planner,
            own,
        )


def load_settings(config: dict[str, Any], config_dir: Path = Path("config")) -> Settings:
    """Validate a snakemake ``config`` dict and return typed settings.

    ``config`` is completed in place: the schema's defaults, and ``nnunet.plans`` where absent
    (the plans identifier of ``nnunet.planner``).

    Raises
    ------
    ConfigError
        Naming each key the schema rejects, or a combination of keys that cannot work together.

    """
    validate_config(config)
    _fill_plans(config["nnunet"])
    _check_combinations(config)
    return Settings(
        rawdata=Path(config["rawdata"]),
        inbox=config["inbox"],
        datasets={name: _dataset_settings(name, ds, config_dir) for name, ds in config["datasets"].items()},
        nnunet=_nnunet_settings(config["nnunet"]),
        max_dice_drop=config["promotion"]["max_dice_drop"],
        on_bad_case=config["on_bad_case"],
        raw=json.loads(json.dumps(config, default=str)),
    )


def check_roi_yamls(settings: Settings) -> None:
    """Read every dataset's ROI YAML now, so a bad one stops the run at start-up, not in a job.

    Raises
    ------
    ConfigError
        Naming the dataset, the file and the problem (missing, not YAML, a regex that does not
        compile, an unusable label name).

    """
    from iterseg.roi import load_roi_terms, load_roi_yaml

    for name, ds in settings.datasets.items():
        try:
            load_roi_yaml(ds.roi_yaml)
            load_roi_terms(ds.roi_yaml, warn=False)  # the export step warns about uncoded labels
        except ConfigError as exc:
            raise ConfigError(f"dataset {name}: {exc}") from None


def _schedule(data: Mapping[str, Any], default_trainer: str) -> Schedule:
    return Schedule(data.get("trainer", default_trainer), data.get("epochs"), data.get("initial_lr"))


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 of the validated config (defaults filled), key order ignored."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
