"""The dataset report (``iterseg report``): curves and tables over a dataset's iterations.

Files only; Snakemake's ``--report`` gathers them (the rules mark them with captions), so the
report always shows what the workflow produced. The iterations' records are read as they are on
disk: each iteration's ``manifest.json`` and, when researchers refined its predictions,
``annotation_effort.json``; ``iterseg status`` reads the ``latest`` worklist (:func:`refine_next`).
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from iterseg.convert.assemble import IGNORE_LABEL
from iterseg.paths import partial_path
from iterseg.records import read_json
from iterseg.report.curves import EffortPoint, IterationPoint, effort_curves, learning_curves, training_curves

logger = logging.getLogger(__name__)

_SKIPPED_HEADING = "Skipped cases (left out by conversion or prediction; each names the file and the fix)"


@dataclass(frozen=True)
class _Iteration:
    """What the report takes from one iteration: its curve points and its table rows."""

    point: IterationPoint
    row: dict[str, Any]
    skipped: list[dict[str, Any]]
    effort: EffortPoint | None
    effort_row: dict[str, Any] | None
    pictures: list[Path]  # the fold's training curves, already written


def _mean(summary: Mapping[str, Any], label: str, key: str) -> float | None:
    value = (summary.get(label) or {}).get(key)
    return None if value is None else float(value)


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Let ``write`` fill a temporary file beside ``path``, then rename it into place."""
    partial = partial_path(path)
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _write_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    csv_path: Path,
    title: str,
    more: Sequence[tuple[str, Sequence[Mapping[str, Any]]]] = (),
) -> None:
    """A table as CSV (to download) and as an HTML page of the same name (shown in the report).

    ``more``: further (heading, rows) sections of the HTML page only, each shown when it has rows.
    """
    import pandas as pd

    def html(frame: pd.DataFrame) -> str:
        return str(frame.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.3f}", border=0))

    frame = pd.DataFrame(list(rows), columns=list(columns))
    _write_atomically(csv_path, lambda partial: frame.to_csv(partial, index=False))
    body = html(frame) + "".join(
        f"<h3>{escape(heading)}</h3>{html(pd.DataFrame(list(extra)))}" for heading, extra in more if extra
    )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><style>"
        "body{font-family:sans-serif} table{border-collapse:collapse} "
        "td,th{padding:3px 8px;border-bottom:1px solid #ccc;text-align:right}"
        f"</style><title>{title}</title></head><body><h3>{title}</h3>{body}</body></html>\n"
    )
    _write_atomically(csv_path.with_suffix(".html"), lambda partial: partial.write_text(page))


def _skipped_rows(date: str, manifest: Mapping[str, Any], seen: set[tuple[str, ...]]) -> list[dict[str, Any]]:
    """The cases an iteration skipped that no earlier iteration listed (conversion skips recur)."""
    rows = []
    for case in manifest.get("skipped", []):
        key = tuple(str(case.get(k, "")) for k in ("stage", "where", "case", "file", "message"))
        if key not in seen:
            seen.add(key)
            rows.append({"iteration": date, **{k: case.get(k, "") for k in ("stage", "case", "message")}})
    return rows


def _iteration_row(date: str, manifest: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """The row of ``iterations.csv``: training set, test-set scores, skipped cases and promotion."""
    summary = manifest.get("test_metrics", {}).get("summary", {})
    row: dict[str, Any] = {
        "iteration": date,
        "training_cases": manifest["summary"]["train"],
        "new": manifest["summary"]["new"],
        "refined": manifest["summary"]["refined"],
        "test_cases": summary.get("mean", {}).get("cases"),
        "test_dice_mean": _mean(summary, "mean", "dice_mean"),
        "test_nsd_mean": _mean(summary, "mean", "nsd_mean"),
    }
    for name in names:
        row[f"dice_{name}"] = _mean(summary, name, "dice_mean")
    row["skipped"] = len(manifest["skipped"]) if "skipped" in manifest else None
    row["promoted"] = manifest.get("promotion", {}).get("promoted")
    row["reason"] = manifest.get("promotion", {}).get("reason", "")
    return row


def _iteration_point(date: str, manifest: Mapping[str, Any], names: Sequence[str]) -> IterationPoint:
    """The iteration on the learning curves: training cases and test-set Dice and NSD per label."""
    summary = manifest.get("test_metrics", {}).get("summary", {})
    return IterationPoint(
        date,
        int(manifest["summary"]["train"]),
        {n: _mean(summary, n, "dice_mean") for n in names},
        {n: _mean(summary, n, "nsd_mean") for n in names},
        manifest.get("promotion", {}).get("promoted"),
    )


def _effort(date: str, effort_file: Path, names: Sequence[str]) -> tuple[EffortPoint, dict[str, Any]] | None:
    """The iteration's annotation effort as a curve point and a table row; None without refinements."""
    if not effort_file.is_file():
        return None
    effort = read_json(effort_file)["summary"]
    per_label = effort.get("labels", {})
    point = EffortPoint(
        date,
        effort["cases"],
        effort["unedited"],
        effort["large_edits"],
        effort["slices_edited_fraction"],
        {n: (per_label.get(n) or {}).get("dice_mean") for n in names},
    )
    row = {
        "iteration": date,
        "refined_predictions": effort["cases"],
        "unedited": effort["unedited"],
        "large_edits": effort["large_edits"],
        "slices_edited": effort["slices_edited"],
        "slices_edited_fraction": effort["slices_edited_fraction"],
    }
    for name in names:
        stats = per_label.get(name) or {}
        row[f"dice_{name}"] = stats.get("dice_mean")
        row[f"hd95_mm_{name}"] = stats.get("hd95_mm_mean")
    return point, row


def _fold_pictures(date: str, manifest: Mapping[str, Any], training: Path) -> list[Path]:
    """Each trained fold's curves from its checkpoint, and nnU-Net's own ``progress.png`` beside it."""
    written = []
    for fold in manifest.get("folds", []):
        checkpoint = Path(str(fold.get("checkpoint", "")))
        if not checkpoint.is_file():
            continue
        stem = f"{date}_fold_{fold['fold']}"
        written.append(
            training_curves(
                checkpoint, training / f"{stem}.png", title=f"iteration {date}, fold {fold['fold']}"
            )
        )
        progress = checkpoint.parent / "progress.png"
        if progress.is_file():  # nnU-Net's own plot, as it drew it
            shutil.copy(progress, training / f"{stem}_nnunet_progress.png")
            written.append(training / f"{stem}_nnunet_progress.png")
    return written


def _read_iteration(results: Path, date: str, seen: set[tuple[str, ...]], training: Path) -> _Iteration:
    """One iteration's share of the report (its training curves are drawn into ``training`` here)."""
    manifest = read_json(results / date / "manifest.json")
    names = [n for n in manifest["labels"] if n not in ("background", IGNORE_LABEL)]
    row = _iteration_row(date, manifest, names)
    skipped = _skipped_rows(date, manifest, seen)
    effort = _effort(date, results / date / "annotation_effort.json", names)
    return _Iteration(
        _iteration_point(date, manifest, names),
        row,
        skipped,
        None if effort is None else effort[0],
        None if effort is None else effort[1],
        _fold_pictures(date, manifest, training),
    )


def _write_tables(iterations: Sequence[_Iteration], name: str, out: Path) -> None:
    """``iterations.csv/.html`` (with the skipped cases) and ``annotation_effort.csv/.html``."""
    table = [it.row for it in iterations]
    skipped = [row for it in iterations for row in it.skipped]
    effort_table = [it.effort_row for it in iterations if it.effort_row is not None]
    _write_table(
        table,
        list(table[0]) if table else ["iteration"],
        out / "iterations.csv",
        f"{name}: iterations",
        [(_SKIPPED_HEADING, skipped)],
    )
    _write_table(
        effort_table,
        list(effort_table[0]) if effort_table else ["iteration"],
        out / "annotation_effort.csv",
        f"{name}: annotation effort per iteration",
    )


def dataset_report(results: Path, iterations: Sequence[str], out: Path) -> list[Path]:
    """Learning curves, annotation effort, each fold's training curves and the iteration tables.

    Parameters
    ----------
    results
        ``data/results/<dataset>`` (one folder per iteration with its manifest).
    iterations
        The iteration dates, oldest first.
    out
        Folder receiving the PNGs, ``iterations.csv/.html`` and ``annotation_effort.csv/.html``.

    Returns
    -------
    list[Path]
        The pictures written: the training curves, then the learning and effort curves.

    """
    if out.exists():
        shutil.rmtree(out)
    (out / "training").mkdir(parents=True)
    seen: set[tuple[str, ...]] = set()  # skipped cases already listed by an earlier iteration
    read = [_read_iteration(results, date, seen, out / "training") for date in iterations]
    written = [picture for it in read for picture in it.pictures]
    name = results.name
    points = [it.point for it in read]
    written.append(
        learning_curves(points, out / "learning_curves.png", title=f"{name}: test set per iteration")
    )
    efforts = [it.effort for it in read if it.effort is not None]
    written.append(effort_curves(efforts, out / "annotation_effort.png", title=f"{name}: annotation effort"))
    _write_tables(read, name, out)
    logger.info(
        "report of %s: %d iteration(s), %d picture(s) in %s", name, len(iterations), len(written), out
    )
    return written


def refine_next(results: Path, top: int = 5) -> str:
    """One line naming the inbox cases to refine first, from the worklist of ``latest``.

    ``latest`` is the model whose SEGs researchers get, so its ranking is the one to act on.

    Returns
    -------
    str
        Empty when ``latest`` has no worklist yet.

    """
    latest = results / "latest"
    if not (latest / "worklist.csv").is_file():
        return ""
    worklist = results / latest.resolve().name / "worklist.csv"
    rows = read_csv(worklist)
    if not rows:
        return f"refine next: no inbox predictions in {worklist}"
    picks = [
        f"{r['case_id']} ({r['signal']} {float(r['disagreement']):.2f}"
        + (f", volume outlier: {r['volume_outliers']}" if r["volume_outliers"] else "")
        + ")"
        for r in rows[:top]
    ]
    return f"refine next ({worklist}): " + ", ".join(picks)


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV written here (for ``iterseg status`` and tests)."""
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))
