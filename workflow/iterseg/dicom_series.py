"""Reading an image series in geometric order: the order of positions along the slice normal."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from iterseg.errors import PredictionError

logger = logging.getLogger(__name__)

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # the DICOMDIR of a CD/USB export
# A file without the 128-byte preamble starts with its first element's group number
# (little endian): 0x0002 (file meta) or 0x0008 (identification), as old scanner exports do.
_RAW_STARTS = (b"\x02\x00", b"\x08\x00")
_REQUIRED = ("SOPInstanceUID", "SeriesInstanceUID", "Modality")


def read_header(path: Path) -> pydicom.Dataset | None:
    """The header of a DICOM file, recognised by content whatever its name; None for anything else.

    A file is DICOM if it has the preamble and ``DICM`` prefix, or (exports without preamble)
    if it parses as a data set carrying SOP/series UIDs and a modality. ``DICOMDIR`` index files
    describe an export but hold no image, and are skipped.
    """
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        try:
            with path.open("rb") as handle:
                if handle.read(2) not in _RAW_STARTS:
                    return None
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            if not all(ds.get(key) for key in _REQUIRED):
                return None
        except Exception:  # force-parsing arbitrary bytes can fail in many ways
            return None
    except (OSError, EOFError, ValueError, KeyError, TypeError):
        return None
    meta = getattr(ds, "file_meta", None)
    if meta is not None and str(meta.get("MediaStorageSOPClassUID", "")) == MEDIA_STORAGE_DIRECTORY:
        logger.debug("skipping DICOMDIR %s", path)
        return None
    return ds


def read_dataset(path: Path, *, stop_before_pixels: bool = False) -> pydicom.Dataset:
    """Read a file :func:`read_header` recognised as DICOM, with or without its preamble."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)


def contour_points(contour: pydicom.Dataset) -> np.ndarray:
    """(n, 3) ContourData of an RTSTRUCT contour, parsed straight from its text.

    pydicom makes one DSfloat object per number: for a BODY outline on 200 slices that is over
    a million objects, seconds and hundreds of MB; numpy parses the backslash-separated text.
    """
    element = contour.get_item("ContourData")
    raw = getattr(element, "value", None)
    if isinstance(raw, bytes) and not isinstance(element, pydicom.DataElement):
        values = np.array(raw.replace(b"\\", b" ").split(), float)
    else:
        values = np.asarray(contour.ContourData, float)
    return values.reshape(-1, 3)


def dicom_files(*folders: Path) -> list[tuple[Path, pydicom.Dataset]]:
    """Every DICOM file below ``folders`` with its header, by content (hidden files skipped)."""
    found = []
    paths = sorted(
        p for root in folders for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")
    )
    for path in paths:
        ds = read_header(path)
        if ds is None:
            logger.debug("skipping non-DICOM file %s", path)
            continue
        found.append((path, ds))
    return found


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
    for path, ds in dicom_files(folder):
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

    SimpleITK (GDCM) is what conversion reads training images with, so intensities and
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
