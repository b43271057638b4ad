"""The JSON records steps pass to each other, one frozen dataclass each, read and written here.

Every record goes through :func:`write_record` / :func:`read_record` (or :func:`write_json` /
:func:`read_json` for a plain list or mapping): strict JSON (``NaN`` and infinities are written
as ``null``, never as the non-standard tokens Python's ``json`` emits by default), written to a
temporary file beside the target and renamed into place, so a reader never sees half a record.

A record type is a frozen dataclass with ``to_json()`` (a JSON-ready value) and a
``from_json(data)`` classmethod; the sections below group them by the step that writes them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, TypeVar, cast

from iterseg.errors import IterSegError
from iterseg.paths import partial_path

__all__ = [
    "AnalysisRecord",
    "AnnotationEffort",
    "Assembled",
    "ConversionCheck",
    "ConvertedCase",
    "ConvertedCases",
    "ExcludedAnnotation",
    "ExcludedAnnotations",
    "FieldsRecord",
    "HoldoutMetrics",
    "HoldoutScores",
    "IterationSummary",
    "LatestMove",
    "ListRecord",
    "Manifest",
    "ModelCard",
    "PlanRecord",
    "PredictedRecord",
    "Prediction",
    "Predictions",
    "Promotion",
    "Record",
    "RecordError",
    "SkippedCase",
    "SkippedCases",
    "SnapshotFiles",
    "TrainedRecord",
    "append_history",
    "json_ready",
    "plain_fields",
    "read_history",
    "read_json",
    "read_record",
    "write_json",
    "write_record",
]


class RecordError(IterSegError):
    """A step record is missing, not strict JSON, or not the shape its reader expects."""


class Record(Protocol):
    """What :func:`write_record` and :func:`read_record` need of a record type."""

    def to_json(self) -> Any:
        """The record as a JSON-ready value."""
        ...

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """The record from the value :meth:`to_json` produced."""
        ...


R = TypeVar("R", bound=Record)


def json_ready(value: Any) -> Any:
    """``value`` with dataclasses, tuples, paths and numpy scalars made JSON-ready; nan -> ``None``."""
    if is_dataclass(value) and not isinstance(value, type):
        to_json = getattr(value, "to_json", None)
        if callable(to_json):
            return json_ready(to_json())
        return {f.name: json_ready(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item) and type(value).__module__ == "numpy":
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, data: Any, *, indent: int | None = 2, end: str = "\n") -> None:
    """Write ``data`` to ``path`` as strict JSON, atomically (a temporary file beside it, then a rename).

    ``end`` follows the JSON text: a newline for our records; ``""`` keeps the bytes of a file
    rewritten in nnU-Net's folders as they were (the plans' hash keys fold resumption and the manifest).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    try:
        partial.write_text(json.dumps(json_ready(data), indent=indent, allow_nan=False) + end)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def read_json(path: Path) -> Any:
    """The strict-JSON value in ``path``; :class:`RecordError` naming the file when it is not one."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RecordError(f"{path}: missing; run the step that writes it (snakemake does so).") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise RecordError(
            f"{path}: not a valid JSON record ({exc}); delete it so that its step writes it again."
        ) from None


def write_record(path: Path, record: Record) -> None:
    """Write a step record (a frozen dataclass of this module) to ``path``, atomically."""
    write_json(path, record.to_json())


def read_record(path: Path, kind: type[R]) -> R:
    """Read the record of type ``kind`` from ``path``; :class:`RecordError` when it is not one."""
    data = read_json(path)
    try:
        return kind.from_json(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise RecordError(
            f"{path}: not a {kind.__name__} record ({type(exc).__name__}: {exc}); "
            "delete it so that its step writes it again."
        ) from None


def plain_fields(record: Any) -> dict[str, Any]:
    """A flat dataclass as a dict (for records whose JSON is their fields)."""
    return asdict(record)


def _a_list(data: Any) -> list[Any]:
    if not isinstance(data, list):
        raise TypeError(f"a {type(data).__name__}, not a list")
    return data


class FieldsRecord:
    """Mixin of a flat record dataclass whose JSON is its fields, in declaration order."""

    def to_json(self) -> dict[str, Any]:
        """The fields, in declaration order."""
        return asdict(cast(Any, self))

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """The record from a mapping of its fields."""
        return cast(Self, cast(Any, cls)(**data))


class ListRecord:
    """Mixin of a record dataclass whose JSON is a list of ``ITEM`` records, held in its only field."""

    ITEM: ClassVar[type[Any]]

    def to_json(self) -> list[Any]:
        """A JSON list of the items."""
        (items,) = fields(cast(Any, self))
        return [item.to_json() for item in getattr(self, items.name)]

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """The record from a JSON list of items."""
        return cast(Self, cast(Any, cls)(tuple(cls.ITEM.from_json(item) for item in _a_list(data))))


# --- convert: converted/cases.json, excluded.json, check.json, skipped.json, assembled.json ---
# (and converted/snapshot_files.json, and the prediction's skipped_predictions.json: a SkippedCases)


@dataclass(frozen=True)
class ConvertedCase(FieldsRecord):
    """One annotated image series of one snapshot, converted to NIfTI (or reused): a cases.json entry."""

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
    empty_labels: list[str] = field(default_factory=list)  # drawn (declared) but holding no voxel
    key: str = ""  # content of image + annotation + conversion settings
    conversion: str = "converted"  # or "reused"
    reused_from: str | None = None  # snapshot date whose NIfTI was reused
    # channels after the first (``image``): {"channel", "index", "image", source and resampling}
    extra_channels: list[dict[str, Any]] = field(default_factory=list)
    # of the image series: what multi-sequence channels are matched by
    image_description: str = ""
    image_protocol: str = ""
    frame_of_reference: str = ""
    voxel_hash: str = ""  # of the written image's voxels and grid: the same image from another source


@dataclass(frozen=True)
class ConvertedCases(ListRecord):
    """``converted/cases.json``: the cases of one snapshot's conversion, in case-id order."""

    ITEM: ClassVar[type[ConvertedCase]] = ConvertedCase

    cases: tuple[ConvertedCase, ...]


@dataclass(frozen=True)
class ExcludedAnnotation:
    """An annotation left out of training, and why: an ``excluded.json`` entry."""

    patient_id: str
    files: tuple[str, ...]
    reason: str

    def to_json(self) -> dict[str, Any]:
        """The fields, ``files`` as a list."""
        return {"patient_id": self.patient_id, "files": list(self.files), "reason": self.reason}

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """The annotation of one ``excluded.json`` entry."""
        return cls(str(data["patient_id"]), tuple(str(f) for f in data["files"]), str(data["reason"]))


@dataclass(frozen=True)
class ExcludedAnnotations(ListRecord):
    """``converted/excluded.json``: the annotations of a snapshot left out of training."""

    ITEM: ClassVar[type[ExcludedAnnotation]] = ExcludedAnnotation

    annotations: tuple[ExcludedAnnotation, ...]


@dataclass(frozen=True)
class ConversionCheck:
    """``converted/check.json``: every converted label map compared with its annotation, ROI by ROI."""

    snapshot: str
    cases: int
    rois_compared: int
    voxels_compared: int
    mismatches: int
    rtstruct_tolerance: str
    reused_cases: int
    rois: tuple[dict[str, Any], ...]  # one row per case and ROI; reused cases' rows carry reused_from

    def to_json(self) -> dict[str, Any]:
        """The fields, ``rois`` as a list."""
        return {**plain_fields(self), "rois": [dict(r) for r in self.rois]}

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """The check of a ``check.json`` mapping."""
        return cls(**{**data, "rois": tuple(dict(r) for r in _a_list(data["rois"]))})


@dataclass(frozen=True)
class SkippedCase(FieldsRecord):
    """One case left out of a step (``iterseg.skipped``): a skipped.json entry."""

    stage: str  # an iterseg.skipped.Stage
    where: str  # the snapshot folder name, or the inbox folder
    case: str  # the case id, or the folder / file it would have become
    patient_id: str
    file: str  # the file (or folder) at fault
    message: str  # one line: the file, the cause and the fix


@dataclass(frozen=True)
class SkippedCases(ListRecord):
    """``converted/skipped.json`` and ``skipped_predictions.json``: the cases a step left out."""

    ITEM: ClassVar[type[SkippedCase]] = SkippedCase

    cases: tuple[SkippedCase, ...]


@dataclass(frozen=True)
class SnapshotFiles:
    """``converted/snapshot_files.json``: every file a conversion read (``iterseg.rawdata.fingerprint``)."""

    version: int
    snapshot: str
    files: dict[str, dict[str, Any]]  # relative path -> size, mtime_ns, ctime_ns, inode, sha256

    def to_json(self) -> dict[str, Any]:
        """The fields, ``files`` in path order."""
        return {"version": self.version, "snapshot": self.snapshot, "files": dict(sorted(self.files.items()))}

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """The record of a ``snapshot_files.json`` mapping."""
        if not isinstance(data["files"], dict):
            raise TypeError(f"files is a {type(data['files']).__name__}, not a mapping")
        return cls(data["version"], str(data["snapshot"]), dict(data["files"]))


@dataclass(frozen=True)
class Assembled:
    """``assembled.json``: an iteration's nnU-Net raw dataset (``iterseg.convert.assemble``)."""

    dataset_name: str
    raw: str  # nnUNet_raw/DatasetNNN_<name>
    converted: tuple[str, ...]  # the converted folders trained on, in date order
    labels: dict[str, int]  # dataset.json's labels (the ignore label last, when used)
    cases: tuple[str, ...]  # training case ids
    test_cases: tuple[str, ...]
    test_set: dict[str, Any]  # patients, chosen_at, rule: chosen once, at the first iteration
    summary: dict[str, Any]  # counts of the iteration (train, test, dropped, new, refined, ...)
    records: tuple[dict[str, Any], ...]  # one per case: its ConvertedCase fields, split, change, ...

    def to_json(self) -> dict[str, Any]:
        """The record as ``assembled.json`` holds it."""
        return {
            "dataset_name": self.dataset_name,
            "raw": self.raw,
            "converted": list(self.converted),
            "labels": dict(self.labels),
            "cases": list(self.cases),
            "test_cases": list(self.test_cases),
            "test_set": self.test_set,
            "summary": self.summary,
            "records": [dict(r) for r in self.records],
        }

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """The record of an ``assembled.json`` mapping."""
        return cls(
            dataset_name=str(data["dataset_name"]),
            raw=str(data["raw"]),
            converted=tuple(str(c) for c in data.get("converted", [])),  # older records lack it
            labels={str(k): int(v) for k, v in data["labels"].items()},
            cases=tuple(str(c) for c in data["cases"]),
            test_cases=tuple(str(c) for c in data["test_cases"]),
            test_set=dict(data["test_set"]),
            summary=dict(data["summary"]),
            records=tuple(dict(r) for r in _a_list(data["records"])),
        )


# --- nnunet: planned.json, trained/fold_N.json, predicted.json / predictions.json ---


@dataclass(frozen=True)
class PlanRecord(FieldsRecord):
    """``planned.json``: what the plan step did (planned here, or transferred the first iteration's plans)."""

    dataset_id: int
    dataset_name: str
    plans: str
    configuration: str
    plans_source: str | None  # dataset name whose plans were transferred; None = planned here
    architecture: dict[str, Any]
    patch_size: list[int]
    spacing: list[float]
    batch_size: int | None = None
    overrides: dict[str, Any] | None = None  # applied to the first iteration's plans
    parameters: int | None = None  # of the network nnU-Net builds from these plans
    planner: str = "ExperimentPlanner"  # nnU-Net's experiment planner; older records predate the choice


@dataclass(frozen=True)
class TrainedRecord:
    """``trained/fold_N.json``: one trained fold, its final checkpoint and the schedule it ran."""

    fold: str
    trainer: str
    checkpoint: Path  # resolved checkpoint_final.pth
    pretrained: Path | None  # the previous iteration's checkpoint it was fine-tuned from
    epochs: int | None
    initial_lr: float | None
    seconds: float  # wall time of the training

    def to_json(self) -> dict[str, Any]:
        """The fields, in declaration order, paths as strings."""
        return {
            "fold": self.fold,
            "trainer": self.trainer,
            "checkpoint": str(self.checkpoint),
            "pretrained": None if self.pretrained is None else str(self.pretrained),
            "epochs": self.epochs,
            "initial_lr": self.initial_lr,
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """The record of a ``trained/fold_N.json``."""
        pretrained = data["pretrained"]
        return cls(
            fold=str(data["fold"]),
            trainer=str(data["trainer"]),
            checkpoint=Path(data["checkpoint"]),
            pretrained=None if pretrained is None else Path(pretrained),
            epochs=data["epochs"],
            initial_lr=data["initial_lr"],
            seconds=data["seconds"],
        )


@dataclass(frozen=True)
class PredictedRecord:
    """``predicted.json``, the predict step's record in procdata: what it published, and where.

    The published files live in the results folder but are no declared output, so a forced
    re-run (Snakemake deletes a job's outputs first) never leaves ``latest`` without them.
    """

    results: str
    predictions: str
    skipped: str
    cases: tuple[str, ...]
    skipped_cases: tuple[str, ...]
    on_bad_case: str

    def to_json(self) -> dict[str, Any]:
        """The fields, in declaration order, tuples as lists."""
        return {**plain_fields(self), "cases": list(self.cases), "skipped_cases": list(self.skipped_cases)}

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """The record of a ``predicted.json``."""
        return cls(
            results=str(data["results"]),
            predictions=str(data["predictions"]),
            skipped=str(data["skipped"]),
            cases=tuple(str(c) for c in _a_list(data["cases"])),
            skipped_cases=tuple(str(c) for c in _a_list(data["skipped_cases"])),
            on_bad_case=str(data["on_bad_case"]),
        )


@dataclass(frozen=True)
class Prediction:
    """One ``predictions.json`` entry: where a case's outputs went (paths relative to the results folder)."""

    case_id: str
    patient_id: str
    series_uid: str
    label: str
    seg: str | None  # None for NIfTI inputs: a SEG needs the DICOM series it annotates
    voxels_per_label: dict[str, int]
    volume_ml: dict[str, float] = field(default_factory=dict)
    mean_entropy: float = 0.0  # normalised entropy of the ensemble where foreground is plausible
    fold_dice: dict[str, float | None] = field(default_factory=dict)  # pairwise agreement of the folds

    def to_json(self) -> dict[str, Any]:
        """The fields, in declaration order; nan (an entropy nobody could measure) as ``None``."""
        data: dict[str, Any] = json_ready(plain_fields(self))
        return data

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """The prediction of one ``predictions.json`` entry (``None`` entropy read back as nan)."""
        entropy = data.get("mean_entropy", 0.0)
        return cls(**{**data, "mean_entropy": math.nan if entropy is None else float(entropy)})


@dataclass(frozen=True)
class Predictions(ListRecord):
    """``predictions.json`` in an iteration's results folder: one entry per predicted inbox case."""

    ITEM: ClassVar[type[Prediction]] = Prediction

    predictions: tuple[Prediction, ...]


# --- evaluate: test_metrics.json, annotation_effort.json ---


@dataclass(frozen=True)
class HoldoutScores:
    """One test case's scores in ``test_metrics.json``: label -> ``{"dice", "nsd"}`` (``None``: unscored)."""

    patient_id: str
    metrics: Mapping[str, Mapping[str, float | None]]

    def to_json(self) -> dict[str, Any]:
        """``{"patient_id", "metrics"}``, nan as ``None``."""
        data: dict[str, Any] = json_ready({"patient_id": self.patient_id, "metrics": self.metrics})
        return data

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """The scores of one ``test_metrics.json`` case."""
        return cls(str(data["patient_id"]), {str(k): dict(v) for k, v in data["metrics"].items()})


@dataclass(frozen=True)
class HoldoutMetrics:
    """``test_metrics.json``: an iteration's model scored on the frozen test set.

    ``summary`` is :func:`iterseg.evaluate.metrics.summarise`'s table (label, and ``mean``, ->
    ``dice_mean``, ``nsd_mean``, ``cases`` ...); nan is written as ``None``.
    """

    tolerance_mm: float
    folds: tuple[str, ...]
    labels: dict[str, Any]  # the model's dataset.json labels
    cases: dict[str, HoldoutScores]
    summary: dict[str, dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        """The fields, in declaration order, JSON-ready (nan as ``None``)."""
        data: dict[str, Any] = json_ready(
            {
                "tolerance_mm": self.tolerance_mm,
                "folds": list(self.folds),
                "labels": self.labels,
                "cases": {case_id: scores.to_json() for case_id, scores in self.cases.items()},
                "summary": self.summary,
            }
        )
        return data

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """The record of a ``test_metrics.json``."""
        return cls(
            tolerance_mm=data["tolerance_mm"],
            folds=tuple(str(f) for f in _a_list(data["folds"])),
            labels=dict(data["labels"]),
            cases={str(k): HoldoutScores.from_json(v) for k, v in data["cases"].items()},
            summary={str(k): dict(v) for k, v in data["summary"].items()},
        )


@dataclass(frozen=True)
class AnnotationEffort:
    """``annotation_effort.json``: how much the iteration's new annotations changed their predictions.

    ``cases``: one entry per refined prediction (``case_id``, ``labels`` (one label edit each),
    ``slices``, ``slices_edited``, ``unedited``, ``large_edit``, ``patient_id``, ``split``,
    ``seeded_by``, ``annotation_files``); ``summary``: :func:`iterseg.evaluate.effort.summarise_effort`.
    """

    cases: tuple[dict[str, Any], ...]
    summary: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """``{"cases": [...], "summary": {...}}``, nan as ``None``."""
        data: dict[str, Any] = json_ready({"cases": list(self.cases), "summary": self.summary})
        return data

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """The record of an ``annotation_effort.json``."""
        return cls(tuple(dict(c) for c in _a_list(data["cases"])), dict(data["summary"]))


# --- release: iteration.json, manifest.json ---
# (and latest_history.jsonl: one LatestMove per line)


@dataclass(frozen=True)
class Promotion:
    """The gate's verdict on an iteration, as its ``manifest.json`` records it (``promotion``)."""

    promoted: bool
    reason: str
    latest_before: str | None  # the iteration ``latest`` pointed at when the decision was taken
    decided: str | None = None  # time of the decision, when it was taken by an earlier run

    def to_json(self) -> dict[str, Any]:
        """``promoted``, ``reason``, ``decided`` (only when taken earlier), ``latest_before``."""
        data: dict[str, Any] = {"promoted": self.promoted, "reason": self.reason}
        if self.decided is not None:
            data["decided"] = self.decided
        data["latest_before"] = self.latest_before
        return data

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """The verdict of a manifest's ``promotion``."""
        return cls(
            bool(data["promoted"]), str(data["reason"]), data.get("latest_before"), data.get("decided")
        )


@dataclass(frozen=True)
class Manifest:
    """``results/<dataset>/<date>/manifest.json``: what an iteration learned from, and whether it shipped.

    Built by :mod:`iterseg.release.manifest`. ``skipped`` is None for manifests written before
    cases could be skipped (the key is absent then); ``annotation_effort`` and ``promotion`` are
    absent until the promote step adds them.
    """

    iteration: str
    dataset_name: str
    parent: dict[str, Any]  # iteration, and per fold the checkpoint it was fine-tuned from
    summary: dict[str, Any]  # assembled.json's counts
    labels: dict[str, int]
    test_set: dict[str, Any]
    cases: tuple[dict[str, Any], ...]  # per case: split, change, image and annotation UIDs and hashes, why
    config: dict[str, Any]
    config_sha256: str
    roi_yaml: dict[str, str]  # path, sha256
    versions: dict[str, str]
    plans: dict[str, Any]  # the plan record, the plans file and its sha256
    folds: tuple[dict[str, Any], ...]  # the fold records, each with its status
    test_metrics: dict[str, Any]  # test_metrics.json, {} without a test set
    predictions: tuple[dict[str, Any], ...]  # predictions.json
    skipped: tuple[SkippedCase, ...] | None = ()
    annotation_effort: dict[str, Any] | None = None  # summary, file
    promotion: Promotion | None = None

    def to_json(self) -> dict[str, Any]:
        """The manifest as written: the fields in declaration order, absent ones left out."""
        data: dict[str, Any] = {
            "iteration": self.iteration,
            "dataset_name": self.dataset_name,
            "parent": self.parent,
            "summary": self.summary,
            "labels": self.labels,
            "test_set": self.test_set,
            "cases": list(self.cases),
            "config": self.config,
            "config_sha256": self.config_sha256,
            "roi_yaml": self.roi_yaml,
            "versions": self.versions,
            "plans": self.plans,
            "folds": list(self.folds),
            "test_metrics": self.test_metrics,
            "predictions": list(self.predictions),
        }
        if self.skipped is not None:
            data["skipped"] = [c.to_json() for c in self.skipped]
        if self.annotation_effort is not None:
            data["annotation_effort"] = self.annotation_effort
        if self.promotion is not None:
            data["promotion"] = self.promotion.to_json()
        return data

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """The manifest of a ``manifest.json`` mapping."""
        skipped = data.get("skipped")
        promotion = data.get("promotion")
        return cls(
            iteration=str(data["iteration"]),
            dataset_name=str(data["dataset_name"]),
            parent=dict(data["parent"]),
            summary=dict(data["summary"]),
            labels=dict(data["labels"]),
            test_set=dict(data["test_set"]),
            cases=tuple(dict(c) for c in _a_list(data["cases"])),
            config=dict(data["config"]),
            config_sha256=str(data["config_sha256"]),
            roi_yaml=dict(data["roi_yaml"]),
            versions=dict(data["versions"]),
            plans=dict(data["plans"]),
            folds=tuple(dict(f) for f in _a_list(data["folds"])),
            test_metrics=dict(data["test_metrics"]),
            predictions=tuple(dict(p) for p in _a_list(data["predictions"])),
            skipped=None if skipped is None else tuple(SkippedCase.from_json(c) for c in _a_list(skipped)),
            annotation_effort=data.get("annotation_effort"),
            promotion=None if promotion is None else Promotion.from_json(promotion),
        )


@dataclass(frozen=True)
class IterationSummary:
    """``results/<dataset>/<date>/iteration.json``: the promote step's record, the iteration's last output."""

    iteration: str
    dataset_name: str
    training_cases: int
    promoted: bool
    reason: str
    manifest: str  # path of the iteration's manifest.json

    def to_json(self) -> dict[str, Any]:
        """The fields, in declaration order."""
        return plain_fields(self)

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """The record of an ``iteration.json``."""
        return cls(
            iteration=str(data["iteration"]),
            dataset_name=str(data["dataset_name"]),
            training_cases=int(data["training_cases"]),
            promoted=bool(data["promoted"]),
            reason=str(data["reason"]),
            manifest=str(data["manifest"]),
        )


@dataclass(frozen=True)
class LatestMove:
    """One line of ``results/<dataset>/latest_history.jsonl``: a move of ``latest``, or a gate refusal."""

    time: str  # UTC, ISO 8601, seconds
    action: str  # promote, gated or rollback
    iteration: str
    from_: str | None  # "from" in the file: where ``latest`` pointed before
    to: str | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        """``time``, ``action``, ``iteration``, ``from``, ``to``, ``reason``."""
        return {
            "time": self.time,
            "action": self.action,
            "iteration": self.iteration,
            "from": self.from_,
            "to": self.to,
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """The move of one history line."""
        return cls(
            time=str(data["time"]),
            action=str(data["action"]),
            iteration=str(data["iteration"]),
            from_=data["from"],
            to=data["to"],
            reason=str(data["reason"]),
        )


def append_history(path: Path, move: LatestMove) -> None:
    """Append ``move`` to the history file ``path`` as one strict-JSON line; earlier lines stay untouched."""
    line = json.dumps(json_ready(move.to_json()), allow_nan=False) + "\n"
    with path.open("a") as history:
        history.write(line)


def read_history(path: Path) -> list[LatestMove]:
    """Every move in the history file ``path``, oldest first; none when it does not exist yet."""
    if not path.is_file():
        return []
    moves = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            moves.append(LatestMove.from_json(json.loads(line, parse_constant=_refuse_constant)))
        except (KeyError, TypeError, ValueError) as exc:
            raise RecordError(
                f"{path}, line {number}: not a move of `latest` ({type(exc).__name__}: {exc}); "
                "fix or delete that line (the history is informative; `latest` itself is the link)."
            ) from None
    return moves


# --- release: model_card.json (iterseg export-model, install-model) ---

MODEL_CARD_FORMAT = 1  #: the card layout this iterseg writes; a newer one is refused on install


@dataclass(frozen=True)
class ModelCard:
    """``model_card.json`` of a model archive: which iteration a shared model is, and how it scored.

    Built by :mod:`iterseg.release.model_card` from the iteration's manifest and plan record;
    ``plan_record`` becomes the installed model's ``planned.json``, so prediction needs no procdata.
    """

    dataset: str
    iteration: str
    dataset_name: str  # nnU-Net's DatasetNNN_<name>
    modality: str
    labels: dict[str, int]  # the model's dataset.json labels (the ignore label too, when trained with it)
    training_cases: int
    training_case_ids: tuple[str, ...]
    training_patients: tuple[str, ...]
    test_patients: tuple[str, ...]
    test_metrics: dict[str, dict[str, Any]]  # label (and "mean") -> dice_mean, nsd_mean, cases
    nsd_tolerance_mm: float | None  # None without a test set
    plans: str
    configuration: str
    trainer: str
    folds: tuple[str, ...]
    planner: str | None  # None where the manifest predates the planner choice
    inference: dict[str, Any]  # tile_step_size, use_mirroring the test metrics were measured with
    versions: dict[str, str]  # the packages that trained it
    promotion_reason: str
    nnunet_zip: str  # the archive member holding nnU-Net's own model zip
    nnunet_zip_sha256: str
    roi_yaml_sha256: str
    plan_record: PlanRecord
    exported: str  # UTC, ISO 8601, seconds
    format: int = MODEL_CARD_FORMAT
    channels: dict[str, list[str]] = field(default_factory=dict)  # multi-sequence models: name -> regexes

    def to_json(self) -> dict[str, Any]:
        """The fields, in declaration order, tuples as lists and the plan record as its mapping."""
        data: dict[str, Any] = json_ready(
            {f.name: getattr(self, f.name) for f in fields(self) if f.name != "plan_record"}
        )
        data["plan_record"] = self.plan_record.to_json()
        return data

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """The card of a ``model_card.json`` mapping."""
        tuples = ("training_case_ids", "training_patients", "test_patients", "folds")
        return cls(
            **{
                **data,
                **{name: tuple(str(v) for v in _a_list(data[name])) for name in tuples},
                "labels": {str(k): int(v) for k, v in data["labels"].items()},
                "test_metrics": {str(k): dict(v) for k, v in data["test_metrics"].items()},
                "plan_record": PlanRecord.from_json(data["plan_record"]),
            }
        )


# --- analyze: analysis.json (iterseg analyze) ---


@dataclass(frozen=True)
class AnalysisRecord:
    """``analysis.json`` of ``iterseg analyze``: the inputs, the model, the files written, the errors."""

    status: str  # "done" (at least one case predicted) or "failed"
    model: str  # the model folder the command was given
    inputs: tuple[str, ...]  # the archives, in the order given ("input N" in errors is the N-th)
    files: tuple[str, ...]  # written, relative to the output folder: seg/<case>.dcm, labels/<case>.nii.gz
    errors: dict[str, str]  # case id (or "input N", "inputs", "prediction") -> what went wrong and the fix

    def to_json(self) -> dict[str, Any]:
        """The fields, in declaration order, tuples as lists."""
        data: dict[str, Any] = json_ready(plain_fields(self))
        return data

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """The record of an ``analysis.json``."""
        return cls(
            status=str(data["status"]),
            model=str(data["model"]),
            inputs=tuple(str(p) for p in _a_list(data["inputs"])),
            files=tuple(str(p) for p in _a_list(data["files"])),
            errors={str(k): str(v) for k, v in dict(data["errors"]).items()},
        )
