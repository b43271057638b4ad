"""``iterseg submit``: the whole loop as one SLURM job (the snakemake controller), via submitit.

For users who prefer one command from a login node: the controller job runs snakemake, which
(with ``--workflow-profile workflow/profiles/slurm``) submits the fold jobs itself. submitit's
``AutoExecutor`` silently picks SLURM whenever its binaries exist, so the SLURM executor is
named explicitly.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from iterseg.errors import IterSegError

logger = logging.getLogger(__name__)


class SubmitError(IterSegError):
    """The controller job could not be submitted, or it failed."""


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
    params: dict[str, object] = {
        "time": minutes,
        "mem": f"{mem_gb}G",
        "cpus_per_task": cpus,
        "job_name": "iterseg",
    }
    if partition:
        params["partition"] = partition
    if account:
        params["account"] = account
    executor.update_parameters(**params)
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
