"""``iterseg pacs pull``: a new dated snapshot (and new inbox cases) from the PACS, whole or not at all.

A pull takes every annotation (SEG or RTSTRUCT) on the PACS that no earlier pull took and that is
not one of our own predicted SEGs back unedited, with the image series it references, into
``rawdata/<dataset>/<date>__<dataset>/``; image series no annotation references go to the inbox,
one folder per series. A multi-sequence dataset (``channels``) is pulled study-wise: an
annotation comes with every image series of its study, an unannotated study goes to the inbox
as one folder with a sub-folder per series, and a study whose series cannot be assigned to the
channels is left on the PACS, named. Every series is checked against the PACS's own instance
list (a WADO-RS answer cut short is no error to dicomweb-client: it returns fewer instances),
written into a hidden staging folder beside its target, and renamed into place only when
complete. Existing snapshots and inbox folders are never written.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import re
import shutil
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.errors import InvalidDicomError

from iterseg.convert.channels import Channel, ChannelError, SeriesLabel, assign_channels
from iterseg.errors import PacsError
from iterseg.pacs.client import Pacs, pacs_errors
from iterseg.pacs.inventory import TAGS, Inventory, PacsAnnotation, PacsSeries, ProjectState, json_text
from iterseg.pacs.settings import PULL_RECORD
from iterseg.paths import partial_path

if TYPE_CHECKING:
    from iterseg.config import Settings

logger = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
ANY_TRANSFER_SYNTAX = (("application/dicom", "*"),)  # the stored bytes, not a transcoded copy


@dataclass(frozen=True)
class PullPlan:
    """What a pull would take from the PACS, and what it leaves there and why."""

    annotations: tuple[PacsAnnotation, ...]  # new, with their image series on the PACS
    images: tuple[PacsSeries, ...]  # the image series those reference
    inbox: tuple[PacsSeries, ...]  # image series without annotation, not yet in the inbox
    refines: dict[str, dict[str, str]]  # annotation SOP UID -> the prediction it refines
    already_pulled: int
    unrefined_predictions: int  # SEGs of ours back unedited (not our UIDs: another copy of the project?)
    our_segs_on_pacs: int
    problems: tuple[str, ...]  # annotations (and multi-sequence studies) left on the PACS, each with why
    channels: tuple[str, ...] = ()  # a multi-sequence dataset's channel names: the pull is study-wise

    @property
    def empty(self) -> bool:
        """Nothing new: no annotation and no inbox case to pull."""
        return not self.annotations and not self.inbox

    @property
    def study_wise(self) -> bool:
        """Whether whole studies are pulled (a dataset with several channels)."""
        return len(self.channels) > 1


def safe_name(text: str) -> str:
    """``text`` usable as one path component (PatientIDs hold slashes, spaces, umlauts)."""
    return _UNSAFE.sub("-", text).strip(".-") or "unnamed"


def short_hash(text: str) -> str:
    """Eight hex digits identifying ``text`` (a UID) in a folder name."""
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def inbox_folder(series: PacsSeries) -> str:
    """The inbox folder of an image series: stable, so a pull sees which series it already put there."""
    return f"{safe_name(series.patient_id)}_{short_hash(series.series_uid)}"


def inbox_study_folder(series: PacsSeries) -> str:
    """The inbox folder of a multi-sequence study (``<patient>_<hash of the study UID>``), one per study."""
    return f"{safe_name(series.patient_id)}_{short_hash(series.study_uid)}"


# Where the PACS does not list every series' FrameOfReferenceUID (QIDO need not), one equal
# placeholder: the plan then checks the description rules only, and conversion the frames.
_UNLISTED_FRAME = "(not listed by the PACS)"


def _labels(study: Sequence[PacsSeries]) -> list[SeriesLabel]:
    listed = all(s.frame_of_reference for s in study)
    return [
        SeriesLabel(
            s.series_uid, s.description, s.protocol, s.frame_of_reference if listed else _UNLISTED_FRAME,
            "on the PACS",
        )
        for s in study
    ]  # fmt: skip


def _study(inventory: Inventory, series: PacsSeries) -> list[PacsSeries]:
    """The inventory's image series of ``series``' study and patient, ``series`` among them."""
    return [
        s
        for s in inventory.images.values()
        if s.study_uid == series.study_uid and s.patient_id == series.patient_id
    ]


def channel_problem(
    study: Sequence[PacsSeries], channels: Sequence[Channel], reference: str | None
) -> str | None:
    """Why a study's series cannot be assigned to ``channels`` (the reference: the annotated one), or None.

    Parameters
    ----------
    study
        The image series of one study and patient on the PACS.
    channels
        The dataset's channels, the reference channel first.
    reference
        The annotated series' UID; None for an unannotated (inbox) study.

    Returns
    -------
    str or None
        The :class:`~iterseg.convert.channels.ChannelError` message, or None when they can be.

    """
    try:
        assign_channels(_labels(study), channels, reference)
    except ChannelError as exc:
        return str(exc)
    return None


def _annotation_problem(inventory: Inventory, ann: PacsAnnotation, channels: Sequence[Channel]) -> str | None:
    ref = inventory.images[ann.references[0]]
    why = channel_problem(_study(inventory, ref), channels, ref.series_uid)
    if why is None:
        return None
    return (
        f"{ann.series.modality} {ann.sop_uid} of patient {ref.patient_id}, study {ref.study_uid}: its "
        f"study's series cannot be assigned to the channels {', '.join(c.name for c in channels)}: {why}. "
        "Nothing of the study is pulled until they can be."
    )


def _take_annotations(
    inventory: Inventory, state: ProjectState, allow_unrefined: bool, channels: Sequence[Channel]
) -> tuple[list[PacsAnnotation], list[str], dict[str, dict[str, str]], int, int]:
    """The new annotations to pull, the problems, the refined predictions, the already pulled and ours."""
    new, problems, refines = [], [], {}
    already = unrefined = 0
    for ann in inventory.annotations:
        if ann.sop_uid in state.pulled_annotations:
            already += 1
            continue
        if ann.unrefined_prediction and not allow_unrefined:
            unrefined += 1
            continue
        missing = [uid for uid in ann.references if uid not in inventory.images]
        if not ann.references or missing:
            what = f"series {', '.join(missing)}, not" if missing else "no image series"
            problems.append(
                f"{ann.series.modality} {ann.sop_uid} of patient {ann.series.patient_id} references {what} "
                f"on the PACS among the dataset's {inventory_modality(inventory)} series: store its images "
                "there (or widen pacs.studies)"
            )
            continue
        if len(channels) > 1 and (why := _annotation_problem(inventory, ann, channels)):
            problems.append(why)
            continue
        new.append(ann)
        for uid in ann.references:
            if uid in state.predicted:
                pred = state.predicted[uid]
                refines[ann.sop_uid] = {"iteration": pred.iteration, "case_id": pred.case_id}
    return new, problems, refines, already, unrefined


def _inbox_studies(
    inventory: Inventory, state: ProjectState, inbox: Path, channels: Sequence[Channel]
) -> tuple[list[PacsSeries], list[str]]:
    """The series of every new unannotated study whose series fit the channels; the studies that do not."""
    referenced = {uid for ann in inventory.annotations for uid in ann.references}
    studies: dict[tuple[str, str], list[PacsSeries]] = {}
    for s in inventory.images.values():
        studies.setdefault((s.patient_id, s.study_uid), []).append(s)
    series: list[PacsSeries] = []
    problems = []
    for (patient, study), members in studies.items():
        uids = {s.series_uid for s in members}
        if uids & (referenced | state.pulled_images) or (inbox / inbox_study_folder(members[0])).exists():
            continue
        why = channel_problem(members, channels, None)
        if why is None:
            series += members
            continue
        problems.append(
            f"study {study} of patient {patient} (no annotation): its series cannot be assigned to the "
            f"channels {', '.join(c.name for c in channels)}: {why}. It goes to the inbox once they can be."
        )
    return series, problems


def plan_pull(
    inventory: Inventory,
    state: ProjectState,
    inbox: Path,
    allow_unrefined: bool,
    channels: Sequence[Channel] = (),
) -> PullPlan:
    """Decide what a pull takes, from the PACS inventory and what the project already has.

    Parameters
    ----------
    inventory
        The dataset on the PACS (:func:`~iterseg.pacs.inventory.read_inventory`).
    state
        What the project already has (:func:`~iterseg.pacs.inventory.project_state`).
    inbox
        The dataset's inbox: series (multi-sequence: studies) with a folder there are not taken again.
    allow_unrefined
        Take our own predicted SEGs back unedited as annotations too.
    channels
        The dataset's channels. Several: each annotation comes with every image series of its
        study, unannotated studies go to the inbox whole, and a study whose series cannot be
        assigned to the channels stays on the PACS, listed in ``problems``.

    """
    new, problems, refines, already, unrefined = _take_annotations(
        inventory, state, allow_unrefined, channels
    )
    if len(channels) > 1:
        first = (inventory.images[ann.references[0]] for ann in new)
        images = tuple(dict.fromkeys(s for ref in first for s in [ref, *_study(inventory, ref)]))
        unannotated, left = _inbox_studies(inventory, state, inbox, channels)
        problems += left
    else:
        referenced = {uid for ann in inventory.annotations for uid in ann.references}
        images = tuple(dict.fromkeys(inventory.images[uid] for ann in new for uid in ann.references))
        unannotated = [
            s
            for uid, s in inventory.images.items()
            if uid not in referenced
            and uid not in state.pulled_images
            and not (inbox / inbox_folder(s)).exists()
        ]
    names = tuple(c.name for c in channels) if len(channels) > 1 else ()
    return PullPlan(
        tuple(new), images, tuple(unannotated), refines, already, unrefined, inventory.our_segs_on_pacs,
        tuple(problems), names,
    )  # fmt: skip


def inventory_modality(inventory: Inventory) -> str:
    """The image modality of the inventory's series (for messages)."""
    return next((s.modality for s in inventory.images.values()), "image")


def check_date(date: str, existing: Sequence[str], root: Path) -> None:
    """Refuse a snapshot date that exists, or that would sort before the newest snapshot."""
    try:
        dt.date.fromisoformat(date)
    except ValueError:
        raise PacsError(f"--date {date!r} is not a date YYYY-MM-DD.") from None
    if date in existing:
        raise PacsError(
            f"{root}/{date}__{root.name} exists and is never rewritten; pull again another day, or "
            "pass --date with a later date."
        )
    if existing and date < max(existing):
        raise PacsError(
            f"--date {date} is before the newest snapshot {max(existing)} under {root}: iterations run in "
            "date order, so a new snapshot must be the newest."
        )


def _instance_uids(pacs: Pacs, series: PacsSeries) -> set[str]:
    with pacs_errors(pacs, f"listing the instances of series {series.series_uid}"):
        listed = pacs.client.search_for_instances(
            series.study_uid, series.series_uid, fields=["SOPInstanceUID"], get_remaining=True
        )
    return {json_text(item, TAGS["sop"]) for item in listed}


def _save_all(
    pacs: Pacs, series: PacsSeries, folder: Path, only: set[str] | None, written: list[str], doing: str
) -> None:
    """Save each instance of ``series`` (or of ``only``) as it arrives; append its UID to ``written``."""
    if only is None:
        datasets: Any = pacs.client.iter_series(
            series.study_uid, series.series_uid, media_types=ANY_TRANSFER_SYNTAX
        )
    else:
        datasets = (
            pacs.client.retrieve_instance(
                series.study_uid, series.series_uid, uid, media_types=ANY_TRANSFER_SYNTAX
            )
            for uid in sorted(only)
        )
    for ds in datasets:
        uid = str(ds.get("SOPInstanceUID", ""))
        cut = incomplete(ds)
        path = folder / f"{safe_name(uid)}.dcm"
        if not cut:
            try:
                ds.save_as(path, enforce_file_format=True)
            except (TypeError, ValueError, KeyError, struct.error) as exc:
                # a part cut inside its elements: pydicom reads the multipart boundary as an element
                path.unlink(missing_ok=True)
                cut = f"unwritable elements: {type(exc).__name__}: {exc}"
        if cut:
            raise PacsError(
                f"PACS {pacs.url}: {doing}: instance {uid or '(no SOP Instance UID)'} arrived cut short "
                f"({cut}): an answer cut short (PACS restarted, network); nothing was kept, pull again."
            )
        written.append(uid)


def _write_series(pacs: Pacs, series: PacsSeries, folder: Path, only: set[str] | None = None) -> list[str]:
    """Retrieve ``series`` (or its instances ``only``) into ``folder``; the SOP UIDs written.

    Raises
    ------
    PacsError
        When what arrived is not exactly the PACS's instance list (an answer cut short, a PACS
        changing under us), or a request fails.

    """
    expected = _instance_uids(pacs, series) if only is None else set(only)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    doing = f"retrieving {series.modality} series {series.series_uid} of patient {series.patient_id}"
    try:
        with pacs_errors(pacs, doing):
            _save_all(pacs, series, folder, only, written, doing)
    except (ValueError, InvalidDicomError) as exc:  # a multipart part cut inside its headers
        raise PacsError(
            f"PACS {pacs.url}: {doing}: the answer broke off inside an instance ({type(exc).__name__}: "
            f"{exc}): an answer cut short (PACS restarted, network); nothing was kept, pull again."
        ) from None
    got = set(written)
    if got != expected or len(written) != len(got):
        missing, extra = sorted(expected - got), sorted(got - expected)
        raise PacsError(
            f"PACS {pacs.url}: {doing}: {len(got)} of {len(expected)} instances arrived"
            + (f" ({len(missing)} missing, e.g. {missing[0]})" if missing else "")
            + (f" ({len(extra)} not in its instance list)" if extra else "")
            + ": an answer cut short or a series changing on the PACS; nothing was kept, pull again."
        )
    return written


def incomplete(ds: Any) -> str | None:
    """Why a retrieved image, SEG or RTSTRUCT is cut short, or None when it looks whole.

    A WADO-RS answer of several instances has no Content-Length on Orthanc: when the server dies
    mid-answer, dicomweb-client hands the last, unterminated part to pydicom, which reads what
    is there without complaint (the pixel data shorter than its header says, or missing).
    """
    import math

    from pydicom.encaps import generate_frames

    if ds.get("Modality") == "RTSTRUCT":  # no pixels: the structure set's own sequences must be there
        absent = [k for k in ("StructureSetROISequence", "ROIContourSequence") if k not in ds]
        return f"no {' or '.join(absent)}" if absent else None
    if "PixelData" not in ds:
        return "no pixel data"
    frames = int(ds.get("NumberOfFrames") or 1)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        try:
            got = sum(1 for _ in generate_frames(ds.PixelData, number_of_frames=frames))
        except (ValueError, KeyError) as exc:
            return f"compressed pixel data cut short ({exc})"
        return None if got == frames else f"{got} of {frames} compressed frames"
    pixels = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * frames
    expected = math.ceil(pixels * int(ds.BitsAllocated) / 8)
    got = len(ds.PixelData)
    return None if got >= expected else f"{got} of {expected} bytes of pixel data"


def _series_folder(series: PacsSeries) -> Path:
    return Path(safe_name(series.patient_id)) / f"{series.modality}_{short_hash(series.series_uid)}"


def _rename_into_place(staging: Path, target: Path) -> None:
    if target.exists():
        raise PacsError(f"{target} appeared while pulling; it was left as it is, and nothing was added.")
    os.rename(staging, target)


@dataclass(frozen=True)
class PullResult:
    """What a pull wrote: the snapshot (None when nothing was annotated) and the inbox folders."""

    plan: PullPlan
    snapshot: Path | None
    inbox_folders: tuple[Path, ...]
    files: int


def _record(pacs: Pacs, plan: PullPlan, date: str, files: dict[str, list[str]]) -> dict[str, Any]:
    return {
        "pulled_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "snapshot_date": date,
        "pacs": pacs.url,  # never credentials: the config refuses them in the URL
        "filters": pacs.settings.studies.describe(),
        "annotations": [
            {
                "sop_instance_uid": a.sop_uid,
                "series_instance_uid": a.series.series_uid,
                "study_instance_uid": a.series.study_uid,
                "patient_id": a.series.patient_id,
                "modality": a.series.modality,
                "manufacturer": a.manufacturer,
                "references": list(a.references),
                "file": str(_series_folder(a.series) / f"{safe_name(a.sop_uid)}.dcm"),
                "refines_prediction": plan.refines.get(a.sop_uid),
            }
            for a in plan.annotations
        ],
        "images": [
            {
                "series_instance_uid": s.series_uid,
                "study_instance_uid": s.study_uid,
                "patient_id": s.patient_id,
                "modality": s.modality,
                "instances": len(files[s.series_uid]),
                "folder": str(_series_folder(s)),
            }
            for s in plan.images
        ],
        "left_on_pacs": list(plan.problems),
        **({"channels": list(plan.channels)} if plan.study_wise else {}),
    }


def write_snapshot(pacs: Pacs, plan: PullPlan, dataset_root: Path, date: str) -> tuple[Path, int]:
    """Write the plan's annotations and images as snapshot ``date``; its path and file count."""
    from iterseg.records import write_json

    target = dataset_root / f"{date}__{dataset_root.name}"
    staging = partial_path(target)
    try:
        files: dict[str, list[str]] = {}
        for series in plan.images:
            files[series.series_uid] = _write_series(pacs, series, staging / _series_folder(series))
        by_series: dict[PacsSeries, set[str]] = {}
        for ann in plan.annotations:
            by_series.setdefault(ann.series, set()).add(ann.sop_uid)
        for series, uids in by_series.items():
            _write_series(pacs, series, staging / _series_folder(series), only=uids)
        write_json(staging / PULL_RECORD, _record(pacs, plan, date, files))
        _rename_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target, sum(len(v) for v in files.values()) + len(plan.annotations)


def inbox_groups(plan: PullPlan) -> dict[str, list[PacsSeries]]:
    """The plan's inbox folders and the series each gets: one per series, or (study-wise) per study."""
    groups: dict[str, list[PacsSeries]] = {}
    for series in plan.inbox:
        name = inbox_study_folder(series) if plan.study_wise else inbox_folder(series)
        groups.setdefault(name, []).append(series)
    return groups


def write_inbox(pacs: Pacs, plan: PullPlan, inbox: Path) -> tuple[list[Path], int]:
    """Write each new unannotated series (study-wise: study) as its own inbox folder; folders, files.

    A study's folder holds one sub-folder per series (``<Modality>_<hash>``), as the inbox's
    multi-sequence cases are found: one case per study of a folder.
    """
    folders, count = [], 0
    for name, members in inbox_groups(plan).items():
        target = inbox / name
        staging = partial_path(target)
        try:
            for series in members:
                where = staging / _series_folder(series).name if plan.study_wise else staging
                count += len(_write_series(pacs, series, where))
            inbox.mkdir(parents=True, exist_ok=True)
            _rename_into_place(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        folders.append(target)
    return folders, count


def _plan(
    settings: Settings, dataset: str, rawdata: Path, inbox_name: str, results: Path
) -> tuple[Pacs, PullPlan]:
    from iterseg.pacs.client import connect
    from iterseg.pacs.inventory import project_state, read_inventory
    from iterseg.rawdata.discovery import discover_snapshots

    ds = settings.datasets[dataset]
    if ds.pacs is None:
        raise PacsError(
            f"dataset {dataset} has no pacs: entry in the config; add datasets.{dataset}.pacs.url."
        )
    root = rawdata / dataset
    snapshots = discover_snapshots(rawdata, dataset, inbox_name) if root.is_dir() else []
    state = project_state([s.path for s in snapshots], results / dataset)
    pacs = connect(ds.pacs, dataset)
    inventory = read_inventory(pacs, ds.pacs.studies, state.our_segs)
    plan = plan_pull(inventory, state, root / inbox_name, ds.allow_unrefined_predictions, ds.channels)
    return pacs, plan


def pacs_status(settings: Settings, dataset: str, rawdata: Path, inbox_name: str, results: Path) -> PullPlan:
    """What ``pacs pull`` would take now (nothing is written).

    Parameters
    ----------
    settings
        The validated :class:`~iterseg.config.Settings`.
    dataset
        A dataset with a ``pacs:`` entry.
    rawdata, inbox_name, results
        The rawdata root, the inbox folder name, the results root (``data/results``).

    Raises
    ------
    PacsError
        No ``pacs:`` entry, a credential variable unset, the PACS unreachable or refusing us.

    """
    return _plan(settings, dataset, rawdata, inbox_name, results)[1]


def pull_dataset(
    settings: Settings, dataset: str, rawdata: Path, inbox_name: str, results: Path, date: str | None = None
) -> PullResult:
    """Pull what is new on the dataset's PACS: snapshot ``date`` (default today) and inbox folders.

    Parameters
    ----------
    settings, dataset, rawdata, inbox_name, results
        As for :func:`pacs_status`.
    date
        The snapshot date, ``YYYY-MM-DD``; it must be after every existing snapshot's.

    Raises
    ------
    PacsError
        As for :func:`pacs_status`; a date that exists or is not the newest; an answer cut short
        or a request failing during the download (nothing of that snapshot or folder is kept).

    """
    from iterseg.rawdata.discovery import discover_snapshots

    root = rawdata / dataset
    date = date or dt.date.today().isoformat()
    existing = [s.date for s in discover_snapshots(rawdata, dataset, inbox_name)] if root.is_dir() else []
    check_date(date, existing, root)
    pacs, plan = _plan(settings, dataset, rawdata, inbox_name, results)
    if plan.empty:
        return PullResult(plan, None, (), 0)
    root.mkdir(parents=True, exist_ok=True)
    snapshot, files = write_snapshot(pacs, plan, root, date) if plan.annotations else (None, 0)
    folders, inbox_files = write_inbox(pacs, plan, root / inbox_name)
    return PullResult(plan, snapshot, tuple(folders), files + inbox_files)


def _describe_inbox(plan: PullPlan) -> list[str]:
    if not plan.study_wise:
        return [f"  {len(plan.inbox)} new image series without annotation (for the inbox)"] + [
            f"    {s.patient_id}: {s.modality} {s.series_uid} -> inbox/{inbox_folder(s)}" for s in plan.inbox
        ]
    groups = inbox_groups(plan)
    lines = [f"  {len(groups)} new studies without annotation (for the inbox, one folder each)"]
    for name, members in groups.items():
        names = ", ".join(repr(s.description or s.protocol or s.series_uid) for s in members)
        lines.append(
            f"    {members[0].patient_id}: study {members[0].study_uid}, {len(members)} "
            f"{members[0].modality} series ({names}) -> inbox/{name}"
        )
    return lines


def _study_note(plan: PullPlan, ann: PacsAnnotation) -> str:
    """What comes with a study-wise annotation: its study and that study's image series, named."""
    ref = next((s for s in plan.images if s.series_uid in ann.references), None)
    if ref is None:
        return ""
    study = [s for s in plan.images if s.study_uid == ref.study_uid and s.patient_id == ref.patient_id]
    names = ", ".join(repr(s.description or s.protocol or s.series_uid) for s in study)
    return f", study {ref.study_uid} with its {len(study)} image series ({names})"


def describe_plan(plan: PullPlan, pacs_url: str) -> list[str]:
    """The plan in lines for people (``pacs status``, and the end of ``pacs pull``)."""
    lines = [f"PACS {pacs_url}:"]
    refined = len(plan.refines)
    whole = f" (whole studies, for the channels {', '.join(plan.channels)})" if plan.study_wise else ""
    lines.append(
        f"  {len(plan.annotations)} new annotations ({refined} refining our predictions) of "
        f"{len(plan.images)} image series{whole}"
    )
    for ann in plan.annotations:
        note = plan.refines.get(ann.sop_uid)
        how = f", refines the prediction of {note['case_id']} ({note['iteration']})" if note else ""
        lines.append(
            f"    {ann.series.patient_id}: {ann.series.modality} {ann.sop_uid} ({ann.manufacturer}){how}"
            + (_study_note(plan, ann) if plan.study_wise else "")
        )
    lines += _describe_inbox(plan)
    lines.append(
        f"  already pulled: {plan.already_pulled} annotations; our predicted SEGs there: "
        f"{plan.our_segs_on_pacs} (never pulled back unedited)"
        + (
            f"; {plan.unrefined_predictions} other unrefined iterseg SEGs left out"
            if plan.unrefined_predictions
            else ""
        )
    )
    lines += [f"  left on the PACS: {p}" for p in plan.problems]
    return lines


def describe_pull(result: PullResult, pacs_url: str) -> list[str]:
    """What a pull took and wrote, in lines for people."""
    lines = describe_plan(result.plan, pacs_url)
    if result.plan.empty:
        return [*lines, "nothing new on the PACS: no snapshot and no inbox folder written."]
    where = f"snapshot {result.snapshot}" if result.snapshot else "no snapshot (nothing annotated)"
    return [*lines, f"pulled {result.files} files: {where}; {len(result.inbox_folders)} new inbox folders."]
