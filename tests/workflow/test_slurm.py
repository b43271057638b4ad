"""The demo's training on a real SLURM without accounting (squeue status path), through our profile.

Localhost daemons, fake GPUs (``tests/slurm_cluster.py``). Every snakemake call runs under
``timeout -s KILL``: a hang fails instead of stalling CI.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import slurm_cluster
from conftest import REPO
from slurm_project import (
    BIN,
    FIRST,
    client_env,
    copy_project,
    scontrol_jobs,
    set_folds,
    site_profile,
    snakemake_command,
    train_on_slurm,
)

pytestmark = [pytest.mark.workflow, pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[slurm_cluster.LocalSlurm]:
    why = slurm_cluster.available()
    if why:
        pytest.fail(f"a local SLURM is part of the test set-up: {why}")
    running = slurm_cluster.start(tmp_path_factory.mktemp("slurm"))
    yield running
    running.stop()


def test_each_fold_is_one_gpu_job_on_slurm(
    cluster: slurm_cluster.LocalSlurm, planned_demo: Path, tmp_path: Path
) -> None:
    project = copy_project(planned_demo, tmp_path / "project")
    profile = site_profile(project, "squeue")  # the shipped status command: no accounting needed
    env = client_env(cluster.env)
    assert subprocess.run(["sacct"], env=env, capture_output=True, check=False).returncode != 0
    targets = (f"{FIRST}/trained/fold_0.json", f"{FIRST}/trained/fold_1.json")
    run = train_on_slurm(project, env, profile, *targets, threads=1)  # the two folds side by side
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-5000:]
    jobs = scontrol_jobs(cluster.env)
    train_jobs = [j for j in jobs if j.get("Comment", "").startswith("rule_train_fold")]
    assert len(train_jobs) == 2, jobs
    assert all(j["JobState"] == "COMPLETED" and j.get("TresPerJob") == "gres:gpu:1" for j in train_jobs), jobs
    print("\n".join(f"{j['JobId']} {j['Comment']} {j['JobState']} {j['TresPerJob']}" for j in jobs))
    seen = set()
    for fold in ("0", "1"):
        record = json.loads((project / FIRST / f"trained/fold_{fold}.json").read_text())
        assert Path(record["checkpoint"]).is_file()
        log = (project / f"data/results/demo/2026-01-15/logs/train_fold_{fold}.log").read_text()
        match = re.search(rf"fold {fold}: SLURM job (\d+), CUDA_VISIBLE_DEVICES=(\d)", log)
        assert match, log[-2000:]
        seen.add(match.group(1))
    assert seen == {j["JobId"] for j in train_jobs}  # one SLURM job per fold


def test_a_failed_fold_job_names_its_slurm_log_and_the_rerun_continues_it(
    cluster: slurm_cluster.LocalSlurm, planned_demo: Path, tmp_path: Path
) -> None:
    project = copy_project(planned_demo, tmp_path / "project")
    # nnU-Net saves checkpoint_latest after each epoch but the last: two epochs leave one to
    # resume from, and one epoch to continue
    set_folds(project, epochs=2)
    profile = site_profile(project, "squeue")
    env = client_env(cluster.env)
    target = f"{FIRST}/trained/fold_0.json"
    command = snakemake_command(
        project, target, "--workflow-profile", str(profile),
        "--set-resources", "train_fold:gpu=1", "train_fold:mem_mb=5000", timeout=900,
    )  # fmt: skip
    output = tmp_path / "first.out"
    with output.open("w") as out:
        controller = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=project)
        # the demo trainer saves a checkpoint every epoch: cancel the job once epoch 0's is there
        deadline = time.monotonic() + 600
        while not list((project / FIRST / "nnUNet_results").glob("*/*/fold_0/checkpoint_latest.pth")):
            assert time.monotonic() < deadline and controller.poll() is None, output.read_text()[-3000:]
            time.sleep(0.5)
        job = next(
            j
            for j in scontrol_jobs(cluster.env)
            if j.get("Comment", "").startswith("rule_train_fold") and j["JobState"] == "RUNNING"
        )
        subprocess.run(["scancel", job["JobId"]], env=env, check=True)
        assert controller.wait(timeout=600) != 0
    text = output.read_text()
    assert f"SLURM-job '{job['JobId']}' failed" in text, text[-3000:]
    slurm_log = next((project / "data/results/.slurm_logs").rglob(f"{job['JobId']}.log"))
    assert str(slurm_log.relative_to(project)) in text  # the error names the job's SLURM log
    rule_log = project / "data/results/demo/2026-01-15/logs/train_fold_0.log"
    assert "fold 0: stopped by SIGTERM" in rule_log.read_text(), rule_log.read_text()[-3000:]
    assert not (project / target).exists()

    rerun = train_on_slurm(project, env, profile, target)
    assert rerun.returncode == 0, rerun.stdout[-5000:] + rerun.stderr[-5000:]
    log = rule_log.read_text()
    resumed = re.search(
        r"continuing the interrupted training from \S+/checkpoint_latest\.pth at epoch (\d)", log
    )
    assert resumed and int(resumed.group(1)) >= 1, log[-3000:]
    assert f": Epoch {resumed.group(1)}\n" in log and ": Epoch 0\n" not in log  # nnU-Net's own lines
    assert "checkpoints of another training" not in log
    assert Path(json.loads((project / target).read_text())["checkpoint"]).is_file()


def test_iterseg_submit_runs_snakemake_as_one_slurm_job(
    cluster: slurm_cluster.LocalSlurm, demo_rawdata: Path, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    shutil.copytree(REPO / "config", project / "config")
    shutil.copytree(demo_rawdata, project / "data/rawdata/demo")
    env = client_env(cluster.env)

    def submit(target: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "timeout", "-s", "KILL", "600",
                str(BIN / "iterseg"), "submit", "--partition", "debug", "--wait",
                "--log-dir", str(tmp_path / "submitit"),
                "--", "--snakefile", str(REPO / "Snakefile"), "--directory", str(project), target,
                "--cores", "1", "--configfile", str(project / "config/demo.yaml"),
            ],
            capture_output=True, text=True, env=env, check=False, cwd=project,
        )  # fmt: skip

    run = submit(f"{FIRST}/converted/cases.json")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    job_id = re.search(r"SLURM job (\d+); log (\S+)", run.stdout)
    assert job_id and Path(job_id.group(2)).is_file()
    assert (project / FIRST / "converted/cases.json").is_file()
    state = next(j for j in scontrol_jobs(cluster.env) if j["JobId"] == job_id.group(1))
    assert (state["JobName"], state["JobState"], state["Partition"]) == ("iterseg", "COMPLETED", "debug")
    failed = submit("data/procdata/demo/no-such-target.json")
    assert failed.returncode == 2 and "(snakemake) failed; see" in failed.stderr
    # one error line, no traceback (submitit also warns that sacct is unavailable: no accounting)
    assert [line for line in failed.stderr.splitlines() if " ERROR " in line] == [
        failed.stderr.strip().splitlines()[-1]
    ]
    assert "Traceback" not in failed.stderr
