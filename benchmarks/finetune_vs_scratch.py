"""Benchmark: does fine-tuning pay? Each iteration fine-tuned from the previous one vs trained from scratch.

Every iteration after the first fine-tunes the previous iteration's model with a short schedule
(``nnunet.fine_tuning``) instead of training anew (``nnunet.first_iteration``). Compared here on
a dataset that grows over the iterations (``--sizes`` training phantoms of the demo, the first
``n`` of one list, so each iteration adds cases to the last), scored on a fixed test set of other
phantoms (``--test``):

* iteration 1 is trained from scratch with the first-iteration schedule; it starts the chain;
* iteration k >= 2, on the same data (one planned dataset, plans transferred from iteration 1 as
  the workflow does): (a) fine-tuned from iteration k-1's fine-tuned model with the fine-tuning
  schedule, (b) trained from scratch with the first-iteration schedule.

Trainer, plans, configuration, plans overrides and both schedules come from ``--config``; data,
planning, training and scoring as phantom_training.py says (fold 0 trains on every case). Prints
per iteration the test Dice per label, epochs and the wall time of each train step, and the
ratios fine-tuned / scratch. Goal, per iteration k >= 2: the fine-tuned model reaches >= 0.95x
the scratch Dice of every label with <= 25 % of the scratch epochs; each iteration's verdict is
printed, misses included. ``--first-epochs`` / ``--fine-epochs`` override the config's epochs
for smoke runs only (printed as such).

    .venv/bin/python benchmarks/finetune_vs_scratch.py [--config config/demo.yaml] [--sizes 4 7 10]
        [--test 4] [--device cpu] [--threads 2] [--workdir DIR] [--first-epochs N] [--fine-epochs N]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from phantom_training import (
    DEFAULT_CONFIG,
    FOREGROUND,
    Case,
    Planned,
    Setup,
    Trained,
    describe,
    load_line,
    load_setup,
    make_case,
    mean_dice,
    plan,
    ratio,
    score_test_set,
    train,
    workspace,
)

DICE_GOAL = 0.95  # fine-tuned Dice >= this times the scratch Dice, every label
EPOCHS_GOAL = 0.25  # fine-tuned epochs <= this times the scratch epochs
FIRST_DATASET_ID = 950  # iteration k is dataset 950 + k
TEST_SEED = 1000  # test phantom i has seed 1000 + i; training phantom i has seed i


@dataclass(frozen=True)
class Arm:
    """One trained model of an iteration and its mean test Dice per label."""

    trained: Trained
    dice: dict[str, float]


@dataclass(frozen=True)
class Iteration:
    number: int
    cases: int
    scratch: Arm
    fine: Arm | None  # None in iteration 1: its scratch model starts the chain


def trained_arm(
    planned: Planned, work: Path, fine: bool, setup: Setup, start: Trained | None, test: list[Case]
) -> Arm:
    """Train one arm and score it on the test set; say what it did."""
    schedule = setup.fine if fine else setup.first
    trained = train(planned, work, schedule, setup, start)
    scores = score_test_set(trained, test, setup)
    arm = Arm(trained, {name: mean_dice(scores, name) for name in FOREGROUND})
    dices = ", ".join(f"{name} {value:.3f}" for name, value in arm.dice.items())
    how = "fine-tuned" if fine else "from scratch"
    print(f"  {how}: {trained.epochs} epochs, {trained.wall:.1f} s; test Dice {dices}", flush=True)
    return arm


def run_iterations(root: Path, sizes: list[int], setup: Setup, test: list[Case]) -> list[Iteration]:
    """Plan each iteration's dataset once; train its arms, each in its own folder."""
    phantoms = [make_case(f"ft_{i:03d}", i) for i in range(1, max(sizes) + 1)]
    first: Planned | None = None
    chain: Arm | None = None
    done = []
    for k, size in enumerate(sizes, start=1):
        print(f"iteration {k}: {size} training cases", flush=True)
        work = root / f"iteration{k}"
        planned = plan(work / "plan", FIRST_DATASET_ID + k, f"ftbench{k}", phantoms[:size], setup, first)
        fine = None
        if chain is not None:
            fine = trained_arm(planned, work / "finetune", True, setup, chain.trained, test)
        scratch = trained_arm(planned, work / "scratch", False, setup, None, test)
        first, chain = first or planned, fine or scratch
        done.append(Iteration(k, size, scratch, fine))
    return done


def verdict(it: Iteration) -> str:
    """The goal of one fine-tuned iteration: 'met', or 'MISSED' with every criterion it missed."""
    assert it.fine is not None
    misses = []
    for name in FOREGROUND:
        tuned, scratch = it.fine.dice[name], it.scratch.dice[name]
        if math.isnan(tuned) or math.isnan(scratch):  # no case scored
            misses.append(f"Dice {name} not measured")
        elif tuned < DICE_GOAL * scratch:
            misses.append(f"Dice {name} {ratio(tuned, scratch)} < {DICE_GOAL}x")
    epochs = it.fine.trained.epochs / it.scratch.trained.epochs
    if epochs > EPOCHS_GOAL:
        misses.append(f"epochs {epochs:.2f}x > {EPOCHS_GOAL}x")
    return "met" if not misses else "MISSED: " + "; ".join(misses)


def arm_row(it: Iteration, name: str, arm: Arm) -> str:
    t = arm.trained
    lr = "default" if t.initial_lr is None else f"{t.initial_lr:g}"
    dices = " | ".join(f"{arm.dice[label]:.3f}" for label in FOREGROUND)
    return (
        f"| {it.number} | {it.cases} | {name} | {t.epochs} | {lr} | {t.wall:.1f} | {t.in_step:.1f} "
        f"| {t.load_before:.2f}→{t.load_after:.2f} | {dices} |"
    )


def report(iterations: list[Iteration]) -> list[str]:
    """The two tables (every trained model; fine-tuned / scratch per iteration) and the verdicts."""
    labels = " | ".join(f"Dice {name}" for name in FOREGROUND)
    lines = [
        f"| iteration | cases | arm | epochs | initial lr | wall s | in-step s | load 1m | {labels} |",
        "|---|---|---|---|---|---|---|---|" + "---|" * len(FOREGROUND),
    ]
    for it in iterations:
        if it.fine is not None:
            lines.append(arm_row(it, "fine-tuned", it.fine))
        lines.append(arm_row(it, "scratch" if it.fine else "scratch (starts the chain)", it.scratch))
    ratios = " | ".join(f"Dice {name}" for name in FOREGROUND)
    lines += [
        "",
        f"fine-tuned / scratch; goal: Dice >= {DICE_GOAL}x for every label at <= {EPOCHS_GOAL:.0%} "
        "of the epochs",
        f"| iteration | cases | {ratios} | epochs | wall time | goal |",
        "|---|---|" + "---|" * len(FOREGROUND) + "---|---|---|",
    ]
    tuned = [it for it in iterations if it.fine is not None]
    for it in tuned:
        assert it.fine is not None
        f, s = it.fine, it.scratch
        dices = " | ".join(ratio(f.dice[name], s.dice[name]) for name in FOREGROUND)
        epochs, wall = ratio(f.trained.epochs, s.trained.epochs), ratio(f.trained.wall, s.trained.wall)
        lines.append(f"| {it.number} | {it.cases} | {dices} | {epochs} | {wall} | {verdict(it)} |")
    met = sum(verdict(it) == "met" for it in tuned)
    lines.append(f"goal met in {met} of {len(tuned)} fine-tuned iterations")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[4, 7, 10], help="training cases per iteration"
    )
    parser.add_argument("--test", type=int, default=4, help="test phantoms")
    parser.add_argument("--device", help="cpu, cuda or mps (default: the config's nnunet.device)")
    parser.add_argument("--threads", type=int, default=2, help="threads / processes of each step")
    parser.add_argument("--workdir", type=Path, help="keep data, logs and models here (default: a temp dir)")
    parser.add_argument(
        "--first-epochs", type=int, help="SMOKE RUNS ONLY: override the first-iteration epochs"
    )
    parser.add_argument("--fine-epochs", type=int, help="SMOKE RUNS ONLY: override the fine-tuning epochs")
    args = parser.parse_args()
    if len(args.sizes) < 2 or any(b <= a for a, b in zip(args.sizes, args.sizes[1:], strict=False)):
        sys.exit("--sizes: two or more training set sizes, each larger than the one before")
    if args.sizes[0] < 1 or args.test < 1:
        sys.exit("--sizes and --test: at least one case each")
    setup = load_setup(args.config, args.device, args.threads, args.first_epochs, args.fine_epochs)
    began = time.perf_counter()
    print("\n".join(describe(setup)))
    print(
        f"data: {max(args.sizes)} training phantoms of the demo kind (seeds 1-{max(args.sizes)}; "
        f"iterations of {', '.join(map(str, args.sizes))} cases), {args.test} test phantoms "
        f"(seeds {TEST_SEED + 1}-{TEST_SEED + args.test})"
    )
    print(f"{os.cpu_count()} CPUs; {load_line('before')}", flush=True)
    test = [make_case(f"test_{i:03d}", TEST_SEED + i) for i in range(1, args.test + 1)]
    with workspace(args.workdir, "bench-finetune-") as root:
        iterations = run_iterations(root, args.sizes, setup, test)
    print()
    if setup.smoke:
        print(describe(setup)[-1])
    print("\n".join(report(iterations)))
    print(f"{os.cpu_count()} CPUs; {load_line('after')}")
    print(f"benchmark took {(time.perf_counter() - began) / 60:.1f} min")


if __name__ == "__main__":
    main()
