"""Shared by the training benchmarks (finetune_vs_scratch.py, worklist_vs_random.py); not a benchmark itself.

* Phantoms of ``iterseg.rawdata.demo`` written straight as nnU-Net raw datasets (no DICOM: these
  benchmarks measure training, not conversion), in three kinds: ``demo`` (as the demo draws
  them), ``low-contrast`` (the same masks re-rendered with the tumour at 75 HU instead of the
  demo's -60 HU and noise 18 HU instead of 12) and ``small-lesion`` (tumour and satellite at half their radii,
  ``annotated(phantom, 0.5)``, in the image and the label alike).
* ``iterseg plan`` and ``iterseg train`` run as the workflow's rules run them: subprocesses with
  every ``nnUNet_*`` variable dropped from the environment, one folder per planned dataset and
  one per training (its own ``nnUNet_results``; the planned dataset is copied into it, so the
  trainings of one training set share one plan and preprocessing).
* One split (``splits_final.json``) per planned dataset: fold 0 trains on every case, and
  nnU-Net's validation runs on the first case only (also trained on), so that two trainings of
  one dataset see the same cases and the time measured is mostly training. nnU-Net's default
  5-fold split would train fold 0 on 80 % of the cases, and fails below 5 cases.
* The trained fold loaded as the predict and evaluate steps load it (``load_ensemble``,
  ``predict_folds``) and scored per label with ``iterseg.evaluate.metrics.dice``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import yaml
from iterseg.config import NnunetSettings, Schedule, load_settings
from iterseg.dicom.codes import SegmentLabel
from iterseg.evaluate.metrics import dice
from iterseg.nnunet.ensemble import FoldPrediction
from iterseg.paths import model_dir, preprocessed_dir
from iterseg.rawdata.demo import (
    BODY_HU,
    LIVER_HU,
    ORIGIN,
    PIXEL_SPACING,
    SLICE_THICKNESS,
    annotated,
    make_phantom,
    phantom_arrays,
)
from iterseg.records import PlanRecord, TrainedRecord, read_record

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEFAULT_CONFIG = REPO / "config" / "demo.yaml"
LABELS = {"background": 0, "liver": 1, "tumour": 2}
FOREGROUND = {name: value for name, value in LABELS.items() if value > 0}
SPACING = (PIXEL_SPACING[1], PIXEL_SPACING[0], SLICE_THICKNESS)  # x, y, z: as SimpleITK takes it
VOXEL_ML = float(np.prod(SPACING)) / 1000.0
KINDS = ("demo", "low-contrast", "small-lesion")
# What the low-contrast kind changes of what phantom_arrays paints.
LOW_CONTRAST_TUMOUR_HU, LOW_CONTRAST_NOISE_HU = 75.0, 18.0
SMALL_LESION_SCALE = 0.5
FOLD = "0"


# --- data ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One phantom as nnU-Net trains on it."""

    case_id: str
    kind: str  # one of KINDS
    image: np.ndarray  # HU, int16, (slices, rows, columns)
    labels: np.ndarray  # uint8 label map of LABELS


def _low_contrast(hu: np.ndarray, masks: Mapping[SegmentLabel, np.ndarray], seed: int) -> np.ndarray:
    """The phantom re-rendered from its masks with a faint tumour and more noise."""
    body = hu > -500  # the demo's body (30 HU) and air (-1000 HU) never meet within its noise
    out = np.full(hu.shape, -1000.0)
    out[body] = BODY_HU
    out[masks[SegmentLabel.LIVER]] = LIVER_HU
    out[masks[SegmentLabel.TUMOUR]] = LOW_CONTRAST_TUMOUR_HU
    return out + np.random.default_rng(seed + 2000).normal(0.0, LOW_CONTRAST_NOISE_HU, hu.shape)


def make_case(case_id: str, seed: int, kind: str = "demo") -> Case:
    """The phantom of ``seed`` as a case of ``kind`` (see the module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: one of {', '.join(KINDS)}")
    phantom = make_phantom(case_id, seed)
    if kind == "small-lesion":
        phantom = annotated(phantom, SMALL_LESION_SCALE)
    hu, masks = phantom_arrays(phantom)
    if kind == "low-contrast":
        hu = _low_contrast(hu, masks, seed)
    labels = np.zeros(hu.shape, np.uint8)
    labels[masks[SegmentLabel.LIVER]] = LABELS["liver"]
    labels[masks[SegmentLabel.TUMOUR]] = LABELS["tumour"]  # inside the liver: the later label wins
    return Case(case_id, kind, np.rint(hu).astype(np.int16), labels)


def label_volumes(cases: Sequence[Case]) -> dict[str, list[float]]:
    """Label -> annotated volumes (ml) of ``cases``, as the worklist's ``annotated_volumes`` counts them."""
    return {
        name: [float(np.count_nonzero(c.labels == value)) * VOXEL_ML for c in cases]
        for name, value in FOREGROUND.items()
    }


def _write_nifti(array: np.ndarray, path: Path) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    sitk.WriteImage(image, str(path), useCompression=True)


def write_dataset(work: Path, dataset_id: int, name: str, cases: Sequence[Case]) -> str:
    """``cases`` as ``work/nnUNet_raw/DatasetNNN_name`` (imagesTr, labelsTr, dataset.json); its name."""
    dataset_name = f"Dataset{dataset_id:03d}_{name}"
    raw = work / "nnUNet_raw" / dataset_name
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    for case in cases:
        _write_nifti(case.image, raw / "imagesTr" / f"{case.case_id}_0000.nii.gz")
        _write_nifti(case.labels, raw / "labelsTr" / f"{case.case_id}.nii.gz")
    dataset_json = {
        "channel_names": {"0": "CT"},
        "labels": LABELS,
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
        "name": dataset_name,
    }
    (raw / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return dataset_name


@contextlib.contextmanager
def workspace(workdir: Path | None, prefix: str) -> Iterator[Path]:
    """``workdir`` emptied (kept afterwards, logs and models included), or a temporary folder."""
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix=prefix) as name:
            yield Path(name)
        return
    root = workdir.resolve()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    yield root


# --- settings -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """What the benchmarks take from the config, and how they run the steps."""

    config: Path
    nn: NnunetSettings
    planner: str | None  # nnunet.planner where the config sets it
    first: Schedule  # the first iteration's trainer and schedule (from scratch)
    fine: Schedule  # the fine-tuning iterations' trainer and schedule
    device: str
    threads: int
    smoke: tuple[str, ...]  # what the command line overrode, for the output


def load_setup(
    config: Path, device: str | None, threads: int, first_epochs: int | None, fine_epochs: int | None
) -> Setup:
    """The config validated as the workflow validates it; the epoch overrides of smoke runs applied."""
    raw = yaml.safe_load(config.read_text())
    nn = load_settings(raw, config.parent).nnunet
    first, fine, smoke = nn.schedule(True), nn.schedule(False), []
    if first_epochs is not None:
        smoke.append(f"first-iteration epochs {first.epochs or 'trainer default'} -> {first_epochs}")
        first = replace(first, epochs=first_epochs)
    if fine_epochs is not None:
        smoke.append(f"fine-tuning epochs {fine.epochs or 'trainer default'} -> {fine_epochs}")
        fine = replace(fine, epochs=fine_epochs)
    planner = raw["nnunet"].get("planner")
    return Setup(config, nn, planner, first, fine, device or nn.device, threads, tuple(smoke))


def describe(setup: Setup) -> list[str]:
    """The settings in use, with any smoke-run override said loudly."""

    def schedule(s: Schedule) -> str:
        epochs = "trainer default" if s.epochs is None else s.epochs
        lr = "trainer default" if s.initial_lr is None else f"{s.initial_lr:g}"
        return f"{s.trainer}, epochs {epochs}, initial lr {lr}"

    nn = setup.nn
    lines = [
        f"config {setup.config}: {nn.configuration}, plans {nn.plans}"
        + (f" (planner {setup.planner})" if setup.planner else "")
        + f", plans overrides {dict(nn.plans_overrides or {})}",
        f"  first iteration / from scratch: {schedule(setup.first)}",
        f"  fine-tuning: {schedule(setup.fine)}",
        f"  device {setup.device}, {setup.threads} threads per step",
    ]
    if setup.smoke:
        lines.append(
            "SMOKE RUN - config overridden on the command line: "
            + "; ".join(setup.smoke)
            + ". Dice and goals below say nothing about the configured schedules."
        )
    return lines


# --- plan and train, as the rules do ----------------------------------------------------------------


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}


def run_step(args: Sequence[str], log: Path) -> float:
    """``iterseg --log LOG ARGS`` as a rule's job runs it; its wall seconds.

    Exits with the end of the log when the step fails.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    done = subprocess.run([str(BIN / "iterseg"), "--log", str(log), *args], env=_clean_env(), check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = log.read_text().splitlines()[-20:] if log.is_file() else ["(no log)"]
        sys.exit(f"iterseg {args[0]} failed (exit {done.returncode}); the end of {log}:\n" + "\n".join(tail))
    return seconds


@dataclass(frozen=True)
class Planned:
    """One planned and preprocessed dataset."""

    work: Path
    dataset_name: str
    record: Path  # planned.json
    cases: tuple[str, ...]
    seconds: float


def plan(
    work: Path, dataset_id: int, name: str, cases: Sequence[Case], setup: Setup, source: Planned | None
) -> Planned:
    """Write and plan a dataset: planned here, or (``source`` given) with the source's plans transferred."""
    dataset_name = write_dataset(work, dataset_id, name, cases)
    nn, record = setup.nn, work / "planned.json"
    args = ["plan", "--work", str(work), "--dataset-name", dataset_name, "--configuration", nn.configuration]
    args += ["--plans", nn.plans, "--processes", str(setup.threads)]
    if source is not None:
        args += ["--source-record", str(source.record)]
    else:
        if nn.plans_overrides:
            args += ["--overrides", json.dumps(dict(nn.plans_overrides), sort_keys=True)]
        if setup.planner:
            args += ["--planner", setup.planner]
    seconds = run_step([*args, "--output", str(record)], work / "plan.log")
    ids = tuple(c.case_id for c in cases)
    splits = [{"train": list(ids), "val": [ids[0]]}]
    (preprocessed_dir(work, dataset_name) / "splits_final.json").write_text(json.dumps(splits, indent=2))
    return Planned(work, dataset_name, record, ids, seconds)


@dataclass(frozen=True)
class Trained:
    """One trained fold and what its training cost."""

    work: Path
    record: Path  # trained/fold_0.json
    model: Path  # nnU-Net's model folder
    wall: float  # seconds of the train subprocess
    in_step: float  # seconds train_fold itself measured (without start-up and imports)
    epochs: int  # run, as the final checkpoint says
    initial_lr: float | None  # None: the trainer's default
    load_before: float
    load_after: float


def _epochs_run(checkpoint: Path) -> int:
    import torch

    return int(torch.load(checkpoint, map_location="cpu", weights_only=False)["current_epoch"])


def train(
    planned: Planned, work: Path, schedule: Schedule, setup: Setup, pretrained: Trained | None
) -> Trained:
    """Fold 0 of ``planned`` trained in its own folder ``work``, from scratch or from ``pretrained``."""
    source = preprocessed_dir(planned.work, planned.dataset_name)
    shutil.copytree(source, preprocessed_dir(work, planned.dataset_name))
    output = work / "trained" / f"fold_{FOLD}.json"
    args = ["train", "--work", str(work), "--plan-record", str(planned.record), "--trainer", schedule.trainer]
    args += ["--fold", FOLD, "--device", setup.device, "--threads", str(setup.threads)]
    if pretrained is not None:
        args += ["--pretrained-from", str(pretrained.record)]
    if schedule.epochs is not None:
        args += ["--epochs", str(schedule.epochs)]
    if schedule.initial_lr is not None:
        args += ["--initial-lr", str(schedule.initial_lr)]
    load_before = os.getloadavg()[0]
    wall = run_step([*args, "--output", str(output)], work / "train.log")
    load_after = os.getloadavg()[0]
    record = read_record(output, TrainedRecord)
    plans = read_record(planned.record, PlanRecord)
    folder = model_dir(work, planned.dataset_name, schedule.trainer, plans.plans, plans.configuration)
    epochs = _epochs_run(record.checkpoint)
    return Trained(
        work, output, folder, wall, record.seconds, epochs, schedule.initial_lr, load_before, load_after
    )


# --- predict and score ----------------------------------------------------------------------------


def load_model(trained: Trained, setup: Setup) -> Any:
    """The trained fold as the predict and evaluate steps load it."""
    from iterseg.nnunet.ensemble import load_ensemble
    from iterseg.nnunet.env import configure_nnunet

    configure_nnunet(trained.work, threads=setup.threads, device=setup.device)
    if setup.device == "cpu":
        import torch

        torch.set_num_threads(setup.threads)
    with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net prints where it found the trainer class
        return load_ensemble(trained.model, (FOLD,), setup.device, inference=setup.nn.inference)


def predict(predictor: Any, case: Case) -> FoldPrediction:
    """``case`` predicted as the predict step predicts a NIfTI inbox case."""
    from iterseg.nnunet.ensemble import predict_folds

    props = {"spacing": list(SPACING)[::-1]}
    return predict_folds(predictor, case.image[None].astype(np.float32), props)


def score_test_set(trained: Trained, cases: Sequence[Case], setup: Setup) -> dict[str, dict[str, float]]:
    """Case id -> label -> Dice of the trained fold on ``cases``."""
    predictor = load_model(trained, setup)
    scores = {}
    for case in cases:
        seg = predict(predictor, case).segmentation
        scores[case.case_id] = {
            name: dice(case.labels == value, seg == value) for name, value in FOREGROUND.items()
        }
    del predictor
    return scores


def nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def mean_dice(
    scores: Mapping[str, Mapping[str, float]], label: str, ids: Sequence[str] | None = None
) -> float:
    """Mean Dice of ``label`` over the cases ``ids`` (all scored cases when None), nan left out."""
    return nanmean([s[label] for case, s in scores.items() if ids is None or case in ids])


def mean_sd(values: Sequence[float]) -> str:
    """``mean ± sd`` (sd over two or more values), nan left out."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return "n/a"
    sd = f" ± {statistics.stdev(finite):.3f}" if len(finite) > 1 else " ± -"
    return f"{statistics.fmean(finite):.3f}{sd}"


def ratio(a: float, b: float) -> str:
    """``a / b`` as ``0.97x``; ``-`` where it is undefined."""
    if math.isnan(a) or math.isnan(b) or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def load_line(when: str) -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {when} (1, 5, 15 min): {one:.2f}, {five:.2f}, {fifteen:.2f}"
