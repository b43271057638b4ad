"""Our DICOM-SEGs read by OHIF's own SEG readers (dcmjs + @cornerstonejs/adapters), headless in Node.

``tests/ohif/read_seg.mjs`` hands the SEG and its source series to the adapters' entry point
``adaptersSEG.Cornerstone3D.Segmentation.createFromDICOMSegBuffer`` and prints what it produced:
the labelmap images on the source slices, where it placed every frame, its warnings. Here that is
compared with highdicom's reading of the same file, voxel for voxel. ``bash tests/ohif/install.sh``
installs the pinned readers (``tests/ohif/package-lock.json``).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom

OHIF_DIR = Path(__file__).resolve().parent / "ohif"
READ_SEG = OHIF_DIR / "read_seg.mjs"
TIMEOUT_S = 300
# what the adapters log when they cannot put a frame on any slice of the stack
UNPLACED_FRAME = "can't import frame"


class OhifSetupError(RuntimeError):
    """Node or the pinned readers are missing: part of the test set-up (``tests/ohif/install.sh``)."""


class OhifRefusedError(RuntimeError):
    """The adapters refused the SEG (they threw); the message is theirs."""


def ohif_missing() -> str | None:
    """Why the OHIF readers cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not on PATH (Node >= 18 is part of the test set-up)"
    if not (OHIF_DIR / "node_modules" / "@cornerstonejs" / "adapters").is_dir():
        return f"the OHIF readers are not installed in {OHIF_DIR}: bash tests/ohif/install.sh"
    return None


@dataclass(frozen=True)
class OhifRead:
    """What the adapters made of one SEG."""

    seg: Path
    masks: dict[str, dict[int, np.ndarray]]  # source SOP UID -> segment number -> bool (rows, cols)
    placement: list[tuple[int, int | None, str | None]]  # (frame number, segment, source SOP UID or None)
    segments: dict[int, str | None]  # segment number -> label
    segments_on_frame: dict[str, list[int]]  # the reader's own account: segments it put on each slice
    overlapping: bool  # the reader's flag: segments overlap (several labelmap groups)
    warnings: list[str]
    versions: dict[str, str] = field(default_factory=dict)


def _decode(line: dict[str, Any]) -> OhifRead:
    masks: dict[str, dict[int, np.ndarray]] = {}
    for m in line["masks"]:
        bits = np.frombuffer(base64.b64decode(m["bits"]), np.uint8)
        masks.setdefault(m["sop_instance_uid"], {})[int(m["segment"])] = (
            bits.reshape(int(m["rows"]), int(m["cols"])) != 0
        )
    return OhifRead(
        seg=Path(line["seg"]),
        masks=masks,
        placement=[(int(p["frame"]), p["segment"], p["sop_instance_uid"]) for p in line["placement"]],
        segments={int(s["number"]): s["label"] for s in line["segments"]},
        segments_on_frame={k: [int(v) for v in vs] for k, vs in line["segments_on_frame"].items()},
        overlapping=bool(line["overlapping_segments"]),
        warnings=list(line["warnings"]),
        versions={"@cornerstonejs/adapters": line["adapters_version"], "dcmjs": line["dcmjs_version"]},
    )


def run_ohif(pairs: Sequence[tuple[Path, Path]]) -> list[OhifRead | OhifRefusedError]:
    """Read each (SEG, source folder) with the adapters, all in one Node process (it starts in ~1.5 s).

    A SEG the adapters refuse comes back as its :class:`OhifRefusedError`; a crash of the reader itself
    raises :class:`OhifSetupError`.
    """
    why = ohif_missing()
    if why:
        raise OhifSetupError(why)
    args = [str(p) for pair in pairs for p in pair]
    done = subprocess.run(
        ["node", str(READ_SEG), *args], capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    if done.returncode not in (0, 1) or len(lines) != len(pairs):
        raise OhifSetupError(f"read_seg.mjs failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return [
        OhifRefusedError(f"{line['seg']}: {line['error']}") if "error" in line else _decode(line)
        for line in lines
    ]


def read_ohif(seg_path: Path, source_dir: Path) -> OhifRead:
    """One SEG read with the adapters; raises :class:`OhifRefusedError` if they refuse it."""
    (result,) = run_ohif([(seg_path, source_dir)])
    if isinstance(result, OhifRefusedError):
        raise result
    return result


def read_with_ohif(seg_path: Path, source_dir: Path) -> dict[str, dict[int, np.ndarray]]:
    """Source SOP UID -> segment number -> bool mask as OHIF's readers produced it (non-empty only)."""
    return read_ohif(seg_path, source_dir).masks


@dataclass(frozen=True)
class HighdicomRead:
    """The same SEG read with highdicom: what a SEG means, per source slice and segment."""

    source_uids: list[str]  # the referenced series' slices found in the source folder, by position
    shape: tuple[int, int]
    segments: dict[int, str]  # segment number -> label
    masks: dict[str, dict[int, np.ndarray]]  # every slice, every segment (all-zero where no frame)
    frames: list[tuple[int, int | None, str]]  # (frame number, segment or None for LABELMAP, source SOP)


def source_headers(source_dir: Path, series_uid: str) -> list[pydicom.Dataset]:
    """The headers of ``series_uid``'s images among all files of ``source_dir``, by position."""
    found = []
    for path in sorted(p for p in source_dir.iterdir() if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError:
            continue
        if str(ds.get("SeriesInstanceUID", "")) == series_uid and "ImagePositionPatient" in ds:
            found.append(ds)
    iop = np.asarray(found[0].ImageOrientationPatient, float) if found else np.zeros(6)
    normal = np.cross(iop[:3], iop[3:])
    return sorted(found, key=lambda ds: float(np.dot(np.asarray(ds.ImagePositionPatient, float), normal)))


def read_highdicom(seg_path: Path, source_dir: Path) -> HighdicomRead:
    seg = hd.seg.segread(seg_path)
    series_uid = str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
    source = source_headers(source_dir, series_uid)
    assert source, f"{source_dir}: no image of the SEG's referenced series {series_uid}"
    uids = [str(ds.SOPInstanceUID) for ds in source]
    numbers = [int(s.SegmentNumber) for s in seg.SegmentSequence if int(s.SegmentNumber) > 0]
    labels = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    shape = (int(seg.Rows), int(seg.Columns))
    masks: dict[str, dict[int, np.ndarray]] = {uid: {} for uid in uids}
    referenced = {
        str(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        for f in seg.PerFrameFunctionalGroupsSequence
    }
    with_frames = [uid for uid in uids if uid in referenced]
    if with_frames:
        pixels = np.asarray(
            seg.get_pixels_by_source_instance(
                source_sop_instance_uids=with_frames,
                segment_numbers=numbers,
                combine_segments=False,
                assert_missing_frames_are_empty=True,
            )
        )  # (slices, rows, cols, segments)
        for k, uid in enumerate(with_frames):
            for j, number in enumerate(numbers):
                masks[uid][number] = pixels[k, :, :, j] != 0
    for uid in uids:
        for number in numbers:
            masks[uid].setdefault(number, np.zeros(shape, bool))
    labelmap = str(seg.SegmentationType) == "LABELMAP"
    frames = [
        (
            i + 1,
            None if labelmap else int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber),
            str(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID),
        )
        for i, f in enumerate(seg.PerFrameFunctionalGroupsSequence)
    ]
    return HighdicomRead(uids, shape, {n: labels[n] for n in numbers}, masks, frames)


def differences(ohif: OhifRead, truth: HighdicomRead) -> list[str]:
    """Every way the adapters' reading differs from highdicom's, one line each (empty: they agree)."""
    problems = []
    if ohif.segments != truth.segments:
        problems.append(f"segments: OHIF {ohif.segments}, highdicom {truth.segments}")
    placed = [(frame, uid) for frame, _, uid in ohif.placement]
    expected = [(frame, uid) for frame, _, uid in truth.frames]
    if placed != expected:
        wrong = [
            f"frame {e[0]}: OHIF {p[1]}, highdicom {e[1]}"
            for p, e in zip(placed, expected, strict=False)
            if p != e
        ]
        problems.append(
            f"frame placement ({len(placed)} frames placed, {len(expected)} in the SEG): "
            + "; ".join(wrong[:5])
        )
    segs = [s for _, s, _ in ohif.placement]
    if any(s is not None for _, s, _ in truth.frames) and segs != [s for _, s, _ in truth.frames]:
        problems.append(f"frame segments: OHIF {segs}, highdicom {[s for _, s, _ in truth.frames]}")
    unplaced = [w for w in ohif.warnings if UNPLACED_FRAME in w]
    if unplaced:
        problems.append(f"the reader dropped frames: {unplaced[:3]}")
    stray = set(ohif.masks) - set(truth.source_uids)
    if stray:
        problems.append(f"OHIF masks on slices not in the source series: {sorted(stray)}")
    for uid in truth.source_uids:
        for number, expected_mask in truth.masks[uid].items():
            got = ohif.masks.get(uid, {}).get(number, np.zeros(truth.shape, bool))
            if got.shape != expected_mask.shape:
                problems.append(
                    f"SOP {uid} segment {number}: OHIF {got.shape}, highdicom {expected_mask.shape}"
                )
                continue
            n = int((got != expected_mask).sum())
            if n:
                problems.append(
                    f"SOP {uid} segment {number}: {n} voxel(s) differ "
                    f"(OHIF {int(got.sum())} set, highdicom {int(expected_mask.sum())})"
                )
        extra = set(ohif.masks.get(uid, {})) - set(truth.masks[uid])
        if extra:
            problems.append(f"SOP {uid}: OHIF shows segment(s) {sorted(extra)} the SEG does not declare")
    return problems


def assert_matches_ohif(seg_path: Path, source_dir: Path, ohif: OhifRead | None = None) -> None:
    """OHIF's readers show ``seg_path`` on ``source_dir``'s slices exactly as highdicom reads it.

    Every source slice, every segment, voxel for voxel (slices without a frame are all-zero), and
    every frame placed on the slice highdicom places it on. ``ohif``: an earlier :func:`run_ohif`
    result of the same pair (to read many SEGs in one Node process).
    """
    result = read_ohif(seg_path, source_dir) if ohif is None else ohif
    problems = differences(result, read_highdicom(seg_path, source_dir))
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise AssertionError(
            f"OHIF's readers ({', '.join(f'{k} {v}' for k, v in result.versions.items())}) disagree with "
            f"highdicom on {seg_path} ({len(problems)} difference(s)):\n  {shown}{more}"
        )
