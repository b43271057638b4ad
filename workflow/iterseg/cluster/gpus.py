"""One GPU per job on a workstation, claimed with a file lock and pinned via CUDA_VISIBLE_DEVICES.

The variable is set before torch starts.

Snakemake's ``gpu`` resource only counts GPUs; it does not say which one a job may use, so
two folds started together would both land on GPU 0. Each job therefore claims a slot (an
``flock`` on ``<lock dir>/gpu<N>.lock``) for as long as it runs. With more jobs than GPUs the
extra ones wait for a slot: no job is dropped and no GPU runs two. The kernel releases a lock
when its process ends, however it ends, so a crashed fold never leaves a GPU blocked.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from iterseg.errors import TrainingError

logger = logging.getLogger(__name__)

DEFAULT_LOCK_DIR = Path("/tmp/iterseg-gpu-locks")


def detect_gpus() -> list[str]:
    """GPU indices from ``nvidia-smi -L`` (without importing torch); empty when there are none."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    run = subprocess.run([exe, "-L"], capture_output=True, text=True, check=False, timeout=30)
    return [str(i) for i, line in enumerate(run.stdout.splitlines()) if line.startswith("GPU ")]


def _release(held: Sequence[tuple[str, IO[str]]]) -> None:
    for _, lock in held:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


def _try_claim(gpus: Sequence[str], lock_dir: Path, count: int) -> list[tuple[str, IO[str]]] | None:
    """``count`` of ``gpus`` locked now, or None (holding nothing) when fewer are free."""
    held: list[tuple[str, IO[str]]] = []
    for gpu in gpus:
        handle = (lock_dir / f"gpu{gpu}.lock").open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        held.append((gpu, handle))
        if len(held) == count:
            break
    if len(held) == count:
        return held
    _release(held)  # all at once or none: never hold half of what a job needs
    return None


def _wait_for_gpus(
    gpus: Sequence[str], lock_dir: Path, count: int, wait_s: float, poll_s: float
) -> list[tuple[str, IO[str]]]:
    """Poll until ``count`` of ``gpus`` are free and locked; TrainingError after ``wait_s`` seconds."""
    deadline = time.monotonic() + wait_s
    waited = False
    while (held := _try_claim(gpus, lock_dir, count)) is None:
        if time.monotonic() > deadline:
            raise TrainingError(
                f"{count} GPU(s) of {list(gpus)} did not become free within {wait_s:.0f} s "
                f"(locks in {lock_dir})."
            )
        if not waited:
            logger.info("all of GPUs %s are busy; waiting for %d", list(gpus), count)
            waited = True
        time.sleep(poll_s)
    return held


@contextmanager
def claim_gpu(
    gpus: Sequence[str],
    lock_dir: Path = DEFAULT_LOCK_DIR,
    wait_s: float = 7 * 24 * 3600,
    poll_s: float = 2.0,
    count: int = 1,
) -> Iterator[str]:
    """Hold ``count`` free GPUs of ``gpus`` for the duration of the block.

    ``CUDA_VISIBLE_DEVICES`` is set to them (so torch numbers them from ``cuda:0``) and
    restored after; the block gets the same comma-separated indices. A job needing several
    GPUs takes them all at once or none, so two such jobs never each hold half and wait forever.

    Raises
    ------
    TrainingError
        If ``gpus`` has fewer than ``count`` GPUs, or none became free within ``wait_s`` seconds.

    """
    if len(gpus) < max(1, count):
        raise TrainingError(
            f"{count} GPU(s) needed, {len(gpus)} listed ({list(gpus)}): set nnunet.gpus (and "
            "nnunet.gpus_per_fold), or nnunet.device: cpu on a machine without GPUs."
        )
    lock_dir.mkdir(parents=True, exist_ok=True)
    held = _wait_for_gpus(gpus, lock_dir, count, wait_s, poll_s)
    claimed = ",".join(gpu for gpu, _ in held)
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = claimed
    for _, lock in held:
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
    logger.info("claimed GPU %s (locks in %s)", claimed, lock_dir)
    try:
        yield claimed
    finally:
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before
        _release(held)
