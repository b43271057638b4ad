"""Independent check of every converted label map against its DICOM annotation.

Every later model trains on what conversion produces, so each case is re-derived by another
implementation than the one that wrote it, from the file, and compared voxel by voxel:

- SEG: read with highdicom by each frame's *source-image reference* (the writer, ``seg_read``,
  places frames by their plane positions with pydicom); the converted map must be identical.
- RTSTRUCT: contours rasterised with scikit-image one polygon at a time, XOR-combined (even-odd,
  so inner contours are holes); the writer (``rtstruct_raster``) uses its own scanline fill.
  Rasterisers legitimately disagree on pixels whose centre lies on a contour line, so a
  difference is allowed only on a pixel the line passes through, in-plane, never one further:
  a filled hole two or more pixels wide, a missing, extra or shifted slice all fail.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from iterseg.dicom_series import read_dataset, sort_by_position
from iterseg.errors import ConversionError

logger = logging.getLogger(__name__)

RTSTRUCT_TOLERANCE = "differences only on pixels a contour line passes through (in-plane)"
_LINE_STEP = 0.2  # px between samples along a contour edge when marking the pixels it crosses


@dataclass(frozen=True)
class RoiCheck:
    """Outcome of comparing one label of one case."""

    case_id: str
    patient_id: str
    label: str
    annotation: str  # SEG or RTSTRUCT
    expected_voxels: int
    converted_voxels: int
    differing_voxels: int
    beyond_tolerance: int  # differing voxels not explained by rasterisation (always all for SEG)
    slices_missing: int  # slices where the annotation has the ROI and the conversion has not
    slices_extra: int  # slices with the ROI in the conversion but no contour/frame of it

    @property
    def ok(self) -> bool:
        """No difference beyond what the annotation kind tolerates, and the same slice extent."""
        return self.beyond_tolerance == 0 and self.slices_missing == 0 and self.slices_extra == 0


def _match_labels(names: dict[int, str], roi_labels: dict[str, list[str]]) -> dict[int, int]:
    """Segment/ROI number -> label value (1-based, ROI YAML order), as med-imagetools matches."""
    out: dict[int, int] = {}
    for number, name in names.items():
        for value, patterns in enumerate(roi_labels.values(), start=1):
            if any(re.fullmatch(p, name, flags=re.IGNORECASE) for p in patterns):
                out[number] = value
                break
    return out


def _draw(expected: np.ndarray, k: int, mask: np.ndarray, value: int, strategy: str) -> None:
    """Add one label's mask on slice ``k`` as med-imagetools' strategy defines."""
    if strategy == "region_mask":
        expected[k][mask] |= expected.dtype.type(2 ** (value - 1))
    else:  # sparse_mask and label_image: the later label wins (label_image has no overlap)
        expected[k][mask] = np.maximum(expected[k][mask], expected.dtype.type(value))


def _slice_index(label_image: object, source: Sequence[pydicom.Dataset], label_file: Path) -> list[int]:
    """Index along the label image's z axis of each source slice, from geometry alone."""
    indices = []
    size = label_image.GetSize()  # type: ignore[attr-defined]
    for ds in source:
        idx = label_image.TransformPhysicalPointToIndex([float(v) for v in ds.ImagePositionPatient])  # type: ignore[attr-defined]
        if idx[0] != 0 or idx[1] != 0 or not 0 <= idx[2] < size[2]:
            raise ConversionError(
                f"{label_file}: the converted label map is not on the grid of its image series "
                f"(slice {ds.SOPInstanceUID} maps to voxel {tuple(idx)}); the conversion cannot be "
                "checked, so nothing is trained on it. Report the case with its DICOM files."
            )
        indices.append(int(idx[2]))
    return indices


def expected_from_seg(
    seg_path: Path,
    source: Sequence[pydicom.Dataset],
    roi_labels: dict[str, list[str]],
    expected: np.ndarray,
    strategy: str,
) -> dict[int, np.ndarray]:
    """Draw the SEG into ``expected`` (slices in ``source`` order), read with highdicom.

    Returns label value -> slices holding any frame of it (all False for an empty segment).
    """
    import highdicom as hd

    seg = hd.seg.Segmentation.from_dataset(read_dataset(seg_path), copy=False)
    names = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    uids = [str(ds.SOPInstanceUID) for ds in source]
    drawn: dict[int, np.ndarray] = {}
    for number in sorted(names):  # one segment at a time: a volume per segment, not per SEG
        value = _match_labels({number: names[number]}, roi_labels).get(number)
        if value is None:
            continue
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=uids,
            segment_numbers=[number],
            combine_segments=False,
            # dcmqi (3D Slicer) omits SpatialLocationsPreserved; frames still reference their slices.
            ignore_spatial_locations=True,
            assert_missing_frames_are_empty=True,
        )[..., 0]
        mask = pixels > 0.5 if pixels.dtype.kind == "f" else pixels > 0
        del pixels
        for k in np.flatnonzero(mask.any(axis=(1, 2))):
            _draw(expected, int(k), mask[k], value, strategy)
        drawn[value] = drawn.get(value, np.zeros(len(source), bool)) | mask.any(axis=(1, 2))
    return drawn


def _line_pixels(r: np.ndarray, c: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (row, column) whose square a closed polygon's outline passes through."""
    r1, c1 = np.roll(r, -1), np.roll(c, -1)
    steps = np.maximum(np.ceil(np.hypot(r1 - r, c1 - c) / _LINE_STEP).astype(int), 1)
    t = np.concatenate([np.arange(n) / n for n in steps])
    edge = np.repeat(np.arange(len(r)), steps)
    rr = np.rint(r[edge] + t * (r1 - r)[edge]).astype(int)
    cc = np.rint(c[edge] + t * (c1 - c)[edge]).astype(int)
    keep = (rr >= 0) & (rr < rows) & (cc >= 0) & (cc < cols)
    return rr[keep], cc[keep]


def expected_from_rtstruct(
    rt_path: Path,
    source: Sequence[pydicom.Dataset],
    roi_labels: dict[str, list[str]],
    expected: np.ndarray,
    strategy: str,
) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Rasterise an RTSTRUCT into ``expected`` (slices in ``source`` order).

    Returns (label -> pixels its contour lines pass through, label -> slices holding a contour).
    """
    from skimage.draw import polygon

    rt = read_dataset(rt_path)
    names = {int(r.ROINumber): str(r.ROIName) for r in rt.StructureSetROISequence}
    to_label = _match_labels(names, roi_labels)
    first = source[0]
    rows, cols = int(first.Rows), int(first.Columns)
    iop = np.asarray(first.ImageOrientationPatient, float)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    spacing = np.asarray(first.PixelSpacing, float)  # (between rows, between columns)
    positions = np.array([np.dot(np.asarray(ds.ImagePositionPatient, float), normal) for ds in source])
    thickness = float(np.median(np.diff(positions))) if len(positions) > 1 else 1.0
    lines: dict[int, np.ndarray] = {}
    drawn: dict[int, np.ndarray] = {}
    # A later label's contour line also moves an earlier label's border where one label wins,
    # so those strategies share one band: also one volume instead of one per label.
    shared = None if strategy == "region_mask" else np.zeros(expected.shape, bool)
    for roi_contour in rt.ROIContourSequence:
        value = to_label.get(int(roi_contour.ReferencedROINumber))
        if value is None:
            continue
        fills: dict[int, np.ndarray] = {}
        line = lines.setdefault(value, shared if shared is not None else np.zeros(expected.shape, bool))
        slices = drawn.setdefault(value, np.zeros(len(source), bool))
        for contour in getattr(roi_contour, "ContourSequence", []):
            if str(getattr(contour, "ContourGeometricType", "CLOSED_PLANAR")) != "CLOSED_PLANAR":
                continue
            points = np.asarray(contour.ContourData, float).reshape(-1, 3)
            k = int(np.argmin(np.abs(positions - float(np.dot(points[0], normal)))))
            if abs(positions[k] - np.dot(points[0], normal)) > abs(thickness) / 2:
                continue  # contour between slices: no image slice carries it
            offset = points - np.asarray(source[k].ImagePositionPatient, float)
            c = offset @ row_dir / spacing[1]
            r = offset @ col_dir / spacing[0]
            inside = fills.setdefault(k, np.zeros((rows, cols), bool))
            rr, cc = polygon(r, c, shape=(rows, cols))
            inside[rr, cc] ^= True  # even-odd: a contour inside another is a hole
            pr, pc = _line_pixels(r, c, rows, cols)
            line[k, pr, pc] = True
            slices[k] = True
        for k, inside in fills.items():
            _draw(expected, k, inside, value, strategy)
    return lines, drawn


def check_case(
    case_id: str,
    patient_id: str,
    label_file: Path,
    image_files: Sequence[Path],
    annotation_kind: str,
    annotation_file: Path,
    roi_labels: dict[str, list[str]],
    strategy: str,
    source: Sequence[pydicom.Dataset] | None = None,
) -> list[RoiCheck]:
    """Compare one converted label map with its annotation, label by label.

    Parameters
    ----------
    case_id, patient_id
        For the report.
    label_file
        The converted label NIfTI.
    image_files
        The image series' DICOM files (any order).
    annotation_kind, annotation_file
        ``SEG`` or ``RTSTRUCT`` and its file.
    roi_labels
        ROI YAML (label -> regexes), in label order.
    strategy
        The mask saving strategy.
    source
        The image files' headers in the same order, if already read.

    """
    import SimpleITK as sitk

    headers = (
        list(source)
        if source is not None
        else [read_dataset(f, stop_before_pixels=True) for f in image_files]
    )
    source, _ = sort_by_position(headers, list(image_files))
    label_image = sitk.ReadImage(str(label_file))
    converted = sitk.GetArrayFromImage(label_image)
    order = _slice_index(label_image, source, label_file)
    if order != list(range(len(order))) or len(order) != converted.shape[0]:
        converted = converted[order]
    expected = np.zeros(converted.shape, np.uint32 if strategy == "region_mask" else np.uint16)
    band: dict[int, np.ndarray] = {}
    if annotation_kind == "SEG":
        drawn_slices = expected_from_seg(annotation_file, source, roi_labels, expected, strategy)
    else:
        band, drawn_slices = expected_from_rtstruct(annotation_file, source, roi_labels, expected, strategy)
    if band and strategy != "region_mask":  # the shared band covers labels without a contour too
        band = dict.fromkeys(range(1, len(roi_labels) + 1), next(iter(band.values())))
    checks = []
    for value, name in enumerate(roi_labels, start=1):
        if strategy == "region_mask":
            exp_mask = (expected & (1 << (value - 1))) > 0
            got_mask = (converted & (1 << (value - 1))) > 0
        else:
            exp_mask, got_mask = expected == value, converted == value
        differing = exp_mask ^ got_mask
        tolerated = band.get(value)
        beyond = (
            int(np.count_nonzero(differing & ~tolerated)) if tolerated is not None else int(differing.sum())
        )
        drawn = drawn_slices.get(value, np.zeros(len(source), bool))
        got_slices = got_mask.any(axis=(1, 2))
        checks.append(
            RoiCheck(
                case_id=case_id,
                patient_id=patient_id,
                label=name,
                annotation=annotation_kind,
                expected_voxels=int(exp_mask.sum()),
                converted_voxels=int(got_mask.sum()),
                differing_voxels=int(differing.sum()),
                beyond_tolerance=beyond,
                slices_missing=int((exp_mask.any(axis=(1, 2)) & ~got_slices).sum()),
                slices_extra=int((got_slices & ~drawn).sum()),
            )
        )
        del exp_mask, got_mask, differing
    return checks
