"""Benchmark: ``iterseg convert`` vs dcm2niix and med-imagetools, same input, same run.

Writes two snapshots of a synthetic thorax-abdomen CT (512x512x200, 0.78 mm pixels, 1.25 mm
slices, uint16 stored with RescaleIntercept -1024, a body of fat and soft tissue with lungs,
heart, liver and its vessel, spleen, kidneys and spine, Gaussian noise, air outside):

* SEG: a highdicom BINARY SEG of liver (vessel cut out), spleen and both kidneys as 'kidney';
* RTSTRUCT: a hand-written structure set of BODY and 7 organs, closed planar polygons of 64-200
  points, one per slice and ROI, and a hole contour (the liver vessel) inside the liver.

Each tool runs ``--repeat`` times per case as a whole process: ``iterseg convert --jobs 1``,
dcm2niix on the CT folder (the reference: what a converter costs that only reads the image) and
med-imagetools' ``imgtools nnunet-pipeline`` (the pipeline iterseg replaced). Wall time and peak
RSS come from ``wait4`` in a small launcher process, so neither this script's memory nor its
imports count. Then iterseg's CT NIfTI is compared with dcm2niix's in HU, and its SEG label map
with the generated masks, voxel for voxel.

    bash benchmarks/convert_setup.sh   # dcm2niix and pigz, from Debian's packages
    .venv/bin/python benchmarks/convert.py [--size small] [--repeat 3] [--skip-imgtools]
        [--peer-timeout 400] [--peer-once-above 90] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from iterseg.rawdata.demo import image_reference, referenced_frame_of_reference
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid

BIN = Path(sys.executable).parent
SIZES = {"full": (512, 512, 200), "small": (128, 128, 40)}  # rows, columns, slices
FOV_MM, LENGTH_MM = 400.0, 250.0  # in-plane field of view and scan length: same anatomy at any size
STUDY_DATE = "20260101"

# Ellipsoids in patient coordinates (LPS, mm): centre, semi-axes, HU. Painted in this order.
ORGANS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float], float]] = {
    "lung_r": ((-80.0, 10.0, 70.0), (55.0, 70.0, 55.0), -850.0),
    "lung_l": ((80.0, 10.0, 70.0), (50.0, 70.0, 55.0), -850.0),
    "heart": ((15.0, -25.0, 40.0), (50.0, 40.0, 30.0), 45.0),
    "liver": ((-60.0, 0.0, -20.0), (75.0, 65.0, 40.0), 60.0),
    "spleen": ((85.0, 35.0, -15.0), (30.0, 45.0, 35.0), 50.0),
    "kidney_r": ((-55.0, 55.0, -85.0), (25.0, 30.0, 35.0), 150.0),
    "kidney_l": ((60.0, 55.0, -80.0), (25.0, 30.0, 35.0), 150.0),
}
VESSEL = ((-50.0, 5.0, -20.0), (12.0, 10.0, 25.0), 160.0)  # inside the liver: its hole
BODY = ((0.0, 10.0), (170.0, 120.0))  # centre, semi-axes of the outline (the skin)
FAT_MM = 15.0  # subcutaneous fat under the skin
SPINE = ((0.0, 85.0), 18.0, 10.0)  # centre, cortical and marrow radius
SEG_SEGMENTS = {"liver": ("liver",), "spleen": ("spleen",), "kidney": ("kidney_r", "kidney_l")}
RT_ROIS = ("BODY", "liver", "spleen", "kidney_l", "kidney_r", "heart", "lung_l", "lung_r")

# Runs the command in a child, waits with wait4 and writes wall time, peak RSS of that child
# (and of the children it waited for) and exit status as JSON. Started with -I -S, so the RSS
# the measured command inherits at exec is this small process's, not the benchmark's.
LAUNCHER = r"""
import json, os, signal, sys, time
result, log, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
cmd = sys.argv[4:]
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.setsid()
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        os.write(2, f"{cmd[0]}: {exc}\n".encode())
    finally:
        os._exit(127)
killed = []
def stop(*_):
    killed.append(1)
    os.killpg(pid, signal.SIGKILL)
signal.signal(signal.SIGALRM, stop)
signal.setitimer(signal.ITIMER_REAL, timeout)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
signal.setitimer(signal.ITIMER_REAL, 0)
with open(result, "w") as f:
    json.dump({"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "maxrss_kb": usage.ru_maxrss,
               "status": os.waitstatus_to_exitcode(status), "timed_out": bool(killed)}, f)
"""


@dataclass
class Geometry:
    rows: int
    cols: int
    slices: int

    @property
    def spacing(self) -> tuple[float, float, float]:  # x (between columns), y, z
        return FOV_MM / self.cols, FOV_MM / self.rows, LENGTH_MM / self.slices

    def x(self) -> np.ndarray:
        return -FOV_MM / 2 + (np.arange(self.cols) + 0.5) * self.spacing[0]

    def y(self) -> np.ndarray:
        return -FOV_MM / 2 + (np.arange(self.rows) + 0.5) * self.spacing[1]

    def z(self, k: int) -> float:
        return -LENGTH_MM / 2 + (k + 0.5) * self.spacing[2]

    @property
    def int16_bytes(self) -> int:
        return self.rows * self.cols * self.slices * 2


@dataclass
class Case:
    name: str  # SEG or RTSTRUCT
    snapshot: Path
    ct_folder: Path
    roi_yaml: Path
    truth: np.ndarray  # label map (z, y, x) in ROI YAML order, later label wins (sparse_mask)


@dataclass
class Run:
    wall: float
    cpu: float
    rss_mb: float
    load_before: float
    load_after: float
    status: int
    timed_out: bool
    error: str = ""


@dataclass
class Row:
    tool: str
    case: str
    runs: list[Run] = field(default_factory=list)
    note: str = ""

    @property
    def good(self) -> list[Run]:
        return [r for r in self.runs if r.status == 0 and not r.timed_out]

    @property
    def median(self) -> float | None:
        return statistics.median(r.wall for r in self.good) if self.good else None


# --- synthetic data ---------------------------------------------------------------------------


def section(
    centre: tuple[float, float, float], axes: tuple[float, float, float], z: float
) -> tuple[float, float] | None:
    """Semi-axes of an ellipsoid's cross-section at height ``z``, or None where it misses it."""
    f = 1 - ((z - centre[2]) / axes[2]) ** 2
    if f <= 0.02:  # leave out slivers thinner than a pixel or two
        return None
    return axes[0] * np.sqrt(f), axes[1] * np.sqrt(f)


def inside(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, a: float, b: float) -> np.ndarray:
    return ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 < 1


def body_axes(z: float) -> tuple[float, float]:
    """The outline narrows a little towards the abdomen, as a torso does."""
    w = 1 - 0.06 * (1 - z / (LENGTH_MM / 2)) / 2
    return BODY[1][0] * w, BODY[1][1] * w


def organ_masks(geo: Geometry, k: int) -> dict[str, np.ndarray]:
    """Masks of one slice by structure (organs, the vessel, BODY), from voxel centres."""
    yy, xx = np.meshgrid(geo.y(), geo.x(), indexing="ij")
    z = geo.z(k)
    masks = {"BODY": inside(xx, yy, *BODY[0], *body_axes(z))}
    for name, (centre, axes, _) in {**ORGANS, "vessel": VESSEL}.items():
        ab = section(centre, axes, z)
        masks[name] = inside(xx, yy, centre[0], centre[1], *ab) if ab else np.zeros_like(masks["BODY"])
    masks["liver"] &= ~masks["vessel"]
    return masks


def ct_slice(geo: Geometry, k: int, masks: dict[str, np.ndarray], seed: int) -> np.ndarray:
    """HU of one slice as stored (HU + 1024, uint16)."""
    yy, xx = np.meshgrid(geo.y(), geo.x(), indexing="ij")
    a, b = body_axes(geo.z(k))
    hu = np.full((geo.rows, geo.cols), -1000.0)
    hu[masks["BODY"]] = -90.0  # subcutaneous fat
    hu[inside(xx, yy, *BODY[0], a - FAT_MM, b - FAT_MM)] = 40.0  # muscle and soft tissue
    for name, (_, _, value) in ORGANS.items():
        hu[masks[name]] = value
    hu[masks["vessel"]] = VESSEL[2]
    (sx, sy), cortical, marrow = SPINE
    hu[inside(xx, yy, sx, sy, cortical, cortical)] = 650.0
    hu[inside(xx, yy, sx, sy, marrow, marrow)] = 220.0
    rng = np.random.default_rng([seed, k])
    hu += rng.normal(0, 12, hu.shape)
    return np.clip(np.rint(hu) + 1024, 0, 4095).astype(np.uint16)


def uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=["iterseg-benchmark-convert", *map(str, parts)])


def write_ct(geo: Geometry, folder: Path, patient: str, seed: int) -> tuple[list[Dataset], list[dict]]:
    """Write the CT series as ``<InstanceNumber>.dcm`` (instance 1 at the head, as scanners number
    them); return the datasets and the masks of each slice, both in ascending z."""
    folder.mkdir(parents=True)
    sx, sy, sz = geo.spacing
    study, series, frame = uid(patient, "study"), uid(patient, "ct"), uid(patient, "frame")
    datasets, masks = [], []
    for k in range(geo.slices):
        m = organ_masks(geo, k)
        sop = uid(patient, "ct", k)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = STUDY_DATE
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = "120000"
        ds.AccessionNumber = ""
        ds.Modality = "CT"
        ds.Manufacturer, ds.ManufacturerModelName = "Benchmark", "Phantom CT"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription, ds.SeriesDescription = "Benchmark thorax-abdomen", "Axial 1.25 mm"
        ds.PatientName, ds.PatientID = f"Bench^{patient}", patient
        ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
        ds.SliceThickness = round(sz, 4)
        ds.KVP = 120
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.StudyID, ds.SeriesNumber = "1", 2
        ds.InstanceNumber = geo.slices - k
        ds.ImagePositionPatient = [round(-FOV_MM / 2 + sx / 2, 6), round(-FOV_MM / 2 + sy / 2, 6), geo.z(k)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame, ""
        ds.SliceLocation = geo.z(k)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = geo.rows, geo.cols
        ds.PixelSpacing = [round(sy, 6), round(sx, 6)]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.PixelData = ct_slice(geo, k, m, seed).tobytes()
        ds.save_as(folder / f"{ds.InstanceNumber}.dcm", enforce_file_format=True)
        datasets.append(ds)
        masks.append(m)
    return datasets, masks


def write_seg(datasets: list[Dataset], truth: np.ndarray, path: Path, patient: str) -> None:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    types = {"liver": codes.SCT.Liver, "spleen": codes.SCT.Spleen, "kidney": codes.SCT.Kidney}
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name,
            segmented_property_category=codes.SCT.Organ,
            segmented_property_type=types[name],
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for number, name in enumerate(SEG_SEGMENTS, 1)
    ]
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=truth,  # label map: value = segment number
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=uid(patient, "seg"),
        series_number=300,
        sop_instance_uid=uid(patient, "seg", 1),
        instance_number=1,
        manufacturer="Benchmark",
        manufacturer_model_name="Manual contouring",
        software_versions="1",
        device_serial_number="1",
        series_description="Organs (manual)",
    )
    path.parent.mkdir(parents=True)
    seg.save_as(path)


def polygon(cx: float, cy: float, a: float, b: float, z: float, phase: float) -> list[str]:
    """A closed planar ellipse outline, 64-200 points (about one per 2 mm of perimeter)."""
    perimeter = np.pi * (3 * (a + b) - np.sqrt((3 * a + b) * (a + 3 * b)))
    n = int(np.clip(perimeter / 2, 64, 200))
    t = phase + 2 * np.pi * np.arange(n) / n
    points = np.stack([cx + a * np.cos(t), cy + b * np.sin(t), np.full(n, z)], axis=1)
    return [f"{v:.3f}" for v in points.ravel()]


def write_rtstruct(datasets: list[Dataset], geo: Geometry, path: Path, patient: str) -> None:
    first = datasets[0]
    rt = Dataset()
    sop = uid(patient, "rtstruct", 1)
    rt.file_meta = FileMetaDataset()
    rt.file_meta.MediaStorageSOPClassUID = RTStructureSetStorage
    rt.file_meta.MediaStorageSOPInstanceUID = sop
    rt.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    rt.SpecificCharacterSet = "ISO_IR 100"
    rt.SOPClassUID, rt.SOPInstanceUID = RTStructureSetStorage, sop
    for keyword in (
        "StudyDate StudyTime AccessionNumber ReferringPhysicianName StudyDescription PatientName "
        "PatientID PatientBirthDate PatientSex StudyInstanceUID StudyID"
    ).split():
        setattr(rt, keyword, getattr(first, keyword))
    rt.Modality = "RTSTRUCT"
    rt.Manufacturer, rt.ManufacturerModelName = "Benchmark", "Manual contouring"
    rt.SeriesDate, rt.SeriesTime = "20260102", "090000"
    rt.SeriesDescription = "Organs (manual)"
    rt.SeriesInstanceUID, rt.SeriesNumber, rt.InstanceNumber = uid(patient, "rtstruct"), 400, 1
    rt.StructureSetLabel, rt.StructureSetName = "Organs", "Organs"
    rt.StructureSetDate, rt.StructureSetTime = "20260102", "090000"

    rt.ReferencedFrameOfReferenceSequence = referenced_frame_of_reference(first, datasets)

    rois, contours, observations = [], [], []
    rng = np.random.default_rng(7)
    for number, name in enumerate(RT_ROIS, 1):
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID = number, first.FrameOfReferenceUID
        roi.ROIName, roi.ROIGenerationAlgorithm = name, "MANUAL"
        rois.append(roi)
        items = []
        for k, ds in enumerate(datasets):
            z = geo.z(k)
            outlines = []
            if name == "BODY":
                outlines.append((*BODY[0], *body_axes(z)))
            else:
                centre, axes, _ = ORGANS[name]
                ab = section(centre, axes, z)
                if ab:
                    outlines.append((centre[0], centre[1], *ab))
                    hole = section(VESSEL[0], VESSEL[1], z) if name == "liver" else None
                    if hole:
                        outlines.append((VESSEL[0][0], VESSEL[0][1], *hole))
            for outline in outlines:
                item = Dataset()
                item.ContourImageSequence = Sequence([image_reference(ds)])
                item.ContourGeometricType = "CLOSED_PLANAR"
                item.ContourData = polygon(*outline, z, phase=float(rng.uniform(0, 2 * np.pi)))
                item.NumberOfContourPoints = len(item.ContourData) // 3
                item.ContourNumber = len(items) + 1
                items.append(item)
        contour = Dataset()
        contour.ROIDisplayColor = [int(v) for v in rng.integers(40, 255, 3)]
        contour.ReferencedROINumber = number
        contour.ContourSequence = Sequence(items)
        contours.append(contour)
        observation = Dataset()
        observation.ObservationNumber, observation.ReferencedROINumber = number, number
        observation.RTROIInterpretedType = "EXTERNAL" if name == "BODY" else "ORGAN"
        observation.ROIInterpreter = ""
        observations.append(observation)
    rt.StructureSetROISequence = Sequence(rois)
    rt.ROIContourSequence = Sequence(contours)
    rt.RTROIObservationsSequence = Sequence(observations)
    path.parent.mkdir(parents=True)
    rt.save_as(path, enforce_file_format=True)


def label_map(masks: list[dict], labels: dict[str, tuple[str, ...]]) -> np.ndarray:
    """Label values 1.. in order, the later label winning where they overlap (sparse_mask)."""
    out = np.zeros((len(masks), *masks[0]["BODY"].shape), np.uint8)
    for value, parts in enumerate(labels.values(), 1):
        for k, m in enumerate(masks):
            for part in parts:
                out[k][m[part]] = value
    return out


def write_yaml(path: Path, labels: list[str]) -> None:
    path.write_text("".join(f"{name}: ['^{name}$']\n" for name in labels))


def make_cases(root: Path, geo: Geometry) -> list[Case]:
    rawdata = root / "rawdata" / "bench"
    cases = []
    snap = rawdata / "2026-01-01__bench"
    datasets, masks = write_ct(geo, snap / "P001" / "CT", "P001", seed=1)
    truth = label_map(masks, SEG_SEGMENTS)
    write_seg(datasets, truth, snap / "P001" / "SEG" / "seg.dcm", "P001")
    write_yaml(root / "roi_seg.yaml", list(SEG_SEGMENTS))
    cases.append(Case("SEG", snap, snap / "P001" / "CT", root / "roi_seg.yaml", truth))
    del datasets, masks
    snap = rawdata / "2026-01-02__bench"
    datasets, masks = write_ct(geo, snap / "P002" / "CT", "P002", seed=2)
    write_rtstruct(datasets, geo, snap / "P002" / "RTSTRUCT" / "rtstruct.dcm", "P002")
    write_yaml(root / "roi_rtstruct.yaml", list(RT_ROIS))
    truth = label_map(masks, {name: (name,) for name in RT_ROIS})
    cases.append(Case("RTSTRUCT", snap, snap / "P002" / "CT", root / "roi_rtstruct.yaml", truth))
    return cases


# --- measuring --------------------------------------------------------------------------------


def one_line_error(log: Path) -> str:
    """Why a run failed, on one line: its first error line (and the next, if it ends in ':')."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    if not lines:
        return "(no output)"
    if any(line.startswith("Traceback") for line in lines):
        text = lines[-1]  # the exception itself
    else:
        i = next((i for i, line in enumerate(lines) if re.search(r"\berror\b", line, re.I)), len(lines) - 1)
        text = re.sub(r"^\d\d:\d\d:\d\d\s+ERROR\s+", "", lines[i])
        if text.endswith(":") and i + 1 < len(lines):
            text += " " + lines[i + 1]
    text = text.replace("|", "/")  # it goes into a markdown table
    return text if len(text) <= 300 else text[:297] + "..."


def measure(cmd: list[str], work: Path, timeout: float) -> Run:
    """Run ``cmd`` once through the launcher; its output goes to ``work/log.txt``."""
    import subprocess

    result, log = work / "result.json", work / "log.txt"
    before = os.getloadavg()[0]
    subprocess.run(
        [sys.executable, "-I", "-S", "-c", LAUNCHER, str(result), str(log), str(timeout), *cmd], check=True
    )
    after = os.getloadavg()[0]
    r = json.loads(result.read_text())
    run = Run(r["wall"], r["cpu"], r["maxrss_kb"] / 1024, before, after, r["status"], r["timed_out"])
    if r["timed_out"]:
        run.error = f"timed out after {timeout:.0f} s"
    elif r["status"] != 0:
        run.error = f"exit {r['status']}: {one_line_error(log)}"
    return run


def fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def commands(case: Case, root: Path, skip_imgtools: bool) -> dict[str, tuple[list[str], Path, Path]]:
    """Per tool: the command, the folder emptied before each run, and its log folder."""
    name = case.name.lower()
    out, d2n = root / "iterseg" / name / "out", root / "dcm2niix" / name
    peer, crawl = root / "imgtools" / name / "out", root / "imgtools" / name / "crawl"
    tools = {
        "iterseg convert": (
            [
                *(str(BIN / "iterseg"), "convert", "--snapshot", str(case.snapshot), "--out", str(out)),
                *("--roi-yaml", str(case.roi_yaml), "--modality", "CT", "--jobs", "1"),
            ],
            out,
            root / "iterseg" / name,
        ),
        "dcm2niix": (
            ["dcm2niix", "-z", "y", "-1", "-o", str(d2n), "-f", "ct", str(case.ct_folder)],
            d2n,
            root / "logs" / "dcm2niix" / name,
        ),
    }
    if not skip_imgtools:
        tools["imgtools nnunet-pipeline"] = (
            [
                *(str(BIN / "imgtools"), "nnunet-pipeline", str(case.snapshot), str(peer)),
                *("--crawl-directory", str(crawl), "-m", f"CT,{case.name}", "-ryaml", str(case.roi_yaml)),
                *("-ms", "sparse_mask", "-j", "1", "--existing-file-mode", "overwrite"),
            ],
            peer,
            root / "imgtools" / name,
        )
    return tools


def bench_case(case: Case, root: Path, args: argparse.Namespace) -> list[Row]:
    """Each tool ``--repeat`` times, interleaved; imgtools once where one run is already slow."""
    repeat, timeout = args.repeat, args.peer_timeout
    tools = commands(case, root, args.skip_imgtools)
    rows = {tool: Row(tool, case.name) for tool in tools}
    for i in range(repeat):
        for tool, (cmd, clean, logs) in tools.items():
            row = rows[tool]
            if row.runs and not row.good:
                continue  # failed or timed out before: the same input fails again
            peer = tool.startswith("imgtools")
            if peer and row.runs and row.runs[0].wall > args.peer_once_above:
                row.note = f"not repeated (one run > {args.peer_once_above:.0f} s)"
                continue
            if peer:
                shutil.rmtree(root / "imgtools" / case.name.lower() / "crawl", ignore_errors=True)
            fresh(clean)
            logs.mkdir(parents=True, exist_ok=True)
            limit = timeout if peer else max(timeout, 1800)
            run = measure(cmd, logs, limit)
            row.runs.append(run)
            state = run.error or "ok"
            print(
                f"  {case.name} run {i + 1}: {tool:<25} {run.wall:7.2f} s  {run.rss_mb:7.0f} MB  {state}",
                flush=True,
            )
    return list(rows.values())


# --- checking ---------------------------------------------------------------------------------


def read_lps(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    import SimpleITK as sitk

    image = sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS")
    return sitk.GetArrayFromImage(image), image.GetSpacing()


def outputs(tool: str, case: Case, root: Path) -> tuple[Path | None, Path | None]:
    """The CT NIfTI and label map a tool's last run wrote, where it wrote them."""
    name = case.name.lower()
    if tool == "iterseg":
        images = sorted((root / "iterseg" / name / "out" / "cases").glob("*_0000.nii.gz"))
    else:
        images = sorted((root / "imgtools" / name / "out" / "nnUNet_raw").glob("*/imagesTr/*_0000.nii.gz"))
    if not images:
        return None, None
    label = images[0].parents[1] / ("cases" if tool == "iterseg" else "labelsTr")
    label = label / images[0].name.replace("_0000.nii.gz", ".nii.gz")
    return images[0], label if label.exists() else None


def check(case: Case, root: Path, tools: tuple[str, ...]) -> list[str]:
    """Each tool's CT against dcm2niix's in HU, its label map against the generated masks."""
    references = sorted((root / "dcm2niix" / case.name.lower()).glob("ct*.nii*"))
    ref, ref_spacing = read_lps(references[0]) if references else (None, None)
    lines = []
    for tool in tools:
        image, label = outputs(tool, case, root)
        if image is None or ref is None:
            lines.append(f"{case.name}: {tool} CT identical voxels to dcm2niix: n/a (no output to compare)")
            continue
        ours, spacing = read_lps(image)
        same_grid = ours.shape == ref.shape and np.allclose(spacing, ref_spacing, atol=1e-3)
        identical = same_grid and np.array_equal(ours.astype(np.float64), ref.astype(np.float64))
        detail = f"{tool} {ours.dtype} {ours.shape}, dcm2niix {ref.dtype} {ref.shape}"
        if not np.allclose(spacing, ref_spacing, atol=1e-3):
            detail += f", spacing {np.round(spacing, 4).tolist()} vs {np.round(ref_spacing, 4).tolist()}"
        elif same_grid and not identical:
            diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
            detail += f", {int((diff > 0).sum())} voxels differ, by up to {diff.max():g} HU"
        lines.append(
            f"{case.name}: {tool} CT identical voxels to dcm2niix: {'yes' if identical else 'no'} ({detail})"
        )
        del ours
        if label is None:
            continue
        labels, _ = read_lps(label)
        if labels.shape != case.truth.shape:
            lines.append(f"  label map {labels.shape} vs generated {case.truth.shape}: different grids")
        elif case.name == "SEG":
            same = np.array_equal(labels, case.truth)
            detail = "" if same else f" ({int((labels != case.truth).sum())} voxels differ)"
            lines.append(
                f"  {tool} label map equals the generated SEG masks: {'yes' if same else 'no'}{detail}"
            )
        else:  # the polygons are inscribed in the ellipses: only the rim may differ
            agree = float(np.mean(labels == case.truth))
            lines.append(
                f"  {tool} label map agrees with the analytic ellipses on {100 * agree:.3f}% of voxels"
            )
    return lines


# --- report -----------------------------------------------------------------------------------


def table(rows: list[Row], geo: Geometry) -> list[str]:
    ref = {r.case: r.median for r in rows if r.tool == "dcm2niix"}
    out = [
        "| tool | case | runs | median s | min-max s | cpu s | peak RSS MB | time / dcm2niix "
        "| RSS / int16 CT | load 1m before→after | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        runs, good = row.runs, row.good
        load = f"{runs[0].load_before:.2f}→{runs[-1].load_after:.2f}" if runs else ""
        if not good:
            error = runs[0].error if runs else "not run"
            out.append(
                f"| {row.tool} | {row.case} | {len(runs)} | - | - | - | - | - | - | {load} | {error} |"
            )
            continue
        walls = [r.wall for r in good]
        rss = max(r.rss_mb for r in good)
        median = statistics.median(walls)
        base = ref.get(row.case)
        ratio = f"{median / base:.2f}x" if base else "-"
        status = "ok" if len(good) == len(runs) else f"{len(runs) - len(good)} failed: {runs[-1].error}"
        status += f", {row.note}" if row.note else ""
        out.append(
            f"| {row.tool} | {row.case} | {len(good)} | {median:.2f} | {min(walls):.2f}-{max(walls):.2f} "
            f"| {statistics.median(r.cpu for r in good):.2f} | {rss:.0f} | {ratio} "
            f"| {rss * 2**20 / geo.int16_bytes:.2f}x | {load} | {status} |"
        )
    return out


def targets(rows: list[Row], geo: Geometry) -> list[str]:
    def get(tool: str, case: str) -> Row | None:
        return next((r for r in rows if r.tool == tool and r.case == case), None)

    lines = []
    seg, rt = get("iterseg convert", "SEG"), get("iterseg convert", "RTSTRUCT")
    if seg and rt and seg.median and rt.median:
        ratio = rt.median / seg.median
        verdict = "met" if ratio <= 2 else "MISSED"
        lines.append(f"iterseg RTSTRUCT / SEG median time: {ratio:.2f}x (target ≤ 2x: {verdict})")
    for case in ("SEG", "RTSTRUCT"):
        ours, ref = get("iterseg convert", case), get("dcm2niix", case)
        if ours and ref and ours.median and ref.median:
            ratio = ours.median / ref.median
            verdict = "stretch met" if ratio <= 3 else "met" if ratio <= 5 else "MISSED"
            lines.append(
                f"{case}: iterseg / dcm2niix time {ratio:.2f}x (target ≤ 5x, stretch ≤ 3x: {verdict})"
            )
        if ours and ours.good:
            multiple = max(r.rss_mb for r in ours.good) * 2**20 / geo.int16_bytes
            verdict = "met" if multiple <= 6 else "MISSED"
            lines.append(f"{case}: iterseg peak RSS {multiple:.2f}x the int16 CT (target ≤ 6x: {verdict})")
        elif ours:
            lines.append(f"{case}: iterseg convert failed: {ours.runs[0].error}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size", choices=sorted(SIZES), default="full", help="full 512x512x200, small 128x128x40"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool and case")
    parser.add_argument("--skip-imgtools", action="store_true", help="leave out med-imagetools (slow)")
    parser.add_argument("--peer-timeout", type=float, default=400, help="seconds per imgtools run")
    parser.add_argument(
        "--peer-once-above",
        type=float,
        default=90,
        help="seconds: an imgtools run slower than this is not repeated (keeps the run near 10 minutes)",
    )
    parser.add_argument("--workdir", type=Path, help="keep the data and outputs here (default: a temp dir)")
    args = parser.parse_args()
    if shutil.which("dcm2niix") is None:
        sys.exit("dcm2niix not found: run bash benchmarks/convert_setup.sh")
    geo = Geometry(*SIZES[args.size])
    load_start, began = os.getloadavg(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-convert-") as name:
        root = args.workdir.resolve() if args.workdir else Path(name)
        if args.workdir:
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
        start = time.perf_counter()
        cases = make_cases(root, geo)
        os.sync()  # the first timed run should not pay for writing back the data just generated
        sx, sy, sz = geo.spacing
        print(
            f"data: {geo.cols}x{geo.rows}x{geo.slices} uint16 CT (intercept -1024), "
            f"pixels {sx:.4f}x{sy:.4f} mm, "
            f"slices {sz:.3f} mm, int16 volume {geo.int16_bytes / 2**20:.0f} MiB; SEG: {len(SEG_SEGMENTS)} "
            f"segments, RTSTRUCT: {len(RT_ROIS)} ROIs (liver with a hole); written in "
            f"{time.perf_counter() - start:.1f} s to {root}",
            flush=True,
        )
        floor = measure(["true"], root, 10).rss_mb
        rows: list[Row] = []
        for case in cases:
            rows += bench_case(case, root, args)
        load_end = os.getloadavg()
        tools = ("iterseg",) if args.skip_imgtools else ("iterseg", "imgtools")
        checks = [line for case in cases for line in check(case, root, tools)]
    print()
    print(f"cores: {os.cpu_count()}, load average (1, 5, 15 min) before {load_start} after {load_end}")
    print(
        f"peak RSS: wait4 of each whole process (a process doing nothing reads {floor:.0f} MB); "
        f"multiples of the int16 CT, {geo.int16_bytes / 2**20:.0f} MiB"
    )
    print()
    print("\n".join(table(rows, geo)))
    print()
    if args.size != "full":
        print(f"(targets are for --size full; at --size {args.size} process start-up dominates)")
    print("\n".join(targets(rows, geo)))
    print("\n".join(checks))
    print(f"benchmark took {(time.perf_counter() - began) / 60:.1f} min")


if __name__ == "__main__":
    main()
