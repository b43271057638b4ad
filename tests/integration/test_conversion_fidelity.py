"""Every label voxel that reaches nnU-Net is the voxel the annotator drew."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import REPO
from iterseg.convert.check import check_case
from iterseg.convert.snapshot import convert_snapshot
from iterseg.errors import ConversionError
from iterseg.rawdata.demo import annotated, make_phantom, phantom_arrays
from iterseg.roi import load_roi_yaml

pytestmark = pytest.mark.integration
ROI = REPO / "config" / "roi_demo.yaml"
DCMQI_PATIENTS = ["P001", "P005"]  # SEGs written by dcmqi's itkimage2segimage, as 3D Slicer saves them


def _truth(patient_id: str, scale: float) -> np.ndarray:
    _, masks = phantom_arrays(annotated(make_phantom(patient_id, int(patient_id[1:])), scale))
    label = np.zeros(next(iter(masks.values())).shape, np.uint8)
    for value, mask in enumerate(masks.values(), start=1):
        label[mask] = value
    return label


@pytest.fixture(scope="module")
def dcmqi_snapshot(demo_rawdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    snap = tmp_path_factory.mktemp("raw") / "2026-06-01__demo"
    for pid in DCMQI_PATIENTS:
        shutil.copytree(demo_rawdata / "2026-01-15__demo" / pid, snap / pid)
    return snap


def test_demo_seg_is_written_by_dcmqi_off_the_ct_grid(dcmqi_snapshot: Path) -> None:
    seg = pydicom.dcmread(next((dcmqi_snapshot / "P001" / "SEG").glob("*.dcm")), stop_before_pixels=True)
    assert seg.Manufacturer == "QIICR"  # dcmqi's signature
    ct = [pydicom.dcmread(p, stop_before_pixels=True) for p in (dcmqi_snapshot / "P001" / "CT").glob("*.dcm")]
    ct_z = {round(float(ds.ImagePositionPatient[2]), 6) for ds in ct}
    frame_z = {
        round(float(f.PlanePositionSequence[0].ImagePositionPatient[2]), 6)
        for f in seg.PerFrameFunctionalGroupsSequence
    }
    assert frame_z - ct_z, "dcmqi frames should sit off the CT positions by float rounding"


def test_external_seg_converts_to_exactly_its_source_label_map(dcmqi_snapshot: Path, tmp_path: Path) -> None:
    cases = convert_snapshot(dcmqi_snapshot, tmp_path / "out", ROI)
    for case in cases:
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / case.label)))
        truth = _truth(case.patient_id, 0.8 if case.patient_id == "P001" else 1.0)
        assert np.array_equal(label, truth), f"{case.patient_id}: {(label != truth).sum()} voxels differ"
        image = sitk.ReadImage(str(tmp_path / "out" / case.image))
        assert image.GetPixelID() == sitk.sitkInt16  # HU fit int16; GDCM reads this CT as int32
    report = json.loads((tmp_path / "out" / "check.json").read_text())
    assert report["mismatches"] == 0 and report["rois_compared"] == 4
    assert all(r["differing_voxels"] == 0 for r in report["rois"])


@pytest.fixture(scope="module")
def converted_first(demo_rawdata: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    out = tmp_path_factory.mktemp("conv") / "converted"
    return out, convert_snapshot(demo_rawdata / "2026-01-15__demo", out, ROI)


def _tamper_and_check(demo_rawdata: Path, out: Path, case, tmp_path: Path, tamper) -> list:
    image = sitk.ReadImage(str(out / case.label))
    array = tamper(sitk.GetArrayFromImage(image).copy())
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(image)
    path = tmp_path / "bad.nii.gz"
    sitk.WriteImage(bad, str(path))
    patient = demo_rawdata / "2026-01-15__demo" / case.patient_id
    annotation = next((patient / case.annotation_kind).glob("*.dcm"))
    return check_case(
        case.case_id,
        case.patient_id,
        path,
        sorted((patient / "CT").glob("*.dcm")),
        case.annotation_kind,
        annotation,
        load_roi_yaml(ROI),
        "sparse_mask",
    )


def _eroded(array: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    liver = array == 1
    array[liver & ~binary_erosion(liver)] = 0
    return array


def _shift_one_slice(array: np.ndarray) -> np.ndarray:
    """The liver's top slice lands one slice too high."""
    k = int(np.flatnonzero((array == 1).any(axis=(1, 2)))[-1])
    moved = array[k] == 1
    array[k][moved] = 0
    array[k + 1][moved] = 1
    return array


def _drop_one_slice(array: np.ndarray) -> np.ndarray:
    k = int(np.argmax((array > 0).sum(axis=(1, 2))))
    array[k] = 0
    return array


@pytest.mark.parametrize("kind", ["SEG", "RTSTRUCT"])
@pytest.mark.parametrize(
    "tamper", [_eroded, _shift_one_slice, _drop_one_slice], ids=["eroded", "shifted", "dropped"]
)
def test_check_fails_on_a_damaged_mask(
    demo_rawdata: Path, converted_first, tmp_path: Path, kind, tamper
) -> None:
    out, cases = converted_first
    case = next(c for c in cases if c.annotation_kind == kind)
    assert all(c.ok for c in _tamper_and_check(demo_rawdata, out, case, tmp_path, lambda a: a))
    checks = _tamper_and_check(demo_rawdata, out, case, tmp_path, tamper)
    liver = next(c for c in checks if c.label == "liver")
    assert not liver.ok and liver.beyond_tolerance > 0


def test_rtstruct_with_holes_and_several_contours_per_slice(demo_rawdata: Path, converted_first) -> None:
    out, cases = converted_first
    case = next(c for c in cases if c.annotation_kind == "RTSTRUCT")
    rt = pydicom.dcmread(
        next((demo_rawdata / "2026-01-15__demo" / case.patient_id / "RTSTRUCT").glob("*.dcm"))
    )
    per_slice: dict[tuple[int, str], int] = {}
    for roi in rt.ROIContourSequence:
        for contour in roi.ContourSequence:
            key = (int(roi.ReferencedROINumber), contour.ContourImageSequence[0].ReferencedSOPInstanceUID)
            per_slice[key] = per_slice.get(key, 0) + 1
    assert max(n for (roi, _), n in per_slice.items() if roi == 1) >= 2  # liver outline + holes
    assert max(n for (roi, _), n in per_slice.items() if roi == 2) >= 2  # two lesions on one slice
    report = json.loads((out / "check.json").read_text())
    assert report["mismatches"] == 0
    assert {r["annotation"] for r in report["rois"]} == {"SEG", "RTSTRUCT"}


def test_label_map_off_the_image_grid_is_a_clear_error(
    demo_rawdata: Path, converted_first, tmp_path: Path
) -> None:
    out, cases = converted_first
    case = cases[0]
    image = sitk.ReadImage(str(out / case.label))
    origin = list(image.GetOrigin())
    origin[0] += 5 * image.GetSpacing()[0]
    image.SetOrigin(origin)
    moved = tmp_path / "moved.nii.gz"
    sitk.WriteImage(image, str(moved))
    patient = demo_rawdata / "2026-01-15__demo" / case.patient_id
    with pytest.raises(ConversionError, match="not on the grid of its image series"):
        check_case(
            case.case_id,
            case.patient_id,
            moved,
            sorted((patient / "CT").glob("*.dcm")),
            case.annotation_kind,
            next((patient / case.annotation_kind).glob("*.dcm")),
            load_roi_yaml(ROI),
            "sparse_mask",
        )
