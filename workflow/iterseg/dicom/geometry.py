"""The voxel grid of a sorted single-frame image series, and the checks a SEG export needs.

A SEG frame references one source slice; the label image must therefore sit on the series'
own grid, slice k on source slice k. Series whose slices do not form one regular grid
(gantry tilt, missing slices, mixed orientations) cannot be exported exactly and are refused.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pydicom

from iterseg.dicom.series import ImageSeries, slice_normal
from iterseg.errors import GeometryError

logger = logging.getLogger(__name__)

# Positions agree within this fraction of a voxel; scanners round IPP to a few decimals.
TOLERANCE = 0.05


@dataclass(frozen=True)
class Grid:
    """A SimpleITK-style grid: x = column index, y = row index, z = slice index (sorted order)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 values, row-major, columns are the axis directions


def series_grid(series: ImageSeries) -> Grid:
    """The grid of ``series`` (slices already sorted along the normal), checked for regularity.

    Raises
    ------
    GeometryError
        Naming the series, for mixed orientations, pixel sizes or matrix sizes, gantry tilt
        (slices offset off the normal) or uneven slice spacing (a missing slice).

    """
    datasets: Sequence[pydicom.Dataset] = series.datasets
    where = f"series {series.series_uid} ({series.files[0].parent})"
    first = datasets[0]
    iop = np.asarray(first.ImageOrientationPatient, float)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = slice_normal(first)
    rows, cols = int(first.Rows), int(first.Columns)
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    _check_planes(series, where, iop, (rows, cols), (row_spacing, col_spacing))
    positions = np.array([np.asarray(ds.ImagePositionPatient, float) for ds in datasets])
    if len(datasets) > 1:
        spacing = _slice_spacing(positions, normal, where, min(row_spacing, col_spacing))
    else:
        spacing = float(
            getattr(first, "SpacingBetweenSlices", 0) or getattr(first, "SliceThickness", 0) or 1.0
        )
    direction = np.column_stack([row_dir, col_dir, normal])
    return Grid(
        size=(cols, rows, len(datasets)),
        spacing=(col_spacing, row_spacing, spacing),
        origin=tuple(float(v) for v in positions[0]),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in direction.ravel()),
    )


def _check_planes(
    series: ImageSeries,
    where: str,
    iop: np.ndarray,
    matrix: tuple[int, int],
    pixel_spacing: tuple[float, float],
) -> None:
    """Every slice has the first one's orientation, matrix and pixel size."""
    for ds, path in zip(series.datasets, series.files, strict=True):
        if not np.allclose(np.asarray(ds.ImageOrientationPatient, float), iop, atol=1e-4):
            raise GeometryError(
                f"{where}: {path.name} has another ImageOrientationPatient; mixed orientations: keep one "
                "acquisition per series folder."
            )
        if (int(ds.Rows), int(ds.Columns)) != matrix or not np.allclose(
            [float(v) for v in ds.PixelSpacing], list(pixel_spacing), rtol=1e-4
        ):
            raise GeometryError(
                f"{where}: {path.name} has another matrix or pixel size than the first slice; the series "
                "mixes acquisitions: re-export it, or keep one acquisition per series."
            )


def _slice_spacing(positions: np.ndarray, normal: np.ndarray, where: str, pixel: float) -> float:
    """The spacing of slices at ``positions`` (two or more), refused when tilted or uneven."""
    steps = np.diff(positions, axis=0)
    along = steps @ normal
    across = np.linalg.norm(steps - np.outer(along, normal), axis=1)
    if np.max(across) > TOLERANCE * pixel:
        raise GeometryError(
            f"{where}: slices are offset across the slice normal by up to {np.max(across):.2f} mm "
            "(gantry tilt); a SEG of it would be misplaced. Resample the series to an untilted "
            "grid first (e.g. 3D Slicer's or dcm2niix's tilt correction) and annotate that."
        )
    spacing = float(np.median(along))
    if np.max(np.abs(along - spacing)) > TOLERANCE * spacing:
        gaps = ", ".join(f"{v:.3f}" for v in np.unique(np.round(along, 3)))
        raise GeometryError(
            f"{where}: slice spacing is uneven ({gaps} mm); "
            "a slice is missing or the series mixes acquisitions; re-export the complete series from "
            "the scanner or PACS, or leave it out of the snapshot."
        )
    return spacing


def same_grid(image: object, grid: Grid) -> bool:
    """Whether a SimpleITK image lies on ``grid`` (size exact, geometry within tolerance)."""
    size = tuple(image.GetSize())  # type: ignore[attr-defined]
    if size != grid.size:
        return False
    spacing = np.asarray(image.GetSpacing())  # type: ignore[attr-defined]
    if not np.allclose(spacing, grid.spacing, rtol=1e-3):
        return False
    tol = TOLERANCE * float(min(grid.spacing))
    if not np.allclose(image.GetOrigin(), grid.origin, atol=tol):  # type: ignore[attr-defined]
        return False
    return bool(np.allclose(image.GetDirection(), grid.direction, atol=1e-4))  # type: ignore[attr-defined]


def _corners(
    size: Sequence[int], spacing: Sequence[float], origin: Sequence[float], direction: Sequence[float]
) -> np.ndarray:
    axes = np.asarray(direction, float).reshape(3, 3) * np.asarray(spacing, float)
    corners = [
        np.asarray(origin, float) + axes @ np.array([i * (size[0] - 1), j * (size[1] - 1), k * (size[2] - 1)])
        for i in (0, 1)
        for j in (0, 1)
        for k in (0, 1)
    ]
    return np.array(corners)


def same_voxels(image: object, grid: Grid) -> bool:
    """Whether a SimpleITK image holds the voxel centres of ``grid``, in any axis order or sense."""
    if sorted(image.GetSize()) != sorted(grid.size):  # type: ignore[attr-defined]
        return False
    mine = _corners(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())  # type: ignore[attr-defined]
    theirs = _corners(grid.size, grid.spacing, grid.origin, grid.direction)
    distances = np.linalg.norm(theirs[:, None, :] - mine[None, :, :], axis=2)
    return bool(np.all(distances.min(axis=1) <= TOLERANCE * float(min(grid.spacing))))
