"""What :func:`iterseg.api.analyze` does inside its temporary folder, and ``iterseg analyze``'s output.

Inside the temporary folder ``root``::

    inputs/input_N.tar   the N-th input's bytes, removed once unpacked
    unpacked/            each archive unpacked with the snapshot archives' checks
    inbox/<case>/        one folder per case, as :func:`iterseg.rawdata.inbox.scan_inbox` reads them
    out/                 what :func:`iterseg.nnunet.predict.predict_inbox` published (labels/, seg/)

and ``predict_inbox`` stages in ``root`` too, so nothing is written anywhere else. Messages
name a case's origin (``input 2/P101/CT/5.dcm``), never the temporary paths that are gone
when the caller reads them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import re
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iterseg.errors import AnalysisError, PredictionError, UsageError
from iterseg.nnunet.predict import InboxPrediction, predict_inbox
from iterseg.rawdata.archives import MAX_BYTES, ArchiveUse, extract_archive
from iterseg.rawdata.inbox import NIFTI_SUFFIXES
from iterseg.records import AnalysisRecord, write_record
from iterseg.release.installed import InstalledModel
from iterseg.skipped import BadCasePolicy

logger = logging.getLogger(__name__)

ANALYSIS_FILE = "analysis.json"
DONE, FAILED = "done", "failed"
NOTHING = "inputs"  # the errors key when there is nothing to analyze at all
PREDICTION = "prediction"  # the errors key when not one case could be predicted
_DEVICE = re.compile(r"cpu|mps|cuda(:\d+)?")

#: Archives given to the analyzer: the snapshot archives' checks, fixes that fit bytes sent to a call.
ANALYZED_ARCHIVES = ArchiveUse(
    error=AnalysisError,
    holds="analyzed archives",
    too_many="split it into several archives",
    too_big="split it into several archives",
    by_hand="; each input must be a .tar or .tar.gz archive of case folders and NIfTI files",
)


@dataclass(frozen=True)
class _Found:
    """One case an unpacked archive holds, before it is given its inbox folder."""

    index: int  # the input's number, from 1
    path: Path  # the case's folder (DICOM) or file (NIfTI) in the unpacked archive
    origin: str  # "input N/<path in the archive>", for messages
    name: str  # the folder name or the NIfTI file's stem


def check_device(device: str) -> None:
    """Refuse a ``device`` torch would not take before anything is unpacked.

    Raises
    ------
    UsageError
        Unless ``device`` is ``cpu``, ``mps``, ``cuda`` or ``cuda:N``.

    """
    if not _DEVICE.fullmatch(device):
        raise UsageError(f"device {device!r}: not one of cpu, cuda, cuda:N, mps; pass one of those.")


def unpack_inputs(
    inputs: Sequence[Any], root: Path, max_bytes: int = MAX_BYTES
) -> tuple[list[tuple[int, Path]], dict[str, str]]:
    """Unpack each input's bytes into its own folder under ``root/unpacked``.

    Returns the unpacked folders with their input number (from 1), and ``"input N"`` -> the
    message of each input that is no bytes or no safe, readable tar archive.
    """
    (root / "inputs").mkdir()
    (root / "unpacked").mkdir()
    unpacked: list[tuple[int, Path]] = []
    errors: dict[str, str] = {}
    for index, data in enumerate(inputs, start=1):
        key = f"input {index}"
        if not isinstance(data, bytes | bytearray | memoryview):
            errors[key] = f"{key}: a {type(data).__name__}, not the bytes of a .tar or .tar.gz archive."
            continue
        archive = root / "inputs" / f"input_{index}.tar"  # tarfile detects the compression itself
        archive.write_bytes(data)
        try:
            folder = extract_archive(archive, root / "unpacked", max_bytes, ANALYZED_ARCHIVES)
            unpacked.append((index, folder))
        except AnalysisError as exc:
            errors[key] = str(exc).replace(str(archive), key)
        finally:
            archive.unlink()
    return unpacked, errors


def _nifti_stem(name: str) -> str | None:
    return next((name[: -len(s)] for s in NIFTI_SUFFIXES if name.endswith(s)), None)


def _hidden(path: Path, folder: Path) -> bool:
    # macOS leaves "._<name>" resource forks and .DS_Store beside copied files
    return any(part.startswith(".") for part in path.relative_to(folder).parts)


def _cases_of(index: int, folder: Path) -> tuple[list[_Found], list[str]]:
    """The cases of one unpacked archive, and its top-level files that belong to no case."""
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and not _hidden(p, folder)]
    niftis = {p: stem for p in files if (stem := _nifti_stem(p.name))}
    found = [_Found(index, p, f"input {index}/{p.relative_to(folder)}", stem) for p, stem in niftis.items()]
    others = {p.relative_to(folder).parts[0] for p in files if p not in niftis}  # DICOM, or what scan refuses
    loose = []
    for top in sorted(folder.iterdir()):
        if top.name not in others:
            continue
        if top.is_dir():
            found.append(_Found(index, top, f"input {index}/{top.name}", top.name))
        else:
            loose.append(top.name)
    return found, loose


def _inbox_names(found: Sequence[_Found]) -> list[str]:
    """A folder name per case: its own where no other case has it, else with a hash of its origin."""
    counts = Counter(f.name for f in found)
    used = {name for name, count in counts.items() if count == 1}
    names: list[str] = []
    for case in found:
        name = case.name
        if counts[name] > 1:
            digest = hashlib.sha1(case.origin.encode()).hexdigest()
            short, full = f"{name}_{digest[:8]}", f"{name}_{digest}"
            name = full if short in used else short  # the short one is some other case's own name
        used.add(name)
        names.append(name)
    return names


def arrange_inbox(unpacked: Sequence[tuple[int, Path]], inbox: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Move every case of the unpacked archives into a folder of its own in ``inbox``.

    A top-level folder of an archive is a DICOM case named like the folder; each NIfTI file, at
    any level, is a case named by its stem (moved out of its folder first). Names that several
    cases share, in one archive or across archives, get a hash of the case's origin, so no case
    overwrites another. Returns the temporary path -> origin of every case (to rewrite messages)
    and ``"input N"`` -> the message of top-level files that belong to no case.
    """
    inbox.mkdir()
    found: list[_Found] = []
    errors: dict[str, str] = {}
    for index, folder in unpacked:
        cases, loose = _cases_of(index, folder)
        found += cases
        if loose:
            errors[f"input {index}"] = (
                f"input {index}: {len(loose)} file(s) at the top of the archive ({', '.join(loose[:3])}) "
                "belong to no case and were not analyzed; put each case's DICOM series in a folder of its "
                "own (its name is the case id), or add NIfTI files (.nii.gz) as they are."
            )
    places: dict[str, str] = {}
    names = _inbox_names(found)
    niftis_first = sorted(zip(found, names, strict=True), key=lambda pair: pair[0].path.is_dir())
    for case, name in niftis_first:
        target = inbox / name / case.path.name if case.path.is_file() else inbox / name
        target.parent.mkdir(exist_ok=True)
        case.path.rename(target)
        places[str(target)] = case.origin
        places[str(inbox / name)] = case.origin
    return places, errors


def readable(message: str, places: dict[str, str], inbox: Path) -> str:
    """``message`` with every temporary path replaced by the origin of what it names."""
    for path in sorted(places, key=len, reverse=True):
        message = message.replace(path, places[path])
    return message.replace(str(inbox), "the analysis inbox")


def predict_cases(
    model: InstalledModel, device: str, root: Path, places: dict[str, str]
) -> tuple[InboxPrediction | None, dict[str, str]]:
    """Predict every case of ``root/inbox`` into ``root/out`` (staged in ``root``), skipping bad ones.

    Returns the run (None when not one case could be predicted) and case id -> message of each
    case left out.
    """
    inbox, printed = root / "inbox", io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):  # nnU-Net narrates on stdout: not into a caller's
            run = predict_inbox(
                work=model.work, plan_record=model.plan_record, trainer=model.trainer, folds=model.folds,
                device=device, inbox=inbox, modality=model.modality, out=root / "out",
                description=model.description, roi_yaml=model.roi_yaml, on_bad_case=BadCasePolicy.SKIP,
                staging_root=root, channels=model.channels,
            )  # fmt: skip
    except PredictionError as exc:  # with skip: no case could be predicted (it lists each)
        return None, {PREDICTION: readable(str(exc), places, inbox)}
    finally:
        logger.debug("nnU-Net: %s", printed.getvalue().strip())
    return run, {case.case: readable(case.message, places, inbox) for case in run.skipped}


def collect(run: InboxPrediction, out: Path) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The SEG of each DICOM case and the label NIfTI of each NIfTI case ``run`` published in ``out``."""
    dicom = {f"{p.case_id}.dcm": (out / p.seg).read_bytes() for p in run.predictions if p.seg}
    nifti = {f"{p.case_id}.nii.gz": (out / p.label).read_bytes() for p in run.predictions if not p.seg}
    return dicom, nifti


# --- iterseg analyze: the result written into a folder -----------------------------------------------


def read_inputs(paths: Sequence[Path]) -> list[bytes]:
    """The bytes of each archive named on the command line.

    Raises
    ------
    UsageError
        Naming the first path that is no readable file.

    """
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise UsageError(f"{missing[0]}: no such file; name the .tar or .tar.gz archives to analyze.")
    return [p.read_bytes() for p in paths]


def prepare_out(out: Path, force: bool) -> None:
    """Refuse a non-empty ``out`` unless ``force``; then remove what an earlier analysis wrote there.

    Raises
    ------
    UsageError
        If ``out`` is a file, or a folder with something in it and ``force`` is false.

    """
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: a file, not a folder; name a new or empty folder for the results.")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UsageError(
            f"{out}: not empty; pass --force to replace an earlier analysis there, or name a new folder."
        )
    for sub in ("seg", "labels"):
        shutil.rmtree(out / sub, ignore_errors=True)
    (out / ANALYSIS_FILE).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def write_analysis(result: dict[str, Any], out: Path, model: str, inputs: Sequence[Path]) -> AnalysisRecord:
    """Write a result of ``analyze`` into ``out``: ``seg/<case>.dcm``, ``labels/<case>.nii.gz``, a record."""
    files = []
    for sub, found in (("seg", result["dicom_seg_bytes"]), ("labels", result["nifti_seg_bytes"])):
        for name, data in sorted(found.items()):
            (out / sub).mkdir(exist_ok=True)
            (out / sub / name).write_bytes(data)
            files.append(f"{sub}/{name}")
    record = AnalysisRecord(
        status=result["status"], model=model, inputs=tuple(str(p) for p in inputs), files=tuple(files),
        errors=dict(result["errors"]),
    )  # fmt: skip
    write_record(out / ANALYSIS_FILE, record)  # last: whoever finds it finds the files it lists
    return record


def analyze_files(
    inputs: Sequence[Path], model: str, out: Path, device: str = "cpu", force: bool = False
) -> AnalysisRecord:
    """``iterseg analyze``: :func:`iterseg.api.analyze` of archive files, its results written into ``out``.

    Raises
    ------
    UsageError
        If an input is no file, or ``out`` is not empty and ``force`` is false (nothing written).
    ModelArchiveError
        If ``model`` is no model :func:`iterseg.release.installed.resolve_model` takes.

    """
    from iterseg.api import analyze
    from iterseg.release.installed import resolve_model

    data = read_inputs(inputs)
    resolved = resolve_model(model)  # before ``out`` is touched: a wrong --model changes nothing
    prepare_out(out, force)
    result = analyze(data, resolved, device)
    record = write_analysis(result, out, model, inputs)
    for key, message in record.errors.items():
        logger.warning("%s: %s", key, message)
    logger.info("%s: %s, %d file(s) written", out / ANALYSIS_FILE, record.status, len(record.files))
    return record


def failure(record: AnalysisRecord, out: Path) -> AnalysisError:
    """The error ``iterseg analyze`` ends with when nothing was analyzed; it lists every error."""
    lines = "".join(f"\n  {key}: {message}" for key, message in record.errors.items())
    return AnalysisError(
        f"{out / ANALYSIS_FILE}: nothing was analyzed, not one case predicted:{lines}\nFix the inputs as "
        "each line says and run again."
    )
