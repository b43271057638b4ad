"""Where each stage reads and writes; shared by the Snakefile and the CLI."""

from __future__ import annotations

from pathlib import Path


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


def model_dir(work: Path, dataset_name: str, trainer: str, plans: str, configuration: str) -> Path:
    """nnU-Net's trained-model folder (holds fold_N/checkpoint_final.pth)."""
    return work / "nnUNet_results" / dataset_name / f"{trainer}__{plans}__{configuration}"


def fold_dir_name(fold: str) -> str:
    """nnU-Net's folder name of a fold (``fold_0`` ... ``fold_all``)."""
    return f"fold_{fold}"
