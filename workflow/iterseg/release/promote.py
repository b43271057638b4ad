"""``results/<dataset>/latest``: atomic repointing, promotion in date order, rollback, history."""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path
from typing import Any

from iterseg.errors import IterSegError, PromotionError
from iterseg.paths import partial_path
from iterseg.records import LatestMove, Promotion, append_history, read_history, read_json
from iterseg.release.manifest import MANIFEST_FILE

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


def _append_history(
    results: Path, action: str, iteration: str, before: str | None, after: str | None, reason: str
) -> None:
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    append_history(results / HISTORY_FILE, LatestMove(now, action, iteration, before, after, reason))


def history(results: Path) -> list[LatestMove]:
    """Every recorded move of ``latest`` and gate decision, oldest first."""
    return read_history(results / HISTORY_FILE)


def recorded_decision(results: Path, iteration: str) -> LatestMove | None:
    """The gate decision taken when ``iteration`` first finished, if any.

    A decision is taken once: re-running an iteration's last step (e.g. after a config edit)
    neither re-gates it nor undoes a rollback.
    """
    for entry in reversed(history(results)):
        if entry.iteration == iteration and entry.action in ("promote", "gated"):
            return entry
    return None


def settle(results: Path, iteration: str, promote_it: bool, reason: str) -> Promotion:
    """Apply a gate decision once and return the iteration's promotion record.

    Parameters
    ----------
    results
        ``results/<dataset>``.
    iteration
        The finished iteration (date folder).
    promote_it, reason
        The gate's verdict; ignored if the iteration was decided before.

    Returns
    -------
    Promotion
        The manifest's ``promotion``: the verdict applied now, or the one recorded earlier.

    """
    recorded = recorded_decision(results, iteration)
    if recorded is not None:
        logger.info("%s: decided at %s (%s); not re-gated", iteration, recorded.time, recorded.reason)
        return Promotion(recorded.action == "promote", recorded.reason, recorded.from_, decided=recorded.time)
    before = current_latest(results)
    if promote_it and promote(results, iteration, reason):
        return Promotion(True, reason, before)
    if promote_it:
        reason = f"passed the gate, but latest is already the newer {before}"
    _append_history(results, "gated", iteration, before, before, reason)
    logger.warning("%s not promoted: %s", iteration, reason)
    return Promotion(False, reason, before)


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
    tmp = partial_path(link)
    os.symlink(iteration, tmp)  # relative, so the results folder can be moved or mounted elsewhere
    try:
        os.replace(tmp, link)
    finally:
        if tmp.is_symlink():
            tmp.unlink()
    _append_history(results, action, iteration, before, iteration, reason)
    logger.info("latest -> %s (was %s): %s", iteration, before, reason)
    return before


def promote(results: Path, iteration: str, reason: str = "every fold and the predictions finished") -> bool:
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
    _repoint(results, iteration, "promote", reason)
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


def _manifest_or_empty(path: Path) -> dict[str, Any]:
    """A manifest as a plain mapping, {} if absent: the tables read older and partial manifests too."""
    data: dict[str, Any] = read_json(path) if path.is_file() else {}
    return data


def _dice_cells(manifest: dict[str, Any], labels: list[str]) -> list[str]:
    summary = (manifest.get("test_metrics") or {}).get("summary") or {}
    cells = []
    for label in labels:
        value = (summary.get(label) or {}).get("dice_mean")
        cells.append("-" if value is None else f"{value:.3f}")
    return cells


def status_table(results: Path) -> str:
    """A plain-text table of the finished iterations of one dataset, oldest first.

    Columns: cases trained on and held out, annotations new or refined since the previous
    iteration, pairs converted (the rest reused), cases skipped (conversion and prediction; "-"
    for manifests from before cases could be skipped), test Dice per label, and
    whether the iteration was promoted and why.
    """
    current = current_latest(results)
    manifests = {}
    for date in finished_iterations(results):
        manifests[date] = _manifest_or_empty(results / date / MANIFEST_FILE)
    labels: list[str] = []
    for manifest in manifests.values():
        for name in manifest.get("labels", {}):
            if name not in ("background", "ignore") and name not in labels:
                labels.append(name)
    header = [
        "date",
        "train",
        "test",
        "new",
        "refined",
        "converted",
        "skipped",
        *[f"Dice {n}" for n in labels],
        "promoted",
    ]
    rows = [header]
    for date, manifest in manifests.items():
        summary = manifest.get("summary", {})
        promotion = manifest.get("promotion", {})
        verdict = ("yes" if promotion.get("promoted") else "no") + f": {promotion.get('reason', '?')}"
        if date == current:
            verdict = "<- latest; " + verdict
        rows.append(
            [
                date,
                str(summary.get("train", "?")),
                str(summary.get("test", "?")),
                str(summary.get("new", "?")),
                str(summary.get("refined", "?")),
                f"{summary.get('converted', '?')}/{summary.get('converted', 0) + summary.get('reused', 0)}",
                str(len(manifest["skipped"])) if "skipped" in manifest else "-",
                *_dice_cells(manifest, labels),
                verdict,
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def skipped_list(results: Path) -> str:
    """The cases the finished iterations left out, one line each with the file and the fix.

    A case conversion skipped in one snapshot stays out of every later iteration trained on
    that snapshot; it is listed once, under the first iteration that left it out.

    Returns
    -------
    str
        Empty when no iteration skipped a case.

    """
    seen: set[tuple[str, ...]] = set()
    lines = []
    for date in finished_iterations(results):
        manifest = _manifest_or_empty(results / date / MANIFEST_FILE)
        for case in manifest.get("skipped", []):
            key = tuple(str(case.get(k, "")) for k in ("stage", "where", "case", "file", "message"))
            if key in seen:
                continue
            seen.add(key)
            lines.append(f"  {date} {case.get('stage')} {case.get('case')}: {case.get('message')}")
    if not lines:
        return ""
    return "skipped cases (left out; each line names the file at fault and the fix):\n" + "\n".join(lines)


def status_report(results: Path, dataset: str) -> str:
    """What ``iterseg status`` prints: the iterations' table, the skipped cases, what to refine next.

    Parameters
    ----------
    results
        The results root (``data/results``), holding one folder per dataset.
    dataset
        The dataset's name.

    Raises
    ------
    IterSegError
        When the dataset has no results yet.

    """
    from iterseg.report.dataset import refine_next  # lazily: the gate and rollback need no report code

    folder = results / dataset
    if not folder.is_dir():
        raise IterSegError(f"{folder}: no results yet for dataset {dataset!r}; run snakemake first.")
    parts = [status_table(folder), skipped_list(folder), refine_next(folder)]
    return "".join(part + "\n" for part in parts if part)
