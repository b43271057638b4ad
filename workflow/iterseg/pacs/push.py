"""``iterseg pacs push``: a promoted iteration's predicted SEGs to the PACS (STOW-RS), once.

Idempotent by design: before each round the PACS is asked (QIDO-RS) which of the SEGs it
already holds, only the others are stored, one instance per request (a STOW answer of 400 can
be a partial success; per instance there is no doubt which one failed), and the round ends by
asking again. A PACS that is down, refuses the login or rejects an instance gets
``attempts`` rounds with a growing pause; then the failure is reported, naming every SEG not
stored and why. The iteration stays promoted either way: the push is its own step, and
running snakemake again retries it.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom

from iterseg.errors import PacsError
from iterseg.pacs.client import Pacs, connect, pacs_errors
from iterseg.pacs.settings import PacsSettings

logger = logging.getLogger(__name__)

FIRST_PAUSE_S = 0.5  # between push rounds; doubles after each


@dataclass(frozen=True)
class PredictedSeg:
    """One predicted SEG of the iteration, as it will be stored."""

    case_id: str
    file: Path
    study_uid: str
    series_uid: str
    sop_uid: str


def _predicted_segs(predictions: Path) -> list[PredictedSeg]:
    from iterseg.records import Predictions, read_record

    segs = []
    for entry in read_record(predictions, Predictions).predictions:
        if entry.seg is None:
            continue
        path = predictions.parent / entry.seg
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        uids = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
        segs.append(PredictedSeg(entry.case_id, path, *uids))
    return segs


def _on_pacs(pacs: Pacs, seg: PredictedSeg) -> bool:
    with pacs_errors(pacs, f"checking whether the SEG of {seg.case_id} is stored"):
        found = pacs.client.search_for_instances(
            seg.study_uid, seg.series_uid, search_filters={"SOPInstanceUID": seg.sop_uid}
        )
    return any(item.get("00080018", {}).get("Value", [None])[0] == seg.sop_uid for item in found)


def _encoded(seg: PredictedSeg, settings: PacsSettings) -> pydicom.Dataset:
    """The SEG in the push's transfer syntax (same object and UIDs: only its encoding changes)."""
    ds = pydicom.dcmread(seg.file)
    ds.file_meta.TransferSyntaxUID = settings.push.transfer_syntax.uid
    return ds


def _failure_reason(exc: Any) -> str:
    """What a STOW error answer says about the instance (FailedSOPSequence), else the HTTP status."""
    response = getattr(exc, "response", None)
    if response is None:
        return str(exc)
    reason = f"HTTP {response.status_code} {response.reason}"
    try:
        answer = pydicom.Dataset.from_json(response.json())
        failed = [
            int(item.FailureReason) for item in answer.get("FailedSOPSequence", []) if "FailureReason" in item
        ]
        if failed:
            reason += f", FailureReason {failed[0]:#06x}"
    except ValueError:
        pass
    return reason


def _store(pacs: Pacs, seg: PredictedSeg) -> str | None:
    """Store one SEG; None when stored, else why not (one line)."""
    import requests

    try:
        answer = pacs.client.store_instances([_encoded(seg, pacs.settings)])
    except requests.HTTPError as exc:
        return _failure_reason(exc)
    except (requests.ConnectionError, requests.Timeout) as exc:
        return f"PACS unreachable ({type(exc).__name__})"
    failed = answer.get("FailedSOPSequence", [])
    return f"refused (FailedSOPSequence, reason {failed[0].get('FailureReason')})" if failed else None


def _round(pacs: Pacs, segs: list[PredictedSeg]) -> tuple[list[PredictedSeg], dict[str, str]]:
    """One push round: the SEGs still missing afterwards, and why each is."""
    why: dict[str, str] = {}
    for seg in segs:
        try:
            if _on_pacs(pacs, seg):
                continue
        except PacsError as exc:
            why[seg.sop_uid] = str(exc)
            continue
        reason = _store(pacs, seg)
        if reason is not None:
            why[seg.sop_uid] = reason
    missing = []
    for seg in segs:
        try:
            stored = _on_pacs(pacs, seg)
        except PacsError as exc:
            why.setdefault(seg.sop_uid, str(exc))
            stored = False
        if not stored:
            why.setdefault(seg.sop_uid, "accepted but not listed by the PACS afterwards")
            missing.append(seg)
    return missing, why


def push_segs(settings: PacsSettings, dataset: str, segs: list[PredictedSeg]) -> int:
    """Store ``segs`` on the PACS; the number of rounds it took.

    Raises
    ------
    PacsError
        Some SEG is still not on the PACS after ``settings.attempts`` rounds; names each and why.

    """
    pacs = connect(settings, dataset, attempts=1)  # the rounds below are the retries
    missing, why = list(segs), dict[str, str]()
    for attempt in range(1, settings.attempts + 1):
        missing, why = _round(pacs, missing)
        if not missing:
            return attempt
        logger.warning(
            "push round %d: %d SEGs not stored yet (%s)", attempt, len(missing), why[missing[0].sop_uid]
        )
        if attempt < settings.attempts:
            time.sleep(FIRST_PAUSE_S * 2 ** (attempt - 1))
    details = "; ".join(f"{s.case_id} ({s.sop_uid}): {why[s.sop_uid]}" for s in missing)
    raise PacsError(
        f"PACS {settings.url}: {len(missing)} of {len(segs)} predicted SEGs not stored after "
        f"{settings.attempts} rounds: {details}. The iteration stays promoted; run snakemake again to retry "
        "the push (SEGs already there are not sent twice)."
    )


def push_iteration(
    settings: PacsSettings, dataset: str, iteration: Path, predictions: Path, output: Path
) -> dict[str, Any]:
    """Push a promoted iteration's predicted SEGs; write and return the record ``output``.

    Parameters
    ----------
    settings
        The dataset's PACS settings.
    dataset
        Its name, for messages.
    iteration
        The iteration's ``iteration.json``: nothing is pushed unless it was promoted.
    predictions
        Its ``predictions.json`` (SEG paths relative to its folder).
    output
        The push record (``pacs_pushed.json``): what was stored, in which transfer syntax.

    Raises
    ------
    PacsError
        As :func:`push_segs`; the record is then not written, so the next run retries.

    """
    from iterseg.records import IterationSummary, read_record, write_json

    summary = read_record(iteration, IterationSummary)
    record: dict[str, Any] = {"iteration": summary.iteration, "pacs": settings.url, "pushed": []}
    if not summary.promoted or not settings.push.enabled:
        record["not_pushed"] = (
            f"iteration not promoted ({summary.reason})"
            if summary.promoted is False
            else "pacs.push.enabled is false"
        )
        logger.info("nothing pushed: %s", record["not_pushed"])
    else:
        segs = _predicted_segs(predictions)
        rounds = push_segs(settings, dataset, segs) if segs else 0
        record.update(
            transfer_syntax=settings.push.transfer_syntax.value,
            rounds=rounds,
            pushed_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            pushed=[
                {"case_id": s.case_id, "sop_instance_uid": s.sop_uid, "series_instance_uid": s.series_uid,
                 "study_instance_uid": s.study_uid, "file": str(s.file)}
                for s in segs
            ],
        )  # fmt: skip
        logger.info("%d predicted SEGs of %s on PACS %s", len(segs), summary.iteration, settings.url)
    write_json(output, record)
    return record
