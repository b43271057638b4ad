"""Our DICOM-SEGs read by OHIF's own SEG readers (dcmjs + @cornerstonejs/adapters) in Node.

Every SEG here is written by ``seg_writer.export_seg`` on a synthetic CT series and handed, with
the series' folder, to ``adaptersSEG.Cornerstone3D.Segmentation.createFromDICOMSegBuffer`` (see
``tests/ohif_readers.py``); what the adapters put on each slice must be what highdicom reads,
voxel for voxel, frame for frame. All SEGs are read in one Node process.

One known misreading of the pinned adapters is asserted as such, so that this file fails the day
the adapters change: BINARY SEGs whose Rows x Columns is not a multiple of 16 (:data:`KNOWN_ISSUE`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from geometry_corpus import SeriesSpec, write_series
from iterseg.dicom.seg_options import SegOptions, SegTransferSyntax
from iterseg.dicom.seg_writer import SegType, export_seg
from iterseg.dicom.series import sort_by_position
from ohif_readers import (
    OhifRead,
    OhifRefusedError,
    assert_matches_ohif,
    differences,
    ohif_missing,
    read_highdicom,
    run_ohif,
)
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

pytestmark = pytest.mark.integration

ADAPTERS_VERSION = "5.14.0"  # tests/ohif/package-lock.json; the behaviour below is this version's
KNOWN_ISSUE = (
    "@cornerstonejs/adapters 5.14.0, dist/esm/adapters/Cornerstone3D/encodePixelData.js "
    "getBitmapFramesFromDataset (the decoder of createFromDICOMSegBuffer) guesses the packing of a "
    "1-bit PixelData from its length: exactly Rows*Columns*NumberOfFrames bytes -> one byte per pixel; "
    "exactly ceil(Rows*Columns/8)*NumberOfFrames bytes -> every frame starts on a byte boundary; "
    "exactly ceil(Rows*Columns*NumberOfFrames/8) bytes -> packed across frames (the standard); "
    "anything else -> refused. When Rows*Columns is not a multiple of 16, the standard packing "
    "padded to an even length can match the second guess (frames misread) or none (SEG refused), "
    "depending on the frame count (adapters 4.19.0 read all of these right)"
)
LABELS = {"background": 0, "liver": 1, "tumour": 2, "vessel": 3}
TWO = {"background": 0, "liver": 1, "tumour": 2}
Reads = dict[str, tuple[Path, Path, OhifRead | OhifRefusedError]]  # case -> SEG, source folder, reading


@dataclass(frozen=True)
class Case:
    """A SEG to write: grid, slices, label map maker, type; ``frames``: how many it must hold."""

    rows: int
    cols: int
    slices: int
    make: Callable[[tuple[int, int, int]], np.ndarray]
    labels: dict[str, int]
    seg_type: SegType = SegType.BINARY
    frames: int | None = None
    spec: dict[str, Any] | None = None  # more SeriesSpec fields
    rename: bool = False  # source files named by bare hashes, a stray text file next to them
    explicit: bool = False  # written uncompressed (Explicit VR Little Endian) instead of deflated
    keep_empty_frames: bool = False  # SegOptions(omit_empty_frames=False): a frame for every slice


def blobs(shape: tuple[int, int, int]) -> np.ndarray:
    """Three asymmetric labels (any flip, shift or transposition shows), none on every slice."""
    z, y, x = shape
    m = np.zeros(shape, np.uint8)
    m[: max(1, z - 1), 1 : y - 2, 1 : x // 2 + 2] = 1
    m[z // 2 :, y // 2 : y - 3, x // 2 : x - 2] = 2
    m[0, 0, x - 1] = 3
    return m


def tumour_empty(shape: tuple[int, int, int]) -> np.ndarray:
    m = blobs(shape)
    m[m == 2] = 0
    return m


def gaps(shape: tuple[int, int, int]) -> np.ndarray:
    """Labels on slices 2, 3 and 6 only: the SEG's frames skip the empty slices between."""
    _, y, x = shape
    m = np.zeros(shape, np.uint8)
    m[2:4, 2 : y - 4, 3 : x - 2] = 1
    m[6, y // 2 :, : x // 3] = 2
    m[3, 0, 0] = 2
    return m


def on_slices(
    n_liver: tuple[int, int], n_tumour: tuple[int, int]
) -> Callable[[tuple[int, int, int]], np.ndarray]:
    """Liver on slices [a, b), tumour on [c, d): one frame per slice and label (frame count exact)."""

    def make(shape: tuple[int, int, int]) -> np.ndarray:
        _, y, x = shape
        m = np.zeros(shape, np.uint8)
        yy, xx = np.mgrid[:y, :x]
        for k in range(*n_liver):
            m[k][(yy + xx + k) % 5 < 3] = 1  # a pattern that differs from slice to slice
        for k in range(*n_tumour):
            m[k][(yy * 3 + xx) % 7 == k % 7] = 2
        return m

    return make


CASES: dict[str, Case] = {
    # Rows x Columns a multiple of 16: every encoding reads back exactly
    "binary-16x16": Case(16, 16, 6, blobs, LABELS),
    "labelmap-16x16": Case(16, 16, 6, blobs, LABELS, SegType.LABELMAP),
    "binary-empty-segment": Case(16, 16, 6, tumour_empty, LABELS),
    "labelmap-empty-segment": Case(16, 16, 6, tumour_empty, LABELS, SegType.LABELMAP),
    "binary-skips-empty-slices": Case(16, 16, 9, gaps, TWO, frames=4),
    "binary-keeps-empty-frames": Case(16, 16, 9, gaps, TWO, frames=18, keep_empty_frames=True),
    "labelmap-skips-empty-slices": Case(16, 16, 9, gaps, TWO, SegType.LABELMAP, frames=3),
    "binary-coronal-descending": Case(
        16,
        32,
        7,
        blobs,
        LABELS,
        spec={"row_dir": (1.0, 0.0, 0.0), "col_dir": (0.0, 0.0, -1.0), "slice_step": -3.0},
    ),
    "binary-files-named-anyhow": Case(16, 16, 5, blobs, LABELS, rename=True),
    "binary-uncompressed": Case(16, 16, 6, blobs, LABELS, explicit=True),
    "labelmap-uncompressed": Case(16, 16, 6, blobs, LABELS, SegType.LABELMAP, explicit=True),
    # 13 x 11 = 143 pixels a frame: BINARY reads depend on the frame count (KNOWN_ISSUE)
    "binary-13x11-8-frames": Case(13, 11, 8, on_slices((0, 5), (3, 6)), TWO, frames=8),
    "binary-13x11-16-frames": Case(13, 11, 8, on_slices((0, 8), (0, 8)), TWO, frames=16),
    "binary-13x11-24-frames": Case(13, 11, 12, on_slices((0, 12), (0, 12)), TWO, frames=24),
    "labelmap-13x11": Case(13, 11, 8, on_slices((0, 5), (3, 6)), TWO, SegType.LABELMAP, frames=6),
}


def _write(name: str, case: Case, root: Path) -> tuple[Path, Path]:
    spec = SeriesSpec(rows=case.rows, cols=case.cols, slices=case.slices, **(case.spec or {}))
    folder = root / name / "CT"
    files = write_series(spec, folder)
    if case.rename:
        files = [f.rename(f.with_suffix("")) for f in files]
        (folder / "README.txt").write_text("not DICOM\n")
    source, _ = sort_by_position([pydicom.dcmread(f, stop_before_pixels=True) for f in files], files)
    label_map = case.make((len(source), case.rows, case.cols))
    seg = root / name / "seg.dcm"
    options = SegOptions(
        SegTransferSyntax.EXPLICIT_VR_LITTLE_ENDIAN if case.explicit else SegTransferSyntax.DEFLATED,
        omit_empty_frames=not case.keep_empty_frames,
    )
    export_seg(label_map, source, case.labels, seg, "ohif check", "v1", case.seg_type, options=options)
    expected = ExplicitVRLittleEndian if case.explicit else DeflatedExplicitVRLittleEndian
    assert pydicom.dcmread(seg, stop_before_pixels=True).file_meta.TransferSyntaxUID == expected
    if case.frames is not None:
        assert int(pydicom.dcmread(seg, stop_before_pixels=True).NumberOfFrames) == case.frames, name
    return seg, folder


@pytest.fixture(scope="module")
def read(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[Path, Path, OhifRead | OhifRefusedError]]:
    """Every case written, then read by the adapters in one Node process."""
    why = ohif_missing()
    if why:
        pytest.fail(f"the OHIF readers are part of the test set-up: {why}")
    root = tmp_path_factory.mktemp("ohif")
    pairs = {name: _write(name, case, root) for name, case in CASES.items()}
    results = run_ohif(list(pairs.values()))
    return {name: (*pairs[name], result) for name, result in zip(pairs, results, strict=True)}


def _ok(read: Reads, name: str) -> tuple[Path, Path, OhifRead]:
    seg, folder, result = read[name]
    assert isinstance(result, OhifRead), f"{name}: {result}"
    assert result.versions["@cornerstonejs/adapters"] == ADAPTERS_VERSION, result.versions
    return seg, folder, result


@pytest.mark.parametrize(
    "name",
    [
        "binary-16x16",
        "labelmap-16x16",
        "binary-empty-segment",
        "labelmap-empty-segment",
        "binary-skips-empty-slices",
        "binary-keeps-empty-frames",
        "labelmap-skips-empty-slices",
        "binary-coronal-descending",
        "binary-files-named-anyhow",
        "binary-uncompressed",
        "labelmap-uncompressed",
        "binary-13x11-16-frames",
        "labelmap-13x11",
    ],
)
def test_ohif_shows_our_seg_as_highdicom_reads_it(read: Reads, name: str) -> None:
    seg, folder, result = _ok(read, name)
    assert_matches_ohif(seg, folder, ohif=result)
    assert result.masks, f"{name}: OHIF shows nothing"
    assert not result.overlapping  # our label maps never overlap; the reader must not think so
    truth = read_highdicom(seg, folder)
    assert result.segments == {v: k for k, v in CASES[name].labels.items() if v > 0}  # empty ones too
    # the reader's own account of which segments it put on which slice
    shown = {uid: sorted(n for n, m in truth.masks[uid].items() if m.any()) for uid in truth.source_uids}
    assert result.segments_on_frame == {uid: ns for uid, ns in shown.items() if ns}


def test_an_empty_segment_is_declared_but_shows_nowhere(read: Reads) -> None:
    for name in ("binary-empty-segment", "labelmap-empty-segment"):
        _, _, result = _ok(read, name)
        assert result.segments[LABELS["tumour"]] == "tumour"
        assert not [uid for uid, masks in result.masks.items() if LABELS["tumour"] in masks]


def test_kept_empty_frames_place_every_slice_and_show_the_same(read: Reads) -> None:
    seg, folder, result = _ok(read, "binary-keeps-empty-frames")
    truth = read_highdicom(seg, folder)
    assert len(result.placement) == 2 * len(truth.source_uids)  # both segments on every slice
    other, other_folder, skipping = _ok(read, "binary-skips-empty-slices")
    other_uids = read_highdicom(other, other_folder).source_uids
    shown = sorted(truth.source_uids.index(uid) for uid in result.masks)
    assert shown == sorted(other_uids.index(uid) for uid in skipping.masks) == [2, 3, 6]


def test_frames_skip_the_empty_slices_and_land_on_theirs(read: Reads) -> None:
    seg, folder, result = _ok(read, "binary-skips-empty-slices")
    truth = read_highdicom(seg, folder)
    on = [truth.source_uids[k] for k in (2, 3, 6)]
    assert {uid for _, _, uid in result.placement} == set(on) == set(result.masks)
    assert [(s, uid) for _, s, uid in result.placement] == [(s, uid) for _, s, uid in truth.frames]
    seg, folder, labelmap = _ok(read, "labelmap-skips-empty-slices")
    truth = read_highdicom(seg, folder)
    on = [truth.source_uids[k] for k in (2, 3, 6)]
    assert sorted(str(uid) for _, _, uid in labelmap.placement) == sorted(on) == sorted(labelmap.masks)
    assert [uid for _, _, uid in labelmap.placement] == [uid for _, _, uid in truth.frames]


def per_frame_stride_reading(seg_path: Path) -> dict[str, dict[int, np.ndarray]]:
    """The SEG as the KNOWN_ISSUE's second guess reads it: frame k from byte k*ceil(R*C/8) on.

    The file holds the standard packing (frame k from bit k*R*C on); read at that byte stride,
    frame k starts k*(8*ceil(R*C/8) - R*C) pixels (raster order) into its own frame, and its last
    pixels come from frame k+1 (the padding bits after the last one).
    """
    ds = pydicom.dcmread(seg_path)
    rows, cols, n = int(ds.Rows), int(ds.Columns), int(ds.NumberOfFrames)
    bits = np.unpackbits(np.frombuffer(ds.PixelData, np.uint8), bitorder="little")
    assert np.array_equal(
        bits[: rows * cols * n].reshape(n, rows, cols), ds.pixel_array.reshape(n, rows, cols)
    )
    stride = 8 * -(-(rows * cols) // 8)
    seen: dict[str, dict[int, np.ndarray]] = {}
    for k, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        uid = str(frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        number = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        mask = bits[k * stride : k * stride + rows * cols].reshape(rows, cols) != 0
        if mask.any():
            seen.setdefault(uid, {})[number] = mask
    return seen


def test_known_issue_binary_13x11_with_8_frames_is_read_at_a_byte_stride_per_frame(read: Reads) -> None:
    """143-pixel frames, 8 of them: 143 bytes padded to 144 = ceil(143/8)*8, the second guess.

    Frame k is shown shifted k pixels back in raster order, the first k pixels of frame k+1 (the
    next slice or the next segment) appended: wrong voxels on every frame but the first, while every
    frame still lands on its right slice. highdicom, pydicom and the standard read the file alike.
    """
    seg, folder, result = _ok(read, "binary-13x11-8-frames")
    ds = pydicom.dcmread(seg)
    assert (int(ds.Rows) * int(ds.Columns), int(ds.NumberOfFrames), len(ds.PixelData)) == (143, 8, 144)
    expected = per_frame_stride_reading(seg)
    assert {u: sorted(m) for u, m in result.masks.items()} == {u: sorted(m) for u, m in expected.items()}
    for uid, masks in expected.items():
        for number, mask in masks.items():
            assert np.array_equal(result.masks[uid][number], mask), (KNOWN_ISSUE, uid, number)
    truth = read_highdicom(seg, folder)
    assert [(s, uid) for _, s, uid in result.placement] == [(s, uid) for _, s, uid in truth.frames]
    problems = differences(result, truth)
    assert problems and all("voxel(s) differ" in p for p in problems), problems
    with pytest.raises(AssertionError, match=r"voxel\(s\) differ"):
        assert_matches_ohif(seg, folder, ohif=result)


def test_known_issue_binary_13x11_with_16_frames_reads_right(read: Reads) -> None:
    """16 frames: 286 bytes, even, the exact standard length (the third guess): read as written."""
    seg, folder, result = _ok(read, "binary-13x11-16-frames")
    assert len(pydicom.dcmread(seg).PixelData) == 286
    assert_matches_ohif(seg, folder, ohif=result)


def test_known_issue_binary_13x11_with_24_frames_is_refused(read: Reads) -> None:
    """24 frames: 429 bytes padded to 430, no guess matches: OHIF fails to load the SEG."""
    seg, _, result = read["binary-13x11-24-frames"]
    assert len(pydicom.dcmread(seg).PixelData) == 430
    assert isinstance(result, OhifRefusedError), KNOWN_ISSUE
    assert "Unexpected 1-bit SEG PixelData length 430 for 24 frame(s) of 143 pixels" in str(result)
