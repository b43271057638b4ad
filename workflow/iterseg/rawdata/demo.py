"""Deterministic synthetic CT phantoms written as real DICOM (CT, SEG, RTSTRUCT).

The demo dataset mimics what researchers drop into ``data/rawdata``: two dated snapshots of
annotated patients (some annotated as DICOM SEG, some as RTSTRUCT, the second snapshot adding
new patients and refining earlier annotations) and an inbox of unannotated studies.
Files are named by hash and InstanceNumbers run against the slice position on purpose, so
that any code sorting slices by file name or InstanceNumber fails on the demo.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.coding import Code
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, RTStructureSetStorage

from iterseg.dicom.codes import SegmentLabel, property_codes, segment_description
from iterseg.paths import partial_path

logger = logging.getLogger(__name__)

UID_ROOT = "1.2.826.0.1.3680043.10.1451."
SHAPE = (32, 64, 64)  # slices, rows, columns
# Geometry with binary-fraction spacings and odd origins, as scanners write them: writers that
# store positions in single precision (dcmqi, hence 3D Slicer) land a hair off this grid.
PIXEL_SPACING = (2.98828125, 2.98828125)  # mm, row spacing then column spacing
SLICE_THICKNESS = 3.75  # mm
ORIGIN = (-95.50586, -94.81641, -61.3)
DEMO_DATASET = "demo"
SNAPSHOT_DATES = ("2026-01-15", "2026-03-02")
LABELS = (SegmentLabel.LIVER, SegmentLabel.TUMOUR)
# Tissue values in HU and the noise's standard deviation. The tumour is hypodense and 7.5 noise
# sigmas darker than the soft tissue around the liver: at -20 HU (4 sigmas) the demo's small
# network on 2 CPU cores found it in only some of its runs within the minutes the demo has.
BODY_HU, LIVER_HU, TUMOUR_HU, NOISE_HU = 30.0, 110.0, -60.0, 12.0


def demo_uid(*parts: object) -> str:
    """Return a DICOM UID derived deterministically from ``parts``."""
    digest = int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:24], 16)
    return f"{UID_ROOT}{digest}"


@dataclass(frozen=True)
class Ellipsoid:
    """An axis-aligned ellipsoid in patient coordinates (mm)."""

    centre: tuple[float, float, float]
    radii: tuple[float, float, float]

    def contains(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Boolean mask of the points inside the ellipsoid."""
        cx, cy, cz = self.centre
        rx, ry, rz = self.radii
        return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2 <= 1.0

    def section(self, z: float, n_points: int = 48) -> np.ndarray | None:
        """Closed planar contour (n, 3) of the section at height ``z``, or None."""
        cx, cy, cz = self.centre
        rx, ry, rz = self.radii
        t = 1.0 - ((z - cz) / rz) ** 2
        if t <= 0.05:
            return None
        angles = np.linspace(0.0, 2.0 * np.pi, n_points, endpoint=False)
        scale = np.sqrt(t)
        return np.stack(
            [cx + rx * scale * np.cos(angles), cy + ry * scale * np.sin(angles), np.full(n_points, z)],
            axis=1,
        )


@dataclass(frozen=True)
class Phantom:
    """One synthetic patient: body, liver, a tumour and a satellite nodule (both tumour label)."""

    patient_id: str
    body: Ellipsoid
    liver: Ellipsoid
    tumour: Ellipsoid
    satellite: Ellipsoid
    seed: int

    @property
    def origin(self) -> tuple[float, float, float]:
        """ImagePositionPatient of the first (lowest) slice."""
        return ORIGIN

    @property
    def tumours(self) -> tuple[Ellipsoid, Ellipsoid]:
        """The lesions; an RTSTRUCT draws both as contours of one ROI (two per slice)."""
        return (self.tumour, self.satellite)


def make_phantom(patient_id: str, seed: int) -> Phantom:
    """Build a phantom whose organ positions and sizes vary with ``seed``."""
    rng = np.random.default_rng(seed)
    body = Ellipsoid((0.0, 0.0, 0.0), (80.0 + rng.uniform(-6, 6), 62.0 + rng.uniform(-5, 5), 200.0))
    liver_centre = (-22.0 + rng.uniform(-6, 6), -6.0 + rng.uniform(-6, 6), -4.0 + rng.uniform(-8, 8))
    liver = Ellipsoid(liver_centre, (34.0 + rng.uniform(-4, 4), 26.0 + rng.uniform(-3, 3), 40.0))
    tumour_centre = (
        liver_centre[0] + rng.uniform(2, 8),
        liver_centre[1] + rng.uniform(-6, 6),
        liver_centre[2] + rng.uniform(-8, 8),
    )
    tumour_radius = 11.0 + rng.uniform(-2, 3)
    tumour = Ellipsoid(tumour_centre, (tumour_radius, tumour_radius * 0.9, tumour_radius * 1.2))
    # On the other side of the liver centre from the main tumour, so the two never touch.
    satellite = Ellipsoid((liver_centre[0] - 18.0, liver_centre[1], tumour_centre[2]), (5.0, 5.0, 6.0))
    return Phantom(patient_id, body, liver, tumour, satellite, seed)


def annotated(phantom: Phantom, tumour_scale: float) -> Phantom:
    """The phantom as an annotator drew it: a rough first pass under-draws the tumour."""

    def scaled(e: Ellipsoid) -> Ellipsoid:
        return Ellipsoid(
            e.centre, (e.radii[0] * tumour_scale, e.radii[1] * tumour_scale, e.radii[2] * tumour_scale)
        )

    return replace(phantom, tumour=scaled(phantom.tumour), satellite=scaled(phantom.satellite))


def _grid(phantom: Phantom) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_slices, n_rows, n_cols = SHAPE
    ox, oy, oz = phantom.origin
    z = oz + SLICE_THICKNESS * np.arange(n_slices)
    y = oy + PIXEL_SPACING[0] * np.arange(n_rows)
    x = ox + PIXEL_SPACING[1] * np.arange(n_cols)
    return np.meshgrid(x, y, z, indexing="ij")


def phantom_arrays(phantom: Phantom) -> tuple[np.ndarray, dict[SegmentLabel, np.ndarray]]:
    """Return the CT in HU and one boolean mask per label, each shaped (slices, rows, cols)."""
    x, y, z = _grid(phantom)

    def to_zyx(a: np.ndarray) -> np.ndarray:
        return np.transpose(a, (2, 1, 0))  # (x, y, z) -> (slices, rows, columns)

    body = to_zyx(phantom.body.contains(x, y, z))
    liver = to_zyx(phantom.liver.contains(x, y, z)) & body
    tumour = to_zyx(phantom.tumour.contains(x, y, z) | phantom.satellite.contains(x, y, z)) & liver
    rng = np.random.default_rng(phantom.seed + 1000)
    hu = np.full(SHAPE, -1000.0)
    hu[body] = BODY_HU
    hu[liver] = LIVER_HU
    hu[tumour] = TUMOUR_HU
    hu += rng.normal(0.0, NOISE_HU, SHAPE)
    return hu, {SegmentLabel.LIVER: liver, SegmentLabel.TUMOUR: tumour}


def file_meta(sop_class: str, sop_instance: str) -> FileMetaDataset:
    """The file meta information of one instance written by the demo (explicit VR little endian)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(UID_ROOT + "1")
    return meta


def patient_study(ds: Dataset, phantom: Phantom, study_uid: str) -> None:
    """Set the patient and study modules of ``ds`` for the phantom's one study."""
    ds.PatientName = f"Phantom^{phantom.patient_id}"
    ds.PatientID = phantom.patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = phantom.patient_id
    ds.ReferringPhysicianName = ""


def stored_values(hu: np.ndarray) -> np.ndarray:
    """Stored pixel values (signed 16 bit, RescaleIntercept -1024) of HU values."""
    return np.round(hu + 1024.0).clip(-32768, 32767).astype(np.int16)


def write_ct_series(phantom: Phantom, folder: Path) -> list[Dataset]:
    """Write the phantom's CT as single-frame DICOM files; return the datasets in slice order."""
    hu, _ = phantom_arrays(phantom)
    stored = stored_values(hu)
    study_uid = demo_uid(phantom.patient_id, "study")
    series_uid = demo_uid(phantom.patient_id, "ct-series")
    frame_uid = demo_uid(phantom.patient_id, "frame")
    folder.mkdir(parents=True, exist_ok=True)
    datasets: list[Dataset] = []
    n_slices = SHAPE[0]
    for k in range(n_slices):
        sop_uid = demo_uid(phantom.patient_id, "ct", k)
        ds = Dataset()
        ds.file_meta = file_meta(CTImageStorage, sop_uid)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        patient_study(ds, phantom, study_uid)
        ds.Modality = "CT"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 1
        ds.AcquisitionNumber = 1
        ds.PatientPosition = "HFS"
        ds.BodyPartExamined = "ABDOMEN"
        ds.SeriesDescription = "Phantom CT"
        # Deliberately opposite to the slice order: only the geometry tells the order.
        ds.InstanceNumber = n_slices - k
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.Manufacturer = "iterseg"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ox, oy, oz = phantom.origin
        z = round(oz + SLICE_THICKNESS * k, 4)  # a DS holds 16 characters: -1.2999999999999972 does not
        ds.ImagePositionPatient = [ox, oy, z]
        ds.SliceLocation = z
        ds.SliceThickness = SLICE_THICKNESS
        ds.PixelSpacing = list(PIXEL_SPACING)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = SHAPE[1], SHAPE[2]
        ds.BitsAllocated = 16
        # Signed storage with intercept -1024, as many scanners write: GDCM reads it as int32.
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = -1024.0
        ds.RescaleSlope = 1.0
        ds.RescaleType = "HU"
        ds.KVP = 120
        ds.PixelData = stored[k].tobytes()
        name = hashlib.sha1(sop_uid.encode()).hexdigest()[:12]
        ds.save_as(folder / f"{name}.dcm", enforce_file_format=True)
        datasets.append(ds)
    return datasets


def write_seg(
    phantom: Phantom, ct: list[Dataset], path: Path, masks: dict[SegmentLabel, np.ndarray], tag: str
) -> None:
    """Write ``masks`` as a BINARY DICOM SEG referencing ``ct`` (slice-ordered) with highdicom."""
    import highdicom as hd

    labels = [label for label in LABELS if label in masks]
    stacked = np.stack([masks[label] for label in labels], axis=-1).astype(np.uint8)
    seg = hd.seg.Segmentation(
        source_images=ct,
        pixel_array=stacked,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment_description(i + 1, label) for i, label in enumerate(labels)],
        series_instance_uid=demo_uid(phantom.patient_id, "seg-series", tag),
        series_number=100,
        sop_instance_uid=demo_uid(phantom.patient_id, "seg", tag),
        instance_number=1,
        manufacturer="iterseg",
        manufacturer_model_name="iterseg demo",
        software_versions="demo",
        device_serial_number="0",
        series_description=f"Manual annotation {tag}",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)


def _contours(phantom: Phantom, label: SegmentLabel, z: float) -> list[np.ndarray]:
    """Contours of ``label`` on the plane at ``z``.

    The liver gets its outline plus each lesion as a hole; the tumour ROI one contour per
    lesion, so several per slice.
    """
    lesions = [points for t in phantom.tumours if (points := t.section(z)) is not None]
    if label is SegmentLabel.TUMOUR:
        return lesions
    outer = phantom.liver.section(z, n_points=64)
    if outer is None:
        return []
    cx, cy, _ = phantom.liver.centre
    scale = np.sqrt(max(1e-9, 1.0 - ((z - phantom.liver.centre[2]) / phantom.liver.radii[2]) ** 2))
    rx, ry = phantom.liver.radii[0] * scale, phantom.liver.radii[1] * scale

    def inside(points: np.ndarray) -> bool:
        return bool(np.all(((points[:, 0] - cx) / rx) ** 2 + ((points[:, 1] - cy) / ry) ** 2 < 0.95))

    return [outer, *(hole for hole in lesions if inside(hole))]


def write_seg_dcmqi(
    phantom: Phantom, ct_folder: Path, path: Path, masks: dict[SegmentLabel, np.ndarray]
) -> None:
    """Write ``masks`` as a DICOM SEG with dcmqi's ``itkimage2segimage``, the writer 3D Slicer uses.

    One input image per segment, as Slicer does for overlapping segments. dcmqi stores positions
    and spacings in single precision, so its frames sit a hair off the CT grid.
    """
    import SimpleITK as sitk

    attributes = []
    with tempfile.TemporaryDirectory() as tmp:
        inputs = []
        for label in LABELS:
            image = sitk.GetImageFromArray(masks[label].astype(np.uint8))
            image.SetSpacing((PIXEL_SPACING[1], PIXEL_SPACING[0], SLICE_THICKNESS))
            image.SetOrigin(phantom.origin)
            file = Path(tmp) / f"{label.name.lower()}.nii.gz"
            sitk.WriteImage(image, str(file))
            inputs.append(str(file))
            category, prop_type = property_codes(label.roi_name)
            attributes.append(
                [
                    {
                        "labelID": 1,
                        "SegmentLabel": label.roi_name,
                        "SegmentDescription": label.roi_name,
                        "SegmentAlgorithmType": "MANUAL",
                        "SegmentedPropertyCategoryCodeSequence": _dcmqi_code(category),
                        "SegmentedPropertyTypeCodeSequence": _dcmqi_code(prop_type),
                        "recommendedDisplayRGBValue": list(label.colour),
                    }
                ]
            )
        meta = {
            "ContentCreatorName": "Slicer^Annotator",
            "ClinicalTrialSeriesID": "1",
            "ClinicalTrialTimePointID": "1",
            "SeriesDescription": "Segmentation (3D Slicer)",
            "SeriesNumber": "300",
            "InstanceNumber": "1",
            "ContentLabel": "SEGMENTATION",
            "ContentDescription": "Refined in 3D Slicer",
            "segmentAttributes": attributes,
        }
        run_itkimage2segimage(inputs, ct_folder, meta, path, phantom.patient_id)


def run_itkimage2segimage(
    inputs: list[str], dicom_folder: Path, meta: dict[str, Any], path: Path, what: str
) -> None:
    """Run dcmqi's ``itkimage2segimage`` (one input image per segment, as 3D Slicer saves) into ``path``.

    Raises
    ------
    RuntimeError
        If dcmqi is not installed or fails; its output is in the message.

    """
    exe = shutil.which("itkimage2segimage", path=str(Path(sys.executable).parent)) or shutil.which(
        "itkimage2segimage"
    )
    if exe is None:
        raise RuntimeError("dcmqi's itkimage2segimage is not installed (pip install dcmqi)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "meta.json").write_text(json.dumps(meta))
        command = [exe, "--inputImageList", ",".join(inputs), "--inputDICOMDirectory", str(dicom_folder)]
        command += ["--outputDICOM", str(path), "--inputMetadata", str(Path(tmp) / "meta.json")]
        run = subprocess.run(command, capture_output=True, text=True, check=False)
    if run.returncode != 0 or not path.is_file():
        raise RuntimeError(f"itkimage2segimage failed for {what}: {run.stdout[-2000:]}{run.stderr[-2000:]}")


def _dcmqi_code(code: Code) -> dict[str, str]:
    return {
        "CodeValue": code.value,
        "CodingSchemeDesignator": code.scheme_designator,
        "CodeMeaning": code.meaning,
    }


def image_reference(image: Dataset) -> Dataset:
    """A ContourImageSequence item: which slice a contour (or the structure set) refers to."""
    item = Dataset()
    item.ReferencedSOPClassUID = image.SOPClassUID
    item.ReferencedSOPInstanceUID = image.SOPInstanceUID
    return item


def referenced_frame_of_reference(ref: Dataset, images: list[Dataset]) -> DicomSequence:
    """An RTSTRUCT's ReferencedFrameOfReferenceSequence: frame, study and series of ``ref``.

    Every slice of ``images`` is listed, and the study referenced as Detached Study Management,
    as planning systems write it.
    """
    contour_images = DicomSequence([image_reference(image) for image in images])
    series_item = Dataset()
    series_item.SeriesInstanceUID = ref.SeriesInstanceUID
    series_item.ContourImageSequence = contour_images
    study_item = Dataset()
    study_item.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study_item.ReferencedSOPInstanceUID = ref.StudyInstanceUID
    study_item.RTReferencedSeriesSequence = DicomSequence([series_item])
    frame_item = Dataset()
    frame_item.FrameOfReferenceUID = ref.FrameOfReferenceUID
    frame_item.RTReferencedStudySequence = DicomSequence([study_item])
    return DicomSequence([frame_item])


def write_rtstruct(phantom: Phantom, ct: list[Dataset], path: Path, tag: str) -> None:
    """Write the liver and tumour as closed planar contours in an RTSTRUCT referencing ``ct``."""
    ref = ct[0]
    sop_uid = demo_uid(phantom.patient_id, "rtstruct", tag)
    ds = Dataset()
    ds.file_meta = file_meta(RTStructureSetStorage, sop_uid)
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = sop_uid
    patient_study(ds, phantom, ref.StudyInstanceUID)
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = demo_uid(phantom.patient_id, "rtstruct-series", tag)
    ds.SeriesNumber = 200
    ds.OperatorsName = ""
    ds.FrameOfReferenceUID = ref.FrameOfReferenceUID  # the Frame of Reference module, as planners write
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = 1
    ds.Manufacturer = "iterseg"
    ds.StructureSetLabel = f"Manual {tag}"
    ds.StructureSetDate = "20260101"
    ds.StructureSetTime = "120000"

    ds.ReferencedFrameOfReferenceSequence = referenced_frame_of_reference(ref, ct)

    roi_seq, contour_seq, obs_seq = DicomSequence(), DicomSequence(), DicomSequence()
    for number, label in enumerate(LABELS, start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = ref.FrameOfReferenceUID
        roi.ROIName = label.roi_name
        roi.ROIGenerationAlgorithm = "MANUAL"
        roi_seq.append(roi)
        roi_contour = Dataset()
        roi_contour.ReferencedROINumber = number
        roi_contour.ROIDisplayColor = list(label.colour)
        contours = DicomSequence()
        for image in ct:
            for points in _contours(phantom, label, float(image.ImagePositionPatient[2])):
                contour = Dataset()
                image_ref = Dataset()
                image_ref.ReferencedSOPClassUID = image.SOPClassUID
                image_ref.ReferencedSOPInstanceUID = image.SOPInstanceUID
                contour.ContourImageSequence = DicomSequence([image_ref])
                contour.ContourGeometricType = "CLOSED_PLANAR"
                contour.NumberOfContourPoints = len(points)
                contour.ContourData = [round(float(v), 3) for v in points.ravel()]
                contours.append(contour)
        roi_contour.ContourSequence = contours
        contour_seq.append(roi_contour)
        obs = Dataset()
        obs.ObservationNumber = number
        obs.ReferencedROINumber = number
        obs.RTROIInterpretedType = "ORGAN" if label is SegmentLabel.LIVER else "GTV"
        obs.ROIInterpreter = ""
        obs_seq.append(obs)
    ds.StructureSetROISequence = roi_seq
    ds.ROIContourSequence = contour_seq
    ds.RTROIObservationsSequence = obs_seq
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


@dataclass(frozen=True)
class DemoCase:
    """How one patient appears in one snapshot."""

    patient_id: str
    seed: int
    annotation: str  # "SEG" (highdicom), "SEG-dcmqi" (as 3D Slicer writes), "RTSTRUCT", "" (inbox)
    tumour_scale: float = 1.0
    tag: str = "v1"
    partial: bool = False  # the annotation draws the liver only (a partially labelled case)


def demo_plan() -> dict[str, list[DemoCase]]:
    """The demo's layout: snapshot folder name (or ``inbox``) -> cases."""
    rough = (1, 2, 4)  # first-pass annotations that the second snapshot refines

    def kind(n: int) -> str:
        return {1: "SEG-dcmqi", 3: "SEG"}.get(n % 4, "RTSTRUCT")

    first = [
        DemoCase(f"P{n:03d}", seed=n, annotation=kind(n), tumour_scale=0.8 if n in rough else 1.0)
        for n in range(1, 8)
    ]
    # The second snapshot brings new patients and refined annotations of earlier ones; refined
    # annotations come back as SEGs saved by 3D Slicer (dcmqi), the way researchers edit ours.
    # P011 comes with its liver drawn and its tumours not yet: a partially labelled case.
    second = [DemoCase(f"P{n:03d}", seed=n, annotation=kind(n), partial=n == 11) for n in range(8, 12)]
    second += [DemoCase(f"P{n:03d}", seed=n, annotation="SEG-dcmqi", tag="v2") for n in rough]
    # P103 was an inbox case: the first iteration predicted it, a researcher corrected that
    # prediction in 3D Slicer, and it comes back annotated. The second iteration's annotation
    # effort compares the two.
    second += [DemoCase("P103", seed=103, annotation="SEG-dcmqi", tag="refined")]
    inbox = [DemoCase(f"P{n:03d}", seed=n, annotation="") for n in (101, 102, 103)]
    return {
        f"{SNAPSHOT_DATES[0]}__{DEMO_DATASET}": first,
        f"{SNAPSHOT_DATES[1]}__{DEMO_DATASET}": second,
        "inbox": inbox,
    }


def _write_case(case: DemoCase, patient_dir: Path) -> None:
    """One demo patient: its CT series and its annotation, as the case says."""
    phantom = make_phantom(case.patient_id, case.seed)
    ct = write_ct_series(phantom, patient_dir / "CT")
    drawn = annotated(phantom, case.tumour_scale)
    if case.annotation == "SEG":
        _, masks = phantom_arrays(drawn)
        if case.partial:
            masks = {SegmentLabel.LIVER: masks[SegmentLabel.LIVER]}
        write_seg(drawn, ct, patient_dir / "SEG" / "seg.dcm", masks, case.tag)
    elif case.annotation == "SEG-dcmqi":
        _, masks = phantom_arrays(drawn)
        write_seg_dcmqi(drawn, patient_dir / "CT", patient_dir / "SEG" / f"{case.tag}.dcm", masks)
    elif case.annotation == "RTSTRUCT":
        write_rtstruct(drawn, ct, patient_dir / "RTSTRUCT" / "rtstruct.dcm", case.tag)


def write_demo_dataset(root: Path) -> list[Path]:
    """Write the demo dataset under ``root`` (= ``data/rawdata/demo``); return the folders written.

    Parameters
    ----------
    root
        Folder that receives one sub-folder per snapshot plus ``inbox``. Existing snapshot
        folders are left alone, so the command never overwrites researchers' data.

    """
    return write_planned(root, demo_plan(), _write_case)


def write_planned(
    root: Path, plan: dict[str, list[DemoCase]], write_case: Callable[[DemoCase, Path], None], what: str = ""
) -> list[Path]:
    """Write each folder of ``plan`` under ``root`` with ``write_case``; existing folders are left alone.

    Each folder is written hidden and renamed into place, so no half-written snapshot is ever
    discovered; ``what`` says in the log what each patient holds.
    """
    from tqdm import tqdm

    written: list[Path] = []
    for folder_name, cases in plan.items():
        folder = root / folder_name
        if folder.exists():
            logger.info("%s exists; leaving it untouched", folder)
            continue
        staging = partial_path(folder)  # hidden, so no snapshot is discovered there meanwhile
        try:
            for case in tqdm(cases, desc=folder_name, unit="patient", disable=None):
                write_case(case, staging / case.patient_id)
            staging.rename(folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        written.append(folder)
        logger.info("wrote %s (%d patients%s)", folder, len(cases), f", {what}" if what else "")
    return written
