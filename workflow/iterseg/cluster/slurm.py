"""SLURM through submitit: the snakemake controller as one job, or folds trained without Snakemake.

``iterseg submit`` runs the whole loop as one SLURM job for users who prefer one command from
a login node: that job runs snakemake, which (with ``--workflow-profile
workflow/profiles/slurm``) submits the fold jobs itself. ``submit_folds``/``wait_for_folds``
train folds from Python, one job per fold, for scripts and notebooks that do not use Snakemake.
submitit's ``AutoExecutor`` silently picks SLURM whenever its binaries exist, so the executor
is always named explicitly.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from iterseg.cluster.gpus import DEFAULT_LOCK_DIR
from iterseg.errors import IterSegError

logger = logging.getLogger(__name__)


class SubmitError(IterSegError):
    """The controller job could not be submitted, or it failed."""


def _slurm_parameters(
    *,
    minutes: int,
    mem_gb: int,
    cpus: int,
    job_name: str,
    partition: str | None,
    account: str | None,
    gres: str | None = None,
) -> dict[str, object]:
    """The sbatch settings for submitit's ``SlurmExecutor`` (partition/account only when given)."""
    params: dict[str, object] = {
        "time": minutes,
        "mem": f"{mem_gb}G",
        "cpus_per_task": cpus,
        "job_name": job_name,
    }
    if gres:
        params["gres"] = gres
    if partition:
        params["partition"] = partition
    if account:
        params["account"] = account
    return params


@dataclass(frozen=True)
class ControllerJob:
    """A submitted controller job."""

    job_id: str
    log: Path


def submit_controller(
    snakemake_args: list[str],
    log_dir: Path,
    partition: str | None,
    account: str | None = None,
    minutes: int = 2880,
    mem_gb: int = 4,
    cpus: int = 1,
    wait: bool = False,
) -> ControllerJob:
    """Submit ``snakemake <snakemake_args>`` as one SLURM job, from the current directory.

    Parameters
    ----------
    snakemake_args
        Arguments for snakemake (config files, profile, targets).
    log_dir
        Where submitit keeps the job's script, stdout/stderr and result.
    partition, account
        SLURM partition and account (None: the cluster's default / none).
    minutes, mem_gb, cpus
        Resources of the controller itself (it mostly waits for its jobs).
    wait
        Block until the job ends; raise if snakemake failed.

    Raises
    ------
    SubmitError
        If sbatch refuses the job, or (with ``wait``) snakemake failed; names the log file.

    """
    import submitit
    from submitit.helpers import CommandFunction

    executor = submitit.SlurmExecutor(folder=log_dir)  # explicit: never a silent local fallback
    executor.update_parameters(
        **_slurm_parameters(
            minutes=minutes,
            mem_gb=mem_gb,
            cpus=cpus,
            job_name="iterseg",
            partition=partition,
            account=account,
        )
    )
    command = [str(Path(sys.executable).parent / "snakemake"), *snakemake_args]
    try:
        job = executor.submit(CommandFunction(command, cwd=str(Path.cwd()), verbose=True))
    except Exception as exc:  # submitit raises plain errors carrying sbatch's message
        raise SubmitError(f"sbatch refused the controller job: {exc}") from exc
    log = Path(job.paths.stdout)
    logger.info("submitted SLURM job %s: %s (log %s)", job.job_id, " ".join(command), log)
    if wait:
        try:
            job.result()
        except Exception as exc:
            raise SubmitError(
                f"SLURM job {job.job_id} (snakemake) failed; see {log} and {job.paths.stderr}"
            ) from exc
    return ControllerJob(str(job.job_id), log)


@dataclass(frozen=True)
class FoldTraining:
    """One fold to train: what ``iterseg train`` takes, as a value submitit can pickle.

    Parameters
    ----------
    work, plan_record
        The iteration folder and its plan record (``planned.json``).
    trainer, fold, device, threads
        nnU-Net trainer class, fold (``0``-``4`` or ``all``), device and data-loading threads.
    pretrained
        The previous iteration's ``checkpoint_final.pth`` of this fold (fine-tuning), or None.
    epochs, initial_lr
        Schedule overrides, as in the config's ``first_iteration``/``fine_tuning``.
    num_gpus
        GPUs for this fold (above 1: nnU-Net's data-parallel training).

    """

    work: Path
    plan_record: Path
    trainer: str
    fold: str
    device: str = "cuda"
    threads: int = 2
    pretrained: Path | None = None
    epochs: int | None = None
    initial_lr: float | None = None
    num_gpus: int = 1


@dataclass(frozen=True)
class FoldJob:
    """A submitted fold: its job and where its log is."""

    fold: str
    job: Any
    log: Path


def _train_in_job(training: FoldTraining, gpus: tuple[str, ...], lock_dir: Path) -> str:
    """The body of one fold job (runs on the compute node, or locally)."""
    import os
    from contextlib import nullcontext

    from iterseg.cluster.gpus import claim_gpu
    from iterseg.nnunet.train import train_fold

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", force=True
    )
    # SLURM pins the job's GPUs itself; a workstation shares them through the locks
    claim = claim_gpu(gpus, lock_dir, count=training.num_gpus) if gpus else nullcontext()
    with claim:
        logger.info(
            "fold %s: SLURM job %s, CUDA_VISIBLE_DEVICES=%s",
            training.fold,
            os.environ.get("SLURM_JOB_ID", "-"),
            os.environ.get("CUDA_VISIBLE_DEVICES", "-"),
        )
        trained = train_fold(
            training.work.resolve(),
            training.plan_record.resolve(),
            training.trainer,
            training.fold,
            training.device,
            training.threads,
            training.pretrained,
            epochs=training.epochs,
            initial_lr=training.initial_lr,
            num_gpus=training.num_gpus,
        )
    return str(trained.checkpoint)


def _fold_executor(
    where: str, log_dir: Path, slurm_params: dict[str, object], minutes: int, local_gpus: Sequence[str]
) -> tuple[Any, tuple[str, ...]]:
    """The submitit executor of the fold jobs, and the GPUs the jobs share through locks (none on SLURM)."""
    import submitit

    if where == "slurm":
        executor: Any = submitit.SlurmExecutor(folder=log_dir)
        executor.update_parameters(**slurm_params)
        return executor, ()  # SLURM sets CUDA_VISIBLE_DEVICES per job
    executor = submitit.LocalExecutor(folder=log_dir)
    executor.update_parameters(timeout_min=minutes)
    return executor, tuple(local_gpus)


def submit_folds(
    trainings: Sequence[FoldTraining],
    log_dir: Path,
    *,
    where: Literal["slurm", "local"] = "slurm",
    partition: str | None = None,
    account: str | None = None,
    gpus_per_fold: int = 1,
    minutes: int = 2880,
    mem_gb: int = 32,
    local_gpus: Sequence[str] = (),
    gpu_lock_dir: Path = DEFAULT_LOCK_DIR,
) -> list[FoldJob]:
    """Train folds through submitit, outside Snakemake: one job per fold.

    Parameters
    ----------
    trainings
        The folds to train (see :class:`FoldTraining`).
    log_dir
        Where submitit keeps each job's script, log and result.
    where
        ``slurm`` (``SlurmExecutor``; each job asks for ``gpus_per_fold`` GPUs as GRES) or
        ``local`` (``LocalExecutor`` on this machine; with ``local_gpus`` each job claims its
        GPUs through the same locks as the workflow). Named explicitly: submitit's
        ``AutoExecutor`` would silently pick SLURM whenever its commands are installed.
    partition, account
        SLURM partition and account (None: the cluster's default / none).
    gpus_per_fold, minutes, mem_gb
        Resources of each job (``gpus_per_fold`` 0: a CPU job).
    local_gpus, gpu_lock_dir
        Workstation GPUs to share among the local jobs, and the folder of their locks.

    Returns
    -------
    list of FoldJob
        One per fold, in the order given; pass them to :func:`wait_for_folds`.

    Raises
    ------
    SubmitError
        If the scheduler refuses a job.

    """
    # long only for its parameter docs: the body is executor set-up and one submit per fold
    slurm_params = _slurm_parameters(  # used by the SLURM executor only
        minutes=minutes,
        mem_gb=mem_gb,
        cpus=max(t.threads for t in trainings) if trainings else 1,
        job_name="iterseg-fold",
        partition=partition,
        account=account,
        gres=f"gpu:{gpus_per_fold}" if gpus_per_fold else None,
    )
    executor, gpus = _fold_executor(where, log_dir, slurm_params, minutes, local_gpus)
    jobs = []
    for training in trainings:
        try:
            job = executor.submit(_train_in_job, training, gpus, gpu_lock_dir)
        except Exception as exc:  # submitit raises plain errors carrying sbatch's message
            raise SubmitError(f"fold {training.fold}: the job was refused: {exc}") from exc
        logger.info("fold %s: job %s (log %s)", training.fold, job.job_id, job.paths.stderr)
        jobs.append(FoldJob(training.fold, job, Path(job.paths.stderr)))
    return jobs


def _reason(exc: Exception) -> str:
    """The last line of the job's traceback that submitit's error carries, else of the error."""
    text = str(exc)
    parts = text.split("----------------------")
    trace = parts[1] if len(parts) >= 3 else text  # submitit: header, trace, footer with the log paths
    lines = [line.strip() for line in trace.splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(exc).__name__


def wait_for_folds(
    jobs: Sequence[FoldJob], timeout_s: float | None = None, poll_s: float = 10.0
) -> dict[str, Path]:
    """Wait for every fold job; return each fold's ``checkpoint_final.pth``.

    Parameters
    ----------
    jobs
        From :func:`submit_folds`.
    timeout_s
        Give up waiting after this many seconds (the jobs keep running); None waits as long
        as they run.
    poll_s
        How often to ask the scheduler.

    Raises
    ------
    SubmitError
        Naming every fold that failed, its job and its log (submitting the same folds again
        continues each from its last checkpoint); or the folds still running at the timeout.

    """
    import time

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while deadline is not None and not all(j.job.done() for j in jobs):
        if time.monotonic() > deadline:
            running = [f"fold {j.fold} (job {j.job.job_id})" for j in jobs if not j.job.done()]
            raise SubmitError(f"still running after {timeout_s:.0f} s: {', '.join(running)}")
        time.sleep(poll_s)
    done: dict[str, Path] = {}
    failed = []
    for fold_job in jobs:
        try:
            done[fold_job.fold] = Path(fold_job.job.result())
        except Exception as exc:
            logger.debug("fold %s failed: %s", fold_job.fold, exc)
            failed.append(
                f"fold {fold_job.fold} (job {fold_job.job.job_id}: {_reason(exc)}); see {fold_job.log}"
            )
    if failed:
        raise SubmitError(
            "fold training failed: "
            + "; ".join(failed)
            + ". Submit the same folds again to continue each from its last checkpoint."
        )
    return done
