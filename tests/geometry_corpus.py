"""Synthetic single-frame CT series on any geometry, for the SEG export corpus.

Each series is written the way scanners do it, not the way readers like it: files named by
hash, InstanceNumber independent of position, optional messy headers (empty type-2
attributes, no character set, private tags). :func:`write_nifti` writes NIfTI images on the
same geometries, for the series ``iterseg nifti-to-dicom`` makes of them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


@dataclass
class SeriesSpec:
    """Geometry and quirks of one synthetic series."""

    rows: int = 24
    cols: int = 20
    slices: int = 9
    row_dir: tuple[float, float, float] = (1.0, 0.0, 0.0)  # direction along a row (column index grows)
    col_dir: tuple[float, float, float] = (0.0, 1.0, 0.0)  # direction down a column (row index grows)
    pixel_spacing: tuple[float, float] = (0.8, 0.6)  # between rows, between columns (mm)
    slice_step: float = 2.5  # along the normal; negative = positions decrease with InstanceNumber
    tilt: float = 0.0  # mm per slice along row_dir (gantry tilt)
    origin: tuple[float, float, float] = (-10.0, -20.0, 30.0)
    drop_slice: int | None = None  # leave one slice out (uneven spacing)
    odd_orientation_slice: int | None = None  # one slice with another orientation
    messy: bool = False  # empty type-2 attributes, no character set, private tags
    series_uid: str = field(default_factory=generate_uid)
    study_uid: str = "1.2.826.0.1.3680043.10.1451.77.1"
    frame_uid: str = "1.2.826.0.1.3680043.10.1451.77.2"


def normal(spec: SeriesSpec) -> np.ndarray:
    n = np.cross(spec.row_dir, spec.col_dir)
    return n / np.linalg.norm(n)


def write_series(spec: SeriesSpec, folder: Path) -> list[Path]:
    """Write the series into ``folder``; return the files in InstanceNumber order."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(int(hashlib.sha1(spec.series_uid.encode()).hexdigest()[:8], 16))
    files = []
    for k in range(spec.slices):
        if k == spec.drop_slice:
            continue
        position = (
            np.asarray(spec.origin)
            + k * spec.slice_step * normal(spec)
            + k * spec.tilt * np.asarray(spec.row_dir)
        )
        row_dir, col_dir = spec.row_dir, spec.col_dir
        if k == spec.odd_orientation_slice:
            row_dir = tuple(
                np.round(np.asarray(row_dir) * np.cos(0.1) + np.asarray(col_dir) * np.sin(0.1), 6)
            )
        sop_uid = generate_uid()
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        if not spec.messy:
            ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.Modality = "CT"
        ds.PatientName = "" if spec.messy else "Geometry^Corpus"
        ds.PatientID = "GEO001"
        ds.PatientBirthDate = ""
        ds.PatientSex = "" if spec.messy else "O"
        ds.StudyInstanceUID = spec.study_uid
        ds.StudyDate = "" if spec.messy else "20260101"
        ds.StudyTime = "" if spec.messy else "120000"
        ds.StudyID = "" if spec.messy else "S1"
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.SeriesInstanceUID = spec.series_uid
        ds.SeriesNumber = 3
        ds.InstanceNumber = k + 1
        ds.FrameOfReferenceUID = spec.frame_uid
        ds.PositionReferenceIndicator = ""
        ds.Manufacturer = "" if spec.messy else "Synthetic"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [float(v) for v in np.round(position, 4)]
        ds.PixelSpacing = [float(v) for v in spec.pixel_spacing]
        ds.SliceThickness = abs(spec.slice_step)
        ds.Rows, ds.Columns = spec.rows, spec.cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.KVP = ""
        if spec.messy:
            ds.add_new(0x00091010, "LO", "ACME private creator")
            ds.add_new(0x00091011, "OB", b"\x00\x01\x02\x03")
        ds.PixelData = rng.integers(-1000, 1000, (spec.rows, spec.cols), dtype=np.int16).tobytes()
        path = folder / f"{hashlib.sha1(sop_uid.encode()).hexdigest()[:12]}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        files.append(path)
    return files


def label_volume(shape: tuple[int, int, int]) -> np.ndarray:
    """A large, a medium and a one-voxel label, asymmetric so any flip shows."""
    array = np.zeros(shape, np.uint8)
    z, y, x = shape
    array[: max(1, z - 1), 1 : y - 2, 1 : x // 2 + 2] = 1
    array[z // 2 :, y // 2 : y - 3, x // 2 : x - 2] = 2
    array[0, 0, x - 1] = 3
    return array


def rotation(deg_z: float, deg_x: float) -> np.ndarray:
    """A rotation about z then x: the columns are an oblique grid's axes."""
    a, b = np.radians(deg_z), np.radians(deg_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


_OBLIQUE = rotation(30, 20)
# The corpus's geometries as NIfTI images, for the series `iterseg nifti-to-dicom` writes from them.
# A negative slice_step makes a left-handed NIfTI grid (slice axis against row x column).
NIFTI_GEOMETRIES = {
    "axial-increasing": SeriesSpec(),
    "axial-decreasing": SeriesSpec(slice_step=-2.5),
    "flipped": SeriesSpec(row_dir=(-1.0, 0.0, 0.0), col_dir=(0.0, -1.0, 0.0)),
    "flipped-one-axis": SeriesSpec(row_dir=(-1.0, 0.0, 0.0), slice_step=-2.5),  # diag(-1, 1, 1)
    "sagittal": SeriesSpec(row_dir=(0.0, 1.0, 0.0), col_dir=(0.0, 0.0, -1.0)),
    "coronal": SeriesSpec(row_dir=(1.0, 0.0, 0.0), col_dir=(0.0, 0.0, -1.0)),
    "oblique": SeriesSpec(
        row_dir=tuple(np.round(_OBLIQUE[:, 0], 6)),  # type: ignore[arg-type]
        col_dir=tuple(np.round(_OBLIQUE[:, 1], 6)),  # type: ignore[arg-type]
    ),
    "oblique-left-handed": SeriesSpec(
        row_dir=tuple(np.round(_OBLIQUE[:, 0], 6)),  # type: ignore[arg-type]
        col_dir=tuple(np.round(_OBLIQUE[:, 1], 6)),  # type: ignore[arg-type]
        slice_step=-2.5,
    ),
    "non-square-pixels": SeriesSpec(rows=30, cols=16, pixel_spacing=(0.5, 1.25)),
    "single-slice": SeriesSpec(slices=1),
}


def write_nifti(spec: SeriesSpec, path: Path, values: np.ndarray | None = None) -> Any:
    """A NIfTI of random HU (or ``values``: slices, rows, cols) on the grid of ``spec``, as read back.

    Its axes are the series' (column index along ``row_dir``, row index along ``col_dir``), the
    slice axis along the normal times the sign of ``slice_step``.
    """
    import SimpleITK as sitk

    if values is None:
        rng = np.random.default_rng(int(hashlib.sha1(spec.series_uid.encode()).hexdigest()[:8], 16))
        values = rng.integers(-1024, 3072, (spec.slices, spec.rows, spec.cols)).astype(np.int16)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((spec.pixel_spacing[1], spec.pixel_spacing[0], abs(spec.slice_step)))
    image.SetOrigin(spec.origin)
    axes = np.column_stack([spec.row_dir, spec.col_dir, np.sign(spec.slice_step) * normal(spec)])
    image.SetDirection([float(v) for v in axes.ravel()])
    sitk.WriteImage(image, str(path))
    return sitk.ReadImage(str(path))
