"""GPU slots are claimed with real file locks by real processes (no GPU needed)."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest
from iterseg.cluster.gpus import DEFAULT_LOCK_DIR, claim_gpu
from iterseg.errors import TrainingError

pytestmark = pytest.mark.unit


def _job(lock_dir: str, gpus: list[str], out: str, name: str) -> None:
    with claim_gpu(gpus, Path(lock_dir), poll_s=0.05) as gpu:
        start = time.monotonic()
        visible = os.environ["CUDA_VISIBLE_DEVICES"]
        time.sleep(0.4)
        end = time.monotonic()
    Path(out, f"{name}.json").write_text(
        json.dumps({"gpu": gpu, "visible": visible, "start": start, "end": end})
    )


def test_more_jobs_than_gpus_all_run_never_two_on_one_gpu(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    jobs = [
        ctx.Process(target=_job, args=(str(tmp_path / "locks"), ["0", "1"], str(tmp_path), f"fold{i}"))
        for i in range(5)
    ]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(60)
    assert [job.exitcode for job in jobs] == [0] * 5
    runs = [json.loads((tmp_path / f"fold{i}.json").read_text()) for i in range(5)]
    assert all(r["visible"] == r["gpu"] for r in runs)
    assert {r["gpu"] for r in runs} == {"0", "1"}
    for gpu in ("0", "1"):
        spans = sorted((r["start"], r["end"]) for r in runs if r["gpu"] == gpu)
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans))
    # both GPUs were busy at the same time at least once: the slots run concurrently
    first = {r["gpu"]: min(x["start"] for x in runs if x["gpu"] == r["gpu"]) for r in runs}
    assert abs(first["0"] - first["1"]) < 0.3


def test_a_crashed_holder_frees_its_gpu(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    holder = ctx.Process(target=_job, args=(str(tmp_path / "locks"), ["0"], str(tmp_path), "held"))
    holder.start()
    time.sleep(0.2)
    holder.kill()
    holder.join()
    with claim_gpu(["0"], tmp_path / "locks", wait_s=5, poll_s=0.05) as gpu:
        assert gpu == "0" and os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ or os.environ["CUDA_VISIBLE_DEVICES"] != "0"


def test_no_gpu_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=r"nnunet\.gpus"), claim_gpu([], tmp_path):
        pass
    with (
        pytest.raises(TrainingError, match=r"2 GPU\(s\) needed, 1 listed"),
        claim_gpu(["0"], tmp_path, count=2),
    ):
        pass
    with (
        claim_gpu(["3"], tmp_path),
        pytest.raises(TrainingError, match="did not become free"),
        claim_gpu(["3"], tmp_path, wait_s=0.2, poll_s=0.05),
    ):
        pass


def test_a_data_parallel_job_takes_all_its_gpus_at_once(tmp_path: Path) -> None:
    locks = tmp_path / "locks"
    with claim_gpu(["0", "1", "2"], locks, count=2) as pair:
        assert pair == "0,1" and os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
        # one GPU left: a second two-GPU job holds none of it while it waits, a one-GPU job gets it
        with pytest.raises(TrainingError, match="did not become free"):
            with claim_gpu(["0", "1", "2"], locks, count=2, wait_s=0.2, poll_s=0.05):
                pass
        with claim_gpu(["0", "1", "2"], locks, wait_s=1, poll_s=0.05) as single:
            assert single == "2"
    with claim_gpu(["0", "1", "2"], locks, count=2, wait_s=1, poll_s=0.05) as again:
        assert again == "0,1"


def test_the_lock_dir_default_is_defined_once() -> None:
    import inspect

    import yaml
    from iterseg.cluster.slurm import submit_folds
    from iterseg.config import SCHEMA_PATH, NnunetSettings

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    assert Path(schema["properties"]["nnunet"]["properties"]["gpu_lock_dir"]["default"]) == DEFAULT_LOCK_DIR
    assert NnunetSettings.__dataclass_fields__["gpu_lock_dir"].default == DEFAULT_LOCK_DIR
    assert inspect.signature(submit_folds).parameters["gpu_lock_dir"].default == DEFAULT_LOCK_DIR
    assert inspect.signature(claim_gpu).parameters["lock_dir"].default == DEFAULT_LOCK_DIR
