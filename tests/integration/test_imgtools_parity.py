"""Where med-imagetools is right we keep its semantics: ROI-YAML matching, pinned against it."""

from __future__ import annotations

import pytest
from iterseg.roi import match_roi_name

pytestmark = pytest.mark.integration

LABELS = {
    "liver": ["liver", "leber", r"liver[ _-]?total"],
    "tumour": ["tumou?r.*", "gtv.*", "lesion[0-9]*"],
    "body": ["body", "external", "skin"],
}
NAMES = [
    "Liver",
    "LIVER",
    "Liver_total",
    "Leber",
    "liver2",  # no full match
    "Tumour",
    "tumor_1",
    "GTVp",
    "Lesion12",
    "lesion_a",
    "BODY",
    "External",
    "Skin ",
    "Spleen",
    "",
]


def test_roi_names_match_labels_as_med_imagetools_matches_them() -> None:
    from imgtools.coretypes.masktypes.roi_matching import ROIMatchStrategy, handle_roi_matching

    for name in NAMES:
        theirs = [
            key for key, _ in handle_roi_matching([name], LABELS, ROIMatchStrategy.MERGE, ignore_case=True)
        ]
        ours = match_roi_name(name, LABELS)
        assert theirs == ([ours] if ours else []), name
