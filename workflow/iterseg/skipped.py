"""Cases left out because they could not be converted or predicted, and why.

With ``on_bad_case: skip`` one unreadable case does not stop its step: it is written to the
step's ``skipped.json`` with the file, the cause and the fix, and surfaces in the manifest,
``iterseg status``, the report and a warning at the end of the snakemake run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from iterseg.paths import iteration_dir
from iterseg.records import RecordError, SkippedCase, SkippedCases, read_record, write_record

if TYPE_CHECKING:
    from iterseg.rawdata.discovery import Snapshot

__all__ = [
    "SKIPPED_FILE",
    "SKIPPED_PREDICTIONS_FILE",
    "BadCasePolicy",
    "SkippedCase",
    "Stage",
    "iteration_skipped",
    "read_skipped",
    "warn_run",
    "warn_skipped",
    "write_skipped",
]

logger = logging.getLogger(__name__)

SKIPPED_FILE = "skipped.json"  # conversion's, in procdata/<dataset>/<date>__<dataset>/converted/
# prediction's, in results/<dataset>/<date>/ beside predictions.json; its own name there, because
# the results folder gathers every step's outputs and the manifest lists both kinds
SKIPPED_PREDICTIONS_FILE = "skipped_predictions.json"


class BadCasePolicy(StrEnum):
    """What a case that cannot be converted or predicted does to its step (``on_bad_case``)."""

    SKIP = "skip"
    FAIL = "fail"


class Stage(StrEnum):
    """The step that left a case out."""

    CONVERT = "convert"
    PREDICT = "predict"


def write_skipped(path: Path, cases: Sequence[SkippedCase]) -> None:
    """Write ``cases`` (possibly none) to ``path``, atomically (a :class:`~iterseg.records.SkippedCases`)."""
    write_record(path, SkippedCases(tuple(cases)))


def read_skipped(path: Path) -> list[SkippedCase]:
    """The cases listed in ``path``; none when the step wrote no such file.

    Raises
    ------
    RecordError
        If the file is not a list of skipped cases (hand-edited or truncated).

    """
    if not path.is_file():
        return []
    return list(read_record(path, SkippedCases).cases)


def warn_skipped(cases: Sequence[SkippedCase], what: str, log: logging.Logger | None = None) -> None:
    """Log one warning line per skipped case of ``what`` (a step or an iteration).

    The line is formatted here: Snakemake's handlers print a record's message without its
    arguments, and ``log`` may be Snakemake's logger.
    """
    for case in cases:
        (log or logger).warning(f"{what}: {case.stage} skipped {case.case}: {case.message}")


def iteration_skipped(
    procdata: Path, results: Path, dataset: str, date: str
) -> tuple[list[SkippedCase], list[SkippedCase]]:
    """The cases conversion left out of the snapshot of ``date``, and those its prediction left out.

    Parameters
    ----------
    procdata, results
        ``data/procdata`` and ``data/results``.
    dataset, date
        The iteration.

    """
    converted = iteration_dir(procdata, dataset, date) / "converted" / SKIPPED_FILE
    return read_skipped(converted), read_skipped(results / dataset / date / SKIPPED_PREDICTIONS_FILE)


def warn_run(
    snapshots: Mapping[str, Sequence[Snapshot]],
    log: logging.Logger | None = None,
    procdata: Path = Path("data/procdata"),
    results: Path = Path("data/results"),
) -> int:
    """Log one warning per case any iteration of the run left out; nothing when none was.

    The Snakefile's ``onsuccess`` and ``onerror`` handlers call this, so a skipped case is seen
    on the terminal at the end of the run and not only in a rule log.

    Parameters
    ----------
    snapshots
        Dataset -> its snapshots (one iteration each), as the workflow found them.
    log
        Where to log (Snakemake's logger from the Snakefile); default this module's.
    procdata, results
        ``data/procdata`` and ``data/results`` (relative to the workflow's directory).

    Returns
    -------
    int
        The number of lines logged.

    """
    count = 0
    for dataset, snaps in snapshots.items():
        for snap in snaps:
            try:
                converted, predicted = iteration_skipped(procdata, results, dataset, snap.date)
            except (OSError, RecordError) as exc:  # a hand-edited or truncated list
                (log or logger).warning(
                    f"{dataset} {snap.date}: cannot read its list of skipped cases ({exc})"
                )
                continue
            for cases in (converted, predicted):
                warn_skipped(cases, f"{dataset} {snap.date}", log)
                count += len(cases)
    return count
