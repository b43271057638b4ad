"""The pictures and tables of the report: QC overlays per iteration, curves and tables per dataset.

Files only; Snakemake's ``--report`` gathers them (the rules mark them with captions), so the
report always shows what the workflow produced.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from iterseg.convert.assemble import IGNORE_LABEL

logger = logging.getLogger(__name__)


def _sitk_image(case: Any) -> Any:
    """The inbox image as predicted: a DICOM series read the way the predict step reads it, or NIfTI."""
    import SimpleITK as sitk

    from iterseg.dicom.series import read_volume

    if case.series is None:
        return sitk.ReadImage(str(case.nifti))
    array, geometry = read_volume(case.series)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(geometry["spacing"])
    image.SetOrigin(geometry["origin"])
    image.SetDirection(geometry["direction"])
    return image


def qc_iteration(
    results: Path,
    inbox: Path,
    assembled: Mapping[str, Any],
    roi_yaml: Path,
    modality: str,
    out: Path,
) -> list[Path]:
    """QC montages of one iteration: every inbox prediction, and every test case against its reference.

    Parameters
    ----------
    results
        The iteration's results folder (``predictions.json``, ``labels/``, ``test_predictions/``).
    inbox
        The dataset's inbox (only read).
    assembled
        The iteration's ``assembled.json`` (test cases, their images and reference labels).
    roi_yaml
        Label colours (the same as in the SEGs).
    modality
        CT or MR (the grey window).
    out
        Folder receiving ``inbox_<case>.png`` and ``test_<case>.png``.

    """
    import SimpleITK as sitk

    from iterseg.rawdata.inbox import discover_inbox
    from iterseg.report.montage import qc_montage
    from iterseg.roi import load_roi_terms

    labels = {k: int(v) for k, v in assembled["labels"].items() if k != IGNORE_LABEL}
    colours = {name: term.colour for name, term in load_roi_terms(roi_yaml).items()}
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    written = []
    cases = {c.case_id: c for c in discover_inbox(inbox, modality)} if inbox.is_dir() else {}
    for entry in json.loads((results / "predictions.json").read_text()):
        case = cases.get(entry["case_id"])
        if case is None:
            logger.warning("%s: no longer in %s; no QC picture", entry["case_id"], inbox)
            continue
        written.append(
            qc_montage(
                _sitk_image(case),
                labels,
                sitk.ReadImage(str(results / entry["label"])),
                out / f"inbox_{entry['case_id']}.png",
                colours=colours,
                title=f"{entry['case_id']}: prediction of iteration {results.name}",
                modality=modality,
            )
        )
    for record in assembled["records"]:
        predicted = results / "test_predictions" / f"{record['case_id']}.nii.gz"
        if record["split"] != "test" or not predicted.is_file():
            continue
        written.append(
            qc_montage(
                sitk.ReadImage(record["raw_image"]),
                labels,
                sitk.ReadImage(str(predicted)),
                out / f"test_{record['patient_id']}.png",
                reference=sitk.ReadImage(record["raw_label"]),
                title=f"{record['patient_id']} (test set): iteration {results.name} vs reference",
                modality=modality,
            )
        )
    logger.info("%d QC picture(s) in %s", len(written), out)
    return written


def _mean(summary: Mapping[str, Any], label: str, key: str) -> float | None:
    value = (summary.get(label) or {}).get(key)
    return None if value is None else float(value)


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
    frame.to_csv(csv_path, index=False)
    body = html(frame) + "".join(
        f"<h3>{escape(heading)}</h3>{html(pd.DataFrame(list(extra)))}" for heading, extra in more if extra
    )
    csv_path.with_suffix(".html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><style>"
        "body{font-family:sans-serif} table{border-collapse:collapse} "
        "td,th{padding:3px 8px;border-bottom:1px solid #ccc;text-align:right}"
        f"</style><title>{title}</title></head><body><h3>{title}</h3>{body}</body></html>\n"
    )


def _skipped_rows(date: str, manifest: Mapping[str, Any], seen: set[tuple[str, ...]]) -> list[dict[str, Any]]:
    """The cases an iteration skipped that no earlier iteration listed (conversion skips recur)."""
    rows = []
    for case in manifest.get("skipped", []):
        key = tuple(str(case.get(k, "")) for k in ("stage", "where", "case", "file", "message"))
        if key not in seen:
            seen.add(key)
            rows.append({"iteration": date, **{k: case.get(k, "") for k in ("stage", "case", "message")}})
    return rows


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

    """
    from iterseg.report.curves import (
        EffortPoint,
        IterationPoint,
        effort_curves,
        learning_curves,
        training_curves,
    )

    if out.exists():
        shutil.rmtree(out)
    (out / "training").mkdir(parents=True)
    points, efforts, table, effort_table = [], [], [], []
    skipped: list[dict[str, Any]] = []
    seen: set[tuple[str, ...]] = set()
    written: list[Path] = []
    for date in iterations:
        manifest = json.loads((results / date / "manifest.json").read_text())
        summary = manifest.get("test_metrics", {}).get("summary", {})
        names = [n for n in manifest["labels"] if n not in ("background", IGNORE_LABEL)]
        promoted = manifest.get("promotion", {}).get("promoted")
        points.append(
            IterationPoint(
                date,
                int(manifest["summary"]["train"]),
                {n: _mean(summary, n, "dice_mean") for n in names},
                {n: _mean(summary, n, "nsd_mean") for n in names},
                promoted,
            )
        )
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
        row["promoted"] = promoted
        row["reason"] = manifest.get("promotion", {}).get("reason", "")
        table.append(row)
        skipped += _skipped_rows(date, manifest, seen)
        effort_file = results / date / "annotation_effort.json"
        if effort_file.is_file():
            effort = json.loads(effort_file.read_text())["summary"]
            per_label = effort.get("labels", {})
            efforts.append(
                EffortPoint(
                    date,
                    effort["cases"],
                    effort["unedited"],
                    effort["large_edits"],
                    effort["slices_edited_fraction"],
                    {n: (per_label.get(n) or {}).get("dice_mean") for n in names},
                )
            )
            effort_row = {
                "iteration": date,
                "refined_predictions": effort["cases"],
                "unedited": effort["unedited"],
                "large_edits": effort["large_edits"],
                "slices_edited": effort["slices_edited"],
                "slices_edited_fraction": effort["slices_edited_fraction"],
            }
            for name in names:
                stats = per_label.get(name) or {}
                effort_row[f"dice_{name}"] = stats.get("dice_mean")
                effort_row[f"hd95_mm_{name}"] = stats.get("hd95_mm_mean")
            effort_table.append(effort_row)
        for fold in manifest.get("folds", []):
            checkpoint = Path(str(fold.get("checkpoint", "")))
            if not checkpoint.is_file():
                continue
            stem = f"{date}_fold_{fold['fold']}"
            written.append(
                training_curves(
                    checkpoint,
                    out / "training" / f"{stem}.png",
                    title=f"iteration {date}, fold {fold['fold']}",
                )
            )
            progress = checkpoint.parent / "progress.png"
            if progress.is_file():  # nnU-Net's own plot, as it drew it
                shutil.copy(progress, out / "training" / f"{stem}_nnunet_progress.png")
                written.append(out / "training" / f"{stem}_nnunet_progress.png")
    name = results.name
    written.append(
        learning_curves(points, out / "learning_curves.png", title=f"{name}: test set per iteration")
    )
    written.append(effort_curves(efforts, out / "annotation_effort.png", title=f"{name}: annotation effort"))
    _write_table(
        table,
        list(table[0]) if table else ["iteration"],
        out / "iterations.csv",
        f"{name}: iterations",
        [("Skipped cases (left out by conversion or prediction; each names the file and the fix)", skipped)],
    )
    _write_table(
        effort_table,
        list(effort_table[0]) if effort_table else ["iteration"],
        out / "annotation_effort.csv",
        f"{name}: annotation effort per iteration",
    )
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
