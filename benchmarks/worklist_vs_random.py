"""Benchmark: does the worklist pick better cases to annotate than chance?

The worklist (``iterseg worklist``) ranks the inbox predictions by how much refining them would
teach the next iteration. Compared here with two chance baselines, each choosing ``-k`` cases of
a pool of phantoms of mixed difficulty (``--pool``; one third each of the kinds ``demo``,
``low-contrast`` and ``small-lesion`` of phantom_training.py):

* ``worklist``: the top k of ``rank_cases``, on the signals the predict step records for each
  case (``_predict_case``: predicted ``volume_ml`` per label, ``mean_entropy`` =
  ``normalised_entropy`` of the probabilities, ``fold_dice`` = {} with one fold) and the start
  training set's annotated label volumes;
* ``random``: k cases of the pool drawn uniformly (seeded);
* ``foreground-random``: the baseline nnActive (Lüth et al. 2024) recommends over plain random
  choice: k cases drawn uniformly (seeded) among those whose start-model prediction contains
  every foreground label (liver and tumour), topped up by uniform draws from the rest of the
  pool when fewer than k qualify.

A start model is trained from scratch (first-iteration schedule) on ``--start`` demo phantoms.
For each strategy and seed (``--seeds``; the worklist chooses the same cases for every seed, its
fine-tuning is repeated so that the training noise shows) the start model is fine-tuned with the
fine-tuning schedule on the start cases plus the chosen ones (one planned dataset per distinct
training set, plans transferred from the start's) and scored on a mixed test set (``--test``,
the kinds in turn). Prints the worklist's ranking, per run the chosen cases with their kinds and
the test Dice per label, per strategy the mean ± sd over seeds, overall and per kind, and the
ratios of the worklist's mean Dice to the baselines'. Settings from ``--config`` as in
finetune_vs_scratch.py; ``--first-epochs`` / ``--fine-epochs`` override its epochs for smoke
runs only (printed as such).

    .venv/bin/python benchmarks/worklist_vs_random.py [--config config/demo.yaml] [--pool 9]
        [--start 4] [--test 6] [-k 3] [--seeds 0 1] [--device cpu] [--threads 2] [--workdir DIR]
        [--first-epochs N] [--fine-epochs N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from iterseg.evaluate.uncertainty import fold_agreement, normalised_entropy
from iterseg.records import Prediction
from iterseg.report.worklist import rank_cases
from phantom_training import (
    DEFAULT_CONFIG,
    FOREGROUND,
    KINDS,
    VOXEL_ML,
    Case,
    Planned,
    Setup,
    Trained,
    describe,
    label_volumes,
    load_line,
    load_model,
    load_setup,
    make_case,
    mean_dice,
    mean_sd,
    nanmean,
    plan,
    predict,
    ratio,
    score_test_set,
    train,
    workspace,
)

STRATEGIES = ("worklist", "random", "foreground-random")
START_ID = 960  # the start set is dataset 960, the chosen training sets 961, 962, ...
POOL_SEED, TEST_SEED = 100, 1000  # pool phantom i has seed 100 + i, test 1000 + i, start i


@dataclass(frozen=True)
class Run:
    """One fine-tuning of the start model on the start cases plus the chosen ones."""

    strategy: str
    seed: int
    chosen: tuple[str, ...]
    trained: Trained
    scores: dict[str, dict[str, float]]  # test case -> label -> Dice


def pool_signals(start: Trained, pool: Sequence[Case], setup: Setup) -> tuple[list[dict[str, Any]], set[str]]:
    """Each pool case's predictions.json entry as the predict step writes it; the cases with every label."""
    predictor = load_model(start, setup)
    labels = {k: v for k, v in predictor.dataset_json["labels"].items() if k != "ignore"}
    entries, complete = [], set()
    for case in pool:
        predicted = predict(predictor, case)
        seg = predicted.segmentation.astype(np.uint8)
        counts = {name: int((seg == value).sum()) for name, value in labels.items() if value > 0}
        entry = Prediction(
            case_id=case.case_id, patient_id=case.case_id, series_uid="", label="", seg=None,
            voxels_per_label=counts,
            volume_ml={name: round(n * VOXEL_ML, 3) for name, n in counts.items()},
            mean_entropy=normalised_entropy(predicted.probabilities),
            fold_dice=fold_agreement(list(predicted.fold_segmentations), labels),  # {} for one fold
        )  # fmt: skip
        entries.append(entry.to_json())
        if all(n > 0 for n in counts.values()):
            complete.add(case.case_id)
    del predictor
    return entries, complete


def choose(
    strategy: str,
    seed: int,
    k: int,
    ranking: Sequence[Mapping[str, Any]],
    pool: Sequence[str],
    complete: set[str],
) -> tuple[str, ...]:
    """The k pool cases ``strategy`` picks (see the module docstring), in the order picked."""
    if strategy == "worklist":
        return tuple(str(row["case_id"]) for row in ranking[:k])
    rng = np.random.default_rng([seed, STRATEGIES.index(strategy)])
    if strategy == "random":
        return tuple(str(c) for c in rng.choice(pool, k, replace=False))
    eligible = [c for c in pool if c in complete]
    picked = [str(c) for c in rng.choice(eligible, min(k, len(eligible)), replace=False)] if eligible else []
    rest = [c for c in pool if c not in picked]
    if len(picked) < k:
        picked += [str(c) for c in rng.choice(rest, k - len(picked), replace=False)]
    return tuple(picked)


def fine_tune_all(
    root: Path,
    args: argparse.Namespace,
    setup: Setup,
    cases: dict[str, list[Case]],
    start: tuple[Planned, Trained],
) -> tuple[list[dict[str, Any]], set[str], list[Run]]:
    """Rank the pool, then fine-tune the start model on each strategy's choice for each seed."""
    start_plan, start_model = start
    entries, complete = pool_signals(start_model, cases["pool"], setup)
    ranking = rank_cases(entries, label_volumes(cases["start"]))
    by_id = {c.case_id: c for c in cases["pool"]}
    pool_ids = [c.case_id for c in cases["pool"]]
    planned: dict[tuple[str, ...], Planned] = {}
    runs = []
    for seed in args.seeds:
        for strategy in STRATEGIES:
            chosen = choose(strategy, seed, args.k, ranking, pool_ids, complete)
            key = tuple(sorted(chosen))
            if key not in planned:
                n = len(planned) + 1
                training = [*cases["start"], *(by_id[c] for c in key)]
                planned[key] = plan(root / f"set{n}", START_ID + n, f"wlset{n}", training, setup, start_plan)
            work = root / f"{strategy}-seed{seed}"
            trained = train(planned[key], work, setup.fine, setup, start_model)
            scores = score_test_set(trained, cases["test"], setup)
            runs.append(Run(strategy, seed, chosen, trained, scores))
            dices = ", ".join(f"{name} {mean_dice(scores, name):.3f}" for name in FOREGROUND)
            print(f"  seed {seed} {strategy}: {', '.join(chosen)}; {trained.wall:.1f} s; {dices}", flush=True)
    return ranking, complete, runs


def ranking_lines(
    ranking: Sequence[Mapping[str, Any]], kinds: Mapping[str, str], k: int, complete: set[str]
) -> list[str]:
    volumes = " | ".join(f"ml {name} (z)" for name in FOREGROUND)
    lines = [
        "worklist of the start model's pool predictions (* the top k, the worklist's choice; "
        "every label: the prediction has every foreground label, foreground-random draws from these):",
        f"| rank | case | kind | {volumes} | signal | disagreement | volume outliers | every label |",
        "|---|---|---|" + "---|" * len(FOREGROUND) + "---|---|---|---|",
    ]
    for row in ranking:
        # robust z of the volume; "" with fewer than 3 annotated volumes
        z = {n: "-" if row[f"volume_z_{n}"] == "" else row[f"volume_z_{n}"] for n in FOREGROUND}
        cells = " | ".join(f"{row[f'volume_ml_{n}']} ({z[n]})" for n in FOREGROUND)
        mark = " *" if row["rank"] <= k else ""
        lines.append(
            f"| {row['rank']}{mark} | {row['case_id']} | {kinds[row['case_id']]} | {cells} | {row['signal']} "
            f"| {row['disagreement']} | {row['volume_outliers'] or '-'} "
            f"| {'yes' if row['case_id'] in complete else 'no'} |"
        )
    return lines


def run_lines(
    runs: Sequence[Run], kinds: Mapping[str, str], start: Mapping[str, Mapping[str, float]]
) -> list[str]:
    labels = " | ".join(f"Dice {name}" for name in FOREGROUND)
    lines = [
        f"| strategy | seed | chosen cases | {labels} | wall s | load 1m |",
        "|---|---|---|" + "---|" * len(FOREGROUND) + "---|---|",
        f"| start model | - | - | {' | '.join(f'{mean_dice(start, n):.3f}' for n in FOREGROUND)} | - | - |",
    ]
    for run in runs:
        chosen = ", ".join(f"{c} ({kinds[c]})" for c in run.chosen)
        dices = " | ".join(f"{mean_dice(run.scores, name):.3f}" for name in FOREGROUND)
        t = run.trained
        lines.append(
            f"| {run.strategy} | {run.seed} | {chosen} | {dices} | {t.wall:.1f} "
            f"| {t.load_before:.2f}→{t.load_after:.2f} |"
        )
    return lines


def summary_lines(
    runs: Sequence[Run], test: Sequence[Case], start: Mapping[str, Mapping[str, float]]
) -> list[str]:
    """Mean ± sd over seeds per strategy, overall and per kind of test case; the worklist's ratios."""
    groups: dict[str, list[str] | None] = {"all": None}
    groups |= {kind: [c.case_id for c in test if c.kind == kind] for kind in KINDS}
    groups = {name: ids for name, ids in groups.items() if ids is None or ids}
    header = " | ".join(f"{name} {group}" for group in groups for name in FOREGROUND)
    lines = [
        "mean ± sd over seeds of the test Dice (all test cases, then by kind):",
        f"| strategy | runs | {header} |",
        "|---|---|" + "---|" * (len(groups) * len(FOREGROUND)),
    ]
    rows = [("start model", [start])] + [(s, [r.scores for r in runs if r.strategy == s]) for s in STRATEGIES]
    means: dict[str, dict[str, float]] = {}
    for strategy, scores in rows:
        cells = [
            mean_sd([mean_dice(one, name, ids) for one in scores])
            for ids in groups.values()
            for name in FOREGROUND
        ]
        means[strategy] = {name: nanmean([mean_dice(one, name) for one in scores]) for name in FOREGROUND}
        lines.append(f"| {strategy} | {len(scores)} | {' | '.join(cells)} |")
    for baseline in STRATEGIES[1:]:
        parts = [f"{name} {ratio(means['worklist'][name], means[baseline][name])}" for name in FOREGROUND]
        lines.append(f"worklist / {baseline} mean Dice (all test cases): {', '.join(parts)}")
    return lines


def make_cases(args: argparse.Namespace) -> dict[str, list[Case]]:
    """Start (demo kind), pool and test phantoms (the kinds in turn), each with seeds of its own."""
    return {
        "start": [make_case(f"start_{i:03d}", i) for i in range(1, args.start + 1)],
        "pool": [
            make_case(f"pool_{i:03d}", POOL_SEED + i, KINDS[(i - 1) % 3]) for i in range(1, args.pool + 1)
        ],
        "test": [
            make_case(f"test_{i:03d}", TEST_SEED + i, KINDS[(i - 1) % 3]) for i in range(1, args.test + 1)
        ],
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--pool", type=int, default=9, help="pool phantoms to choose from")
    parser.add_argument("--start", type=int, default=4, help="demo phantoms the start model trains on")
    parser.add_argument("--test", type=int, default=6, help="test phantoms, the kinds in turn")
    parser.add_argument("-k", type=int, default=3, help="cases each strategy chooses")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--device", help="cpu, cuda or mps (default: the config's nnunet.device)")
    parser.add_argument("--threads", type=int, default=2, help="threads / processes of each step")
    parser.add_argument("--workdir", type=Path, help="keep data, logs and models here (default: a temp dir)")
    parser.add_argument("--first-epochs", type=int, help="SMOKE RUNS ONLY: override the start model's epochs")
    parser.add_argument("--fine-epochs", type=int, help="SMOKE RUNS ONLY: override the fine-tuning epochs")
    args = parser.parse_args()
    if not 1 <= args.k <= args.pool or args.start < 1 or args.test < 1:
        sys.exit("need 1 <= -k <= --pool, --start >= 1 and --test >= 1")
    if START_ID + 2 * len(args.seeds) + 1 > 999:  # nnU-Net's dataset ids have three digits
        sys.exit(f"--seeds: at most {(999 - START_ID - 1) // 2} seeds")
    return args


def main() -> None:
    args = parse_args()
    setup = load_setup(args.config, args.device, args.threads, args.first_epochs, args.fine_epochs)
    began = time.perf_counter()
    print("\n".join(describe(setup)))
    cases = make_cases(args)
    kinds = {c.case_id: c.kind for group in cases.values() for c in group}
    counts = {
        name: ", ".join(f"{sum(c.kind == k for c in group)} {k}" for k in KINDS)
        for name, group in cases.items()
    }
    print(
        f"data: start {args.start} demo; pool {counts['pool']}; test {counts['test']}; "
        f"k = {args.k}; seeds {args.seeds}"
    )
    print(f"{os.cpu_count()} CPUs; {load_line('before')}", flush=True)
    with workspace(args.workdir, "bench-worklist-") as root:
        start_plan = plan(root / "start", START_ID, "wlstart", cases["start"], setup, None)
        start_model = train(start_plan, root / "start-train", setup.first, setup, None)
        start_scores = score_test_set(start_model, cases["test"], setup)
        print(f"start model: {start_model.epochs} epochs, {start_model.wall:.1f} s", flush=True)
        ranking, complete, runs = fine_tune_all(root, args, setup, cases, (start_plan, start_model))
    print()
    if setup.smoke:
        print(describe(setup)[-1])
    print("\n".join(ranking_lines(ranking, kinds, args.k, complete)))
    print()
    print("\n".join(run_lines(runs, kinds, start_scores)))
    print()
    print("\n".join(summary_lines(runs, cases["test"], start_scores)))
    print(f"{os.cpu_count()} CPUs; {load_line('after')}")
    print(f"benchmark took {(time.perf_counter() - began) / 60:.1f} min")


if __name__ == "__main__":
    main()
