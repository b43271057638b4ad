"""The loop's plots: each writes a readable PNG, from real-shaped inputs and from the degenerate ones."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from iterseg.report.curves import (
    TRAINING_LOG_KEYS,
    EffortPoint,
    IterationPoint,
    effort_curves,
    learning_curves,
    read_training_log,
    training_curves,
)
from PIL import Image

pytestmark = pytest.mark.unit

LOGGING = {
    "mean_fg_dice": [0.42, 0.38, 0.47],
    "ema_fg_dice": [0.42, 0.418, 0.4232],
    "dice_per_class_or_region": [[0.8, 0.01], [0.75, 0.0], [0.9, 0.03]],
    "train_losses": [0.98, 0.2, -0.14],
    "val_losses": [0.3, -0.08, -0.28],
    "lrs": [0.01, 0.0069, 0.0037],
    "epoch_start_timestamps": [1000.0, 1020.0, 1039.0],
    "epoch_end_timestamps": [1019.5, 1038.7, 1057.2],
}


def assert_png(path: Path, min_size: tuple[int, int] = (300, 150)) -> None:
    assert path.is_file()
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert width >= min_size[0] and height >= min_size[1]
    assert width <= 2000 and height <= 2000
    leftovers = [p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}")]
    assert leftovers == [], "temporary file left behind"


def two_iterations() -> list[IterationPoint]:
    return [
        # deliberately out of order: the plot sorts by date
        IterationPoint(
            "2026-03-02", 16, {"liver": 0.83, "tumor": 0.41}, {"liver": 0.74, "tumor": math.nan}, False
        ),
        IterationPoint("2026-01-15", 8, {"liver": 0.71, "tumor": None}, {"liver": 0.62, "tumor": 0.3}, True),
    ]


def test_learning_curves_two_iterations_two_labels(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "plots" / "learning.png"
    assert learning_curves(two_iterations(), out, title="Dataset902_demo") == out
    assert_png(out, (800, 600))


def test_learning_curves_single_point_and_unknown_promotion(tmp_path: Path) -> None:
    point = IterationPoint("2026-01-15", 8, {"liver": 0.7}, {"liver": None}, None)
    assert_png(learning_curves([point], tmp_path / "one.png"), (800, 600))


def test_learning_curves_empty(tmp_path: Path) -> None:
    assert_png(learning_curves([], tmp_path / "empty.png"))


def test_learning_curves_replaces_existing_file(tmp_path: Path) -> None:
    out = tmp_path / "learning.png"
    out.write_bytes(b"stale")
    learning_curves(two_iterations(), out)
    assert_png(out)


def test_effort_curves_with_zero_case_iteration(tmp_path: Path) -> None:
    points = [
        EffortPoint("2026-01-15", 0, 0, 0, None, {}),
        EffortPoint("2026-03-02", 8, 1, 3, 0.62, {"liver": 0.78, "tumor": None}),
        EffortPoint("2026-04-20", 5, 2, 0, None, {"liver": 0.9, "tumor": 0.5}),
    ]
    out = effort_curves(points, tmp_path / "effort.png", title="demo")
    assert_png(out, (800, 400))


def test_effort_curves_empty(tmp_path: Path) -> None:
    assert_png(effort_curves([], tmp_path / "effort.png"))


def save_checkpoint(path: Path, logging: dict[str, object] | None = LOGGING) -> Path:
    import torch

    checkpoint: dict[str, object] = {
        "network_weights": {"w": torch.zeros(2)},
        "current_epoch": 3,
        "trainer_name": "nnUNetTrainer",
        "_best_ema": 0.4232,
    }
    if logging is not None:
        checkpoint["logging"] = logging
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def test_read_training_log_returns_float_lists(tmp_path: Path) -> None:
    log = read_training_log(save_checkpoint(tmp_path / "checkpoint_final.pth"))
    assert set(log) == set(TRAINING_LOG_KEYS)
    for key in TRAINING_LOG_KEYS:
        assert log[key] == pytest.approx(LOGGING[key])
        assert all(type(value) is float for value in log[key])


def test_training_curves_three_epochs(tmp_path: Path) -> None:
    checkpoint = save_checkpoint(
        tmp_path / "Dataset1_x" / "T__P__3d_fullres" / "fold_0" / "checkpoint_final.pth"
    )
    out = training_curves(checkpoint, tmp_path / "plots" / "training.png")
    assert_png(out, (800, 600))


def test_checkpoint_without_logging_raises_naming_file(tmp_path: Path) -> None:
    checkpoint = save_checkpoint(tmp_path / "no_log.pth", logging=None)
    with pytest.raises(ValueError, match=r"no_log\.pth"):
        read_training_log(checkpoint)
    with pytest.raises(ValueError, match=r"no_log\.pth"):
        training_curves(checkpoint, tmp_path / "training.png")
    assert not (tmp_path / "training.png").exists()
