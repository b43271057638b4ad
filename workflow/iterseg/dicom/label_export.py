"""A label image (NIfTI, NRRD, ...) + its DICOM series -> one DICOM-SEG: ``iterseg export-seg``.

Usable outside the workflow: the reference series is found in a folder (several series may be
there), its slices are sorted by geometry and checked to form one regular grid, the label
image is put on that grid (nearest neighbour, with a warning, when it is not already), its
values are checked against the ROI YAML, and the SEG is written by ``seg_export.export_seg``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from iterseg.dicom.codes import Terminology
from iterseg.dicom.geometry import Grid, same_grid, same_voxels, series_grid
from iterseg.dicom.seg_writer import SegType, export_seg
from iterseg.dicom.series import ImageSeries, find_image_series
from iterseg.errors import PredictionError, SegExportError
from iterseg.roi import label_values, load_roi_terms, load_roi_yaml

logger = logging.getLogger(__name__)

IMAGE_MODALITIES = ("CT", "MR", "PT")


@dataclass(frozen=True)
class ExportResult:
    """What was written, from what."""

    seg: Path
    series_uid: str
    slices: int
    resampled: bool
    voxels_per_label: dict[str, int]


def _grid_image(grid: Grid) -> object:
    import SimpleITK as sitk

    image = sitk.Image(list(grid.size), sitk.sitkUInt8)
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(grid.direction)
    return image


def _candidates(reference: Path, modality: str | None) -> list[ImageSeries]:
    unreadable: list[tuple[Path, str]] = []
    try:
        found = find_image_series(reference, modality or IMAGE_MODALITIES, unreadable)
    except PredictionError as exc:
        raise SegExportError(f"{reference}: {exc}") from exc
    if unreadable:  # a series read without it could lack a slice: the SEG would point at a gap
        path, reason = unreadable[0]
        more = f" (and {len(unreadable) - 1} more)" if len(unreadable) > 1 else ""
        raise SegExportError(
            f"{path}: truncated or corrupt DICOM ({reason}){more}; copy the series again from its source, "
            "or remove the file from --reference."
        )
    if not found:
        raise SegExportError(
            f"{reference}: no readable {modality or '/'.join(IMAGE_MODALITIES)} image series found; point "
            "--reference at the folder holding the series the labels were drawn on."
        )
    return found


def _choose_series(
    reference: Path, labels: object, modality: str | None, series_uid: str | None
) -> tuple[ImageSeries, Grid]:
    """The reference series: the one named, the only one, or the one whose grid the labels share."""
    candidates = _candidates(reference, modality)
    if series_uid:
        chosen = [s for s in candidates if s.series_uid == series_uid]
        if not chosen:
            raise SegExportError(
                f"{reference}: no series {series_uid}; found {', '.join(s.series_uid for s in candidates)}."
            )
        return chosen[0], series_grid(chosen[0])
    if len(candidates) == 1:
        return candidates[0], series_grid(candidates[0])
    grids = []
    for series in candidates:
        try:
            grids.append((series, series_grid(series)))
        except SegExportError as exc:  # an irregular scout beside the series is not the one
            logger.info("%s", exc)
    matching = [(s, g) for s, g in grids if same_grid(labels, g)]
    if not matching:  # the labels may be stored in another axis order or sense: same voxels
        matching = [(s, g) for s, g in grids if same_voxels(labels, g)]
    if len(matching) != 1:
        raise SegExportError(
            f"{reference}: {len(candidates)} image series and {len(matching)} on the label image's grid; "
            f"choose one with --series-uid ({', '.join(s.series_uid for s in candidates)})."
        )
    return matching[0]


def export_label_image(
    reference: Path,
    labels_path: Path,
    roi_yaml: Path,
    out: Path,
    *,
    modality: str | None = None,
    series_uid: str | None = None,
    seg_type: SegType = SegType.BINARY,
    series_description: str = "iterseg segmentation",
    algorithm_version: str = "manual export",
) -> ExportResult:
    """Write ``labels_path`` as a DICOM-SEG of the image series in ``reference``.

    Parameters
    ----------
    reference
        Folder with the DICOM image series (searched recursively; other series may be there).
    labels_path
        Label image readable by SimpleITK (NIfTI, NRRD, MHA); values as in the ROI YAML.
    roi_yaml
        Label names and values (file order: 1, 2, ...).
    out
        The SEG file to write (atomically; nothing is written on error).
    modality
        Only consider series of this modality (default CT, MR and PT).
    series_uid
        The reference series, when the folder holds several on the same grid.
    seg_type
        BINARY (default) or LABELMAP.
    series_description, algorithm_version
        SeriesDescription and the algorithm version recorded in every segment.

    Raises
    ------
    SegExportError
        If the series is unreadable or irregular (gantry tilt, missing slices, mixed
        orientations), no series fits, the label image does not overlap the series, or it holds
        values that are not labels of the ROI YAML.

    """
    import SimpleITK as sitk

    try:
        labels = sitk.ReadImage(str(labels_path))
    except RuntimeError as exc:
        raise SegExportError(
            f"{labels_path}: not a readable label image ({str(exc).splitlines()[0]})."
        ) from exc
    if labels.GetDimension() != 3 or labels.GetNumberOfComponentsPerPixel() != 1:
        raise SegExportError(f"{labels_path}: expected a 3D single-component label image.")
    series, grid = _choose_series(reference, labels, modality, series_uid)
    values = label_values(load_roi_yaml(roi_yaml))
    return export_for_series(
        series,
        labels,
        values,
        out,
        str(labels_path),
        seg_type,
        series_description,
        algorithm_version,
        grid,
        load_roi_terms(roi_yaml),
    )


def export_for_series(
    series: ImageSeries,
    labels: Any,
    values: dict[str, int],
    out: Path,
    source_name: str,
    seg_type: SegType = SegType.BINARY,
    series_description: str = "iterseg segmentation",
    algorithm_version: str = "",
    grid: Grid | None = None,
    terms: Mapping[str, Terminology] | None = None,
) -> ExportResult:
    """Write a SimpleITK label image as a SEG of ``series``; the workflow's predict step calls this.

    Parameters
    ----------
    series
        The reference series (sorted).
    labels
        SimpleITK label image; resampled (nearest neighbour, with a warning) if off the grid.
    values
        Label name -> value (background 0, then 1..n).
    out
        SEG file.
    source_name
        How to name the labels in messages (their file, or the case).
    seg_type, series_description, algorithm_version
        As for :func:`export_label_image`.
    grid
        The series' grid, if already computed.
    terms
        Coded description and colour per label (from the ROI YAML); default the built-in table.

    Raises
    ------
    SegExportError
        Irregular series, values outside ``values``, or no labelled voxel on the series' grid.

    """
    import SimpleITK as sitk

    grid = grid or series_grid(series)
    resampled = not same_grid(labels, grid)
    if resampled:
        logger.warning(
            "%s is not on the grid of series %s (size %s vs %s); resampling it with nearest neighbour",
            source_name,
            series.series_uid,
            labels.GetSize(),
            grid.size,
        )
        labels = sitk.Resample(labels, _grid_image(grid), sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    array = sitk.GetArrayFromImage(labels)
    unknown: list[int] = []
    # ROI YAML values are 0..n, so a min/max check suffices; the full scan only on error.
    if array.min() < 0 or array.max() > max(values.values()):
        unknown = sorted(int(v) for v in np.unique(array) if int(v) not in values.values())
    if unknown:
        raise SegExportError(
            f"{source_name}: values {unknown} are not labels "
            f"({', '.join(f'{n}={v}' for n, v in values.items())}); add them to the ROI YAML or relabel."
        )
    if resampled and not array.any():
        raise SegExportError(
            f"{source_name}: no labelled voxel falls inside series {series.series_uid}; "
            "is it the right series?"
        )
    export_seg(
        array.astype(np.uint16 if array.max() > 255 else np.uint8),
        series.datasets,
        values,
        out,
        series_description,
        algorithm_version,
        seg_type,
        terms,
    )
    counts = {name: int(np.count_nonzero(array == value)) for name, value in values.items() if value > 0}
    logger.info("%s: SEG of series %s written (%s)", out, series.series_uid, counts)
    return ExportResult(out, series.series_uid, len(series.datasets), resampled, counts)
