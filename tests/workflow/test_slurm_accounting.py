"""On a SLURM with accounting (slurmdbd + MariaDB): sacct status, and folds through submitit.

Localhost daemons, fake GPUs (``tests/slurm_cluster.py``); every call that can wait on the
cluster has a hard timeout.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import slurm_cluster
from slurm_project import BIN, FIRST, client_env, copy_project, scontrol_jobs, site_profile, train_on_slurm

pytestmark = [pytest.mark.workflow, pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[slurm_cluster.LocalSlurm]:
    why = slurm_cluster.available(accounting=True)
    if why:
        pytest.fail(f"a local SLURM with accounting is part of the test set-up: {why}")
    running = slurm_cluster.start(tmp_path_factory.mktemp("slurm"), accounting=True)
    yield running
    running.stop()


def _sacct(env: dict[str, str], *job_ids: str) -> list[list[str]]:
    """The jobs' rows once SLURM has finished them (a job's result can come back a moment before)."""
    deadline = time.monotonic() + 60
    while True:
        rows = _sacct_rows(env, *job_ids)
        if all(r[4] not in ("PENDING", "RUNNING", "COMPLETING") for r in rows) or time.monotonic() > deadline:
            return rows
        time.sleep(1)


def _sacct_rows(env: dict[str, str], *job_ids: str) -> list[list[str]]:
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", ",".join(job_ids),
         "-o", "JobID,JobName,Partition,AllocTRES,State,Elapsed"],
        capture_output=True, text=True, env=env, check=True, timeout=60,
    ).stdout  # fmt: skip
    return [line.split("|") for line in out.splitlines() if line.strip()]


def test_each_fold_is_one_gpu_job_with_sacct_status(
    cluster: slurm_cluster.LocalSlurm, planned_demo: Path, tmp_path: Path
) -> None:
    project = copy_project(planned_demo, tmp_path / "project")
    profile = site_profile(project, "sacct")  # a site with accounting may switch to sacct
    env = client_env(cluster.env)
    targets = (f"{FIRST}/trained/fold_0.json", f"{FIRST}/trained/fold_1.json")
    run = train_on_slurm(project, env, profile, *targets, threads=1)  # the two folds side by side
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-5000:]
    train_jobs = [
        j["JobId"] for j in scontrol_jobs(cluster.env) if j.get("Comment", "").startswith("rule_train_fold")
    ]
    rows = _sacct(env, *train_jobs)
    print("\n".join("  ".join(r) for r in rows))  # the job list, for the record
    assert len(rows) == 2 and all(r[4] == "COMPLETED" and "gres/gpu=1" in r[3] for r in rows), rows
    for fold in ("0", "1"):
        assert Path(
            json.loads((project / FIRST / f"trained/fold_{fold}.json").read_text())["checkpoint"]
        ).is_file()


def test_folds_trained_through_submitit_without_snakemake(
    cluster: slurm_cluster.LocalSlurm, planned_demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from iterseg.cluster.slurm import FoldTraining, SubmitError, submit_folds, wait_for_folds

    project = copy_project(planned_demo, tmp_path / "project")
    for key, value in client_env(cluster.env).items():
        monkeypatch.setenv(key, value)  # submitit calls sbatch/sacct from this process
    work = project / FIRST

    def fold(name: str, epochs: int) -> FoldTraining:
        return FoldTraining(
            work, work / "planned.json", "nnUNetTrainerIterSegDemo", name, "cpu", 1, epochs=epochs
        )

    jobs = submit_folds([fold("0", 1), fold("1", 1)], tmp_path / "submitit", partition="debug", mem_gb=5)
    checkpoints = wait_for_folds(jobs, timeout_s=600, poll_s=1)
    assert set(checkpoints) == {"0", "1"} and all(c.is_file() for c in checkpoints.values())
    for job in jobs:
        assert re.search(r"fold \d: SLURM job \d+, CUDA_VISIBLE_DEVICES=\d", job.log.read_text())
    rows = _sacct(client_env(cluster.env), *(str(j.job.job_id) for j in jobs))
    print("\n".join("  ".join(r) for r in rows))
    assert [(r[1], r[4]) for r in rows] == [("iterseg-fold", "COMPLETED")] * 2 and all(
        "gres/gpu=1" in r[3] for r in rows
    )

    # two folds: the inbox worklist ranks by how much the fold models disagree
    results = tmp_path / "results"
    iterseg = str(BIN / "iterseg")
    subprocess.run(
        [
            iterseg, "predict", "--work", str(work), "--plan-record", str(work / "planned.json"),
            "--trainer", "nnUNetTrainerIterSegDemo", "--folds", "0", "1", "--device", "cpu",
            "--inbox", str(project / "data/rawdata/demo/inbox"), "--out", str(results), "--description", "t",
            "--output", str(tmp_path / "predicted.json"),  # the step's record; predictions.json is published
        ],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    predictions = json.loads((results / "predictions.json").read_text())
    assert len(predictions) == 3 and all(0.0 <= p["fold_dice"]["liver"] <= 1.0 for p in predictions)
    subprocess.run(
        [iterseg, "worklist", "--predictions", str(results / "predictions.json"),
         "--assembled", str(work / "assembled.json"), "--out", str(results / "worklist.csv")],
        check=True, capture_output=True, timeout=120, cwd=project,  # record paths are relative to it
    )  # fmt: skip
    rows = list(csv.DictReader((results / "worklist.csv").open()))
    assert {r["signal"] for r in rows} == {"folds"} and all(r["lowest_fold_dice_label"] for r in rows)

    broken = submit_folds([fold("2", 0)], tmp_path / "submitit", partition="debug", mem_gb=5)
    with pytest.raises(SubmitError) as info:
        wait_for_folds(broken, timeout_s=300, poll_s=1)
    message = str(info.value)
    assert f"fold 2 (job {broken[0].job.job_id}: " in message and f"; see {broken[0].log}" in message
    assert "epochs must be an integer >= 1" in message
    assert "epochs must be an integer >= 1" in broken[0].log.read_text()
