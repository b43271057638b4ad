"""Reading an image series in geometric order: the order of positions along the slice normal."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from iterseg.errors import DicomReadError

logger = logging.getLogger(__name__)

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # the DICOMDIR of a CD/USB export
# A file without the 128-byte preamble starts with its first element's group number
# (little endian): 0x0002 (file meta) or 0x0008 (identification), as old scanner exports do.
_RAW_STARTS = (b"\x02\x00", b"\x08\x00")
_REQUIRED = ("SOPInstanceUID", "SeriesInstanceUID", "Modality")


def header_text(ds: pydicom.Dataset, keyword: str) -> str:
    """A text attribute as one printable string (several values joined by a backslash).

    pydicom splits a PatientID holding a backslash into several values (its repr is a Python
    list), and a NUL or newline from a hostile header would land raw in logs and records.
    """
    value = ds.get(keyword, "")
    if isinstance(value, pydicom.multival.MultiValue):
        value = "\\".join(str(v) for v in value)
    return "".join(c for c in str(value if value is not None else "") if c.isprintable()).strip()


class CorruptDicom(Exception):  # noqa: N818 - a reason, carried to the caller's list
    """A file that is DICOM but cannot be used: truncated, corrupt, or without its UIDs."""


# Names a scanner or copy gives slices: an empty one is a lost slice, not a stray note.
_SLICE_SUFFIXES = ("", ".dcm", ".ima", ".dicom")


def _pixel_data_problem(path: Path, ds: pydicom.Dataset, tell: int) -> str | None:
    """Why the pixel data that starts at byte ``tell`` of ``path`` is incomplete, or None.

    pydicom reads a truncated PixelData without complaint (it returns the bytes there are),
    and SimpleITK then fails on the whole series with a message naming none of its files.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        handle.seek(tell)
        head = handle.read(12)
        if head[:2] != b"\xe0\x7f":
            return None  # stopped before another element: not a pixel data set
        if len(head) < 8:
            return f"the file ends inside its PixelData element ({size} bytes)"
        implicit = bool(getattr(ds, "is_implicit_VR", False)) or not head[4:6].isalpha()
        length = int.from_bytes(head[4:8] if implicit else head[8:12], "little")
        start = tell + (8 if implicit else 12)
        if length == 0xFFFFFFFF:  # encapsulated (compressed) frames end with a delimiter
            handle.seek(max(size - 8, 0))
            if handle.read(8) != b"\xfe\xff\xdd\xe0\x00\x00\x00\x00":
                return "its compressed PixelData has no end delimiter: the file was cut short"
            return None
    if start + length > size:
        return (
            f"its PixelData declares {length} bytes but the file ends after {size - start}: it was cut short"
        )
    try:
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        bits = int(ds.BitsAllocated)
        expected = int(ds.Rows) * int(ds.Columns) * int(getattr(ds, "SamplesPerPixel", 1)) * frames
    except (AttributeError, TypeError, ValueError):
        return None  # the geometry checks name a missing Rows/Columns with its series
    needed = (expected * bits + 7) // 8
    if length < needed:
        return (
            f"its PixelData holds {length} bytes; its header ({ds.Rows}x{ds.Columns}, "
            f"{frames} frame(s)) needs {needed}"
        )
    return None


def _parses_raw(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(2) in _RAW_STARTS


def read_header(path: Path) -> pydicom.Dataset | None:
    """The header of a DICOM file, recognised by content whatever its name; None for anything else.

    A file is DICOM if it has the preamble and ``DICM`` prefix, or (exports without preamble)
    if it parses as a data set carrying SOP/series UIDs and a modality. ``DICOMDIR`` index files
    describe an export but hold no image, and are skipped.

    Raises
    ------
    CorruptDicom
        For a file that is DICOM (or an empty slice file) but cannot be used, with the reason:
        cut short, unparsable after its ``DICM`` prefix, or without its UIDs.

    """
    try:
        with path.open("rb") as handle:
            ds = pydicom.dcmread(handle, stop_before_pixels=True)
            tell = handle.tell()
    except InvalidDicomError:
        if path.stat().st_size == 0 and path.suffix.lower() in _SLICE_SUFFIXES:
            raise CorruptDicom("the file is empty (0 bytes): an interrupted copy?") from None
        if path.suffix.lower() in _SLICE_SUFFIXES[1:] and not _parses_raw(path):
            raise CorruptDicom(f"named {path.suffix} but not DICOM (no DICM prefix, no data set)") from None
        try:
            with path.open("rb") as handle:
                if handle.read(2) not in _RAW_STARTS:
                    return None
                handle.seek(0)
                ds = pydicom.dcmread(handle, stop_before_pixels=True, force=True)
                tell = handle.tell()
            if not all(ds.get(key) for key in _REQUIRED):
                return None
        except Exception:  # force-parsing arbitrary bytes can fail in many ways
            return None
    except Exception as exc:  # it claimed to be DICOM (the DICM prefix) and then broke
        raise CorruptDicom(f"unreadable after its DICM prefix ({type(exc).__name__}: {exc})") from exc
    meta = getattr(ds, "file_meta", None)
    if meta is not None and str(meta.get("MediaStorageSOPClassUID", "")) == MEDIA_STORAGE_DIRECTORY:
        logger.debug("skipping DICOMDIR %s", path)
        return None
    missing = [key for key in _REQUIRED if not ds.get(key)]
    if missing:
        raise CorruptDicom(f"a DICOM file without {', '.join(missing)}")
    if "PixelData" not in ds and tell < path.stat().st_size:
        problem = _pixel_data_problem(path, ds, tell)
        if problem:
            raise CorruptDicom(problem)
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


def dicom_files(
    *folders: Path, unreadable: list[tuple[Path, str]] | None = None
) -> list[tuple[Path, pydicom.Dataset]]:
    """Every DICOM file below ``folders`` with its header, by content (hidden files skipped).

    Files that are DICOM but unusable (truncated, corrupt, without UIDs) are appended to
    ``unreadable`` with the reason; without that list they are logged as warnings.
    """
    found = []
    paths = sorted(
        p for root in folders for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")
    )
    for path in paths:
        try:
            ds = read_header(path)
        except CorruptDicom as exc:
            if unreadable is None:
                logger.warning("%s: ignored: truncated or corrupt DICOM: %s", path, exc)
            else:
                unreadable.append((path, str(exc)))
            continue
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
    DicomReadError
        If slices disagree on orientation, or two slices share a position.

    """
    if not datasets:
        raise DicomReadError("empty series")
    normal = slice_normal(datasets[0])
    for ds, path in zip(datasets, files, strict=True):
        if not np.allclose(slice_normal(ds), normal, atol=1e-4):
            raise DicomReadError(f"{path}: ImageOrientationPatient differs from the rest of its series.")
    positions = np.array(
        [np.dot(np.asarray(ds.ImagePositionPatient, dtype=float), normal) for ds in datasets]
    )
    order = np.argsort(positions, kind="stable")
    gaps = np.diff(positions[order])
    if len(gaps) and np.min(gaps) < 1e-3:
        duplicate = files[int(order[int(np.argmin(gaps))])]
        raise DicomReadError(
            f"{duplicate}: two slices of the series share one position; remove the duplicate."
        )
    if len(gaps) and not np.allclose(gaps, gaps[0], rtol=0.01, atol=0.01):
        logger.warning(
            "%s: slice spacing is not uniform (%s mm)", files[0].parent, np.unique(np.round(gaps, 3))
        )
    return [datasets[i] for i in order], [files[i] for i in order]


def find_image_series(
    folder: Path,
    modality: str | tuple[str, ...],
    unreadable: list[tuple[Path, str]] | None = None,
    unorderable: list[tuple[ImageSeries, str]] | None = None,
) -> list[ImageSeries]:
    """All series of ``modality`` (one or several) below ``folder``, each sorted geometrically.

    ``unreadable``: as for :func:`dicom_files` (truncated or corrupt DICOM files, with the reason).
    ``unorderable``: series whose slices cannot be ordered (an MR 3-plane localizer mixes three
    orientations) go there, unsorted, with the reason, instead of raising :class:`DicomReadError`.
    """
    modalities = (modality,) if isinstance(modality, str) else modality
    grouped: dict[str, list[tuple[pydicom.Dataset, Path]]] = {}
    for path, ds in dicom_files(folder, unreadable=unreadable):
        if getattr(ds, "Modality", None) not in modalities or "ImagePositionPatient" not in ds:
            continue
        grouped.setdefault(str(ds.SeriesInstanceUID), []).append((ds, path))
    series = []
    for uid, items in sorted(grouped.items()):
        try:
            datasets, files = sort_by_position([d for d, _ in items], [p for _, p in items])
        except DicomReadError as exc:
            if unorderable is None:
                raise
            found = ImageSeries(
                uid,
                header_text(items[0][0], "PatientID"),
                tuple(p for _, p in items),
                tuple(d for d, _ in items),
            )
            unorderable.append((found, str(exc)))
            continue
        series.append(ImageSeries(uid, header_text(datasets[0], "PatientID"), tuple(files), tuple(datasets)))
    return series


def read_volume(series: ImageSeries) -> tuple[np.ndarray, dict[str, tuple[float, ...]]]:
    """Read pixel data as (slices, rows, columns) in ``series.files`` order, with SimpleITK geometry.

    SimpleITK (GDCM) is what conversion reads training images with, so intensities and
    axis order match what nnU-Net was trained on.
    """
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")  # not chosen by ITK for files without the DICM preamble
    reader.SetFileNames([str(f) for f in series.files])
    image = reader.Execute()
    array = sitk.GetArrayFromImage(image)
    geometry = {
        "spacing": tuple(image.GetSpacing()),
        "origin": tuple(image.GetOrigin()),
        "direction": tuple(image.GetDirection()),
    }
    return array, geometry
