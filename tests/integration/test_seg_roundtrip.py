"""A label map exported as our DICOM-SEG and dropped back into a snapshot converts to itself.

Label maps on a real-header CT (``real_dicom``: GE CT_small slices) are written by
``seg_writer.export_seg`` as BINARY and as LABELMAP SEGs, put into a snapshot next to their CT
and converted with ``allow_unrefined`` (our own SEGs are otherwise left out as unrefined
predictions): the converted label map must be the one the SEG came from, voxel for voxel,
also when a label is empty or the ROI YAML has a single label.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import real_dicom as rd
import SimpleITK as sitk
from conftest import tree_digest
from iterseg.convert.snapshot import convert_snapshot
from iterseg.dicom.seg_writer import SegType, export_seg
from iterseg.dicom.series import sort_by_position
from iterseg.errors import ConversionError, SnapshotError

pytestmark = pytest.mark.integration

LABELS = {"background": 0, "liver": 1, "tumour": 2}
LIVER_ONLY = {"background": 0, "liver": 1}
# A SEG with no segmented pixel at all: "refused" (a ConversionError/SnapshotError whose line
# names the SEG file and carries ALL_EMPTY_CAUSE) or "all-zero" (converted to an all-zero map).
ALL_EMPTY_OUTCOME = "all-zero"
ALL_EMPTY_CAUSE = "empty"


def _only(value: int) -> Callable[[np.ndarray], np.ndarray]:
    def keep(label_map: np.ndarray) -> np.ndarray:
        return np.where(label_map > 0, value, 0).astype(np.uint8)

    return keep


VARIANTS: dict[str, tuple[dict[str, list[str]], dict[str, int], Callable[[np.ndarray], np.ndarray]]] = {
    # ROI YAML, export labels, label map from the two-organ map
    "both-labels": (rd.SEG_ROIS, LABELS, lambda m: m),
    "label-1-empty": (rd.SEG_ROIS, LABELS, lambda m: np.where(m == 1, 0, m).astype(np.uint8)),
    "label-2-empty": (rd.SEG_ROIS, LABELS, _only(1)),
    "one-label-roi-yaml": ({"liver": rd.SEG_ROIS["liver"]}, LIVER_ONLY, _only(1)),
    "all-empty": (rd.SEG_ROIS, LABELS, lambda m: np.zeros_like(m)),
}


@pytest.mark.parametrize("seg_type", [SegType.BINARY, SegType.LABELMAP], ids=lambda t: t.value)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_exported_seg_converts_back_to_the_label_map_it_came_from(
    variant: str, seg_type: SegType, tmp_path: Path
) -> None:
    rois, labels, make = VARIANTS[variant]
    rawdata = tmp_path / "rawdata"
    patient = rawdata / "ds" / rd.SNAPSHOT / "ROUND01"
    series = rd.write_series(rd.planned_slices("ROUND01", 8), patient / "CT")
    files = sorted((patient / "CT").glob("*.dcm"))  # name (InstanceNumber) order: against the normal
    source, _ = sort_by_position([pydicom.dcmread(f, stop_before_pixels=True) for f in files], files)
    assert [str(ds.SOPInstanceUID) for ds in source] == [str(ds.SOPInstanceUID) for ds in series.datasets]
    label_map = make(rd.label_map(rd.organ_masks(series.shape), rd.SEG_ROIS))
    seg_path = patient / "SEG" / "prediction.dcm"
    export_seg(label_map, source, labels, seg_path, "desc", "v1", seg_type)
    declared = [
        str(s.SegmentLabel) for s in hd.seg.segread(seg_path).SegmentSequence if int(s.SegmentNumber) > 0
    ]
    assert declared == [name for name, value in labels.items() if value > 0]  # empty labels declared too
    roi_yaml = rd.write_roi_yaml(rois, tmp_path / "roi.yaml")
    before = tree_digest(rawdata)
    out = tmp_path / "converted"
    try:
        cases, error = convert_snapshot(patient.parent, out, roi_yaml, allow_unrefined=True), None
    except (ConversionError, SnapshotError) as exc:
        cases, error = None, exc
    except Exception as exc:
        raise AssertionError(f"convert_snapshot crashed with {type(exc).__name__}: {exc}") from exc
    assert tree_digest(rawdata) == before, "rawdata was changed"

    if variant == "all-empty" and ALL_EMPTY_OUTCOME == "refused":
        assert error is not None, f"a SEG without any segmented pixel was converted: {cases}"
        lines = [
            line
            for line in str(error).splitlines()
            if seg_path.name in line and ALL_EMPTY_CAUSE in line.lower()
        ]
        assert lines, f"no line names {seg_path.name} with {ALL_EMPTY_CAUSE!r}:\n{error}"
        return

    assert error is None, f"refused, but must convert:\n{error}"
    assert cases is not None and len(cases) == 1, cases
    got = rd.on_series_grid(sitk.ReadImage(str(out / cases[0].label)), series.datasets)
    assert not (got == rd.OUTSIDE).any(), "the label map does not cover the CT"
    differ = got != label_map
    assert not differ.any(), (
        f"{int(differ.sum())} voxel(s) differ; converted {np.bincount(got.ravel(), minlength=3)[:3]}, "
        f"exported {np.bincount(label_map.ravel(), minlength=3)[:3]}"
    )
