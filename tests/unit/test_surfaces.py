"""The surface elements behind NSD and HD95, checked against closed-form values for spheres.

An independent check of :mod:`iterseg.evaluate.surfaces`: two spheres of radius r whose centres
are d apart have an NSD and a 95th-percentile distance that follow from geometry alone
(``sphere_surface_dice``; the HD95 from the distance ``|sqrt(r² + d² - 2rd cos θ) - r|`` over
an area that is uniform in cos θ). A voxelised sphere approaches them as the voxels shrink.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from iterseg.evaluate.effort import hd95
from iterseg.evaluate.metrics import surface_dice
from iterseg.evaluate.surfaces import sphere_surface_dice, surface_elements

pytestmark = pytest.mark.unit

RADIUS = 10.0  # mm


def sphere(voxel: float, shift_mm: float = 0.0, radius: float = RADIUS) -> np.ndarray:
    n = round(32 / voxel)
    z, y, x = (np.arange(n) * voxel for _ in range(3))
    return (z[:, None, None] - 16) ** 2 + (y[None, :, None] - 16) ** 2 + (
        x[None, None, :] - 16 - shift_mm
    ) ** 2 <= radius**2


def analytic_hd95(radius: float, shift: float) -> float:
    cosines = np.linspace(-1, 1, 200_001)  # the sphere's area is uniform in cos θ
    distances = np.abs(np.sqrt(radius**2 + shift**2 - 2 * radius * shift * cosines) - radius)
    return float(np.percentile(distances, 95))


@pytest.mark.parametrize(("shift", "tolerance"), [(2.0, 1.0), (3.0, 1.0), (4.0, 2.0)])
def test_nsd_of_shifted_spheres_approaches_the_closed_form(shift: float, tolerance: float) -> None:
    truth = sphere_surface_dice(RADIUS, shift, tolerance)
    errors = []
    for voxel in (1.0, 0.5, 0.25):
        spacing = (voxel, voxel, voxel)
        errors.append(abs(surface_dice(sphere(voxel), sphere(voxel, shift), spacing, tolerance) - truth))
    assert errors[-1] < 0.07  # within a quarter-millimetre grid's discretisation
    assert errors[0] > errors[1] > errors[2]  # and converging as the voxels shrink


def test_hd95_of_shifted_spheres_approaches_the_closed_form() -> None:
    truth = analytic_hd95(RADIUS, 3.0)
    measured = hd95(sphere(0.25), sphere(0.25, 3.0), (0.25, 0.25, 0.25))
    assert measured == pytest.approx(truth, abs=0.25)  # within one voxel
    assert hd95(sphere(0.5), sphere(0.5), (0.5, 0.5, 0.5)) == 0.0


def test_concentric_spheres_match_only_within_their_gap() -> None:
    inner, outer = sphere(0.5, radius=8.0), sphere(0.5, radius=10.0)  # 2 mm apart everywhere
    spacing = (0.5, 0.5, 0.5)
    assert surface_dice(inner, outer, spacing, 1.0) < 0.05
    assert surface_dice(inner, outer, spacing, 2.5) == 1.0
    assert hd95(inner, outer, spacing) == pytest.approx(2.0, abs=0.5)


def test_element_areas_are_in_square_millimetres_and_follow_the_spacing() -> None:
    ball = sphere(0.5)
    _, areas = surface_elements(ball, (0.5, 0.5, 0.5))
    # marching cubes over a voxelised sphere: a little above the smooth 4πr², from the staircase
    assert 1.0 < areas.sum() / (4 * math.pi * RADIUS**2) < 1.12
    box = np.zeros((8, 8, 8), bool)
    box[2:6, 2:6, 2:6] = True
    _, unit = surface_elements(box, (1.0, 1.0, 1.0))
    _, stretched = surface_elements(box, (2.0, 2.0, 2.0))
    assert stretched.sum() == pytest.approx(4 * unit.sum())  # areas scale with the square of the size
