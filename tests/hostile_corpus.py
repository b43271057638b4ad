"""Hostile inputs and faults of a snapshot, and what ``iterseg convert`` / start-up must make of them.

One table (``ROWS``) is the spec: each row names a builder, the expected outcome and the message
fragments that must appear on one line together with the offending file. Builders start from
``real_dicom`` (pydicom's real CT_small/MR_small slices, highdicom SEGs, a planning-system
RTSTRUCT) and then break one thing, the way exports, copies and people break snapshots.

Per-case builders write one patient folder (or archive) into a snapshot folder and return a
:class:`Made`; the rows of one ``group`` share one snapshot, converted once per policy. Start-up
builders change a freshly laid-out project (:func:`startup_project`) instead.

Outcomes:

- ``converted``: in ``cases.json`` (skip policy), its NIfTI files written, never named on stderr;
- ``skipped``: a per-case fault, listed in ``skipped.json`` (skip) / on stderr (fail);
- ``refused``: an archive that is not unpacked, listed like a skipped case;
- ``excluded``: left out on purpose and listed in ``excluded.json`` (our unrefined prediction);
- ``startup_error`` / ``startup_ok``: ``snakemake -n`` (or the start-up code path in-process).
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import pydicom
import real_dicom as rd
from pydicom.dataset import Dataset

DATASET = "ds"
DATE = "2026-05-01"
SNAPSHOT = f"{DATE}__{DATASET}"
CANARY = "EVIL"  # hostile header values aim at paths ending in this name
SHELL_CANARY = "SHELLPWN"  # what a shell-injected folder name would create

# The corpus' ROI YAML: "Lesion" matches tumour and gtv on purpose (one row tests exactly that).
ROIS: dict[str, list[str]] = {
    "liver": ["^liver$"],
    "tumour": ["^tumou?r$", "^lesion$"],
    "ring": ["^ring$"],
    "lungs": ["^lungs?$"],
    "body": ["^body$", "^external$"],
    "gtv": ["^gtv.*", "^lesion$"],
}
N_SLICES = 6  # CT_small is 128x128: 6 slices keep every case well under a second


class Outcome(StrEnum):
    """What converting (or starting) must make of a row."""

    CONVERTED = "converted"
    SKIPPED = "skipped"
    REFUSED = "refused"
    EXCLUDED = "excluded"
    STARTUP_ERROR = "startup_error"
    STARTUP_OK = "startup_ok"


@dataclass(frozen=True)
class Made:
    """What a builder wrote: where it is, whose it is, and which files a message must name."""

    folder: str  # folder (or archive) name directly under the snapshot / the project's rawdata
    patient_id: str | None  # the PatientID written (None: none written)
    names: tuple[str, ...] = ()  # file or folder names at fault; a message names one of them


@dataclass(frozen=True)
class Row:
    """One hostile input: how to build it, what must come of it, the words its line must carry."""

    id: str
    build: Callable[[Path], Made]
    outcome: Outcome
    fragment: tuple[str, ...] = ()  # each on the line naming the file (ignoring case)
    forbid: tuple[str, ...] = ()  # none of these on that line (ignoring case)
    group: str = "faults"  # rows of one group share one snapshot / one run
    via: str = "inprocess"  # start-up rows: "snakemake" runs snakemake -n, else the code path in-process


# --- tree digests -----------------------------------------------------------------------------


def tree_state(root: Path, exclude: Iterable[Path] = ()) -> dict[str, str]:
    """Every file, link and folder under ``root`` (relative path -> kind, mode and content).

    Files by mode and sha256, links by their target (never followed: a loop is just a link),
    folders by mode; ``root`` itself is the entry ``"."``. Paths in ``exclude`` are left out
    with everything below them.
    """
    skip = {os.fspath(p) for p in exclude}
    state: dict[str, str] = {".": _entry(root)}
    for top, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if os.path.join(top, d) not in skip)
        for name in sorted(dirs + files):
            path = os.path.join(top, name)
            if path in skip:
                continue
            state[os.path.relpath(path, root)] = _entry(Path(path))
    return state


def _entry(path: Path) -> str:
    info = path.lstat()
    mode = f"{stat.S_IMODE(info.st_mode):04o}"
    if stat.S_ISLNK(info.st_mode):
        return f"link -> {os.readlink(path)}"
    if stat.S_ISDIR(info.st_mode):
        return f"dir {mode}"
    if stat.S_ISREG(info.st_mode):
        return f"file {mode} {hashlib.sha256(path.read_bytes()).hexdigest()}"
    return f"other {stat.S_IFMT(info.st_mode):o} {mode}"


def tree_changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Human-readable differences of two :func:`tree_state` results (empty: unchanged)."""
    lines = [f"new: {p}" for p in sorted(after.keys() - before.keys())]
    lines += [f"gone: {p}" for p in sorted(before.keys() - after.keys())]
    lines += [f"changed: {p}" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]]
    return lines


# --- shared pieces ----------------------------------------------------------------------------


def write_roi_yaml(path: Path, labels: dict[str, list[str]] = ROIS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return rd.write_roi_yaml(labels, path)


def seg_case(
    folder: Path,
    patient_id: str | None = None,
    *,
    n: int = N_SLICES,
    series_dir: str = "CT",
    seg_name: str = "seg.dcm",
    name: Callable[[Dataset], str] = rd.default_name,
    segments: dict[str, np.ndarray] | None = None,
    change: Callable[[list[Dataset]], None] | None = None,
    **seg_args: object,
) -> tuple[rd.Series, Path]:
    """A CT (CT_small slices) and its highdicom SEG; ``change`` edits the slices before writing."""
    planned = rd.planned_slices(patient_id or folder.name, n)
    if change is not None:
        change(planned)
    series = rd.write_series(planned, folder / series_dir, name=name)
    seg_path = folder / "SEG" / seg_name
    rd.highdicom_seg(series.datasets, segments or rd.organ_masks(series.shape), seg_path, **seg_args)
    return series, seg_path


def good(folder: Path, patient_id: str | None = None, **kwargs: object) -> Made:
    seg_case(folder, patient_id, **kwargs)  # type: ignore[arg-type]
    return Made(folder.name, patient_id or folder.name)


def _edit(path: Path, change: Callable[[Dataset], None]) -> None:
    ds = pydicom.dcmread(path, force=True)
    change(ds)
    ds.save_as(path)


def _gtv_rois(first: int = 1, last: int = N_SLICES - 2) -> list[rd.Roi]:
    return [
        rd.Roi(1, "GTV_1", "GTV", [(k, rd.rectangle(40.5, 70.5, 50.5, 80.5)) for k in range(first, last + 1)])
    ]


def rt_case(folder: Path, rois: list[rd.Roi], *, n: int = N_SLICES) -> tuple[rd.Series, Path]:
    series = rd.write_series(rd.planned_slices(folder.name, n), folder / "CT")
    return series, rd.write_rtstruct(series, rois, folder / "RTSTRUCT" / "RS.dcm")


# --- per-case faults: the case is skipped, the rest converts ---------------------------------


def truncated_slice(snapshot: Path) -> Made:
    """A slice whose pixel data was cut short (a copy that stopped)."""
    folder = snapshot / "truncated-slice"
    series, _ = seg_case(folder)
    cut = series.files[2]
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) - 128 * 128])  # half of the 16-bit pixels gone
    return Made(folder.name, folder.name, (cut.name,))


def _replace_slice(snapshot: Path, row: str, content: bytes) -> Made:
    folder = snapshot / row
    series, _ = seg_case(folder)
    bad = series.files[2]
    bad.write_bytes(content)
    return Made(folder.name, folder.name, (bad.name,))


def zero_byte_slice(snapshot: Path) -> Made:
    """A slice file of zero bytes among the series' slices (disk full during the export)."""
    return _replace_slice(snapshot, "zero-byte-slice", b"")


def garbage_slice(snapshot: Path) -> Made:
    """A slice-named file holding random bytes."""
    return _replace_slice(snapshot, "garbage-slice", np.random.default_rng(7).bytes(9000))


def dicm_corrupt_slice(snapshot: Path) -> Made:
    """A slice with the 128-byte preamble and 'DICM', then garbage."""
    body = np.random.default_rng(8).bytes(5000)
    return _replace_slice(snapshot, "dicm-corrupt-slice", b"\0" * 128 + b"DICM" + body)


def missing_slice(snapshot: Path) -> Made:
    """The middle slice is missing: the series has a 10 mm gap among 5 mm slices."""
    folder = snapshot / "missing-slice"
    planned = rd.planned_slices(folder.name, N_SLICES + 1)
    series = rd.write_series(planned, folder / "CT_gap", drop=(3,))
    masks = rd.organ_masks((N_SLICES + 1, 128, 128))
    segments = {name: mask[series.present] for name, mask in masks.items()}
    rd.highdicom_seg(series.datasets, segments, folder / "SEG" / "seg.dcm")
    return Made(folder.name, folder.name, ("CT_gap",))


def two_slices_one_position(snapshot: Path) -> Made:
    """A re-reconstructed slice (another SOP instance) at the position of slice 2."""
    folder = snapshot / "two-slices-one-position"
    series, _ = seg_case(folder)
    twin = copy.deepcopy(series.planned[2])
    twin.SOPInstanceUID = twin.file_meta.MediaStorageSOPInstanceUID = rd.uid(folder.name, "twin")
    twin.InstanceNumber = 99
    path = series.folder / "IM-0001-0099.dcm"
    twin.save_as(path, enforce_file_format=True)
    return Made(folder.name, folder.name, (series.files[2].name, path.name))


def mixed_pixel_spacing(snapshot: Path) -> Made:
    """One slice of the series has another PixelSpacing."""
    folder = snapshot / "mixed-pixel-spacing"
    series, _ = seg_case(folder)
    odd = series.files[3]
    _edit(odd, lambda ds: setattr(ds, "PixelSpacing", [0.751953, 0.751953]))
    return Made(folder.name, folder.name, (odd.name, "CT"))


def gantry_tilt(snapshot: Path) -> Made:
    """Slices shifted 1.5 mm along the rows per slice: a tilted gantry's series."""
    folder = snapshot / "gantry-tilt"

    def tilt(planned: list[Dataset]) -> None:
        for k, ds in enumerate(planned):
            ds.ImagePositionPatient = [
                round(float(ds.ImagePositionPatient[0]) + 1.5 * k, 6),
                *ds.ImagePositionPatient[1:],
            ]

    seg_case(folder, change=tilt)
    return Made(folder.name, folder.name, ("CT",))


def seg_of_absent_series(snapshot: Path) -> Made:
    """A SEG alone: the CT it references was never put into the snapshot."""
    folder = snapshot / "seg-of-absent-series"
    planned = rd.planned_slices(folder.name, N_SLICES)
    rd.highdicom_seg(planned, rd.organ_masks((N_SLICES, 128, 128)), folder / "SEG" / "lonely.dcm")
    return Made(folder.name, folder.name, ("lonely.dcm",))


ABSENT_SERIES_UID = rd.uid("seg-of-absent-series", "img", "series")


def seg_of_another_patient(snapshot: Path) -> Made:
    """A SEG of patient SEGPAT-01 drawn on the CT of patient OTHER-PT (PatientIDs differ)."""
    folder = snapshot / "seg-of-another-patient"
    _, seg_path = seg_case(folder, "OTHER-PT")
    _edit(seg_path, lambda ds: setattr(ds, "PatientID", "SEGPAT-01"))
    return Made(folder.name, "SEGPAT-01", (seg_path.name,))


def rtstruct_missing_instances(snapshot: Path) -> Made:
    """An RTSTRUCT drawn on 12 slices of which the export holds 9."""
    built = rd.rtstruct_on_missing_slices(snapshot / "rtstruct-missing-instances")
    return Made(built.patient_id, built.patient_id, (built.annotation.name,))


def rtstruct_open_planar(snapshot: Path) -> Made:
    """The GTV of an RTSTRUCT stored as OPEN_PLANAR contours: lines, no area."""
    folder = snapshot / "rtstruct-open-planar"
    _, rt_path = rt_case(folder, _gtv_rois())

    def open_contours(ds: Dataset) -> None:
        for roi in ds.ROIContourSequence:
            for contour in roi.ContourSequence:
                contour.ContourGeometricType = "OPEN_PLANAR"

    _edit(rt_path, open_contours)
    return Made(folder.name, folder.name, (rt_path.name,))


def rtstruct_off_plane(snapshot: Path) -> Made:
    """GTV contours half a slice (2.5 mm) off the image planes: drawn on another grid."""
    folder = snapshot / "rtstruct-off-plane"
    series, rt_path = rt_case(folder, _gtv_rois())
    shift = 0.5 * float(series.planned[0].SliceThickness) * rd.normal_of(series.planned[0])

    def move(ds: Dataset) -> None:
        for roi in ds.ROIContourSequence:
            for contour in roi.ContourSequence:
                points = np.asarray(contour.ContourData, float).reshape(-1, 3) + shift
                contour.ContourData = [f"{v:.4f}" for v in points.ravel()]

    _edit(rt_path, move)
    return Made(folder.name, folder.name, (rt_path.name,))


def seg_other_pixel_spacing(snapshot: Path) -> Made:
    """A SEG whose frames declare another pixel spacing than its CT."""
    folder = snapshot / "seg-other-pixel-spacing"
    _, seg_path = seg_case(folder)

    def respace(ds: Dataset) -> None:
        ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing = [0.751953, 0.751953]

    _edit(seg_path, respace)
    return Made(folder.name, folder.name, (seg_path.name,))


def roi_names_match_no_label(snapshot: Path) -> Made:
    """A SEG of kidneys: none of its segment names matches a label of the ROI YAML."""
    folder = snapshot / "roi-names-match-no-label"
    masks = rd.organ_masks((N_SLICES, 128, 128))
    _, seg_path = seg_case(folder, segments={"Kidney_L": masks["Liver"], "Spleen": masks["Tumor"]})
    return Made(folder.name, folder.name, (seg_path.name,))


def roi_name_matches_two_labels(snapshot: Path) -> Made:
    """A segment 'Lesion' that the ROI YAML's tumour and gtv labels both match."""
    folder = snapshot / "roi-name-matches-two-labels"
    masks = rd.organ_masks((N_SLICES, 128, 128))
    _, seg_path = seg_case(folder, segments={"Liver": masks["Liver"], "Lesion": masks["Tumor"]})
    return Made(folder.name, folder.name, (seg_path.name,))


def mr_under_ct_config(snapshot: Path) -> Made:
    """An MR series (Toshiba MR_small) with its SEG, in a dataset configured as CT."""
    folder = snapshot / "modality-mismatch"
    planned = rd.planned_slices(folder.name, N_SLICES, base="MR_small.dcm", tag="series-a")
    series = rd.write_series(planned, folder / "series-a")
    rd.highdicom_seg(series.datasets, rd.organ_masks(series.shape), folder / "SEG" / "seg.dcm")
    return Made(folder.name, folder.name, ("seg.dcm", "series-a"))


def missing_patient_id(snapshot: Path) -> Made:
    """CT and SEG without PatientID (an anonymiser that deletes it)."""
    folder = snapshot / "missing-patient-id"
    series, seg_path = seg_case(folder)
    for path in (*series.files, seg_path):
        _edit(path, lambda ds: delattr(ds, "PatientID"))
    return Made(folder.name, None, ("seg.dcm", "CT", *(f.name for f in series.files)))


def two_series_one_uid(snapshot: Path) -> Made:
    """Two acquisitions (other study, frame of reference, positions) sharing one SeriesInstanceUID."""
    folder = snapshot / "two-series-one-uid"
    series, _ = seg_case(folder, series_dir="series-a")
    other = rd.planned_slices(folder.name, N_SLICES, tag="b")
    normal = rd.normal_of(other[0])
    for ds in other:
        ds.SeriesInstanceUID = series.planned[0].SeriesInstanceUID
        ds.StudyInstanceUID = rd.uid(folder.name, "study-b")
        ds.FrameOfReferenceUID = rd.uid(folder.name, "frame-b")
        ds.SeriesNumber = 7
        ds.SeriesDescription = "second acquisition"
        position = np.asarray(ds.ImagePositionPatient, float) + 2.5 * normal  # interleaved
        ds.ImagePositionPatient = [round(float(v), 6) for v in position]
    rd.write_series(other, folder / "series-b")
    return Made(folder.name, folder.name, ("series-a", "series-b"))


def two_annotations_one_series(snapshot: Path) -> Made:
    """Two SEGs of one CT in one snapshot, no rule configured."""
    folder = snapshot / "two-annotations-one-series"
    series, _ = seg_case(folder)
    rd.highdicom_seg(
        series.datasets, rd.organ_masks(series.shape), folder / "SEG" / "second.dcm", tag="second"
    )
    return Made(folder.name, folder.name, ("seg.dcm", "second.dcm"))


# --- hostile but valid: must convert, nothing written outside the project ---------------------


def _canary_root(snapshot: Path) -> Path:
    """The folder holding the test's project (``<root>/project/data/rawdata/ds/<snapshot>``)."""
    return snapshot.parents[4]


def _plain_names(planned: list[Dataset]) -> None:
    for ds in planned:
        ds.PatientName = (
            "Hostile^Header"  # the PatientID is the attack; a PN with '\\' is refused by highdicom
        )


def _hostile_pid(row: str, patient_id: Callable[[Path], str]) -> Callable[[Path], Made]:
    def build(snapshot: Path) -> Made:
        return good(snapshot / row, patient_id(snapshot), change=_plain_names)

    build.__name__ = row.replace("-", "_")
    return build


pid_slash = _hostile_pid("pid-slash", lambda _: "P/007")
pid_dotdot = _hostile_pid("pid-dotdot", lambda _: f"../../../outside/{CANARY}")
pid_absolute = _hostile_pid("pid-absolute", lambda s: f"{_canary_root(s)}/canary/{CANARY}")
pid_backslash = _hostile_pid("pid-backslash", lambda _: f"..\\..\\..\\outside\\{CANARY}")
pid_nul = _hostile_pid("pid-nul", lambda _: f"P\0../{CANARY}")


def pid_unicode(snapshot: Path) -> Made:
    """PatientID in Greek and CJK (Specific Character Set ISO_IR 192)."""
    patient = "Zoë-Ωμέγα/患者"

    def utf8(planned: list[Dataset]) -> None:
        for ds in planned:
            ds.SpecificCharacterSet = "ISO_IR 192"
            ds.PatientName = "Zoë^Ωμέγα"

    return good(snapshot / "pid-unicode", patient, change=utf8)


def unicode_names(snapshot: Path) -> Made:
    """Unicode folder and file names (a viewer export named after the patient)."""
    folder = snapshot / "Ünïcødé-患者"
    seg_case(
        folder,
        "UNICODE-01",
        series_dir="Série CT ✓",
        seg_name="Segmentación ✓.dcm",
        name=lambda ds: f"Schnitt-ä-{int(ds.InstanceNumber):03d}.dcm",
    )
    return Made(folder.name, "UNICODE-01")


def no_extension_no_preamble(snapshot: Path) -> Made:
    """Every file named like a scanner export (no extension) and written without preamble."""
    folder = snapshot / "no-extension-no-preamble"
    series, seg_path = seg_case(folder, name=lambda ds: f"I{int(ds.InstanceNumber) * 10}", seg_name="label")
    for path in (*series.files, seg_path):
        rd.strip_preamble(path)
    return Made(folder.name, folder.name)


def dicomdir_export(snapshot: Path) -> Made:
    """A DICOMDIR export (pydicom FileSet layout, files without extension, one without preamble)."""
    built = rd.philips_dicomdir_export(snapshot / "dicomdir-export", n_slices=N_SLICES)
    return Made(built.patient_id, built.patient_id)


def junk_files(snapshot: Path) -> Made:
    """notes.txt, .DS_Store, Thumbs.db and desktop.ini next to the slices and at the snapshot root."""
    folder = snapshot / "junk-files"
    series, _ = seg_case(folder)
    thumbs = bytes.fromhex("d0cf11e0a1b11ae1") + b"\0" * 504  # an OLE compound file header
    for where in (series.folder, folder, snapshot):
        (where / ".DS_Store").write_bytes(b"\0\0\0\x01Bud1" + b"\0" * 64)
        (where / "Thumbs.db").write_bytes(thumbs)
    (series.folder / "desktop.ini").write_text("[.ShellClassInfo]\nIconResource=C:\\x.ico\n")
    (folder / "notes.txt").write_text("liver redrawn by AB, tumour unsure on slice 3\n")
    (snapshot / "README.txt").write_text("export of 2026-05-01\n")
    return Made(folder.name, folder.name)


def appledouble_files(snapshot: Path) -> Made:
    """macOS '._' AppleDouble companions of every slice, named like the slices."""
    folder = snapshot / "appledouble-files"
    series, _ = seg_case(folder)
    header = bytes.fromhex("00051607") + bytes.fromhex("00020000") + b"Mac OS X        " + b"\0" * 60
    for path in series.files:
        (path.parent / f"._{path.name}").write_bytes(header)
    return Made(folder.name, folder.name)


def symlink_loop(snapshot: Path) -> Made:
    """A folder link to its own parent, a link to itself and a dangling link inside a case."""
    folder = snapshot / "symlink-loop"
    seg_case(folder)
    (folder / "loop").symlink_to(".", target_is_directory=True)
    (folder / "CT" / "up").symlink_to("..", target_is_directory=True)
    (folder / "self.dcm").symlink_to("self.dcm")
    (folder / "gone.dcm").symlink_to("nowhere/gone.dcm")
    return Made(folder.name, folder.name)


def shell_metacharacters(snapshot: Path) -> Made:
    """Folder and file names that a shell would run: $(...), backticks, ';', quotes."""
    folder = snapshot / f"pt $(touch {SHELL_CANARY}) `touch {SHELL_CANARY}`; 'q\" &"
    seg_case(folder, "SHELL-01", series_dir="CT;$(id)", seg_name=f"seg`touch {SHELL_CANARY}`.dcm")
    return Made(folder.name, "SHELL-01")


def newline_in_names(snapshot: Path) -> Made:
    """A folder and a SEG file name holding a newline."""
    folder = snapshot / "line\nbreak"
    seg_case(folder, "NEWLINE-01", seg_name="seg\nfile.dcm")
    return Made(folder.name, "NEWLINE-01")


def labelmap_seg(snapshot: Path) -> Made:
    built = rd.labelmap_seg(snapshot / "labelmap-seg")
    return Made(built.patient_id, built.patient_id)


def empty_segment(snapshot: Path) -> Made:
    built = rd.seg_empty_first_segment(snapshot / "empty-segment")
    return Made(built.patient_id, built.patient_id)


def rtstruct_holes(snapshot: Path) -> Made:
    built = rd.rtstruct_holes(snapshot / "rtstruct-holes")
    return Made(built.patient_id, built.patient_id)


def empty_charset(snapshot: Path) -> Made:
    built = rd.empty_charset_ct(snapshot / "empty-charset")
    return Made(built.patient_id, built.patient_id)


def unrefined_prediction(snapshot: Path) -> Made:
    """Our own exported SEG, dropped back into the snapshot without editing."""
    from iterseg.dicom.seg_writer import export_seg

    folder = snapshot / "unrefined-prediction"
    series = rd.write_series(rd.planned_slices(folder.name, N_SLICES), folder / "CT")
    masks = rd.organ_masks(series.shape)
    label = np.zeros(series.shape, np.uint8)
    label[masks["Liver"]] = 1
    label[masks["Tumor"]] = 2
    path = folder / "SEG_predicted" / "iterseg.dcm"
    export_seg(label, series.datasets, {"background": 0, "liver": 1, "tumour": 2}, path, "iterseg", "ds")
    return Made(folder.name, folder.name, (path.name,))


# --- archives: one snapshot; bad archives refused (named), the other cases convert -------------


def _case_tree(row: str) -> tuple[tempfile.TemporaryDirectory[str], Path]:
    tmp = tempfile.TemporaryDirectory()
    seg_case(Path(tmp.name) / row)
    return tmp, Path(tmp.name) / row


def _tar(snapshot: Path, name: str, row: str, extra: Callable[[tarfile.TarFile], None] | None = None) -> Path:
    """``name`` in ``snapshot``: a good case under ``row/``, then whatever ``extra`` adds."""
    tmp, case = _case_tree(row)
    with tmp:
        archive = snapshot / name
        archive.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive, "w:gz" if name.endswith(".gz") else "w") as tar:
            tar.add(case, arcname=row)
            if extra is not None:
                extra(tar)
    return archive


def _member(tar: tarfile.TarFile, name: str, payload: bytes = b"", **fields: object) -> None:
    info = tarfile.TarInfo(name)
    for key, value in fields.items():
        setattr(info, key, value)
    if info.isfile():
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    else:
        tar.addfile(info)


def archive_good(snapshot: Path) -> Made:
    archive = _tar(snapshot, "archive-good.tar.gz", "archive-good")
    return Made(archive.name, "archive-good")


def archive_plain_good(snapshot: Path) -> Made:
    return good(snapshot / "plain-good")


def archive_truncated(snapshot: Path) -> Made:
    """A .tar.gz holding a case, cut off at 60 % (an interrupted upload)."""
    archive = _tar(snapshot, "archive-truncated.tar.gz", "archive-truncated")
    data = archive.read_bytes()
    archive.write_bytes(data[: int(len(data) * 0.6)])
    return Made(archive.name, "archive-truncated", (archive.name,))


def tar_symlink_member(snapshot: Path) -> Made:
    """A case plus a symlink member pointing at one of its own slices."""

    def link(tar: tarfile.TarFile) -> None:
        _member(tar, "tar-symlink/CT/latest.dcm", type=tarfile.SYMTYPE, linkname="IM-0001-0001.dcm")

    archive = _tar(snapshot, "tar-symlink.tar", "tar-symlink", link)
    return Made(archive.name, "tar-symlink", (archive.name,))


def tar_hardlink_member(snapshot: Path) -> Made:
    """A case plus a hard-link member to one of its own slices."""

    def link(tar: tarfile.TarFile) -> None:
        _member(
            tar, "tar-hardlink/copy.dcm", type=tarfile.LNKTYPE, linkname="tar-hardlink/CT/IM-0001-0001.dcm"
        )

    archive = _tar(snapshot, "tar-hardlink.tar", "tar-hardlink", link)
    return Made(archive.name, "tar-hardlink", (archive.name,))


DOTDOT_MEMBER = "../tar-dotdot-escaped.dcm"


def tar_dotdot_member(snapshot: Path) -> Made:
    """A case plus a member climbing out of the unpack folder."""
    archive = _tar(
        snapshot, "tar-dotdot.tar", "tar-dotdot", lambda tar: _member(tar, DOTDOT_MEMBER, b"x" * 64)
    )
    return Made(archive.name, "tar-dotdot", (archive.name,))


def tar_absolute_member(snapshot: Path) -> Made:
    """A case plus a member with an absolute path aimed at the canary folder."""
    target = f"{_canary_root(snapshot)}/canary/{CANARY}-tar"
    archive = _tar(snapshot, "tar-absolute.tar", "tar-absolute", lambda tar: _member(tar, target, b"x" * 64))
    return Made(archive.name, "tar-absolute", (archive.name,))


# --- start-up: a project laid out as a user has it, then one thing wrong ----------------------

STARTUP_CONFIG = "config/hostile.yaml"


def startup_project(project: Path) -> Path:
    """A project with a valid config, ROI YAML and one (tiny) snapshot plus the inbox."""
    config = project / STARTUP_CONFIG
    config.parent.mkdir(parents=True, exist_ok=True)
    write_roi_yaml(project / "config" / f"roi_{DATASET}.yaml")
    config.write_text(
        "datasets:\n"
        f"  {DATASET}:\n"
        "    dataset_id: 501\n"
        f"    roi_yaml: config/roi_{DATASET}.yaml\n"
        "    modality: CT\n"
        "nnunet:\n"
        "  device: cpu\n"
        "  folds: [0]\n"
    )
    root = project / "data" / "rawdata" / DATASET
    (root / SNAPSHOT / "P001").mkdir(parents=True)
    (root / SNAPSHOT / "P001" / "notes.txt").write_text("placeholder: start-up reads no DICOM\n")
    (root / "inbox").mkdir()
    return project


def _snapshot_folder(name: str) -> Callable[[Path], Made]:
    def build(project: Path) -> Made:
        (project / "data" / "rawdata" / DATASET / name).mkdir()
        return Made(name, None, (name.rstrip(),))

    return build


def unknown_config_key(project: Path) -> Made:
    """``on_bad_cases`` (a typo of on_bad_case) at the top of the config."""
    with (project / STARTUP_CONFIG).open("a") as config:
        config.write("on_bad_cases: fail\n")
    return Made("", None, ("on_bad_cases",))


def bad_regex_roi(project: Path) -> Made:
    (project / "config" / f"roi_{DATASET}.yaml").write_text('liver:\n  - "^liver($"\n')
    return Made("", None, (f"roi_{DATASET}.yaml",))


def missing_roi_yaml(project: Path) -> Made:
    (project / "config" / f"roi_{DATASET}.yaml").unlink()
    return Made("", None, (f"roi_{DATASET}.yaml",))


def read_only_rawdata(project: Path) -> Made:
    rawdata = project / "data" / "rawdata"
    for top, dirs, files in os.walk(rawdata):
        for name in (*dirs, *files):
            os.chmod(os.path.join(top, name), 0o555 if name in dirs else 0o444)
    rawdata.chmod(0o555)
    return Made("", None)


# --- the table --------------------------------------------------------------------------------

S, C, R = Outcome.SKIPPED, Outcome.CONVERTED, Outcome.REFUSED
CORRUPT = "truncated or corrupt DICOM"

ROWS: list[Row] = [
    # per-case faults (one snapshot, converted with skip and with fail)
    Row("truncated-slice", truncated_slice, S, ("truncated",)),
    Row("zero-byte-slice", zero_byte_slice, S, (CORRUPT,)),
    Row("garbage-slice", garbage_slice, S, (CORRUPT,)),
    Row("dicm-corrupt-slice", dicm_corrupt_slice, S, (CORRUPT,)),
    Row("missing-slice", missing_slice, S, ("uneven",)),
    Row("two-slices-one-position", two_slices_one_position, S, ("one position",)),
    Row("mixed-pixel-spacing", mixed_pixel_spacing, S, ("pixel size",)),
    Row("gantry-tilt", gantry_tilt, S, ("tilt",)),
    Row("seg-of-absent-series", seg_of_absent_series, S, (ABSENT_SERIES_UID,)),
    Row(
        "seg-of-another-patient",
        seg_of_another_patient,
        S,
        ("SEGPAT-01", "OTHER-PT"),
        ("newest_series_date",),
    ),
    Row("rtstruct-missing-instances", rtstruct_missing_instances, S, ("not in image series",)),
    Row("rtstruct-open-planar", rtstruct_open_planar, S, ("OPEN_PLANAR", "GTV_1")),
    Row("rtstruct-off-plane", rtstruct_off_plane, S, ("between or beyond",)),
    Row("seg-other-pixel-spacing", seg_other_pixel_spacing, S, ("pixel spacing",)),
    Row("roi-names-match-no-label", roi_names_match_no_label, S, ("Kidney_L",)),
    Row("roi-name-matches-two-labels", roi_name_matches_two_labels, S, ("Lesion", "tumour", "gtv")),
    Row("mr-series-under-ct-config", mr_under_ct_config, S, ("MR",), ("add that series", "not in snapshot")),
    Row("missing-patient-id", missing_patient_id, S, ("PatientID",)),
    Row("two-series-one-uid", two_series_one_uid, S, ("SeriesInstanceUID",)),
    Row(
        "two-annotations-one-series",
        two_annotations_one_series,
        S,
        ("2 annotations", "duplicate_annotations"),
    ),
    # hostile but valid (same snapshot): converted, nothing written outside the project
    Row("pid-slash", pid_slash, C),
    Row("pid-dotdot", pid_dotdot, C),
    Row("pid-absolute", pid_absolute, C),
    Row("pid-backslash", pid_backslash, C),
    Row("pid-nul", pid_nul, C),
    Row("pid-unicode", pid_unicode, C),
    Row("unicode-names", unicode_names, C),
    Row("no-extension-no-preamble", no_extension_no_preamble, C),
    Row("dicomdir-export", dicomdir_export, C),
    Row("junk-files", junk_files, C),
    Row("appledouble-files", appledouble_files, C),
    Row("symlink-loop", symlink_loop, C),
    Row("shell-metacharacters", shell_metacharacters, C),
    Row("newline-in-names", newline_in_names, C),
    Row("labelmap-seg", labelmap_seg, C),
    Row("empty-segment", empty_segment, C),
    Row("rtstruct-holes", rtstruct_holes, C),
    Row("empty-charset", empty_charset, C),
    Row("unrefined-prediction", unrefined_prediction, Outcome.EXCLUDED, ("unrefined",)),
    # archives (one snapshot)
    Row("archive-good", archive_good, C, group="archives"),
    Row("archive-plain-good", archive_plain_good, C, group="archives"),
    Row("archive-truncated", archive_truncated, R, ("truncated",), group="archives"),
    Row("tar-symlink-member", tar_symlink_member, R, ("link",), group="archives"),
    Row("tar-hardlink-member", tar_hardlink_member, R, ("link",), group="archives"),
    Row("tar-dotdot-member", tar_dotdot_member, R, (DOTDOT_MEMBER,), group="archives"),
    Row("tar-absolute-member", tar_absolute_member, R, ("absolute",), group="archives"),
    # start-up
    Row(
        "misnamed-snapshot",
        _snapshot_folder("snapshot-may-2026"),
        Outcome.STARTUP_ERROR,
        ("YYYY-MM-DD",),
        group="startup",
    ),
    Row(
        "trailing-space-in-name",
        _snapshot_folder(f"2026-06-01__{DATASET} "),
        Outcome.STARTUP_ERROR,
        ("space", f"'2026-06-01__{DATASET}'"),  # the cause, and the name without it as the fix
        group="startup",
        via="snakemake",
    ),
    Row(
        "impossible-date",
        _snapshot_folder(f"2026-02-30__{DATASET}"),
        Outcome.STARTUP_ERROR,
        ("not a valid date",),
        group="startup",
    ),
    Row(
        "other-dataset",
        _snapshot_folder("2026-06-01__liver"),
        Outcome.STARTUP_ERROR,
        ("belongs to dataset",),
        group="startup",
    ),
    Row("unknown-config-key", unknown_config_key, Outcome.STARTUP_ERROR, ("not allowed",), group="startup"),
    Row(
        "roi-yaml-bad-regex",
        bad_regex_roi,
        Outcome.STARTUP_ERROR,
        ("does not compile",),
        group="startup",
        via="snakemake",
    ),
    Row(
        "roi-yaml-missing",
        missing_roi_yaml,
        Outcome.STARTUP_ERROR,
        ("not found",),
        group="startup",
        via="snakemake",
    ),
    Row("read-only-rawdata", read_only_rawdata, Outcome.STARTUP_OK, group="startup", via="snakemake"),
]


def rows(group: str) -> list[Row]:
    return [row for row in ROWS if row.group == group]


def build_group(snapshot: Path, group: str) -> dict[str, Made]:
    """Write every row of ``group`` into ``snapshot``; row id -> what was written."""
    snapshot.mkdir(parents=True, exist_ok=True)
    return {row.id: row.build(snapshot) for row in rows(group)}
