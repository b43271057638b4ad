"""``iterseg nifti-to-dicom``: a NIfTI written as a CT or MR series that every reader reads back as the NIfTI.

Read back with the project's own readers (``find_image_series``, ``read_volume``, ``series_grid``),
with SimpleITK in GDCM's own file order, by dcmqi (3D Slicer's SEG writer) and checked by
dicom3tools' ``dciodvfy``. The SEG round trip on every corpus geometry is in
``test_dicom_geometry_and_seg.py``.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from geometry_corpus import NIFTI_GEOMETRIES, SeriesSpec, write_nifti
from iterseg.dicom.from_nifti import Modality, WrittenSeries, nifti_to_dicom
from iterseg.dicom.geometry import series_grid
from iterseg.dicom.series import find_image_series, read_volume
from iterseg.errors import DicomWriteError
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
STUDY_UID = "1.2.826.0.1.3680043.10.1451.99.1"
IDENTIFIERS: dict[str, Any] = {
    "patient_id": "NII042",
    "patient_name": "Müller^Jana",
    "study_uid": STUDY_UID,
    "accession": "ACC42",
    "study_description": "CT abdomen",
    "series_description": "from NIfTI",
    "study_date": "20260314",
}


def _headers(written: WrittenSeries) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(path) for path in written.files]


def _reads_back_as(folder: Path, modality: str, expected: Any) -> None:
    """Our readers and GDCM's own file order read ``folder`` as the image ``expected``, voxel for voxel."""
    (series,) = find_image_series(folder, modality)
    grid = series_grid(series)
    volume, geometry = read_volume(series)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    gdcm = reader.Execute()
    values = sitk.GetArrayFromImage(expected)
    for array in (volume, sitk.GetArrayFromImage(gdcm)):
        assert np.array_equal(array.astype(values.dtype), values)
    for origin, direction in ((grid.origin, grid.direction), (geometry["origin"], geometry["direction"]),
                              (gdcm.GetOrigin(), gdcm.GetDirection())):  # fmt: skip
        assert np.allclose(origin, expected.GetOrigin(), atol=1e-4)
        assert np.allclose(direction, expected.GetDirection(), atol=1e-6)
    assert grid.size == expected.GetSize()
    assert np.allclose(grid.spacing, expected.GetSpacing(), atol=1e-4)
    assert np.allclose(geometry["spacing"], expected.GetSpacing(), atol=1e-4)


def test_ct_carries_the_identifiers_exact_hu_and_new_valid_uids(tmp_path: Path) -> None:
    spec = SeriesSpec(rows=12, cols=10, slices=5, pixel_spacing=(0.6, 0.8), slice_step=2.0)
    image = write_nifti(spec, tmp_path / "ct.nii.gz")
    written = nifti_to_dicom(tmp_path / "ct.nii.gz", tmp_path / "CT", Modality.CT, **IDENTIFIERS)
    _reads_back_as(tmp_path / "CT", "CT", image)
    headers = _headers(written)
    assert [p.name for p in written.files] == ["1.dcm", "2.dcm", "3.dcm", "4.dcm", "5.dcm"]
    for k, ds in enumerate(headers):
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == CTImageStorage
        assert (ds.Modality, ds.PatientID, str(ds.PatientName)) == ("CT", "NII042", "Müller^Jana")
        assert (ds.StudyInstanceUID, ds.AccessionNumber, ds.StudyDate) == (STUDY_UID, "ACC42", "20260314")
        assert (ds.StudyDescription, ds.SeriesDescription) == ("CT abdomen", "from NIfTI")
        assert (
            ds.SeriesInstanceUID == written.series_uid
            and ds.FrameOfReferenceUID == written.frame_of_reference_uid
        )
        assert [float(v) for v in ds.PixelSpacing] == [0.6, 0.8]  # between rows, then between columns
        assert float(ds.SliceThickness) == float(ds.SpacingBetweenSlices) == 2.0
        assert (float(ds.RescaleSlope), float(ds.RescaleIntercept), ds.RescaleType) == (1.0, 0.0, "HU")
        assert ds.pixel_array.dtype == np.int16 and ds.PixelRepresentation == 1
        assert ds.InstanceNumber == k + 1
        assert float(ds.ImagePositionPatient[2]) == pytest.approx(30.0 + 2.0 * k)  # InstanceNumber along +z
    uids = [str(ds.SOPInstanceUID) for ds in headers] + [written.series_uid, written.frame_of_reference_uid]
    assert all(UID(uid).is_valid for uid in uids) and len(set(uids)) == len(uids)
    again = nifti_to_dicom(tmp_path / "ct.nii.gz", tmp_path / "again", Modality.CT, "NII042")
    assert again.series_uid != written.series_uid and UID(again.study_uid).is_valid
    assert again.study_uid != STUDY_UID  # a new study when none is given
    assert not {str(pydicom.dcmread(p).SOPInstanceUID) for p in again.files} & set(uids)


def test_positions_are_lps_as_nibabel_reads_the_nifti(tmp_path: Path) -> None:
    import nibabel as nib

    axes = np.array([[0.0, 0.9, 0.0], [-0.7, 0.0, 0.0], [0.0, 0.0, 2.5]]).T  # RAS columns per voxel step
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = axes, (12.5, -30.25, 40.0)
    values = np.arange(4 * 5 * 3, dtype=np.int16).reshape(4, 5, 3)  # nibabel order: i, j, k
    nib.save(nib.Nifti1Image(values, affine), tmp_path / "ras.nii.gz")
    written = nifti_to_dicom(tmp_path / "ras.nii.gz", tmp_path / "CT", Modality.CT, "LPS1")
    lps = np.diag([-1.0, -1.0, 1.0])
    first, last = pydicom.dcmread(written.files[0]), pydicom.dcmread(written.files[-1])
    row, col, slice_axis = (lps @ axes[:, i] / np.linalg.norm(axes[:, i]) for i in range(3))
    assert np.allclose([float(v) for v in first.ImageOrientationPatient], [*row, *col], atol=1e-6)
    # The voxel axes (-y, +x, +z in LPS) are right-handed: InstanceNumber 1 is voxel k = 0.
    assert not written.reversed_slices and np.allclose(np.cross(row, col), slice_axis)
    assert np.allclose([float(v) for v in first.ImagePositionPatient], lps @ affine[:3, 3], atol=1e-4)
    assert np.allclose(
        [float(v) for v in last.ImagePositionPatient], lps @ (affine @ [0, 0, 2, 1])[:3], atol=1e-4
    )
    assert np.array_equal(first.pixel_array, values[:, :, 0].T)  # rows follow j, columns follow i


@pytest.mark.parametrize(
    ("modality", "geometry"),
    [("CT", "oblique"), ("CT", "flipped"), ("MR", "oblique-left-handed"), ("MR", "flipped-one-axis"),
     ("MR", "sagittal")],
)  # fmt: skip
def test_every_reader_reads_the_series_as_the_nifti(tmp_path: Path, modality: str, geometry: str) -> None:
    spec = NIFTI_GEOMETRIES[geometry]
    values = np.random.default_rng(7).integers(0, 4000, (spec.slices, spec.rows, spec.cols)).astype(np.uint16)
    image = write_nifti(spec, tmp_path / "image.nii.gz", values if modality == "MR" else None)
    written = nifti_to_dicom(tmp_path / "image.nii.gz", tmp_path / "out", Modality(modality), "GEO3")
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    assert written.reversed_slices == (np.linalg.det(direction) < 0)
    expected = sitk.Flip(image, [False, False, True]) if written.reversed_slices else image
    _reads_back_as(tmp_path / "out", modality, expected)
    ds = pydicom.dcmread(written.files[0])
    assert ds.SOPClassUID == (CTImageStorage if modality == "CT" else MRImageStorage)
    if modality == "MR":  # unsigned, and no Modality LUT where none is needed (MR Image has none)
        assert ds.PixelRepresentation == 0 and "RescaleSlope" not in ds


@pytest.mark.parametrize(
    ("modality", "step", "slope"), [("CT", 0.25, 0.25), ("MR", 0.1, 0.1), ("MR", 0.5, 0.5)]
)
def test_fractional_values_are_kept_exact_by_the_rescale_slope(
    tmp_path: Path, modality: str, step: float, slope: float
) -> None:
    spec = SeriesSpec(rows=8, cols=6, slices=4)
    steps = np.random.default_rng(3).integers(-4000, 12000, (4, 8, 6))
    values = (steps * step).astype(np.float32)
    image = write_nifti(spec, tmp_path / "float.nii.gz", values)
    written = nifti_to_dicom(tmp_path / "float.nii.gz", tmp_path / "out", Modality(modality), "F1")
    assert written.encoding.exact and written.encoding.slope == slope
    _reads_back_as(tmp_path / "out", modality, image)  # equal at the NIfTI's float32 precision


def test_values_beyond_16_bits_are_rescaled_and_the_loss_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    values = np.random.default_rng(5).normal(300.0, 80.0, (3, 8, 6)).astype(np.float32)
    write_nifti(SeriesSpec(rows=8, cols=6, slices=3), tmp_path / "float.nii.gz", values)
    with caplog.at_level(logging.WARNING, logger="iterseg.dicom.from_nifti"):
        written = nifti_to_dicom(tmp_path / "float.nii.gz", tmp_path / "out", Modality.MR, "F2")
    error = written.encoding.max_error
    assert 0 < error < 1e-2 and "off by up to" in caplog.text and "float.nii.gz" in caplog.text
    (series,) = find_image_series(tmp_path / "out", "MR")
    volume, _ = read_volume(series)
    assert np.max(np.abs(volume - values)) <= error * 1.001


def _no_output(tmp_path: Path, out: Path) -> None:
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


@pytest.mark.parametrize("dimension", [2, 4])
def test_images_that_are_not_3d_are_refused_and_nothing_written(tmp_path: Path, dimension: int) -> None:
    volume = sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int16))
    image = sitk.JoinSeries([volume, volume]) if dimension == 4 else volume[:, :, 0]
    sitk.WriteImage(image, str(tmp_path / "image.nii.gz"))
    with pytest.raises(DicomWriteError, match=rf"image\.nii\.gz: a {dimension}D image .* only 3D scalar"):
        nifti_to_dicom(tmp_path / "image.nii.gz", tmp_path / "out", Modality.CT, "P4")
    _no_output(tmp_path, tmp_path / "out")


def test_non_finite_values_and_bad_identifiers_are_refused(tmp_path: Path) -> None:
    values = np.zeros((3, 4, 5), np.float32)
    values[1, 2, 3] = np.nan
    # .mha: SimpleITK's NIfTI reader turns NaN into 0 before we see it
    write_nifti(SeriesSpec(rows=4, cols=5, slices=3), tmp_path / "nan.mha", values)
    write_nifti(SeriesSpec(rows=4, cols=5, slices=3), tmp_path / "ok.nii.gz")
    with pytest.raises(DicomWriteError, match=r"nan\.mha: the image holds NaN"):
        nifti_to_dicom(tmp_path / "nan.mha", tmp_path / "out", Modality.CT, "P5")
    bad: list[tuple[dict[str, Any], str]] = [
        ({"patient_id": " "}, "--patient-id"),
        ({"patient_id": "P5", "study_uid": "1.2.abc"}, "--study-uid '1.2.abc' is not a valid DICOM UID"),
        ({"patient_id": "P5", "accession": "A" * 17}, "--accession"),
        ({"patient_id": "P5", "study_date": "14.03.2026"}, "YYYYMMDD"),
    ]
    for arguments, message in bad:
        with pytest.raises(DicomWriteError, match=message):
            nifti_to_dicom(tmp_path / "ok.nii.gz", tmp_path / "out", Modality.CT, **arguments)
    _no_output(tmp_path, tmp_path / "out")


def test_a_non_empty_out_is_refused_without_force_and_replaced_with_it(tmp_path: Path) -> None:
    write_nifti(SeriesSpec(rows=4, cols=5, slices=3), tmp_path / "a.nii.gz")
    write_nifti(SeriesSpec(rows=4, cols=5, slices=2), tmp_path / "b.nii.gz")
    out = tmp_path / "out"
    first = nifti_to_dicom(tmp_path / "a.nii.gz", out, Modality.CT, "P6")
    with pytest.raises(DicomWriteError, match=r"out: the folder is not empty .* --force"):
        nifti_to_dicom(tmp_path / "b.nii.gz", out, Modality.CT, "P6")
    assert sorted(out.iterdir()) == sorted(first.files)
    second = nifti_to_dicom(tmp_path / "b.nii.gz", out, Modality.CT, "P6", force=True)
    assert sorted(out.iterdir()) == sorted(second.files) and len(second.files) == 2
    (series,) = find_image_series(out, "CT")
    assert series.series_uid == second.series_uid != first.series_uid
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(DicomWriteError, match="holds more than DICOM slices"):
        nifti_to_dicom(tmp_path / "a.nii.gz", out, Modality.CT, "P6", force=True)
    assert (out / "notes.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    nifti_to_dicom(tmp_path / "a.nii.gz", empty, Modality.CT, "P6")  # an empty folder is fine
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_a_uid_seed_makes_the_uids_reproducible(tmp_path: Path) -> None:
    write_nifti(SeriesSpec(rows=4, cols=5, slices=3), tmp_path / "a.nii.gz")
    runs = [nifti_to_dicom(tmp_path / "a.nii.gz", tmp_path / f"out{i}", Modality.CT, "P7", uid_seed="case7")
            for i in range(2)]  # fmt: skip
    uids = [[str(pydicom.dcmread(p).SOPInstanceUID) for p in run.files] for run in runs]
    assert uids[0] == uids[1] and len(set(uids[0])) == 3
    assert runs[0].study_uid == runs[1].study_uid and runs[0].series_uid == runs[1].series_uid


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_dciodvfy_finds_no_error(tmp_path: Path, modality: str) -> None:
    spec = NIFTI_GEOMETRIES["oblique"]
    values = np.arange(spec.slices * spec.rows * spec.cols, dtype=np.float32).reshape(
        spec.slices, spec.rows, -1
    )
    write_nifti(spec, tmp_path / "image.nii.gz", values * 0.5 if modality == "MR" else None)
    written = nifti_to_dicom(tmp_path / "image.nii.gz", tmp_path / "out", Modality(modality), **IDENTIFIERS)
    run = subprocess.run([str(BIN / "dciodvfy"), str(written.files[3])], capture_output=True, text=True)
    output = run.stdout + run.stderr
    assert ("CTImage" if modality == "CT" else "MRImage") in output
    assert [line for line in output.splitlines() if line.startswith("Error")] == [], output


def test_dcmqi_writes_a_seg_on_the_series_that_matches_the_labels(tmp_path: Path) -> None:
    import highdicom as hd
    from iterseg.rawdata.demo import run_itkimage2segimage

    spec = NIFTI_GEOMETRIES["oblique"]
    image = write_nifti(spec, tmp_path / "image.nii.gz")
    nifti_to_dicom(tmp_path / "image.nii.gz", tmp_path / "CT", Modality.CT, "QI1")
    mask = np.zeros((spec.slices, spec.rows, spec.cols), np.uint8)
    mask[2:7, 3:15, 4:11] = 1
    labels = sitk.GetImageFromArray(mask)
    labels.CopyInformation(image)
    sitk.WriteImage(labels, str(tmp_path / "mask.nii.gz"))
    code = {"CodeValue": "10200004", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Liver"}
    organ = {"CodeValue": "91772007", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Organ"}
    segment = {"labelID": 1, "SegmentLabel": "liver", "SegmentAlgorithmType": "MANUAL",
               "SegmentedPropertyCategoryCodeSequence": organ,
               "SegmentedPropertyTypeCodeSequence": code}  # fmt: skip
    meta = {"ContentCreatorName": "Slicer^Annotator", "ClinicalTrialSeriesID": "1",
            "ClinicalTrialTimePointID": "1", "SeriesDescription": "Segmentation", "SeriesNumber": "300",
            "InstanceNumber": "1", "ContentLabel": "SEGMENTATION", "ContentDescription": "test",
            "segmentAttributes": [[segment]]}  # fmt: skip
    seg = tmp_path / "dcmqi.dcm"
    run_itkimage2segimage([str(tmp_path / "mask.nii.gz")], tmp_path / "CT", meta, seg, "oblique series")
    (series,) = find_image_series(tmp_path / "CT", "CT")
    pixels = hd.seg.segread(seg).get_pixels_by_source_instance(
        source_sop_instance_uids=[str(ds.SOPInstanceUID) for ds in series.datasets],
        combine_segments=True,
        assert_missing_frames_are_empty=True,
        ignore_spatial_locations=True,  # dcmqi does not record that spatial locations are preserved
    )
    assert np.array_equal(np.asarray(pixels), mask)


def test_the_command_line_writes_the_series_once(tmp_path: Path) -> None:
    from iterseg.cli import app

    write_nifti(SeriesSpec(rows=6, cols=5, slices=3), tmp_path / "ct.nii.gz")
    command = [str(BIN / "iterseg"), "nifti-to-dicom", str(tmp_path / "ct.nii.gz"),
               "--out", str(tmp_path / "CT"), "--modality", "CT", "--patient-id", "CLI1",
               "--patient-name", "Doe^Jane", "--study-uid", STUDY_UID, "--study-description", "study",
               "--series-description", "series", "--accession", "A1"]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    (series,) = find_image_series(tmp_path / "CT", "CT")
    assert f"3 CT slices of series {series.series_uid}" in run.stdout
    ds = series.datasets[0]
    assert (ds.PatientID, str(ds.PatientName), ds.StudyInstanceUID, ds.AccessionNumber) == (
        "CLI1", "Doe^Jane", STUDY_UID, "A1"
    )  # fmt: skip
    assert (ds.StudyDescription, ds.SeriesDescription) == ("study", "series")
    again = subprocess.run(command, capture_output=True, text=True, check=False)
    assert again.returncode == 2 and "the folder is not empty" in again.stderr and "--force" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1 and "Traceback" not in again.stderr
    choices = app.build_parser()._subparsers._group_actions[0].choices["nifti-to-dicom"]  # type: ignore[union-attr]
    modality = next(a for a in choices._actions if a.dest == "modality")
    assert modality.choices == [m.value for m in Modality]
