"""The spatial step of our med-imagetools pipeline: masks onto the image grid without interpolation.

med-imagetools 2.16's ``nnUNetPipeline`` always resamples: the image with a linear, anti-aliased
``Resample`` (a no-op at spacing 0) and every mask onto the image with ``sitk.Resample(mask, ref)``,
whose default interpolator is *linear*. A SEG whose geometry differs from the CT's by float
rounding (dcmqi / 3D Slicer write positions and spacings in single precision) is interpolated
between grid points and truncated to integers: boundary voxels are lost. This transform replaces
that step through the pipeline's public ``transformer`` attribute.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import SimpleITK as sitk
from imgtools.transforms import SpatialTransform

logger = logging.getLogger(__name__)

INT16_MIN, INT16_MAX = -32768, 32767
_WIDE_INTEGERS = {sitk.sitkInt32, sitk.sitkUInt32, sitk.sitkInt64, sitk.sitkUInt64, sitk.sitkUInt16}


@dataclass
class GridPreservingTransform(SpatialTransform):
    """Keep the image on its own grid (unless a spacing is asked for); put masks on it by nearest neighbour.

    Parameters
    ----------
    spacing
        Target spacing (x, y, z) in mm; 0 keeps an axis as it is. Only when non-zero is the image
        resampled (linearly); masks then follow it by nearest neighbour.
    narrow_integers
        Store integer images whose values fit as int16 (CT in HU): med-imagetools reads CT with
        RescaleIntercept -1024 as int32, doubling what nnU-Net reads every epoch.

    """

    spacing: tuple[float, float, float] = (0.0, 0.0, 0.0)
    narrow_integers: bool = True

    def supports_reference(self) -> bool:
        """Masks are given the reference image (the sample's first, the scan)."""
        return True

    def __call__(self, image: Any, ref: Any | None = None) -> Any:
        """Transform the scan (``ref`` is None) or put a mask onto the scan's grid."""
        if ref is not None:
            return sitk.Resample(
                image, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, image.GetPixelID()
            )
        out = image
        if any(s > 0 for s in self.spacing):
            from imgtools.transforms.functional import resample

            out = resample(out, spacing=list(self.spacing), interpolation="linear", anti_alias=True)
        if self.narrow_integers and out.GetPixelID() in _WIDE_INTEGERS:
            lo, hi = sitk.MinimumMaximum(out)
            if INT16_MIN <= lo and hi <= INT16_MAX:
                out = sitk.Cast(out, sitk.sitkInt16)
        return out
