"""RTSTRUCT -> a label map on its image series' grid, inner contours kept as holes.

Replaces med-imagetools' rasteriser, which ORs every polygon of a slice: a ring ROI, or the lungs
cut out of BODY, came out filled. Here all closed contours of one ROI on one slice are filled
together by the even-odd rule (a scanline fill: a pixel is inside when a ray from its centre
crosses the contours an odd number of times), the way planning systems store holes. The
conversion check rasterises the same contours with scikit-image, one polygon at a time, and
combines them by XOR: an independent implementation of the same rule.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from iterseg.dicom.canvas import LabelCanvas, SliceGrid
from iterseg.dicom.series import contour_points, read_dataset
from iterseg.errors import DicomReadError
from iterseg.roi import match_roi_name

logger = logging.getLogger(__name__)

# Contours of a planning system lie on the slice planes up to rounding of their coordinates.
PLANE_TOLERANCE = 0.25  # of a slice
_SHOWN = 3  # missing instance UIDs listed in a message


@dataclass(frozen=True)
class RtContent:
    """What an RTSTRUCT contributed: the labels it draws and those whose ROIs held no closed contour."""

    labels: tuple[str, ...]
    empty_labels: tuple[str, ...]


def fill_even_odd(polygons: list[np.ndarray], rows: int, cols: int) -> np.ndarray:
    """Rasterise closed polygons together by the even-odd rule, at pixel centres.

    Parameters
    ----------
    polygons
        Each (n, 2) of continuous (row, column) indices; closed implicitly.
    rows, cols
        The slice's matrix.

    Returns
    -------
    numpy.ndarray
        (rows, cols) bool: centres crossed an odd number of times by a ray towards -column.

    """
    starts = np.concatenate(polygons)
    ends = np.concatenate([np.roll(p, -1, axis=0) for p in polygons])
    lo, hi = np.minimum(starts[:, 0], ends[:, 0]), np.maximum(starts[:, 0], ends[:, 0])
    # Half-open [lo, hi) per edge: a vertex on a scanline is counted once, a horizontal edge never.
    first = np.clip(np.ceil(lo), 0, rows).astype(np.int64)
    last = np.clip(np.ceil(hi), 0, rows).astype(np.int64)
    counts = last - first
    out = np.zeros((rows, cols), bool)
    if not counts.sum():
        return out
    edge = np.repeat(np.arange(len(starts)), counts)
    row = first[edge] + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
    r0, c0, r1, c1 = starts[edge, 0], starts[edge, 1], ends[edge, 0], ends[edge, 1]
    crossing = c0 + (row - r0) * (c1 - c0) / (r1 - r0)
    # Pixel c is right of the crossing x when c >= ceil(x); parity of crossings to its left.
    column = np.clip(np.ceil(crossing), 0, cols).astype(np.int64)
    top, bottom = int(row.min()), int(row.max()) + 1
    toggles = np.zeros((bottom - top, cols + 1), np.uint8)
    np.add.at(toggles, (row - top, column), 1)
    out[top:bottom] = (np.cumsum(toggles, axis=1, dtype=np.int32)[:, :cols] & 1).astype(bool)
    return out


def _missing_slices(rt: pydicom.Dataset, grid: SliceGrid, rt_path: Path, numbers: set[int]) -> None:
    missing: dict[str, None] = {}
    for roi in getattr(rt, "ROIContourSequence", []):
        if int(roi.ReferencedROINumber) not in numbers:
            continue
        for contour in getattr(roi, "ContourSequence", []):
            for image in getattr(contour, "ContourImageSequence", []):
                uid = str(image.ReferencedSOPInstanceUID)
                if uid not in grid.slice_of_sop:
                    missing[uid] = None
    if missing:
        shown = ", ".join(list(missing)[:_SHOWN]) + (", ..." if len(missing) > _SHOWN else "")
        raise DicomReadError(
            f"{rt_path}: RTSTRUCT draws on {len(missing)} slice(s) that are not in image series "
            f"{grid.series_uid} ({grid.folder}): SOP instance(s) {shown}. The export lost them; add the "
            "missing slices to the snapshot (re-export the complete series) or remove the RTSTRUCT."
        )


def _closed_contours(roi: pydicom.Dataset, rt_path: Path, name: str, label: str) -> list[pydicom.Dataset]:
    """The ROI's contours, all of them closed; open ones (OPEN_PLANAR, POINT) are refused."""
    contours = list(getattr(roi, "ContourSequence", []))
    kinds = [str(getattr(c, "ContourGeometricType", "CLOSED_PLANAR")) for c in contours]
    open_kinds = sorted({k for k in kinds if k != "CLOSED_PLANAR"})
    if open_kinds:
        # dropping them would train the label with holes where those lines were drawn
        raise DicomReadError(
            f"{rt_path}: ROI {name} (label {label}) has "
            f"{sum(k != 'CLOSED_PLANAR' for k in kinds)} {'/'.join(open_kinds)} contour(s), which "
            "enclose no area; close them in the planning system (CLOSED_PLANAR) and export again, "
            "or leave the ROI out of the ROI YAML."
        )
    return contours


def _polygons_per_slice(
    contours: list[pydicom.Dataset], grid: SliceGrid, rt_path: Path, name: str
) -> dict[int, list[np.ndarray]]:
    """Slice index -> the (row, column) polygons of the ROI's contours on it."""
    fix = "Re-export the RTSTRUCT from the planning system on this image series."
    per_slice: dict[int, list[np.ndarray]] = defaultdict(list)
    for contour in contours:
        points = contour_points(contour)
        index = grid.to_index(points)
        k = grid.slice_of_plane(
            points[0],
            f"{rt_path}: a contour of ROI {name}",
            fix,
            corner=False,
            tolerance=PLANE_TOLERANCE,
        )
        per_slice[k].append(index[:, [1, 0]])  # (row, column)
    return per_slice


def read_rtstruct(
    rt_path: Path, grid: SliceGrid, roi_labels: dict[str, list[str]], canvas: LabelCanvas
) -> RtContent:
    """Rasterise the ROIs of ``rt_path`` that match ROI YAML labels onto ``canvas``.

    Parameters
    ----------
    rt_path
        The RTSTRUCT file (any name).
    grid
        The referenced image series' grid.
    roi_labels
        ROI YAML labels -> regexes; an ROI goes to the first label its ROIName matches.
    canvas
        The case's label map, combined with the mask saving strategy.

    Returns
    -------
    RtContent
        Labels drawn, and those whose matching ROIs have no closed contour (warned).

    Raises
    ------
    DicomReadError
        When contours reference image instances absent from the series (named, with their
        count), or a label's ROI has open (OPEN_PLANAR, POINT) contours.
    GeometryError
        When contours lie off the series' slice planes.

    """
    rt = read_dataset(rt_path)
    label_of = {
        int(r.ROINumber): name
        for r in getattr(rt, "StructureSetROISequence", [])
        if (name := match_roi_name(str(r.ROIName), roi_labels)) is not None
    }
    roi_names = {int(r.ROINumber): str(r.ROIName) for r in getattr(rt, "StructureSetROISequence", [])}
    _missing_slices(rt, grid, rt_path, set(label_of))
    drawn: set[str] = set()
    for roi in getattr(rt, "ROIContourSequence", []):
        number = int(roi.ReferencedROINumber)
        if number not in label_of:
            continue
        contours = _closed_contours(roi, rt_path, roi_names[number], label_of[number])
        for k, polygons in _polygons_per_slice(contours, grid, rt_path, roi_names[number]).items():
            mask = fill_even_odd(polygons, grid.rows, grid.cols)
            if mask.any():
                drawn.add(label_of[number])
                canvas.add_mask(k, mask, canvas.values[label_of[number]])
    labels = tuple(dict.fromkeys(label_of.values()))
    empty = tuple(name for name in labels if name not in drawn)
    for name in empty:
        logger.warning("%s: ROI(s) of label %s enclose no voxel; it counts as drawn and empty", rt_path, name)
    return RtContent(labels, empty)
