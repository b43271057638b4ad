"""Test inputs written the way scanners, planning systems and viewers write them.

Image series start from pydicom's shipped real files: ``CT_small.dcm`` (a GE HiSpeed CT/i slice,
128x128, GE private groups, Specific Character Set ISO_IR 100) and ``MR_small.dcm`` (a Toshiba
MR slice, 64x64, no character set). Each slice is a deep copy with its vendor headers kept;
only UIDs (deterministic), ImagePositionPatient (along the slice normal), SliceLocation,
InstanceNumber (GE numbers from head to feet, i.e. against the normal) and the pixels change.

The annotations are written by the tools that write them in practice: highdicom (BINARY and
LABELMAP SEG), dcmqi's ``itkimage2segimage`` (what 3D Slicer saves) and a hand-made RTSTRUCT
laid out as a treatment-planning system writes it. Every builder returns the ground truth:
the label map in ROI YAML values, shaped (slices, rows, cols) with slices in geometric order,
ascending along the slice normal.

RTSTRUCT polygons are given in pixel-index space (row, column; pixel centres at integers).
Axis-aligned polygons have their vertices on pixel boundaries (half-integers), so every
rasteriser agrees on each pixel centre and the expected map is exact; other polygons come
with the pixels their contour line passes through, where rasterisers may legitimately differ.
"""

from __future__ import annotations

import copy
import json
import re
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from iterseg.rawdata.demo import image_reference, referenced_frame_of_reference, run_itkimage2segimage
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid

BIN = Path(sys.executable).parent
SNAPSHOT = "2026-05-01__ds"  # rawdata/ds/<SNAPSHOT>/<patient>/...
LABELMAP_SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.7"

# ROI YAMLs (label -> regexes matched in full, ignoring case); labels numbered 1, 2, ... in order.
SEG_ROIS: dict[str, list[str]] = {"liver": ["^liver$"], "tumour": ["^tumou?r$", "^gtv.*"]}
# Lungs before body: a converter that fills BODY's lung-shaped holes overwrites the lungs.
RT_ROIS: dict[str, list[str]] = {
    "ring": ["^ring$"],
    "lungs": ["^lungs?$"],
    "body": ["^body$", "^external$"],
    "gtv": ["^gtv.*"],
}


def uid(*parts: object) -> str:
    """A deterministic UID (pydicom's root) derived from ``parts``."""
    return str(generate_uid(entropy_srcs=["iterseg real_dicom", *map(str, parts)]))


def write_roi_yaml(labels: dict[str, list[str]], path: Path) -> Path:
    """Write an ROI YAML (``label: [regex, ...]`` in label order)."""
    lines = [
        f"{name}:\n" + "".join(f"  - {json.dumps(p)}\n" for p in patterns)
        for name, patterns in labels.items()
    ]
    path.write_text("".join(lines))
    return path


def match_label(name: str, labels: dict[str, list[str]]) -> int | None:
    """ROI YAML value (1-based) of a segment/ROI name, or None."""
    for value, patterns in enumerate(labels.values(), start=1):
        if any(re.fullmatch(p, name, flags=re.IGNORECASE) for p in patterns):
            return value
    return None


def label_map(masks: dict[str, np.ndarray], labels: dict[str, list[str]]) -> np.ndarray:
    """Named masks -> label map in ROI YAML values; where they overlap the later label wins."""
    shape = next(iter(masks.values())).shape
    out = np.zeros(shape, np.uint8)
    by_value: dict[int, np.ndarray] = {}
    for name, mask in masks.items():
        value = match_label(name, labels)
        if value is not None:
            by_value[value] = by_value.get(value, np.zeros(shape, bool)) | mask
    for value in sorted(by_value):
        out[by_value[value]] = value
    return out


# --- image series -----------------------------------------------------------------------------


@dataclass
class Series:
    """A written single-frame image series."""

    folder: Path
    planned: list[Dataset]  # every slice the scanner made, ascending along the normal
    present: list[int]  # indices into ``planned`` of the slices that were written
    files: list[Path]  # the written files, in the order of ``present``

    @property
    def datasets(self) -> list[Dataset]:
        """The written slices, ascending along the normal."""
        return [self.planned[k] for k in self.present]

    @property
    def shape(self) -> tuple[int, int, int]:
        first = self.planned[0]
        return (len(self.present), int(first.Rows), int(first.Columns))

    @property
    def modality(self) -> str:
        return str(self.planned[0].Modality)


def normal_of(ds: Dataset) -> np.ndarray:
    iop = np.asarray(ds.ImageOrientationPatient, float)
    n = np.cross(iop[:3], iop[3:])
    return n / np.linalg.norm(n)


def planned_slices(
    patient_id: str,
    n_slices: int,
    *,
    base: str = "CT_small.dcm",
    tag: str = "img",
    empty_charset: bool = False,
) -> list[Dataset]:
    """``n_slices`` deep copies of a real slice, ascending along the normal (nothing written)."""
    template = pydicom.dcmread(get_testdata_file(base))
    normal = normal_of(template)
    origin = np.asarray(template.ImagePositionPatient, float)
    step = float(template.get("SpacingBetweenSlices") or template.SliceThickness)
    pixels = template.pixel_array.astype(np.int16)
    padding = template.get("PixelPaddingValue")
    datasets = []
    for k in range(n_slices):
        ds = copy.deepcopy(template)
        sop = uid(patient_id, tag, "sop", k)
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.StudyInstanceUID = uid(patient_id, "study")
        ds.SeriesInstanceUID = uid(patient_id, tag, "series")
        ds.FrameOfReferenceUID = uid(patient_id, "frame")
        ds.PatientID = patient_id
        ds.PatientName = f"Real^{patient_id}"
        ds.InstanceNumber = n_slices - k  # GE numbers head to feet: against the normal
        position = origin + k * step * normal
        ds.ImagePositionPatient = [round(float(v), 6) for v in position]
        ds.SliceLocation = round(float(template.get("SliceLocation", 0.0)) + k * step, 6)
        varied = pixels.copy()
        body = varied != padding if padding is not None else np.ones(varied.shape, bool)
        varied[body] += np.int16(5 * k)  # every slice its own pixels
        ds.PixelData = varied.tobytes()
        if empty_charset:
            ds.SpecificCharacterSet = ""  # present, empty: as GE CTs write (0008,0005)
        datasets.append(ds)
    return datasets


def default_name(ds: Dataset) -> str:
    """OsiriX/Horos-style export names: IM-<series>-<instance>.dcm (InstanceNumber order)."""
    return f"IM-{int(ds.SeriesNumber):04d}-{int(ds.InstanceNumber):04d}.dcm"


def write_series(
    planned: list[Dataset],
    folder: Path,
    *,
    drop: Sequence[int] = (),
    name: Callable[[Dataset], str] = default_name,
) -> Series:
    """Write every planned slice except ``drop`` (indices along the normal) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    present = [k for k in range(len(planned)) if k not in set(drop)]
    files = []
    for k in present:
        path = folder / name(planned[k])
        planned[k].save_as(path, enforce_file_format=True)
        files.append(path)
    return Series(folder, planned, present, files)


def series_grid(datasets: Sequence[Dataset]) -> tuple[tuple[int, int, int], tuple, tuple, tuple]:
    """SimpleITK (size, spacing, origin, direction) of slices sorted along the normal."""
    first = datasets[0]
    iop = np.asarray(first.ImageOrientationPatient, float)
    normal = normal_of(first)
    positions = [float(np.dot(np.asarray(ds.ImagePositionPatient, float), normal)) for ds in datasets]
    step = float(np.median(np.diff(positions))) if len(datasets) > 1 else float(first.SliceThickness)
    spacing = (float(first.PixelSpacing[1]), float(first.PixelSpacing[0]), step)
    direction = tuple(np.stack([iop[:3], iop[3:], normal], axis=1).ravel())
    origin = tuple(float(v) for v in first.ImagePositionPatient)
    return (int(first.Columns), int(first.Rows), len(datasets)), spacing, origin, direction


def sitk_on_grid(array: np.ndarray, datasets: Sequence[Dataset]) -> object:
    """``array`` (slices, rows, cols) as a SimpleITK image on the grid of ``datasets``."""
    import SimpleITK as sitk

    size, spacing, origin, direction = series_grid(datasets)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    assert image.GetSize() == size, (image.GetSize(), size)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


OUTSIDE = 255  # resampling fill: voxels of the series a label image does not cover


def on_series_grid(image: object, datasets: Sequence[Dataset], outside: int = OUTSIDE) -> np.ndarray:
    """A SimpleITK label image on the grid of ``datasets`` (ascending along the normal), (slices, rows, cols).

    Nearest neighbour in physical space: exact for an image on that grid in any axis order or
    sense; voxels it does not cover get ``outside``.
    """
    import SimpleITK as sitk

    size, spacing, origin, direction = series_grid(datasets)
    reference = sitk.Image(list(size), sitk.sitkUInt8)
    reference.SetSpacing(spacing)
    reference.SetOrigin(origin)
    reference.SetDirection(direction)
    resampled = sitk.Resample(
        sitk.Cast(image, sitk.sitkUInt8), reference, sitk.Transform(), sitk.sitkNearestNeighbor, outside
    )
    return sitk.GetArrayFromImage(resampled)


# --- label content ----------------------------------------------------------------------------


def organ_masks(shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """A 'Liver' (ellipsoid, not on the first and last slice) and a 'Tumor' inside it.

    The liver mask includes the tumour, as viewers store overlapping segments.
    """
    n, rows, cols = shape
    rr, cc = np.mgrid[0:rows, 0:cols]
    liver = np.zeros(shape, bool)
    tumour = np.zeros(shape, bool)
    centre = (n - 1) / 2
    for k in range(1, n - 1):
        t = 1.0 - ((k - centre) / (centre + 0.5)) ** 2
        ry, rx = 0.25 * rows * np.sqrt(t) + 1, 0.3 * cols * np.sqrt(t) + 1
        liver[k] = ((rr - 0.55 * rows) / ry) ** 2 + ((cc - 0.42 * cols) / rx) ** 2 <= 1.0
        if abs(k - centre) <= 1.5:
            tumour[k] = (rr - 0.52 * rows) ** 2 + (cc - 0.47 * cols) ** 2 <= (0.08 * rows) ** 2
    return {"Liver": liver, "Tumor": tumour & liver}


# --- SEG writers ------------------------------------------------------------------------------


def _segment_codes(name: str) -> tuple[Any, Any]:
    from pydicom.sr.codedict import codes

    if name.lower().startswith(("tum", "gtv")):
        return hd_code("49755003", "SCT", "Morphologically Altered Structure"), codes.SCT.Neoplasm
    return codes.SCT.Organ, codes.SCT.Liver


def hd_code(value: str, scheme: str, meaning: str) -> Any:
    import highdicom as hd

    return hd.sr.CodedConcept(value, scheme, meaning)


def highdicom_seg(
    source: Sequence[Dataset],
    segments: dict[str, np.ndarray],
    path: Path | None,
    *,
    seg_type: str = "BINARY",
    manufacturer: tuple[str, str] = ("Philips", "IntelliSpace Portal"),
    tag: str = "seg",
) -> Dataset:
    """A manual SEG (segment numbers in ``segments`` order) written by highdicom; saved if ``path``."""
    import highdicom as hd

    names = list(segments)
    stacked = np.stack([segments[n] for n in names], axis=-1).astype(np.uint8)
    if seg_type == "LABELMAP":
        pixels = np.zeros(stacked.shape[:3], np.uint8)
        for number in range(1, len(names) + 1):
            pixels[stacked[..., number - 1] > 0] = number
    else:
        pixels = stacked
    descriptions = []
    for number, name in enumerate(names, start=1):
        category, prop = _segment_codes(name)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name,
                segmented_property_category=category,
                segmented_property_type=prop,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            )
        )
    patient = str(source[0].PatientID)
    if any(ds.get("SpecificCharacterSet", None) == "" for ds in source):
        # highdicom refuses an empty (0008,0005); the viewer writing this SEG read it as default.
        source = [copy.deepcopy(ds) for ds in source]
        for ds in source:
            del ds.SpecificCharacterSet
    seg = hd.seg.Segmentation(
        source_images=list(source),
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues[seg_type],
        segment_descriptions=descriptions,
        series_instance_uid=uid(patient, tag, "seg-series"),
        series_number=301,
        sop_instance_uid=uid(patient, tag, "seg"),
        instance_number=1,
        manufacturer=manufacturer[0],
        manufacturer_model_name=manufacturer[1],
        software_versions="4.1",
        device_serial_number="1",
        series_description="Segmentation",
        content_label="SEGMENTATION",
        content_creator_name="Annotator^Anna",
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        seg.save_as(path, enforce_file_format=True)
    return seg


def dcmqi_seg(series: Series, segments: dict[str, np.ndarray], path: Path) -> Path:
    """A SEG written by dcmqi's ``itkimage2segimage`` as 3D Slicer saves it (one input per segment)."""
    import SimpleITK as sitk

    attributes = []
    with tempfile.TemporaryDirectory() as tmp:
        inputs = []
        for number, (name, mask) in enumerate(segments.items(), start=1):
            file = Path(tmp) / f"segment{number}.nii.gz"
            sitk.WriteImage(sitk_on_grid(mask.astype(np.uint8), series.datasets), str(file))
            inputs.append(str(file))
            category, prop = _segment_codes(name)
            attributes.append(
                [
                    {
                        "labelID": 1,
                        "SegmentLabel": name,
                        "SegmentDescription": name,
                        "SegmentAlgorithmType": "MANUAL",
                        "SegmentedPropertyCategoryCodeSequence": _json_code(category),
                        "SegmentedPropertyTypeCodeSequence": _json_code(prop),
                        "recommendedDisplayRGBValue": [220, 110, 60] if number == 1 else [250, 220, 40],
                    }
                ]
            )
        meta = {
            "ContentCreatorName": "Slicer^Annotator",
            "ClinicalTrialSeriesID": "1",
            "ClinicalTrialTimePointID": "1",
            "SeriesDescription": "Segmentation",
            "SeriesNumber": "300",
            "InstanceNumber": "1",
            "ContentLabel": "SEGMENTATION",
            "ContentDescription": "Image segmentation",
            "segmentAttributes": attributes,
        }
        run_itkimage2segimage(inputs, series.folder, meta, path, str(path))
    return path


def _json_code(code: Any) -> dict[str, str]:
    return {
        "CodeValue": str(code.value),
        "CodingSchemeDesignator": str(code.scheme_designator),
        "CodeMeaning": str(code.meaning),
    }


# --- RTSTRUCT ---------------------------------------------------------------------------------


@dataclass
class Roi:
    """One structure: contours as (slice index into ``Series.planned``, polygon (n, 2) row/col)."""

    number: int
    name: str
    interpreted_type: str
    contours: list[tuple[int, np.ndarray]]
    colour: tuple[int, int, int] = (255, 0, 0)
    exact: bool = True  # every vertex on pixel boundaries, edges axis-aligned


def rectangle(r0: float, r1: float, c0: float, c1: float, *, clockwise: bool = False) -> np.ndarray:
    """Axis-aligned rectangle (row/col); use half-integers so the edges lie on pixel boundaries."""
    points = np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], float)
    return points[::-1].copy() if clockwise else points


def circle(centre: tuple[float, float], radius: float, n_points: int = 40) -> np.ndarray:
    angles = np.linspace(0.0, 2.0 * np.pi, n_points, endpoint=False) + 0.137
    return np.stack([centre[0] + radius * np.sin(angles), centre[1] + radius * np.cos(angles)], axis=1)


def polygon_inside(polygon: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Pixel centres strictly inside ``polygon`` (row/col), by the crossing-number rule."""
    rr, cc = np.mgrid[0:rows, 0:cols].astype(float)
    inside = np.zeros((rows, cols), bool)
    for (r0, c0), (r1, c1) in zip(polygon, np.roll(polygon, -1, axis=0), strict=True):
        if r0 == r1:
            continue
        crosses = (r0 > rr) != (r1 > rr)
        at = c0 + (rr - r0) * (c1 - c0) / (r1 - r0)
        inside ^= crosses & (cc < at)
    return inside


def polygon_line(polygon: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Pixels the closed polygon's line passes through (dense sampling of every edge)."""
    line = np.zeros((rows, cols), bool)
    for a, b in zip(polygon, np.roll(polygon, -1, axis=0), strict=True):
        n = int(np.ceil(np.linalg.norm(b - a) * 100)) + 2
        points = a + np.linspace(0.0, 1.0, n)[:, None] * (b - a)
        idx = np.floor(points + 0.5).astype(int)
        ok = (idx[:, 0] >= 0) & (idx[:, 0] < rows) & (idx[:, 1] >= 0) & (idx[:, 1] < cols)
        line[idx[ok, 0], idx[ok, 1]] = True
    return line


def to_patient(ds: Dataset, polygon: np.ndarray) -> np.ndarray:
    """Row/col index coordinates on slice ``ds`` -> patient coordinates (mm), (n, 3)."""
    iop = np.asarray(ds.ImageOrientationPatient, float)
    spacing = np.asarray(ds.PixelSpacing, float)  # between rows, between columns
    origin = np.asarray(ds.ImagePositionPatient, float)
    return origin + polygon[:, 1:2] * spacing[1] * iop[:3] + polygon[:, 0:1] * spacing[0] * iop[3:]


def rtstruct_truth(
    series: Series, rois: Sequence[Roi], labels: dict[str, list[str]]
) -> tuple[np.ndarray, np.ndarray]:
    """(label map, tolerance) on the written slices: even-odd per slice, later label wins."""
    n_planned, rows, cols = len(series.planned), series.shape[1], series.shape[2]
    masks: dict[str, np.ndarray] = {}
    tolerance = np.zeros((n_planned, rows, cols), bool)
    for roi in rois:
        mask = masks.setdefault(roi.name, np.zeros((n_planned, rows, cols), bool))
        for k, polygon in roi.contours:
            mask[k] ^= polygon_inside(polygon, rows, cols)
            if not roi.exact and match_label(roi.name, labels) is not None:
                tolerance[k] |= polygon_line(polygon, rows, cols)
    truth = label_map(masks, labels)
    return truth[series.present], tolerance[series.present]


def write_rtstruct(series: Series, rois: Sequence[Roi], path: Path, *, tag: str = "rt") -> Path:
    """An RTSTRUCT as a planning system (here: Varian Eclipse/ARIA) writes it.

    The referenced-frame section lists every planned slice (also ones missing from the
    export); ROI numbers need not be contiguous and ROIContourSequence is not in
    StructureSetROISequence's order.
    """
    ref = series.planned[0]
    patient = str(ref.PatientID)
    sop_uid = uid(patient, tag, "rtstruct")
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RTStructureSetStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = "1.2.246.352.70.2.1.160.3"
    ds.file_meta.ImplementationVersionName = "DCIE 2.2"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.InstanceCreationDate, ds.InstanceCreationTime = "20260420", "101500"
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate, ds.StudyTime = ref.StudyDate, ref.StudyTime
    ds.AccessionNumber = ""
    ds.Modality = "RTSTRUCT"
    ds.Manufacturer = "Varian Medical Systems"
    ds.ReferringPhysicianName = ""
    ds.StationName = "ECLIPSE01"
    ds.SeriesDescription = "ARIA RadOnc Structure Sets"
    ds.ManufacturerModelName = "ARIA RadOnc"
    ds.PatientName = ref.PatientName
    ds.PatientID = patient
    ds.PatientBirthDate = ""
    ds.PatientSex = ref.get("PatientSex", "")
    ds.SoftwareVersions = "15.6.05"
    ds.StudyInstanceUID = ref.StudyInstanceUID
    ds.SeriesInstanceUID = uid(patient, tag, "rtstruct-series")
    ds.StudyID = ref.get("StudyID", "")
    ds.SeriesNumber = 5
    ds.InstanceNumber = 1
    ds.StructureSetLabel = "CT_1"
    ds.StructureSetName = "CT_1"
    ds.StructureSetDate, ds.StructureSetTime = "20260420", "101500"

    ds.ReferencedFrameOfReferenceSequence = referenced_frame_of_reference(ref, series.planned)

    roi_seq, contour_seq, obs_seq = DicomSequence(), DicomSequence(), DicomSequence()
    for observation, roi in enumerate(rois, start=1):
        item = Dataset()
        item.ROINumber = roi.number
        item.ReferencedFrameOfReferenceUID = ref.FrameOfReferenceUID
        item.ROIName = roi.name
        item.ROIGenerationAlgorithm = "MANUAL"
        roi_seq.append(item)
        roi_contour = Dataset()
        roi_contour.ROIDisplayColor = list(roi.colour)
        contours = DicomSequence()
        for number, (k, polygon) in enumerate(roi.contours, start=1):
            contour = Dataset()
            contour.ContourImageSequence = DicomSequence([image_reference(series.planned[k])])
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(polygon)
            contour.ContourNumber = number
            contour.ContourData = [f"{v:.4f}" for v in to_patient(series.planned[k], polygon).ravel()]
            contours.append(contour)
        roi_contour.ContourSequence = contours
        roi_contour.ReferencedROINumber = roi.number
        contour_seq.append(roi_contour)
        obs = Dataset()
        obs.ObservationNumber = observation
        obs.ReferencedROINumber = roi.number
        obs.RTROIInterpretedType = roi.interpreted_type
        obs.ROIInterpreter = ""
        obs_seq.append(obs)
    ds.StructureSetROISequence = roi_seq
    ds.ROIContourSequence = DicomSequence(list(contour_seq)[::-1])  # not in ROI order
    ds.RTROIObservationsSequence = obs_seq
    ds.ApprovalStatus = "UNAPPROVED"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


# --- cases ------------------------------------------------------------------------------------


@dataclass
class Built:
    """One patient folder of a snapshot and what converting it must give."""

    patient_id: str
    series: Series
    annotation: Path
    kind: str  # SEG or RTSTRUCT
    labels: dict[str, list[str]]
    truth: np.ndarray  # ROI YAML values, (slices, rows, cols) ascending along the normal
    tolerance: np.ndarray  # where a rasteriser may differ (contour-line pixels of non-exact ROIs)
    offending: list[str] = field(default_factory=list)  # names identifying the faulty file/series
    rois: list[Roi] = field(default_factory=list)

    @property
    def modality(self) -> str:
        return self.series.modality


def _seg_case(
    folder: Path,
    planned: list[Dataset],
    *,
    seg_name: str = "seg.dcm",
    series_folder: str = "CT",
    segments: dict[str, np.ndarray] | None = None,
    **seg_args: Any,
) -> Built:
    series = write_series(planned, folder / series_folder)
    segments = segments if segments is not None else organ_masks(series.shape)
    seg_path = folder / "SEG" / seg_name
    highdicom_seg(series.datasets, segments, seg_path, **seg_args)
    truth = label_map(segments, SEG_ROIS)
    return Built(folder.name, series, seg_path, "SEG", SEG_ROIS, truth, np.zeros(truth.shape, bool))


def strip_preamble(path: Path) -> None:
    """Rewrite ``path`` without the 128-byte preamble and 'DICM' prefix: DICOM by content only."""
    ds = pydicom.dcmread(path)
    ds.preamble = None
    pydicom.dcmwrite(path, ds, enforce_file_format=False)
    assert path.read_bytes()[128:132] != b"DICM"


def philips_dicomdir_export(folder: Path, n_slices: int = 10) -> Built:
    """A CT and its SEG as a DICOMDIR export: DICOMDIR at the root, files without extension.

    ``pydicom.fileset.FileSet`` lays it out as ``PT000000/ST000000/SE000000/IM000000``; one CT
    file is then rewritten without preamble and 'DICM' prefix.
    """
    from pydicom.fileset import FileSet

    planned = planned_slices(folder.name, n_slices)
    shape = (n_slices, int(planned[0].Rows), int(planned[0].Columns))
    segments = organ_masks(shape)
    seg = highdicom_seg(planned, segments, None)
    fileset = FileSet()
    for ds in (*planned, seg):
        fileset.add(ds)
    folder.mkdir(parents=True, exist_ok=True)
    fileset.write(folder)
    by_uid = {str(instance.SOPInstanceUID): Path(instance.path) for instance in fileset}
    files = [by_uid[str(ds.SOPInstanceUID)] for ds in planned]
    strip_preamble(files[n_slices // 2])
    series = Series(files[0].parent, planned, list(range(n_slices)), files)
    truth = label_map(segments, SEG_ROIS)
    return Built(
        folder.name,
        series,
        by_uid[str(seg.SOPInstanceUID)],
        "SEG",
        SEG_ROIS,
        truth,
        np.zeros(truth.shape, bool),
    )


def seg_named_label_seg(folder: Path) -> Built:
    """An MR series (Toshiba MR_small) and its SEG saved as ``label.seg``."""
    planned = planned_slices(folder.name, 8, base="MR_small.dcm", tag="mr")
    return _seg_case(
        folder, planned, seg_name="label.seg", series_folder="MR", manufacturer=("OHIF", "Viewer")
    )


def dcmqi_slicer_seg(folder: Path) -> Built:
    """A CT and its SEG written by dcmqi (3D Slicer); segment 1 is the tumour, 2 the liver."""
    series = write_series(planned_slices(folder.name, 10), folder / "CT")
    masks = organ_masks(series.shape)
    segments = {"Tumor": masks["Tumor"], "Liver": masks["Liver"]}
    seg_path = dcmqi_seg(series, segments, folder / "SEG" / "Segmentation.seg.dcm")
    truth = label_map(segments, SEG_ROIS)
    return Built(folder.name, series, seg_path, "SEG", SEG_ROIS, truth, np.zeros(truth.shape, bool))


def seg_empty_first_segment(folder: Path) -> Built:
    """A SEG whose segment 1 (the first ROI YAML label, liver) is declared but has no pixels."""
    planned = planned_slices(folder.name, 10)
    masks = organ_masks((10, int(planned[0].Rows), int(planned[0].Columns)))
    segments = {"Liver": np.zeros_like(masks["Liver"]), "Tumor": masks["Tumor"]}
    return _seg_case(folder, planned, seg_name="empty_liver.dcm", segments=segments)


def labelmap_seg(folder: Path) -> Built:
    """A LABELMAP SEG (SOP class 1.2.840.10008.5.1.4.1.1.66.7) written by highdicom."""
    planned = planned_slices(folder.name, 10)
    masks = organ_masks((10, int(planned[0].Rows), int(planned[0].Columns)))
    segments = {"Liver": masks["Liver"] & ~masks["Tumor"], "Tumor": masks["Tumor"]}
    return _seg_case(folder, planned, seg_name="labelmap.dcm", segments=segments, seg_type="LABELMAP")


NARROW_HOLE_SLICE = 4  # the ring's hole is 3 pixels wide on this slice
NARROW_HOLE = (40.5, 51.5, 30.5, 33.5)  # rows r0..r1, cols c0..c1 (pixel boundaries)


def holes_rois(n_slices: int) -> list[Roi]:
    """Ring (square with a square hole) and GTV circle on slices 1-4; BODY with lung holes on 6-10."""
    ring = []
    for k in range(1, 5):
        ring.append((k, rectangle(20.5, 56.5, 14.5, 50.5)))
        hole = NARROW_HOLE if k == NARROW_HOLE_SLICE else (30.5, 46.5, 24.5, 40.5)
        ring.append((k, rectangle(*hole, clockwise=True)))
    gtv = [(k, circle((40.3, 92.7), 11.0 + k)) for k in range(1, 5)]
    lungs_outline = [rectangle(30.5, 90.5, 20.5, 55.5), rectangle(30.5, 90.5, 70.5, 105.5)]
    body, lungs, couch = [], [], []
    for k in range(6, min(11, n_slices)):
        body.append((k, rectangle(10.5, 117.5, 8.5, 119.5)))
        body += [(k, outline[::-1].copy()) for outline in lungs_outline]  # the lungs cut out of BODY
        lungs += [(k, outline.copy()) for outline in lungs_outline]
        couch.append((k, rectangle(120.5, 125.5, 2.5, 125.5)))
    return [
        Roi(1, "BODY", "EXTERNAL", body, (0, 255, 0)),
        Roi(2, "Lungs", "ORGAN", lungs, (0, 128, 255)),
        Roi(5, "Ring", "ORGAN", ring, (255, 128, 0)),
        Roi(17, "GTV_1", "GTV", gtv, (255, 0, 0), exact=False),
        Roi(23, "CouchSurface", "SUPPORT", couch, (128, 128, 128)),
    ]


def rtstruct_holes(folder: Path) -> Built:
    """RTSTRUCT with holes: a ring (outer + inner CLOSED_PLANAR contour), BODY with lung holes, a circle."""
    series = write_series(planned_slices(folder.name, 12), folder / "CT")
    rois = holes_rois(12)
    rt_path = write_rtstruct(series, rois, folder / "RTSTRUCT" / "RS.ring.dcm")
    truth, tolerance = rtstruct_truth(series, rois, RT_ROIS)
    return Built(folder.name, series, rt_path, "RTSTRUCT", RT_ROIS, truth, tolerance, rois=rois)


MISSING_SLICES = (9, 10, 11)  # deleted from the export; the GTV is drawn on them too


def rtstruct_on_missing_slices(folder: Path) -> Built:
    """An RTSTRUCT drawn on 12 slices of which the export holds 9 (the top three are missing)."""
    planned = planned_slices(folder.name, 12)
    series = write_series(planned, folder / "CT", drop=MISSING_SLICES)
    gtv = [(k, rectangle(40.5, 70.5, 50.5, 80.5)) for k in range(6, 12)]
    rois = [Roi(1, "GTV", "GTV", gtv)]
    rt_path = write_rtstruct(series, rois, folder / "RTSTRUCT" / "RS.missing.dcm")
    truth, tolerance = rtstruct_truth(series, rois, RT_ROIS)
    return Built(
        folder.name,
        series,
        rt_path,
        "RTSTRUCT",
        RT_ROIS,
        truth,
        tolerance,
        [str(rt_path), rt_path.name],
        rois,
    )


def empty_charset_ct(folder: Path) -> Built:
    """A CT whose Specific Character Set (0008,0005) is present and empty, with a highdicom SEG."""
    planned = planned_slices(folder.name, 10, empty_charset=True)
    return _seg_case(folder, planned, seg_name="charset.dcm")


def missing_middle_slice(folder: Path) -> Built:
    """A 5 mm CT with its middle slice missing (a 10 mm gap); the SEG was drawn on what is there."""
    planned = planned_slices(folder.name, 10)
    series = write_series(planned, folder / "CT_gap", drop=(5,))
    masks = organ_masks((10, int(planned[0].Rows), int(planned[0].Columns)))
    segments = {name: mask[series.present] for name, mask in masks.items()}
    seg_path = folder / "SEG" / "gap.dcm"
    highdicom_seg(series.datasets, segments, seg_path)
    truth = label_map(segments, SEG_ROIS)
    names = [str(series.folder), series.folder.name, *[f.name for f in series.files]]
    return Built(folder.name, series, seg_path, "SEG", SEG_ROIS, truth, np.zeros(truth.shape, bool), names)


ODD_SPACING_SLICE = 4


def mixed_pixel_spacing(folder: Path) -> Built:
    """A CT where one slice has another PixelSpacing (the SEG was made before that slice changed)."""
    planned = planned_slices(folder.name, 10)
    built = _seg_case(folder, planned, seg_name="mixed.dcm", series_folder="CT_mixed")
    odd = built.series.planned[ODD_SPACING_SLICE]
    odd.PixelSpacing = [0.751953, 0.751953]
    odd.save_as(built.series.files[ODD_SPACING_SLICE], enforce_file_format=True)
    odd_file = built.series.files[ODD_SPACING_SLICE]
    built.offending = [str(built.series.folder), built.series.folder.name, str(odd_file), odd_file.name]
    return built


def seg_pixel_spacing_unlike_ct(folder: Path, seg_name: str = "spacing.dcm") -> Built:
    """A SEG whose PixelMeasuresSequence PixelSpacing differs from its CT's."""
    built = _seg_case(folder, planned_slices(folder.name, 10), seg_name=seg_name)
    seg = pydicom.dcmread(built.annotation)
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    measures.PixelSpacing = [0.751953, 0.751953]
    seg.save_as(built.annotation, enforce_file_format=True)
    built.offending = [str(built.annotation), built.annotation.name]
    return built


def good_seg_case(folder: Path) -> Built:
    """A plain CT + highdicom SEG that converts."""
    return _seg_case(folder, planned_slices(folder.name, 10), seg_name="good_seg.dcm")
