"""Multi-sequence cases: which image series is which nnU-Net channel, all on one grid.

A dataset's ``channels`` map channel names to regexes over SeriesDescription and ProtocolName
(case-insensitive ``re.search``), in nnU-Net's channel order. The first channel is the reference:
the series the annotation is drawn on and the exported SEG refers to; its grid is the case's
grid. Every other channel must come from the same study and frame of reference (a scanner's
sequences of one session, registered by construction) and is resampled onto the reference grid
with linear interpolation; what was resampled, from which grid, is recorded with the case. A case
whose channels cannot be told apart exactly is refused with the series named: no channel is
ever guessed, since a T1 fed in as T2 trains a model that is silently wrong.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from iterseg.errors import ConfigError, IterSegError

logger = logging.getLogger(__name__)

# grids closer than this are the same grid: copied, not interpolated
_SPACING_TOL = 1e-4  # relative
_ORIGIN_TOL_MM = 1e-3
_DIRECTION_TOL = 1e-5
LOW_COVERAGE = 0.9  # warn when less of the reference grid than this lies inside another channel


class ChannelError(IterSegError):
    """The series of a case cannot be assigned to the configured channels exactly."""


@dataclass(frozen=True)
class Channel:
    """One nnU-Net input channel and the series descriptions that make it."""

    name: str
    patterns: tuple[str, ...]

    def matches(self, description: str, protocol: str) -> bool:
        """Whether any pattern is found in the series' description or protocol name."""
        return any(
            re.search(p, text, re.IGNORECASE)
            for p in self.patterns
            for text in (description, protocol)
            if text
        )


@dataclass(frozen=True)
class SeriesLabel:
    """What channel assignment reads of one image series."""

    series_uid: str
    description: str
    protocol: str
    frame_of_reference: str
    where: str  # a folder or file, for messages

    def named(self) -> str:
        """The series as a message names it."""
        text = self.description or self.protocol or "no SeriesDescription or ProtocolName"
        return f"series {self.series_uid} ({text!r}, {self.where})"


def parse_channels(
    mapping: Mapping[str, Sequence[str]] | None, where: str = "channels"
) -> tuple[Channel, ...]:
    """Channels from the config mapping (name -> regexes), in the mapping's order.

    Raises
    ------
    ConfigError
        For a channel without a pattern, or a pattern that is not a regular expression.

    """
    channels = []
    for name, patterns in (mapping or {}).items():
        if not patterns:
            raise ConfigError(f"config key {where}.{name}: give at least one regex over SeriesDescription")
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"config key {where}.{name}: {pattern!r} is not a regex ({exc})") from exc
        channels.append(Channel(str(name), tuple(str(p) for p in patterns)))
    return tuple(channels)


def channels_to_json(channels: Sequence[Channel]) -> str:
    """The channels as one command-line argument (a JSON object, order kept)."""
    return json.dumps({c.name: list(c.patterns) for c in channels})


def channels_from_json(text: str) -> tuple[Channel, ...]:
    """Inverse of :func:`channels_to_json`; ``""`` is a single-channel dataset."""
    return parse_channels(json.loads(text), "--channels") if text else ()


def channel_key(channels: Sequence[Channel]) -> str:
    """What conversion output depends on of the channels (part of the reuse key)."""
    return channels_to_json(channels) if len(channels) > 1 else ""


def _matching(series: SeriesLabel, channels: Sequence[Channel]) -> list[str]:
    return [c.name for c in channels if c.matches(series.description, series.protocol)]


def _check_reference(reference: SeriesLabel, channels: Sequence[Channel]) -> None:
    found = _matching(reference, channels)
    first = channels[0].name
    if found != [first]:
        what = f"matches channel(s) {', '.join(found)}" if found else "matches no channel's regexes"
        raise ChannelError(
            f"{reference.named()}: the annotated series must be the reference channel {first}, but it "
            f"{what}; annotate the {first} series, or fix the regexes of datasets.<name>.channels"
        )


def _pick_reference(series: Sequence[SeriesLabel], channels: Sequence[Channel]) -> SeriesLabel:
    first = channels[0]
    found = [s for s in series if first.matches(s.description, s.protocol)]
    if len(found) != 1:
        _refuse(first.name, found, series)
    _check_reference(found[0], channels)
    return found[0]


def _refuse(name: str, found: Sequence[SeriesLabel], every: Sequence[SeriesLabel]) -> None:
    if not found:
        present = "; ".join(s.named() for s in every) or "none"
        raise ChannelError(
            f"no series for channel {name} (series present: {present}); add the sequence to the case, "
            f"or extend the regexes of channel {name} in datasets.<name>.channels"
        )
    raise ChannelError(
        f"{len(found)} series match channel {name}: {'; '.join(s.named() for s in found)}; remove the extra "
        f"series from the case, or make the regexes of channel {name} match only one"
    )


def assign_channels(
    series: Sequence[SeriesLabel], channels: Sequence[Channel], reference_uid: str | None = None
) -> tuple[SeriesLabel, ...]:
    """The series of each channel, in channel order; the reference (annotated) series first.

    Parameters
    ----------
    series
        The image series of one case (one patient's study), the reference among them.
    channels
        The dataset's channels; the first is the reference.
    reference_uid
        The annotated series; None (inbox cases): the one series matching the first channel.

    Raises
    ------
    ChannelError
        When a channel has no series or two, a series matches two channels, the annotated
        series is not the first channel's, or a series lies in another frame of reference.

    """
    if reference_uid is None:
        reference = _pick_reference(series, channels)
    else:
        reference = next(s for s in series if s.series_uid == reference_uid)
        _check_reference(reference, channels)
    chosen = [reference]
    others = [s for s in series if s.series_uid != reference.series_uid]
    for channel in channels[1:]:
        found = [s for s in others if channel.matches(s.description, s.protocol)]
        if len(found) != 1:
            _refuse(channel.name, found, series)
        both = _matching(found[0], channels)
        if len(both) > 1:
            raise ChannelError(
                f"{found[0].named()} matches channels {', '.join(both)}; make their regexes exclusive "
                "(e.g. 't1(?!.*(ce|gd|post))' for T1 without contrast)"
            )
        if found[0].frame_of_reference != reference.frame_of_reference or not reference.frame_of_reference:
            raise ChannelError(
                f"{found[0].named()} (channel {channel.name}) is in frame of reference "
                f"{found[0].frame_of_reference or '(none)'}, the reference {reference.named()} in "
                f"{reference.frame_of_reference or '(none)'}; register the sequences on the scanner or "
                "planning system and export them in one frame of reference"
            )
        chosen.append(found[0])
    return tuple(chosen)


def same_grid(image: Any, reference: Any) -> bool:
    """Whether two SimpleITK images share one voxel grid (within rounding of the headers)."""
    import numpy as np

    if image.GetSize() != reference.GetSize():
        return False
    spacing = np.asarray(image.GetSpacing()) / np.asarray(reference.GetSpacing())
    return bool(
        np.allclose(spacing, 1.0, atol=_SPACING_TOL)
        and np.allclose(image.GetOrigin(), reference.GetOrigin(), atol=_ORIGIN_TOL_MM)
        and np.allclose(image.GetDirection(), reference.GetDirection(), atol=_DIRECTION_TOL)
    )


def onto_reference(image: Any, reference: Any) -> tuple[Any, dict[str, Any]]:
    """``image`` on the reference grid, and the record of what was done to it.

    The same grid is copied with the reference's exact header; another grid is resampled
    linearly (float32; outside the channel's extent its minimum), and the share of the reference
    grid it covers is recorded (callers warn below ``LOW_COVERAGE``, naming the series).
    """
    import numpy as np
    import SimpleITK as sitk

    source = {"size": list(image.GetSize()), "spacing": [round(s, 6) for s in image.GetSpacing()]}
    if same_grid(image, reference):
        out = sitk.Image(image)
        out.CopyInformation(reference)
        return out, {"resampled": False, **source, "coverage": 1.0}
    low = float(sitk.GetArrayViewFromImage(image).min())
    out = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, low, sitk.sitkFloat32)
    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(image)
    covered = sitk.Resample(ones, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    coverage = float(np.mean(sitk.GetArrayViewFromImage(covered) > 0))
    return out, {"resampled": True, "interpolation": "linear", **source, "coverage": round(coverage, 4)}
