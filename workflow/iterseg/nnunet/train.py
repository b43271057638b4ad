"""Train one fold of one iteration with nnU-Net; later iterations fine-tune the previous model."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from iterseg.errors import PlanTransferError, TrainingError
from iterseg.nnunet.env import configure_nnunet
from iterseg.paths import fold_dir_name, model_dir, plans_file
from iterseg.records import PlanRecord, TrainedRecord, read_record, write_json

logger = logging.getLogger(__name__)


def check_checkpoint_compatible(checkpoint: Path, plans_file: Path, configuration: str) -> None:
    """Fail before training when ``checkpoint`` was trained with another architecture.

    nnU-Net only asserts this after start-up and data loading; we compare the architecture
    recorded in the checkpoint with the one this iteration will build.
    """
    import torch

    if not checkpoint.is_file():
        raise PlanTransferError(
            f"{checkpoint}: the previous iteration's final checkpoint is missing; re-run that "
            "iteration's training first (snakemake does this when its outputs are removed)."
        )
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    saved_plans: dict[str, Any] = saved["init_args"]["plans"]
    saved_conf = saved["init_args"]["configuration"]
    plans = json.loads(plans_file.read_text())
    before = saved_plans["configurations"][saved_conf]["architecture"]
    now = plans["configurations"][configuration]["architecture"]
    if before != now or saved_conf != configuration:
        raise PlanTransferError(
            f"{checkpoint} was trained with configuration {saved_conf!r} and another network "
            f"architecture than {plans_file} ({configuration!r}); its weights cannot be loaded. "
            "Keep the nnunet settings of the first iteration, or start a new dataset."
        )
    before_channels = len(saved["init_args"]["dataset_json"]["channel_names"])
    now_channels = len(json.loads((plans_file.parent / "dataset.json").read_text())["channel_names"])
    if before_channels != now_channels:
        raise PlanTransferError(
            f"{checkpoint}: trained on {before_channels} input channel(s), this iteration has {now_channels}."
        )


def check_trainer_settings(fold: str, epochs: int | None, initial_lr: float | None) -> None:
    """Fail before nnU-Net starts when ``epochs`` or ``initial_lr`` cannot be trained with.

    Raises
    ------
    TrainingError
        When ``epochs`` is not an integer >= 1 or ``initial_lr`` is not in (0, 1).

    """
    problems = []
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        problems.append(f"epochs must be an integer >= 1, got {epochs!r}")
    if initial_lr is not None and (
        isinstance(initial_lr, bool) or not isinstance(initial_lr, int | float) or not 0 < initial_lr < 1
    ):
        problems.append(f"initial_lr must be a number between 0 and 1 (exclusive), got {initial_lr!r}")
    if problems:
        raise TrainingError(
            f"fold {fold}: " + "; ".join(problems) + ". Fix the trainer settings of this iteration "
            "in the config (or leave them out to keep the trainer's defaults)."
        )


def keep_segmentation_head(trainer: Any, checkpoint: Path) -> int:
    """Load the previous iteration's segmentation head too, when the labels are unchanged.

    nnU-Net's ``load_pretrained_weights`` skips ``.seg_layers.`` (made for transfer to a new
    task), so every fine-tuning iteration would start from a random head; with a short
    fine-tuning schedule that costs most of what the previous iteration learned. The head is
    kept only if the network's outputs (labels without ``ignore``) are the same.

    Returns
    -------
    int
        Number of tensors loaded (0 when the labels changed).

    """
    import torch
    from torch._dynamo import OptimizedModule
    from torch.nn.parallel import DistributedDataParallel

    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)

    def outputs(labels: dict[str, Any]) -> dict[str, Any]:
        return {name: value for name, value in labels.items() if name != "ignore"}

    before = outputs(saved["init_args"]["dataset_json"]["labels"])
    now = outputs(trainer.dataset_json["labels"])
    if before != now:
        logger.warning(
            "labels %s differ from the previous iteration's %s: the segmentation head starts anew",
            now,
            before,
        )
        return 0
    network = trainer.network
    if isinstance(network, DistributedDataParallel):
        network = network.module
    if isinstance(network, OptimizedModule):
        network = network._orig_mod
    state = network.state_dict()
    head = {
        key: value
        for key, value in saved["network_weights"].items()
        if ".seg_layers." in key and key in state and state[key].shape == value.shape
    }
    state.update(head)
    network.load_state_dict(state)
    logger.info("kept the previous iteration's segmentation head (%d tensors) from %s", len(head), checkpoint)
    return len(head)


ATTEMPT_FILE = "iterseg_attempt.json"
CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")


def attempt_key(
    plans_file: Path,
    configuration: str,
    trainer: str,
    pretrained: Path | None,
    epochs: int | None,
    initial_lr: float | None,
) -> str:
    """What makes two runs of a fold the same training: a checkpoint of one can continue the other.

    The plans and dataset.json (by content), the trainer and its schedule, and the weights it
    started from. Not ``splits_final.json``: nnU-Net writes it when the first fold starts, from
    the cases alone (a seeded split), so it would differ between a first and a second run.
    """
    digest = hashlib.sha256()
    for path in (plans_file, plans_file.parent / "dataset.json"):
        digest.update(path.read_bytes() if path.is_file() else b"-")
    start = "-" if pretrained is None else f"{pretrained.resolve()}:{pretrained.stat().st_mtime_ns}"
    digest.update(json.dumps([configuration, trainer, start, epochs, initial_lr]).encode())
    return digest.hexdigest()


def resumable_checkpoint(fold_dir: Path, key: str) -> Path | None:
    """The checkpoint an interrupted run of the same training left in ``fold_dir``, if any.

    A fold folder left by a different training (other plans, trainer, schedule or start
    weights) is cleared of its checkpoints instead, so that a later interruption can never
    resume from them; then the attempt is recorded for the next run.
    """
    marker = fold_dir / ATTEMPT_FILE
    previous = json.loads(marker.read_text()).get("key") if marker.is_file() else None
    if previous == key:
        for name in CHECKPOINTS[:2]:
            if (fold_dir / name).is_file():
                return fold_dir / name
    stale = [fold_dir / name for name in CHECKPOINTS if (fold_dir / name).is_file()]
    if stale:
        logger.warning(
            "%s holds checkpoints of another training (%s); removing them and starting this fold anew",
            fold_dir,
            "no record" if previous is None else "other plans, trainer, schedule or start weights",
        )
        for path in stale:
            path.unlink()
    fold_dir.mkdir(parents=True, exist_ok=True)
    write_json(marker, {"key": key}, indent=None)
    return None


def _saved_epoch(checkpoint: Path) -> int:
    import torch

    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    return int(saved["current_epoch"])


def _run_training_with_settings(
    dataset_name: str,
    configuration: str,
    fold: str,
    trainer_name: str,
    plans_identifier: str,
    pretrained: Path | None,
    device: Any,
    *,
    epochs: int | None,
    initial_lr: float | None,
    resume: bool,
) -> None:
    """nnU-Net's ``run_training`` for one device, with ``num_epochs``/``initial_lr`` set on the trainer.

    Mirrors ``nnunetv2.run.run_training.run_training`` (single device, no validation-only):
    the values are set right after the trainer is constructed, before ``initialize()`` (which
    ``maybe_load_checkpoint`` calls to load pretrained weights) builds the optimizer and the
    poly learning-rate schedule from them. ``resume`` continues from the fold's own checkpoint
    (nnU-Net's ``--c``), which already holds the fine-tuned weights.
    """
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint
    from torch.backends import cudnn

    try:
        nnunet_fold: int | str = fold if fold == "all" else int(fold)
    except ValueError as error:
        raise TrainingError(f"fold {fold!r}: a fold is 0-4 or 'all'.") from error
    nnunet_trainer = get_trainer_from_args(
        dataset_name, configuration, nnunet_fold, trainer_name, plans_identifier, False, device=device
    )
    if epochs is not None:
        nnunet_trainer.num_epochs = epochs
    if initial_lr is not None:
        nnunet_trainer.initial_lr = initial_lr
    logger.info(
        "fold %s: %d epochs, initial lr %g%s",
        fold,
        nnunet_trainer.num_epochs,
        nnunet_trainer.initial_lr,
        " (overridden)" if epochs is not None or initial_lr is not None else "",
    )
    if resume:
        maybe_load_checkpoint(nnunet_trainer, True, False, None)
    else:
        maybe_load_checkpoint(nnunet_trainer, False, False, str(pretrained) if pretrained else None)
        if pretrained is not None:
            keep_segmentation_head(nnunet_trainer, pretrained)
    if torch.cuda.is_available():
        cudnn.deterministic = False
        cudnn.benchmark = True
    nnunet_trainer.run_training()
    nnunet_trainer.perform_actual_validation(False)


def _check_data_parallel(
    fold: str, num_gpus: int, device: str, epochs: int | None, initial_lr: float | None
) -> None:
    if num_gpus > 1 and (device != "cuda" or epochs is not None or initial_lr is not None):
        raise TrainingError(
            f"fold {fold}: data-parallel training on {num_gpus} GPUs needs device cuda and the "
            "trainer's own schedule (no epochs/initial_lr override); fix nnunet.gpus_per_fold."
        )


def _prepare(
    work: Path, plan_record: Path, fold: str, device: str, threads: int, pretrained: Path | None
) -> tuple[PlanRecord, Path]:
    """Read the plan record, point nnU-Net at ``work``, check the start weights; the record and plans file."""
    record = read_record(plan_record, PlanRecord)
    configure_nnunet(work, threads=threads, device=device)
    import torch

    plans = plans_file(work, record.dataset_name, record.plans)
    _check_start(record, fold, pretrained, plans)
    if device == "cpu":
        torch.set_num_threads(max(1, threads))
    return record, plans


def _check_start(record: PlanRecord, fold: str, pretrained: Path | None, plans: Path) -> None:
    """Say where the fold starts from; fail now when the previous checkpoint cannot be loaded."""
    if pretrained is not None:
        check_checkpoint_compatible(pretrained, plans, record.configuration)
        logger.info(
            "fold %s: fine-tuning from %s with plans transferred from %s",
            fold,
            pretrained,
            record.plans_source or record.dataset_name,
        )
    else:
        logger.info(
            "fold %s: training from scratch with plans %s of %s", fold, record.plans, record.dataset_name
        )


def _resume_point(fold_dir: Path, fold: str, key: str) -> Path | None:
    resume = resumable_checkpoint(fold_dir, key)
    if resume is not None:
        logger.info(
            "fold %s: continuing the interrupted training from %s at epoch %d, as nnU-Net's --c does",
            fold,
            resume,
            _saved_epoch(resume),
        )
    return resume


def _run_nnunet(
    record: PlanRecord,
    trainer: str,
    fold: str,
    device: str,
    pretrained: Path | None,
    resume: Path | None,
    schedule: tuple[int | None, float | None],
    *,
    num_gpus: int,
) -> None:
    """nnU-Net's own ``run_training`` where it does what we need, else ours with the schedule set.

    ``schedule`` is ``(epochs, initial_lr)``, None keeping the trainer's value.
    """
    import torch
    from nnunetv2.run.run_training import run_training

    epochs, initial_lr = schedule

    if num_gpus > 1 or (epochs is None and initial_lr is None and pretrained is None):
        run_training(
            record.dataset_name,
            record.configuration,
            fold,
            trainer_class_name=trainer,
            plans_identifier=record.plans,
            pretrained_weights=str(pretrained) if pretrained and resume is None else None,
            num_gpus=num_gpus,
            continue_training=resume is not None,
            device=torch.device(device),
        )
    else:
        _run_training_with_settings(
            record.dataset_name,
            record.configuration,
            fold,
            trainer,
            record.plans,
            pretrained,
            torch.device(device),
            epochs=epochs,
            initial_lr=initial_lr,
            resume=resume is not None,
        )


def train_fold(
    work: Path,
    plan_record: Path,
    trainer: str,
    fold: str,
    device: str,
    threads: int,
    pretrained: Path | None = None,
    *,
    epochs: int | None = None,
    initial_lr: float | None = None,
    num_gpus: int = 1,
) -> TrainedRecord:
    """Train ``fold`` of the iteration in ``work``; return the fold's record (``trained/fold_N.json``).

    A run of the same training that was interrupted (a SLURM time limit, a cancelled job, a
    crash) is continued from its last checkpoint, as nnU-Net's ``--c`` does; a fold folder
    left by a different training starts anew.

    Parameters
    ----------
    work
        Iteration folder (nnU-Net roots inside).
    plan_record
        The plan step's record: dataset, plans, configuration and where the plans came from.
    trainer
        nnU-Net trainer class name (nnU-Net's own or one in ``iterseg/nnunet/trainers``).
    fold
        ``0``-``4`` or ``all``.
    device
        ``cuda``, ``cpu`` or ``mps``.
    threads
        Data-augmentation workers.
    pretrained
        The previous iteration's ``checkpoint_final.pth`` of the same fold; None trains from scratch.
    epochs
        Number of epochs instead of the trainer's ``num_epochs``; None keeps the trainer's.
    initial_lr
        Initial learning rate instead of the trainer's ``initial_lr``; None keeps the trainer's.
    num_gpus
        GPUs for data-parallel training of this one fold (nnU-Net's ``-num_gpus``, DDP);
        with more than one, the trainer's own schedule is used and the segmentation head is
        not carried over (nnU-Net's DDP workers build the trainer themselves).

    Returns
    -------
    TrainedRecord
        The resolved ``checkpoint_final.pth``, the schedule given, and the wall time in seconds.

    Raises
    ------
    TrainingError
        When ``epochs`` or ``initial_lr`` is out of range (before nnU-Net starts), or nnU-Net
        finished without a final checkpoint.

    """
    # long only for its parameter docs: the body is a list of named phases
    started = time.monotonic()
    check_trainer_settings(fold, epochs, initial_lr)
    record, plans = _prepare(work, plan_record, fold, device, threads, pretrained)
    _check_data_parallel(fold, num_gpus, device, epochs, initial_lr)
    folder = model_dir(work, record.dataset_name, trainer, record.plans, record.configuration)
    fold_dir = folder / fold_dir_name(fold)
    key = attempt_key(plans, record.configuration, trainer, pretrained, epochs, initial_lr)
    resume = _resume_point(fold_dir, fold, key)
    schedule = (epochs, initial_lr)
    _run_nnunet(record, trainer, fold, device, pretrained, resume, schedule, num_gpus=num_gpus)
    checkpoint = _final_checkpoint(fold_dir, fold, record.dataset_name)
    seconds = round(time.monotonic() - started, 1)
    return TrainedRecord(fold, trainer, checkpoint.resolve(), pretrained, epochs, initial_lr, seconds)


def _final_checkpoint(fold_dir: Path, fold: str, dataset_name: str) -> Path:
    checkpoint = fold_dir / "checkpoint_final.pth"
    if not checkpoint.is_file():
        raise TrainingError(
            f"nnU-Net finished fold {fold} of {dataset_name} without {checkpoint}; see the "
            "training log above and nnU-Net's training_log_*.txt in the fold folder."
        )
    logger.info("fold %s: final checkpoint %s", fold, checkpoint)
    return checkpoint
