"""Which converted images are the same image, whatever file format or series they came from.

A dataset may start as a NIfTI snapshot and go on in DICOM: a case exported to NIfTI and later
annotated anew on its DICOM series has no series UID in common with its NIfTI self. Keyed by
series alone, both would train, the superseded annotation beside the refined one, and a test
case could come back as a training case under another name. The voxel hash tells them apart by
content: the voxels and the grid, orientation-normalised (dcm2niix and others write RAS-flipped
arrays), integer values compared as integers whatever their stored type.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# header rounding that differs between writers of one grid (float32 NIfTI headers, DS strings)
_SPACING_DECIMALS = 3
_ORIGIN_DECIMALS = 2
_DIRECTION_DECIMALS = 4


def _value_type(array: np.ndarray) -> type[np.generic]:
    """int16 or int32 for integer values (stored as integers or integral floats), else float32."""
    if array.dtype.kind == "f" and not np.all(np.isfinite(array) & (np.mod(array, 1) == 0)):
        return np.float32
    if array.size == 0:
        return np.int16
    low, high = float(array.min()), float(array.max())
    return np.int16 if -32768 <= low and high <= 32767 else np.int32


def voxel_hash(image: Any) -> str:
    """sha256 of a 3D SimpleITK image's grid and voxel values, in LPS orientation.

    Parameters
    ----------
    image
        The image as conversion writes it (channel 0 of a case).

    Returns
    -------
    str
        Equal for the same voxels on the same grid, read from a DICOM series or a NIfTI file.

    """
    import SimpleITK as sitk

    oriented = sitk.DICOMOrient(image, "LPS") if image.GetDimension() == 3 else image
    array = sitk.GetArrayViewFromImage(oriented)
    digest = hashlib.sha256()
    grid = (
        tuple(oriented.GetSize()),
        tuple(round(s, _SPACING_DECIMALS) for s in oriented.GetSpacing()),
        tuple(round(o, _ORIGIN_DECIMALS) + 0.0 for o in oriented.GetOrigin()),  # + 0.0: no -0.0
        tuple(round(d, _DIRECTION_DECIMALS) + 0.0 for d in oriented.GetDirection()),
    )
    digest.update(repr(grid).encode())
    kind = _value_type(np.asarray(array))
    for plane in array:  # a slice at a time: no whole-volume copy of a large CT
        digest.update(np.ascontiguousarray(plane, dtype=kind).tobytes())
    return digest.hexdigest()
