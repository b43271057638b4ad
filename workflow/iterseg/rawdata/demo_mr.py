"""Deterministic synthetic two-sequence MR phantoms written as real DICOM (MR Image Storage, SEG).

The MR demo exercises multi-channel training: each patient has one MR study with two series
in one frame of reference, acquired on different grids, so the second must be resampled onto
the first before nnU-Net sees them as channels:

* ``FLAIR`` - SeriesDescription ``AX FLAIR``, ProtocolName ``FLAIR_ax``: the CT demo's grid
  (:data:`~iterseg.rawdata.demo.SHAPE`, 32 slices of 3.75 mm, 2.988 mm pixels); tumour
  bright, liver mid-grey. Files are named by hash with a ``.dcm`` extension.
* ``T1`` - SeriesDescription ``T1 AX``, ProtocolName ``T1_ax``: 24 slices of 5 mm over the
  same slab, 56 x 56 pixels of 3.5 mm centred on the FLAIR field of view; liver bright, tumour
  dark. Files are named ``IM0001``... without extension, as scanners export them.

Layout under ``root`` (``data/rawdata/<dataset>``)::

    2026-01-15__<dataset>/P001..P007/{FLAIR,T1}/...  SEG/seg.dcm  (liver, tumour on FLAIR)
    inbox/P101, P102/{FLAIR,T1}/...                  (no annotation)

The phantoms (and seeds) are the CT demo's: P007 is the test patient of ``config/demo_mr.yaml``.
Both series number their slices in interleaved acquisition order, so only the geometry tells
the slice order, as in the CT demo.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage

from iterseg.dicom.codes import SegmentLabel
from iterseg.rawdata.demo import (
    ORIGIN,
    PIXEL_SPACING,
    SHAPE,
    SLICE_THICKNESS,
    DemoCase,
    Phantom,
    demo_uid,
    file_meta,
    make_phantom,
    patient_study,
    phantom_arrays,
    write_planned,
    write_seg,
)

logger = logging.getLogger(__name__)

# Not "demo_mr": the config schema and the rules' wildcards allow letters, digits and "-" only
# in dataset names ("__" separates the date in snapshot names).
DEMO_MR_DATASET = "demo-mr"
SNAPSHOT_DATE = "2026-01-15"
NOISE_SIGMA = 15.0  # of each quadrature channel; magnitude images make it Rician
MAX_STORED = 4095  # 12 bits stored, as most MR scanners write


@dataclass(frozen=True)
class MrGrid:
    """An axial grid: (slices, rows, columns), spacings in mm and the first voxel's centre."""

    shape: tuple[int, int, int]
    pixel_spacing: tuple[float, float]  # row spacing (y), column spacing (x)
    slice_spacing: float
    origin: tuple[float, float, float]

    def slice_z(self, k: int) -> float:
        """Height of slice ``k``'s centre (ImagePositionPatient z)."""
        # Rounded: a float sum such as -30.674999999999997 is too long for a DS (16 characters).
        return round(self.origin[2] + self.slice_spacing * k, 4)

    def coordinates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """x, y, z of every voxel centre, each shaped (slices, rows, columns)."""
        n_slices, n_rows, n_cols = self.shape
        z = np.array([self.slice_z(k) for k in range(n_slices)])
        y = self.origin[1] + self.pixel_spacing[0] * np.arange(n_rows)
        x = self.origin[0] + self.pixel_spacing[1] * np.arange(n_cols)
        zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
        return xx, yy, zz


def _t1_grid() -> MrGrid:
    """24 x 5 mm over the FLAIR slab (same bottom and top), 56 x 3.5 mm centred on its field of view."""
    shape, spacing = (24, 56, 56), 3.5
    thickness = SHAPE[0] * SLICE_THICKNESS / shape[0]  # 5 mm: the same slab in fewer slices
    bottom = ORIGIN[2] - SLICE_THICKNESS / 2
    centre_x = ORIGIN[0] + PIXEL_SPACING[1] * (SHAPE[2] - 1) / 2
    centre_y = ORIGIN[1] + PIXEL_SPACING[0] * (SHAPE[1] - 1) / 2
    half = spacing * (shape[1] - 1) / 2
    # Rounded as a scanner's console would print them; the centres move by under 1 micrometre.
    origin = (round(centre_x - half, 3), round(centre_y - half, 3), round(bottom + thickness / 2, 3))
    return MrGrid(shape, (spacing, spacing), thickness, origin)


FLAIR_GRID = MrGrid(SHAPE, PIXEL_SPACING, SLICE_THICKNESS, ORIGIN)
T1_GRID = _t1_grid()


@dataclass(frozen=True)
class MrProtocol:
    """One MR sequence as the scanner writes it: names, grid, acquisition values, tissue signals."""

    folder: str
    description: str  # SeriesDescription
    protocol_name: str
    series_number: int
    grid: MrGrid
    scanning_sequence: tuple[str, ...]
    sequence_variant: tuple[str, ...]
    scan_options: tuple[str, ...]  # () writes it empty
    sequence_name: str
    repetition_time: float  # ms
    echo_time: float  # ms
    inversion_time: float | None  # ms; IR sequences only
    echo_train_length: int
    flip_angle: float
    signals: tuple[float, float, float]  # body, liver, tumour; air has none
    window: tuple[float, float]  # WindowCenter, WindowWidth
    dcm_extension: bool

    def file_name(self, sop_uid: str, instance: int) -> str:
        """The slice's file name: hashed ``.dcm``, or ``IM0001``-style without extension."""
        if self.dcm_extension:
            return f"{hashlib.sha1(sop_uid.encode()).hexdigest()[:12]}.dcm"
        return f"IM{instance:04d}"


FLAIR = MrProtocol(
    folder="FLAIR", description="AX FLAIR", protocol_name="FLAIR_ax", series_number=2, grid=FLAIR_GRID,
    scanning_sequence=("SE", "IR"), sequence_variant=("SK", "SP", "MP"), scan_options=("FS",),
    sequence_name="*tir2d1_16", repetition_time=9000.0, echo_time=85.0, inversion_time=2500.0,
    echo_train_length=16, flip_angle=150.0, signals=(260.0, 480.0, 1100.0), window=(600.0, 1200.0),
    dcm_extension=True,
)  # fmt: skip
T1 = MrProtocol(
    folder="T1", description="T1 AX", protocol_name="T1_ax", series_number=3, grid=T1_GRID,
    scanning_sequence=("SE",), sequence_variant=("SK", "SP"), scan_options=(),
    sequence_name="*tse2d1_3", repetition_time=550.0, echo_time=12.0, inversion_time=None,
    echo_train_length=3, flip_angle=90.0, signals=(380.0, 820.0, 220.0), window=(500.0, 1000.0),
    dcm_extension=False,
)  # fmt: skip
PROTOCOLS = (FLAIR, T1)  # the first is the reference grid (and carries the annotations)


def phantom_masks(phantom: Phantom, grid: MrGrid) -> tuple[np.ndarray, dict[SegmentLabel, np.ndarray]]:
    """The body and one boolean mask per label on ``grid``, each shaped (slices, rows, columns).

    On :data:`FLAIR_GRID` the label masks are :func:`~iterseg.rawdata.demo.phantom_arrays`'.
    """
    x, y, z = grid.coordinates()
    body = phantom.body.contains(x, y, z)
    liver = phantom.liver.contains(x, y, z) & body
    tumour = (phantom.tumour.contains(x, y, z) | phantom.satellite.contains(x, y, z)) & liver
    return body, {SegmentLabel.LIVER: liver, SegmentLabel.TUMOUR: tumour}


def mr_pixels(phantom: Phantom, protocol: MrProtocol) -> np.ndarray:
    """Stored pixel values (uint16, 12 bits) of the phantom as ``protocol`` images it.

    Magnitude of a complex signal with Gaussian noise in both channels, so the air around
    the body is low but not zero, as on real magnitude images. Seeded per patient and series.
    """
    body, masks = phantom_masks(phantom, protocol.grid)
    signal = np.zeros(protocol.grid.shape)
    signal[body] = protocol.signals[0]
    signal[masks[SegmentLabel.LIVER]] = protocol.signals[1]
    signal[masks[SegmentLabel.TUMOUR]] = protocol.signals[2]
    rng = np.random.default_rng([phantom.seed, protocol.series_number])
    noise = rng.normal(0.0, NOISE_SIGMA, (2, *protocol.grid.shape))
    magnitude = np.hypot(signal + noise[0], noise[1])
    return np.round(magnitude).clip(0, MAX_STORED).astype(np.uint16)


def interleaved_instance(k: int, n_slices: int) -> int:
    """InstanceNumber of slice ``k`` (0 = lowest) acquired interleaved: even slices first, then odd."""
    return k // 2 + 1 if k % 2 == 0 else (n_slices + 1) // 2 + k // 2 + 1


def _series_module(ds: Dataset, phantom: Phantom, protocol: MrProtocol) -> None:
    """General Series, Frame of Reference and Equipment: what both series of a study share or set."""
    ds.Modality = "MR"
    ds.SeriesInstanceUID = demo_uid(phantom.patient_id, "mr-series", protocol.protocol_name)
    ds.SeriesNumber = protocol.series_number
    ds.SeriesDescription = protocol.description
    ds.ProtocolName = protocol.protocol_name
    ds.SeriesDate = "20260101"
    ds.SeriesTime = f"12{protocol.series_number:02d}00"
    ds.StudyDescription = "MR ABDOMEN"
    ds.BodyPartExamined = "ABDOMEN"
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = demo_uid(phantom.patient_id, "mr-frame")
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "iterseg"
    ds.ManufacturerModelName = "iterseg demo MR"
    ds.MagneticFieldStrength = 1.5
    ds.ImagingFrequency = 63.885  # MHz, protons at 1.5 T
    ds.ImagedNucleus = "1H"


def _mr_image_module(ds: Dataset, protocol: MrProtocol) -> None:
    """The MR Image module's acquisition attributes (no RescaleSlope/Intercept: the IOD has none)."""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]  # value 3 "OTHER": what dciodvfy knows for MR
    ds.ScanningSequence = list(protocol.scanning_sequence)
    ds.SequenceVariant = list(protocol.sequence_variant)
    ds.ScanOptions = list(protocol.scan_options) or ""  # type 2: present, empty if none
    ds.MRAcquisitionType = "2D"
    ds.SequenceName = protocol.sequence_name
    ds.AngioFlag = "N"
    ds.RepetitionTime = protocol.repetition_time
    ds.EchoTime = protocol.echo_time
    if protocol.inversion_time is not None:
        ds.InversionTime = protocol.inversion_time
    ds.EchoTrainLength = protocol.echo_train_length
    ds.NumberOfAverages = 1
    ds.EchoNumbers = 1
    ds.FlipAngle = protocol.flip_angle
    ds.AcquisitionNumber = 1


def _image_plane_and_pixels(ds: Dataset, grid: MrGrid, k: int, pixels: np.ndarray) -> None:
    """Image Plane and Image Pixel of slice ``k``: contiguous slices, so spacing = thickness."""
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.ImagePositionPatient = [grid.origin[0], grid.origin[1], grid.slice_z(k)]
    ds.SliceLocation = grid.slice_z(k)
    ds.SliceThickness = grid.slice_spacing
    ds.SpacingBetweenSlices = grid.slice_spacing
    ds.PixelSpacing = list(grid.pixel_spacing)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = grid.shape[1], grid.shape[2]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = pixels[k].tobytes()


def _slice_dataset(phantom: Phantom, protocol: MrProtocol, k: int, pixels: np.ndarray) -> Dataset:
    """The MR Image Storage instance of slice ``k`` (0 = lowest) of ``protocol``'s series."""
    sop_uid = demo_uid(phantom.patient_id, "mr", protocol.protocol_name, k)
    ds = Dataset()
    ds.file_meta = file_meta(MRImageStorage, sop_uid)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    patient_study(ds, phantom, demo_uid(phantom.patient_id, "mr-study"))
    _series_module(ds, phantom, protocol)
    ds.InstanceNumber = interleaved_instance(k, protocol.grid.shape[0])
    _mr_image_module(ds, protocol)
    _image_plane_and_pixels(ds, protocol.grid, k, pixels)
    ds.WindowCenter, ds.WindowWidth = protocol.window
    return ds


def write_mr_series(phantom: Phantom, protocol: MrProtocol, folder: Path) -> list[Dataset]:
    """Write the phantom's ``protocol`` series into ``folder``; return the datasets in slice order.

    Parameters
    ----------
    phantom
        The patient.
    protocol
        :data:`FLAIR` or :data:`T1`: grid, names, acquisition values and contrast.
    folder
        Receives one file per slice (created if needed).

    Returns
    -------
    list of Dataset
        The written slices, lowest first, as :func:`~iterseg.rawdata.demo.write_seg` takes them.

    """
    pixels = mr_pixels(phantom, protocol)
    folder.mkdir(parents=True, exist_ok=True)
    datasets = []
    for k in range(protocol.grid.shape[0]):
        ds = _slice_dataset(phantom, protocol, k, pixels)
        ds.save_as(
            folder / protocol.file_name(ds.SOPInstanceUID, ds.InstanceNumber), enforce_file_format=True
        )
        datasets.append(ds)
    return datasets


def demo_mr_plan(dataset: str = DEMO_MR_DATASET) -> dict[str, list[DemoCase]]:
    """The MR demo's layout: snapshot folder name (or ``inbox``) -> cases.

    Parameters
    ----------
    dataset
        Dataset name in the snapshot folder's name, ``<date>__<dataset>``.

    Returns
    -------
    dict
        One snapshot of P001..P007, all annotated (SEG on FLAIR), and an inbox of P101, P102.

    """
    # The tag keeps the SEG's UIDs apart from the CT demo's SEG of the same patient.
    snapshot = [DemoCase(f"P{n:03d}", seed=n, annotation="SEG", tag="FLAIR v1") for n in range(1, 8)]
    inbox = [DemoCase(f"P{n:03d}", seed=n, annotation="") for n in (101, 102)]
    return {f"{SNAPSHOT_DATE}__{dataset}": snapshot, "inbox": inbox}


def _write_mr_case(case: DemoCase, patient_dir: Path) -> None:
    """One MR demo patient: both series and, if annotated, the SEG of the FLAIR series."""
    phantom = make_phantom(case.patient_id, case.seed)
    flair = write_mr_series(phantom, FLAIR, patient_dir / FLAIR.folder)
    write_mr_series(phantom, T1, patient_dir / T1.folder)
    if case.annotation == "SEG":
        _, masks = phantom_arrays(phantom)  # FLAIR is on the CT demo's grid
        write_seg(phantom, flair, patient_dir / "SEG" / "seg.dcm", masks, case.tag)
        _pin_seg(patient_dir / "SEG" / "seg.dcm", case.patient_id, case.tag)


def _pin_seg(path: Path, patient_id: str, tag: str) -> None:
    """Replace what highdicom took from the clock and from random UIDs, so reruns write the same bytes."""
    ds = pydicom.dcmread(path)
    ds.InstanceCreationDate = ds.ContentDate = "20260101"
    ds.InstanceCreationTime = ds.ContentTime = "130000"
    for item in ds.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = "20260101130000"
    organisation = demo_uid(patient_id, "seg-dimensions", tag)
    for item in (*ds.DimensionOrganizationSequence, *ds.DimensionIndexSequence):
        item.DimensionOrganizationUID = organisation
    for item in ds.SegmentSequence:
        item.TrackingUID = demo_uid(patient_id, "seg-tracking", tag, item.SegmentNumber)
    ds.save_as(path, enforce_file_format=True)


def write_demo_mr_dataset(root: Path, dataset: str = DEMO_MR_DATASET) -> list[Path]:
    """Write the two-sequence MR demo dataset under ``root``; return the folders written.

    Parameters
    ----------
    root
        ``data/rawdata/<dataset>``: receives the snapshot ``2026-01-15__<dataset>`` and
        ``inbox``. Existing folders are left alone, so the command never overwrites
        researchers' data.
    dataset
        Dataset name of the snapshot folder; ``iterseg demo-data --mr`` passes ``root``'s name.

    Returns
    -------
    list of Path
        The snapshot and inbox folders written (not those that existed).

    """
    return write_planned(root, demo_mr_plan(dataset), _write_mr_case, "FLAIR + T1 each")
