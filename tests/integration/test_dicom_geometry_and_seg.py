from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from geometry_corpus import NIFTI_GEOMETRIES, label_volume, write_nifti
from iterseg.dicom.seg_writer import export_seg
from iterseg.dicom.series import find_image_series, read_volume, sort_by_position
from iterseg.errors import DicomReadError
from iterseg.rawdata.demo import SLICE_THICKNESS, make_phantom, phantom_arrays, stored_values, write_ct_series
from seg_checks import frame_positions_on_source_slices, referenced_series, seg_label_map

pytestmark = pytest.mark.integration

LABELS = {"background": 0, "liver": 1, "tumour": 2}


def _flip(folder: Path) -> None:
    """Rewrite a series with rows pointing -y: the slice normal becomes -z."""
    for path in folder.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, -1.0, 0.0]
        ds.save_as(path)


@pytest.mark.parametrize("flipped", [False, True])
def test_slices_sorted_by_normal_not_by_name_or_instance_number(tmp_path: Path, flipped: bool) -> None:
    write_ct_series(make_phantom("P900", 900), tmp_path / "CT")
    if flipped:
        _flip(tmp_path / "CT")
    (series,) = find_image_series(tmp_path, "CT")
    z = [float(ds.ImagePositionPatient[2]) for ds in series.datasets]
    assert z == sorted(z, reverse=flipped)
    names = [f.name for f in series.files]
    numbers = [int(ds.InstanceNumber) for ds in series.datasets]
    assert names != sorted(names)  # the demo names files by hash
    assert numbers == sorted(numbers, reverse=not flipped)  # and numbers run against position
    volume, geometry = read_volume(series)
    hu, _ = phantom_arrays(make_phantom("P900", 900))
    expected = stored_values(hu).astype(np.int32) - 1024
    assert np.array_equal(volume, expected[::-1] if flipped else expected)
    assert geometry["spacing"][2] == pytest.approx(SLICE_THICKNESS)


def test_duplicate_slice_position_is_an_error(tmp_path: Path) -> None:
    datasets = write_ct_series(make_phantom("P901", 901), tmp_path)
    files = [tmp_path / f"{i}.dcm" for i in range(len(datasets))]
    datasets[3].ImagePositionPatient = list(datasets[4].ImagePositionPatient)
    with pytest.raises(DicomReadError, match="share one position"):
        sort_by_position(datasets, files)


@pytest.mark.parametrize("flipped", [False, True])
def test_seg_round_trip_is_voxel_exact(tmp_path: Path, flipped: bool) -> None:
    phantom = make_phantom("P902", 902)
    write_ct_series(phantom, tmp_path / "CT")
    if flipped:
        _flip(tmp_path / "CT")
    (series,) = find_image_series(tmp_path / "CT", "CT")
    _, masks = phantom_arrays(phantom)
    label_map = np.zeros(masks[next(iter(masks))].shape, np.uint8)
    for value, mask in enumerate(masks.values(), start=1):
        label_map[mask] = value
    if flipped:
        label_map = label_map[::-1].copy()  # the label map follows the sorted series
    seg_path = tmp_path / "out" / "case.dcm"
    export_seg(label_map, series.datasets, LABELS, seg_path, "test", "test model")
    assert np.array_equal(seg_label_map(seg_path, series.datasets), label_map)
    assert frame_positions_on_source_slices(seg_path, series.datasets)
    assert referenced_series(seg_path) == series.series_uid
    seg = pydicom.dcmread(seg_path)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "tumour"]
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"  # liver
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    # empty slices carry no frame
    assert len(seg.PerFrameFunctionalGroupsSequence) < 2 * len(series.datasets)


def test_empty_prediction_still_exports(tmp_path: Path) -> None:
    write_ct_series(make_phantom("P903", 903), tmp_path / "CT")
    (series,) = find_image_series(tmp_path / "CT", "CT")
    label_map = np.zeros((len(series.datasets), 64, 64), np.uint8)
    seg_path = tmp_path / "empty.dcm"
    export_seg(label_map, series.datasets, LABELS, seg_path, "test", "test model")
    assert not seg_label_map(seg_path, series.datasets).any()


def test_seg_options_set_the_transfer_syntax_and_keep_empty_frames(tmp_path: Path) -> None:
    from iterseg.dicom.seg_options import SegOptions, SegTransferSyntax

    write_ct_series(make_phantom("P904", 904), tmp_path / "CT")
    (series,) = find_image_series(tmp_path / "CT", "CT")
    label_map = np.zeros((len(series.datasets), 64, 64), np.uint8)
    label_map[3:6, 20:30, 20:30] = 1
    default, plain = tmp_path / "default.dcm", tmp_path / "plain.dcm"
    export_seg(label_map, series.datasets, LABELS, default, "test", "test model")
    options = SegOptions(SegTransferSyntax.EXPLICIT_VR_LITTLE_ENDIAN, omit_empty_frames=False)
    export_seg(label_map, series.datasets, LABELS, plain, "test", "test model", options=options)
    deflated, explicit = pydicom.dcmread(default), pydicom.dcmread(plain)
    assert deflated.file_meta.TransferSyntaxUID == pydicom.uid.DeflatedExplicitVRLittleEndian
    assert explicit.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert int(deflated.NumberOfFrames) == 3  # the liver's three slices; the empty tumour has none
    assert int(explicit.NumberOfFrames) == 2 * len(series.datasets)  # every slice, every segment
    for path in (default, plain):
        assert np.array_equal(seg_label_map(path, series.datasets), label_map)
        assert frame_positions_on_source_slices(path, series.datasets)


CORPUS_LABELS = {"background": 0, "liver": 1, "spleen": 2, "tumour": 3}


def _gdcm_read(folder: Path) -> Any:
    """The series as SimpleITK reads it with GDCM's own file order."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


@pytest.mark.parametrize("name", list(NIFTI_GEOMETRIES))
def test_nifti_to_dicom_series_is_the_nifti_and_its_seg_round_trips(tmp_path: Path, name: str) -> None:
    import SimpleITK as sitk
    from iterseg.dicom.from_nifti import Modality, nifti_to_dicom
    from iterseg.dicom.geometry import series_grid
    from iterseg.dicom.seg_writer import export_for_series

    image = write_nifti(NIFTI_GEOMETRIES[name], tmp_path / "image.nii.gz")
    written = nifti_to_dicom(tmp_path / "image.nii.gz", tmp_path / "CT", Modality.CT, "GEO002")
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    assert written.reversed_slices == (np.linalg.det(direction) < 0)
    # DICOM grids are right-handed: a left-handed NIfTI comes back in reverse slice order, same voxels
    expected = sitk.Flip(image, [False, False, True]) if written.reversed_slices else image
    (series,) = find_image_series(tmp_path / "CT", "CT")
    grid = series_grid(series)
    assert grid.size == expected.GetSize()
    assert np.allclose(grid.spacing, expected.GetSpacing(), atol=1e-4)
    assert np.allclose(grid.origin, expected.GetOrigin(), atol=1e-4)
    assert np.allclose(grid.direction, expected.GetDirection(), atol=1e-6)
    volume, _ = read_volume(series)
    assert np.array_equal(volume, sitk.GetArrayFromImage(expected))  # HU exact
    gdcm = _gdcm_read(tmp_path / "CT")
    assert np.array_equal(sitk.GetArrayFromImage(gdcm), sitk.GetArrayFromImage(expected))
    assert np.allclose(gdcm.GetOrigin(), expected.GetOrigin(), atol=1e-4)
    assert np.allclose(gdcm.GetDirection(), expected.GetDirection(), atol=1e-6)
    # the prediction lies on the NIfTI's grid, as nnU-Net writes it
    array = label_volume(sitk.GetArrayFromImage(image).shape)
    labels = sitk.GetImageFromArray(array)
    labels.CopyInformation(image)
    seg_path = tmp_path / "seg.dcm"
    result = export_for_series(series, labels, CORPUS_LABELS, seg_path, "labels.nii.gz")
    assert result.resampled == written.reversed_slices
    on_series = array[::-1] if written.reversed_slices else array
    assert np.array_equal(seg_label_map(seg_path, series.datasets), on_series)
    assert frame_positions_on_source_slices(seg_path, series.datasets)
    assert referenced_series(seg_path) == written.series_uid
