"""The independent check of a NIfTI snapshot's converted label maps against its label files.

Apart from the conversion (:mod:`iterseg.convert.decathlon`) so that it shares no code with the
writer: both files are read with nibabel, not SimpleITK, and each label's voxels are found from the
source file's own values, not from the relabelled array, so a fault of the conversion shows as
differing voxels instead of being repeated by its check.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from iterseg.convert.check import RoiCheck
from iterseg.errors import ConversionError

ANNOTATION_KIND = "NIFTI"  # the annotation kind of a NIfTI label file, in check.json and cases.json


def check_nifti_case(
    case_id: str,
    patient_id: str,
    written: Path,
    source: Path,
    values: dict[int, int],
    roi_labels: dict[str, list[str]],
) -> list[RoiCheck]:
    """Compare a written label map with its source label file, label by label, voxel for voxel.

    Both files are read with nibabel, not with SimpleITK that wrote the one, and each ROI's voxels
    are compared: those of the source values mapped to it with those of its value in the written
    file. ``slices_*`` count slices along the third voxel axis.

    Parameters
    ----------
    case_id, patient_id
        For the report.
    written
        The converted label map.
    source
        The snapshot's label file.
    values
        Source value -> ROI YAML value, as dataset.json declares.
    roi_labels
        ROI YAML (label -> regexes), in label order.

    Returns
    -------
    list[RoiCheck]
        One row per ROI label of the YAML (a label dataset.json does not declare: expected 0 voxels).

    Raises
    ------
    ConversionError
        If the two files differ in shape, or the written one holds a value of no ROI label.

    """
    import nibabel as nib

    written_image: Any = nib.load(str(written))
    source_image: Any = nib.load(str(source))
    got, want = np.asanyarray(written_image.dataobj), np.asanyarray(source_image.dataobj)
    if got.shape != want.shape:
        raise ConversionError(f"{written}: shape {got.shape}, its source {source} {want.shape}")
    stray = sorted(set(np.unique(got).tolist()) - set(range(len(roi_labels) + 1)))
    if stray:
        raise ConversionError(f"{written}: holds value(s) {stray} of no ROI label")
    return [
        _compare_label(
            RoiCheck(case_id, patient_id, name, ANNOTATION_KIND, 0, 0, 0, 0, 0, 0),
            np.isin(want, [v for v, target in values.items() if target == value and v]),
            got == value,
        )
        for value, name in enumerate(roi_labels, start=1)
    ]


def _compare_label(blank: RoiCheck, expected: np.ndarray, converted: np.ndarray) -> RoiCheck:
    """One label's counts: a copied label map may differ in no voxel (no tolerance)."""
    differing = int(np.count_nonzero(expected ^ converted))
    exp_slices, got_slices = expected.any(axis=(0, 1)), converted.any(axis=(0, 1))
    return replace(
        blank,
        expected_voxels=int(np.count_nonzero(expected)),
        converted_voxels=int(np.count_nonzero(converted)),
        differing_voxels=differing,
        beyond_tolerance=differing,
        slices_missing=int(np.count_nonzero(exp_slices & ~got_slices)),
        slices_extra=int(np.count_nonzero(got_slices & ~exp_slices)),
    )
