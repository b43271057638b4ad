"""Multi-sequence channels: each series assigned exactly, or refused with the series named."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from iterseg.convert.channels import (
    ChannelError,
    SeriesLabel,
    assign_channels,
    channels_from_json,
    channels_to_json,
    onto_reference,
    parse_channels,
)
from iterseg.errors import ConfigError

BRAIN = parse_channels({"FLAIR": ["flair"], "T1": ["t1(?!.*(ce|gd|post))"], "T1ce": ["t1.*(ce|gd|post)"]})


def series(uid: str, description: str, frame: str = "1.2.3", protocol: str = "") -> SeriesLabel:
    return SeriesLabel(uid, description, protocol, frame, f"/in/{uid}")


def test_series_are_assigned_in_channel_order_by_description_or_protocol() -> None:
    found = [series("c", "AX T1 POST GD"), series("a", "", protocol="FLAIR_3D"), series("b", "t1 ax")]
    assert [s.series_uid for s in assign_channels(found, BRAIN, "a")] == ["a", "b", "c"]
    # inbox cases: the reference is the one series matching the first channel
    assert [s.series_uid for s in assign_channels(found, BRAIN)] == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("found", "reference", "words"),
    [
        ([series("a", "FLAIR"), series("b", "T1")], "a", ["no series for channel T1ce", "'T1'"]),
        (
            [series("a", "FLAIR"), series("b", "T1"), series("c", "T1 post"), series("d", "T1 ce 2")],
            "a",
            ["2 series match channel T1ce", "series c", "series d"],
        ),
        (
            [series("a", "FLAIR"), series("b", "T1", frame="9.9"), series("c", "T1 gd")],
            "a",
            ["series b", "frame of reference 9.9", "register"],
        ),
        ([series("a", "FLAIR"), series("b", "T1"), series("c", "T1 gd")], "b", ["reference channel FLAIR"]),
        ([series("b", "T1"), series("c", "T1 gd")], None, ["no series for channel FLAIR"]),
    ],
    ids=["missing", "two-match", "other-frame", "annotated-not-reference", "inbox-without-reference"],
)
def test_ambiguous_cases_are_refused_naming_the_series(
    found: list[SeriesLabel], reference: str | None, words: list[str]
) -> None:
    with pytest.raises(ChannelError) as caught:
        assign_channels(found, BRAIN, reference)
    for word in words:
        assert word in str(caught.value)


def test_a_series_matching_two_channels_is_refused() -> None:
    overlapping = parse_channels({"FLAIR": ["flair"], "T1": ["t1"], "T1ce": ["ce"]})
    with pytest.raises(ChannelError, match="matches channels T1, T1ce"):
        assign_channels([series("a", "FLAIR"), series("b", "T1 ce"), series("c", "ce")], overlapping, "a")


def test_channels_travel_as_json_in_order_and_bad_regexes_name_the_key() -> None:
    assert channels_from_json(channels_to_json(BRAIN)) == BRAIN
    assert channels_from_json("") == ()
    with pytest.raises(ConfigError, match=r"datasets.brain.channels.T1: '\(' is not a regex"):
        parse_channels({"FLAIR": ["flair"], "T1": ["("]}, "datasets.brain.channels")


def _image(
    size: tuple[int, int, int], spacing: tuple[float, float, float], origin: tuple[float, ...]
) -> sitk.Image:
    z, y, x = np.meshgrid(
        *(np.arange(n) * s + o for n, s, o in zip(size[::-1], spacing[::-1], origin[::-1], strict=True)),
        indexing="ij",
    )
    image = sitk.GetImageFromArray(
        (x + 2 * y + 3 * z).astype(np.float32)
    )  # linear in mm: interpolated exactly
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def test_same_grid_is_copied_and_another_grid_is_resampled_linearly_with_its_coverage() -> None:
    reference = _image((16, 16, 8), (2.0, 2.0, 4.0), (0.0, 0.0, 0.0))
    copied, record = onto_reference(sitk.Image(reference), reference)
    assert record == {"resampled": False, "size": [16, 16, 8], "spacing": [2.0, 2.0, 4.0], "coverage": 1.0}
    assert np.array_equal(sitk.GetArrayFromImage(copied), sitk.GetArrayFromImage(reference))

    other = _image((12, 12, 6), (3.0, 3.0, 5.0), (0.0, 0.0, 0.0))  # covers 0..33 mm of 0..30 / 0..25 of 0..28
    moved, record = onto_reference(other, reference)
    assert record["resampled"] and record["interpolation"] == "linear"
    assert record["size"] == [12, 12, 6] and record["spacing"] == [3.0, 3.0, 5.0]
    assert moved.GetSize() == reference.GetSize() and moved.GetSpacing() == reference.GetSpacing()
    want, got = sitk.GetArrayFromImage(reference), sitk.GetArrayFromImage(moved)
    inside = np.zeros(want.shape, bool)
    inside[:7] = True  # z up to 24 mm lies inside the other grid's 0..25 mm
    assert np.allclose(got[inside], want[inside], atol=1e-3)
    assert record["coverage"] == pytest.approx(7 / 8, abs=1e-3)
    assert np.all(got[~inside] == float(sitk.GetArrayFromImage(other).min()))
