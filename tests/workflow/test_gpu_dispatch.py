"""On a GPU workstation every GPU step claims its own GPU; on a CPU machine none does."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.workflow


def _dry_run(project: Path, extra: str) -> str:
    (project / "extra.yaml").write_text(extra)
    run = subprocess.run(
        [
            str(Path(sys.executable).parent / "snakemake"),
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(project),
            "--configfile",
            str(project / "config/demo.yaml"),
            str(project / "extra.yaml"),
            "-n",
            "-p",
            "--forceall",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout


def test_gpu_steps_claim_one_of_the_listed_gpus(demo_rawdata: Path, tmp_path: Path) -> None:
    shutil.copytree(REPO / "config", tmp_path / "config")
    shutil.copytree(demo_rawdata, tmp_path / "data/rawdata/demo")
    gpu = _dry_run(tmp_path, "nnunet:\n  device: cuda\n  gpus: [0, 1]\n  folds: [0, 1, 2]\n")
    commands = [line for line in gpu.splitlines() if line.startswith("Shell command: iterseg --log ")]
    steps = {c.split()[5] for c in commands if "--gpus 0 1 --gpu-lock-dir /tmp/iterseg-gpu-locks" in c}
    assert steps == {"train", "predict", "evaluate"}
    assert sum(" train " in c for c in commands) == 6  # 3 folds x 2 iterations: none dropped
    cpu = _dry_run(tmp_path, "nnunet:\n  device: cpu\n  gpus: [0, 1]\n")
    assert "--gpus" not in cpu


def test_data_parallel_folds_claim_their_gpus_together(demo_rawdata: Path, tmp_path: Path) -> None:
    shutil.copytree(REPO / "config", tmp_path / "config")
    shutil.copytree(demo_rawdata, tmp_path / "data/rawdata/demo")
    out = _dry_run(
        tmp_path,
        "nnunet:\n  device: cuda\n  gpus: [0, 1, 2, 3]\n  gpus_per_fold: 2\n  folds: [0, 1]\n"
        # null: the trainer's own schedule (config files merge, so the demo's epochs are unset)
        "  first_iteration: {epochs: null}\n  fine_tuning: {epochs: null, initial_lr: null}\n",
    )
    commands = [line for line in out.splitlines() if line.startswith("Shell command: iterseg --log ")]
    train = [c for c in commands if c.split()[5] == "train"]
    assert len(train) == 4 and all("--gpus 0 1 2 3" in c and "--num-gpus 2" in c for c in train)
    others = [c for c in commands if c.split()[5] in ("predict", "evaluate")]
    assert others and all("--gpus 0 1 2 3" in c and "--num-gpus" not in c for c in others)
    # what SLURM is asked for: two GPUs per fold job, one per prediction/evaluation job
    asked: dict[str, set[str]] = {}
    for block in out.split("\nrule ")[1:]:
        gpu = re.search(r"\n    resources: .*\bgpu=(\d+)", block)
        asked.setdefault(block.split(":")[0], set()).add(gpu.group(1) if gpu else "0")
    assert asked["train_fold"] == {"2"} and asked["predict_inbox"] == asked["evaluate_test"] == {"1"}
    assert asked["convert_snapshot"] == asked["plan_preprocess"] == {"0"}
