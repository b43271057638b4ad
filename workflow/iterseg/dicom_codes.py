"""Coded values for DICOM-SEG segments (SNOMED CT via pydicom's code dictionary)."""

from __future__ import annotations

import re
from enum import Enum
from typing import TYPE_CHECKING

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

if TYPE_CHECKING:
    import highdicom as hd

# Not in pydicom's dictionary under a stable keyword; value from SNOMED CT / DICOM CID 7150.
MORPHOLOGICALLY_ALTERED_STRUCTURE = Code("49755003", "SCT", "Morphologically Altered Structure")


class SegmentLabel(Enum):
    """Structures of the demo phantoms, with their ROI name and display colour."""

    LIVER = ("Liver", (220, 110, 60))
    TUMOUR = ("GTV_Tumour", (250, 220, 40))

    @property
    def roi_name(self) -> str:
        """Name written into the annotation (ROIName / SegmentLabel)."""
        return self.value[0]

    @property
    def colour(self) -> tuple[int, int, int]:
        """RGB display colour."""
        return self.value[1]


# Label names (as written in roi_<dataset>.yaml) -> (category, type). Matched case-insensitively
# on whole words so that "liver" and "Liver_ref" find the liver but "deliver" does not.
_KNOWN: tuple[tuple[str, Code, Code], ...] = (
    (r"liver", codes.SCT.Organ, codes.SCT.Liver),
    (r"spleen", codes.SCT.Organ, codes.SCT.Spleen),
    (r"kidney", codes.SCT.Organ, codes.SCT.Kidney),
    (r"lung", codes.SCT.Organ, codes.SCT.Lung),
    (r"tumou?r|gtv|neoplasm|lesion", MORPHOLOGICALLY_ALTERED_STRUCTURE, codes.SCT.Neoplasm),
)


def property_codes(label_name: str) -> tuple[Code, Code]:
    """Return (segmented property category, segmented property type) for a label name.

    Unknown names get the generic Tissue/Tissue pair; viewers then show the segment label,
    which is the name from the ROI YAML.
    """
    for pattern, category, prop_type in _KNOWN:
        if re.search(rf"(^|[^a-z])({pattern})([^a-z]|$)", label_name.lower()):
            return category, prop_type
    return codes.SCT.Tissue, codes.SCT.Tissue


def segment_description(
    number: int,
    label: str | SegmentLabel,
    algorithm: hd.AlgorithmIdentificationSequence | None = None,
) -> hd.seg.SegmentDescription:
    """Build a highdicom segment description; AUTOMATIC when ``algorithm`` is given."""
    import highdicom as hd

    name = label.roi_name if isinstance(label, SegmentLabel) else label
    category, prop_type = property_codes(name)
    algorithm_type = (
        hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        if algorithm is not None
        else hd.seg.SegmentAlgorithmTypeValues.MANUAL
    )
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=name,
        segmented_property_category=category,
        segmented_property_type=prop_type,
        algorithm_type=algorithm_type,
        algorithm_identification=algorithm,
        tracking_uid=hd.UID(),
        tracking_id=f"{name} #{number}",
    )
