"""Reading an image series in geometric order: the order of positions along the slice normal."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from iterseg.errors import PredictionError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageSeries:
    """A single-frame image series, slices sorted by position along the slice normal."""

    series_uid: str
    patient_id: str
    files: tuple[Path, ...]
    datasets: tuple[pydicom.Dataset, ...]  # headers only, same order as ``files``


def slice_normal(ds: pydicom.Dataset) -> np.ndarray:
    """Unit normal of the image plane from ImageOrientationPatient (row x column)."""
    iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    return normal / np.linalg.norm(normal)


def sort_by_position(
    datasets: Sequence[pydicom.Dataset], files: Sequence[Path]
) -> tuple[list[pydicom.Dataset], list[Path]]:
    """Sort slices by ImagePositionPatient projected on the slice normal (ascending).

    Never by file name or InstanceNumber: neither is guaranteed to follow the geometry.

    Raises
    ------
    PredictionError
        If slices disagree on orientation, or two slices share a position.

    """
    if not datasets:
        raise PredictionError("empty series")
    normal = slice_normal(datasets[0])
    for ds, path in zip(datasets, files, strict=True):
        if not np.allclose(slice_normal(ds), normal, atol=1e-4):
            raise PredictionError(f"{path}: ImageOrientationPatient differs from the rest of its series.")
    positions = np.array(
        [np.dot(np.asarray(ds.ImagePositionPatient, dtype=float), normal) for ds in datasets]
    )
    order = np.argsort(positions, kind="stable")
    gaps = np.diff(positions[order])
    if len(gaps) and np.min(gaps) < 1e-3:
        duplicate = files[int(order[int(np.argmin(gaps))])]
        raise PredictionError(
            f"{duplicate}: two slices of the series share one position; remove the duplicate."
        )
    if len(gaps) and not np.allclose(gaps, gaps[0], rtol=0.01, atol=0.01):
        logger.warning(
            "%s: slice spacing is not uniform (%s mm)", files[0].parent, np.unique(np.round(gaps, 3))
        )
    return [datasets[i] for i in order], [files[i] for i in order]


def find_image_series(folder: Path, modality: str | tuple[str, ...]) -> list[ImageSeries]:
    """All series of ``modality`` (one or several) below ``folder``, each sorted geometrically."""
    modalities = (modality,) if isinstance(modality, str) else modality
    grouped: dict[str, list[tuple[pydicom.Dataset, Path]]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        if getattr(ds, "Modality", None) not in modalities or "ImagePositionPatient" not in ds:
            continue
        grouped.setdefault(str(ds.SeriesInstanceUID), []).append((ds, path))
    series = []
    for uid, items in sorted(grouped.items()):
        datasets, files = sort_by_position([d for d, _ in items], [p for _, p in items])
        series.append(
            ImageSeries(uid, str(getattr(datasets[0], "PatientID", "")), tuple(files), tuple(datasets))
        )
    return series


def read_volume(series: ImageSeries) -> tuple[np.ndarray, dict[str, tuple[float, ...]]]:
    """Read pixel data as (slices, rows, columns) in ``series.files`` order, with SimpleITK geometry.

    SimpleITK (GDCM) is what med-imagetools reads training images with, so intensities and
    axis order match what nnU-Net was trained on.
    """
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in series.files])
    image = reader.Execute()
    array = sitk.GetArrayFromImage(image)
    geometry = {
        "spacing": tuple(image.GetSpacing()),
        "origin": tuple(image.GetOrigin()),
        "direction": tuple(image.GetDirection()),
    }
    return array, geometry
