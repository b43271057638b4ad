"""``iterseg`` command line: one sub-command per workflow step, each a thin layer over the package.

Heavy imports (torch, nnU-Net, highdicom) happen inside the commands so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

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
    from iterseg.rawdata.demo import write_demo_dataset

    write_demo_dataset(Path(args.directory))


def cmd_convert(args: argparse.Namespace) -> None:
    """Convert one snapshot to NIfTI cases, reusing unchanged pairs of earlier snapshots."""
    from iterseg.convert.annotations import DuplicateRule
    from iterseg.convert.snapshot import convert_snapshot
    from iterseg.skipped import BadCasePolicy

    convert_snapshot(
        Path(args.snapshot),
        Path(args.out),
        Path(args.roi_yaml),
        args.modality,
        args.mask_saving_strategy,
        args.jobs,
        args.allow_unrefined_predictions,
        DuplicateRule(args.duplicate_annotations),
        [Path(p).parent for p in args.reuse_from if p],
        BadCasePolicy(args.on_bad_case),
    )


def cmd_assemble(args: argparse.Namespace) -> None:
    """Build the iteration's nnU-Net raw dataset from converted snapshots."""
    from iterseg.convert.assemble import HoldoutSpec, MissingRoiPolicy, assemble_dataset

    work = Path(args.work)
    frozen = json.loads(Path(args.test_set_from).read_text())["test_set"] if args.test_set_from else None
    previous = json.loads(Path(args.previous).read_text()) if args.previous else None
    record = assemble_dataset(
        [Path(c) for c in args.converted],
        work / "nnUNet_raw" / args.dataset_name,
        Path(args.roi_yaml),
        args.modality,
        MissingRoiPolicy(args.missing_roi),
        HoldoutSpec(args.test_fraction, tuple(args.test_patients), args.test_seed),
        frozen,
        previous,
    )
    _write_json(Path(args.output), record)


def cmd_plan(args: argparse.Namespace) -> None:
    """Plan and preprocess, or transfer the first iteration's plans."""
    from iterseg.nnunet.plan import plan_dataset, read_record, write_record

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
        json.loads(args.overrides) if args.overrides else None,
    )
    write_record(record, Path(args.output))


def _say_when_stopped(what: str) -> None:
    """Log why a long step ends when SLURM (time limit, scancel) or the machine stops it.

    SLURM sends SIGTERM first; without a handler Python dies silently and the log ends
    mid-epoch. The signal is then re-raised, so the exit status stays the usual one.
    """
    import multiprocessing
    import os
    import signal

    main_pid = os.getpid()

    def stopped(signum: int, _frame: object) -> None:
        signal.signal(signum, signal.SIG_DFL)
        if os.getpid() == main_pid:  # not in nnU-Net's data-loader workers
            # the workers are not daemons of a process that exits normally: without this they
            # outlive the fold (hundreds of MB each) once it is killed
            for child in multiprocessing.active_children():
                child.terminate()
            logger.error(
                "%s: stopped by %s (a SLURM time limit, scancel or a shutdown); re-running the "
                "workflow continues it from its last checkpoint",
                what,
                signal.Signals(signum).name,
            )
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, stopped)


def cmd_train(args: argparse.Namespace) -> None:
    """Train one fold; fine-tune from the previous iteration when given."""
    import os

    from iterseg.nnunet.train import train_fold

    if os.environ.get("SLURM_JOB_ID") or os.environ.get("CUDA_VISIBLE_DEVICES"):
        logger.info(
            "fold %s: SLURM job %s, CUDA_VISIBLE_DEVICES=%s",
            args.fold,
            os.environ.get("SLURM_JOB_ID", "-"),
            os.environ.get("CUDA_VISIBLE_DEVICES", "-"),
        )
    _say_when_stopped(f"fold {args.fold}")
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
        epochs=args.epochs,
        initial_lr=args.initial_lr,
        num_gpus=args.num_gpus,
    )
    _write_json(
        Path(args.output),
        {
            "fold": args.fold,
            "trainer": args.trainer,
            "checkpoint": str(checkpoint.resolve()),
            "pretrained": str(pretrained) if pretrained else None,
            "epochs": args.epochs,
            "initial_lr": args.initial_lr,
            "seconds": round(time.monotonic() - started, 1),
        },
    )


def cmd_predict(args: argparse.Namespace) -> None:
    """Predict the inbox, export DICOM-SEGs, publish them; record what was published."""
    from iterseg.nnunet.predict import predict_inbox, predicted_record, write_predicted_record
    from iterseg.skipped import BadCasePolicy

    out = Path(args.out)
    policy = BadCasePolicy(args.on_bad_case)
    run = predict_inbox(
        Path(args.work),
        Path(args.plan_record),
        args.trainer,
        tuple(args.folds),
        args.device,
        Path(args.inbox),
        args.modality,
        out,
        args.description,
        Path(args.roi_yaml) if args.roi_yaml else None,
        policy,
    )
    write_predicted_record(predicted_record(out, run, policy), Path(args.output))


def cmd_effort(args: argparse.Namespace) -> None:
    """Compare the iteration's new annotations with the earlier predictions they refined."""
    from iterseg.evaluate.effort import iteration_effort, write_effort

    result = iteration_effort(
        json.loads(Path(args.assembled).read_text()),
        [Path(p) for p in args.predictions],
        args.nsd_tolerance_mm,
    )
    write_effort(result, Path(args.out_json), Path(args.out_csv))


def cmd_qc(args: argparse.Namespace) -> None:
    """QC montages of one iteration's inbox predictions and test cases."""
    from iterseg.report.pages import qc_iteration

    qc_iteration(
        Path(args.results),
        Path(args.inbox),
        json.loads(Path(args.assembled).read_text()),
        Path(args.roi_yaml),
        args.modality,
        Path(args.out),
    )


def cmd_worklist(args: argparse.Namespace) -> None:
    """Rank the iteration's inbox predictions: which to refine first."""
    from iterseg.evaluate.worklist import worklist

    worklist(Path(args.predictions), Path(args.assembled), Path(args.out))


def cmd_report(args: argparse.Namespace) -> None:
    """Curves and tables of a dataset's iterations."""
    from iterseg.report.pages import dataset_report

    dataset_report(Path(args.results), args.iterations, Path(args.out))


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Predict the frozen test set and score it (Dice, NSD)."""
    from iterseg.evaluate.test_set import HoldoutCase, evaluate_test_set, write_json
    from iterseg.nnunet.env import configure_nnunet
    from iterseg.nnunet.plan import read_record
    from iterseg.paths import model_dir

    record = read_record(Path(args.plan_record))
    assembled = json.loads(Path(args.assembled).read_text())
    cases = [
        HoldoutCase(
            r["case_id"],
            r["patient_id"],
            Path(r["raw_image"]),
            Path(r["raw_label"]),
            tuple(r["missing_rois"]),
        )
        for r in assembled["records"]
        if r["split"] == "test"
    ]
    work = Path(args.work)
    configure_nnunet(work, device=args.device)
    metrics = evaluate_test_set(
        model_dir(work, record.dataset_name, args.trainer, record.plans, record.configuration),
        tuple(args.folds),
        args.device,
        cases,
        Path(args.out),
        args.nsd_tolerance_mm,
    )
    write_json(metrics, Path(args.output))


def cmd_promote(args: argparse.Namespace) -> None:
    """Write the iteration's manifest, gate it, and move ``latest`` to it if it passes."""
    from iterseg.config import config_hash
    from iterseg.release.manifest import MANIFEST_FILE, build_manifest, decide, skipped_cases
    from iterseg.release.promote import current_latest, settle

    results = Path(args.results)
    plan = json.loads(Path(args.plan_record).read_text())
    folds = [json.loads(Path(f).read_text()) for f in args.fold_records]
    config = json.loads(args.config_json)
    parent = json.loads(Path(args.previous).read_text())["iteration"] if args.previous else None
    assembled = json.loads(Path(args.assembled).read_text())
    manifest = build_manifest(
        args.iteration,
        plan,
        Path(args.plan_record).parent
        / "nnUNet_preprocessed"
        / plan["dataset_name"]
        / f"{plan['plans']}.json",
        assembled,
        folds,
        json.loads(Path(args.predictions).read_text()),
        json.loads(Path(args.test_metrics).read_text()),
        config,
        config_hash(config),
        Path(args.roi_yaml),
        parent,
        skipped_cases(assembled, Path(args.predictions).parent),
    )
    if args.effort:
        manifest["annotation_effort"] = {
            "summary": json.loads(Path(args.effort).read_text())["summary"],
            "file": args.effort,
        }
    latest = current_latest(results)
    latest_manifest = None
    if latest is not None and (results / latest / MANIFEST_FILE).is_file():
        latest_manifest = json.loads((results / latest / MANIFEST_FILE).read_text())
    max_drop = None if args.max_dice_drop.lower() == "none" else float(args.max_dice_drop)
    decision = decide(folds, manifest["test_metrics"], latest, latest_manifest, max_drop)
    manifest["promotion"] = settle(results, args.iteration, decision.promote, decision.reason)
    _write_json(results / args.iteration / MANIFEST_FILE, manifest)
    _write_json(
        Path(args.output),
        {
            "iteration": args.iteration,
            "dataset_name": plan["dataset_name"],
            "training_cases": manifest["summary"]["train"],
            "promoted": manifest["promotion"]["promoted"],
            "reason": manifest["promotion"]["reason"],
            "manifest": str(results / args.iteration / MANIFEST_FILE),
        },
    )


def cmd_export_seg(args: argparse.Namespace) -> None:
    """Write a label image as a DICOM-SEG of its reference series."""
    from iterseg.dicom.label_export import export_label_image
    from iterseg.dicom.seg_writer import SegType

    export_label_image(
        Path(args.reference),
        Path(args.labels),
        Path(args.roi_yaml),
        Path(args.out),
        modality=args.modality,
        series_uid=args.series_uid,
        seg_type=SegType(args.type),
        series_description=args.description,
        algorithm_version=args.algorithm_version,
    )


def cmd_submit(args: argparse.Namespace) -> None:
    """Run snakemake as one SLURM job (it submits the fold jobs with the SLURM profile)."""
    from iterseg.cluster.slurm import submit_controller

    extra = list(args.snakemake_args)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    job = submit_controller(
        extra, Path(args.log_dir), args.partition, args.account, args.time, args.mem_gb, args.cpus, args.wait
    )
    sys.stdout.write(f"SLURM job {job.job_id}; log {job.log}\n")


def cmd_status(args: argparse.Namespace) -> None:
    """Print the dataset's iterations, the cases they skipped, and what to refine next."""
    from iterseg.release.promote import skipped_list, status_table

    results = Path(args.results) / args.dataset
    if not results.is_dir():
        raise IterSegError(f"{results}: no results yet for dataset {args.dataset!r}; run snakemake first.")
    sys.stdout.write(status_table(results) + "\n")
    skipped = skipped_list(results)
    if skipped:
        sys.stdout.write(skipped + "\n")
    from iterseg.report.pages import refine_next

    advice = refine_next(results)
    if advice:
        sys.stdout.write(advice + "\n")


def cmd_rollback(args: argparse.Namespace) -> None:
    """Point ``latest`` back at an earlier finished iteration."""
    from iterseg.release.promote import rollback

    rollback(Path(args.results) / args.dataset, args.date, args.reason)


def cmd_reconvert(args: argparse.Namespace) -> None:
    """Opt in to re-training an iteration on its snapshot's changed files: convert it again."""
    from iterseg.rawdata.fingerprint import forget_conversion

    forget_conversion(Path(args.procdata), args.dataset, args.date)


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
    parser.add_argument("--gpus", nargs="+", help="claim one free GPU of these for the step (workstation)")
    parser.add_argument("--gpu-lock-dir", default="/tmp/iterseg-gpu-locks", help="folder of the GPU locks")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``iterseg`` command."""
    parser = argparse.ArgumentParser(prog="iterseg", description=__doc__)
    parser.add_argument("--version", action="version", version=f"iterseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    parser.add_argument(
        "--log",
        help="write everything the step prints (nnU-Net's output too) to this file; errors also reach "
        "the terminal, one line each",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = _add(sub, "demo-data", cmd_demo_data, "write the synthetic demo dataset (2 snapshots + inbox)")
    p.add_argument("directory", help="dataset folder to create, e.g. data/rawdata/demo")

    p = _add(sub, "convert", cmd_convert, "convert one snapshot to checked NIfTI cases")
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
    p.add_argument("--duplicate-annotations", default="error", choices=["error", "newest_series_date"])
    p.add_argument(
        "--reuse-from",
        nargs="*",
        default=[],
        help="cases.json of earlier snapshots whose unchanged pairs are reused",
    )
    p.add_argument(
        "--on-bad-case",
        default="skip",
        choices=["skip", "fail"],
        help="skip: leave a case that cannot be converted out and list it in skipped.json; fail: stop",
    )

    p = _add(sub, "assemble", cmd_assemble, "build an iteration's nnU-Net raw dataset")
    p.add_argument("--work", required=True)
    p.add_argument("--dataset-name", required=True)
    p.add_argument("--converted", nargs="+", required=True, help="converted folders in date order")
    p.add_argument("--roi-yaml", required=True)
    p.add_argument("--modality", default="CT", choices=["CT", "MR"])
    p.add_argument("--missing-roi", default="ignore", choices=["ignore", "drop", "error"])
    p.add_argument(
        "--test-fraction", type=float, default=0.0, help="first iteration: share of patients held out"
    )
    p.add_argument("--test-patients", nargs="*", default=[], help="first iteration: PatientIDs held out")
    p.add_argument("--test-seed", type=int, default=0)
    p.add_argument("--test-set-from", help="later iterations: the first iteration's assembled.json")
    p.add_argument("--previous", help="the previous iteration's assembled.json (new/refined counts)")
    p.add_argument("--output", required=True)

    p = _add(sub, "plan", cmd_plan, "plan+preprocess, or transfer the first iteration's plans")
    p.add_argument("--work", required=True)
    p.add_argument("--dataset-name", required=True)
    p.add_argument("--configuration", required=True)
    p.add_argument("--plans", required=True)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--source-record", help="plan record of the first iteration (later iterations)")
    p.add_argument("--overrides", help="first iteration: plans overrides as JSON (nnunet.plans_overrides)")
    p.add_argument("--output", required=True)

    p = _add(sub, "train", cmd_train, "train one fold with nnU-Net")
    _add_model_args(p)
    p.add_argument("--fold", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pretrained-from", help="fold record of the previous iteration")
    p.add_argument("--epochs", type=int, help="override the trainer's number of epochs")
    p.add_argument("--initial-lr", type=float, help="override the trainer's initial learning rate")
    p.add_argument("--num-gpus", type=int, default=1, help="data-parallel training of the fold on N GPUs")
    p.add_argument("--output", required=True)

    p = _add(sub, "predict", cmd_predict, "predict the inbox and export DICOM-SEGs")
    _add_model_args(p)
    p.add_argument("--folds", nargs="+", required=True)
    p.add_argument("--inbox", required=True)
    p.add_argument("--modality", default="CT", choices=["CT", "MR"])
    p.add_argument(
        "--out",
        required=True,
        help="the iteration's results folder: labels/, seg/, predictions.json and skipped_predictions.json "
        "are published there once every case is done",
    )
    p.add_argument("--description", required=True)
    p.add_argument("--roi-yaml", help="coded descriptions and colours of the labels")
    p.add_argument(
        "--on-bad-case",
        default="skip",
        choices=["skip", "fail"],
        help="a case that cannot be read, predicted or exported: skip it (listed in "
        "skipped_predictions.json) or fail naming every such case, publishing nothing",
    )
    p.add_argument(
        "--output", required=True, help="the step's record (procdata/.../predicted.json): what was published"
    )

    p = _add(sub, "evaluate", cmd_evaluate, "predict the frozen test set and score Dice and NSD per label")
    _add_model_args(p)
    p.add_argument("--folds", nargs="+", required=True)
    p.add_argument("--assembled", required=True, help="the iteration's assembled.json")
    p.add_argument("--nsd-tolerance-mm", type=float, default=2.0)
    p.add_argument("--out", required=True, help="the iteration's results folder")
    p.add_argument("--output", required=True)

    p = _add(sub, "qc", cmd_qc, "QC pictures of an iteration's predictions (inbox and test set)")
    p.add_argument("--results", required=True, help="the iteration's results folder")
    p.add_argument("--inbox", required=True)
    p.add_argument("--assembled", required=True, help="the iteration's assembled.json")
    p.add_argument("--roi-yaml", required=True)
    p.add_argument("--modality", default="CT", choices=["CT", "MR"])
    p.add_argument("--out", required=True, help="folder for the PNGs")

    p = _add(sub, "worklist", cmd_worklist, "rank inbox predictions by how much refining them would teach")
    p.add_argument("--predictions", required=True, help="the iteration's predictions.json")
    p.add_argument("--assembled", required=True, help="the iteration's assembled.json (annotated volumes)")
    p.add_argument("--out", required=True, help="worklist CSV")

    p = _add(sub, "report", cmd_report, "learning curves, annotation effort and training curves of a dataset")
    p.add_argument("--results", required=True, help="results/<dataset>")
    p.add_argument("--iterations", nargs="+", required=True, help="iteration dates, oldest first")
    p.add_argument("--out", required=True)

    p = _add(
        sub,
        "effort",
        cmd_effort,
        "annotation effort: new annotations vs the earlier predictions they refined",
    )
    p.add_argument("--assembled", required=True, help="the iteration's assembled.json")
    p.add_argument("--predictions", nargs="*", default=[], help="earlier iterations' predictions.json")
    p.add_argument("--nsd-tolerance-mm", type=float, default=2.0)
    p.add_argument("--out-json", required=True)
    p.add_argument("--out-csv", required=True)

    p = _add(
        sub, "promote", cmd_promote, "write the manifest, gate the iteration, move `latest` if it passes"
    )
    p.add_argument("--results", required=True, help="results/<dataset>")
    p.add_argument("--iteration", required=True, help="the date folder under results/<dataset>")
    p.add_argument("--plan-record", required=True)
    p.add_argument("--assembled", required=True, help="the iteration's assembled.json")
    p.add_argument("--fold-records", nargs="+", required=True)
    p.add_argument(
        "--predictions", required=True, help="the iteration's published predictions.json (results folder)"
    )
    p.add_argument("--test-metrics", required=True)
    p.add_argument("--roi-yaml", required=True)
    p.add_argument("--config-json", required=True, help="the validated workflow config, as JSON")
    p.add_argument("--previous", help="the previous iteration's iteration.json")
    p.add_argument("--effort", help="the iteration's annotation_effort.json")
    p.add_argument(
        "--max-dice-drop", default="0.02", help="allowed drop of test mean Dice vs `latest`; none: no gate"
    )
    p.add_argument("--output", required=True)

    p = _add(
        sub,
        "export-seg",
        cmd_export_seg,
        "write a label image as a DICOM-SEG of its DICOM series (also outside the workflow)",
    )
    p.add_argument(
        "--reference", required=True, help="folder with the DICOM image series the labels belong to"
    )
    p.add_argument(
        "--labels", required=True, help="label image (.nii.gz, .nrrd, .mha); values as in the ROI YAML"
    )
    p.add_argument("--roi-yaml", required=True, help="label names; file order gives the values 1, 2, ...")
    p.add_argument("--out", required=True, help="SEG file to write (nothing is written on error)")
    p.add_argument("--modality", choices=["CT", "MR", "PT"], help="only consider series of this modality")
    p.add_argument("--series-uid", help="the reference series, if the folder holds several on one grid")
    p.add_argument(
        "--type",
        default="binary",
        choices=["binary", "labelmap"],
        help="SegmentationType (labelmap: DICOM 2024)",
    )
    p.add_argument("--description", default="iterseg segmentation", help="SeriesDescription of the SEG")
    p.add_argument(
        "--algorithm-version", default="manual export", help="model identification recorded in each segment"
    )

    p = _add(
        sub,
        "submit",
        cmd_submit,
        "run the workflow as one SLURM job from a login node (submitit); arguments after -- go to snakemake",
    )
    p.add_argument("--partition", help="partition of the controller job (default: the cluster's)")
    p.add_argument("--account", help="account of the controller job")
    p.add_argument("--time", type=int, default=2880, help="minutes the controller may run")
    p.add_argument("--mem-gb", type=int, default=4)
    p.add_argument("--cpus", type=int, default=1)
    p.add_argument("--log-dir", default="data/results/.submitit", help="the job's script, output and result")
    p.add_argument("--wait", action="store_true", help="wait for the job; fail if snakemake failed")
    p.add_argument("snakemake_args", nargs=argparse.REMAINDER, help="-- then snakemake's arguments")

    p = _add(sub, "status", cmd_status, "table of a dataset's finished iterations and which is `latest`")
    p.add_argument("dataset")
    p.add_argument("--results", default="data/results")

    p = _add(sub, "rollback", cmd_rollback, "point `latest` back at an earlier finished iteration")
    p.add_argument("dataset")
    p.add_argument("date", nargs="?", help="iteration to point at (default: the one before `latest`)")
    p.add_argument("--results", default="data/results")
    p.add_argument("--reason", default="", help="recorded in latest_history.jsonl")

    p = _add(
        sub,
        "reconvert",
        cmd_reconvert,
        "convert a snapshot changed after its conversion again: the next snakemake run re-trains its "
        "iteration and every later one on the changed files",
    )
    p.add_argument("dataset")
    p.add_argument("date", help="the snapshot's date, YYYY-MM-DD")
    p.add_argument("--procdata", default="data/procdata")
    return parser


def _route_to_log(log: Path) -> TextIO:
    """Point this process's stdout and stderr (C libraries and nnU-Net's prints too) at ``log``.

    Returns the terminal's stderr: the error that ends a step must be seen where snakemake runs,
    not only in a rule log nobody opens.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    terminal = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return terminal


def _configure_logging(verbose: bool, quiet: bool, log: str | None = None) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    terminal = _route_to_log(Path(log)) if log else None
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    if terminal is not None:
        to_terminal = logging.StreamHandler(terminal)
        to_terminal.setLevel(logging.ERROR)
        to_terminal.setFormatter(logging.Formatter(f"iterseg: %(message)s (log: {log})"))
        logging.getLogger().addHandler(to_terminal)
    for noisy in ("highdicom", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def _out_of_space(exc: OSError, args: argparse.Namespace) -> str:
    where = exc.filename or next(
        (getattr(args, name) for name in ("out", "output", "work", "results") if getattr(args, name, None)),
        "its output",
    )
    return (
        f"no space left on the device while writing {where} ({exc.strerror}). Free space there (df -h), "
        "or put data/procdata and data/results on a larger disk, then run again: finished steps are "
        "kept and rawdata was not changed."
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``iterseg`` command."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose, args.quiet, args.log)
    from iterseg.processes import children_die_with_us

    # before any step forks (nnU-Net's data-loader workers): a step killed with -9 leaves no
    # worker behind; SIGTERM still goes through _say_when_stopped's handler first
    children_die_with_us()
    try:
        if getattr(args, "gpus", None):
            from iterseg.cluster.gpus import claim_gpu

            # before any torch import: the step then sees only its own GPU, as cuda:0
            with claim_gpu(args.gpus, Path(args.gpu_lock_dir), count=getattr(args, "num_gpus", 1)):
                args.func(args)
        else:
            args.func(args)
    except IterSegError as exc:
        if args.verbose:
            logger.exception("iterseg %s failed", args.command)
        else:
            logger.error("%s", exc)
        return 2
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            return _unexpected(exc, args)
        logger.debug("out of space", exc_info=True)
        logger.error("%s", _out_of_space(exc, args))
        return 2
    except Exception as exc:  # a bug of ours or of a library: still one line where the user looks
        return _unexpected(exc, args)
    return 0


def _unexpected(exc: BaseException, args: argparse.Namespace) -> int:
    """Log the traceback (to the step's log with --log) and one line to the terminal; exit 1."""
    import traceback

    if not args.log and not args.verbose:
        raise exc  # run by hand: the traceback is the most useful output
    traceback.print_exception(exc, file=sys.stderr)  # stderr is the log file with --log
    sys.stderr.flush()
    logger.error(
        "iterseg %s stopped by an unexpected %s: %s. This is a bug of iterseg or a library it uses: please "
        "report it with the log; rawdata was not changed",
        args.command,
        type(exc).__name__,
        str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else "",
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
