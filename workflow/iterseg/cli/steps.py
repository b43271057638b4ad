"""The workflow's steps: the commands ``workflow/rules/*.smk`` run, one per rule.

Each handler parses its arguments, reads the records it consumes (``iterseg.records``), makes
one keyword call of its engine function and writes the step's record. Heavy imports (torch,
nnU-Net, highdicom) happen inside the handlers so ``iterseg --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

from iterseg.cli.common import (
    add_channels_option,
    add_command,
    add_seg_options,
    channels,
    inference,
    optional_record,
    seg_options,
)
from iterseg.cluster.gpus import DEFAULT_LOCK_DIR
from iterseg.nnunet.plan import DEFAULT_PLANNER, PLANNERS
from iterseg.paths import nnunet_roots
from iterseg.records import Assembled, read_record, write_record

logger = logging.getLogger(__name__)

COMMANDS = (
    "convert",
    "assemble",
    "plan",
    "train",
    "predict",
    "evaluate",
    "effort",
    "qc",
    "worklist",
    "report",
    "promote",
)


def cmd_convert(args: argparse.Namespace) -> None:
    """Convert one snapshot to NIfTI cases, reusing unchanged pairs of earlier snapshots."""
    from iterseg.convert.annotations import DuplicateRule
    from iterseg.convert.snapshot import convert_snapshot
    from iterseg.skipped import BadCasePolicy

    convert_snapshot(
        snapshot=Path(args.snapshot), out=Path(args.out), roi_yaml=Path(args.roi_yaml),
        modality=args.modality, mask_saving_strategy=args.mask_saving_strategy, jobs=args.jobs,
        allow_unrefined=args.allow_unrefined_predictions,
        duplicates=DuplicateRule(args.duplicate_annotations),
        reuse_from=[Path(p).parent for p in args.reuse_from if p],
        on_bad_case=BadCasePolicy(args.on_bad_case), channels=channels(args),
    )  # fmt: skip


def cmd_assemble(args: argparse.Namespace) -> None:
    """Build the iteration's nnU-Net raw dataset from converted snapshots."""
    from iterseg.convert.assemble import HoldoutSpec, MissingRoiPolicy, assemble_dataset

    first = optional_record(args.test_set_from, Assembled)  # later iterations keep its test set
    record = assemble_dataset(
        converted_dirs=[Path(c) for c in args.converted],
        raw_dataset=nnunet_roots(Path(args.work))["nnUNet_raw"] / args.dataset_name,
        roi_yaml=Path(args.roi_yaml), modality=args.modality, missing_roi=MissingRoiPolicy(args.missing_roi),
        test_spec=HoldoutSpec(args.test_fraction, tuple(args.test_patients), args.test_seed),
        frozen_test_set=first.test_set if first else None, previous=optional_record(args.previous, Assembled),
        channel_names=tuple(c.name for c in channels(args)),
    )  # fmt: skip
    write_record(Path(args.output), record)


def cmd_plan(args: argparse.Namespace) -> None:
    """Plan and preprocess, or transfer the first iteration's plans."""
    from iterseg.nnunet.plan import plan_dataset
    from iterseg.records import PlanRecord

    source = optional_record(args.source_record, PlanRecord)  # later iterations: the first one's
    record = plan_dataset(
        work=Path(args.work), dataset_name=args.dataset_name, configuration=args.configuration,
        plans=args.plans, processes=args.processes,
        source_work=Path(args.source_record).parent if source else None,
        source_name=source.dataset_name if source else None,
        overrides=json.loads(args.overrides) if args.overrides else None,
        planner=source.planner if source else args.planner,
    )  # fmt: skip
    write_record(Path(args.output), record)


def cmd_train(args: argparse.Namespace) -> None:
    """Train one fold; fine-tune from the previous iteration when given."""
    from iterseg.nnunet.train import train_fold
    from iterseg.records import TrainedRecord

    _log_placement(args.fold)
    _say_when_stopped(f"fold {args.fold}")
    previous = optional_record(args.pretrained_from, TrainedRecord)
    record = train_fold(
        work=Path(args.work), plan_record=Path(args.plan_record), trainer=args.trainer, fold=args.fold,
        device=args.device, threads=args.threads, pretrained=previous.checkpoint if previous else None,
        epochs=args.epochs, initial_lr=args.initial_lr, num_gpus=args.num_gpus,
    )  # fmt: skip
    write_record(Path(args.output), record)


def cmd_predict(args: argparse.Namespace) -> None:
    """Predict the inbox, export DICOM-SEGs, publish them; record what was published."""
    from iterseg.nnunet.predict import predict_inbox, predicted_record
    from iterseg.skipped import BadCasePolicy

    out, policy = Path(args.out), BadCasePolicy(args.on_bad_case)
    run = predict_inbox(
        **_predicting_model(args), device=args.device, inbox=Path(args.inbox), out=out,
        on_bad_case=policy, seg_options=seg_options(args), inference=inference(args),
    )  # fmt: skip
    write_record(Path(args.output), predicted_record(out=out, run=run, on_bad_case=policy))


_ITERATION_ARGS = ("work", "plan_record", "trainer", "folds", "roi_yaml")  # what --model replaces


def _predicting_model(args: argparse.Namespace) -> dict[str, Any]:
    """``predict_inbox``'s model arguments: an installed model's (``--model``) or an iteration's."""
    from iterseg.errors import UsageError

    given = [f"--{name.replace('_', '-')}" for name in _ITERATION_ARGS if getattr(args, name)]
    if args.model:
        from iterseg.release.installed import load_installed_model

        if given:
            raise UsageError(f"iterseg predict: --model replaces {', '.join(given)}; give one or the other.")
        model = load_installed_model(Path(args.model))
        return {
            "work": model.work, "plan_record": model.plan_record, "trainer": model.trainer,
            "folds": model.folds, "roi_yaml": model.roi_yaml, "modality": args.modality or model.modality,
            "description": args.description or model.description, "channels": model.channels,
        }  # fmt: skip
    missing = [
        f"--{n.replace('_', '-')}" for n in (*_ITERATION_ARGS[:4], "description") if not getattr(args, n)
    ]
    if missing:
        raise UsageError(f"iterseg predict: give --model DIR (an installed model), or {', '.join(missing)}.")
    return {
        "work": Path(args.work), "plan_record": Path(args.plan_record), "trainer": args.trainer,
        "folds": tuple(args.folds), "roi_yaml": Path(args.roi_yaml) if args.roi_yaml else None,
        "modality": args.modality or "CT", "description": args.description,
        "channels": channels(args),
    }  # fmt: skip


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Predict the frozen test set and score it (Dice, NSD)."""
    from iterseg.evaluate.test_set import evaluate_iteration

    metrics = evaluate_iteration(
        work=Path(args.work), plan_record=Path(args.plan_record), trainer=args.trainer,
        folds=tuple(args.folds), device=args.device, assembled=Path(args.assembled), out=Path(args.out),
        tolerance_mm=args.nsd_tolerance_mm, inference=inference(args),
    )  # fmt: skip
    write_record(Path(args.output), metrics)


def cmd_effort(args: argparse.Namespace) -> None:
    """Compare the iteration's new annotations with the earlier predictions they refined."""
    from iterseg.evaluate.effort import iteration_effort, write_effort

    result = iteration_effort(
        assembled=read_record(Path(args.assembled), Assembled),
        predictions=[Path(p) for p in args.predictions],
        tolerance_mm=args.nsd_tolerance_mm,
    )
    write_effort(result=result, out_json=Path(args.out_json), out_csv=Path(args.out_csv))


def cmd_qc(args: argparse.Namespace) -> None:
    """QC montages of one iteration's inbox predictions and test cases."""
    from iterseg.report.qc import qc_iteration

    qc_iteration(
        results=Path(args.results), inbox=Path(args.inbox),
        assembled=read_record(Path(args.assembled), Assembled),
        roi_yaml=Path(args.roi_yaml), modality=args.modality, out=Path(args.out), channels=channels(args),
    )  # fmt: skip


def cmd_worklist(args: argparse.Namespace) -> None:
    """Rank the iteration's inbox predictions: which to refine first."""
    from iterseg.report.worklist import worklist

    worklist(
        predictions_json=Path(args.predictions), assembled_json=Path(args.assembled), out_csv=Path(args.out)
    )


def cmd_report(args: argparse.Namespace) -> None:
    """Curves and tables of a dataset's iterations."""
    from iterseg.report.dataset import dataset_report

    dataset_report(results=Path(args.results), iterations=args.iterations, out=Path(args.out))


def cmd_promote(args: argparse.Namespace) -> None:
    """Write the iteration's manifest, gate it, and move ``latest`` to it if it passes."""
    from iterseg.release.iteration import release_iteration

    summary = release_iteration(
        results=Path(args.results), iteration=args.iteration, plan_record=Path(args.plan_record),
        assembled=Path(args.assembled), fold_records=[Path(f) for f in args.fold_records],
        predictions=Path(args.predictions), test_metrics=Path(args.test_metrics),
        roi_yaml=Path(args.roi_yaml), config=json.loads(args.config_json),
        previous=Path(args.previous) if args.previous else None,
        effort=Path(args.effort) if args.effort else None, max_dice_drop=_dice_drop(args.max_dice_drop),
    )  # fmt: skip
    write_record(Path(args.output), summary)


def _dice_drop(value: str) -> float | None:
    """``--max-dice-drop``: a number, or ``none`` (any case) for no Dice gate."""
    return None if value.lower() == "none" else float(value)


def _log_placement(fold: str) -> None:
    """Log where a fold runs (SLURM job, visible GPUs), for reading a cluster run's logs."""
    if os.environ.get("SLURM_JOB_ID") or os.environ.get("CUDA_VISIBLE_DEVICES"):
        logger.info(
            "fold %s: SLURM job %s, CUDA_VISIBLE_DEVICES=%s",
            fold,
            os.environ.get("SLURM_JOB_ID", "-"),
            os.environ.get("CUDA_VISIBLE_DEVICES", "-"),
        )


def _say_when_stopped(what: str) -> None:
    """Log why a long step ends when SLURM (time limit, scancel) or the machine stops it.

    SLURM sends SIGTERM first; without a handler Python dies silently and the log ends
    mid-epoch. The signal is then re-raised, so the exit status stays the usual one.
    """
    import multiprocessing
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


def register(sub: argparse._SubParsersAction) -> tuple[str, ...]:
    """Add the workflow steps' sub-commands to ``sub``; return their names, in help order."""
    for add in (
        _add_convert, _add_assemble, _add_plan, _add_train, _add_predict, _add_evaluate,
        _add_qc, _add_worklist, _add_report, _add_effort, _add_promote,
    ):  # fmt: skip
        add(sub)
    return COMMANDS


def _add_inference_args(parser: argparse.ArgumentParser) -> None:
    """nnU-Net's sliding-window settings of a predicting step (``nnunet.inference``)."""
    parser.add_argument(
        "--tile-step-size", type=float, default=0.5, help="tile step as a fraction of the patch (default 0.5)"
    )
    parser.add_argument("--no-mirroring", action="store_true", help="no test-time mirroring")


def _add_model_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """Which iteration, model and device a train or predict step works on."""
    parser.add_argument("--work", required=required, help="the iteration's procdata folder")
    parser.add_argument("--plan-record", required=required)
    parser.add_argument("--trainer", required=required)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu", "mps"])
    parser.add_argument("--gpus", nargs="+", help="claim one free GPU of these for the step (workstation)")
    parser.add_argument("--gpu-lock-dir", default=str(DEFAULT_LOCK_DIR), help="folder of the GPU locks")


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "convert", cmd_convert, "convert one snapshot to checked NIfTI cases")
    p.add_argument("--snapshot", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--roi-yaml", required=True)
    p.add_argument("--modality", default="CT", choices=["CT", "MR"])
    add_channels_option(p)
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


def _add_assemble(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "assemble", cmd_assemble, "build an iteration's nnU-Net raw dataset")
    p.add_argument("--work", required=True)
    p.add_argument("--dataset-name", required=True)
    p.add_argument("--converted", nargs="+", required=True, help="converted folders in date order")
    p.add_argument("--roi-yaml", required=True)
    p.add_argument("--modality", default="CT", choices=["CT", "MR"])
    add_channels_option(p)
    p.add_argument("--missing-roi", default="ignore", choices=["ignore", "drop", "error"])
    p.add_argument(
        "--test-fraction", type=float, default=0.0, help="first iteration: share of patients held out"
    )
    p.add_argument("--test-patients", nargs="*", default=[], help="first iteration: PatientIDs held out")
    p.add_argument("--test-seed", type=int, default=0)
    p.add_argument("--test-set-from", help="later iterations: the first iteration's assembled.json")
    p.add_argument("--previous", help="the previous iteration's assembled.json (new/refined counts)")
    p.add_argument("--output", required=True)


def _add_plan(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "plan", cmd_plan, "plan+preprocess, or transfer the first iteration's plans")
    p.add_argument("--work", required=True)
    p.add_argument("--dataset-name", required=True)
    p.add_argument("--configuration", required=True)
    p.add_argument("--plans", required=True)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--source-record", help="plan record of the first iteration (later iterations)")
    p.add_argument("--overrides", help="first iteration: plans overrides as JSON (nnunet.plans_overrides)")
    p.add_argument(
        "--planner",
        default=DEFAULT_PLANNER,
        choices=list(PLANNERS),
        help="first iteration: nnU-Net's experiment planner (nnunet.planner; default %(default)s); "
        "later iterations record the planner of the plans they transfer",
    )
    p.add_argument("--output", required=True)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "train", cmd_train, "train one fold with nnU-Net")
    _add_model_args(p)
    p.add_argument("--fold", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pretrained-from", help="fold record of the previous iteration")
    p.add_argument("--epochs", type=int, help="override the trainer's number of epochs")
    p.add_argument("--initial-lr", type=float, help="override the trainer's initial learning rate")
    p.add_argument("--num-gpus", type=int, default=1, help="data-parallel training of the fold on N GPUs")
    p.add_argument("--output", required=True)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "predict",
        cmd_predict,
        "predict the inbox and export DICOM-SEGs, with an iteration's folds (--work, --plan-record, "
        "--trainer, --folds) or an installed model (--model)",
    )
    p.add_argument(
        "--model",
        help="an installed model folder (iterseg install-model): replaces --work, --plan-record, --trainer, "
        "--folds and --roi-yaml, and gives --modality and --description their defaults",
    )
    _add_model_args(p, required=False)
    _add_inference_args(p)
    p.add_argument("--folds", nargs="+")
    p.add_argument("--inbox", required=True)
    p.add_argument("--modality", choices=["CT", "MR"], help="default: the installed model's, else CT")
    add_channels_option(p)
    p.add_argument(
        "--out",
        required=True,
        help="the iteration's results folder: labels/, seg/, predictions.json and skipped_predictions.json "
        "are published there once every case is done",
    )
    p.add_argument(
        "--description", help="SeriesDescription of the SEGs (default with --model: iterseg <dataset> <date>)"
    )
    p.add_argument("--roi-yaml", help="coded descriptions and colours of the labels")
    add_seg_options(p)
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


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "evaluate", cmd_evaluate, "predict the frozen test set and score Dice and NSD per label"
    )
    _add_model_args(p)
    _add_inference_args(p)
    p.add_argument("--folds", nargs="+", required=True)
    p.add_argument("--assembled", required=True, help="the iteration's assembled.json")
    p.add_argument("--nsd-tolerance-mm", type=float, default=2.0)
    p.add_argument("--out", required=True, help="the iteration's results folder")
    p.add_argument("--output", required=True)


def _add_qc(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "qc", cmd_qc, "QC pictures of an iteration's predictions (inbox and test set)")
    p.add_argument("--results", required=True, help="the iteration's results folder")
    p.add_argument("--inbox", required=True)
    p.add_argument("--assembled", required=True, help="the iteration's assembled.json")
    p.add_argument("--roi-yaml", required=True)
    p.add_argument("--modality", default="CT", choices=["CT", "MR"])
    add_channels_option(p)
    p.add_argument("--out", required=True, help="folder for the PNGs")


def _add_worklist(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "worklist", cmd_worklist, "rank inbox predictions by how much refining them would teach"
    )
    p.add_argument("--predictions", required=True, help="the iteration's predictions.json")
    p.add_argument("--assembled", required=True, help="the iteration's assembled.json (annotated volumes)")
    p.add_argument("--out", required=True, help="worklist CSV")


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "report", cmd_report, "learning curves, annotation effort and training curves of a dataset"
    )
    p.add_argument("--results", required=True, help="results/<dataset>")
    p.add_argument("--iterations", nargs="+", required=True, help="iteration dates, oldest first")
    p.add_argument("--out", required=True)


def _add_effort(sub: argparse._SubParsersAction) -> None:
    p = add_command(
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


def _add_promote(sub: argparse._SubParsersAction) -> None:
    p = add_command(
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
