"""The pieces of our annotation readers that real files stress: fills, bit packing, planes, charsets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from iterseg.dicom.canvas import LabelCanvas, MaskStrategy, SliceGrid
from iterseg.dicom.geometry import Grid
from iterseg.dicom.rtstruct_reader import fill_even_odd
from iterseg.dicom.seg_reader import _frames
from iterseg.dicom.seg_writer import character_set
from iterseg.errors import GeometryError
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

pytestmark = pytest.mark.unit


def _square(top: float, left: float, size: float) -> np.ndarray:
    return np.array([[top, left], [top, left + size], [top + size, left + size], [top + size, left]])


def test_even_odd_keeps_a_hole_and_counts_centres_only() -> None:
    # outer edges on pixel boundaries (half-integers): centres 2..9 inside; hole centres 4..6
    ring = fill_even_odd([_square(1.5, 1.5, 8), _square(3.5, 3.5, 3)], 12, 12)
    expected = np.zeros((12, 12), bool)
    expected[2:10, 2:10] = True
    expected[4:7, 4:7] = False
    assert np.array_equal(ring, expected)


def test_even_odd_of_one_polygon_is_its_interior() -> None:
    mask = fill_even_odd([_square(1.5, 1.5, 8)], 12, 12)
    assert mask.sum() == 64 and mask[2:10, 2:10].all()


def test_even_odd_vertex_on_a_scanline_counts_once() -> None:
    # a diamond whose top and bottom vertices sit exactly on pixel centres (row 2 and row 8)
    diamond = np.array([[2.0, 5.0], [5.0, 8.0], [8.0, 5.0], [5.0, 2.0]])
    mask = fill_even_odd([diamond], 11, 11)
    rows = mask.sum(axis=1)
    # centres on the outline count on the left/top edges only (half-open spans): no stray runs
    assert list(rows[2:9]) == [0, 2, 4, 6, 4, 2, 0]
    assert mask[5, 2:8].all() and not mask[5, 8]
    assert not mask[:2].any() and not mask[9:].any()


def test_even_odd_clips_polygons_beyond_the_slice() -> None:
    mask = fill_even_odd([_square(-5.5, -5.5, 10)], 8, 8)
    assert mask[:5, :5].all() and mask.sum() == 25


def _binary_seg(frames: np.ndarray) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    count, rows, cols = frames.shape
    ds.Rows, ds.Columns, ds.NumberOfFrames, ds.BitsAllocated = rows, cols, count, 1
    ds.PixelData = np.packbits(frames.ravel(), bitorder="little").tobytes()
    return ds


def test_binary_frames_are_unpacked_across_byte_boundaries() -> None:
    # 5x3 = 15 bits a frame: frames share bytes, as the standard packs them
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 2, (7, 5, 3)).astype(np.uint8)
    got = np.array(list(_frames(_binary_seg(frames))))
    assert np.array_equal(got, frames)


def _grid(slices: int = 4) -> SliceGrid:
    grid = Grid((6, 5, slices), (0.5, 0.5, 2.0), (10.0, 20.0, -30.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    return SliceGrid("1.2.3", Path("ct"), grid, {})


def test_planes_land_on_their_slices_or_are_refused() -> None:
    grid = _grid()
    assert grid.slice_of_plane(np.array([10.0, 20.0, -26.0]), "frame", "fix") == 2
    with pytest.raises(GeometryError, match="between or beyond"):
        grid.slice_of_plane(np.array([10.0, 20.0, -27.0]), "frame 1", "fix")
    with pytest.raises(GeometryError, match="between or beyond"):
        grid.slice_of_plane(np.array([10.0, 20.0, -22.0]), "frame 1", "fix")  # slice 4 of 4
    with pytest.raises(GeometryError, match="shifted in-plane"):
        grid.slice_of_plane(np.array([11.0, 20.0, -30.0]), "frame 1", "fix")
    # a contour point anywhere in the plane, a little off it (rounded by the planning system)
    assert grid.slice_of_plane(np.array([12.0, 21.0, -25.6]), "c", "fix", corner=False, tolerance=0.25) == 2


def test_canvas_strategies() -> None:
    values = {"background": 0, "liver": 1, "tumour": 2}
    mask_a = np.array([[True, True], [False, False]])
    mask_b = np.array([[False, True], [True, False]])
    sparse = LabelCanvas((1, 2, 2), values, MaskStrategy.SPARSE_MASK)
    sparse.add_mask(0, mask_b, 2)
    sparse.add_mask(0, mask_a, 1)  # the later label wins whatever the drawing order
    assert sparse.array[0].tolist() == [[1, 2], [2, 0]]
    region = LabelCanvas((1, 2, 2), values, MaskStrategy.REGION_MASK)
    region.add_mask(0, mask_a, 1)
    region.add_labels(0, np.where(mask_b, 2, 0))
    assert region.array[0].tolist() == [[1, 3], [2, 0]]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("ISO_IR 100", "ISO_IR 100"),
        (["", "ISO 2022 IR 87"], ["ISO 2022 IR 6", "ISO 2022 IR 87"]),
    ],
)
def test_empty_specific_character_set_means_the_default_repertoire(value: object, expected: object) -> None:
    ds = pydicom.Dataset()
    if value is not None:
        ds.SpecificCharacterSet = value
    assert character_set(ds) == expected
