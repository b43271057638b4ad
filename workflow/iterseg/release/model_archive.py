"""Share a promoted iteration's model: one zip archive out (export), an installed model folder in.

The archive holds, flat::

    model_card.json   :class:`iterseg.records.ModelCard`: data, test scores, plans, versions, checksums
    MODEL_CARD.md     the card for people
    roi.yaml          the ROI YAML the iteration used (checked against its manifest's sha256)
    nnunet_model.zip  nnU-Net's own model zip (``nnUNetv2_export_model_to_zip``): each fold's
                      checkpoint_final, plans, dataset.json and fingerprint; no cross-validation predictions

Installing checks every member before anything is written (no absolute paths, ``..``, links or
duplicates: an archive comes from elsewhere), the checksums against the card, and installs into a
staging folder renamed into place, so a failed install leaves nothing half-made. The installed
layout is :mod:`iterseg.release.installed`'s.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import re
import shutil
import stat
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

from iterseg.errors import ModelArchiveError
from iterseg.nnunet.ensemble import CHECKPOINT_NAME
from iterseg.nnunet.env import configure_nnunet
from iterseg.paths import fold_dir_name, iteration_dir, model_dir, partial_path
from iterseg.records import (
    MODEL_CARD_FORMAT,
    Manifest,
    ModelCard,
    PlanRecord,
    RecordError,
    read_json,
    read_record,
    write_record,
)
from iterseg.release.installed import CARD_FILE, CARD_MARKDOWN, PLANNED_FILE, ROI_FILE, model_files
from iterseg.release.manifest import MANIFEST_FILE, file_sha256, not_promoted_because
from iterseg.release.model_card import NNUNET_ZIP, build_model_card, fold_trainer, render_model_card
from iterseg.release.promote import current_latest, finished_iterations

logger = logging.getLogger(__name__)

ARCHIVE_MEMBERS = (CARD_FILE, CARD_MARKDOWN, ROI_FILE, NNUNET_ZIP)  #: in the order they are written
MAX_BYTES = 50 * 2**30  # a generous bound on what a model (five folds of a large network) unpacks to
MAX_MEMBERS = 10_000
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")  # card values that become folder names
_BROKEN_ZIP = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError)


def default_archive(results: Path, dataset: str, date: str) -> Path:
    """Where ``export-model`` writes by default: ``results/<dataset>/<date>/model_<dataset>_<date>.zip``."""
    return results / dataset / date / f"model_{dataset}_{date}.zip"


# --- export --------------------------------------------------------------------------------------


def _iteration_date(dataset_results: Path, date: str | None) -> str:
    """``date``, or the iteration ``latest`` points at; refused unless its manifest exists."""
    if date is None:
        date = current_latest(dataset_results)
        if date is None:
            raise ModelArchiveError(
                f"{dataset_results / 'latest'}: no such link, so no iteration was promoted yet; run the "
                "workflow until one passes the gate, or name the iteration's DATE (check --results too)."
            )
    if not (dataset_results / date / MANIFEST_FILE).is_file():
        finished = ", ".join(finished_iterations(dataset_results)) or "none"
        raise ModelArchiveError(
            f"{dataset_results / date / MANIFEST_FILE}: missing, so {date} is no finished iteration "
            f"(finished: {finished}); name one of those, or point --results at the right folder."
        )
    return date


def _promoted_manifest(path: Path, dataset: str, date: str) -> Manifest:
    manifest = read_record(path, Manifest)
    why = not_promoted_because(manifest)
    if why is not None:
        raise ModelArchiveError(
            f"{path}: iteration {date} was not promoted ({why}), and only a promoted model is shared. "
            f"Export one that passed the gate: `iterseg status {dataset}` lists them, and without DATE "
            "export-model takes the one `latest` points at."
        )
    return manifest


def _copy_recorded_roi_yaml(manifest: Manifest, manifest_path: Path, to: Path) -> str:
    """Copy the ROI YAML the iteration used to ``to``; its sha256, refused unless the manifest's."""
    recorded = Path(manifest.roi_yaml["path"])  # relative to the project folder snakemake ran in
    if not recorded.is_file():
        raise ModelArchiveError(
            f"{recorded}: the ROI YAML {manifest_path} records is missing (looked for from {Path.cwd()}); "
            "run export-model in the project folder you run snakemake in."
        )
    shutil.copyfile(recorded, to)
    digest = file_sha256(to)
    if digest != manifest.roi_yaml["sha256"]:
        raise ModelArchiveError(
            f"{recorded}: changed since iteration {manifest.iteration} was trained (sha256 {digest}, "
            f"{manifest_path} records {manifest.roi_yaml['sha256']}); the labels' names, codes and colours "
            f"shipped with the model must be the ones it learned: restore that version (git log -p "
            f"{recorded}) and export again."
        )
    return digest


def _exported_files(model: Path, folds: Sequence[str]) -> list[Path]:
    """The files nnU-Net's exporter copies and fails without."""
    per_fold = [
        model / fold_dir_name(fold) / name
        for fold in folds
        for name in (CHECKPOINT_NAME, "progress.png", "validation/summary.json")
    ]
    return [model / "plans.json", model / "dataset.json", model / "dataset_fingerprint.json", *per_fold]


def _export_nnunet(work: Path, plan: PlanRecord, trainer: str, folds: Sequence[str], zip_path: Path) -> None:
    """nnU-Net's own model zip of ``folds`` (checkpoint_final only, no cross-validation predictions)."""
    from nnunetv2.model_sharing.model_export import export_pretrained_model

    configure_nnunet(work)
    model = model_dir(work, plan.dataset_name, trainer, plan.plans, plan.configuration)
    missing = [str(p) for p in _exported_files(model, folds) if not p.is_file()]
    if missing:
        raise ModelArchiveError(
            f"{model}: missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}: the folds did "
            "not finish training there (or their files were deleted); re-train them (delete the fold "
            "records in trained/ and run snakemake), then export again."
        )
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # nnU-Net narrates every file it adds on stdout
        export_pretrained_model(
            plan.dataset_name, str(zip_path), configurations=(plan.configuration,), trainer=trainer,
            plans_identifier=plan.plans, folds=tuple(folds), strict=True,
            save_checkpoints=(CHECKPOINT_NAME,), export_crossval_predictions=False,
        )  # fmt: skip
    logger.debug("nnU-Net's export: %s", printed.getvalue().strip())


def _zip_folder(staging: Path, target: Path) -> None:
    with zipfile.ZipFile(target, "w") as archive:
        for name in ARCHIVE_MEMBERS:
            # nnU-Net's zip is deflated already: compressing it again costs time and saves nothing
            kind = zipfile.ZIP_STORED if name == NNUNET_ZIP else zipfile.ZIP_DEFLATED
            archive.write(staging / name, name, compress_type=kind)


def export_model(
    *, results: Path, procdata: Path, dataset: str, date: str | None = None, out: Path | None = None
) -> Path:
    """Write a promoted iteration's model as one zip archive; return its path.

    Parameters
    ----------
    results, procdata
        ``data/results`` and ``data/procdata``: the manifest is read from the first, the plan
        record and nnU-Net's model folder from the second.
    dataset
        The dataset's name in the config.
    date
        The iteration; default the one ``results/<dataset>/latest`` points at.
    out
        The archive to write (default :func:`default_archive`); written beside itself, then renamed.

    Raises
    ------
    ModelArchiveError
        If the iteration did not finish or was not promoted, its ROI YAML changed since, or a
        fold's files are missing; nothing is written then.

    """
    date = _iteration_date(results / dataset, date)
    manifest_path = results / dataset / date / MANIFEST_FILE
    manifest = _promoted_manifest(manifest_path, dataset, date)
    work = iteration_dir(procdata, dataset, date)
    plan = read_record(work / PLANNED_FILE, PlanRecord)
    if plan.dataset_name != manifest.dataset_name:
        raise ModelArchiveError(
            f"{work / PLANNED_FILE}: plans of {plan.dataset_name}, but {manifest_path} is of "
            f"{manifest.dataset_name}; point --procdata at the procdata folder of this results folder."
        )
    out = out or default_archive(results, dataset, date)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = partial_path(out)
    try:
        staging.mkdir()
        roi_sha256 = _copy_recorded_roi_yaml(manifest, manifest_path, staging / ROI_FILE)
        folds = tuple(str(fold["fold"]) for fold in manifest.folds)
        _export_nnunet(work, plan, fold_trainer(manifest, str(manifest_path)), folds, staging / NNUNET_ZIP)
        card = build_model_card(
            dataset=dataset, manifest=manifest, manifest_path=str(manifest_path), plan=plan,
            nnunet_zip_sha256=file_sha256(staging / NNUNET_ZIP), roi_yaml_sha256=roi_sha256,
        )  # fmt: skip
        write_record(staging / CARD_FILE, card)
        (staging / CARD_MARKDOWN).write_text(render_model_card(card))
        _zip_folder(staging, staging / ".archive.zip")  # no member's name, whatever --out is called
        os.replace(staging / ".archive.zip", out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("%s %s (%s, folds %s): model archive %s", dataset, date, card.trainer, ",".join(folds), out)
    return out


# --- install -------------------------------------------------------------------------------------


def _unsafe(info: zipfile.ZipInfo) -> str | None:
    """Why a member must not be unpacked, or None."""
    parts = re.split(r"[/\\]", info.filename)
    mode = info.external_attr >> 16  # the Unix mode, where the archive was made on Unix
    if info.filename.startswith(("/", "\\")) or ":" in parts[0]:
        return "absolute path"
    if ".." in parts:
        return "'..' in its path"
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "not a plain file or folder"
    return None


def check_zip_members(archive: str, members: Sequence[zipfile.ZipInfo]) -> None:
    """Refuse ``archive``'s members unless each is a plain file or folder with a relative path inside it.

    Raises
    ------
    ModelArchiveError
        For an absolute path, ``..``, a link or device, a duplicate name, or too many or too
        large members; ``archive`` names the archive in the message.

    """
    unsafe = [f"{m.filename!r} ({why})" for m in members if (why := _unsafe(m))]
    if unsafe:
        raise ModelArchiveError(
            f"{archive}: refused, {len(unsafe)} member(s) would land outside the install folder or are no "
            f"plain file: {'; '.join(unsafe[:3])}. iterseg export-model writes none: ask for the original."
        )
    names = [m.filename for m in members]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ModelArchiveError(
            f"{archive}: refused, member(s) stored twice {twice[:3]}; ask for the original."
        )
    total = sum(m.file_size for m in members)
    if len(members) > MAX_MEMBERS or total > MAX_BYTES:
        raise ModelArchiveError(
            f"{archive}: refused, {len(members)} member(s) of {total / 2**30:.1f} GiB, more than the "
            f"{MAX_MEMBERS} members or {MAX_BYTES / 2**30:.0f} GiB a model archive may hold."
        )


def _read_card(archive: zipfile.ZipFile, staging: Path, where: Path) -> ModelCard:
    """The archive's model card, unpacked into ``staging``; refused unless this iterseg reads it."""
    archive.extract(CARD_FILE, staging)
    try:
        data = read_json(staging / CARD_FILE)
        card_format = data.get("format") if isinstance(data, dict) else None
        if isinstance(card_format, int) and card_format > MODEL_CARD_FORMAT:
            raise ModelArchiveError(
                f"{where}: a model card of format {card_format}, newer than the {MODEL_CARD_FORMAT} "
                "this iterseg reads; upgrade iterseg and install it again."
            )
        card = read_record(staging / CARD_FILE, ModelCard)
    except RecordError as exc:
        raise ModelArchiveError(
            f"{where}: its {CARD_FILE} is no model card ({exc}); export the model again with "
            "`iterseg export-model`."
        ) from None
    names = [card.dataset, card.iteration, card.dataset_name, card.trainer, card.plans, card.configuration]
    odd = [n for n in (*names, *card.folds) if not _SAFE_NAME.match(n)]
    if odd or card.nnunet_zip != NNUNET_ZIP:
        raise ModelArchiveError(
            f"{where}: its {CARD_FILE} names folders that are no plain names ({odd or card.nnunet_zip}); "
            "export the model again with `iterseg export-model`."
        )
    return card


def _unpack(archive: Path, staging: Path, into: Path, force: bool) -> tuple[ModelCard, Path]:
    """Check ``archive``, unpack it into ``staging``; the card and where the model is to go."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = zipped.infolist()
            check_zip_members(str(archive), members)
            if sorted(m.filename for m in members) != sorted(ARCHIVE_MEMBERS):
                raise ModelArchiveError(
                    f"{archive}: no model archive of `iterseg export-model` (members "
                    f"{sorted(m.filename for m in members)[:6]}, expected {list(ARCHIVE_MEMBERS)})."
                )
            card = _read_card(zipped, staging, archive)
            dest = into / card.dataset / card.iteration
            _refuse_existing(dest, force)
            zipped.extractall(staging, members=[n for n in ARCHIVE_MEMBERS if n != CARD_FILE])
    except _BROKEN_ZIP as exc:
        raise ModelArchiveError(
            f"{archive}: truncated or corrupt zip archive ({type(exc).__name__}: {exc}); copy it again "
            "from its source (compare its checksum)."
        ) from None
    return card, dest


def _refuse_existing(dest: Path, force: bool) -> None:
    if dest.exists() and not force:
        raise ModelArchiveError(
            f"{dest}: a model is installed there already; pass --force to replace it, or --into another "
            "folder."
        )


def _verify_checksums(staging: Path, card: ModelCard, archive: Path) -> None:
    for member, expected in ((NNUNET_ZIP, card.nnunet_zip_sha256), (ROI_FILE, card.roi_yaml_sha256)):
        actual = file_sha256(staging / member)
        if actual != expected:
            raise ModelArchiveError(
                f"{archive}: {member} has sha256 {actual}, but its model card says {expected}: the archive "
                "was altered or damaged after export; copy it again from its source, or export it again."
            )


def _install_nnunet(staging: Path, card: ModelCard, archive: Path) -> None:
    """nnU-Net's zip installed by nnU-Net itself into ``staging/nnUNet_results``, its members checked."""
    from nnunetv2.model_sharing.model_import import install_model_from_zip_file

    inner = staging / NNUNET_ZIP
    where = f"{archive} ({NNUNET_ZIP})"
    try:
        with zipfile.ZipFile(inner) as zipped:
            members = zipped.infolist()
    except _BROKEN_ZIP as exc:
        raise ModelArchiveError(f"{where}: not a zip archive ({exc}); export the model again.") from None
    check_zip_members(where, members)
    outside = [m.filename for m in members if not m.filename.startswith(f"{card.dataset_name}/")]
    if outside:
        raise ModelArchiveError(
            f"{where}: refused, member(s) outside the model's {card.dataset_name}/ {outside[:3]}; "
            "export the model again."
        )
    configure_nnunet(staging)
    install_model_from_zip_file(str(inner))
    inner.unlink()
    write_record(staging / PLANNED_FILE, card.plan_record)
    missing = [str(p.relative_to(staging)) for p in model_files(staging, card) if not p.is_file()]
    if missing:
        raise ModelArchiveError(
            f"{where}: lacks {', '.join(missing[:3])}, which its card promises; export the model again."
        )


def _move_into_place(staging: Path, dest: Path, force: bool) -> None:
    """Rename ``staging`` to ``dest``; an earlier install there (``force``) is replaced, never lost midway."""
    _refuse_existing(dest, force)
    dest.parent.mkdir(parents=True, exist_ok=True)
    old = partial_path(dest) if dest.exists() else None
    if old is not None:
        dest.rename(old)
    try:
        staging.rename(dest)
    except OSError as exc:
        if old is not None:
            old.rename(dest)
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise ModelArchiveError(
                f"{dest}: installed by another run meanwhile; pass --force to replace it."
            ) from exc
        raise
    if old is not None:
        shutil.rmtree(old)


def install_model(*, archive: Path, into: Path, force: bool = False) -> Path:
    """Install a model archive of :func:`export_model` into ``into/<dataset>/<date>``; return that folder.

    Parameters
    ----------
    archive
        The zip archive; only read.
    into
        The models folder (``data/models``).
    force
        Replace a model installed there already.

    Raises
    ------
    ModelArchiveError
        If a member is unsafe, a checksum differs from the card's, the archive is not one of
        ours, or a model is installed there already without ``force``; nothing is left behind.

    """
    into.mkdir(parents=True, exist_ok=True)
    staging = partial_path(into / archive.name)
    try:
        staging.mkdir()
        card, dest = _unpack(archive, staging, into, force)
        _verify_checksums(staging, card, archive)
        _install_nnunet(staging, card, archive)
        _move_into_place(staging, dest, force)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info(
        "%s: installed the %s model of %s into %s; predict with (add --device cpu without a GPU):\n"
        "  iterseg predict --model %s --inbox <folder of cases> --out <results folder> "
        "--output <results folder>/predicted.json",
        archive, card.dataset, card.iteration, dest, dest,
    )  # fmt: skip
    return dest
