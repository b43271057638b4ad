"""A step killed however it dies (``kill -9``, SLURM's SIGTERM) leaves no process of ours behind.

Real ``iterseg train`` and ``iterseg convert --jobs 2`` runs, each in its own session: once the
step's workers exist the main process is killed, and nothing of that session may remain.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPO
from process_table import children, describe, in_session, kill_session, wait_session_empty
from slurm_project import BIN, FIRST, copy_project

pytestmark = [pytest.mark.workflow, pytest.mark.slow]


def start(command: list[str], cwd: Path, output: Path) -> subprocess.Popen[bytes]:
    """``command`` as a job would run it, in a new session (whose id is its pid)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}  # iterseg sets them
    with output.open("w") as out:
        return subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_for(ready: Callable[[], bool], step: subprocess.Popen[bytes], output: Path, what: str) -> None:
    deadline = time.monotonic() + 180
    while not ready():
        assert step.poll() is None, f"the step ended before {what}:\n{output.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} within 180 s:\n{output.read_text()[-3000:]}"
        time.sleep(0.02)


def stop(step: subprocess.Popen[bytes], signum: signal.Signals) -> list[int]:
    """Send ``signum`` to the step's main process only; what is left of its session after 10 s."""
    os.kill(step.pid, signum)
    step.wait(timeout=60)
    return wait_session_empty(step.pid, 10.0)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_training_fold_leaves_no_data_loader_workers(
    planned_demo: Path, tmp_path: Path, signum: signal.Signals
) -> None:
    project = copy_project(planned_demo, tmp_path / "project")
    work = project / FIRST
    log = tmp_path / "train_fold_0.log"
    output = tmp_path / "train.out"
    # the arguments of workflow/rules/train.smk
    command = [
        str(BIN / "iterseg"), "--log", str(log), "train", "--work", str(work),
        "--plan-record", str(work / "planned.json"), "--trainer", "nnUNetTrainerIterSegDemo",
        "--fold", "0", "--device", "cpu", "--threads", "2", "--output", str(work / "trained/fold_0.json"),
    ]  # fmt: skip
    step = start(command, project, output)
    try:
        # --threads 2: two training and one validation augmenter workers, forked by nnU-Net
        wait_for(lambda: len(children(step.pid)) >= 3, step, log, "data-loader workers")
        workers = children(step.pid)
        left = stop(step, signum)
        assert left == [], f"still running after the fold was killed:\n{describe(left)}"
        assert step.returncode == -signum
        if signum == signal.SIGTERM:  # SLURM's time limit or scancel: still said in the log
            assert "fold 0: stopped by SIGTERM" in log.read_text(), log.read_text()[-3000:]
        assert not (work / "trained/fold_0.json").exists()
        assert len(workers) >= 3
    finally:
        step.kill()
        step.wait()
        kill_session(step.pid)


def test_a_killed_conversion_leaves_no_worker_processes(demo_rawdata: Path, tmp_path: Path) -> None:
    output = tmp_path / "convert.out"
    command = [
        str(BIN / "iterseg"), "convert", "--snapshot", str(demo_rawdata / "2026-01-15__demo"),
        "--out", str(tmp_path / "converted"), "--roi-yaml", str(REPO / "config/roi_demo.yaml"),
        "--jobs", "2",
    ]  # fmt: skip
    step = start(command, tmp_path, output)

    def converting() -> bool:
        # both workers started and one of them has written an image: mid-conversion (7 cases)
        workers = [p for p in children(step.pid) if "spawn_main" in describe([p])]
        return len(workers) == 2 and any(tmp_path.rglob("*.nii.gz"))

    try:
        wait_for(converting, step, output, "conversion workers")
        running = in_session(step.pid)  # the workers, multiprocessing's resource tracker
        left = stop(step, signal.SIGKILL)
        assert left == [], f"still running after the conversion was killed:\n{describe(left)}"
        assert len(running) >= 3, describe(running)
    finally:
        step.kill()
        step.wait()
        kill_session(step.pid)
