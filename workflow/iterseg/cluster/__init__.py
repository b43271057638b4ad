"""Where training runs: one GPU per job on a workstation, SLURM jobs through submitit.

Modules
-------
gpus   one GPU per job, claimed with a file lock
slurm  the snakemake controller as one SLURM job, or folds without snakemake (``iterseg submit``)
"""

__all__ = [
    "gpus",
    "slurm",
]
