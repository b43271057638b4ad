"""Start-up: validate the config, find every dataset's snapshots once, name the paths.

Logic lives in the iterseg package; this file only turns it into input functions.
"""

import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

import json

from iterseg.config import check_roi_yamls, load_settings
from iterseg.errors import IterSegError
from iterseg.cluster.gpus import detect_gpus
from iterseg.skipped import warn_run  # the Snakefile's onsuccess/onerror: skipped cases on the terminal
from iterseg.rawdata.fingerprint import check_converted_snapshots
from iterseg.rawdata.discovery import discover_snapshots, nnunet_dataset_name

try:
    SETTINGS = load_settings(config)
    check_roi_yamls(SETTINGS)
    SNAPSHOTS = {
        name: discover_snapshots(SETTINGS.rawdata, name, SETTINGS.inbox)
        for name in SETTINGS.datasets
    }
    # Snakemake cannot see an edit inside a converted snapshot (mtime kept): compare its record.
    check_converted_snapshots([s for snaps in SNAPSHOTS.values() for s in snaps], Path("data/procdata"))
except IterSegError as exc:
    raise WorkflowError(str(exc)) from None

# Jobs call the `iterseg` of the environment snakemake runs in, activated or not.
shell.prefix(f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:\"$PATH\"; ")

NN = SETTINGS.nnunet
RAW = str(SETTINGS.rawdata)
TRAIN_GPUS = NN.gpus_per_fold if NN.device == "cuda" else 0
STEP_GPUS = 1 if NN.device == "cuda" else 0  # prediction and evaluation: one GPU each
# On a CPU-only machine the folds share its cores: one at a time (the default profile limits
# cpu_training to 1; a cluster profile does not, each job has its own node's cores).
CPU_TRAINING = 0 if NN.device == "cuda" else 1
NUM_GPUS_ARG = f"--num-gpus {NN.gpus_per_fold}" if TRAIN_GPUS > 1 else ""
# Jobs claim one of these GPUs each (iterseg.cluster.gpus); none (CPU, or a SLURM login node) -> no claim.
GPUS = (NN.gpus if NN.gpus is not None else tuple(detect_gpus())) if NN.device == "cuda" else ()
GPU_ARGS = (
    f"--gpus {' '.join(GPUS)} --gpu-lock-dir {shlex.quote(str(NN.gpu_lock_dir))}" if GPUS else ""
)

if not SETTINGS.datasets:
    logger.warning(
        "No datasets in the config: add one under `datasets:` in config/config.yaml "
        "(or run the demo: snakemake --configfile config/demo.yaml)."
    )
for _name, _snaps in SNAPSHOTS.items():
    if not _snaps:
        logger.warning(f"dataset {_name}: no snapshots under {RAW}/{_name}/ yet")


wildcard_constraints:
    dataset="[A-Za-z][A-Za-z0-9-]*",
    date=r"\d{4}-\d{2}-\d{2}",
    fold="[0-4]|all",


def _snapshot(wildcards):
    for snap in SNAPSHOTS[wildcards.dataset]:
        if snap.date == wildcards.date:
            return snap
    raise WorkflowError(f"no snapshot {wildcards.date}__{wildcards.dataset} under {RAW}/{wildcards.dataset}/")


def _first(wildcards):
    return SNAPSHOTS[wildcards.dataset][0]


def _previous(wildcards):
    snap = _snapshot(wildcards)
    return SNAPSHOTS[wildcards.dataset][snap.index - 1] if snap.index > 0 else None


def work_dir(wildcards):
    """The iteration's procdata folder (nnU-Net's roots live inside)."""
    return f"data/procdata/{wildcards.dataset}/{wildcards.date}__{wildcards.dataset}"


def results_dir(wildcards):
    return f"data/results/{wildcards.dataset}/{wildcards.date}"


def dataset_results_dir(wildcards):
    return f"data/results/{wildcards.dataset}"


def dataset_settings(wildcards):
    return SETTINGS.datasets[wildcards.dataset]


def snapshot_dir(wildcards):
    return str(_snapshot(wildcards).path)


def roi_yaml(wildcards):
    return str(dataset_settings(wildcards).roi_yaml)


def modality(wildcards):
    return dataset_settings(wildcards).modality


def mask_saving_strategy(wildcards):
    return dataset_settings(wildcards).mask_saving_strategy


def unrefined_arg(wildcards):
    return "--allow-unrefined-predictions" if dataset_settings(wildcards).allow_unrefined_predictions else ""


def duplicate_rule(wildcards):
    return dataset_settings(wildcards).duplicate_annotations


def missing_roi(wildcards):
    return dataset_settings(wildcards).missing_roi


def earlier_conversions(wildcards):
    """Converted earlier snapshots: unchanged pairs are reused from there, not converted again."""
    snap = _snapshot(wildcards)
    return [
        f"data/procdata/{s.dataset}/{s.folder_name}/converted/cases.json"
        for s in SNAPSHOTS[wildcards.dataset][: snap.index]
    ]


def first_assembled(wildcards):
    """Later iterations inherit the test set the first iteration chose."""
    snap = _snapshot(wildcards)
    if snap.index == 0:
        return []
    return f"data/procdata/{snap.dataset}/{_first(wildcards).folder_name}/assembled.json"


def previous_assembled(wildcards):
    prev = _previous(wildcards)
    return [] if prev is None else f"data/procdata/{prev.dataset}/{prev.folder_name}/assembled.json"


def test_set_args(wildcards, input):
    if input.first:
        return f"--test-set-from {shlex.quote(input.first)}"
    ds = dataset_settings(wildcards)
    patients = " ".join(shlex.quote(p) for p in ds.test_patients)
    return f"--test-fraction {ds.test_fraction} --test-seed {ds.test_seed} --test-patients {patients}".rstrip()


def previous_assembled_arg(wildcards, input):
    return f"--previous {shlex.quote(input.previous)}" if input.previous else ""


def plans_overrides_arg(wildcards):
    """Overrides shape the first iteration's plans only; later iterations transfer them."""
    if _snapshot(wildcards).index > 0 or not NN.plans_overrides:
        return ""
    return f"--overrides {shlex.quote(json.dumps(dict(NN.plans_overrides), sort_keys=True))}"


def _schedule(wildcards):
    return NN.schedule(first=_snapshot(wildcards).index == 0)


def trainer(wildcards):
    return _schedule(wildcards).trainer


def schedule_args(wildcards):
    sched = _schedule(wildcards)
    args = []
    if sched.epochs is not None:
        args.append(f"--epochs {sched.epochs}")
    if sched.initial_lr is not None:
        args.append(f"--initial-lr {sched.initial_lr}")
    return " ".join(args)


def nsd_tolerance(wildcards):
    return dataset_settings(wildcards).nsd_tolerance_mm


def config_json(wildcards):
    """The settings this dataset's iterations depend on (other datasets' entries left out)."""
    raw = dict(SETTINGS.raw)
    raw["datasets"] = {wildcards.dataset: raw["datasets"][wildcards.dataset]}
    return json.dumps(raw, sort_keys=True)


ON_BAD_CASE = SETTINGS.on_bad_case  # skip | fail: what one unreadable case does to its step
MAX_DICE_DROP = "none" if SETTINGS.max_dice_drop is None else str(SETTINGS.max_dice_drop)


def nnunet_name(wildcards):
    snap = _snapshot(wildcards)
    return nnunet_dataset_name(snap.dataset, dataset_settings(wildcards).dataset_id, snap.index, snap.date)


def training_snapshots(wildcards):
    """Converted snapshots an iteration trains on, in date order (newest annotation wins)."""
    snap = _snapshot(wildcards)
    chosen = SNAPSHOTS[wildcards.dataset][: snap.index + 1]
    if NN.train_on == "snapshot":
        chosen = [snap]
    return [f"data/procdata/{s.dataset}/{s.folder_name}/converted/cases.json" for s in chosen]


def converted_dirs(wildcards):
    return [str(Path(p).parent) for p in training_snapshots(wildcards)]


def plans_source(wildcards):
    """Later iterations reuse the first iteration's plans; the first plans itself."""
    snap = _snapshot(wildcards)
    if snap.index == 0:
        return []
    return f"data/procdata/{snap.dataset}/{_first(wildcards).folder_name}/planned.json"


def plans_source_arg(wildcards, input):
    return f"--source-record {input.source}" if input.source else ""


def previous_fold(wildcards):
    prev = _previous(wildcards)
    if prev is None:
        return []
    return f"data/procdata/{prev.dataset}/{prev.folder_name}/trained/fold_{wildcards.fold}.json"


def pretrained_arg(wildcards, input):
    return f"--pretrained-from {input.previous}" if input.previous else ""


def fold_records(wildcards):
    return expand("data/procdata/{dataset}/{date}__{dataset}/trained/fold_{fold}.json", fold=NN.folds, allow_missing=True)


def previous_iteration(wildcards):
    """Iterations are promoted in date order, so `latest` only ever moves forward."""
    prev = _previous(wildcards)
    if prev is None:
        return []
    return f"data/results/{prev.dataset}/{prev.date}/iteration.json"


def earlier_predictions(wildcards):
    """Every earlier iteration's predict record: its inbox predictions seed this iteration's new annotations."""
    snap = _snapshot(wildcards)
    return [
        f"data/procdata/{s.dataset}/{s.folder_name}/predicted.json" for s in SNAPSHOTS[wildcards.dataset][: snap.index]
    ]


def earlier_predictions_json(wildcards):
    """The predictions.json those records name (published in the results folders; paths relative to them)."""
    snap = _snapshot(wildcards)
    return [
        f"data/results/{s.dataset}/{s.date}/predictions.json" for s in SNAPSHOTS[wildcards.dataset][: snap.index]
    ]


def predictions_json(wildcards):
    """The iteration's published predictions; rules depend on predict_inbox's record in procdata instead,
    which Snakemake may delete on a forced re-run without leaving `latest` incomplete."""
    return f"data/results/{wildcards.dataset}/{wildcards.date}/predictions.json"


def inbox_dir(wildcards):
    return f"{RAW}/{wildcards.dataset}/{SETTINGS.inbox}"


def all_iterations(wildcards):
    return [
        f"data/results/{snap.dataset}/{snap.date}/iteration.json"
        for snaps in SNAPSHOTS.values()
        for snap in snaps
    ]


def all_assembled(wildcards):
    """Every iteration's assembled nnU-Net raw dataset: the end of conversion."""
    return [
        f"data/procdata/{snap.dataset}/{snap.folder_name}/assembled.json"
        for snaps in SNAPSHOTS.values()
        for snap in snaps
    ]


def dataset_iterations(wildcards):
    return [
        f"data/results/{snap.dataset}/{snap.date}/iteration.json" for snap in SNAPSHOTS[wildcards.dataset]
    ]


def iteration_dates(wildcards):
    return [snap.date for snap in SNAPSHOTS[wildcards.dataset]]


def report_targets(wildcards):
    """QC pictures and worklist of every iteration, curves and tables of every dataset."""
    targets = []
    for name, snaps in SNAPSHOTS.items():
        for snap in snaps:
            targets += [f"data/results/{name}/{snap.date}/qc", f"data/results/{name}/{snap.date}/worklist.csv"]
        if snaps:
            targets.append(f"data/results/{name}/report/learning_curves.png")
    return targets


def previous_iteration_arg(wildcards, input):
    return f"--previous {shlex.quote(input.previous)}" if input.previous else ""
