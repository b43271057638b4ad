"""DICOM as scanners, planning systems and viewers write it converts exactly, or is refused clearly.

Every case is built from pydicom's real CT/MR slices (``real_dicom``) into
``<tmp>/rawdata/ds/<date>__ds/<patient>/``. A converted case must give the ground truth voxel
for voxel, agree with an independent reader (highdicom and dcmqi for SEG, a matplotlib even-odd
rasteriser for RTSTRUCT) and pass the conversion check; a refused one must name the offending
file on one line with the cause and the fix. Rawdata is never changed, either way.
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import real_dicom as rd
import SimpleITK as sitk
from conftest import tree_digest
from iterseg.convert.snapshot import convert_snapshot
from iterseg.errors import ConversionError, SnapshotError
from iterseg.skipped import BadCasePolicy, read_skipped

pytestmark = pytest.mark.integration

# Fragments the refusals and warnings must carry (matched ignoring case), on the line that names
# the offending file. A fix of None is not asserted.
MISSING_SLICES_CAUSE = ("3 slice(s)", "not in image series")
MISSING_SLICES_FIX = "add the missing slices"
UNEVEN_SPACING_CAUSE = "slice spacing is uneven"
UNEVEN_SPACING_FIX = "complete series"
MIXED_PIXEL_SIZE_CAUSE = "pixel size"
MIXED_PIXEL_SIZE_FIX: str | None = "re-export it"
SEG_PIXEL_SPACING_CAUSE = "pixel spacing"
SEG_PIXEL_SPACING_FIX: str | None = "re-export the seg"
EMPTY_SEGMENT_WARNING = "empty"

OUTSIDE = rd.OUTSIDE


@dataclass(frozen=True)
class Expect:
    """A corpus case: how to build it and what converting it must give."""

    build: Callable[[Path], rd.Built]
    patient: str
    refused: tuple[str | None, ...] = ()  # cause and fix fragments; empty: it converts
    warns: str | None = None  # fragment of a warning that also names the annotation file


CORPUS: dict[str, Expect] = {
    "philips-dicomdir-no-extensions-no-preamble": Expect(rd.philips_dicomdir_export, "PHIL01"),
    "mr-seg-named-label.seg": Expect(rd.seg_named_label_seg, "MRSEG01"),
    "dcmqi-slicer-seg": Expect(rd.dcmqi_slicer_seg, "SLICER01"),
    "seg-empty-first-segment": Expect(rd.seg_empty_first_segment, "EMPTYSEG01", warns=EMPTY_SEGMENT_WARNING),
    "highdicom-labelmap-seg": Expect(rd.labelmap_seg, "LABELMAP01"),
    "rtstruct-ring-body-lung-holes": Expect(rd.rtstruct_holes, "RING01"),
    "rtstruct-on-3-missing-slices": Expect(
        rd.rtstruct_on_missing_slices, "MISSING01", refused=(*MISSING_SLICES_CAUSE, MISSING_SLICES_FIX)
    ),
    "ct-empty-specific-character-set": Expect(rd.empty_charset_ct, "CHARSET01"),
    "ct-missing-middle-slice": Expect(
        rd.missing_middle_slice, "GAP01", refused=(UNEVEN_SPACING_CAUSE, UNEVEN_SPACING_FIX)
    ),
    "ct-mixed-pixel-spacing": Expect(
        rd.mixed_pixel_spacing, "MIXED01", refused=(MIXED_PIXEL_SIZE_CAUSE, MIXED_PIXEL_SIZE_FIX)
    ),
    "seg-pixel-spacing-unlike-ct": Expect(
        rd.seg_pixel_spacing_unlike_ct, "SPACING01", refused=(SEG_PIXEL_SPACING_CAUSE, SEG_PIXEL_SPACING_FIX)
    ),
}


# --- independent readers ----------------------------------------------------------------------


def highdicom_label_map(seg_path: Path, datasets: list[pydicom.Dataset], labels: dict) -> np.ndarray:
    """The SEG read by highdicom onto ``datasets``, as a label map in ROI YAML values."""
    import highdicom as hd

    seg = hd.seg.segread(seg_path)
    names = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    numbers = sorted(n for n in names if n > 0)  # a LABELMAP SEG declares segment 0, background
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[str(ds.SOPInstanceUID) for ds in datasets],
        segment_numbers=numbers,
        combine_segments=False,
        ignore_spatial_locations=True,
        assert_missing_frames_are_empty=True,
    )
    return rd.label_map({names[n]: pixels[..., i] > 0 for i, n in enumerate(numbers)}, labels)


def dcmqi_label_map(seg_path: Path, datasets: list[pydicom.Dataset], labels: dict, work: Path) -> np.ndarray:
    """The SEG read by dcmqi's segimage2itkimage, each output put on the series grid."""
    work.mkdir(parents=True)
    run = subprocess.run(
        [
            str(rd.BIN / "segimage2itkimage"),
            "--inputDICOM",
            str(seg_path),
            "--outputDirectory",
            str(work),
            "--outputType",
            "nifti",
            "--prefix",
            "x",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    meta = json.loads((work / "x-meta.json").read_text())
    masks: dict[str, np.ndarray] = {}
    for number, attributes in enumerate(meta["segmentAttributes"], start=1):
        array = rd.on_series_grid(sitk.ReadImage(str(work / f"x-{number}.nii.gz")), datasets, outside=0)
        for attribute in attributes:
            name = attribute["SegmentLabel"]
            masks[name] = masks.get(name, np.zeros(array.shape, bool)) | (array == attribute["labelID"])
    return rd.label_map(masks, labels)


def matplotlib_label_map(rt_path: Path, datasets: list[pydicom.Dataset], labels: dict) -> np.ndarray:
    """The RTSTRUCT rasterised here: pixel centres inside each contour, XOR over a slice's contours."""
    from matplotlib.path import Path as PolygonPath

    rt = pydicom.dcmread(rt_path)
    names = {int(r.ROINumber): str(r.ROIName) for r in rt.StructureSetROISequence}
    first = datasets[0]
    iop = np.asarray(first.ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    spacing = np.asarray(first.PixelSpacing, float)
    positions = np.array([np.dot(np.asarray(ds.ImagePositionPatient, float), normal) for ds in datasets])
    rows, cols = int(first.Rows), int(first.Columns)
    centres = np.stack(np.mgrid[0:rows, 0:cols], axis=-1).reshape(-1, 2).astype(float)
    masks: dict[str, np.ndarray] = {}
    for roi in rt.ROIContourSequence:
        mask = masks.setdefault(
            names[int(roi.ReferencedROINumber)], np.zeros((len(datasets), rows, cols), bool)
        )
        for contour in roi.ContourSequence:
            points = np.asarray(contour.ContourData, float).reshape(-1, 3)
            k = int(np.argmin(np.abs(positions - np.dot(points[0], normal))))
            assert abs(positions[k] - np.dot(points[0], normal)) < 1e-3, "contour off the image slices"
            offset = points - np.asarray(datasets[k].ImagePositionPatient, float)
            rc = np.stack([offset @ iop[3:] / spacing[0], offset @ iop[:3] / spacing[1]], axis=1)
            polygon = PolygonPath(np.vstack([rc, rc[:1]]), closed=True)
            mask[k] ^= polygon.contains_points(centres).reshape(rows, cols)
    return rd.label_map(masks, labels)


# --- assertions -------------------------------------------------------------------------------


def refusal_line(message: str, names: list[str], fragments: tuple[str | None, ...]) -> str | None:
    """The first line naming one of ``names`` and carrying every fragment (ignoring case)."""
    wanted = [f.lower() for f in fragments if f]
    for line in message.splitlines():
        if any(name in line for name in names) and all(f in line.lower() for f in wanted):
            return line
    return None


def assert_matches(got: np.ndarray, built: rd.Built, what: str) -> None:
    assert got.shape == built.truth.shape, f"{what}: shape {got.shape}, expected {built.truth.shape}"
    assert not (got == OUTSIDE).any(), f"{what}: does not cover the image series"
    beyond = (got != built.truth) & ~built.tolerance
    for value, name in enumerate(built.labels, start=1):
        assert not (beyond & ((got == value) | (built.truth == value))).any(), (
            f"{what}: label {name}: {int((beyond & (built.truth == value)).sum())} voxel(s) lost, "
            f"{int((beyond & (got == value)).sum())} added beyond the contour-line tolerance"
        )
    assert not beyond.any()


def convert(snapshot: Path, out: Path, roi_yaml: Path, modality: str) -> tuple[list | None, Exception | None]:
    """The cases, or the refusal (ConversionError/SnapshotError); any other exception fails the test.

    With on_bad_case fail, so that every bad case is a refusal to read (skipping is tested below).
    """
    try:
        return convert_snapshot(
            snapshot, out, roi_yaml, modality=modality, on_bad_case=BadCasePolicy.FAIL
        ), None
    except (ConversionError, SnapshotError) as exc:
        return None, exc
    except Exception as exc:
        raise AssertionError(
            f"convert_snapshot crashed with {type(exc).__name__} instead of converting or refusing "
            f"with a ConversionError/SnapshotError: {exc}"
        ) from exc


def build_snapshot(tmp_path: Path) -> tuple[Path, Path]:
    rawdata = tmp_path / "rawdata"
    return rawdata, rawdata / "ds" / rd.SNAPSHOT


# --- the corpus -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CORPUS))
def test_real_dicom_corpus(name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    expect = CORPUS[name]
    rawdata, snapshot = build_snapshot(tmp_path)
    built = expect.build(snapshot / expect.patient)
    roi_yaml = rd.write_roi_yaml(built.labels, tmp_path / "roi.yaml")
    before = tree_digest(rawdata)
    caplog.set_level(logging.INFO, logger="iterseg")
    out = tmp_path / "converted"
    cases, error = convert(snapshot, out, roi_yaml, built.modality)
    assert tree_digest(rawdata) == before, "rawdata was changed"

    if expect.refused:
        assert error is not None, f"{name}: converted, but must be refused naming {built.offending[-1]}"
        line = refusal_line(str(error), built.offending, expect.refused)
        assert line is not None, (
            f"{name}: no line names {built.offending[-1]} with {[f for f in expect.refused if f]}:\n{error}"
        )
        return

    assert error is None, f"{name}: refused, but must convert:\n{error}"
    assert cases is not None and len(cases) == 1, cases
    (case,) = cases
    assert case.patient_id == expect.patient and case.annotation_kind == built.kind
    label = sitk.ReadImage(str(out / case.label))
    assert np.prod(label.GetSize()) == built.truth.size
    assert_matches(rd.on_series_grid(label, built.series.datasets), built, "converted label")
    report = json.loads((out / "check.json").read_text())
    assert report["mismatches"] == 0, report

    if built.kind == "SEG":
        assert_matches(
            highdicom_label_map(built.annotation, built.series.datasets, built.labels), built, "highdicom"
        )
        dcmqi = dcmqi_label_map(built.annotation, built.series.datasets, built.labels, tmp_path / "dcmqi")
        assert_matches(dcmqi, built, "dcmqi")
    else:
        assert_matches(
            matplotlib_label_map(built.annotation, built.series.datasets, built.labels), built, "matplotlib"
        )

    if expect.warns:
        warnings = [
            r.getMessage()
            for r in caplog.records
            if r.name.startswith("iterseg") and r.levelno >= logging.WARNING
        ]
        assert any(expect.warns in w.lower() and built.annotation.name in w for w in warnings), (
            f"no warning with {expect.warns!r} and {built.annotation.name}: {warnings}"
        )


# --- focused tests ----------------------------------------------------------------------------


def test_the_corpus_files_are_what_real_exports_look_like(tmp_path: Path) -> None:
    """The builders write what they claim (this test checks the inputs, not the converter)."""
    import highdicom as hd
    from pydicom.errors import InvalidDicomError

    philips = rd.philips_dicomdir_export(tmp_path / "PHIL01")
    files = [p for p in (tmp_path / "PHIL01").rglob("*") if p.is_file()]
    assert (tmp_path / "PHIL01" / "DICOMDIR").is_file()
    assert all(p.suffix == "" for p in files) and len(files) == 12  # 10 CT + SEG + DICOMDIR
    headerless = [p for p in files if p.read_bytes()[128:132] != b"DICM"]
    assert len(headerless) == 1 and headerless[0] in philips.series.files
    with pytest.raises(InvalidDicomError):
        pydicom.dcmread(headerless[0])
    assert pydicom.dcmread(headerless[0], force=True).SOPInstanceUID in {
        ds.SOPInstanceUID for ds in philips.series.datasets
    }
    ct = pydicom.dcmread(philips.series.files[0])
    assert ct.Manufacturer == "GE MEDICAL SYSTEMS" and (0x0009, 0x0010) in ct  # vendor headers kept
    numbers = [int(ds.InstanceNumber) for ds in philips.series.datasets]
    assert numbers == sorted(numbers, reverse=True)  # GE numbers against the normal

    mr = rd.seg_named_label_seg(tmp_path / "MRSEG01")
    assert mr.annotation.name == "label.seg" and mr.modality == "MR"
    slicer = rd.dcmqi_slicer_seg(tmp_path / "SLICER01")
    assert pydicom.dcmread(slicer.annotation, stop_before_pixels=True).Manufacturer == "QIICR"
    labelmap = rd.labelmap_seg(tmp_path / "LABELMAP01")
    assert (
        pydicom.dcmread(labelmap.annotation, stop_before_pixels=True).SOPClassUID == rd.LABELMAP_SEG_SOP_CLASS
    )

    empty = rd.seg_empty_first_segment(tmp_path / "EMPTYSEG01")
    seg = hd.seg.segread(empty.annotation)
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == [1, 2]
    assert seg.SegmentSequence[0].SegmentLabel == "Liver"
    frame_segments = {
        int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        for f in seg.PerFrameFunctionalGroupsSequence
    }
    assert frame_segments == {2} and not (empty.truth == 1).any() and (empty.truth == 2).any()

    charset = rd.empty_charset_ct(tmp_path / "CHARSET01")
    assert pydicom.dcmread(charset.series.files[0], stop_before_pixels=True).SpecificCharacterSet == ""
    assert b"\x08\x00\x05\x00CS\x00\x00" in charset.series.files[0].read_bytes()  # present, length 0

    rt = rd.rtstruct_on_missing_slices(tmp_path / "MISSING01")
    ds = pydicom.dcmread(rt.annotation)
    present = {str(d.SOPInstanceUID) for d in rt.series.datasets}
    listed = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    listed = {
        str(i.ReferencedSOPInstanceUID) for i in listed.RTReferencedSeriesSequence[0].ContourImageSequence
    }
    drawn = {
        str(c.ContourImageSequence[0].ReferencedSOPInstanceUID)
        for roi in ds.ROIContourSequence
        for c in roi.ContourSequence
    }
    assert len(listed - present) == 3 and len(drawn - present) == 3

    holes = rd.rtstruct_holes(tmp_path / "RING01")
    k = 2  # a ring slice: outer contour and hole on it, the hole background
    assert holes.truth[k, 38, 32] == 0 and holes.truth[k, 22, 16] == 1
    assert (holes.truth[7] == 2).sum() == 2 * 60 * 35  # the lungs fill BODY's holes
    assert holes.tolerance.any() and not holes.tolerance[:, :, :64].any()  # only the circle's line
    assert_matches(
        matplotlib_label_map(holes.annotation, holes.series.datasets, holes.labels), holes, "matplotlib"
    )

    gap = rd.missing_middle_slice(tmp_path / "GAP01")
    z = [float(d.ImagePositionPatient[2]) for d in gap.series.datasets]
    assert sorted(set(np.round(np.diff(z), 3))) == [5.0, 10.0]


def test_check_cannot_miss_a_filled_three_pixel_hole(tmp_path: Path) -> None:
    """The conversion check compares RTSTRUCT holes exactly where no contour line passes a pixel."""
    from iterseg.convert.check import check_case
    from iterseg.roi import load_roi_yaml

    built = rd.rtstruct_holes(tmp_path / "RING01")
    roi_yaml = rd.write_roi_yaml(built.labels, tmp_path / "roi.yaml")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in built.series.files])
    grid = reader.Execute()  # the CT's own grid, as the converter writes the label map on it

    def check(array: np.ndarray, name: str) -> list:
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(grid)
        path = tmp_path / name
        sitk.WriteImage(image, str(path))
        assert np.array_equal(rd.on_series_grid(image, built.series.datasets), array)
        return check_case(
            "RING01_case",
            "RING01",
            path,
            built.series.files,
            "RTSTRUCT",
            built.annotation,
            load_roi_yaml(roi_yaml),
            "sparse_mask",
        )

    correct = check(built.truth.copy(), "correct.nii.gz")
    assert correct and all(c.ok for c in correct), correct
    filled = built.truth.copy()
    r0, r1, c0, c1 = rd.NARROW_HOLE
    hole = filled[rd.NARROW_HOLE_SLICE, int(r0 + 0.5) : int(r1 + 0.5), int(c0 + 0.5) : int(c1 + 0.5)]
    assert hole.shape[1] == 3 and not hole.any()  # the hole is 3 pixels wide, background
    hole[...] = list(built.labels).index("ring") + 1
    bad = check(filled, "filled.nii.gz")
    ring = next(c for c in bad if c.label == "ring")
    assert not ring.ok and ring.beyond_tolerance > 0, ring


def test_empty_charset_ct_label_exports_back_to_a_seg(tmp_path: Path) -> None:
    """The converted label map of a CT with an empty (0008,0005) goes back out as a readable SEG."""
    from iterseg.dicom.seg_writer import export_label_image

    rawdata, snapshot = build_snapshot(tmp_path)
    built = rd.empty_charset_ct(snapshot / "CHARSET01")
    roi_yaml = rd.write_roi_yaml(built.labels, tmp_path / "roi.yaml")
    before = tree_digest(rawdata)
    out = tmp_path / "converted"
    cases, error = convert(snapshot, out, roi_yaml, "CT")
    assert error is None, str(error)
    assert cases is not None and len(cases) == 1
    seg_path = tmp_path / "export" / "seg.dcm"
    try:
        export_label_image(built.series.folder, out / cases[0].label, roi_yaml, seg_path)
    except Exception as exc:
        raise AssertionError(f"export_label_image failed with {type(exc).__name__}: {exc}") from exc
    assert tree_digest(rawdata) == before
    assert np.array_equal(highdicom_label_map(seg_path, built.series.datasets, built.labels), built.truth)


def test_a_bad_case_is_named_and_the_good_case_beside_it_is_not(tmp_path: Path) -> None:
    rawdata, snapshot = build_snapshot(tmp_path)
    good = rd.good_seg_case(snapshot / "GOOD01")
    bad = rd.seg_pixel_spacing_unlike_ct(snapshot / "BADSPACING01", seg_name="bad_seg.dcm")
    roi_yaml = rd.write_roi_yaml(rd.SEG_ROIS, tmp_path / "roi.yaml")
    before = tree_digest(rawdata)
    _, error = convert(snapshot, tmp_path / "converted", roi_yaml, "CT")
    assert tree_digest(rawdata) == before
    assert error is not None, "the SEG whose pixel spacing differs from its CT's was converted"
    message = str(error)
    assert refusal_line(message, bad.offending, (SEG_PIXEL_SPACING_CAUSE, SEG_PIXEL_SPACING_FIX)), message
    # only the bad case's file: the good case's files are not named
    assert good.annotation.name not in message and str(good.series.folder) not in message, message


def test_on_bad_case_skip_converts_the_good_case_and_lists_the_bad_one(tmp_path: Path) -> None:
    rawdata, snapshot = build_snapshot(tmp_path)
    rd.good_seg_case(snapshot / "GOOD01")
    bad = rd.seg_pixel_spacing_unlike_ct(snapshot / "BADSPACING01", seg_name="bad_seg.dcm")
    roi_yaml = rd.write_roi_yaml(rd.SEG_ROIS, tmp_path / "roi.yaml")
    before = tree_digest(rawdata)
    cases = convert_snapshot(snapshot, tmp_path / "converted", roi_yaml, on_bad_case=BadCasePolicy.SKIP)
    assert tree_digest(rawdata) == before
    assert [c.patient_id for c in cases] == ["GOOD01"]
    skipped = read_skipped(tmp_path / "converted" / "skipped.json")
    assert [(s.stage, s.patient_id) for s in skipped] == [("convert", "BADSPACING01")]
    assert skipped[0].case.startswith("BADSPACING01_")
    assert refusal_line(skipped[0].message, bad.offending, (SEG_PIXEL_SPACING_CAUSE, SEG_PIXEL_SPACING_FIX))
