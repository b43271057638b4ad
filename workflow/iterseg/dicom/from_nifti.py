"""A NIfTI image written as a single-frame DICOM series (CT or MR Image Storage) of new UIDs.

Predictions of an image that came as NIfTI only can then go out as a DICOM-SEG of this series
and be opened in a viewer or stored in a PACS. SimpleITK reads NIfTI into LPS patient
coordinates, the coordinates DICOM uses, so the grid is written as SimpleITK reports it: slice
k at ``origin + k * spacing_z * direction[:, 2]``, each row running along ``direction[:, 0]``
(the column index), each column along ``direction[:, 1]``. A left-handed grid (one flipped
axis) is written in reverse slice order, since DICOM's slice normal is always row x column.
"""

from __future__ import annotations

import datetime
import logging
import shutil
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    RE_VALID_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from iterseg.errors import DicomWriteError
from iterseg.paths import partial_path

logger = logging.getLogger(__name__)

MANUFACTURER = "iterseg"
SLICE_SUFFIX = ".dcm"
_INT16, _UINT16 = np.dtype(np.int16), np.dtype(np.uint16)
# Candidate RescaleSlopes, coarsest first: the first that reproduces every voxel is used.
_SLOPES = tuple(
    sorted(
        {1.0, *(2.0**-k for k in range(1, 17)), *(m * 10.0**-d for d in range(1, 7) for m in (1, 2, 5))},
        reverse=True,
    )
)
_SAMPLE = 65536  # voxels tried per candidate encoding before the whole volume is checked


class Modality(StrEnum):
    """The image modalities a NIfTI can be written as, with their SOP class."""

    CT = "CT"
    MR = "MR"

    @property
    def sop_class_uid(self) -> UID:
        """CT Image Storage or MR Image Storage."""
        return CTImageStorage if self is Modality.CT else MRImageStorage


@dataclass(frozen=True)
class PixelEncoding:
    """How voxel values are stored: ``value = stored * slope + intercept``."""

    dtype: np.dtype[Any]  # int16 or uint16
    slope: float
    intercept: float
    max_error: float  # largest difference between a written and a NIfTI value; 0.0 when exact

    @property
    def exact(self) -> bool:
        """Whether every voxel reads back as the NIfTI's value."""
        return self.max_error == 0.0


@dataclass(frozen=True)
class WrittenSeries:
    """What :func:`nifti_to_dicom` wrote."""

    folder: Path
    files: tuple[Path, ...]  # in slice order, which is InstanceNumber order
    modality: Modality
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    encoding: PixelEncoding
    reversed_slices: bool  # the NIfTI's slice axis ran against the DICOM slice normal


@dataclass(frozen=True)
class _Header:
    """The attributes every slice shares."""

    modality: Modality
    patient_id: str
    patient_name: str
    study_uid: str
    series_uid: str
    frame_uid: str
    accession: str
    study_description: str
    series_description: str
    study_date: str
    time: str


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters (the DS limit), as precise as that allows.

    NIfTI-1 stores spacings and offsets in single precision: a float32 value is written as the
    shortest decimal that is that float32 (0.6, not 0.60000002384186), its value in the file.
    """
    single = np.float32(value)
    if np.isfinite(single) and float(single) == float(value):
        text = np.format_float_positional(single, trim="-")
        if len(text) <= 16:
            return text
    return format_number_as_ds(float(value))


def _read_image(nifti: Path) -> tuple[Any, bool]:
    """The NIfTI as a right-handed 3D SimpleITK image; whether its slice axis had to be reversed.

    DICOM's slice normal is always row x column: a left-handed NIfTI grid (one flipped axis) is
    written in reversed slice order, the same voxels at the same physical positions.
    """
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(nifti))
    except RuntimeError as exc:
        raise DicomWriteError(f"{nifti}: not a readable NIfTI image ({str(exc).strip()[:200]}).") from exc
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise DicomWriteError(
            f"{nifti}: a {image.GetDimension()}D image of {image.GetNumberOfComponentsPerPixel()} "
            f"component(s) per voxel (size {image.GetSize()}); only 3D scalar images can be written as a "
            "series: split a 4D image into its volumes first (e.g. fslsplit) and convert each."
        )
    direction = np.asarray(image.GetDirection(), np.float64).reshape(3, 3)
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise DicomWriteError(
            f"{nifti}: its axes are not orthogonal (sheared grid); DICOM images cannot hold that: "
            "resample it onto an orthogonal grid first."
        )
    reverse = bool(np.linalg.det(direction) < 0)
    if reverse:
        image = sitk.Flip(image, [False, False, True])  # keeps every voxel's physical position
    return image, reverse


def _fits(n_lo: int, n_hi: int, dtype: np.dtype[Any]) -> int | None:
    """The shift (in stored units) that brings integers ``n_lo..n_hi`` into ``dtype``; None if none."""
    info = np.iinfo(dtype)
    if n_hi - n_lo > int(info.max) - int(info.min):
        return None
    if n_lo >= info.min and n_hi <= info.max:
        return 0
    return n_lo - int(info.min) if n_lo < info.min else n_hi - int(info.max)


def _reproduces(values: np.ndarray, slope: float, intercept: float, dtype: np.dtype[Any]) -> bool:
    """Whether ``values`` stored in ``dtype`` with ``slope`` and ``intercept`` read back unchanged."""
    info = np.iinfo(dtype)
    stored = np.round((values.astype(np.float64) - intercept) / slope)
    if stored.min() < info.min or stored.max() > info.max:
        return False
    return bool(np.array_equal((stored * slope + intercept).astype(values.dtype), values))


def _candidates(lo: float, hi: float, dtype: np.dtype[Any]) -> list[tuple[float, float]]:
    """(slope, intercept) pairs to try, as written in DS: coarsest slope first, intercept 0 first."""
    pairs = []
    for slope in _SLOPES:
        n_lo, n_hi = round(lo / slope), round(hi / slope)
        shift = _fits(n_lo, n_hi, dtype)
        if shift is not None:
            pairs.append((float(_ds(slope)), float(_ds(shift * slope))))
        if lo != 0.0 and _fits(0, round((hi - lo) / slope), dtype) is not None:
            pairs.append((float(_ds(slope)), float(_ds(lo - float(np.iinfo(dtype).min) * slope))))
    return pairs


def pixel_encoding(values: np.ndarray, modality: Modality) -> PixelEncoding:
    """The 16-bit encoding of ``values`` that reproduces them exactly, or the closest one.

    CT is stored signed (int16), MR unsigned unless it has negative values. Integer values that
    fit are stored as they are; fractional ones with the coarsest RescaleSlope (2^-k or
    {1, 2, 5} x 10^-d) under which every value reads back unchanged at the image's precision.

    Raises
    ------
    DicomWriteError
        If a value is NaN or infinite.

    """
    if not np.all(np.isfinite(values)):
        raise DicomWriteError("the image holds NaN or infinite values")
    lo, hi = float(values.min()), float(values.max())
    dtype = _INT16 if modality is Modality.CT or lo < 0 else _UINT16
    flat = values.ravel()
    sample = np.concatenate([flat[:: max(1, flat.size // _SAMPLE)], values.min(keepdims=True).ravel(),
                             values.max(keepdims=True).ravel()])  # fmt: skip
    pairs = _candidates(lo, hi, dtype)
    for slope, intercept in pairs:
        if _reproduces(sample, slope, intercept, dtype) and _reproduces(values, slope, intercept, dtype):
            return PixelEncoding(dtype, slope, intercept, 0.0)
    info = np.iinfo(dtype)
    # Slightly coarser than the range needs, so rounding the DS text never overflows 16 bits.
    slope = float(_ds(max(hi - lo, 1e-12) / (int(info.max) - int(info.min)) * (1 + 1e-9)))
    pairs.append((slope, float(_ds(lo - int(info.min) * slope))))
    slope, intercept = min(pairs, key=lambda pair: _error(sample, pair[0], pair[1], dtype))
    return PixelEncoding(dtype, slope, intercept, _error(values, slope, intercept, dtype))


def _error(values: np.ndarray, slope: float, intercept: float, dtype: np.dtype[Any]) -> float:
    """The largest difference between ``values`` and what is read back of them."""
    stored = _stored(values, PixelEncoding(dtype, slope, intercept, 0.0))
    return float(np.max(np.abs(stored * slope + intercept - values.astype(np.float64))))


def _stored(values: np.ndarray, encoding: PixelEncoding) -> np.ndarray:
    stored = np.round((values.astype(np.float64) - encoding.intercept) / encoding.slope)
    info = np.iinfo(encoding.dtype)
    return np.clip(stored, info.min, info.max).astype(encoding.dtype)


def _check_identifiers(
    patient_id: str, study_uid: str | None, accession: str, study_date: str | None
) -> None:
    """Refuse identifiers DICOM cannot carry, before anything is written."""
    if not patient_id.strip() or len(patient_id) > 64 or "\\" in patient_id:
        raise DicomWriteError(
            f"--patient-id {patient_id!r}: give a PatientID of 1 to 64 characters without a backslash."
        )
    if study_uid is not None and not (len(study_uid) <= 64 and RE_VALID_UID.match(study_uid)):
        raise DicomWriteError(
            f"--study-uid {study_uid!r} is not a valid DICOM UID (digits and dots, at most 64 characters)."
        )
    if len(accession) > 16 or "\\" in accession:
        raise DicomWriteError(f"--accession {accession!r}: an AccessionNumber has at most 16 characters.")
    if study_date is not None:
        try:
            datetime.datetime.strptime(study_date, "%Y%m%d")
        except ValueError:
            raise DicomWriteError(f"--study-date {study_date!r}: give the date as YYYYMMDD.") from None


def _check_out(out: Path, force: bool) -> None:
    """Refuse an ``out`` that is a file, or a non-empty folder without ``force``.

    Even with ``force`` a folder holding anything but DICOM slices is refused: a mistyped
    ``--out`` must not delete someone's data.
    """
    if out.exists() and not out.is_dir():
        raise DicomWriteError(f"{out}: is a file; give --out a folder (new or empty).")
    content = sorted(out.iterdir()) if out.is_dir() else []
    if content and not force:
        raise DicomWriteError(
            f"{out}: the folder is not empty ({len(content)} entries); choose a new folder, or add --force "
            "to replace the series in it."
        )
    foreign = [p.name for p in content if not (p.is_file() and p.suffix.lower() == SLICE_SUFFIX)]
    if foreign:
        raise DicomWriteError(
            f"{out}: holds more than DICOM slices ({', '.join(foreign[:3])}); --force replaces only a folder "
            "of .dcm files: choose another --out."
        )


def _new_uid(uid_seed: str | None, *parts: str) -> str:
    """A UID under the project's root: random, or derived from ``uid_seed`` and ``parts``."""
    from iterseg.rawdata.demo import UID_ROOT

    return str(generate_uid(UID_ROOT, None if uid_seed is None else [uid_seed, *parts]))


def _shared(header: _Header, image: Any, encoding: PixelEncoding) -> Dataset:
    """Patient, General Study/Series/Equipment, Frame of Reference, Image Pixel and SOP Common values."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: patient names are not all ASCII
    ds.SOPClassUID = header.modality.sop_class_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = header.study_date, header.time
    ds.PatientName, ds.PatientID = header.patient_name, header.patient_id
    ds.PatientBirthDate, ds.PatientSex = "", ""
    ds.StudyInstanceUID, ds.StudyID = header.study_uid, ""
    ds.StudyDate, ds.StudyTime = header.study_date, header.time
    ds.AccessionNumber, ds.ReferringPhysicianName = header.accession, ""
    if header.study_description:
        ds.StudyDescription = header.study_description
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = header.modality.value, header.series_uid, 1
    ds.Laterality = ""  # type 2C: the NIfTI does not say whether a paired organ was imaged
    ds.SeriesDate, ds.SeriesTime = header.study_date, header.time
    ds.ContentDate, ds.ContentTime = header.study_date, header.time
    if header.series_description:
        ds.SeriesDescription = header.series_description
    ds.PatientPosition = ""  # unknown: the NIfTI does not say how the patient lay
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = header.frame_uid, ""
    ds.Manufacturer, ds.SoftwareVersions = MANUFACTURER, _version()
    ds.DerivationDescription = "Converted from NIfTI by iterseg nifti-to-dicom"
    ds.PatientOrientation = ""
    ds.Rows, ds.Columns = image.GetSize()[1], image.GetSize()[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if encoding.dtype == _INT16 else 0
    _modality_module(ds, header.modality, encoding)
    return ds


def _modality_module(ds: Dataset, modality: Modality, encoding: PixelEncoding) -> None:
    """The CT Image or MR Image module's own attributes (acquisition values unknown: empty).

    The MR Image IOD has no RescaleSlope/Intercept: they are written only where the values need
    them (as Philips scanners do; GDCM, hence SimpleITK, and viewers apply them).
    """
    if modality is Modality.CT or (encoding.slope, encoding.intercept) != (1.0, 0.0):
        ds.RescaleIntercept, ds.RescaleSlope = _ds(encoding.intercept), _ds(encoding.slope)
    if modality is Modality.CT:
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.RescaleType, ds.KVP, ds.AcquisitionNumber = "HU", "", ""
        return
    ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    # Research mode, no variant: the NIfTI does not say which sequence acquired it.
    ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "RM", "NONE", ""
    ds.MRAcquisitionType, ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = "", "", "", ""


def _version() -> str:
    from iterseg import __version__

    return f"iterseg {__version__}"


def _grid(image: Any) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Slice positions (n, 3), the direction matrix (columns: row, column, normal) and the spacing."""
    direction = np.asarray(image.GetDirection(), np.float64).reshape(3, 3)
    spacing = tuple(float(v) for v in image.GetSpacing())
    steps = np.arange(image.GetSize()[2])[:, None] * spacing[2] * direction[:, 2]
    return np.asarray(image.GetOrigin(), np.float64) + steps, direction, spacing  # type: ignore[return-value]


def _write_slices(
    image: Any, header: _Header, encoding: PixelEncoding, folder: Path, uid_seed: str | None
) -> list[Path]:
    """One file per slice into ``folder``, InstanceNumber 1 at the lowest position along the normal."""
    import SimpleITK as sitk

    shared = _shared(header, image, encoding)
    positions, direction, spacing = _grid(image)
    stored = _stored(sitk.GetArrayFromImage(image), encoding)
    lo, hi = float(stored.min()) * encoding.slope, float(stored.max()) * encoding.slope
    center, width = _ds(encoding.intercept + (lo + hi) / 2), _ds(max(hi - lo, 1.0))
    width_digits = len(str(len(positions)))
    files = []
    for k, position in enumerate(positions):
        ds = shared.copy()
        ds.SOPInstanceUID = _new_uid(uid_seed, header.series_uid, str(k))
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in (*direction[:, 0], *direction[:, 1])]
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # between rows, then between columns
        ds.SliceThickness = ds.SpacingBetweenSlices = _ds(spacing[2])
        ds.SliceLocation = _ds(float(position @ direction[:, 2]))
        ds.WindowCenter, ds.WindowWidth = center, width
        ds.PixelData = np.ascontiguousarray(stored[k]).astype(encoding.dtype.newbyteorder("<")).tobytes()
        path = folder / f"{k + 1:0{width_digits}d}{SLICE_SUFFIX}"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        files.append(path)
    return files


def _install(staging: Path, out: Path) -> None:
    """Rename the finished ``staging`` folder to ``out``; a replaced ``out`` is deleted after."""
    old = partial_path(out) if out.exists() else None
    if old is not None:
        out.rename(old)
    staging.rename(out)
    if old is not None:
        shutil.rmtree(old)


def nifti_to_dicom(
    nifti: Path,
    out: Path,
    modality: Modality,
    patient_id: str,
    patient_name: str | None = None,
    study_uid: str | None = None,
    accession: str = "",
    study_description: str = "",
    series_description: str = "",
    study_date: str | None = None,
    force: bool = False,
    uid_seed: str | None = None,
) -> WrittenSeries:
    """Write the 3D NIfTI image ``nifti`` as a DICOM series (one file per slice) in the folder ``out``.

    Parameters
    ----------
    nifti
        A 3D scalar NIfTI (or any image SimpleITK reads).
    out
        Folder to create; written into a hidden staging folder beside it and renamed into place.
    modality
        CT (CT Image Storage, values as HU) or MR (MR Image Storage).
    patient_id, patient_name, study_uid, accession, study_description, series_description
        The identifiers written; a new StudyInstanceUID unless ``study_uid`` is given.
    study_date
        YYYYMMDD; default today.
    force
        Replace a non-empty ``out`` that holds only ``.dcm`` files.
    uid_seed
        Derive every UID from this text instead of at random (the same seed gives the same UIDs).

    Returns
    -------
    WrittenSeries
        The files in slice order, the UIDs and the pixel encoding (``max_error`` > 0: not exact).

    Raises
    ------
    DicomWriteError
        For an image that is not 3D scalar, has sheared axes or non-finite values, for invalid
        identifiers, or an ``out`` that exists and is not an empty folder (without ``force``).

    """
    _check_identifiers(patient_id, study_uid, accession, study_date)
    _check_out(out, force)
    image, reversed_slices, encoding = _prepare(nifti, modality)
    study = study_uid or _new_uid(uid_seed, "study")
    series, frame = _new_uid(uid_seed, "series"), _new_uid(uid_seed, "frame")
    now = datetime.datetime.now()
    header = _Header(modality, patient_id, patient_name or "", study, series, frame, accession,
                     study_description, series_description, study_date or now.strftime("%Y%m%d"),
                     now.strftime("%H%M%S"))  # fmt: skip
    files = _write_atomically(image, header, encoding, out, uid_seed)
    logger.info("%s: %d %s slices of series %s written to %s", nifti, len(files), modality, series, out)
    return WrittenSeries(out, files, modality, study, series, frame, encoding, reversed_slices)


def _prepare(nifti: Path, modality: Modality) -> tuple[Any, bool, PixelEncoding]:
    """The right-handed image, whether its slices were reversed, and its pixel encoding (logged)."""
    import SimpleITK as sitk

    image, reversed_slices = _read_image(nifti)
    try:
        encoding = pixel_encoding(sitk.GetArrayViewFromImage(image), modality)
    except DicomWriteError as exc:
        raise DicomWriteError(f"{nifti}: {exc}; replace them (e.g. by the background value) first.") from None
    if reversed_slices:
        logger.info("%s: left-handed grid; slices written in reverse order (same voxel positions)", nifti)
    if not encoding.exact:
        logger.warning(
            "%s: its values do not fit 16 bits at their precision; written with RescaleSlope %g and "
            "RescaleIntercept %g, each voxel off by up to %.6g",
            nifti, encoding.slope, encoding.intercept, encoding.max_error,
        )  # fmt: skip
    return image, reversed_slices, encoding


def _write_atomically(
    image: Any, header: _Header, encoding: PixelEncoding, out: Path, uid_seed: str | None
) -> tuple[Path, ...]:
    """Write the slices into a staging folder beside ``out`` and rename it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = partial_path(out)
    staging.mkdir()
    try:
        files = _write_slices(image, header, encoding, staging, uid_seed)
        _install(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return tuple(out / f.name for f in files)
