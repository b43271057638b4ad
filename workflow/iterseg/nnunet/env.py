"""nnU-Net's configuration lives in environment variables; we set them from our paths, per call."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from iterseg.paths import nnunet_roots

logger = logging.getLogger(__name__)

TRAINERS_DIR = Path(__file__).resolve().parent / "trainers"


def configure_nnunet(work: Path, threads: int | None = None, device: str = "cpu") -> dict[str, str]:
    """Point nnU-Net at the iteration folder ``work``, overriding anything in the user's shell.

    Also makes our trainers (``iterseg/nnunet/trainers``) findable through ``nnUNet_extTrainer``,
    for training and prediction alike, and caps data-augmentation workers at ``threads``.
    Must run before nnU-Net code reads the variables (nnunetv2 2.8 reads them lazily).
    """
    env = {name: str(path.resolve()) for name, path in nnunet_roots(work).items()}
    env["nnUNet_extTrainer"] = str(TRAINERS_DIR)
    if threads is not None:
        env["nnUNet_n_proc_DA"] = str(max(1, threads))
        env["nnUNet_def_n_proc"] = str(max(1, threads))
    # nnU-Net compiles by default; on a CPU that costs minutes and gains nothing.
    env["nnUNet_compile"] = "true" if device == "cuda" else "false"
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
        if os.environ.get(key) not in (None, env[key]):
            logger.debug("overriding %s from the shell (%s) with %s", key, os.environ[key], env[key])
    os.environ.update(env)
    return env
