"""DICOM-SEG (BINARY, FRACTIONAL, LABELMAP) -> a label map on its image series' grid.

Replaces med-imagetools' SEG reader, which fails on a declared-but-empty segment ("No label
object with label 1"), cannot read LABELMAP SEGs and takes a SEG's pixels as they come even when
its pixel spacing differs from the image's. Frames are placed by their own geometry
(ImagePositionPatient on the image grid), so a SEG whose frames do not lie on the image's slices
is refused instead of being shifted. The conversion check reads the same file with highdicom by
the frames' source-image references: an independent path to the same voxels.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from iterseg.dicom.canvas import LabelCanvas, SliceGrid
from iterseg.dicom.series import read_dataset
from iterseg.errors import GeometryError
from iterseg.roi import match_roi_name

logger = logging.getLogger(__name__)

_NATIVE = {ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian}


class SegmentationType(StrEnum):
    """DICOM SegmentationType (0062,0001)."""

    BINARY = "BINARY"
    FRACTIONAL = "FRACTIONAL"
    LABELMAP = "LABELMAP"


@dataclass(frozen=True)
class SegContent:
    """What a SEG contributed: the labels it declares and those of them left empty."""

    labels: tuple[str, ...]
    empty_labels: tuple[str, ...]


def _item(ds: pydicom.Dataset, frame: pydicom.Dataset | None, sequence: str) -> pydicom.Dataset | None:
    """A functional group macro of one frame: its per-frame item, else the shared one."""
    for container in (frame, *getattr(ds, "SharedFunctionalGroupsSequence", [])):
        if container is not None and sequence in container and len(container[sequence].value):
            return container[sequence].value[0]
    return None


def _frames(ds: pydicom.Dataset) -> Iterator[np.ndarray]:
    """Each frame's stored values, decoded one at a time for native transfer syntaxes."""
    rows, cols, count = int(ds.Rows), int(ds.Columns), int(getattr(ds, "NumberOfFrames", 1))
    bits = int(ds.BitsAllocated)
    if ds.file_meta.get("TransferSyntaxUID", ImplicitVRLittleEndian) not in _NATIVE:
        decoded = ds.pixel_array.reshape(count, rows, cols)  # encapsulated: pydicom's decoders
        yield from decoded
        return
    data: bytes = ds.PixelData
    if bits == 1:  # frames are packed back to back, not padded to whole bytes
        pixels = rows * cols
        for index in range(count):
            start = index * pixels
            chunk = np.frombuffer(data, np.uint8, count=(start % 8 + pixels + 7) // 8, offset=start // 8)
            bits_ = np.unpackbits(chunk, bitorder="little")[start % 8 : start % 8 + pixels]
            yield bits_.reshape(rows, cols)
        return
    if bits not in (8, 16):
        raise ValueError(f"BitsAllocated {bits}")
    dtype = np.dtype(np.uint8) if bits == 8 else np.dtype("<u2")
    yield from np.frombuffer(data, dtype, count=count * rows * cols).reshape(count, rows, cols)


def _check_plane(ds: pydicom.Dataset, grid: SliceGrid, seg_path: Path) -> None:
    """The SEG's frames must have the image's matrix, pixel spacing and orientation."""
    frames = getattr(ds, "PerFrameFunctionalGroupsSequence", None)
    first = frames[0] if frames else None  # some writers repeat the plane macros per frame
    measures = _item(ds, first, "PixelMeasuresSequence")
    orientation = _item(ds, first, "PlaneOrientationSequence")
    problems = []
    if (int(ds.Rows), int(ds.Columns)) != (grid.rows, grid.cols):
        problems.append(f"matrix {ds.Rows}x{ds.Columns} vs the image's {grid.rows}x{grid.cols}")
    if measures is not None and "PixelSpacing" in measures:
        spacing = tuple(float(v) for v in measures.PixelSpacing)
        if not np.allclose(spacing, grid.pixel_spacing, rtol=1e-3):
            problems.append(
                f"pixel spacing {spacing[0]:g}x{spacing[1]:g} mm vs the image's "
                f"{grid.pixel_spacing[0]:g}x{grid.pixel_spacing[1]:g} mm"
            )
    if orientation is not None and not np.allclose(
        [float(v) for v in orientation.ImageOrientationPatient], grid.orientation, atol=1e-4
    ):
        problems.append("another ImageOrientationPatient")
    if problems:
        raise GeometryError(
            f"{seg_path}: SEG is not on the grid of image series {grid.series_uid} ({'; '.join(problems)}); "
            "its pixels cannot be placed on the image. Re-export the SEG from the viewer on this series."
        )


def _frame_slice(
    ds: pydicom.Dataset, frame: pydicom.Dataset | None, index: int, grid: SliceGrid, seg_path: Path
) -> int:
    position = _item(ds, frame, "PlanePositionSequence")
    if position is not None and "ImagePositionPatient" in position:
        return grid.slice_of_plane(
            np.asarray(position.ImagePositionPatient, float),
            f"{seg_path}: frame {index + 1}",
            "Re-export the SEG from the viewer on this image series.",
        )
    derivation = _item(ds, frame, "DerivationImageSequence")
    for source in getattr(derivation, "SourceImageSequence", []) if derivation is not None else []:
        k = grid.slice_of_sop.get(str(source.ReferencedSOPInstanceUID))
        if k is not None:
            return k
    raise GeometryError(
        f"{seg_path}: frame {index + 1} has neither a plane position nor a source slice of image series "
        f"{grid.series_uid}; the SEG cannot be placed. Re-export it from the viewer on this series."
    )


def read_seg(
    seg_path: Path, grid: SliceGrid, roi_labels: dict[str, list[str]], canvas: LabelCanvas
) -> SegContent:
    """Draw the segments of ``seg_path`` that match ROI YAML labels onto ``canvas``.

    Parameters
    ----------
    seg_path
        The SEG file (any name).
    grid
        The annotated image series' grid (sorted slices).
    roi_labels
        ROI YAML labels -> regexes; a segment goes to the first label its SegmentLabel matches.
    canvas
        The case's label map, combined with the mask saving strategy.

    Returns
    -------
    SegContent
        The labels the SEG declares and which of them hold no pixel (warned: such a label counts
        as drawn and empty).

    Raises
    ------
    GeometryError
        When the SEG's matrix, pixel spacing or orientation differs from the image's, or a frame
        does not lie on one of its slices.

    """
    ds = read_dataset(seg_path)
    kind = SegmentationType(str(ds.SegmentationType))
    _check_plane(ds, grid, seg_path)
    label_of = {
        int(segment.SegmentNumber): name
        for segment in ds.SegmentSequence
        if (name := match_roi_name(str(segment.SegmentLabel), roi_labels)) is not None
    }
    value_of = {number: canvas.values[name] for number, name in label_of.items()}
    drawn = _draw_frames(ds, kind, value_of, grid, seg_path, canvas)
    labels = tuple(dict.fromkeys(label_of.values()))
    empty = tuple(name for name in labels if not any(label_of[n] == name for n in drawn))
    for name in empty:
        numbers = ", ".join(str(n) for n, label in label_of.items() if label == name)
        logger.warning(
            "%s: segment %s (label %s) is declared but empty; %s counts as drawn and empty in this case",
            seg_path,
            numbers,
            name,
            name,
        )
    return SegContent(labels, empty)


def _draw_frames(
    ds: pydicom.Dataset,
    kind: SegmentationType,
    value_of: dict[int, int],
    grid: SliceGrid,
    seg_path: Path,
    canvas: LabelCanvas,
) -> set[int]:
    """Draw every frame of a wanted segment onto ``canvas``; return the segment numbers holding a pixel."""
    drawn: set[int] = set()
    per_frame = list(getattr(ds, "PerFrameFunctionalGroupsSequence", []))
    lut = np.zeros(max([*value_of, 0]) + 1 if kind is SegmentationType.LABELMAP else 1, np.int64)
    for number, value in value_of.items():
        if kind is SegmentationType.LABELMAP:
            lut[number] = value
    threshold = (
        float(getattr(ds, "MaximumFractionalValue", 1)) / 2 if kind is SegmentationType.FRACTIONAL else 0
    )
    for index, pixels in enumerate(_frames(ds)):
        frame = per_frame[index] if index < len(per_frame) else None
        if kind is SegmentationType.LABELMAP:
            present = np.unique(pixels)
            drawn |= {int(v) for v in present if int(v) in value_of}
            if not any(int(v) in value_of for v in present):
                continue
            k = _frame_slice(ds, frame, index, grid, seg_path)
            canvas.add_labels(k, lut[np.minimum(pixels, len(lut) - 1)] * (pixels < len(lut)))
            continue
        ident = _item(ds, frame, "SegmentIdentificationSequence")
        number = int(ident.ReferencedSegmentNumber) if ident is not None else -1
        if number not in value_of:
            continue
        mask = pixels > threshold
        if not mask.any():
            continue
        drawn.add(number)
        canvas.add_mask(_frame_slice(ds, frame, index, grid, seg_path), mask, value_of[number])
    return drawn
