"""Promoted models: share one as an archive, install it, analyze archives of cases with it.

``export-model`` writes one archive, ``install-model`` installs it where ``predict --model`` finds
it, and ``analyze`` segments the cases of ``.tar`` archives in one call (:func:`iterseg.api.analyze`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from iterseg.cli.common import add_command

COMMANDS = ("export-model", "install-model", "analyze")


def cmd_export_model(args: argparse.Namespace) -> None:
    """Write a promoted iteration's model as one zip archive; print its path."""
    from iterseg.release.model_archive import export_model

    archive = export_model(
        results=Path(args.results), procdata=Path(args.procdata), dataset=args.dataset, date=args.date,
        out=Path(args.out) if args.out else None,
    )  # fmt: skip
    sys.stdout.write(f"{archive}\n")


def cmd_install_model(args: argparse.Namespace) -> None:
    """Check a model archive and install it as a folder prediction uses; print that folder."""
    from iterseg.release.model_archive import install_model

    installed = install_model(archive=Path(args.archive), into=Path(args.into), force=args.force)
    sys.stdout.write(f"{installed}\n")


def cmd_analyze(args: argparse.Namespace) -> None:
    """Segment the cases of .tar archives into --out (seg/, labels/, analysis.json); exit 2 if none."""
    from iterseg.release.analyzer import ANALYSIS_FILE, DONE, analyze_files, failure

    out = Path(args.out)
    record = analyze_files(
        [Path(p) for p in args.inputs], args.model, out, device=args.device, force=args.force
    )
    sys.stdout.write(f"{out / ANALYSIS_FILE}\n")
    if record.status != DONE:
        raise failure(record, out)


def register(sub: argparse._SubParsersAction) -> tuple[str, ...]:
    """Add the model sub-commands to ``sub``; return their names, in help order."""
    for add in (_add_export_model, _add_install_model, _add_analyze):
        add(sub)
    return COMMANDS


def _add_export_model(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "export-model",
        cmd_export_model,
        "write a promoted iteration's model as one zip archive: nnU-Net's own model zip, a model card "
        "(data, test-set Dice/NSD, plans, versions), MODEL_CARD.md and the ROI YAML; run it in the "
        "project folder",
    )
    p.add_argument("dataset")
    p.add_argument("date", nargs="?", help="the iteration (default: the one `latest` points at)")
    p.add_argument("--results", default="data/results")
    p.add_argument("--procdata", default="data/procdata")
    p.add_argument(
        "--out", help="archive to write (default: results/<dataset>/<date>/model_<dataset>_<date>.zip)"
    )


def _add_install_model(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "install-model",
        cmd_install_model,
        "check a model archive of export-model and install it into <into>/<dataset>/<date>, where "
        "`iterseg predict --model` uses it",
    )
    p.add_argument("archive", help="the zip archive export-model wrote")
    p.add_argument("--into", default="data/models", help="models folder (default %(default)s)")
    p.add_argument("--force", action="store_true", help="replace a model installed there already")


def _add_analyze(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "analyze",
        cmd_analyze,
        "segment the cases of .tar archives with a promoted model: a DICOM-SEG per DICOM case folder, a "
        "label NIfTI per NIfTI file, written into --out as seg/<case>.dcm and labels/<case>.nii.gz (NIfTI "
        "cases only), then analysis.json (status, files, errors); a bad archive or case is listed there "
        "and the rest analyzed; exit 2 when not one case could be predicted",
    )
    p.add_argument(
        "inputs", nargs="+", metavar="IN.tar", help="archives (.tar, .tar.gz): one folder per DICOM case, "
        "NIfTI files at any level",
    )  # fmt: skip
    p.add_argument(
        "--model", required=True, help="a promoted iteration's results folder (data/results/<dataset>/"
        "latest or <date>) or an installed model folder (install-model)",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="folder for the results, new or empty (see --force)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"], help="default %(default)s")
    p.add_argument(
        "--force", action="store_true", help="write into a non-empty --out, replacing an earlier analysis"
    )
