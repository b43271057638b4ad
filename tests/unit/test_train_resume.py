"""Which checkpoint an interrupted fold continues from, and when a fold starts anew."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from iterseg.nnunet.train import ATTEMPT_FILE, attempt_key, resumable_checkpoint

pytestmark = pytest.mark.unit


def _plans(tmp_path: Path) -> Path:
    plans = tmp_path / "pre" / "nnUNetPlans.json"
    plans.parent.mkdir()
    plans.write_text('{"configurations": {"3d_fullres": {}}}')
    (plans.parent / "dataset.json").write_text('{"labels": {"background": 0, "liver": 1}}')
    return plans


def test_the_same_training_continues_from_its_last_checkpoint(tmp_path: Path) -> None:
    plans = _plans(tmp_path)
    key = attempt_key(plans, "3d_fullres", "nnUNetTrainer", None, 3, None)
    fold = tmp_path / "fold_0"
    assert resumable_checkpoint(fold, key) is None  # first attempt: recorded, nothing to continue
    assert json.loads((fold / ATTEMPT_FILE).read_text()) == {"key": key}
    (fold / "checkpoint_latest.pth").write_bytes(b"epoch 1")
    (fold / "checkpoint_best.pth").write_bytes(b"epoch 0")
    assert resumable_checkpoint(fold, key) == fold / "checkpoint_latest.pth"
    (fold / "checkpoint_final.pth").write_bytes(b"done")  # died after training, before its record
    assert resumable_checkpoint(fold, key) == fold / "checkpoint_final.pth"


@pytest.mark.parametrize(
    "change",
    ["plans", "dataset", "trainer", "epochs", "initial_lr", "pretrained", "no record"],
)
def test_another_training_never_continues_from_stale_checkpoints(
    tmp_path: Path, change: str, caplog: pytest.LogCaptureFixture
) -> None:
    plans = _plans(tmp_path)
    weights = tmp_path / "previous.pth"
    weights.write_bytes(b"w")
    args = {"trainer": "nnUNetTrainer", "pretrained": weights, "epochs": 3, "initial_lr": 0.01}
    fold = tmp_path / "fold_0"
    resumable_checkpoint(fold, attempt_key(plans, "3d_fullres", **args))  # type: ignore[arg-type]
    for name in ("checkpoint_latest.pth", "checkpoint_best.pth", "checkpoint_final.pth"):
        (fold / name).write_bytes(b"old")
    if change == "plans":
        plans.write_text('{"configurations": {"3d_fullres": {"batch_size": 4}}}')
    elif change == "dataset":
        (plans.parent / "dataset.json").write_text('{"labels": {"background": 0, "kidney": 1}}')
    elif change == "pretrained":
        args["pretrained"] = tmp_path / "other.pth"
        args["pretrained"].write_bytes(b"w")
    elif change == "no record":
        (fold / ATTEMPT_FILE).unlink()
    else:
        args[change] = {"trainer": "nnUNetTrainer_5epochs", "epochs": 5, "initial_lr": 0.001}[change]
    new_key = attempt_key(plans, "3d_fullres", **args)  # type: ignore[arg-type]
    assert resumable_checkpoint(fold, new_key) is None
    assert not list(fold.glob("checkpoint_*.pth"))
    assert json.loads((fold / ATTEMPT_FILE).read_text()) == {"key": new_key}
    assert "holds checkpoints of another training" in caplog.text
