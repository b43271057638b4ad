"""Coded values for DICOM-SEG segments (SNOMED CT via pydicom's code dictionary)."""

from __future__ import annotations

import re
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Terminology:
    """How a label is described in a SEG: coded category and type, and display colour."""

    category: Code
    type: Code
    colour: tuple[int, int, int]
    known: bool = True  # False: the generic fallback, reported to the user


_ORGAN, _STRUCT, _ALTERED = codes.SCT.Organ, codes.SCT.AnatomicalStructure, MORPHOLOGICALLY_ALTERED_STRUCTURE
_PARTS: tuple[tuple[str, Code, Code, tuple[int, int, int]], ...] = (
    # abdomen and pelvis
    (r"liver", _ORGAN, codes.SCT.Liver, (221, 130, 101)),
    (r"spleen", _ORGAN, codes.SCT.Spleen, (157, 108, 162)),
    (r"kidneys?", _ORGAN, codes.SCT.Kidney, (185, 102, 83)),
    (r"pancreas", _ORGAN, codes.SCT.Pancreas, (249, 180, 111)),
    (r"stomach", _ORGAN, codes.SCT.Stomach, (216, 132, 105)),
    (r"gall ?bladder", _ORGAN, codes.SCT.Gallbladder, (139, 150, 98)),
    (r"(o|)esophagus", _ORGAN, codes.SCT.Esophagus, (211, 171, 143)),
    (r"duodenum", _ORGAN, codes.SCT.Duodenum, (255, 253, 229)),
    (r"colon", _ORGAN, codes.SCT.Colon, (204, 168, 143)),
    (r"small ?(intestine|bowel)|bowel", _ORGAN, codes.SCT.SmallIntestine, (205, 167, 142)),
    (r"rectum", _ORGAN, codes.SCT.Rectum, (188, 95, 76)),
    (r"(urinary ?)?bladder", _ORGAN, codes.SCT.Bladder, (222, 154, 132)),
    (r"prostate", _ORGAN, codes.SCT.Prostate, (230, 158, 140)),
    (r"uterus", _ORGAN, codes.SCT.Uterus, (244, 186, 150)),
    (r"adrenal( ?gland)?", _ORGAN, codes.SCT.AdrenalGland, (249, 186, 150)),
    (r"aorta", _STRUCT, codes.SCT.Aorta, (224, 97, 76)),
    (r"(inferior ?vena ?cava|ivc)", _STRUCT, codes.SCT.InferiorVenaCava, (0, 151, 206)),
    (r"portal ?vein", _STRUCT, codes.SCT.PortalVein, (0, 122, 171)),
    # thorax
    (r"heart", _ORGAN, codes.SCT.Heart, (206, 110, 84)),
    (r"lungs?", _ORGAN, codes.SCT.Lung, (197, 165, 145)),
    (r"trachea", _ORGAN, codes.SCT.Trachea, (182, 228, 255)),
    (r"pericardium", _STRUCT, codes.SCT.Pericardium, (220, 165, 145)),
    (r"breast", _ORGAN, codes.SCT.Breast, (244, 214, 49)),
    # head and neck, brain
    (r"brain ?stem", _STRUCT, codes.SCT.BrainStem, (119, 159, 176)),
    (r"brain", _ORGAN, codes.SCT.Brain, (250, 250, 225)),
    (r"cerebellum", _STRUCT, codes.SCT.Cerebellum, (220, 180, 140)),
    (r"hippocampus", _STRUCT, codes.SCT.Hippocampus, (220, 216, 20)),
    (r"spinal ?cord", _STRUCT, codes.SCT.SpinalCord, (244, 214, 49)),
    (r"parotids?( ?gland)?", _ORGAN, codes.SCT.ParotidGland, (255, 189, 154)),
    (r"submandibular( ?gland)?", _ORGAN, codes.SCT.SubmandibularGland, (255, 200, 170)),
    (r"mandible", _STRUCT, codes.SCT.Mandible, (222, 198, 101)),
    (r"eyes?|globe", _ORGAN, codes.SCT.Eye, (194, 255, 194)),
    (r"lens", _STRUCT, codes.SCT.Lens, (200, 255, 255)),
    (r"optic ?nerve", _STRUCT, codes.SCT.OpticNerve, (255, 255, 0)),
    (r"(optic ?)?chiasm", _STRUCT, codes.SCT.OpticChiasm, (255, 255, 128)),
    (r"larynx", _ORGAN, codes.SCT.Larynx, (246, 135, 145)),
    (r"pharynx", _ORGAN, codes.SCT.Pharynx, (233, 150, 140)),
    (r"thyroid( ?gland)?", _ORGAN, codes.SCT.Thyroid, (120, 158, 110)),
    (r"oral ?cavity", _STRUCT, codes.SCT.OralCavity, (201, 121, 77)),
    # bone, other tissue
    (r"vertebrae?", _STRUCT, codes.SCT.Vertebra, (241, 214, 145)),
    (r"ribs?", _STRUCT, codes.SCT.Rib, (241, 214, 145)),
    (r"femur", _STRUCT, codes.SCT.Femur, (241, 214, 145)),
    (r"bones?", codes.SCT.Tissue, codes.SCT.Bone, (241, 214, 145)),
    (r"lymph ?nodes?", _STRUCT, codes.SCT.LymphNode, (68, 172, 100)),
    (r"muscle", codes.SCT.Tissue, codes.SCT.Muscle, (192, 104, 88)),
    (r"skin|body|external", codes.SCT.Tissue, codes.SCT.Skin, (177, 122, 101)),
    # findings
    (
        r"tumou?rs?|gtv|ctv|neoplasms?|cancer|mass|metastas[ie]s|mets?",
        _ALTERED,
        codes.SCT.Neoplasm,
        (250, 220, 40),
    ),
    (r"lesions?", _ALTERED, codes.SCT.Lesion, (240, 200, 60)),
    (r"cysts?", _ALTERED, codes.SCT.Cyst, (120, 200, 250)),
    (r"o?edema", _ALTERED, codes.SCT.Edema, (140, 224, 228)),
    (r"necrosis", _ALTERED, codes.SCT.Necrosis, (150, 110, 100)),
)
GENERIC = Terminology(codes.SCT.Tissue, codes.SCT.Tissue, (128, 174, 128), known=False)


def _words(name: str) -> str:
    """``GTV_Tumour-1``, ``leftKidney`` -> ``gtv tumour 1``, ``left kidney``: words to match on."""
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name)
    return " ".join(re.split(r"[^a-z0-9]+", spaced.lower())).strip()


def terminology(label_name: str) -> Terminology:
    """Coded description and colour of a label from its name; GENERIC (``known=False``) if none fits.

    Whole words only, after splitting on ``_``, ``-``, digits and camelCase, so ``Liver_ref``
    is the liver and ``deliver`` is not; left/right prefixes do not matter.
    """
    words = _words(label_name)
    for pattern, category, prop_type, colour in _PARTS:
        if re.search(rf"(^| )({pattern})( |$)", words):
            return Terminology(category, prop_type, colour)
    return GENERIC


def property_codes(label_name: str) -> tuple[Code, Code]:
    """Return (segmented property category, segmented property type) for a label name."""
    term = terminology(label_name)
    return term.category, term.type


def segment_description(
    number: int,
    label: str | SegmentLabel,
    algorithm: hd.AlgorithmIdentificationSequence | None = None,
    term: Terminology | None = None,
) -> hd.seg.SegmentDescription:
    """Build a highdicom segment description; AUTOMATIC when ``algorithm`` is given.

    ``term`` (e.g. from the ROI YAML) overrides the built-in table.
    """
    import highdicom as hd

    name = label.roi_name if isinstance(label, SegmentLabel) else label
    term = term or terminology(name)
    category, prop_type = term.category, term.type
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
        display_color=hd.color.CIELabColor.from_rgb(*term.colour),
    )
