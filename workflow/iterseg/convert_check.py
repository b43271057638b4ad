"""Independent check of every converted label map against its DICOM annotation.

Every later model trains on what conversion produces, so each case is re-derived without
med-imagetools and compared voxel by voxel:

- SEG: read with highdicom onto the image's slices; the converted map must be identical.
- RTSTRUCT: contours rasterised here (even-odd rule, so inner contours are holes); rasterisers
  legitimately disagree on pixels the contour line passes through, so differences are allowed
  only within one pixel of a contour line, in-plane. A missing, extra or shifted slice puts
  differences away from the lines and fails.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from iterseg.dicom_series import sort_by_position
from iterseg.errors import ConversionError

logger = logging.getLogger(__name__)

RTSTRUCT_TOLERANCE = "differences only within 1 pixel (in-plane) of a contour line"


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


def _combine(masks: dict[int, np.ndarray], shape: tuple[int, ...], strategy: str) -> np.ndarray:
    """Per-label masks -> the label map med-imagetools' strategy defines."""
    out = np.zeros(shape, np.uint8)
    for value in sorted(masks):
        if strategy == "region_mask":
            out[masks[value]] += np.uint8(2 ** (value - 1))
        else:  # sparse_mask and label_image: the later label wins (label_image has no overlap)
            out[masks[value]] = value
    return out


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
    seg_path: Path, source: Sequence[pydicom.Dataset], roi_labels: dict[str, list[str]]
) -> dict[int, np.ndarray]:
    """Label value -> mask (slices, rows, cols) in ``source`` order, read with highdicom."""
    import highdicom as hd

    seg = hd.seg.segread(seg_path)
    names = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    numbers = sorted(names)
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[str(ds.SOPInstanceUID) for ds in source],
        segment_numbers=numbers,
        combine_segments=False,
        # dcmqi (3D Slicer) omits SpatialLocationsPreserved; frames still reference their slices.
        ignore_spatial_locations=True,
        assert_missing_frames_are_empty=True,
    )
    masks: dict[int, np.ndarray] = {}
    for position, number in enumerate(numbers):
        value = _match_labels({number: names[number]}, roi_labels).get(number)
        if value is not None:
            masks[value] = masks.get(value, np.zeros(pixels.shape[:3], bool)) | (pixels[..., position] > 0)
    return masks


def expected_from_rtstruct(
    rt_path: Path, source: Sequence[pydicom.Dataset], roi_labels: dict[str, list[str]]
) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Rasterise an RTSTRUCT on ``source``: (label -> filled mask, label -> contour-line pixels)."""
    from skimage.draw import polygon, polygon_perimeter

    rt = pydicom.dcmread(rt_path)
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
    shape = (len(source), rows, cols)
    filled: dict[int, np.ndarray] = {}
    lines: dict[int, np.ndarray] = {}
    for roi_contour in rt.ROIContourSequence:
        value = to_label.get(int(roi_contour.ReferencedROINumber))
        if value is None:
            continue
        roi_fill = np.zeros(shape, bool)
        roi_line = np.zeros(shape, bool)
        for contour in getattr(roi_contour, "ContourSequence", []):
            points = np.asarray(contour.ContourData, float).reshape(-1, 3)
            k = int(np.argmin(np.abs(positions - float(np.dot(points[0], normal)))))
            if abs(positions[k] - np.dot(points[0], normal)) > abs(thickness) / 2:
                continue  # contour between slices: no image slice carries it
            offset = points - np.asarray(source[k].ImagePositionPatient, float)
            c = offset @ row_dir / spacing[1]
            r = offset @ col_dir / spacing[0]
            inside = np.zeros((rows, cols), bool)
            rr, cc = polygon(r, c, shape=(rows, cols))
            inside[rr, cc] = True
            roi_fill[k] ^= inside  # even-odd: a contour inside another is a hole
            pr, pc = polygon_perimeter(np.round(r), np.round(c), shape=(rows, cols), clip=False)
            roi_line[k, pr, pc] = True
        filled[value] = filled.get(value, np.zeros(shape, bool)) | roi_fill
        lines[value] = lines.get(value, np.zeros(shape, bool)) | roi_line
    return filled, lines


def _dilate_in_plane(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_dilation

    structure = np.zeros((1, 3, 3), bool)
    structure[0] = True
    return np.asarray(binary_dilation(mask, structure=structure))


def check_case(
    case_id: str,
    patient_id: str,
    label_file: Path,
    image_files: Sequence[Path],
    annotation_kind: str,
    annotation_file: Path,
    roi_labels: dict[str, list[str]],
    strategy: str,
) -> list[RoiCheck]:
    """Compare one converted label map with its annotation, label by label.

    Parameters
    ----------
    case_id, patient_id
        For the report.
    label_file
        The label NIfTI med-imagetools wrote.
    image_files
        The image series' DICOM files (any order).
    annotation_kind, annotation_file
        ``SEG`` or ``RTSTRUCT`` and its file.
    roi_labels
        ROI YAML (label -> regexes), in label order.
    strategy
        med-imagetools' mask saving strategy.

    """
    import SimpleITK as sitk

    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in image_files]
    source, _ = sort_by_position(headers, list(image_files))
    label_image = sitk.ReadImage(str(label_file))
    converted = sitk.GetArrayFromImage(label_image)[_slice_index(label_image, source, label_file)]
    tolerance: dict[int, np.ndarray] = {}
    if annotation_kind == "SEG":
        masks = expected_from_seg(annotation_file, source, roi_labels)
        drawn_slices = {value: mask.any(axis=(1, 2)) for value, mask in masks.items()}
    else:
        masks, lines = expected_from_rtstruct(annotation_file, source, roi_labels)
        tolerance = {value: _dilate_in_plane(line) for value, line in lines.items()}
        drawn_slices = {value: line.any(axis=(1, 2)) for value, line in lines.items()}
    expected = _combine(masks, converted.shape, strategy)
    checks = []
    for value, name in enumerate(roi_labels, start=1):
        if strategy == "region_mask":
            exp_mask = (expected & (1 << (value - 1))) > 0
            got_mask = (converted & (1 << (value - 1))) > 0
        else:
            exp_mask, got_mask = expected == value, converted == value
        differing = exp_mask ^ got_mask
        band = tolerance.get(value)
        if band is not None and strategy != "region_mask":
            # A later label's contour line also moves this label's border.
            for other, other_band in tolerance.items():
                if other != value:
                    band = band | other_band
        beyond = differing & ~band if band is not None else differing
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
                beyond_tolerance=int(beyond.sum()),
                slices_missing=int((exp_mask.any(axis=(1, 2)) & ~got_slices).sum()),
                slices_extra=int((got_slices & ~drawn).sum()),
            )
        )
    return checks
