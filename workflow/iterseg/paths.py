"""Where each stage reads and writes: the one path vocabulary of the rules and the package.

Folder and file names of an iteration live here; ``workflow/rules/*.smk`` and the package
build their paths through these functions, never by hand.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

PARTIAL_SUFFIX = ".partial"


def partial_path(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place: hidden, beside it, unique per writer.

    One scheme for every atomic write (records, NIfTI, PNGs, SEGs, the ``latest`` link): a
    crashed writer leaves ``.<name>.<pid>.<random>.partial``, which no reader looks at and no
    other writer collides with.
    """
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}")


def iteration_dir(procdata: Path, dataset: str, date: str) -> Path:
    """``procdata/<dataset>/<date>__<dataset>``: the iteration's converted data and nnU-Net roots."""
    return procdata / dataset / f"{date}__{dataset}"


def nnunet_roots(work: Path) -> dict[str, Path]:
    """nnU-Net's three roots inside an iteration folder."""
    return {
        "nnUNet_raw": work / "nnUNet_raw",
        "nnUNet_preprocessed": work / "nnUNet_preprocessed",
        "nnUNet_results": work / "nnUNet_results",
    }


def preprocessed_dir(work: Path, dataset_name: str) -> Path:
    """nnU-Net's preprocessed folder of the iteration's dataset (plans, fingerprint, splits)."""
    return work / "nnUNet_preprocessed" / dataset_name


def plans_file(work: Path, dataset_name: str, plans: str) -> Path:
    """The plans JSON nnU-Net trains and predicts with (``<plans>.json``)."""
    return preprocessed_dir(work, dataset_name) / f"{plans}.json"


def model_dir(work: Path, dataset_name: str, trainer: str, plans: str, configuration: str) -> Path:
    """nnU-Net's trained-model folder (holds fold_N/checkpoint_final.pth)."""
    return work / "nnUNet_results" / dataset_name / f"{trainer}__{plans}__{configuration}"


def fold_dir_name(fold: str) -> str:
    """nnU-Net's folder name of a fold (``fold_0`` ... ``fold_all``)."""
    return f"fold_{fold}"
