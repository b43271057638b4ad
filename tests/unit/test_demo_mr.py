"""The two-sequence MR demo generator: layout, geometry, contrasts, SEG, MR attributes, determinism."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import tree_digest
from iterseg.dicom.codes import SegmentLabel
from iterseg.rawdata.demo import make_phantom, phantom_arrays
from iterseg.rawdata.demo_mr import (
    DEMO_MR_DATASET,
    FLAIR,
    T1,
    MrProtocol,
    mr_pixels,
    phantom_masks,
    write_demo_mr_dataset,
)
from pydicom.uid import MRImageStorage

pytestmark = pytest.mark.unit

BIN = Path(sys.executable).parent
SNAPSHOT = f"2026-01-15__{DEMO_MR_DATASET}"
TRAINING = [f"P{n:03d}" for n in range(1, 8)]
INBOX = ["P101", "P102"]
MR_ATTRIBUTES = (
    "ScanningSequence", "SequenceVariant", "ScanOptions", "MRAcquisitionType", "RepetitionTime", "EchoTime",
    "EchoTrainLength", "MagneticFieldStrength", "ImagingFrequency", "WindowCenter", "WindowWidth",
    "ImagePositionPatient", "ImageOrientationPatient", "SliceThickness", "SpacingBetweenSlices",
    "PixelSpacing", "FrameOfReferenceUID", "StudyInstanceUID", "SeriesInstanceUID", "ProtocolName",
)  # fmt: skip


@pytest.fixture(scope="module")
def demo_mr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<tmp>/demo-mr`` written once by the generator."""
    root = tmp_path_factory.mktemp("rawdata") / DEMO_MR_DATASET
    written = write_demo_mr_dataset(root)
    assert written == [root / SNAPSHOT, root / "inbox"]
    return root


def _patient_dirs(root: Path) -> list[Path]:
    return [root / SNAPSHOT / p for p in TRAINING] + [root / "inbox" / p for p in INBOX]


def _series(folder: Path) -> list[pydicom.Dataset]:
    """The folder's slices, lowest first."""
    slices = [pydicom.dcmread(f) for f in folder.iterdir()]
    return sorted(slices, key=lambda ds: float(ds.ImagePositionPatient[2]))


def _volume(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))  # sorted by position
    return reader.Execute()


def test_the_generator_writes_one_snapshot_and_an_inbox_of_two_series_per_patient(demo_mr: Path) -> None:
    assert sorted(p.name for p in demo_mr.iterdir()) == [SNAPSHOT, "inbox"]
    assert sorted(p.name for p in (demo_mr / SNAPSHOT).iterdir()) == TRAINING
    assert sorted(p.name for p in (demo_mr / "inbox").iterdir()) == INBOX
    for patient in _patient_dirs(demo_mr):
        annotated = patient.parent.name == SNAPSHOT
        expected = ["FLAIR", "SEG", "T1"] if annotated else ["FLAIR", "T1"]
        assert sorted(p.name for p in patient.iterdir()) == expected
        assert len(list((patient / "FLAIR").iterdir())) == FLAIR.grid.shape[0]
        assert len(list((patient / "T1").iterdir())) == T1.grid.shape[0]
        if annotated:
            assert [p.name for p in (patient / "SEG").iterdir()] == ["seg.dcm"]
    assert write_demo_mr_dataset(demo_mr) == []  # existing folders are left alone


def test_both_series_share_study_and_frame_of_reference_but_not_series_or_grid(demo_mr: Path) -> None:
    series_uids = set()
    for patient in _patient_dirs(demo_mr):
        flair, t1 = _series(patient / "FLAIR"), _series(patient / "T1")
        for series in (flair, t1):
            assert len({ds.SeriesInstanceUID for ds in series}) == 1
        assert flair[0].StudyInstanceUID == t1[0].StudyInstanceUID
        assert flair[0].FrameOfReferenceUID == t1[0].FrameOfReferenceUID
        assert flair[0].SeriesInstanceUID != t1[0].SeriesInstanceUID
        assert (flair[0].Rows, flair[0].PixelSpacing, flair[0].SliceThickness) != (
            t1[0].Rows, t1[0].PixelSpacing, t1[0].SliceThickness
        )  # fmt: skip
        assert (flair[0].SeriesDescription, flair[0].ProtocolName) == ("AX FLAIR", "FLAIR_ax")
        assert (t1[0].SeriesDescription, t1[0].ProtocolName) == ("T1 AX", "T1_ax")
        series_uids |= {flair[0].SeriesInstanceUID, t1[0].SeriesInstanceUID}
    assert len(series_uids) == 2 * len(_patient_dirs(demo_mr))


@pytest.mark.parametrize(
    ("protocol", "size", "spacing"),
    [(FLAIR, (64, 64, 32), (2.98828125, 2.98828125, 3.75)), (T1, (56, 56, 24), (3.5, 3.5, 5.0))],
)
def test_each_series_reads_back_as_its_grid_over_the_same_slab(
    demo_mr: Path, protocol: MrProtocol, size: tuple[int, ...], spacing: tuple[float, ...]
) -> None:
    patient = demo_mr / SNAPSHOT / "P001"
    image, flair = _volume(patient / protocol.folder), _volume(patient / "FLAIR")
    assert image.GetSize() == size
    assert image.GetSpacing() == pytest.approx(spacing)
    assert image.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    phantom = make_phantom("P001", 1)
    assert np.array_equal(sitk.GetArrayFromImage(image), mr_pixels(phantom, protocol))  # stored = values

    def extent(im: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
        half = np.array(im.GetSpacing()) / 2
        lo = np.array(im.GetOrigin()) - half
        return lo, np.array(im.TransformIndexToPhysicalPoint([n - 1 for n in im.GetSize()])) + half

    (lo, hi), (flair_lo, flair_hi) = extent(image), extent(flair)
    assert lo[2] == pytest.approx(flair_lo[2], abs=1e-3) and hi[2] == pytest.approx(flair_hi[2], abs=1e-3)
    assert (lo + hi)[:2] / 2 == pytest.approx((flair_lo + flair_hi)[:2] / 2, abs=1e-3)  # centred
    assert np.all(lo[:2] <= flair_lo[:2]) and np.all(hi[:2] >= flair_hi[:2])  # covers the FLAIR field
    assert np.all(hi - lo - (flair_hi - flair_lo) < 5.0)


def test_the_flair_masks_are_the_ct_demos_masks() -> None:
    phantom = make_phantom("P003", 3)
    _, on_flair = phantom_masks(phantom, FLAIR.grid)
    _, ct = phantom_arrays(phantom)
    assert all(np.array_equal(on_flair[label], ct[label]) for label in ct)


def test_the_two_channels_carry_opposite_tumour_contrast(demo_mr: Path) -> None:
    for patient in ("P001", "P004", "P007"):
        phantom = make_phantom(patient, int(patient[1:]))
        means = {}
        for protocol in (FLAIR, T1):
            pixels = sitk.GetArrayFromImage(_volume(demo_mr / SNAPSHOT / patient / protocol.folder))
            body, masks = phantom_masks(phantom, protocol.grid)
            tumour = masks[SegmentLabel.TUMOUR]
            liver = masks[SegmentLabel.LIVER] & ~tumour
            means[protocol.folder] = {
                "air": pixels[~body].mean(), "body": pixels[body & ~masks[SegmentLabel.LIVER]].mean(),
                "liver": pixels[liver].mean(), "tumour": pixels[tumour].mean(),
            }  # fmt: skip
        flair, t1 = means["FLAIR"], means["T1"]
        assert flair["tumour"] > flair["liver"] + 300 > flair["body"] + 300 > flair["air"] + 300
        assert t1["liver"] > t1["tumour"] + 300 and t1["body"] > t1["air"] + 300
        assert flair["air"] < 40 and t1["air"] < 40  # low, but Rician: not zero


def test_the_t1_resampled_onto_the_flair_grid_keeps_its_contrast(demo_mr: Path) -> None:
    patient = demo_mr / SNAPSHOT / "P002"
    flair = _volume(patient / "FLAIR")
    t1 = sitk.Resample(_volume(patient / "T1"), flair, sitk.Transform(), sitk.sitkLinear, 0.0,
                       sitk.sitkFloat32)  # fmt: skip
    values = sitk.GetArrayFromImage(t1)
    _, masks = phantom_masks(make_phantom("P002", 2), FLAIR.grid)
    tumour, liver = masks[SegmentLabel.TUMOUR], masks[SegmentLabel.LIVER] & ~masks[SegmentLabel.TUMOUR]
    assert values[liver].mean() > values[tumour].mean() + 300
    assert values[[0, -1]].mean() > 50  # the outermost FLAIR slices still lie inside the T1 slab


def test_the_seg_references_the_flair_series_and_reads_back_with_highdicom(demo_mr: Path) -> None:
    import highdicom as hd

    patient = demo_mr / SNAPSHOT / "P005"
    flair, t1 = _series(patient / "FLAIR"), _series(patient / "T1")
    seg = hd.seg.segread(patient / "SEG" / "seg.dcm")
    referenced = {(series, sop) for _, series, sop in seg.get_source_image_uids()}
    assert referenced == {(ds.SeriesInstanceUID, ds.SOPInstanceUID) for ds in flair}
    assert {ds.SOPInstanceUID for ds in t1}.isdisjoint(sop for _, sop in referenced)
    assert seg.FrameOfReferenceUID == flair[0].FrameOfReferenceUID
    assert seg.StudyInstanceUID == flair[0].StudyInstanceUID
    names = [seg.get_segment_description(n).segment_label for n in seg.get_segment_numbers()]
    assert names == [SegmentLabel.LIVER.roi_name, SegmentLabel.TUMOUR.roi_name]
    pixels = seg.get_pixels_by_source_instance([ds.SOPInstanceUID for ds in flair], segment_numbers=[1, 2])
    _, masks = phantom_masks(make_phantom("P005", 5), FLAIR.grid)
    assert np.array_equal(pixels[..., 0] > 0, masks[SegmentLabel.LIVER])
    assert np.array_equal(pixels[..., 1] > 0, masks[SegmentLabel.TUMOUR])


def test_every_mr_file_is_an_mr_image_with_consistent_geometry(demo_mr: Path) -> None:
    for patient in _patient_dirs(demo_mr):
        for protocol in (FLAIR, T1):
            files = sorted((patient / protocol.folder).iterdir())
            assert all((f.suffix == ".dcm") == protocol.dcm_extension for f in files)
            series = _series(patient / protocol.folder)
            for ds in series:
                assert ds.SOPClassUID == MRImageStorage and ds.Modality == "MR"
                assert ds.file_meta.MediaStorageSOPClassUID == MRImageStorage
                assert all(name in ds for name in MR_ATTRIBUTES), [n for n in MR_ATTRIBUTES if n not in ds]
                assert (ds.BitsAllocated, ds.PixelRepresentation) == (16, 0)
                assert ds.pixel_array.dtype == np.uint16
                assert float(ds.get("RescaleSlope", 1)) == 1 and float(ds.get("RescaleIntercept", 0)) == 0
                thickness = protocol.grid.slice_spacing
                assert float(ds.SpacingBetweenSlices) == float(ds.SliceThickness) == thickness
                assert float(ds.SliceLocation) == pytest.approx(float(ds.ImagePositionPatient[2]))
            steps = np.diff([float(ds.ImagePositionPatient[2]) for ds in series])
            assert steps == pytest.approx(protocol.grid.slice_spacing)
            numbers = [int(ds.InstanceNumber) for ds in series]
            assert sorted(numbers) == list(range(1, len(series) + 1))
            assert numbers != sorted(numbers)  # only the geometry tells the slice order


@pytest.mark.parametrize("folder", ["FLAIR", "T1"])
def test_dciodvfy_finds_no_error_in_the_mr_images(demo_mr: Path, folder: str) -> None:
    file = sorted((demo_mr / "inbox" / "P101" / folder).iterdir())[3]
    run = subprocess.run([str(BIN / "dciodvfy"), str(file)], capture_output=True, text=True)
    output = run.stdout + run.stderr
    assert "MRImage" in output
    assert [line for line in output.splitlines() if line.startswith(("Error", "Warning"))] == [], output


def test_the_cli_flag_writes_the_same_bytes_named_after_the_folder(demo_mr: Path, tmp_path: Path) -> None:
    command = [str(BIN / "iterseg"), "demo-data", f"tmp/{DEMO_MR_DATASET}", "--mr"]
    subprocess.run(command, cwd=tmp_path, check=True, capture_output=True)
    assert tree_digest(tmp_path / "tmp" / DEMO_MR_DATASET) == tree_digest(demo_mr)  # deterministic
