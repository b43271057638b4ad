"""Atomic repointing of ``results/<dataset>/latest`` to the newest complete iteration."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from iterseg.errors import PromotionError

logger = logging.getLogger(__name__)


def current_latest(results: Path) -> str | None:
    """The iteration (date folder name) ``latest`` points to, or None."""
    link = results / "latest"
    return os.readlink(link) if link.is_symlink() else None


def promote(results: Path, iteration: str) -> bool:
    """Point ``results/latest`` at ``results/<iteration>`` by replacing a temporary symlink.

    The link never goes missing: a new link is created under a temporary name and renamed
    over the old one (rename(2) is atomic). ``latest`` never moves to an older iteration.

    Returns
    -------
    bool
        True if ``latest`` now points at ``iteration``; False if it already pointed at a newer one.

    Raises
    ------
    PromotionError
        If the iteration folder is missing or ``latest`` is something other than a symlink.

    """
    link = results / "latest"
    if not (results / iteration).is_dir():
        raise PromotionError(f"{results / iteration}: no such iteration folder; nothing to promote.")
    if link.exists() and not link.is_symlink():
        raise PromotionError(
            f"{link} is a real file or folder, not a link; move it away so iterseg can manage `latest`."
        )
    before = current_latest(results)
    if before is not None and before > iteration and (results / before).is_dir():
        logger.info("latest stays on %s (newer than %s)", before, iteration)
        return False
    tmp = results / f".latest.{os.getpid()}.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(iteration, tmp)  # relative, so the results folder can be moved or mounted elsewhere
    os.replace(tmp, link)
    logger.info("latest -> %s (was %s)", iteration, before)
    return True
