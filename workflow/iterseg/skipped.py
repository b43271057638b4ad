"""Cases left out because they could not be converted or predicted, and why.

With ``on_bad_case: skip`` one unreadable case does not stop its step: it is written to the
step's ``skipped.json`` with the file, the cause and the fix, and surfaces in the manifest,
``iterseg status``, the report and a warning at the end of the snakemake run.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

logger = logging.getLogger(__name__)

SKIPPED_FILE = "skipped.json"


class BadCasePolicy(StrEnum):
    """What a case that cannot be converted or predicted does to its step (``on_bad_case``)."""

    SKIP = "skip"
    FAIL = "fail"


class Stage(StrEnum):
    """The step that left a case out."""

    CONVERT = "convert"
    PREDICT = "predict"


@dataclass(frozen=True)
class SkippedCase:
    """One case left out of a step."""

    stage: str  # a Stage
    where: str  # the snapshot folder name, or the inbox folder
    case: str  # the case id, or the folder / file it would have become
    patient_id: str
    file: str  # the file (or folder) at fault
    message: str  # one line: the file, the cause and the fix


def write_skipped(path: Path, cases: list[SkippedCase]) -> None:
    """Write ``cases`` (possibly none) to ``path``, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps([asdict(c) for c in cases], indent=2))
    tmp.replace(path)


def read_skipped(path: Path) -> list[SkippedCase]:
    """The cases listed in ``path``; none when the step wrote no such file."""
    if not path.is_file():
        return []
    return [SkippedCase(**c) for c in json.loads(path.read_text())]


def warn_skipped(cases: list[SkippedCase], what: str) -> None:
    """Log one warning line per skipped case of ``what`` (a step or an iteration)."""
    for case in cases:
        logger.warning("%s: %s skipped %s: %s", what, case.stage, case.case, case.message)
