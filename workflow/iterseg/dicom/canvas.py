"""The voxel grid an annotation is drawn onto, and the label map it is drawn into.

Both annotation readers (``seg_read``, ``rtstruct_raster``) place what they read by geometry on
the image series' own grid: slice k is the k-th slice along the normal, never a resampled grid.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np
import pydicom

from iterseg.dicom.geometry import TOLERANCE, Grid
from iterseg.errors import GeometryError

logger = logging.getLogger(__name__)


class MaskStrategy(StrEnum):
    """How overlapping ROIs share one label map (med-imagetools' mask saving strategies)."""

    SPARSE_MASK = "sparse_mask"  # one value per voxel; the later label of the ROI YAML wins
    LABEL_IMAGE = "label_image"  # the same map; ROIs are not expected to overlap
    REGION_MASK = "region_mask"  # bit (value - 1) set for every label covering the voxel


@dataclass(frozen=True)
class SliceGrid:
    """A regular image grid with what the readers need to place frames and contours on it."""

    series_uid: str
    folder: Path
    grid: Grid
    slice_of_sop: dict[str, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        """Rows of every slice."""
        return self.grid.size[1]

    @property
    def cols(self) -> int:
        """Columns of every slice."""
        return self.grid.size[0]

    @property
    def slices(self) -> int:
        """Number of slices."""
        return self.grid.size[2]

    @property
    def pixel_spacing(self) -> tuple[float, float]:
        """DICOM PixelSpacing order: (between rows, between columns)."""
        return self.grid.spacing[1], self.grid.spacing[0]

    @property
    def axes(self) -> np.ndarray:
        """3x3, columns: row direction (along a row), column direction, slice normal."""
        return np.asarray(self.grid.direction, float).reshape(3, 3)

    @property
    def orientation(self) -> tuple[float, ...]:
        """ImageOrientationPatient of the series."""
        axes = self.axes
        return tuple(float(v) for v in (*axes[:, 0], *axes[:, 1]))

    def to_index(self, points: np.ndarray) -> np.ndarray:
        """Patient coordinates (n, 3) -> continuous (column, row, slice) indices (n, 3)."""
        offset = np.atleast_2d(points) - np.asarray(self.grid.origin, float)
        return (offset @ self.axes) / np.asarray(self.grid.spacing, float)

    def slice_of_plane(
        self, point: np.ndarray, what: str, fix: str, *, corner: bool = True, tolerance: float = TOLERANCE
    ) -> int:
        """The slice a plane through ``point`` lies on.

        Parameters
        ----------
        point
            A frame's ImagePositionPatient (``corner``: must be the slice's first voxel) or any
            point of a contour.
        what, fix
            How to name the plane, and the fix, in the error.
        corner
            ``point`` is a frame's first voxel, so it must also sit on the slice's first voxel.
        tolerance
            How far off a slice plane, in slices, still counts as on it.

        Raises
        ------
        GeometryError
            If the plane is off the image's slices (or, for a frame corner, off its first voxel).

        """
        col, row, k = self.to_index(point)[0]
        nearest = round(float(k))
        off_plane = abs(float(k) - nearest) > tolerance or not 0 <= nearest < self.slices
        shifted = corner and (abs(col) > TOLERANCE or abs(row) > TOLERANCE)
        if off_plane or shifted:
            position = ", ".join(f"{v:.2f}" for v in np.ravel(point))
            where = "between or beyond" if off_plane else "shifted in-plane from"
            raise GeometryError(
                f"{what} lies {where} the slices of image series {self.series_uid} ({self.folder}) at "
                f"({position}) mm, slice index {float(k):.2f} of {self.slices}; it was drawn on another "
                f"grid. {fix}"
            )
        return nearest


def slice_grid(grid: Grid, datasets: Sequence[pydicom.Dataset], series_uid: str, folder: Path) -> SliceGrid:
    """A :class:`SliceGrid` of sorted ``datasets`` whose regular ``grid`` is already checked."""
    return SliceGrid(series_uid, folder, grid, {str(ds.SOPInstanceUID): k for k, ds in enumerate(datasets)})


class LabelCanvas:
    """A case's label map (slices, rows, columns), combined as its mask strategy says.

    Parameters
    ----------
    shape
        (slices, rows, columns) of the image grid.
    values
        ROI YAML label name -> value (1, 2, ... in file order).
    strategy
        How overlapping labels combine.

    """

    def __init__(self, shape: tuple[int, int, int], values: dict[str, int], strategy: MaskStrategy) -> None:
        self.values = {name: value for name, value in values.items() if value > 0}
        self.strategy = strategy
        top = max(self.values.values(), default=1)
        if strategy is MaskStrategy.REGION_MASK:
            if top > 32:
                raise ValueError("region_mask holds at most 32 labels")
            dtype: type[np.unsignedinteger] = np.uint8 if top <= 8 else np.uint16 if top <= 16 else np.uint32
        else:
            dtype = np.uint8 if top < 256 else np.uint16
        self.array = np.zeros(shape, dtype)

    def add_mask(self, k: int, mask: np.ndarray, value: int) -> None:
        """Draw ``mask`` (rows, columns) of label ``value`` on slice ``k``."""
        plane = self.array[k]
        if self.strategy is MaskStrategy.REGION_MASK:
            plane[mask] |= self.array.dtype.type(1 << (value - 1))
        else:
            plane[mask] = np.maximum(plane[mask], self.array.dtype.type(value))

    def add_labels(self, k: int, labels: np.ndarray) -> None:
        """Draw a slice of label values (0 = nothing) on slice ``k``."""
        if self.strategy is MaskStrategy.REGION_MASK:
            for value in np.unique(labels):
                if value:
                    self.add_mask(k, labels == value, int(value))
        else:
            np.maximum(self.array[k], labels.astype(self.array.dtype), out=self.array[k])
