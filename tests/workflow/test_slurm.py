"""The demo's training on a real SLURM (localhost daemons, fake GPUs) through our profile."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import slurm_cluster
from conftest import REPO

pytestmark = [pytest.mark.workflow, pytest.mark.slurm, pytest.mark.slow]

FIRST = "data/procdata/demo/2026-01-15__demo"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[slurm_cluster.LocalSlurm]:
    why = slurm_cluster.available()
    if why:
        pytest.fail(f"a local SLURM is part of the test set-up: {why}")
    running = slurm_cluster.start(tmp_path_factory.mktemp("slurm"))
    yield running
    running.stop()


def _snakemake(
    project: Path, env: dict[str, str], *args: str, timeout: int
) -> subprocess.CompletedProcess[str]:
    command = [
        # the plugin can ignore SIGTERM: a hang must fail, not stall CI
        "timeout", "-s", "KILL", str(timeout),
        str(Path(sys.executable).parent / "snakemake"),
        "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(project),
        *args,  # targets first: options taking several values would swallow them
        "--configfile", str(project / "config/demo.yaml"), str(project / "config/two_folds.yaml"),
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, env=env, check=False, cwd=project)


def test_each_fold_is_one_gpu_job_on_slurm(
    cluster: slurm_cluster.LocalSlurm, demo_rawdata: Path, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    shutil.copytree(REPO / "config", project / "config")
    shutil.copytree(demo_rawdata, project / "data/rawdata/demo")
    (project / "config/two_folds.yaml").write_text("nnunet:\n  folds: [0, 1]\n")
    # what a site does: copy the profile and edit its two SITE lines
    profile = project / "profiles/slurm"
    shutil.copytree(REPO / "workflow/profiles/slurm", profile)
    text = (profile / "config.yaml").read_text()
    text = text.replace('slurm_partition: "gpu"', 'slurm_partition: "debug"')
    text = re.sub(r'\n  slurm_account: "my_account".*', "", text)
    (profile / "config.yaml").write_text(text)
    env = {**cluster.env, "PATH": f"{Path(sys.executable).parent}:{cluster.env.get('PATH', '')}"}
    # conversion and planning on the login node; training on the cluster
    local = _snakemake(project, env, f"{FIRST}/planned.json", "--cores", "2", timeout=600)
    assert local.returncode == 0, local.stdout[-3000:] + local.stderr[-3000:]
    run = _snakemake(
        project,
        env,
        f"{FIRST}/trained/fold_0.json", f"{FIRST}/trained/fold_1.json",
        "--workflow-profile", str(profile),
        "--set-resources", "train_fold:gpu=1", "train_fold:mem_mb=5000",  # real GPUs: gpu=1 from device cuda
        timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-5000:]
    listing = subprocess.run(
        ["scontrol", "show", "job", "-o"], capture_output=True, text=True, env=cluster.env, check=True
    ).stdout.splitlines()
    jobs = [dict(f.split("=", 1) for f in line.split() if "=" in f) for line in listing]
    train_jobs = [j for j in jobs if j.get("Comment", "").startswith("rule_train_fold")]
    assert len(train_jobs) == 2, listing
    assert all(j["JobState"] == "COMPLETED" and j.get("TresPerJob") == "gres:gpu:1" for j in train_jobs), (
        listing
    )
    print("\n".join(listing))  # the job list, for the record
    seen = set()
    for fold in ("0", "1"):
        record = json.loads((project / FIRST / f"trained/fold_{fold}.json").read_text())
        assert Path(record["checkpoint"]).is_file()
        log = (project / f"data/results/demo/2026-01-15/logs/train_fold_{fold}.log").read_text()
        match = re.search(rf"fold {fold}: SLURM job (\d+), CUDA_VISIBLE_DEVICES=(\d)", log)
        assert match, log[-2000:]
        seen.add(match.group(1))
    assert len(seen) == 2  # one SLURM job per fold


def test_iterseg_submit_runs_snakemake_as_one_slurm_job(
    cluster: slurm_cluster.LocalSlurm, demo_rawdata: Path, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    shutil.copytree(REPO / "config", project / "config")
    shutil.copytree(demo_rawdata, project / "data/rawdata/demo")
    env = {**cluster.env, "PATH": f"{Path(sys.executable).parent}:{cluster.env.get('PATH', '')}"}
    iterseg = str(Path(sys.executable).parent / "iterseg")

    def submit(target: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "timeout", "-s", "KILL", "600",
                iterseg, "submit", "--partition", "debug", "--wait", "--log-dir", str(tmp_path / "submitit"),
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
    state = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id.group(1)],
        capture_output=True,
        text=True,
        env=cluster.env,
        check=True,
    ).stdout
    assert "JobName=iterseg" in state and "JobState=COMPLETED" in state and "Partition=debug" in state
    failed = submit("data/procdata/demo/no-such-target.json")
    assert failed.returncode == 2 and "(snakemake) failed; see" in failed.stderr
    # one error line, no traceback (submitit also warns that sacct is unavailable: no accounting)
    assert [line for line in failed.stderr.splitlines() if " ERROR " in line] == [
        failed.stderr.strip().splitlines()[-1]
    ]
    assert "Traceback" not in failed.stderr
