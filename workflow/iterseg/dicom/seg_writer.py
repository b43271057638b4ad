"""Label maps -> DICOM-SEG: the one writer of SEGs, for ``iterseg export-seg`` and the predict step.

Three layers, each usable on its own:

- :func:`export_label_image` takes a label image file (NIfTI, NRRD, ...) and a folder holding its
  DICOM series (``iterseg export-seg``, usable outside the workflow): the reference series is
  found there (several series may be), its slices sorted by geometry and checked to form one
  regular grid;
- :func:`export_for_series` takes a SimpleITK label image and that series (the predict step): the
  image is put on the series' grid (nearest neighbour, with a warning, when it is not already)
  and its values are checked against the ROI YAML;
- :func:`export_seg` takes a label array already on the sorted source slices and writes the
  highdicom Segmentation, one segment per ROI label, frames on source slices.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from iterseg import __version__
from iterseg.dicom.codes import Terminology, segment_description
from iterseg.dicom.geometry import Grid, same_grid, same_voxels, series_grid
from iterseg.dicom.seg_options import DEFAULT_SEG_OPTIONS, SegOptions, SegType
from iterseg.dicom.series import ImageSeries, find_image_series
from iterseg.errors import DicomReadError, SegExportError
from iterseg.paths import partial_path
from iterseg.roi import label_values, load_roi_terms, load_roi_yaml

logger = logging.getLogger(__name__)

SEG_MANUFACTURER = "iterseg"
ALGORITHM_NAME = "iterseg"  # how a SEG of ours is recognised when it comes back unedited
LEGACY_ALGORITHM_NAMES = ("iterseg nnU-Net",)  # written by earlier versions
IMAGE_MODALITIES = ("CT", "MR", "PT")


def character_set(source: pydicom.Dataset) -> str | list[str] | None:
    """The source's Specific Character Set as highdicom accepts it; None for the default repertoire.

    Real scanners write (0008,0005) present but empty (a GE CT), or multi-valued with an empty
    first value (ISO 2022 code extensions); both mean the default repertoire for that value,
    which highdicom rejects as ``''``.
    """
    value = source.get("SpecificCharacterSet")
    values = (
        [str(v) for v in value]
        if isinstance(value, (list, pydicom.multival.MultiValue))
        else [str(value or "")]
    )
    if not any(values):
        return None
    if len(values) == 1:
        return values[0]
    return ["ISO 2022 IR 6" if not v else v for v in values]


def export_seg(
    label_map: np.ndarray,
    source: Sequence[pydicom.Dataset],
    labels: Mapping[str, int],
    path: Path,
    series_description: str,
    algorithm_version: str,
    seg_type: SegType = SegType.BINARY,
    terms: Mapping[str, Terminology] | None = None,
    options: SegOptions = DEFAULT_SEG_OPTIONS,
) -> pydicom.Dataset:
    """Write ``label_map`` as a BINARY DICOM-SEG referencing ``source``.

    Parameters
    ----------
    label_map
        (slices, rows, columns) integer labels; slice k belongs to ``source[k]``.
    source
        The image series' datasets sorted by position along the slice normal (headers suffice).
    labels
        nnU-Net's label mapping (name -> value, background 0); segment numbers follow the values.
    path
        Output file.
    series_description
        SeriesDescription shown by viewers.
    algorithm_version
        Model identification (e.g. dataset and iteration) recorded in each segment.
    seg_type
        BINARY (default, every viewer) or LABELMAP (DICOM 2024; viewer support is young).
    terms
        Coded category/type and colour per label name (``roi.load_roi_terms``); labels not in
        it use the built-in table.
    options
        Transfer syntax (default Deflated Explicit VR Little Endian: 1-bit frames of mostly
        background compress about 20-fold) and whether empty frames are left out.

    """
    if label_map.shape != (len(source), int(source[0].Rows), int(source[0].Columns)):
        raise ValueError(f"label map {label_map.shape} does not match {len(source)} source slices")
    named = sorted((value, name) for name, value in labels.items() if value > 0)
    descriptions = _descriptions(named, algorithm_version, terms)
    pixels = _segment_numbers(label_map, named)
    # highdicom needs one frame when all are empty
    omit = options.omit_empty_frames and bool(label_map.any())
    seg = _segmentation(source, pixels, descriptions, seg_type, series_description, omit)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    try:
        seg.file_meta.TransferSyntaxUID = options.transfer_syntax.uid
        seg.save_as(partial, enforce_file_format=True)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return seg


def _descriptions(
    named: list[tuple[int, str]], algorithm_version: str, terms: Mapping[str, Terminology] | None
) -> list[Any]:
    """One highdicom segment description per label of ``named`` (value order), numbered 1..n."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME,
        family=codes.cid7162.ArtificialIntelligence,
        version=algorithm_version[:64],
    )
    return [
        segment_description(i, name, algorithm, (terms or {}).get(name))
        for i, (_, name) in enumerate(named, start=1)
    ]


def _segment_numbers(label_map: np.ndarray, named: list[tuple[int, str]]) -> np.ndarray:
    """``label_map`` with label values replaced by segment numbers 1..n (the order of ``named``)."""
    # A label map of segment numbers (1..n), for BINARY too: highdicom splits it into segments
    # itself, ~3x faster and n-fold smaller in memory than a stack of boolean masks.
    values = np.array([value for value, _ in named])
    if np.array_equal(values, np.arange(1, len(named) + 1)) and label_map.dtype in (np.uint8, np.uint16):
        pixels = label_map
    else:
        lookup = np.zeros(int(label_map.max(initial=0)) + 1, np.uint16)
        lookup[values[values < len(lookup)]] = np.arange(1, len(named) + 1)[values < len(lookup)]
        pixels = lookup[label_map]
    return pixels.astype(np.uint8 if len(named) < 256 else np.uint16, copy=False)


def _segmentation(
    source: Sequence[pydicom.Dataset],
    pixels: np.ndarray,
    descriptions: list[Any],
    seg_type: SegType,
    series_description: str,
    omit_empty_frames: bool,
) -> Any:
    """The highdicom Segmentation of ``pixels`` (segment numbers) on ``source``, with our identity."""
    import highdicom as hd

    return hd.seg.Segmentation(
        source_images=list(source),
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues(seg_type.value.upper()),
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=SEG_MANUFACTURER,
        manufacturer_model_name="iterseg",
        software_versions=__version__,
        device_serial_number="none",
        series_description=series_description[:64],
        content_label="ITERSEG",
        content_description=series_description[:64],
        omit_empty_frames=omit_empty_frames,
        specific_character_set=character_set(source[0]),
    )


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
    except DicomReadError as exc:
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
    options: SegOptions = DEFAULT_SEG_OPTIONS,
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
    options
        Transfer syntax and empty frames (:class:`~iterseg.dicom.seg_options.SegOptions`).

    Raises
    ------
    SegExportError
        If the series is unreadable or irregular (gantry tilt, missing slices, mixed
        orientations), no series fits, the label image does not overlap the series, or it holds
        values that are not labels of the ROI YAML.

    """
    labels = _read_label_image(labels_path)
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
        options,
    )


def _read_label_image(labels_path: Path) -> Any:
    """The 3D single-component SimpleITK image in ``labels_path``; :class:`SegExportError` otherwise."""
    import SimpleITK as sitk

    try:
        labels = sitk.ReadImage(str(labels_path))
    except RuntimeError as exc:
        raise SegExportError(
            f"{labels_path}: not a readable label image ({str(exc).splitlines()[0]})."
        ) from exc
    if labels.GetDimension() != 3 or labels.GetNumberOfComponentsPerPixel() != 1:
        raise SegExportError(f"{labels_path}: expected a 3D single-component label image.")
    return labels


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
    options: SegOptions = DEFAULT_SEG_OPTIONS,
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
    options
        As for :func:`export_seg`.

    Raises
    ------
    SegExportError
        Irregular series, values outside ``values``, or no labelled voxel on the series' grid.

    """
    grid = grid or series_grid(series)
    array, resampled = _on_grid(labels, grid, series, source_name)
    _check_values(array, values, source_name)
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
        options,
    )
    counts = {name: int(np.count_nonzero(array == value)) for name, value in values.items() if value > 0}
    logger.info("%s: SEG of series %s written (%s)", out, series.series_uid, counts)
    return ExportResult(out, series.series_uid, len(series.datasets), resampled, counts)


def _on_grid(labels: Any, grid: Grid, series: ImageSeries, source_name: str) -> tuple[np.ndarray, bool]:
    """The label image's voxels on ``grid`` (resampled, with a warning, when off it); whether resampled."""
    import SimpleITK as sitk

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
    return sitk.GetArrayFromImage(labels), resampled


def _check_values(array: np.ndarray, values: dict[str, int], source_name: str) -> None:
    """Refuse voxel values that are not labels of ``values``."""
    unknown: list[int] = []
    # ROI YAML values are 0..n, so a min/max check suffices; the full scan only on error.
    if array.min() < 0 or array.max() > max(values.values()):
        unknown = sorted(int(v) for v in np.unique(array) if int(v) not in values.values())
    if unknown:
        raise SegExportError(
            f"{source_name}: values {unknown} are not labels "
            f"({', '.join(f'{n}={v}' for n, v in values.items())}); add them to the ROI YAML or relabel."
        )
