"""How sure the fold ensemble is of a prediction: voxel entropy and pairwise agreement of the folds.

Measured by the predict step for every inbox case (``predictions.json``); the worklist ranks
cases by them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np

from iterseg.evaluate.metrics import UNSCORED_LABELS, dice


def normalised_entropy(probabilities: np.ndarray, min_foreground: float = 0.1) -> float:
    """Mean voxel entropy of the class probabilities where any foreground class is plausible.

    Parameters
    ----------
    probabilities
        ``(classes, *spatial)`` softmax output, background first.
    min_foreground
        Voxels whose summed foreground probability is below this are left out: the confident
        background that fills most of a volume would otherwise drown the signal.

    Returns
    -------
    float
        In [0, 1] (entropy divided by ``log(classes)``); 0.0 when no voxel qualifies.

    """
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.shape[0] < 2:
        return 0.0
    region = probs[1:].sum(axis=0) >= min_foreground
    if not region.any():
        return 0.0
    p = np.clip(probs[:, region], 1e-12, 1.0)
    entropy = -(p * np.log(p)).sum(axis=0) / math.log(probs.shape[0])
    return round(float(entropy.mean()), 4)


def fold_agreement(segmentations: Sequence[np.ndarray], labels: Mapping[str, int]) -> dict[str, float | None]:
    """Mean pairwise Dice between the fold models' segmentations, per label.

    Returns
    -------
    dict
        Label -> mean Dice over fold pairs (``None`` where every fold leaves the label empty);
        empty with fewer than two folds.

    """
    if len(segmentations) < 2:
        return {}
    agreement: dict[str, float | None] = {}
    for name, value in labels.items():
        if name in UNSCORED_LABELS or int(value) <= 0:
            continue
        scores = [dice(a == value, b == value) for a, b in itertools.combinations(segmentations, 2)]
        finite = [s for s in scores if not math.isnan(s)]
        agreement[name] = round(float(np.mean(finite)), 4) if finite else None
    return agreement
