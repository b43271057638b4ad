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
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom

from iterseg.dicom.series import contour_points, read_dataset, sort_by_position
from iterseg.errors import ConversionError, DicomReadError

logger = logging.getLogger(__name__)

RTSTRUCT_TOLERANCE = "differences only on pixels a contour line passes through (in-plane)"
_SLAB = 16  # slices compared at a time
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
        if pixels.dtype.kind == "f":
            mask = pixels > 0.5
        else:  # in place: a second volume-sized array per segment is what peak memory is made of
            mask = np.not_equal(pixels, 0, out=pixels.view(bool)) if pixels.itemsize == 1 else pixels > 0
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


def _inside(polygons: list[tuple[np.ndarray, np.ndarray]], line: np.ndarray) -> np.ndarray:
    """Even-odd interior of a slice's polygons, decided by matplotlib's point-in-polygon test.

    Parity can only change across a contour line, so every 4-connected region of pixels no line
    passes through is inside or outside as a whole: one test per region, plus one per line pixel.
    """
    from matplotlib.path import Path as Polygon
    from scipy.ndimage import label

    rows, cols = line.shape
    every = np.concatenate([np.column_stack(p) for p in polygons])
    r0, c0 = (max(int(np.floor(v)) - 1, 0) for v in every.min(axis=0))
    r1, c1 = (int(np.ceil(v)) + 2 for v in every.max(axis=0))
    r1, c1 = min(r1, rows), min(c1, cols)
    inside = np.zeros((rows, cols), bool)
    if r0 >= r1 or c0 >= c1:
        return inside
    band = line[r0:r1, c0:c1]
    regions, count = label(~band)
    flat = regions.ravel()
    values, first = np.unique(flat, return_index=True)
    representatives, region_of = first[values > 0], values[values > 0]
    on_line = np.flatnonzero(flat == 0)
    probes = np.concatenate([representatives, on_line])
    centres = np.column_stack([probes // band.shape[1] + r0, probes % band.shape[1] + c0]).astype(float)
    parity = np.zeros(len(probes), bool)
    for r, c in polygons:
        parity ^= Polygon(np.column_stack([r, c])).contains_points(centres)
    regional = np.zeros(count + 1, bool)
    regional[region_of] = parity[: len(representatives)]
    result = regional[flat]
    result[on_line] = parity[len(representatives) :]
    inside[r0:r1, c0:c1] = result.reshape(band.shape)
    return inside


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
        per_slice: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        line = lines.setdefault(value, shared if shared is not None else np.zeros(expected.shape, bool))
        slices = drawn.setdefault(value, np.zeros(len(source), bool))
        for contour in getattr(roi_contour, "ContourSequence", []):
            if str(getattr(contour, "ContourGeometricType", "CLOSED_PLANAR")) != "CLOSED_PLANAR":
                continue
            points = contour_points(contour)
            k = int(np.argmin(np.abs(positions - float(np.dot(points[0], normal)))))
            if abs(positions[k] - np.dot(points[0], normal)) > abs(thickness) / 2:
                continue  # contour between slices: no image slice carries it
            offset = points - np.asarray(source[k].ImagePositionPatient, float)
            per_slice.setdefault(k, []).append((offset @ col_dir / spacing[0], offset @ row_dir / spacing[1]))
        for k, polygons in per_slice.items():
            own = np.zeros((rows, cols), bool)
            for r, c in polygons:
                pr, pc = _line_pixels(r, c, rows, cols)
                own[pr, pc] = True
            line[k] |= own
            slices[k] = True
            _draw(expected, k, _inside(polygons, own), value, strategy)
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
    headers = (
        list(source)
        if source is not None
        else [read_dataset(f, stop_before_pixels=True) for f in image_files]
    )
    try:
        source, _ = sort_by_position(headers, list(image_files))
    except DicomReadError as exc:
        raise ConversionError(f"{exc} (image series of patient {patient_id})") from exc
    converted = _converted_in_source_order(label_file, source)
    region = strategy == "region_mask"
    expected, band, drawn_slices = _expected_labels(
        annotation_kind, annotation_file, source, roi_labels, strategy, converted.shape
    )
    if band and not region:  # the shared band covers labels without a contour too
        band = dict.fromkeys(range(1, len(roi_labels) + 1), next(iter(band.values())))
    return [
        _compare(
            RoiCheck(case_id, patient_id, name, annotation_kind, 0, 0, 0, 0, 0, 0),
            expected,
            converted,
            value,
            region,
            band.get(value),
            drawn_slices.get(value, np.zeros(len(source), bool)),
        )
        for value, name in enumerate(roi_labels, start=1)
    ]


def _converted_in_source_order(label_file: Path, source: Sequence[pydicom.Dataset]) -> np.ndarray:
    """The converted label map, its slices reordered to follow ``source`` (sorted) where they do not."""
    import SimpleITK as sitk

    label_image = sitk.ReadImage(str(label_file))
    order = _slice_index(label_image, source, label_file)
    converted = sitk.GetArrayFromImage(label_image)
    del label_image  # one copy of the converted map, not two
    if order != list(range(len(order))) or len(order) != converted.shape[0]:
        converted = converted[order]
    return converted


def _expected_labels(
    annotation_kind: str,
    annotation_file: Path,
    source: Sequence[pydicom.Dataset],
    roi_labels: dict[str, list[str]],
    strategy: str,
    shape: tuple[int, ...],
) -> tuple[np.ndarray, dict[int, np.ndarray], dict[int, np.ndarray]]:
    """The label map the annotation draws by the independent reading, its tolerated band, its drawn slices."""
    region = strategy == "region_mask"
    wide = len(roi_labels) > (8 if region else 255)
    expected = np.zeros(shape, (np.uint32 if region else np.uint16) if wide else np.uint8)
    band: dict[int, np.ndarray] = {}
    if annotation_kind == "SEG":
        drawn_slices = expected_from_seg(annotation_file, source, roi_labels, expected, strategy)
    else:
        band, drawn_slices = expected_from_rtstruct(annotation_file, source, roi_labels, expected, strategy)
    return expected, band, drawn_slices


def _compare(
    blank: RoiCheck,
    expected: np.ndarray,
    converted: np.ndarray,
    value: int,
    region: bool,
    tolerated: np.ndarray | None,
    drawn: np.ndarray,
) -> RoiCheck:
    """Count one label's differences slab by slab: a few slices of temporaries, not whole volumes."""
    counts = np.zeros(4, np.int64)  # expected, converted, differing, beyond
    exp_slices = np.zeros(len(drawn), bool)
    got_slices = np.zeros(len(drawn), bool)
    for start in range(0, len(drawn), _SLAB):
        part = slice(start, start + _SLAB)
        if region:
            exp_mask = (expected[part] & (1 << (value - 1))) > 0
            got_mask = (converted[part] & (1 << (value - 1))) > 0
        else:
            exp_mask, got_mask = expected[part] == value, converted[part] == value
        differing = exp_mask ^ got_mask
        beyond = differing if tolerated is None else differing & ~tolerated[part]
        counts += [np.count_nonzero(m) for m in (exp_mask, got_mask, differing, beyond)]
        exp_slices[part] = exp_mask.any(axis=(1, 2))
        got_slices[part] = got_mask.any(axis=(1, 2))
    return replace(
        blank,
        expected_voxels=int(counts[0]),
        converted_voxels=int(counts[1]),
        differing_voxels=int(counts[2]),
        beyond_tolerance=int(counts[3]),
        slices_missing=int((exp_slices & ~got_slices).sum()),
        slices_extra=int((got_slices & ~drawn).sum()),
    )
