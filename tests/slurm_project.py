"""The demo project as the SLURM tests use it: converted and planned once, copied per test."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO

FIRST = "data/procdata/demo/2026-01-15__demo"
BIN = Path(sys.executable).parent


def snakemake(
    project: Path, env: dict[str, str], *args: str, timeout: int
) -> subprocess.CompletedProcess[str]:
    """snakemake in ``project`` under a hard timeout: the SLURM plugin can ignore SIGTERM."""
    return subprocess.run(
        snakemake_command(project, *args, timeout=timeout),
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=project,
    )


def snakemake_command(project: Path, *args: str, timeout: int) -> list[str]:
    return [
        "timeout", "-s", "KILL", str(timeout),
        str(BIN / "snakemake"),
        "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(project),
        *args,  # targets first: options taking several values would swallow them
        "--configfile", str(project / "config/demo.yaml"), str(project / "config/folds.yaml"),
    ]  # fmt: skip


def client_env(cluster_env: dict[str, str]) -> dict[str, str]:
    """The cluster's client environment with this venv first on PATH (as an activated venv)."""
    return {**cluster_env, "PATH": f"{BIN}:{cluster_env.get('PATH', '')}"}


def set_folds(project: Path, epochs: int) -> None:
    """Two folds, each trained for ``epochs`` (the demo trains 3): ``config/folds.yaml``.

    Only the training rule reads the schedule, so a planned project is not re-planned.
    """
    (project / "config/folds.yaml").write_text(
        f"nnunet:\n  folds: [0, 1]\n  first_iteration:\n    epochs: {epochs}\n"
    )


def planned_project(root: Path, demo_rawdata: Path, env: dict[str, str]) -> Path:
    """The demo converted and planned on the login node (no SLURM involved), two folds.

    One epoch per fold: what the cluster tests check of a fold (one job, its GPU, its status,
    its final checkpoint) needs no more; a test that interrupts a fold sets more itself.
    """
    project = root / "project"
    shutil.copytree(REPO / "config", project / "config")
    shutil.copytree(demo_rawdata, project / "data/rawdata/demo")
    set_folds(project, epochs=1)
    run = snakemake(project, env, f"{FIRST}/planned.json", "--cores", "2", timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return project


def copy_project(planned: Path, to: Path) -> Path:
    """A test's own copy (snakemake's metadata and file times kept: nothing is re-planned)."""
    shutil.copytree(planned, to, symlinks=True)
    return to


# The plugin polls first after this many seconds, then 10 s later each time no job has ended,
# and a finished run waits out the current pause: the shipped 10 s suits hour-long jobs; the
# tests' jobs take under a minute, so their copy starts at 1 s (squeue/sacct as shipped).
FIRST_STATUS_CHECK = "slurm-init-seconds-before-status-checks: "


def site_profile(project: Path, status_command: str) -> Path:
    """What a site does: copy the profile and edit its two SITE lines (here: no account).

    Also polls sooner (``FIRST_STATUS_CHECK``), which only shortens the waits.
    """
    profile = project / "profiles/slurm"
    shutil.copytree(REPO / "workflow/profiles/slurm", profile)
    text = (profile / "config.yaml").read_text()
    text = text.replace('slurm_partition: "gpu"', 'slurm_partition: "debug"')
    text = re.sub(r'\n  slurm_account: "my_account".*', "", text)
    text = text.replace("slurm-status-command: squeue", f"slurm-status-command: {status_command}")
    text, polls = re.subn(rf"\n{FIRST_STATUS_CHECK}\d+\n", f"\n{FIRST_STATUS_CHECK}1\n", text)
    assert polls == 1, f"{profile / 'config.yaml'} no longer sets {FIRST_STATUS_CHECK.strip()}"
    (profile / "config.yaml").write_text(text)
    return profile


def train_on_slurm(
    project: Path,
    env: dict[str, str],
    profile: Path,
    *targets: str,
    timeout: int = 900,
    threads: int | None = None,
) -> subprocess.CompletedProcess[str]:
    """The fold jobs through the profile; fake GPUs, so the model itself trains on the CPU.

    ``threads``: each fold job's CPUs (None: the rule's 2). With 1, two folds run side by
    side on a two-core node, each on its own fake GPU, instead of one after the other.
    """
    return snakemake(
        project,
        env,
        *targets,
        "--workflow-profile", str(profile),
        # real GPUs: gpu=1 comes from device cuda; the fake ones need it asked for
        "--set-resources", "train_fold:gpu=1", "train_fold:mem_mb=5000",
        *(() if threads is None else ("--set-threads", f"train_fold={threads}")),
        timeout=timeout,
    )  # fmt: skip


def scontrol_jobs(env: dict[str, str]) -> list[dict[str, str]]:
    """Every job slurmctld still knows, as ``scontrol show job -o`` fields."""
    listing = subprocess.run(
        ["scontrol", "show", "job", "-o"], capture_output=True, text=True, env=env, check=True
    ).stdout.splitlines()
    return [dict(f.split("=", 1) for f in line.split() if "=" in f) for line in listing if line.strip()]
