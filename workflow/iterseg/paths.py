"""Where each stage reads and writes: the one path vocabulary of the rules and the package.

Folder and file names of an iteration live here; ``workflow/rules/*.smk`` and the package
build their paths through these functions, never by hand.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from iterseg.rawdata.discovery import Snapshot

PARTIAL_SUFFIX = ".partial"


def partial_path(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place: hidden, beside it, unique per writer.

    One scheme for every atomic write (records, NIfTI, PNGs, SEGs, the ``latest`` link): a
    crashed writer leaves ``.<name>.<pid>.<random>.partial``, which no reader looks at and no
    other writer collides with.
    """
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}")


def iteration_dir(procdata: Path, dataset: str, date: str) -> Path:
    """``procdata/<dataset>/<date>__<dataset>``: the iteration's converted data and nnU-Net roots."""
    return procdata / dataset / f"{date}__{dataset}"


def nnunet_roots(work: Path) -> dict[str, Path]:
    """nnU-Net's three roots inside an iteration folder."""
    return {
        "nnUNet_raw": work / "nnUNet_raw",
        "nnUNet_preprocessed": work / "nnUNet_preprocessed",
        "nnUNet_results": work / "nnUNet_results",
    }


def preprocessed_dir(work: Path, dataset_name: str) -> Path:
    """nnU-Net's preprocessed folder of the iteration's dataset (plans, fingerprint, splits)."""
    return work / "nnUNet_preprocessed" / dataset_name


def plans_file(work: Path, dataset_name: str, plans: str) -> Path:
    """The plans JSON nnU-Net trains and predicts with (``<plans>.json``)."""
    return preprocessed_dir(work, dataset_name) / f"{plans}.json"


def model_dir(work: Path, dataset_name: str, trainer: str, plans: str, configuration: str) -> Path:
    """nnU-Net's trained-model folder (holds fold_N/checkpoint_final.pth)."""
    return work / "nnUNet_results" / dataset_name / f"{trainer}__{plans}__{configuration}"


def fold_dir_name(fold: str) -> str:
    """nnU-Net's folder name of a fold (``fold_0`` ... ``fold_all``)."""
    return f"fold_{fold}"


# --- the rules' path templates (Snakemake wildcards {dataset}, {date}, {fold}) ---------------------
# Every rule builds its inputs, outputs and logs from these; nothing below builds a path by hand.

PROCDATA = "data/procdata"
RESULTS_ROOT = "data/results"
WORK = PROCDATA + "/{dataset}/{date}__{dataset}"  #: an iteration's procdata folder (nnU-Net's roots inside)
RESULTS = RESULTS_ROOT + "/{dataset}/{date}"  #: an iteration's results folder
DATASET_RESULTS = RESULTS_ROOT + "/{dataset}"  #: a dataset's results: iterations, ``latest``, report
CONVERTED = WORK + "/converted"
CASES = CONVERTED + "/cases.json"  #: convert_snapshot's record
ASSEMBLED = WORK + "/assembled.json"  #: convert_assemble's record
PLANNED = WORK + "/planned.json"  #: plan_preprocess's record
FOLD = WORK + "/trained/fold_{fold}.json"  #: train_fold's record
PREDICTED = WORK + "/predicted.json"  #: predict_inbox's record (what it published into RESULTS)
PREDICTIONS = RESULTS + "/predictions.json"  #: the published predictions
TEST_METRICS = RESULTS + "/test_metrics.json"
EFFORT_JSON = RESULTS + "/annotation_effort.json"
EFFORT_CSV = RESULTS + "/annotation_effort.csv"
ITERATION = RESULTS + "/iteration.json"  #: results_promote's record
PACS_PUSHED = RESULTS + "/pacs_pushed.json"  #: pacs_push's record (datasets with a PACS)
QC = RESULTS + "/qc"
WORKLIST = RESULTS + "/worklist.csv"
REPORT = DATASET_RESULTS + "/report"


def log(rule: str) -> str:
    """The log of one job of ``rule`` (per iteration; per fold for ``train_fold_{fold}``)."""
    return f"{RESULTS}/logs/{rule}.log"


def dataset_log(rule: str) -> str:
    """The log of a job of ``rule`` that covers a whole dataset."""
    return f"{DATASET_RESULTS}/logs/{rule}.log"


def report(name: str) -> str:
    """A file (or folder) of the dataset report."""
    return f"{REPORT}/{name}"


def benchmark(rule: str) -> str:
    """The benchmark table of one job of ``rule``."""
    return f"{RESULTS}/benchmarks/{rule}.tsv"


def fold_records(folds: Sequence[str]) -> list[str]:
    """The fold records of one iteration (templates over ``{dataset}`` and ``{date}``), in fold order."""
    return [FOLD.replace("{fold}", str(fold)) for fold in folds]


def _fill(template: str, snapshot: Snapshot, **more: str) -> str:
    return template.format(dataset=snapshot.dataset, date=snapshot.date, **more)


# --- which earlier iteration each step reads -----------------------------------------------------
# Plain functions over one dataset's snapshots in date order, so that they are unit-tested without
# Snakemake; ``Iterations`` binds them to a rule's wildcards. A single earlier file is returned as a
# string and "none" as ``[]``: Snakemake's named input is then that file, or absent.


def snapshot_of(snapshots: Sequence[Snapshot], date: str) -> Snapshot:
    """The snapshot of ``date``; LookupError naming the date when there is none."""
    for snap in snapshots:
        if snap.date == date:
            return snap
    where = f"{snapshots[0].path.parent}/" if snapshots else "rawdata"
    raise LookupError(f"no snapshot {date} among {[s.date for s in snapshots]} under {where}")


def _earlier(snapshots: Sequence[Snapshot], date: str) -> Sequence[Snapshot]:
    return snapshots[: snapshot_of(snapshots, date).index]


def _previous(snapshots: Sequence[Snapshot], date: str) -> Snapshot | None:
    snap = snapshot_of(snapshots, date)
    return snapshots[snap.index - 1] if snap.index > 0 else None


def earlier_conversions(snapshots: Sequence[Snapshot], date: str) -> list[str]:
    """Every earlier snapshot's ``cases.json``: unchanged pairs are reused from there, not converted again."""
    return [_fill(CASES, s) for s in _earlier(snapshots, date)]


def training_conversions(snapshots: Sequence[Snapshot], date: str, train_on: str) -> list[str]:
    """The ``cases.json`` of the snapshots an iteration trains on, in date order (newest annotation wins).

    ``train_on`` is ``all_snapshots`` (this snapshot and every earlier one) or ``snapshot`` (this one only).
    """
    snap = snapshot_of(snapshots, date)
    chosen = [snap] if train_on == "snapshot" else snapshots[: snap.index + 1]
    return [_fill(CASES, s) for s in chosen]


def first_assembled(snapshots: Sequence[Snapshot], date: str) -> str | list[str]:
    """The first iteration's ``assembled.json``: later iterations keep its test set; ``[]`` for the first."""
    return [] if snapshot_of(snapshots, date).index == 0 else _fill(ASSEMBLED, snapshots[0])


def previous_assembled(snapshots: Sequence[Snapshot], date: str) -> str | list[str]:
    """The previous iteration's ``assembled.json`` (what changed since); ``[]`` for the first."""
    prev = _previous(snapshots, date)
    return [] if prev is None else _fill(ASSEMBLED, prev)


def plans_source(snapshots: Sequence[Snapshot], date: str) -> str | list[str]:
    """The first iteration's ``planned.json``: later iterations transfer its plans; ``[]`` for the first."""
    return [] if snapshot_of(snapshots, date).index == 0 else _fill(PLANNED, snapshots[0])


def previous_fold(snapshots: Sequence[Snapshot], date: str, fold: str) -> str | list[str]:
    """The previous iteration's record of the fold, whose checkpoint it fine-tunes; ``[]`` for the first."""
    prev = _previous(snapshots, date)
    return [] if prev is None else _fill(FOLD, prev, fold=fold)


def previous_iteration(snapshots: Sequence[Snapshot], date: str) -> str | list[str]:
    """The previous iteration's ``iteration.json`` (promotion goes in date order); ``[]`` for the first."""
    prev = _previous(snapshots, date)
    return [] if prev is None else _fill(ITERATION, prev)


def earlier_predicted(snapshots: Sequence[Snapshot], date: str) -> list[str]:
    """Every earlier iteration's predict record: its predictions seed this iteration's new annotations."""
    return [_fill(PREDICTED, s) for s in _earlier(snapshots, date)]


def earlier_predictions(snapshots: Sequence[Snapshot], date: str) -> list[str]:
    """The ``predictions.json`` those records stand for (published in the results folders)."""
    return [_fill(PREDICTIONS, s) for s in _earlier(snapshots, date)]


def all_iterations(datasets: Mapping[str, Sequence[Snapshot]]) -> list[str]:
    """Every iteration's ``iteration.json``: the end of the loop."""
    return [_fill(ITERATION, s) for snaps in datasets.values() for s in snaps]


def pacs_pushes(datasets: Mapping[str, Sequence[Snapshot]], with_pacs: Sequence[str]) -> list[str]:
    """Every iteration's push record, for the datasets named in ``with_pacs`` (those with a PACS)."""
    return [_fill(PACS_PUSHED, s) for name, snaps in datasets.items() if name in with_pacs for s in snaps]


def all_assembled(datasets: Mapping[str, Sequence[Snapshot]]) -> list[str]:
    """Every iteration's ``assembled.json``: the end of conversion (``snakemake convert_all``)."""
    return [_fill(ASSEMBLED, s) for snaps in datasets.values() for s in snaps]


def report_targets(datasets: Mapping[str, Sequence[Snapshot]]) -> list[str]:
    """QC pictures and worklist of every iteration, curves and tables of every dataset."""
    targets = []
    for name, snaps in datasets.items():
        for snap in snaps:
            targets += [_fill(QC, snap), _fill(WORKLIST, snap)]
        if snaps:
            targets.append(REPORT.format(dataset=name) + "/learning_curves.png")
    return targets


class Iterations:
    """The look-ups above as Snakemake input functions: each method takes a job's ``wildcards``."""

    def __init__(self, datasets: Mapping[str, Sequence[Snapshot]], train_on: str) -> None:
        self.datasets = datasets
        self.train_on = train_on

    def snapshot(self, wildcards: Any) -> Snapshot:
        """The job's snapshot."""
        return snapshot_of(self.datasets[wildcards.dataset], wildcards.date)

    # The step's folders as params functions, not strings: Snakemake's linter wants a folder that
    # prefixes outputs to come from a function (it cannot tell a template from a hard-coded path).
    def work_dir(self, wildcards: Any) -> str:
        """The job's iteration folder in procdata (:data:`WORK`)."""
        return WORK.format(dataset=wildcards.dataset, date=wildcards.date)

    def results_dir(self, wildcards: Any) -> str:
        """The job's iteration folder in results (:data:`RESULTS`)."""
        return RESULTS.format(dataset=wildcards.dataset, date=wildcards.date)

    def dataset_results_dir(self, wildcards: Any) -> str:
        """The job's dataset folder in results (:data:`DATASET_RESULTS`)."""
        return DATASET_RESULTS.format(dataset=wildcards.dataset)

    def snapshot_dir(self, wildcards: Any) -> str:
        """The job's snapshot folder under rawdata."""
        return str(self.snapshot(wildcards).path)

    def earlier_conversions(self, wildcards: Any) -> list[str]:
        """See :func:`earlier_conversions`."""
        return earlier_conversions(self.datasets[wildcards.dataset], wildcards.date)

    def training_conversions(self, wildcards: Any) -> list[str]:
        """See :func:`training_conversions`."""
        return training_conversions(self.datasets[wildcards.dataset], wildcards.date, self.train_on)

    def training_folders(self, wildcards: Any) -> list[str]:
        """The converted folders of :meth:`training_conversions`."""
        return [str(Path(p).parent) for p in self.training_conversions(wildcards)]

    def first_assembled(self, wildcards: Any) -> str | list[str]:
        """See :func:`first_assembled`."""
        return first_assembled(self.datasets[wildcards.dataset], wildcards.date)

    def previous_assembled(self, wildcards: Any) -> str | list[str]:
        """See :func:`previous_assembled`."""
        return previous_assembled(self.datasets[wildcards.dataset], wildcards.date)

    def plans_source(self, wildcards: Any) -> str | list[str]:
        """See :func:`plans_source`."""
        return plans_source(self.datasets[wildcards.dataset], wildcards.date)

    def previous_fold(self, wildcards: Any) -> str | list[str]:
        """See :func:`previous_fold`."""
        return previous_fold(self.datasets[wildcards.dataset], wildcards.date, wildcards.fold)

    def previous_iteration(self, wildcards: Any) -> str | list[str]:
        """See :func:`previous_iteration`."""
        return previous_iteration(self.datasets[wildcards.dataset], wildcards.date)

    def earlier_predicted(self, wildcards: Any) -> list[str]:
        """See :func:`earlier_predicted`."""
        return earlier_predicted(self.datasets[wildcards.dataset], wildcards.date)

    def earlier_predictions(self, wildcards: Any) -> list[str]:
        """See :func:`earlier_predictions`."""
        return earlier_predictions(self.datasets[wildcards.dataset], wildcards.date)

    def dataset_iterations(self, wildcards: Any) -> list[str]:
        """Every ``iteration.json`` of the job's dataset, in date order."""
        return all_iterations({wildcards.dataset: self.datasets[wildcards.dataset]})

    def dataset_dates(self, wildcards: Any) -> list[str]:
        """The dates of the job's dataset's iterations, in order."""
        return [s.date for s in self.datasets[wildcards.dataset]]

    def all_iterations(self, wildcards: Any) -> list[str]:
        """See :func:`all_iterations`."""
        return all_iterations(self.datasets)

    def all_assembled(self, wildcards: Any) -> list[str]:
        """See :func:`all_assembled`."""
        return all_assembled(self.datasets)

    def report_targets(self, wildcards: Any) -> list[str]:
        """See :func:`report_targets`."""
        return report_targets(self.datasets)
