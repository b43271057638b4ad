"""The voxel hash: the same image whatever its stored type or orientation, another image otherwise."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from iterseg.convert.image_identity import voxel_hash

pytestmark = pytest.mark.unit


def _ct(dtype: type[np.generic] = np.int16) -> sitk.Image:
    values = np.random.default_rng(0).integers(-1024, 1500, (6, 8, 10)).astype(dtype)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((0.8, 0.8, 2.5))
    image.SetOrigin((-95.5, -94.8, -61.3))
    return image


def test_stored_type_and_orientation_do_not_change_the_hash() -> None:
    reference = voxel_hash(_ct())
    assert voxel_hash(_ct(np.int32)) == voxel_hash(_ct(np.float32)) == reference
    # as dcm2niix writes it: the same voxels in RAS order, the header saying so
    assert voxel_hash(sitk.DICOMOrient(_ct(), "RAS")) == reference
    shifted = _ct()
    shifted.SetOrigin((-95.5004, -94.8, -61.3))  # a float32 header's rounding
    assert voxel_hash(shifted) == reference


def test_another_voxel_value_grid_or_position_is_another_image() -> None:
    reference = voxel_hash(_ct())
    changed = _ct()
    changed[3, 4, 2] = int(changed[3, 4, 2]) + 1
    moved = _ct()
    moved.SetOrigin((-95.5, -94.8, -58.8))  # one slice along
    coarser = _ct()
    coarser.SetSpacing((0.8, 0.8, 5.0))
    fractional = sitk.Cast(_ct(), sitk.sitkFloat32) + 0.5
    assert len({reference, *map(voxel_hash, (changed, moved, coarser, fractional))}) == 5
