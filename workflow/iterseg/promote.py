"""``results/<dataset>/latest``: atomic repointing, promotion in date order, rollback, history."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from pathlib import Path

from iterseg.errors import PromotionError

logger = logging.getLogger(__name__)

HISTORY_FILE = "latest_history.jsonl"
SUMMARY_FILE = "iteration.json"


def current_latest(results: Path) -> str | None:
    """The iteration (date folder name) ``latest`` points to, or None."""
    link = results / "latest"
    return os.readlink(link) if link.is_symlink() else None


def finished_iterations(results: Path) -> list[str]:
    """Dates of the iterations whose summary exists (every fold and the predictions done), oldest first."""
    return sorted(p.parent.name for p in results.glob(f"*/{SUMMARY_FILE}") if p.parent.name != "latest")


def _repoint(results: Path, iteration: str, action: str, reason: str) -> str | None:
    """Point ``latest`` at ``iteration`` by renaming a fresh symlink over it; append to the history.

    The link never goes missing: rename(2) replaces it atomically.
    """
    link = results / "latest"
    if not (results / iteration).is_dir():
        raise PromotionError(f"{results / iteration}: no such iteration folder.")
    if link.exists() and not link.is_symlink():
        raise PromotionError(
            f"{link} is a real file or folder, not a link; move it away so iterseg can manage `latest`."
        )
    before = current_latest(results)
    tmp = results / f".latest.{os.getpid()}.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(iteration, tmp)  # relative, so the results folder can be moved or mounted elsewhere
    os.replace(tmp, link)
    entry = {
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "action": action,
        "from": before,
        "to": iteration,
        "reason": reason,
    }
    with (results / HISTORY_FILE).open("a") as history:
        history.write(json.dumps(entry) + "\n")
    logger.info("latest -> %s (was %s): %s", iteration, before, reason)
    return before


def promote(results: Path, iteration: str) -> bool:
    """Point ``results/latest`` at ``results/<iteration>`` unless it already points at a newer one.

    Returns
    -------
    bool
        True if ``latest`` now points at ``iteration``; False if it stayed on a newer iteration.

    Raises
    ------
    PromotionError
        If the iteration folder is missing or ``latest`` is something other than a symlink.

    """
    before = current_latest(results)
    if before is not None and before >= iteration and (results / before).is_dir():
        logger.info("latest stays on %s (not older than %s)", before, iteration)
        return before == iteration
    _repoint(results, iteration, "promote", "every fold and the predictions finished")
    return True


def rollback(results: Path, iteration: str | None = None, reason: str = "") -> str:
    """Point ``latest`` back at ``iteration`` (default: the finished one before the current).

    Returns
    -------
    str
        The iteration ``latest`` now points at.

    Raises
    ------
    PromotionError
        If there is no earlier finished iteration, or ``iteration`` did not finish.

    """
    finished = finished_iterations(results)
    current = current_latest(results)
    if iteration is None:
        earlier = [d for d in finished if current is None or d < current]
        if not earlier:
            raise PromotionError(
                f"{results}: no finished iteration before {current}; nothing to roll back to."
            )
        iteration = earlier[-1]
    elif iteration not in finished:
        raise PromotionError(
            f"{results / iteration}: not a finished iteration (finished: {', '.join(finished) or 'none'})."
        )
    _repoint(results, iteration, "rollback", reason or f"iterseg rollback (was {current})")
    return iteration


def status_table(results: Path) -> str:
    """A plain-text table of the finished iterations of one dataset, oldest first."""
    current = current_latest(results)
    rows = [("date", "nnU-Net dataset", "train cases", "folds", "predicted", "latest")]
    for date in finished_iterations(results):
        summary = json.loads((results / date / SUMMARY_FILE).read_text())
        rows.append(
            (
                date,
                summary.get("dataset_name", "?"),
                str(summary.get("training_cases", "?")),
                ",".join(str(f["fold"]) for f in summary.get("folds", [])),
                str(len(summary.get("predictions", []))),
                "<- latest" if date == current else "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )
