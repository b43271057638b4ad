import json
from pathlib import Path

import pytest
import torch
from iterseg.errors import PlanTransferError
from iterseg.nnunet.plan import _check_transferable
from iterseg.nnunet.train import check_checkpoint_compatible

pytestmark = pytest.mark.unit

ARCH = {"network_class_name": "PlainConvUNet", "arch_kwargs": {"n_stages": 5}}
PLANS = {"configurations": {"3d_fullres": {"architecture": ARCH}}}
DATASET = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1}}


def _setup(tmp_path: Path, saved_arch: dict, saved_channels: dict) -> tuple[Path, Path]:
    checkpoint = tmp_path / "checkpoint_final.pth"
    saved_plans = {"configurations": {"3d_fullres": {"architecture": saved_arch}}}
    torch.save(
        {
            "init_args": {
                "plans": saved_plans,
                "configuration": "3d_fullres",
                "dataset_json": {**DATASET, "channel_names": saved_channels},
            }
        },
        checkpoint,
    )
    pre = tmp_path / "pre"
    pre.mkdir()
    (pre / "nnUNetPlans.json").write_text(json.dumps(PLANS))
    (pre / "dataset.json").write_text(json.dumps(DATASET))
    return checkpoint, pre / "nnUNetPlans.json"


def test_matching_checkpoint_passes(tmp_path: Path) -> None:
    checkpoint, plans = _setup(tmp_path, ARCH, {"0": "CT"})
    check_checkpoint_compatible(checkpoint, plans, "3d_fullres")


def test_other_architecture_fails_before_training(tmp_path: Path) -> None:
    other = {"network_class_name": "PlainConvUNet", "arch_kwargs": {"n_stages": 6}}
    checkpoint, plans = _setup(tmp_path, other, {"0": "CT"})
    with pytest.raises(PlanTransferError, match="cannot be loaded"):
        check_checkpoint_compatible(checkpoint, plans, "3d_fullres")


def test_other_channel_count_fails(tmp_path: Path) -> None:
    checkpoint, plans = _setup(tmp_path, ARCH, {"0": "T1", "1": "T2"})
    with pytest.raises(PlanTransferError, match="2 input channel"):
        check_checkpoint_compatible(checkpoint, plans, "3d_fullres")


def test_missing_previous_checkpoint_says_what_to_rerun(tmp_path: Path) -> None:
    _, plans = _setup(tmp_path, ARCH, {"0": "CT"})
    with pytest.raises(PlanTransferError, match="final checkpoint is missing"):
        check_checkpoint_compatible(tmp_path / "nope.pth", plans, "3d_fullres")


def test_plan_transfer_refuses_other_modality_and_configuration() -> None:
    mr = {**DATASET, "channel_names": {"0": "MR"}}
    with pytest.raises(PlanTransferError, match="input channels"):
        _check_transferable(PLANS, mr, "3d_fullres", DATASET, "Dataset101_a", "Dataset102_a")
    with pytest.raises(PlanTransferError, match="without configuration '2d'"):
        _check_transferable(PLANS, DATASET, "2d", DATASET, "Dataset101_a", "Dataset102_a")
    _check_transferable(PLANS, DATASET, "3d_fullres", DATASET, "Dataset101_a", "Dataset102_a")
