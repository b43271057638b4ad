"""The SEG exporter on a corpus of geometries, verified by highdicom, dcmqi and dciodvfy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from geometry_corpus import SeriesSpec, label_volume, rotation, write_series
from iterseg.dicom.geometry import series_grid
from iterseg.dicom.seg_writer import _grid_image, export_label_image
from iterseg.dicom.series import find_image_series
from iterseg.errors import SegExportError
from seg_checks import seg_label_map

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


_OBLIQUE = rotation(30, 20)
CORPUS = {
    "axial-increasing": SeriesSpec(),
    "axial-decreasing": SeriesSpec(slice_step=-2.5),
    "flipped": SeriesSpec(row_dir=(-1.0, 0.0, 0.0), col_dir=(0.0, -1.0, 0.0)),
    "sagittal": SeriesSpec(row_dir=(0.0, 1.0, 0.0), col_dir=(0.0, 0.0, -1.0)),
    "coronal": SeriesSpec(row_dir=(1.0, 0.0, 0.0), col_dir=(0.0, 0.0, -1.0)),
    "oblique": SeriesSpec(
        row_dir=tuple(np.round(_OBLIQUE[:, 0], 6)),  # type: ignore[arg-type]
        col_dir=tuple(np.round(_OBLIQUE[:, 1], 6)),  # type: ignore[arg-type]
    ),
    "non-square-pixels": SeriesSpec(rows=30, cols=16, pixel_spacing=(0.5, 1.25)),
    "messy-headers": SeriesSpec(messy=True),
    "single-slice": SeriesSpec(slices=1),
}
ROI = "liver: ['^liver$']\nspleen: ['^spleen$']\ntumour: ['^tumou?r$']\n"


def _labels_as_a_viewer_saves_them(
    folder: Path, series_uid: str, out: Path, reverse: bool = False
) -> np.ndarray:
    """Label image on the grid SimpleITK/GDCM reads the series with; returns its array."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), series_uid))
    image = reader.Execute()
    array = label_volume(sitk.GetArrayFromImage(image).shape)
    labels = sitk.GetImageFromArray(array)
    labels.CopyInformation(image)
    if reverse:  # the same voxels stored in the opposite slice order: must be resampled, exactly
        labels = sitk.Flip(labels, [False, False, True])
    sitk.WriteImage(labels, str(out))
    return array


def _expected(labels_file: Path, source: list[pydicom.Dataset]) -> np.ndarray:
    """The label slice at each source slice's position, found through physical space."""
    image = sitk.ReadImage(str(labels_file))
    array = sitk.GetArrayFromImage(image)
    slices = []
    for ds in source:
        first = [float(v) for v in ds.ImagePositionPatient]
        last_row = np.asarray(first) + (int(ds.Rows) - 1) * float(ds.PixelSpacing[0]) * np.asarray(
            ds.ImageOrientationPatient[3:], float
        )
        i0, i1 = (
            image.TransformPhysicalPointToIndex(first),
            image.TransformPhysicalPointToIndex(last_row.tolist()),
        )
        plane = array[i0[2]]
        if i1[1] < i0[1]:  # a reversed in-plane axis in the label file
            plane = plane[::-1]
        slices.append(plane)
    return np.stack(slices)


def _dcmqi_label_map(seg: Path, reference: object, tmp: Path) -> np.ndarray:
    out = tmp / "dcmqi"
    out.mkdir()
    run = subprocess.run(
        [
            str(BIN / "segimage2itkimage"),
            "--inputDICOM",
            str(seg),
            "--outputDirectory",
            str(out),
            "-t",
            "nifti",
            "-p",
            "s",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    result = np.zeros(sitk.GetArrayFromImage(reference).shape, np.uint8)
    for path in sorted(out.glob("s-*.nii.gz")):
        number = int(path.name.split("-")[1].split(".")[0])
        segment = sitk.Resample(
            sitk.ReadImage(str(path)), reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0
        )
        result[sitk.GetArrayFromImage(segment) > 0] = number  # segments 1..3 carry labels 1..3 here
    return result


def _dciodvfy_errors(seg: Path) -> list[str]:
    """dciodvfy's errors on the SEG's content; it cannot read deflated files, so inflate a copy."""
    ds = pydicom.dcmread(seg)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    inflated = seg.with_name("inflated.dcm")
    ds.save_as(inflated, enforce_file_format=True)
    run = subprocess.run([str(BIN / "dciodvfy"), str(inflated)], capture_output=True, text=True, check=False)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def _roi(tmp: Path) -> Path:
    path = tmp / "roi.yaml"
    path.write_text(ROI)
    return path


@pytest.mark.parametrize("reverse", [False, True], ids=["same-grid", "reversed-label-file"])
@pytest.mark.parametrize("name", list(CORPUS))
def test_export_is_pixel_exact_for_every_reader(tmp_path: Path, name: str, reverse: bool) -> None:
    spec = CORPUS[name]
    write_series(spec, tmp_path / "study" / "series")
    if name == "axial-increasing":  # a multi-series study folder: another series beside it
        write_series(SeriesSpec(rows=12, origin=(5.0, 5.0, 5.0)), tmp_path / "study" / "scout")
    labels_file = tmp_path / "labels.nii.gz"
    _labels_as_a_viewer_saves_them(tmp_path / "study" / "series", spec.series_uid, labels_file, reverse)
    seg = tmp_path / "out" / "seg.dcm"
    result = export_label_image(tmp_path / "study", labels_file, _roi(tmp_path), seg)
    assert result.series_uid == spec.series_uid
    if spec.slices > 1:  # a single slice's thickness is not a grid spacing SimpleITK agrees on
        assert result.resampled == reverse
    (series,) = [s for s in find_image_series(tmp_path / "study", "CT") if s.series_uid == spec.series_uid]
    source = list(series.datasets)
    expected = _expected(labels_file, source)
    assert expected.any() and set(np.unique(expected)) <= {0, 1, 2, 3}
    assert np.array_equal(seg_label_map(seg, source), expected), "highdicom read-back differs"
    reference = _grid_image(series_grid(series))
    assert np.array_equal(_dcmqi_label_map(seg, reference, tmp_path), expected), "dcmqi read-back differs"
    assert _dciodvfy_errors(seg) == []
    ds = pydicom.dcmread(seg)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.DeflatedExplicitVRLittleEndian
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == spec.series_uid
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["liver", "spleen", "tumour"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (SeriesSpec(tilt=0.8), "gantry tilt"),
        (SeriesSpec(drop_slice=4), "slice spacing is uneven"),
        (SeriesSpec(odd_orientation_slice=3), "mixed orientations"),
    ],
    ids=["gantry-tilt", "missing-slice", "mixed-orientation"],
)
def test_irregular_series_is_refused_and_nothing_written(
    tmp_path: Path, spec: SeriesSpec, message: str
) -> None:
    write_series(spec, tmp_path / "series")
    labels = sitk.GetImageFromArray(
        label_volume((spec.slices - (spec.drop_slice is not None), spec.rows, spec.cols))
    )
    sitk.WriteImage(labels, str(tmp_path / "labels.nii.gz"))
    with pytest.raises(SegExportError, match=message) as info:
        export_label_image(
            tmp_path / "series", tmp_path / "labels.nii.gz", _roi(tmp_path), tmp_path / "out" / "s.dcm"
        )
    assert spec.series_uid in str(info.value)
    assert not (tmp_path / "out").exists()


def test_cli_bad_input_is_one_line_and_non_zero(tmp_path: Path) -> None:
    spec = SeriesSpec()
    write_series(spec, tmp_path / "series")
    labels_file = tmp_path / "labels.nii.gz"
    array = _labels_as_a_viewer_saves_them(tmp_path / "series", spec.series_uid, labels_file)
    image = sitk.ReadImage(str(labels_file))
    array[0, 0, 0] = 7
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(image)
    sitk.WriteImage(bad, str(tmp_path / "bad.nii.gz"))
    garbage = tmp_path / "not-dicom"
    garbage.mkdir()
    (garbage / "slice1.dcm").write_bytes(b"\x00" * 300)
    write_series(SeriesSpec(tilt=0.8), tmp_path / "tilted")
    roi = _roi(tmp_path)
    cases = [
        ("series", "bad.nii.gz", "values [7] are not labels"),
        ("series", "missing.nii.gz", "not a readable label image"),
        ("not-dicom", "labels.nii.gz", "slice1.dcm: truncated or corrupt DICOM (named .dcm but not DICOM"),
        ("tilted", "labels.nii.gz", "gantry tilt"),
    ]
    for reference, labels, message in cases:
        run = subprocess.run(
            [str(BIN / "iterseg"), "export-seg", "--reference", str(tmp_path / reference),
             "--labels", str(tmp_path / labels), "--roi-yaml", str(roi), "--out", str(tmp_path / "out.dcm")],
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        assert run.returncode == 2 and message in run.stderr, (reference, labels, run.stderr)
        assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr
        assert not (tmp_path / "out.dcm").exists()


def test_segments_are_coded_coloured_and_overridable(tmp_path: Path) -> None:
    spec = SeriesSpec()
    write_series(spec, tmp_path / "series")
    labels_file = tmp_path / "labels.nii.gz"
    _labels_as_a_viewer_saves_them(tmp_path / "series", spec.series_uid, labels_file)
    roi = tmp_path / "roi.yaml"
    roi.write_text(
        "liver: ['^liver$']\n"
        "spleen: {patterns: ['^spleen$'], colour: [10, 20, 30]}\n"
        "GTV_boost:\n"
        "  patterns: ['^boost$']\n"
        "  code: {value: '228793007', scheme: SCT, meaning: Planning target volume}\n"
        "  category: {value: '49755003', scheme: SCT, meaning: Morphologically Altered Structure}\n"
    )
    seg_file = tmp_path / "seg.dcm"
    export_label_image(
        tmp_path / "series", labels_file, roi, seg_file, algorithm_version="2026-03-02 Dataset902"
    )
    seg = pydicom.dcmread(seg_file)
    by_label = {s.SegmentLabel: s for s in seg.SegmentSequence}
    assert by_label["liver"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    assert by_label["liver"].SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91772007"  # organ
    assert by_label["spleen"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "78961009"
    boost = by_label["GTV_boost"]
    assert boost.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Planning target volume"
    assert boost.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    import highdicom as hd

    colours = {
        s.SegmentLabel: hd.color.CIELabColor.from_dicom_value(s.RecommendedDisplayCIELabValue).to_rgb()
        for s in seg.SegmentSequence
    }
    assert tuple(colours["spleen"]) == pytest.approx((10, 20, 30), abs=1)
    for segment in seg.SegmentSequence:
        (algorithm,) = segment.SegmentationAlgorithmIdentificationSequence
        assert algorithm.AlgorithmName == "iterseg" and algorithm.AlgorithmVersion == "2026-03-02 Dataset902"
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
    assert seg.PatientID == "GEO001" and seg.StudyInstanceUID == spec.study_uid
    assert seg.SeriesInstanceUID != spec.series_uid and seg.StudyInstanceUID == spec.study_uid
    assert _dciodvfy_errors(seg_file) == []


def test_labelmap_type_round_trips(tmp_path: Path) -> None:
    spec = SeriesSpec(row_dir=(0.0, 1.0, 0.0), col_dir=(0.0, 0.0, -1.0))
    write_series(spec, tmp_path / "series")
    labels_file = tmp_path / "labels.nii.gz"
    _labels_as_a_viewer_saves_them(tmp_path / "series", spec.series_uid, labels_file)
    seg = tmp_path / "seg.dcm"
    from iterseg.dicom.seg_writer import SegType

    export_label_image(tmp_path / "series", labels_file, _roi(tmp_path), seg, seg_type=SegType.LABELMAP)
    assert pydicom.dcmread(seg, stop_before_pixels=True).SegmentationType == "LABELMAP"
    (series,) = find_image_series(tmp_path / "series", "CT")
    assert np.array_equal(
        seg_label_map(seg, list(series.datasets)), _expected(labels_file, list(series.datasets))
    )
