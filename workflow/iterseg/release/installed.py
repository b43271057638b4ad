"""An installed model (``iterseg install-model``): a folder prediction uses as an iteration work folder.

Layout of ``<models>/<dataset>/<date>/``::

    nnUNet_results/<DatasetNNN_name>/<trainer>__<plans>__<configuration>/   nnU-Net's own model folder
    planned.json      the iteration's plan record (what prediction reads of the plans)
    model_card.json   :class:`iterseg.records.ModelCard`
    MODEL_CARD.md     the card for people
    roi.yaml          the ROI YAML the model was trained with (codes and colours of the SEGs)

Prediction (``iterseg predict --model``) and later commands read it through
:func:`load_installed_model` only. :func:`resolve_model` also takes a promoted iteration's results
folder (``data/results/<dataset>/latest``) and finds that iteration's model in the project, for
``iterseg analyze``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from iterseg.convert.channels import Channel, parse_channels
from iterseg.errors import ModelArchiveError
from iterseg.nnunet.ensemble import CHECKPOINT_NAME
from iterseg.paths import PROCDATA, RESULTS_ROOT, fold_dir_name, iteration_dir, model_dir
from iterseg.records import Manifest, ModelCard, PlanRecord, RecordError, read_record
from iterseg.release.manifest import MANIFEST_FILE, file_sha256, not_promoted_because
from iterseg.release.model_card import fold_trainer

logger = logging.getLogger(__name__)

CARD_FILE = "model_card.json"
CARD_MARKDOWN = "MODEL_CARD.md"
ROI_FILE = "roi.yaml"
PLANNED_FILE = "planned.json"


@dataclass(frozen=True)
class InstalledModel:
    """What prediction needs of an installed model, in the terms of an iteration's work folder."""

    work: Path  # the installed folder: nnU-Net's roots inside, as in an iteration's procdata folder
    plan_record: Path
    trainer: str
    folds: tuple[str, ...]
    roi_yaml: Path
    description: str  # SeriesDescription of its SEGs, as the workflow names an iteration's
    modality: str
    card: ModelCard | None = None  # None for a promoted iteration's model (resolve_model): no card there
    channels: tuple[Channel, ...] = ()  # of a multi-sequence model, as its dataset's config named them


def model_files(folder: Path, card: ModelCard) -> list[Path]:
    """The files an installed model in ``folder`` cannot predict without."""
    model = model_dir(folder, card.dataset_name, card.trainer, card.plans, card.configuration)
    checkpoints = [model / fold_dir_name(fold) / CHECKPOINT_NAME for fold in card.folds]
    return [
        folder / PLANNED_FILE,
        folder / ROI_FILE,
        model / "plans.json",
        model / "dataset.json",
        *checkpoints,
    ]


def load_installed_model(path: Path) -> InstalledModel:
    """The installed model in ``path`` (``<models>/<dataset>/<date>``), checked complete.

    Raises
    ------
    ModelArchiveError
        If ``path`` holds no model card, or a file prediction needs is missing.

    """
    card_file = path / CARD_FILE
    if not card_file.is_file():
        raise ModelArchiveError(
            f"{path}: not an installed model (no {CARD_FILE}); install one with `iterseg install-model "
            "<zip>` and pass the folder it names (<into>/<dataset>/<date>)."
        )
    try:
        card = read_record(card_file, ModelCard)
    except RecordError as exc:
        raise ModelArchiveError(
            f"{card_file}: no model card this iterseg reads; install the model again with "
            f"`iterseg install-model <zip> --force` (reading it said: {exc})"
        ) from None
    missing = [str(p) for p in model_files(path, card) if not p.is_file()]
    if missing:
        raise ModelArchiveError(
            f"{path}: incomplete installed model, missing {', '.join(missing[:3])}"
            f"{f' and {len(missing) - 3} more' if len(missing) > 3 else ''}; install it again with "
            "`iterseg install-model <zip> --force`."
        )
    return InstalledModel(
        work=path,
        plan_record=path / PLANNED_FILE,
        trainer=card.trainer,
        folds=card.folds,
        roi_yaml=path / ROI_FILE,
        description=f"iterseg {card.dataset} {card.iteration}",
        modality=card.modality,
        card=card,
        channels=parse_channels(card.channels, f"{card_file}: channels"),
    )


def resolve_model(ref: str | Path | InstalledModel) -> InstalledModel:
    """The model ``ref`` names: an installed model folder, or a promoted iteration's results folder.

    Parameters
    ----------
    ref
        A folder ``iterseg install-model`` wrote (it holds ``model_card.json``), or an
        iteration's results folder ``<project>/data/results/<dataset>/<date>`` (or ``latest``;
        it holds ``manifest.json``), or an :class:`InstalledModel` already loaded (returned as is).

    Raises
    ------
    ModelArchiveError
        If ``ref`` is neither, the iteration was not promoted, or a file its model needs is
        missing or changed (the ROI YAML); the message names the file and the fix.

    """
    if isinstance(ref, InstalledModel):
        return ref
    path = Path(ref)
    if (path / CARD_FILE).is_file():
        return load_installed_model(path)
    if (path / MANIFEST_FILE).is_file():
        return _promoted_iteration(path)
    raise ModelArchiveError(
        f"{path}: no model there (neither {CARD_FILE} of an installed model nor {MANIFEST_FILE} of an "
        "iteration); pass <project>/data/results/<dataset>/latest (or an iteration's date folder beside "
        "it), or the folder `iterseg install-model` printed."
    )


def _project_of(results: Path) -> Path | None:
    """The project folder of a resolved results folder ``<project>/data/results/<dataset>/<date>``."""
    parts = Path(RESULTS_ROOT).parts
    root = results.parent.parent
    return root.parents[len(parts) - 1] if root.parts[-len(parts) :] == parts else None


def _promoted_iteration(path: Path) -> InstalledModel:
    """The model of the iteration whose results folder is ``path``, refused unless promoted."""
    folder = path.resolve()  # ``latest`` -> the date folder it points at
    manifest_path = folder / MANIFEST_FILE
    try:
        manifest = read_record(manifest_path, Manifest)
    except RecordError as exc:
        raise ModelArchiveError(f"{manifest_path}: no manifest this iterseg reads ({exc})") from None
    why = not_promoted_because(manifest)
    if why is not None:
        raise ModelArchiveError(
            f"{manifest_path}: iteration {manifest.iteration} was not promoted ({why}), and only a "
            f"promoted model analyzes; pass {folder.parent / 'latest'} (the last promoted one) or another "
            "iteration that passed the gate (`iterseg status <dataset>` lists them)."
        )
    dataset, project = folder.parent.name, _project_of(folder)
    work, plan = _iteration_work(manifest, manifest_path, dataset, project)
    trainer = fold_trainer(manifest, str(manifest_path))
    folds = tuple(str(fold["fold"]) for fold in manifest.folds)
    _check_iteration_files(work, plan, trainer, folds, manifest_path)
    settings = manifest.config.get("datasets", {}).get(dataset, {})
    return InstalledModel(
        work=work,
        plan_record=work / PLANNED_FILE,
        trainer=trainer,
        folds=folds,
        roi_yaml=_recorded_roi_yaml(manifest, manifest_path, project),
        description=f"iterseg {dataset} {manifest.iteration}",  # as the workflow names its SEGs
        modality=str(settings.get("modality", "CT")),
        channels=parse_channels(
            settings.get("channels"), f"{manifest_path}: config datasets.{dataset}.channels"
        ),
    )


def _iteration_work(
    manifest: Manifest, manifest_path: Path, dataset: str, project: Path | None
) -> tuple[Path, PlanRecord]:
    """The iteration's work folder and plan record: where its checkpoints are recorded, else the project's."""
    candidates: list[Path] = []
    for fold in manifest.folds:
        checkpoint = Path(str(fold.get("checkpoint", "")))
        if checkpoint.parts and not checkpoint.is_absolute() and project is not None:
            checkpoint = project / checkpoint
        # <work>/nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>/fold_N/checkpoint_final.pth
        if len(checkpoint.parts) > 5 and checkpoint.parents[3].name == "nnUNet_results":
            candidates.append(checkpoint.parents[4])
    if project is not None:
        candidates.append(iteration_dir(project / PROCDATA, dataset, manifest.iteration))
    for work in dict.fromkeys(candidates):
        if (work / PLANNED_FILE).is_file():
            try:
                plan = read_record(work / PLANNED_FILE, PlanRecord)
            except RecordError as exc:
                raise ModelArchiveError(f"{exc} (the plan record of {manifest_path}'s model)") from None
            if plan.dataset_name == manifest.dataset_name:
                return work, plan
    looked = ", ".join(str(w / PLANNED_FILE) for w in dict.fromkeys(candidates)) or "nowhere"
    raise ModelArchiveError(
        f"{manifest_path}: the procdata folder of iteration {manifest.iteration} ({manifest.dataset_name}) "
        f"is not where its manifest says (looked for {looked}); pass the results folder of the project "
        "that trained it, or share the model with `iterseg export-model` / `install-model` and pass the "
        "installed folder."
    )


def _check_iteration_files(
    work: Path, plan: PlanRecord, trainer: str, folds: Sequence[str], manifest_path: Path
) -> None:
    model = model_dir(work, plan.dataset_name, trainer, plan.plans, plan.configuration)
    needed = [model / "plans.json", model / "dataset.json"]
    needed += [model / fold_dir_name(fold) / CHECKPOINT_NAME for fold in folds]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise ModelArchiveError(
            f"{manifest_path}: the iteration's model in {work} lacks {', '.join(missing[:3])}"
            f"{f' and {len(missing) - 3} more' if len(missing) > 3 else ''} (deleted since it was "
            "promoted?); re-train it with snakemake (delete its fold records in trained/), or pass an "
            "installed model."
        )


def _recorded_roi_yaml(manifest: Manifest, manifest_path: Path, project: Path | None) -> Path:
    """The ROI YAML the iteration was trained with, checked against the manifest's sha256."""
    recorded = Path(manifest.roi_yaml["path"])  # relative to the project folder snakemake ran in
    bases = [Path()] if recorded.is_absolute() else [b for b in (project, Path.cwd()) if b is not None]
    found = [base / recorded for base in dict.fromkeys(bases) if (base / recorded).is_file()]
    for roi in found:
        if file_sha256(roi) == manifest.roi_yaml["sha256"]:
            return roi
    if found:
        raise ModelArchiveError(
            f"{found[0]}: changed since iteration {manifest.iteration} was trained ({manifest_path} records "
            f"sha256 {manifest.roi_yaml['sha256']}); the SEGs' label names, codes and colours must be the "
            f"ones it learned: restore that version (git log -p {recorded})."
        )
    raise ModelArchiveError(
        f"{recorded}: the ROI YAML {manifest_path} records is missing (looked in "
        f"{', '.join(str(b) for b in dict.fromkeys(bases))}); restore it, or pass an installed model "
        "(`iterseg export-model`, `install-model`), which carries its own."
    )
