"""The path vocabulary of the rules and the package: templates, and which earlier iteration a step reads."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from iterseg import paths
from iterseg.rawdata.discovery import Snapshot

pytestmark = pytest.mark.unit

DATES = ("2026-01-01", "2026-02-01", "2026-03-01")
SNAPS = [Snapshot("ds", d, Path(f"data/rawdata/ds/{d}__ds"), i) for i, d in enumerate(DATES)]
WORK = "data/procdata/ds/{0}__ds"
RESULTS = "data/results/ds/{0}"


def cases(*dates: str) -> list[str]:
    return [WORK.format(d) + "/converted/cases.json" for d in dates]


def test_templates_fill_like_snakemake_wildcards() -> None:
    filled = {name: getattr(paths, name).format(dataset="ds", date=DATES[0], fold="2") for name in (
        "CASES", "ASSEMBLED", "PLANNED", "FOLD", "PREDICTED", "PREDICTIONS", "ITERATION", "QC", "WORKLIST"
    )}  # fmt: skip
    assert filled == {
        "CASES": "data/procdata/ds/2026-01-01__ds/converted/cases.json",
        "ASSEMBLED": "data/procdata/ds/2026-01-01__ds/assembled.json",
        "PLANNED": "data/procdata/ds/2026-01-01__ds/planned.json",
        "FOLD": "data/procdata/ds/2026-01-01__ds/trained/fold_2.json",
        "PREDICTED": "data/procdata/ds/2026-01-01__ds/predicted.json",
        "PREDICTIONS": "data/results/ds/2026-01-01/predictions.json",
        "ITERATION": "data/results/ds/2026-01-01/iteration.json",
        "QC": "data/results/ds/2026-01-01/qc",
        "WORKLIST": "data/results/ds/2026-01-01/worklist.csv",
    }
    assert paths.log("train_fold_{fold}") == "data/results/{dataset}/{date}/logs/train_fold_{fold}.log"
    assert paths.benchmark("predict_inbox") == "data/results/{dataset}/{date}/benchmarks/predict_inbox.tsv"
    assert paths.dataset_log("report_dataset") == "data/results/{dataset}/logs/report_dataset.log"
    assert paths.report("iterations.csv") == "data/results/{dataset}/report/iterations.csv"
    assert paths.fold_records(("0", "all")) == [
        "data/procdata/{dataset}/{date}__{dataset}/trained/fold_0.json",
        "data/procdata/{dataset}/{date}__{dataset}/trained/fold_all.json",
    ]


def test_the_package_builds_the_same_folders() -> None:
    work = paths.iteration_dir(Path(paths.PROCDATA), "ds", DATES[1])
    assert str(work) == WORK.format(DATES[1])
    assert paths.plans_file(work, "Dataset002_ds", "nnUNetPlans") == work / (
        "nnUNet_preprocessed/Dataset002_ds/nnUNetPlans.json"
    )
    assert paths.model_dir(work, "D", "T", "P", "3d_fullres") == work / "nnUNet_results/D/T__P__3d_fullres"


def test_the_first_iteration_reads_nothing_earlier() -> None:
    first = DATES[0]
    assert paths.earlier_conversions(SNAPS, first) == []
    assert paths.first_assembled(SNAPS, first) == []
    assert paths.previous_assembled(SNAPS, first) == []
    assert paths.plans_source(SNAPS, first) == []
    assert paths.previous_fold(SNAPS, first, "0") == []
    assert paths.previous_iteration(SNAPS, first) == []
    assert paths.earlier_predicted(SNAPS, first) == []
    assert paths.earlier_predictions(SNAPS, first) == []
    assert paths.training_conversions(SNAPS, first, "all_snapshots") == cases(first)


def test_the_third_iteration_reads_the_first_and_the_previous_and_all_earlier_in_date_order() -> None:
    third = DATES[2]
    # the frozen test set and the plans come from the first iteration, not the previous one
    assert paths.first_assembled(SNAPS, third) == WORK.format(DATES[0]) + "/assembled.json"
    assert paths.plans_source(SNAPS, third) == WORK.format(DATES[0]) + "/planned.json"
    # fine-tuning, what changed and promotion order come from the previous iteration
    assert paths.previous_assembled(SNAPS, third) == WORK.format(DATES[1]) + "/assembled.json"
    assert paths.previous_fold(SNAPS, third, "3") == WORK.format(DATES[1]) + "/trained/fold_3.json"
    assert paths.previous_iteration(SNAPS, third) == RESULTS.format(DATES[1]) + "/iteration.json"
    # reuse and annotation effort look at every earlier iteration, oldest first
    assert paths.earlier_conversions(SNAPS, third) == cases(*DATES[:2])
    assert paths.earlier_predicted(SNAPS, third) == [WORK.format(d) + "/predicted.json" for d in DATES[:2]]
    predictions = [RESULTS.format(d) + "/predictions.json" for d in DATES[:2]]
    assert paths.earlier_predictions(SNAPS, third) == predictions


def test_training_on_the_snapshot_alone_or_on_every_snapshot_so_far() -> None:
    cumulative = paths.training_conversions(SNAPS, DATES[2], "all_snapshots")
    assert cumulative == cases(*DATES)
    assert paths.training_conversions(SNAPS, DATES[2], "snapshot") == cases(DATES[2])


def test_whole_run_targets_cover_every_dataset_and_iteration() -> None:
    other = [Snapshot("mr", "2026-05-05", Path("data/rawdata/mr/2026-05-05__mr"), 0)]
    datasets = {"ds": SNAPS, "mr": other, "empty": []}
    assert paths.all_iterations(datasets) == [RESULTS.format(d) + "/iteration.json" for d in DATES] + [
        "data/results/mr/2026-05-05/iteration.json"
    ]
    assert paths.all_assembled(datasets)[-1] == "data/procdata/mr/2026-05-05__mr/assembled.json"
    targets = paths.report_targets(datasets)
    assert targets[:2] == [RESULTS.format(DATES[0]) + "/qc", RESULTS.format(DATES[0]) + "/worklist.csv"]
    assert "data/results/ds/report/learning_curves.png" in targets
    assert "data/results/mr/report/learning_curves.png" in targets
    assert not any("/empty/" in t for t in targets)  # a dataset without snapshots has no report yet


def test_input_functions_bind_the_lookups_to_a_jobs_wildcards() -> None:
    iterations = paths.Iterations({"ds": SNAPS}, train_on="all_snapshots")
    job = SimpleNamespace(dataset="ds", date=DATES[1], fold="0")
    assert iterations.snapshot_dir(job) == f"data/rawdata/ds/{DATES[1]}__ds"
    assert iterations.work_dir(job) == WORK.format(DATES[1])
    assert iterations.results_dir(job) == RESULTS.format(DATES[1])
    assert iterations.dataset_results_dir(job) == "data/results/ds"
    assert iterations.previous_fold(job) == WORK.format(DATES[0]) + "/trained/fold_0.json"
    assert iterations.training_folders(job) == [WORK.format(d) + "/converted" for d in DATES[:2]]
    assert iterations.dataset_dates(job) == list(DATES)
    with pytest.raises(LookupError, match="no snapshot 2027-01-01"):
        iterations.snapshot(SimpleNamespace(dataset="ds", date="2027-01-01"))


def test_every_atomic_write_has_a_hidden_unique_partial_beside_its_target(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "record.json"
    first, second = paths.partial_path(target), paths.partial_path(target)
    assert first.parent == target.parent and first.name.startswith(".record.json.")
    assert first.suffix == paths.PARTIAL_SUFFIX and first != second
