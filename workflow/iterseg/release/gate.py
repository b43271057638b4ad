"""The promotion gate: whether a finished iteration may become ``latest``.

An iteration passes when every fold finished (its final checkpoint exists) and its test mean
Dice is within ``promotion.max_dice_drop`` of the iteration ``latest`` points at. The verdict
is applied once, by :func:`iterseg.release.promote.settle`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateDecision:
    """Whether an iteration may become ``latest``, and why."""

    promote: bool
    reason: str


def mean_dice(metrics: Mapping[str, Any] | None) -> float | None:
    """The test set's mean Dice over labels, or None without a test set."""
    if not metrics:
        return None
    value = metrics.get("summary", {}).get("mean", {}).get("dice_mean")
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def decide(
    folds: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, Any] | None,
    latest: str | None,
    latest_manifest: Mapping[str, Any] | None,
    max_dice_drop: float | None,
) -> GateDecision:
    """The promotion gate: every fold finished, and test mean Dice within ``max_dice_drop`` of ``latest``.

    Parameters
    ----------
    folds
        The fold records; each must name an existing final checkpoint.
    metrics
        This iteration's test metrics (None or empty without a test set).
    latest, latest_manifest
        The iteration ``latest`` points at and its manifest (None if none yet).
    max_dice_drop
        Allowed drop of the mean Dice; None disables the Dice gate, negative demands a gain.

    Returns
    -------
    GateDecision
        The verdict and a one-line reason (recorded in the manifest and the history).

    """
    missing = [str(f.get("fold")) for f in folds if not Path(str(f.get("checkpoint", ""))).is_file()]
    if missing or not folds:
        return GateDecision(False, f"fold(s) {', '.join(missing) or 'none'} have no final checkpoint")
    dice = mean_dice(metrics)
    if max_dice_drop is None:
        return GateDecision(True, "all folds finished; Dice gate off (promotion.max_dice_drop: null)")
    if dice is None:
        return GateDecision(True, "all folds finished; no test set, so no Dice gate")
    before = mean_dice((latest_manifest or {}).get("test_metrics"))
    if latest is None or before is None:
        return GateDecision(
            True, f"all folds finished; test mean Dice {dice:.3f}; no earlier scored `latest`"
        )
    if dice >= before - max_dice_drop:
        return GateDecision(
            True,
            f"test mean Dice {dice:.3f} vs {before:.3f} of latest {latest} (allowed drop {max_dice_drop:g})",
        )
    return GateDecision(
        False,
        f"test mean Dice {dice:.3f} is {before - dice:.3f} below {before:.3f} of latest {latest} "
        f"(allowed drop {max_dice_drop:g}); latest stays on {latest}",
    )
