"""Read-back checks of DICOM-SEGs shared by the integration and workflow tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom


def seg_label_map(seg_path: Path, source: Sequence[pydicom.Dataset]) -> np.ndarray:
    """The SEG as a (slices, rows, cols) label map in the order of ``source``."""
    seg = hd.seg.segread(seg_path)
    uids = [str(ds.SOPInstanceUID) for ds in source]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids,
        combine_segments=True,
        skip_overlap_checks=False,
        assert_missing_frames_are_empty=True,
    )
    return np.asarray(pixels)


def frame_positions_on_source_slices(seg_path: Path, source: Sequence[pydicom.Dataset]) -> bool:
    """Every frame's ImagePositionPatient equals one source slice's position."""
    seg = pydicom.dcmread(seg_path)
    source_positions = {tuple(np.round(np.asarray(ds.ImagePositionPatient, float), 4)) for ds in source}
    frames = seg.PerFrameFunctionalGroupsSequence
    positions = [
        tuple(np.round(np.asarray(f.PlanePositionSequence[0].ImagePositionPatient, float), 4)) for f in frames
    ]
    return len(positions) > 0 and set(positions) <= source_positions


def referenced_series(seg_path: Path) -> str:
    seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
    return str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
