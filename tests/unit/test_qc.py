"""QC overlay montages: a readable PNG per prediction, with the label outlines in the requested colours."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from iterseg.report.montage import qc_montage, window
from PIL import Image

pytestmark = pytest.mark.unit

LABELS = {"background": 0, "liver": 1, "tumour": 2, "ignore": 3}
RED = (255, 0, 0)
BLUE = (0, 0, 255)
REFERENCE_GREEN = (0, 200, 0)
PREDICTION_MAGENTA = (255, 0, 255)
SHAPE = (20, 64, 64)  # numpy (z, y, x)


def ball(centre: tuple[float, float, float], radius_mm: float, spacing_zyx: tuple[float, ...]) -> np.ndarray:
    z, y, x = np.indices(SHAPE, dtype=float)
    cz, cy, cx = centre
    sz, sy, sx = spacing_zyx
    return ((z - cz) * sz) ** 2 + ((y - cy) * sy) ** 2 + ((x - cx) * sx) ** 2 <= radius_mm**2


def volume(array: np.ndarray, like: sitk.Image | None = None) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    if like is None:
        image.SetSpacing((1.0, 1.0, 3.0))
        image.SetOrigin((-32.0, -32.0, -30.0))
    else:
        image.CopyInformation(like)
    return image


@pytest.fixture(scope="module")
def case() -> tuple[sitk.Image, np.ndarray]:
    """A CT-like image (a bright liver ball with a darker tumour in it) and its label array."""
    liver = ball((10, 30, 26), 18, (3, 1, 1))
    tumour = ball((11, 28, 22), 6, (3, 1, 1))
    ct = np.full(SHAPE, -50.0, dtype=np.float32)
    ct[liver] = 120
    ct[tumour] = 10
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[liver] = 1
    labels[tumour] = 2
    return volume(ct), labels


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as png:
        assert png.format == "PNG"
        return np.asarray(png.convert("RGB")).astype(int)


def count_colour(rgb: np.ndarray, colour: tuple[int, int, int], tolerance: int = 40) -> int:
    return int(np.all(np.abs(rgb - np.asarray(colour)) <= tolerance, axis=-1).sum())


def test_prediction_only_montage(case: tuple[sitk.Image, np.ndarray], tmp_path: Path) -> None:
    image, labels = case
    liver_only = np.where(labels == 1, 1, 0).astype(np.uint8)
    colours = {"liver": RED, "tumour": BLUE}

    one = qc_montage(
        image,
        LABELS,
        volume(liver_only, image),
        tmp_path / "deep" / "folder" / "one.png",
        colours=colours,
        title="case_001",
    )
    two = qc_montage(image, LABELS, volume(labels, image), tmp_path / "two.png", colours=colours)

    assert one == tmp_path / "deep" / "folder" / "one.png"
    one_px, two_px = pixels(one), pixels(two)
    assert abs(one_px.shape[1] - 900) <= 50
    assert 250 <= one_px.shape[0] <= 450
    assert two_px.shape[0] > one_px.shape[0] + 200  # one row per present label
    assert count_colour(one_px, RED) > 100
    assert count_colour(one_px, BLUE) == 0  # tumour absent: not outlined, not in the legend
    assert count_colour(two_px, RED) > 100
    assert count_colour(two_px, BLUE) > 50
    assert sorted(p.name for p in (tmp_path / "deep" / "folder").iterdir()) == ["one.png"]  # no partials


def test_default_colours_are_tab10(case: tuple[sitk.Image, np.ndarray], tmp_path: Path) -> None:
    image, labels = case
    out = qc_montage(image, LABELS, volume(labels, image), tmp_path / "qc.png")
    rgb = pixels(out)
    assert count_colour(rgb, (31, 119, 180), tolerance=20) > 100  # tab10 blue: liver
    assert count_colour(rgb, (255, 127, 14), tolerance=20) > 50  # tab10 orange: tumour


def test_reference_mode_draws_both_colours(case: tuple[sitk.Image, np.ndarray], tmp_path: Path) -> None:
    image, labels = case
    prediction = labels.copy()
    prediction[:, :, :24] = 0  # liver under-segmented on one side
    prediction[prediction == 2] = 1  # tumour missed: its row comes from the reference
    out = qc_montage(
        image,
        LABELS,
        volume(prediction, image),
        tmp_path / "ref.png",
        reference=volume(labels, image),
        colours={"liver": RED},  # ignored in reference mode
    )
    rgb = pixels(out)
    assert count_colour(rgb, REFERENCE_GREEN) > 100
    assert count_colour(rgb, PREDICTION_MAGENTA) > 100
    assert count_colour(rgb, RED) == 0
    assert rgb.shape[0] > 600  # liver row + tumour row (present in the reference only)


def test_empty_prediction_still_writes_png(case: tuple[sitk.Image, np.ndarray], tmp_path: Path) -> None:
    image, labels = case
    out = qc_montage(image, LABELS, volume(np.zeros_like(labels), image), tmp_path / "empty.png", title="x")
    rgb = pixels(out)
    assert 250 <= rgb.shape[0] <= 450  # a single row through the volume centre
    assert count_colour(rgb, (31, 119, 180), tolerance=20) == 0


def test_prediction_on_other_grid_is_resampled(
    case: tuple[sitk.Image, np.ndarray], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    image, labels = case
    coarse = sitk.Resample(
        volume(labels, image),
        [32, 32, 20],
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
        image.GetOrigin(),
        (2.0, 2.0, 3.0),
        image.GetDirection(),
        0,
        sitk.sitkUInt8,
    )
    with caplog.at_level(logging.WARNING, logger="iterseg.report.montage"):
        out = qc_montage(image, LABELS, coarse, tmp_path / "resampled.png", colours={"liver": RED})
    assert any("resampl" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert count_colour(pixels(out), RED) > 100


def test_orientation_is_normalised(case: tuple[sitk.Image, np.ndarray], tmp_path: Path) -> None:
    """The same anatomy stored with flipped axes (RAS-like direction) gives the same picture."""
    image, labels = case
    lps = qc_montage(image, LABELS, volume(labels, image), tmp_path / "lps.png")

    flipped_image = volume(sitk.GetArrayFromImage(image)[:, ::-1, ::-1].copy())
    flipped_image.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    flipped_labels = volume(labels[:, ::-1, ::-1].copy(), flipped_image)
    ras = qc_montage(flipped_image, LABELS, flipped_labels, tmp_path / "ras.png")

    assert np.array_equal(pixels(lps), pixels(ras))


def test_rejects_non_3d_image(tmp_path: Path) -> None:
    flat = sitk.Image(8, 8, sitk.sitkFloat32)
    with pytest.raises(ValueError, match="3-D"):
        qc_montage(flat, LABELS, sitk.Image(8, 8, sitk.sitkUInt8), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_window() -> None:
    array = np.arange(1001, dtype=float)
    assert window(array, "CT") == (-160, 240)
    assert window(array, "ct") == (-160, 240)
    vmin, vmax = window(array, "MR")
    assert (vmin, vmax) == pytest.approx((10.0, 990.0))
    assert window(array, "PET") == pytest.approx((10.0, 990.0))
    low, high = window(np.full((4, 4), 7.0), "MR")  # constant image: still a usable window
    assert low < 7.0 < high


def test_test_pictures_are_named_by_patient_unless_that_would_clash(
    case: tuple[sitk.Image, np.ndarray], tmp_path: Path
) -> None:
    """Two test cases of one patient (two series), or a PatientID no file may be named: by case id."""
    from iterseg.records import Assembled
    from iterseg.report.qc import qc_iteration

    image, labels = case
    (tmp_path / "results/test_predictions").mkdir(parents=True)
    records = []
    for cid, patient in (("P1_aaaa", "P1"), ("P2_bbbb", "P2"), ("P2_cccc", "P2"), ("P-3_dddd", "P/3")):
        sitk.WriteImage(image, str(tmp_path / f"{cid}_0000.nii.gz"))
        sitk.WriteImage(volume(labels, image), str(tmp_path / f"{cid}.nii.gz"))
        sitk.WriteImage(volume(labels, image), str(tmp_path / f"results/test_predictions/{cid}.nii.gz"))
        records.append(
            {
                "case_id": cid,
                "patient_id": patient,
                "split": "test",
                "raw_image": str(tmp_path / f"{cid}_0000.nii.gz"),
                "raw_label": str(tmp_path / f"{cid}.nii.gz"),
            }
        )
    assembled = Assembled(
        "D", "", (), {"background": 0, "liver": 1, "tumour": 2}, (), (), {}, {}, tuple(records)
    )
    (tmp_path / "results/predictions.json").write_text("[]")
    roi = Path(__file__).resolve().parents[2] / "config/roi_demo.yaml"
    written = qc_iteration(tmp_path / "results", tmp_path / "inbox", assembled, roi, "CT", tmp_path / "qc")
    assert sorted(p.name for p in written) == [
        "test_P-3_dddd.png", "test_P1.png", "test_P2_bbbb.png", "test_P2_cccc.png",
    ]  # fmt: skip
