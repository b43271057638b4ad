"""``iterseg`` command line: one sub-command per workflow step, each a thin layer over the package.

Heavy imports (torch, nnU-Net, med-imagetools) happen inside the commands so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from iterseg import __version__
from iterseg.errors import IterSegError

logger = logging.getLogger("iterseg")


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def cmd_demo_data(args: argparse.Namespace) -> None:
    """Write the synthetic demo dataset."""
    from iterseg.demo import write_demo_dataset

    write_demo_dataset(Path(args.directory))


def cmd_convert(args: argparse.Namespace) -> None:
    """Convert one snapshot with med-imagetools."""
    from iterseg.convert import convert_snapshot

    convert_snapshot(
        Path(args.snapshot),
        Path(args.out),
        Path(args.roi_yaml),
        args.modality,
        args.mask_saving_strategy,
        args.jobs,
        args.allow_unrefined_predictions,
    )


def cmd_assemble(args: argparse.Namespace) -> None:
    """Build the iteration's nnU-Net raw dataset from converted snapshots."""
    from iterseg.convert import assemble_dataset

    work = Path(args.work)
    raw = work / "nnUNet_raw" / args.dataset_name
    cases = assemble_dataset([Path(c) for c in args.converted], raw, Path(args.roi_yaml), args.modality)
    _write_json(
        Path(args.output),
        {"dataset_name": args.dataset_name, "raw": str(raw), "cases": sorted(c.case_id for c in cases)},
    )


def cmd_plan(args: argparse.Namespace) -> None:
    """Plan and preprocess, or transfer the first iteration's plans."""
    from iterseg.plan import plan_dataset, read_record, write_record

    source_work = source_name = None
    if args.source_record:
        source = read_record(Path(args.source_record))
        source_work, source_name = Path(args.source_record).parent, source.dataset_name
    record = plan_dataset(
        Path(args.work),
        args.dataset_name,
        args.configuration,
        args.plans,
        args.processes,
        source_work,
        source_name,
    )
    write_record(record, Path(args.output))


def cmd_train(args: argparse.Namespace) -> None:
    """Train one fold; fine-tune from the previous iteration when given."""
    from iterseg.train import train_fold

    pretrained = None
    if args.pretrained_from:
        pretrained = Path(json.loads(Path(args.pretrained_from).read_text())["checkpoint"])
    started = time.monotonic()
    checkpoint = train_fold(
        Path(args.work),
        Path(args.plan_record),
        args.trainer,
        args.fold,
        args.device,
        args.threads,
        pretrained,
    )
    _write_json(
        Path(args.output),
        {
            "fold": args.fold,
            "trainer": args.trainer,
            "checkpoint": str(checkpoint.resolve()),
            "pretrained": str(pretrained) if pretrained else None,
            "seconds": round(time.monotonic() - started, 1),
        },
    )


def cmd_predict(args: argparse.Namespace) -> None:
    """Predict the inbox and export DICOM-SEGs."""
    from iterseg.predict import predict_inbox, write_predictions

    out = Path(args.out)
    predictions = predict_inbox(
        Path(args.work),
        Path(args.plan_record),
        args.trainer,
        tuple(args.folds),
        args.device,
        Path(args.inbox),
        args.modality,
        out,
        args.description,
    )
    write_predictions(predictions, Path(args.output))


def cmd_promote(args: argparse.Namespace) -> None:
    """Record the finished iteration and move ``latest`` to it."""
    from iterseg.plan import read_record
    from iterseg.promote import promote

    results = Path(args.results)
    record = read_record(Path(args.plan_record))
    folds = [json.loads(Path(f).read_text()) for f in args.fold_records]
    assembled = json.loads(Path(args.assembled).read_text())
    summary = {
        "iteration": args.iteration,
        "dataset_name": record.dataset_name,
        "training_cases": len(assembled["cases"]),
        "plans": record.plans,
        "plans_source": record.plans_source,
        "configuration": record.configuration,
        "folds": folds,
        "predictions": json.loads(Path(args.predictions).read_text()),
    }
    _write_json(Path(args.output), summary)
    promote(results, args.iteration)


def cmd_status(args: argparse.Namespace) -> None:
    """Print the dataset's iterations."""
    from iterseg.promote import status_table

    results = Path(args.results) / args.dataset
    if not results.is_dir():
        raise IterSegError(f"{results}: no results yet for dataset {args.dataset!r}; run snakemake first.")
    sys.stdout.write(status_table(results) + "\n")


def cmd_rollback(args: argparse.Namespace) -> None:
    """Point ``latest`` back at an earlier finished iteration."""
    from iterseg.promote import rollback

    rollback(Path(args.results) / args.dataset, args.date, args.reason)


def _add(
    sub: argparse._SubParsersAction, name: str, func: Callable[[argparse.Namespace], None], help_text: str
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(func=func)
    return parser


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    """Which iteration, model and device a train or predict step works on."""
    parser.add_argument("--work", required=True, help="the iteration's procdata folder")
    parser.add_argument("--plan-record", required=True)
    parser.add_argument("--trainer", required=True)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu", "mps"])


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``iterseg`` command."""
    parser = argparse.ArgumentParser(prog="iterseg", description=__doc__)
    parser.add_argument("--version", action="version", version=f"iterseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True)

    p = _add(sub, "demo-data", cmd_demo_data, "write the synthetic demo dataset (2 snapshots + inbox)")
    p.add_argument("directory", help="dataset folder to create, e.g. data/rawdata/demo")

    p = _add(sub, "convert", cmd_convert, "convert one snapshot to NIfTI cases with med-imagetools")
    p.add_argument("--snapshot", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--roi-yaml", required=True)
    p.add_argument("--modality", default="CT", choices=["CT", "MR"])
    p.add_argument(
        "--mask-saving-strategy", default="sparse_mask", choices=["sparse_mask", "label_image", "region_mask"]
    )
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument(
        "--allow-unrefined-predictions",
        action="store_true",
        help="train on our own predicted SEGs found unedited in the snapshot (default: exclude them)",
    )

    p = _add(sub, "assemble", cmd_assemble, "build an iteration's nnU-Net raw dataset")
    p.add_argument("--work", required=True)
    p.add_argument("--dataset-name", required=True)
    p.add_argument("--converted", nargs="+", required=True, help="converted folders in date order")
    p.add_argument("--roi-yaml", required=True)
    p.add_argument("--modality", default="CT", choices=["CT", "MR"])
    p.add_argument("--output", required=True)

    p = _add(sub, "plan", cmd_plan, "plan+preprocess, or transfer the first iteration's plans")
    p.add_argument("--work", required=True)
    p.add_argument("--dataset-name", required=True)
    p.add_argument("--configuration", required=True)
    p.add_argument("--plans", required=True)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--source-record", help="plan record of the first iteration (later iterations)")
    p.add_argument("--output", required=True)

    p = _add(sub, "train", cmd_train, "train one fold with nnU-Net")
    _add_model_args(p)
    p.add_argument("--fold", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pretrained-from", help="fold record of the previous iteration")
    p.add_argument("--output", required=True)

    p = _add(sub, "predict", cmd_predict, "predict the inbox and export DICOM-SEGs")
    _add_model_args(p)
    p.add_argument("--folds", nargs="+", required=True)
    p.add_argument("--inbox", required=True)
    p.add_argument("--modality", default="CT", choices=["CT", "MR"])
    p.add_argument("--out", required=True, help="the iteration's results folder")
    p.add_argument("--description", required=True)
    p.add_argument("--output", required=True)

    p = _add(sub, "promote", cmd_promote, "record a finished iteration and move `latest` to it")
    p.add_argument("--results", required=True, help="results/<dataset>")
    p.add_argument("--iteration", required=True, help="the date folder under results/<dataset>")
    p.add_argument("--plan-record", required=True)
    p.add_argument("--assembled", required=True, help="the iteration's assembled.json")
    p.add_argument("--fold-records", nargs="+", required=True)
    p.add_argument("--predictions", required=True)
    p.add_argument("--output", required=True)

    p = _add(sub, "status", cmd_status, "table of a dataset's finished iterations and which is `latest`")
    p.add_argument("dataset")
    p.add_argument("--results", default="data/results")

    p = _add(sub, "rollback", cmd_rollback, "point `latest` back at an earlier finished iteration")
    p.add_argument("dataset")
    p.add_argument("date", nargs="?", help="iteration to point at (default: the one before `latest`)")
    p.add_argument("--results", default="data/results")
    p.add_argument("--reason", default="", help="recorded in latest_history.jsonl")
    return parser


def _configure_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("highdicom", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``iterseg`` command."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose, args.quiet)
    try:
        args.func(args)
    except IterSegError as exc:
        if args.verbose:
            logger.exception("iterseg %s failed", args.command)
        else:
            logger.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
