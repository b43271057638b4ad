"""``results/<dataset>/latest``: atomic repointing, promotion in date order, rollback, history."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from pathlib import Path
from typing import Any

from iterseg.errors import PromotionError
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


def _append_history(results: Path, entry: dict[str, Any]) -> None:
    entry = {"time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **entry}
    with (results / HISTORY_FILE).open("a") as history:
        history.write(json.dumps(entry) + "\n")


def history(results: Path) -> list[dict[str, Any]]:
    """Every recorded move of ``latest`` and gate decision, oldest first."""
    path = results / HISTORY_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def recorded_decision(results: Path, iteration: str) -> dict[str, Any] | None:
    """The gate decision taken when ``iteration`` first finished, if any.

    A decision is taken once: re-running an iteration's last step (e.g. after a config edit)
    neither re-gates it nor undoes a rollback.
    """
    for entry in reversed(history(results)):
        if entry.get("iteration") == iteration and entry.get("action") in ("promote", "gated"):
            return entry
    return None


def settle(results: Path, iteration: str, promote_it: bool, reason: str) -> dict[str, Any]:
    """Apply a gate decision once and return the iteration's promotion record.

    Parameters
    ----------
    results
        ``results/<dataset>``.
    iteration
        The finished iteration (date folder).
    promote_it, reason
        The gate's verdict; ignored if the iteration was decided before.

    """
    recorded = recorded_decision(results, iteration)
    if recorded is not None:
        logger.info("%s: decided at %s (%s); not re-gated", iteration, recorded["time"], recorded["reason"])
        return {
            "promoted": recorded["action"] == "promote",
            "reason": recorded["reason"],
            "decided": recorded["time"],
            "latest_before": recorded.get("from"),
        }
    before = current_latest(results)
    if promote_it and promote(results, iteration, reason):
        return {"promoted": True, "reason": reason, "latest_before": before}
    if promote_it:
        reason = f"passed the gate, but latest is already the newer {before}"
    _append_history(
        results, {"action": "gated", "iteration": iteration, "from": before, "to": before, "reason": reason}
    )
    logger.warning("%s not promoted: %s", iteration, reason)
    return {"promoted": False, "reason": reason, "latest_before": before}


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
    _append_history(
        results, {"action": action, "iteration": iteration, "from": before, "to": iteration, "reason": reason}
    )
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
        path = results / date / MANIFEST_FILE
        manifests[date] = json.loads(path.read_text()) if path.is_file() else {}
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
        path = results / date / MANIFEST_FILE
        manifest = json.loads(path.read_text()) if path.is_file() else {}
        for case in manifest.get("skipped", []):
            key = tuple(str(case.get(k, "")) for k in ("stage", "where", "case", "file", "message"))
            if key in seen:
                continue
            seen.add(key)
            lines.append(f"  {date} {case.get('stage')} {case.get('case')}: {case.get('message')}")
    if not lines:
        return ""
    return "skipped cases (left out; each line names the file at fault and the fix):\n" + "\n".join(lines)
